/* main.c: the order process (접수관리): the fleet and the rental intake.
 *
 * Environment (every variable is optional):
 *   HOST                    address to listen on (127.0.0.1)
 *   PORT                    port (8081)
 *   ORDER_DATABASE_URL,     PostgreSQL (postgres://...), see lib/db.h; else SQLite:
 *   DATABASE_URL
 *   DATA_DIR, DB_PATH       the database: DB_PATH, else $DATA_DIR/order.db (./data)
 *   NATS_URL                the event bus (nats://127.0.0.1:4222)
 *   PAYMENT_URL             payment's base URL (http://127.0.0.1:8084), or several,
 *                           comma separated, or a host name whose every address is an
 *                           instance (lib/balance.h: RESOLVE_INTERVAL_MS, RESOLVE_HOSTS_FILE)
 *   PAYMENT_PROBE_INTERVAL_MS (1000), PAYMENT_EJECT_FAILURES (3), PAYMENT_EJECT_MS (5000)
 *                           readiness probes and passive ejection of payment's instances
 *                           (with several instances or a host name)
 *   PAYMENT_CONNECT_TIMEOUT_MS (500), PAYMENT_TIMEOUT_MS (3000), PAYMENT_POOL_SIZE (64),
 *   PAYMENT_MAX_INFLIGHT (64), PAYMENT_MAX_QUEUE (128), PAYMENT_RETRIES (1),
 *   PAYMENT_BACKOFF_MS (50), PAYMENT_BREAKER_FAILURES, _RATIO_PCT, _MIN_CALLS, _WINDOW_MS,
 *   PAYMENT_BREAKER_OPEN_MS  the synchronous payment call: timeouts, bulkhead, retries
 *                           (POST /payments is idempotent per orderId) and circuit breaker
 *                           (lib/httpc.h, lib/breaker.h for the breaker's defaults)
 *   FLEET_FILE              a JSON fleet replacing the demo fleet at start (format: fleet.c)
 *   RECONCILE_INTERVAL_MS   how often unsettled intakes are looked at (1000)
 *   TIME_ZONE               the company's time zone, whose calendar days rentals book
 *                           (Asia/Seoul; a tzdata name: /usr/share/zoneinfo or $TZDIR)
 *   RETURN_INTERVAL_MS      how often rentals due back are returned automatically (60000)
 *   ORDER_TEST_CLOCK_OFFSET_S  TEST ONLY, default 0: seconds (0 .. 400 days) added to the
 *                           real time wherever order asks for "now" (calendar.c); it shifts
 *                           time forward, every rule still applies
 *   SERVICE_TOKEN_KEY       order's own signing key (PEM), default $DATA_DIR/keys/order.key,
 *                           created on first start (0600) with its .pub beside it: order
 *                           signs short-lived `service` tokens (sub "order", 5 minutes)
 *                           for its calls to payment, which trusts that public key
 *                           (TOKEN_SERVICE_KEYS, lib/auth.h). No person holds it.
 *   ORDER_TEST_CRASH_AFTER_PAYMENT  TEST ONLY, default 0 (off): 1 = _exit() as soon as a
 *                           successful payment answer arrives, before it is committed
 *   HTTP_* limits           see lib/http.h
 *
 *   INSTANCE_ID             this process's name, also as the owner of the intakes it
 *                           works on (lib/instance.h); ORDER_LEASE_MS (10000): how long
 *                           an intake stays its owner's without a renewal (lease.c)
 *
 * Start-up order matters: the fleet is loaded and, on SQLite, every intake
 * left "pending" by a previous run is marked "in_doubt" BEFORE the server
 * listens, so the reconciler can tell a dead process's calls from the
 * live ones; on PostgreSQL (replicas) the leases tell. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "bus.h"
#include "config.h"
#include "db.h"
#include "balance.h"
#include "httpc.h"
#include "instance.h"
#include "log.h"
#include "metrics.h"
#include "order.h"
#include "service.h"
#include "store_pg.h"
#include "token.h"

#define SERVICE_TOKEN_TTL_S 300

static balance_set *payment_client;
static balance_set *reconcile_client;
static token_key *service_key;
static token_minter *service_minter;

/* httpc_auth_fn: order's service token for every payment call. */
static const char *service_credentials(void *arg)
{
    (void)arg;
    return token_minter_bearer(service_minter, (long long)time(NULL));
}

static bool load_service_key(void)
{
    char *fallback = config_data_path("keys/order.key");
    const char *path = config_str("SERVICE_TOKEN_KEY", fallback);
    char err[512];
    service_key = token_key_load_or_create(path, err, sizeof err);
    if (!service_key)
        log_error("msg=\"cannot load or create order's service key\" reason=\"%s\"", err);
    else
        log_info("msg=\"service key\" kid=%s path=%s", token_key_id(service_key), path);
    free(fallback);
    service_minter = service_key ? token_minter_new(service_key, "order", TOKEN_ROLE_SERVICE,
                                                    SERVICE_TOKEN_TTL_S) : NULL;
    return service_minter != NULL;
}

static void stop_reconciler(void *arg)
{
    reconciler_stop(arg);
}

static void stop_return_timer(void *arg)
{
    return_timer_stop(arg);
}

static void stop_leases(void *arg)
{
    lease_keeper_stop(arg);
}

/* The company's calendar and the test clock: before any thread starts
 * (cal_zone_init sets TZ). Returns 0 or -1 (logged). */
static int calendar_setup(void)
{
    char err[300];
    const char *zone = config_str("TIME_ZONE", "Asia/Seoul");
    if (cal_zone_init(zone, err, sizeof err) != 0) {
        log_error("msg=\"%s\"", err);
        return -1;
    }
    long long offset = config_int("ORDER_TEST_CLOCK_OFFSET_S", 0, 0, 400LL * 86400);
    if (offset > 0) {
        log_warn("msg=\"ORDER_TEST_CLOCK_OFFSET_S is set: order's clock runs %lld s ahead of "
                 "the real time (test setting, never for production)\"", offset);
        cal_set_test_offset(offset);
    }
    char today[CAL_DATE_SIZE];
    log_info("msg=\"calendar\" time_zone=%s today=%s", zone, cal_format(cal_today(), today));
    return 0;
}

static void free_clients(void *arg)
{
    (void)arg;
    balance_set_free(payment_client);
    balance_set_free(reconcile_client);
    payment_client = reconcile_client = NULL;
    token_minter_free(service_minter);
    token_key_free(service_key);
}

/* metrics_collector: each payment instance's choices, ejections, retries. */
static void collect_payment_instances(void *arg)
{
    (void)arg;
    if (payment_client)
        balance_collect(payment_client);
    if (reconcile_client)
        balance_collect(reconcile_client);
}

/* fleet_load, run again when PostgreSQL refused it for a conflict with
 * another replica loading the fleet at the same moment (SERIALIZABLE). */
static int load_fleet(store *st, const char *fleet_file)
{
    for (int attempt = 0;; attempt++) {
        store_clear_failure(st);
        if (fleet_load(st, fleet_file) == 0)
            return 0;
        if (!store_should_retry(st) || attempt >= 10)
            return -1;
    }
}

/* Defaults for a payment call on the customer's path, then the
 * environment. */
static void payment_opts(balance_opts *bo)
{
    httpc_opts *o = &bo->http;
    *bo = (balance_opts){0};
    *o = (httpc_opts){
        .connect_timeout_ms = 500,
        .timeout_ms = 3000,
        .pool_size = 64,
        .max_inflight = 64,
        .max_queue = 128,
        .retries = 1,
        .backoff_ms = 50,
    };
    balance_opts_from_env(bo, "PAYMENT");
}

int main(void)
{
    service *svc = service_new("order", 8081);
    if (!svc)
        return 1;

    const char *payment_url = config_str("PAYMENT_URL", "http://127.0.0.1:8084");
    const char *fleet_file = config_str("FLEET_FILE", NULL);
    int interval_ms = (int)config_int("RECONCILE_INTERVAL_MS", 1000, 10, 3600000);
    int return_ms = (int)config_int("RETURN_INTERVAL_MS", 60000, 10, 3600000);
    if (calendar_setup() != 0)
        return 2;
    bool test_crash = config_int("ORDER_TEST_CRASH_AFTER_PAYMENT", 0, 0, 1) == 1;
    if (test_crash)
        log_warn("msg=\"ORDER_TEST_CRASH_AFTER_PAYMENT is set: the process exits after the "
                 "first successful payment (test setting, never for production)\"");

    db *d = db_open(svc->base, "order", &order_schema);
    if (!d) {
        log_error("msg=\"cannot open the order database\"");
        return 1;
    }
    /* Before the loop runs, on main's own connection (db_store). */
    store *st = db_store(d);
    if (load_fleet(st, fleet_file) != 0) {
        db_close(d);
        return 2;
    }
    /* SQLite: one order process per database, so whatever is pending now
     * belonged to a previous run: in doubt at once. PostgreSQL: another
     * replica may be working on it; its lease tells (lease.c), and the
     * reconciler takes it only once that has run out. */
    int in_doubt = db_is_pg(d) ? 0 : rental_mark_in_doubt(st);
    if (in_doubt < 0) {
        db_close(d);
        return 1;
    }
    if (in_doubt > 0)
        log_warn("msg=\"rentals interrupted by the previous run will be settled with payment\" "
                 "intakes=%d", in_doubt);
    log_info("msg=\"intake owner\" instance=%s lease_ms=%ld", instance_id(),
             order_lease_ms());

    balance_opts bopts;
    payment_opts(&bopts);
    const httpc_opts opts = bopts.http;
    payment_client = balance_set_new(svc->base, "payment", payment_url, &bopts);
    /* The reconciler's own lane: a few connections, no retries (it
     * retries whole passes with backoff), its own breaker. */
    balance_opts ropts = bopts;
    ropts.http.pool_size = 4;
    ropts.http.max_inflight = 8;
    ropts.http.max_queue = 64;
    ropts.http.retries = 0;
    reconcile_client = balance_set_new(svc->base, "payment-reconciler", payment_url, &ropts);
    bus *b = bus_new_db(svc->base, d, "order");
    reconciler *rec = reconcile_client
        ? reconciler_new(svc->base, d, reconcile_client, interval_ms) : NULL;
    return_timer *returns = return_timer_new(svc->base, d, return_ms);
    lease_keeper *leases = lease_keeper_new(svc->base, d);
    if (!payment_client || !reconcile_client || !b || !rec || !returns || !leases ||
        !load_service_key()) {
        log_error("msg=\"cannot set up the payment client, the bus, the reconciler, the "
                  "return timer or the service key\"");
        return 1;
    }
    balance_set_auth(payment_client, service_credentials, NULL);
    balance_set_auth(reconcile_client, service_credentials, NULL);
    metrics_add_collector(collect_payment_instances, NULL);

    order_policy_register(b);
    order_api_config cfg = {
        .payment = payment_client,
        .reconciler = rec,
        .leases = leases,
        .test_crash_after_payment = test_crash,
    };
    /* Stop hooks run in the order registered. Clients first: freeing them
     * completes their outstanding calls, whose callbacks still find the
     * reconciler and the API alive (the API frees itself in a hook that
     * order_api_register adds after these); the bus and the store stop
     * last (service_start_bus). */
    service_on_stop(svc, free_clients, NULL);
    service_on_stop(svc, stop_reconciler, rec);
    service_on_stop(svc, stop_return_timer, returns);
    service_on_stop(svc, stop_leases, leases);
    order_api_register(svc, d, &cfg);
    if (service_start_db(svc, d, b) != 0)
        return 1;
    log_info("msg=\"payment upstream\" url=%s timeout_ms=%d connect_timeout_ms=%d "
             "max_inflight=%d max_queue=%d retries=%d", payment_url, opts.timeout_ms,
             opts.connect_timeout_ms, opts.max_inflight, opts.max_queue, opts.retries);
    return service_run(svc);
}
