/* test_store_pg.c: the PostgreSQL store and the database threads, against
 * a real server (tests/pg_run.py starts one and sets TEST_DATABASE_URL).
 *
 * Migrations (applied once, in order, by two processes' worth of
 * connections opening at once; a schema newer than the program refused),
 * the query helpers, transactions (commit, rollback, a failed transaction's
 * COMMIT), serialization conflicts retried by db_run until both units of
 * work have their effect, the statement deadline (cancelled, reported
 * unavailable), a connection cut by the server coming back by itself,
 * readiness, and the start-up errors that must name the setting: a wrong
 * password, a missing database, a URL of another scheme, a service without
 * a PostgreSQL schema. And the pool's figures on /metrics: each count
 * checked against what the test itself saw happen (reruns, one statement
 * timeout, one unavailable unit, reconnects), and the gauges seen from
 * inside a running unit of work (one in flight, none queued). And the
 * consumer's claim of a slice's eventIds in one statement. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/thread.h>

#include "db.h"
#include "log.h"
#include "metrics.h"
#include "processed.h"
#include "store_pg.h"
#include "testing.h"

static const char *url;

static const char *const migrations[] = {
    "CREATE TABLE counters (id BIGINT PRIMARY KEY, n BIGINT NOT NULL)",
    "INSERT INTO counters (id, n) VALUES (1, 0), (2, 0)",
    NULL
};

static long long value_of(store *st, long long id)
{
    char b[24];
    const char *p[] = {store_pg_int(b, id)};
    return store_pg_one_int(st, "SELECT n FROM counters WHERE id = $1", 1, p, "counter read");
}

/* ---- migrations ---- */

static void *open_concurrently(void *arg)
{
    (void)arg;
    return store_pg_open(url, "TEST_DATABASE_URL", "unit", migrations);
}

static void test_migrations_once_under_concurrency(void)
{
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, open_concurrently, NULL);
    store *st[4];
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        st[i] = r;
        CHECK(st[i] != NULL);
    }
    /* The INSERT ran once: two rows, not eight (or a primary key error). */
    CHECK_INT(store_pg_one_int(st[0], "SELECT count(*) FROM counters", 0, NULL, "count"), 2);
    CHECK_INT(store_pg_one_int(st[0], "SELECT version FROM schema_versions WHERE name = 'service'",
                               0, NULL, "version"), 2);
    CHECK_INT(store_pg_one_int(st[0], "SELECT version FROM schema_versions WHERE name = 'platform'",
                               0, NULL, "version"), 2);
    for (int i = 0; i < 4; i++) store_close(st[i]);

    /* A program that knows fewer scripts than the database has refuses it. */
    static const char *const older[] = {
        "CREATE TABLE counters (id BIGINT PRIMARY KEY, n BIGINT NOT NULL)", NULL};
    CHECK(store_pg_open(url, "TEST_DATABASE_URL", "unit", older) == NULL);
}

/* ---- queries and transactions ---- */

static void test_queries_and_transactions(void)
{
    store *st = store_pg_open(url, "TEST_DATABASE_URL", "unit", migrations);
    CHECK(st != NULL);
    if (!st) return;
    CHECK(store_is_pg(st));
    char b1[24], b2[24];
    const char *p[] = {store_pg_int(b1, 5), store_pg_int(b2, 1)};
    const char *set = "UPDATE counters SET n = $1 WHERE id = $2";

    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK(store_in_transaction(st));
    CHECK_INT(store_pg_command(st, set, 2, p, "set"), 1);
    CHECK_INT(store_commit(st), SQLITE_OK);
    CHECK(!store_in_transaction(st));
    CHECK_INT(value_of(st, 1), 5);

    /* Each transaction has a number of its own; none outside one. */
    CHECK_INT(store_pg_transaction(st), 0);
    CHECK_INT(store_begin(st), SQLITE_OK);
    unsigned long first = store_pg_transaction(st);
    CHECK(first != 0);
    store_rollback(st);
    CHECK_INT(store_pg_transaction(st), 0);
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK(store_pg_transaction(st) != 0 && store_pg_transaction(st) != first);
    CHECK_INT(store_commit(st), SQLITE_OK);
    CHECK_INT(store_pg_transaction(st), 0);

    p[0] = store_pg_int(b1, 9);
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(store_pg_command(st, set, 2, p, "set"), 1);
    store_rollback(st);
    CHECK_INT(value_of(st, 1), 5);

    /* A statement that fails aborts the transaction: its COMMIT must fail
     * too, not report the rollback PostgreSQL did as a success. */
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(store_pg_command(st, set, 2, p, "set"), 1);
    CHECK(store_pg_query(st, "SELECT no_such_column FROM counters", 0, NULL, "bad read") == NULL);
    CHECK(!store_unavailable(st));
    CHECK(store_commit(st) != SQLITE_OK);
    CHECK_INT(value_of(st, 1), 5);

    /* Text, NULL and integers read back. */
    PGresult *r = store_pg_query(st, "SELECT 'abc', NULL::text, 42::bigint", 0, NULL, "read");
    CHECK(r != NULL);
    if (r) {
        char t[8];
        store_pg_get_text(r, 0, 0, t, sizeof t);
        CHECK_STR(t, "abc");
        store_pg_get_text(r, 0, 1, t, sizeof t);
        CHECK_STR(t, "");
        CHECK_INT(store_pg_get_int(r, 0, 2), 42);
        PQclear(r);
    }
    char red[128];
    store_pg_redact("postgres://u:secret@127.0.0.1:5/d", red, sizeof red);
    CHECK_STR(red, "postgres://u:***@127.0.0.1:5/d");
    CHECK(strstr(store_path(st), "***") != NULL);
    store_close(st);
}

/* ---- the consumer's claims (processed.h) ---- */

static long long processed_rows(store *st, const char *id)
{
    const char *p[] = {id};
    return store_pg_one_int(st, "SELECT count(*) FROM processed_events WHERE event_id = $1", 1, p,
                            "processed count");
}

/* A slice's eventIds claimed in one statement: new ones are claimed, one
 * already applied (in either generation) is not, and of an id twice in the
 * list only the first is; a rolled back claim leaves nothing. */
static void test_claim_all(void)
{
    store *st = store_pg_open(url, "TEST_DATABASE_URL", "unit", migrations);
    CHECK(st != NULL);
    if (!st) return;
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(processed_claim(st, "e-old", "Ordered"), 1);
    CHECK(store_exec(st, "INSERT INTO processed_events_previous (event_id, event_type, processed_at)"
                         " VALUES ('e-prev', 'Paid', 'x')") == SQLITE_OK);
    CHECK_INT(store_commit(st), SQLITE_OK);

    const char *ids[] = {"e-1", "e-old", "e-2", "e-1", "e-prev", "e-\"q\\", "e-2"};
    const char *types[] = {"Ordered", "Ordered", "Paid", "Ordered", "Paid", "Odd", "Paid"};
    const bool want[] = {true, false, true, false, false, true, false};
    bool claimed[7];
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(processed_claim_all(st, 7, ids, types, claimed), 0);
    for (int i = 0; i < 7; i++) CHECK_INT(claimed[i], want[i]);
    store_rollback(st);
    CHECK_INT(processed_rows(st, "e-1"), 0);

    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(processed_claim_all(st, 7, ids, types, claimed), 0);
    CHECK_INT(processed_claim_all(st, 0, ids, types, claimed), 0);
    CHECK_INT(store_commit(st), SQLITE_OK);
    CHECK_INT(processed_rows(st, "e-1"), 1);
    CHECK_INT(processed_rows(st, "e-\"q\\"), 1);
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(processed_claim_all(st, 7, ids, types, claimed), 0);   /* all applied now */
    for (int i = 0; i < 7; i++) CHECK(!claimed[i]);
    CHECK_INT(store_commit(st), SQLITE_OK);
    store_close(st);
}

/* ---- the database threads ---- */

struct bump {
    long long id;
    int ran;                 /* how many times work ran (retries) */
    db_status status;
    int *finished;
    struct event_base *base;
    int expect;
};

/* Read, then write what was read plus one: two of these at once on
 * different connections conflict, and SERIALIZABLE refuses one. */
static void bump_work(store *st, void *arg)
{
    struct bump *b = arg;
    b->ran++;
    if (store_begin(st) != SQLITE_OK) return;
    long long n = value_of(st, b->id);
    char v[24], k[24];
    const char *p[] = {store_pg_int(v, n + 1), store_pg_int(k, b->id)};
    usleep(2000);       /* widen the window in which the others read */
    if (n < 0 || store_pg_command(st, "UPDATE counters SET n = $1 WHERE id = $2", 2, p, "bump") != 1) {
        store_rollback(st);
        return;
    }
    store_commit(st);
}

static void bump_done(void *arg, db_status status)
{
    struct bump *b = arg;
    b->status = status;
    if (++*b->finished == b->expect) event_base_loopbreak(b->base);
}

/* ---- /metrics ---- */

/* The value of the series written exactly `series` (name, and labels in
 * braces if any) on /metrics now; 0 when it is not there yet. */
static double metric(const char *series)
{
    struct evbuffer *b = evbuffer_new();
    metrics_render(b);
    evbuffer_add(b, "", 1);
    const char *text = (const char *)evbuffer_pullup(b, -1);
    size_t n = strlen(series);
    double v = 0;
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ') {
            v = strtod(p + n + 1, NULL);
            break;
        }
    }
    evbuffer_free(b);
    return v;
}

struct gauges {
    double in_flight, queued;
    struct event_base *base;
};

static void gauges_work(store *st, void *arg)
{
    (void)st;
    struct gauges *g = arg;
    g->in_flight = metric("carshare_db_units_in_flight");
    g->queued = metric("carshare_db_queue_depth");
}

static void gauges_done(void *arg, db_status status)
{
    (void)status;
    struct gauges *g = arg;
    event_base_loopbreak(g->base);
}

/* Alone on the pool, a unit of work sees itself in flight, nobody queued;
 * once it is done, nothing is in flight. */
static void test_pool_gauges(struct event_base *base, db *d)
{
    struct gauges g = {.in_flight = -1, .queued = -1, .base = base};
    CHECK(db_run(d, gauges_work, gauges_done, &g));
    event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY);
    CHECK(g.in_flight == 1);
    CHECK(g.queued == 0);
    CHECK(metric("carshare_db_units_in_flight") == 0);
    CHECK(metric("carshare_db_queue_depth") == 0);
}

/* ---- the pool ---- */

/* Returns how many times units of work were run again. */
static int test_pool_retries_conflicts(struct event_base *base, db *d)
{
    enum { N = 8 };
    store *st = db_store(d);
    long long before = value_of(st, 2);
    struct bump b[N];
    int finished = 0;
    for (int i = 0; i < N; i++) {
        b[i] = (struct bump){.id = 2, .finished = &finished, .base = base, .expect = N};
        CHECK(db_run(d, bump_work, bump_done, &b[i]));
    }
    event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY);
    CHECK_INT(finished, N);
    int reran = 0, reruns = 0;
    for (int i = 0; i < N; i++) {
        CHECK_INT(b[i].status, DB_DONE);
        reran += b[i].ran > 1;
        reruns += b[i].ran - 1;
    }
    /* Every increment is there: the lost updates were retried, not lost. */
    CHECK_INT(value_of(st, 2), before + N);
    fprintf(stderr, "units of work run again after a conflict: %d of %d\n", reran, N);
    return reruns;
}

struct sleeper {
    db_status status;
    bool failed;
    struct event_base *base;
};

static void sleep_work(store *st, void *arg)
{
    struct sleeper *s = arg;
    PGresult *r = store_pg_query(st, "SELECT pg_sleep(5)", 0, NULL, "sleep");
    s->failed = r == NULL;
    PQclear(r);
}

static void sleep_done(void *arg, db_status status)
{
    struct sleeper *s = arg;
    s->status = status;
    event_base_loopbreak(s->base);
}

static void test_deadline_cancels(struct event_base *base, db *d)
{
    struct sleeper s = {.status = DB_DONE, .base = base};
    CHECK(db_run(d, sleep_work, sleep_done, &s));
    event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY);
    CHECK(s.failed);
    CHECK_INT(s.status, DB_UNAVAILABLE);
}

/* The server cuts every other connection of our role (as a restart would):
 * the next units of work reconnect by themselves. */
static void test_reconnects(struct event_base *base, db *d)
{
    store *st = db_store(d);
    PGresult *r = store_pg_query(st, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                     " WHERE usename = current_user AND pid <> pg_backend_pid()",
                                 0, NULL, "terminate");
    CHECK(r != NULL);
    PQclear(r);
    long long before = value_of(st, 1);
    /* A unit may land on a cut connection whose loss shows only in its
     * transaction (503 to its client); then the next one reconnects. */
    int ok = 0;
    for (int round = 0; round < 12 && ok < 4; round++) {
        struct bump b = {.id = 1, .finished = &(int){0}, .base = base, .expect = 1};
        CHECK(db_run(d, bump_work, bump_done, &b));
        event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY);
        ok += b.status == DB_DONE;
    }
    CHECK_INT(ok, 4);
    CHECK(value_of(st, 1) >= before + 4);
    CHECK(db_ready(d));
}

/* ---- start-up errors ---- */

static void test_start_errors(struct event_base *base)
{
    static const db_schema with_pg = {NULL, migrations};
    static const db_schema sqlite_only = {NULL, NULL};
    struct {
        const char *url;
        const db_schema *schema;
    } cases[] = {
        {getenv("TEST_DATABASE_URL_BADPASS"), &with_pg},
        {getenv("TEST_DATABASE_URL_NODB"), &with_pg},
        {"mysql://u:p@127.0.0.1/x", &with_pg},
        {url, &sqlite_only},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (!cases[i].url) continue;
        setenv("UNIT_DATABASE_URL", cases[i].url, 1);
        db *d = db_open(base, "unit", cases[i].schema);
        CHECK(d == NULL);
        db_close(d);
    }
    unsetenv("UNIT_DATABASE_URL");
}

int main(void)
{
    url = getenv("TEST_DATABASE_URL");
    if (!url) {
        fprintf(stderr, "TEST_DATABASE_URL is not set: run under tests/pg_run.py\n");
        return 1;
    }
    log_init("test_store_pg");
    evthread_use_pthreads();
    test_migrations_once_under_concurrency();
    test_queries_and_transactions();
    test_claim_all();

    struct event_base *base = event_base_new();
    setenv("DATABASE_URL", url, 1);
    setenv("DB_STATEMENT_TIMEOUT_MS", "300", 1);
    static const db_schema schema = {NULL, migrations};
    db *d = db_open(base, "unit", &schema);
    CHECK(d != NULL);
    if (d) {
        CHECK(db_is_pg(d));
        CHECK(db_ready(d));
        double retries = metric("carshare_db_serialization_retries_total");
        int reruns = test_pool_retries_conflicts(base, d);
        CHECK_INT((long long)(metric("carshare_db_serialization_retries_total") - retries), reruns);

        double timeouts = metric("carshare_db_statement_timeouts_total");
        double unavailable = metric("carshare_db_unavailable_total");
        test_deadline_cancels(base, d);
        CHECK_INT((long long)(metric("carshare_db_statement_timeouts_total") - timeouts), 1);
        CHECK_INT((long long)(metric("carshare_db_unavailable_total") - unavailable), 1);

        double reconnects = metric("carshare_db_reconnects_total{outcome=\"ok\"}");
        test_reconnects(base, d);
        CHECK(metric("carshare_db_reconnects_total{outcome=\"ok\"}") > reconnects);

        test_pool_gauges(base, d);
        db_close(d);
    }
    unsetenv("DATABASE_URL");
    test_start_errors(base);
    event_base_free(base);
    return test_done("test_store_pg");
}
