/* test_api.c: the customer page's HTTP handlers, in process: the real HTTP
 * server on an ephemeral loopback port with the customer page's routes over
 * a store in a temporary directory, its event loop on a thread, and a tiny
 * blocking client (testing_http.h). The view is fed through the live event handler
 * before the loop starts. The bus is created but not started, so a rebuild
 * cannot read the stream: that is the 503 case.
 *
 * What must hold: the list, item and search routes show visible rows only
 * (a rental whose Ordered was not seen is hidden), in the contract's item
 * shape with HAL links and paging; bad or missing parameters are 400 naming
 * the parameter; unknown ids are 404; POST /admin/rebuild is 409 while a
 * rebuild runs and 503 (with Retry-After) when the stream cannot be read,
 * and GET /admin/rebuild reports the state. */
#include "testing.h"
#include "testing_http.h"
#include "testing_store.h"

#include "customerpage.h"
#include "log.h"

static void feed(store *st, customerpage_app *app, json_t *event)
{
    char err[256];
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(customerpage_on_event(st, event, "req-unit", app, err, sizeof err), 0);
    CHECK_INT(store_commit(st), SQLITE_OK);
    json_decref(event);
}

static json_t *event(const char *type, const char *id, long long order, long long own_id,
                     const char *customer)
{
    json_t *e = json_pack("{s:s, s:s, s:s}", "eventType", type, "eventId", id,
                          "timestamp", "20261124015039");
    bool own = !strcmp(type, "Ordered") || !strcmp(type, "OrderCancelled");
    json_object_set_new(e, "id", json_integer(own ? order : own_id));
    if (!own) json_object_set_new(e, "orderId", json_integer(order));
    if (customer) json_object_set_new(e, "customerId", json_string(customer));
    json_object_set_new(e, "productId", json_string("1001"));
    json_object_set_new(e, "qty", json_integer(1));
    json_object_set_new(e, "amount", json_integer(45000));
    if (!strcmp(type, "Shipped")) json_object_set_new(e, "paymentId", json_integer(501));
    return e;
}

static void test_reads(void)
{
    reply r = call("GET", "/customerpages", NULL);
    CHECK_INT(r.status, 200);
    json_t *list = embedded(&r, "customerpages");
    CHECK_INT(json_array_size(list), 2);            /* order 3 is hidden */
    CHECK_INT(num(json_object_get(r.body, "page"), "totalElements"), 2);
    CHECK_INT(num(json_array_get(list, 0), "id"), 1);
    CHECK_INT(num(json_array_get(list, 1), "id"), 2);
    json_decref(r.body);

    r = call("GET", "/customerpages/1", NULL);
    CHECK_INT(r.status, 200);
    CHECK_INT(num(r.body, "id"), 1);
    CHECK_INT(num(r.body, "orderId"), 1);
    CHECK_STR(text(r.body, "customerId"), "kim");
    CHECK_STR(text(r.body, "productId"), "1001");
    CHECK_INT(num(r.body, "qty"), 1);
    CHECK_INT(num(r.body, "amount"), 45000);
    CHECK_INT(num(r.body, "paymentId"), 501);
    CHECK_INT(num(r.body, "deliveryId"), 901);
    CHECK_STR(text(r.body, "status"), "Shipped");
    CHECK_INT(json_array_size(json_object_get(r.body, "history")), 3);
    const char *href = json_string_value(json_object_get(
        json_object_get(json_object_get(r.body, "_links"), "self"), "href"));
    CHECK(href && strstr(href, "/customerpages/1"));
    json_decref(r.body);

    r = call("GET", "/customerpages/2", NULL);
    CHECK_INT(r.status, 200);
    CHECK_STR(text(r.body, "status"), "OrderApproved");
    CHECK(json_is_null(json_object_get(r.body, "deliveryId")));
    json_decref(r.body);

    check_error(call("GET", "/customerpages/3", NULL), 404, "3");
    check_error(call("GET", "/customerpages/x1", NULL), 404, "x1");

    r = call("GET", "/customerpages/search/findByOrderId?orderId=1", NULL);
    CHECK_INT(r.status, 200);
    CHECK_INT(json_array_size(embedded(&r, "customerpages")), 1);
    json_decref(r.body);
    r = call("GET", "/customerpages/search/findByOrderId?orderId=3", NULL);
    CHECK_INT(r.status, 200);
    CHECK_INT(json_array_size(embedded(&r, "customerpages")), 0);
    json_decref(r.body);
    check_error(call("GET", "/customerpages/search/findByOrderId", NULL), 400, "orderId");
    check_error(call("GET", "/customerpages/search/findByOrderId?orderId=-2", NULL), 400,
                "orderId");

    r = call("GET", "/customerpages/search/findByCustomerId?customerId=lee", NULL);
    CHECK_INT(r.status, 200);
    list = embedded(&r, "customerpages");
    CHECK_INT(json_array_size(list), 1);
    CHECK_INT(num(json_array_get(list, 0), "orderId"), 2);
    json_decref(r.body);
    r = call("GET", "/customerpages/search/findByCustomerId?customerId=nobody", NULL);
    CHECK_INT(r.status, 200);
    CHECK_INT(num(json_object_get(r.body, "page"), "totalElements"), 0);
    json_decref(r.body);
    check_error(call("GET", "/customerpages/search/findByCustomerId", NULL), 400, "customerId");

    r = call("GET", "/customerpages?page=1&size=1", NULL);
    CHECK_INT(r.status, 200);
    CHECK_INT(num(json_array_get(embedded(&r, "customerpages"), 0), "id"), 2);
    CHECK_INT(num(json_object_get(r.body, "page"), "totalPages"), 2);
    json_decref(r.body);
    check_error(call("GET", "/customerpages?page=abc", NULL), 400, "page");
    check_error(call("DELETE", "/customerpages/1", NULL), 405, NULL);
}

/* A customer sees only their own rows: another's is a 404, lists and
 * searches hold only theirs. Staff see all (test_reads). */
static void test_ownership(void)
{
    call_as(TOKEN_ROLE_CUSTOMER, "lee");
    reply r = call("GET", "/customerpages", NULL);
    CHECK_INT(r.status, 200);
    CHECK_INT(json_array_size(embedded(&r, "customerpages")), 1);
    CHECK_INT(num(json_array_get(embedded(&r, "customerpages"), 0), "orderId"), 2);
    CHECK_INT(num(json_object_get(r.body, "page"), "totalElements"), 1);
    json_decref(r.body);
    r = call("GET", "/customerpages/2", NULL);
    CHECK_INT(r.status, 200);
    json_decref(r.body);
    check_error(call("GET", "/customerpages/1", NULL), 404, "1");   /* kim's */
    r = call("GET", "/customerpages/search/findByCustomerId?customerId=kim", NULL);
    CHECK_INT(r.status, 200);
    CHECK_INT(num(json_object_get(r.body, "page"), "totalElements"), 0);
    json_decref(r.body);
    r = call("GET", "/customerpages/search/findByOrderId?orderId=1", NULL);
    CHECK_INT(r.status, 200);
    CHECK_INT(json_array_size(embedded(&r, "customerpages")), 0);
    json_decref(r.body);
    check_error(call("POST", "/admin/rebuild", NULL), 403, "customer");
    call_as(0, NULL);
    check_error(call("GET", "/customerpages", NULL), 401, "Bearer");
    call_as(TOKEN_ROLE_STAFF, "ops");
}

int main(void)
{
    setenv("LOG_LEVEL", "warn", 1);
    log_init("test-customerpage-api");
    char dir[64];
    store *st = temp_store_open(dir, sizeof dir, "customerpage", customerpage_migrations);
    service svc;
    if (!st || !server_open(&svc, "customerpage"))
        return 1;
    customerpage_app app = { .db = db_of_store(svc.base, st), .st = st,
                             .bus = bus_new(svc.base, st, "customerpage") };
    customerpage_api_register(&svc, &app);

    feed(st, &app, event("Paid", "p1", 1, 501, NULL));
    feed(st, &app, event("Ordered", "o1", 1, 0, "kim"));
    feed(st, &app, event("Shipped", "s1", 1, 901, NULL));
    feed(st, &app, event("Ordered", "o2", 2, 0, "lee"));
    feed(st, &app, event("Paid", "p3", 3, 503, NULL));     /* no Ordered: hidden */

    /* While a rebuild runs, another is refused. */
    app.rebuild.state = REBUILD_RUNNING;
    loop_start();
    check_error(call("POST", "/admin/rebuild", NULL), 409, "already running");
    reply r = call("GET", "/admin/rebuild", NULL);
    CHECK_INT(r.status, 200);
    CHECK_STR(text(r.body, "state"), "running");
    json_decref(r.body);
    loop_stop();

    /* The bus is not started: the stream cannot be replayed. */
    app.rebuild.state = REBUILD_IDLE;
    loop_start();
    check_error(call("POST", "/admin/rebuild", NULL), 503, "replayed");
    r = call("GET", "/admin/rebuild", NULL);
    CHECK_STR(text(r.body, "state"), "failed");
    CHECK(text(r.body, "error") != NULL);
    json_decref(r.body);
    test_reads();
    test_ownership();
    loop_stop();

    bus_free(app.bus);
    server_close(&svc);
    db_close(app.db);
    temp_dir_remove(dir);
    return test_done("customerpage/test_api");
}
