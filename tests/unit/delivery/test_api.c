/* test_api.c: delivery's HTTP handlers, in process: the real HTTP server
 * on an ephemeral loopback port with delivery's routes over a store in a
 * temporary directory, its event loop on a thread, and a tiny blocking
 * client here. No NATS: the events the commands publish stay in the outbox,
 * where the test reads them.
 *
 * What must hold: POST /cancellations creates (201 + Location), repeats
 * return the same cancellation (200), refuses bad input with the contract's
 * error and no side effect; the GET routes answer HAL items and paged
 * collections; unknown ids are 404; findByOrderId validates orderId. */
#include "testing.h"

#include <arpa/inet.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include "delivery.h"
#include "http.h"
#include "log.h"

static int port;

/* ---- a blocking HTTP/1.1 client (Connection: close) ---- */

typedef struct reply {
    int status;
    char location[256];
    json_t *body;     /* parsed JSON or NULL */
} reply;

static reply call(const char *method, const char *path, const char *body)
{
    reply r = { 0 };
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        fprintf(stderr, "cannot connect to the test server\n");
        if (fd >= 0) close(fd);
        return r;
    }
    char req[4096];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     method, path, body ? strlen(body) : 0, body ? body : "");
    if (write(fd, req, (size_t)n) != n) fprintf(stderr, "short write\n");
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    ssize_t got;
    while (len + 1 < cap && (got = read(fd, buf + len, cap - len - 1)) > 0) len += (size_t)got;
    buf[len] = '\0';
    close(fd);
    sscanf(buf, "HTTP/1.%*d %d", &r.status);
    for (char *line = strstr(buf, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        if (strncmp(line, "\r\n\r\n", 4) == 0) break;
        if (strncasecmp(line + 2, "Location:", 9) == 0)
            sscanf(line + 11, " %255[^\r\n]", r.location);
    }
    char *payload = strstr(buf, "\r\n\r\n");
    if (payload) r.body = json_loads(payload + 4, JSON_DISABLE_EOF_CHECK, NULL);
    free(buf);
    return r;
}

static const char *text(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static long long num(const json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

/* The contract's error shape, status and a message that names `about`. */
static void check_error(reply r, int status, const char *about)
{
    CHECK_INT(r.status, status);
    CHECK_INT(num(r.body, "status"), status);
    CHECK(text(r.body, "error") != NULL);
    CHECK(text(r.body, "path") != NULL);
    const char *msg = text(r.body, "message");
    CHECK(msg && *msg);
    if (about && (!msg || !strstr(msg, about))) {
        fprintf(stderr, "message \"%s\" does not mention \"%s\"\n", msg ? msg : "", about);
        CHECK(!"the error message names what was wrong");
    }
    json_decref(r.body);
}

static json_t *embedded(const reply *r, const char *name)
{
    return json_object_get(json_object_get(r->body, "_embedded"), name);
}

/* ---- the server on its own thread ---- */

static struct event_base *base;
static pthread_t loop_thread;

static void *run_loop(void *arg)
{
    (void)arg;
    event_base_dispatch(base);
    return NULL;
}

static int outbox_count(store *st, const char *type, long long order_id)
{
    sqlite3_stmt *s = store_prepare(st,
        "SELECT COUNT(*) FROM outbox WHERE event_type = ?1 "
        "AND json_extract(payload, '$.orderId') = ?2");
    sqlite3_bind_text(s, 1, type, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, order_id);
    int n = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int(s, 0) : -1;
    sqlite3_reset(s);
    return n;
}

/* Feeds one event to its handler in a transaction (before the loop runs). */
static void feed(store *st, bus_handler h, json_t *event)
{
    char err[256];
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(h(st, event, "req-unit", NULL, err, sizeof err), 0);
    CHECK_INT(store_commit(st), SQLITE_OK);
    json_decref(event);
}

static void test_cancellations(void)
{
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
    evthread_use_pthreads();
    char dir[64], path[128];
    snprintf(dir, sizeof dir, "/tmp/carshare-unit-delivery-api-XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/delivery.db", dir);
    store *st = store_open_path(path, delivery_migrations);
    base = event_base_new();
    http_server *http = http_server_new(base, "delivery");
    port = http_server_listen(http, "127.0.0.1", 0);
    if (!st || port <= 0) {
        fprintf(stderr, "cannot set up the server\n");
        return 1;
    }
    service svc = { .name = "delivery", .base = base, .http = http, .host = "127.0.0.1",
                    .port = port };
    delivery_api_register(&svc, st);

    /* Order 1 shipped, through the event handlers. */
    feed(st, delivery_on_paid, json_pack("{s:s, s:s, s:s, s:i, s:i}", "eventType", "Paid",
         "eventId", "e1", "timestamp", "20261124015039", "id", 501, "orderId", 1));
    feed(st, delivery_on_ordered, json_pack("{s:s, s:s, s:s, s:i}", "eventType", "Ordered",
         "eventId", "e2", "timestamp", "20261124015039", "id", 1));

    pthread_create(&loop_thread, NULL, run_loop, NULL);
    test_cancellations();
    test_deliveries();
    event_base_loopbreak(base);
    pthread_join(loop_thread, NULL);

    /* The command published exactly one DeliveryCanceled, in its transaction. */
    CHECK_INT(outbox_count(st, "DeliveryCanceled", 7), 1);
    CHECK_INT(outbox_count(st, "Shipped", 1), 1);

    http_server_free(http);
    event_base_free(base);
    store_close(st);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return test_done("delivery/test_api");
}
