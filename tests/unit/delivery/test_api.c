/* test_api.c: delivery's HTTP handlers, in process: the real HTTP server
 * on an ephemeral loopback port with delivery's routes over a store in a
 * temporary directory, its event loop on a thread, and a tiny blocking
 * client (testing_http.h). No NATS: the events the commands publish stay in the outbox,
 * where the test reads them.
 *
 * What must hold: POST /cancellations creates (201 + Location), repeats
 * return the same cancellation (200), refuses bad input with the contract's
 * error and no side effect; the GET routes answer HAL items and paged
 * collections; unknown ids are 404; findByOrderId validates orderId. */
#include "testing.h"
#include "testing_http.h"
#include "testing_store.h"

#include "delivery.h"
#include "log.h"

/* Feeds one event to its handler in a transaction (before the loop runs). */
static void feed(store *st, bus_handler h, json_t *event)
{
    char err[256];
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(h(st, event, "req-unit", NULL, err, sizeof err), 0);
    CHECK_INT(store_commit(st), SQLITE_OK);
    json_decref(event);
}

/* POST /cancellations is between services only; the reads are staff's. */
static void test_access(void)
{
    call_as(TOKEN_ROLE_CUSTOMER, "kim");
    check_error(call("POST", "/cancellations", "{\"orderId\": 8}"), 403, "service");
    check_error(call("GET", "/deliveries", NULL), 403, "customer");
    check_error(call("GET", "/cancellations", NULL), 403, "customer");
    call_as(TOKEN_ROLE_STAFF, "ops");
    check_error(call("POST", "/cancellations", "{\"orderId\": 8}"), 403, "staff");
    call_as(0, NULL);
    check_error(call("POST", "/cancellations", "{\"orderId\": 8}"), 401, "Bearer");
    check_error(call("GET", "/deliveries/1", NULL), 401, "Bearer");
    call_as(TOKEN_ROLE_SERVICE, "order");
    check_error(call("GET", "/deliveries", NULL), 403, "service");
    call_as(TOKEN_ROLE_STAFF, "ops");
}

static void test_cancellations(void)
{
    call_as(TOKEN_ROLE_SERVICE, "order");
    reply r = call("POST", "/cancellations", "{\"orderId\": 7, \"id\": 99, \"status\": \"x\"}");
    CHECK_INT(r.status, 201);
    long long id = num(r.body, "id");
    CHECK(id > 0);
    CHECK_INT(num(r.body, "orderId"), 7);
    CHECK(num(r.body, "deliveryId") > 0);
    CHECK(json_is_null(json_object_get(r.body, "paymentId")));
    CHECK_STR(text(r.body, "status"), "DeliveryCancelled");
    char self[64];
    snprintf(self, sizeof self, "/cancellations/%lld", id);
    CHECK(strstr(r.location, self) != NULL);
    long long delivery_id = num(r.body, "deliveryId");
    json_decref(r.body);

    r = call("POST", "/cancellations", "{\"orderId\": \"7\"}");   /* numeric string, repeat */
    CHECK_INT(r.status, 200);
    CHECK_INT(num(r.body, "id"), id);
    json_decref(r.body);

    check_error(call("POST", "/cancellations", "{\"orderId\": \"seven\"}"), 400, "orderId");
    check_error(call("POST", "/cancellations", "{}"), 400, "orderId");
    check_error(call("POST", "/cancellations", "{\"orderId\": -1}"), 400, "orderId");
    check_error(call("POST", "/cancellations", "{\"orderId\": 1.5}"), 400, "orderId");
    check_error(call("POST", "/cancellations", "[7]"), 400, NULL);
    check_error(call("POST", "/cancellations", "nope"), 400, NULL);

    call_as(TOKEN_ROLE_STAFF, "ops");
    r = call("GET", "/cancellations", NULL);
    CHECK_INT(r.status, 200);
    CHECK_INT(json_array_size(embedded(&r, "cancellations")), 1);
    CHECK_INT(num(json_object_get(r.body, "page"), "totalElements"), 1);
    json_decref(r.body);

    r = call("GET", self, NULL);
    CHECK_INT(r.status, 200);
    CHECK_INT(num(r.body, "orderId"), 7);
    json_decref(r.body);
    check_error(call("GET", "/cancellations/424242", NULL), 404, "424242");

    char path[64];
    snprintf(path, sizeof path, "/deliveries/%lld", delivery_id);
    r = call("GET", path, NULL);
    CHECK_INT(r.status, 200);
    CHECK_STR(text(r.body, "status"), "DeliveryCancelled");
    json_decref(r.body);
}

static void test_deliveries(void)
{
    reply r = call("GET", "/deliveries/search/findByOrderId?orderId=1", NULL);
    CHECK_INT(r.status, 200);
    json_t *list = embedded(&r, "deliveries");
    CHECK_INT(json_array_size(list), 1);
    json_t *d = json_array_get(list, 0);
    CHECK_STR(text(d, "status"), "Shipped");
    CHECK_INT(num(d, "paymentId"), 501);
    const char *href = json_string_value(json_object_get(
        json_object_get(json_object_get(d, "_links"), "self"), "href"));
    CHECK(href && strstr(href, "/deliveries/"));
    json_decref(r.body);

    r = call("GET", "/deliveries/search/findByOrderId?orderId=555", NULL);
    CHECK_INT(r.status, 200);
    CHECK_INT(json_array_size(embedded(&r, "deliveries")), 0);
    json_decref(r.body);
    check_error(call("GET", "/deliveries/search/findByOrderId", NULL), 400, "orderId");
    check_error(call("GET", "/deliveries/search/findByOrderId?orderId=x", NULL), 400, "orderId");

    /* Two deliveries (order 1 shipped, order 7 cancelled), paged one by one. */
    r = call("GET", "/deliveries?size=1&page=1", NULL);
    CHECK_INT(r.status, 200);
    CHECK_INT(json_array_size(embedded(&r, "deliveries")), 1);
    json_t *page = json_object_get(r.body, "page");
    CHECK_INT(num(page, "totalElements"), 2);
    CHECK_INT(num(page, "totalPages"), 2);
    CHECK_INT(num(page, "number"), 1);
    CHECK_INT(num(page, "size"), 1);
    json_decref(r.body);
    check_error(call("GET", "/deliveries?size=0", NULL), 400, "size");
    check_error(call("GET", "/deliveries/999999", NULL), 404, "999999");
    check_error(call("GET", "/deliveries/abc", NULL), 404, "abc");
    check_error(call("DELETE", "/deliveries/1", NULL), 405, NULL);
}

int main(void)
{
    setenv("LOG_LEVEL", "warn", 1);
    log_init("test-delivery-api");
    char dir[64];
    store *st = temp_store_open(dir, sizeof dir, "delivery", delivery_migrations);
    service svc;
    if (!st || !server_open(&svc, "delivery"))
        return 1;
    db *d = db_of_store(svc.base, st);
    delivery_api_register(&svc, d);

    /* Order 1 shipped, through the event handlers. */
    feed(st, delivery_on_paid, json_pack("{s:s, s:s, s:s, s:i, s:i}", "eventType", "Paid",
         "eventId", "e1", "timestamp", "20261124015039", "id", 501, "orderId", 1));
    feed(st, delivery_on_ordered, json_pack("{s:s, s:s, s:s, s:i}", "eventType", "Ordered",
         "eventId", "e2", "timestamp", "20261124015039", "id", 1));

    loop_start();
    test_access();
    test_cancellations();
    test_deliveries();
    loop_stop();

    /* The command published exactly one DeliveryCanceled, in its transaction. */
    CHECK_INT(outbox_count(st, "DeliveryCanceled", 7), 1);
    CHECK_INT(outbox_count(st, "Shipped", 1), 1);

    server_close(&svc);
    db_close(d);
    temp_dir_remove(dir);
    return test_done("delivery/test_api");
}
