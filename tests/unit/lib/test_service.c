/* test_service.c: the service skeleton (lib/service.c) as a process runs it.
 *
 * service_new, then service_run on this thread while a client thread
 * talks to it over loopback:
 *  - /health/live is UP; /health/ready is 503 naming each failing check
 *    (a test's own, the bus's: no nats-server here) and the ones that hold;
 *  - /metrics needs a staff token (401 without one, 200 with one);
 *  - GET /admin/deadLetters (service_dead_letters_route) lists a bus's
 *    dead letters as a collection, with the page parameters checked;
 *  - SIGTERM: the stop hooks run in the order registered, and service_run
 *    returns 0. */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus.h"
#include "service.h"
#include "store.h"
#include "testing.h"
#include "testing_http.h"

static service *svc;
static atomic_bool ready_flag;
static char stops[16];
static int client_failures;

static bool check_flag(void *arg)
{
    (void)arg;
    return atomic_load(&ready_flag);
}

static void on_stop(void *arg)
{
    strncat(stops, arg, sizeof stops - strlen(stops) - 1);
}

static void *client_main(void *arg)
{
    (void)arg;
    while (__atomic_load_n(&svc->port, __ATOMIC_ACQUIRE) == 0)
        usleep(1000);
    server_port = svc->port;
    int before = testing_failures;

    call_as(0, NULL);
    reply r = call("GET", "/health/live", NULL);
    CHECK_INT(r.status, 200);
    CHECK_STR(text(r.body, "status"), "UP");
    json_decref(r.body);

    r = call("GET", "/health/ready", NULL);
    CHECK_INT(r.status, 503);
    CHECK_STR(json_string_value(json_object_get(json_object_get(r.body, "checks"), "flag")),
              "DOWN");
    json_decref(r.body);
    atomic_store(&ready_flag, true);
    r = call("GET", "/health/ready", NULL);
    /* the flag holds now; the bus has no nats-server to connect to */
    CHECK_INT(r.status, 503);
    json_t *checks = json_object_get(r.body, "checks");
    CHECK_STR(json_string_value(json_object_get(checks, "flag")), "UP");
    CHECK_STR(json_string_value(json_object_get(checks, "bus_connected")), "DOWN");
    CHECK_STR(json_string_value(json_object_get(checks, "store_ready")), "UP");
    json_decref(r.body);

    r = call("GET", "/metrics", NULL);
    CHECK_INT(r.status, 401);
    json_decref(r.body);
    call_as(TOKEN_ROLE_STAFF, "ops");
    r = call("GET", "/metrics", NULL);
    CHECK_INT(r.status, 200);
    json_decref(r.body);

    r = call("GET", "/admin/deadLetters", NULL);
    CHECK_INT(r.status, 200);
    CHECK_INT(json_array_size(embedded(&r, "deadLetters")), 0);
    CHECK_INT(num(json_object_get(r.body, "page"), "totalElements"), 0);
    json_decref(r.body);
    r = call("GET", "/admin/deadLetters?size=0", NULL);
    CHECK_INT(r.status, 400);
    json_decref(r.body);

    client_failures = testing_failures - before;
    kill(getpid(), SIGTERM);
    return NULL;
}

static const char *const schema[] = {"CREATE TABLE t (x INTEGER);", NULL};

int main(void)
{
    char dir[128], path[300], pub[300], err[256];
    if (!temp_dir_make(dir, sizeof dir, "service")) return 1;
    snprintf(path, sizeof path, "%s/account.key", dir);
    if (token_init() != 0 || !(test_key = token_key_load_or_create(path, err, sizeof err))) {
        fprintf(stderr, "test keys: %s\n", err);
        return 1;
    }
    snprintf(pub, sizeof pub, "%s/account.pub", dir);
    setenv("TOKEN_PUBLIC_KEYS", pub, 1);
    setenv("PORT", "0", 1);
    setenv("DATA_DIR", dir, 1);
    setenv("NATS_URL", "nats://127.0.0.1:1", 1);   /* nothing there: the bus keeps trying */

    svc = service_new("service-test", 0);
    service_ready_check(svc, "flag", check_flag, NULL);
    service_on_stop(svc, on_stop, "a");
    service_on_stop(svc, on_stop, "b");
    snprintf(path, sizeof path, "%s/t.db", dir);
    store *st = store_open_path(path, schema);
    bus *b = st ? bus_new(svc->base, st, "service-test") : NULL;
    CHECK(b != NULL);
    if (!b) return test_done("test_service");
    CHECK_INT(service_start_bus(svc, st, b), 0);    /* the bus's stop hooks come after a, b */
    service_on_stop(svc, on_stop, "c");

    pthread_t client;
    pthread_create(&client, NULL, client_main, NULL);
    CHECK_INT(service_run(svc), 0);
    pthread_join(client, NULL);
    CHECK_INT(client_failures, 0);
    CHECK_STR(stops, "abc");
    temp_dir_remove(dir);
    return test_done("test_service");
}
