/* pg_async.c: the measurement behind the PostgreSQL backend's async design
 * (docs/DESIGN.md, "PostgreSQL"). Not a test: run by hand against a server.
 *
 *     bench-pg-async URL MODE CONNECTIONS TRANSACTIONS
 *
 * Each transaction has the shape of payment's charge (the commonest write
 * of a rental): BEGIN; two reads by order id; INSERT ... RETURNING; an
 * outbox INSERT; COMMIT. Two ways for a service to run it without its event
 * loop waiting on the network:
 *
 *   threads   CONNECTIONS threads, each with its own blocking connection,
 *             running whole transactions (six round trips each): what the
 *             domain code, written as plain sequential calls, needs.
 *   pipeline  one libevent loop and CONNECTIONS non-blocking connections in
 *             libpq's pipeline mode; a transaction is two round trips
 *             (BEGIN + reads, then writes + COMMIT), the most the data
 *             dependency (insert only if the reads found nothing) allows.
 *
 * Prints transactions/s and the client's CPU (user+sys) per transaction. */
#include <event2/event.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static const char *SETUP =
    "DROP TABLE IF EXISTS bp_payments, bp_cancellations, bp_outbox;"
    "CREATE TABLE bp_payments (id BIGSERIAL PRIMARY KEY, order_id BIGINT NOT NULL UNIQUE,"
    "  product_id TEXT NOT NULL, amount BIGINT NOT NULL, created_at TEXT NOT NULL);"
    "CREATE TABLE bp_cancellations (id BIGSERIAL PRIMARY KEY, order_id BIGINT NOT NULL UNIQUE);"
    "CREATE TABLE bp_outbox (seq BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL,"
    "  event_type TEXT NOT NULL, payload TEXT NOT NULL)";

static const char *Q_CANCEL = "SELECT id FROM bp_cancellations WHERE order_id = $1";
static const char *Q_PAY = "SELECT id, amount FROM bp_payments WHERE order_id = $1";
static const char *Q_INSERT = "INSERT INTO bp_payments (order_id, product_id, amount, created_at)"
                              " VALUES ($1, '1001', 100000, '2026-12-07T00:00:00Z') RETURNING id";
static const char *Q_OUTBOX = "INSERT INTO bp_outbox (event_id, event_type, payload)"
                              " VALUES (md5($1), 'Paid', '{\"orderId\":' || $1 || '}')";

static atomic_long next_order;
static long total;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static PGconn *connect_or_die(const char *url)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "connect: %s", PQerrorMessage(c));
        exit(1);
    }
    return c;
}

static void exec_or_die(PGconn *c, const char *sql, const char *param)
{
    const char *params[1] = {param};
    PGresult *r = PQexecParams(c, sql, param ? 1 : 0, NULL, params, NULL, NULL, 0);
    ExecStatusType s = PQresultStatus(r);
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) {
        fprintf(stderr, "%s: %s", sql, PQerrorMessage(c));
        exit(1);
    }
    PQclear(r);
}

/* ---- threads ---- */

static void *thread_main(void *arg)
{
    PGconn *c = connect_or_die(arg);
    long id;
    while ((id = atomic_fetch_add(&next_order, 1)) < total) {
        char key[24];
        snprintf(key, sizeof key, "%ld", id + 1);
        exec_or_die(c, "BEGIN", NULL);
        exec_or_die(c, Q_CANCEL, key);
        exec_or_die(c, Q_PAY, key);
        exec_or_die(c, Q_INSERT, key);
        exec_or_die(c, Q_OUTBOX, key);
        exec_or_die(c, "COMMIT", NULL);
    }
    PQfinish(c);
    return NULL;
}

static void run_threads(const char *url, int n)
{
    pthread_t *t = calloc((size_t)n, sizeof *t);
    for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, thread_main, (void *)url);
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    free(t);
}

/* ---- pipeline on a loop ---- */

struct pconn {
    PGconn *c;
    struct event *ev;
    int phase;          /* 0 = reads in flight, 1 = writes + COMMIT in flight */
    int syncs;          /* batches sent and not finished */
    char key[24];
};

static struct event_base *base;
static long done_count;

static void send_or_die(struct pconn *p, const char *sql, bool with_param)
{
    const char *params[1] = {p->key};
    if (!PQsendQueryParams(p->c, sql, with_param ? 1 : 0, NULL, params, NULL, NULL, 0)) {
        fprintf(stderr, "send: %s", PQerrorMessage(p->c));
        exit(1);
    }
}

static bool start_txn(struct pconn *p)
{
    long id = atomic_fetch_add(&next_order, 1);
    if (id >= total) return false;
    snprintf(p->key, sizeof p->key, "%ld", id + 1);
    p->phase = 0;
    send_or_die(p, "BEGIN", false);
    send_or_die(p, Q_CANCEL, true);
    send_or_die(p, Q_PAY, true);
    PQpipelineSync(p->c);
    p->syncs++;
    PQflush(p->c);
    return true;
}

static void on_sync(struct pconn *p)
{
    if (p->phase == 0) {
        p->phase = 1;
        send_or_die(p, Q_INSERT, true);
        send_or_die(p, Q_OUTBOX, true);
        send_or_die(p, "COMMIT", false);
        PQpipelineSync(p->c);
        p->syncs++;
        PQflush(p->c);
        return;
    }
    done_count++;
    if (!start_txn(p)) {
        event_del(p->ev);
        if (done_count >= total) event_base_loopbreak(base);
    }
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pconn *p = arg;
    if (!PQconsumeInput(p->c)) {
        fprintf(stderr, "read: %s", PQerrorMessage(p->c));
        exit(1);
    }
    /* A NULL result ends one query's results; the sync ends the batch. */
    while (p->syncs > 0 && !PQisBusy(p->c)) {
        PGresult *r = PQgetResult(p->c);
        if (!r) continue;
        ExecStatusType s = PQresultStatus(r);
        PQclear(r);
        if (s == PGRES_PIPELINE_SYNC) {
            p->syncs--;
            on_sync(p);
        } else if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) {
            fprintf(stderr, "pipeline result: %s", PQerrorMessage(p->c));
            exit(1);
        }
    }
}

static void run_pipeline(const char *url, int n)
{
    base = event_base_new();
    struct pconn *ps = calloc((size_t)n, sizeof *ps);
    for (int i = 0; i < n; i++) {
        ps[i].c = connect_or_die(url);
        PQsetnonblocking(ps[i].c, 1);
        PQenterPipelineMode(ps[i].c);
        ps[i].ev = event_new(base, PQsocket(ps[i].c), EV_READ | EV_PERSIST, on_readable, &ps[i]);
        event_add(ps[i].ev, NULL);
        start_txn(&ps[i]);
    }
    event_base_dispatch(base);
    for (int i = 0; i < n; i++) {
        event_free(ps[i].ev);
        PQfinish(ps[i].c);
    }
    free(ps);
    event_base_free(base);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s URL threads|pipeline CONNECTIONS TRANSACTIONS\n", argv[0]);
        return 2;
    }
    const char *url = argv[1];
    int n = atoi(argv[3]);
    total = atol(argv[4]);
    PGconn *c = connect_or_die(url);
    PGresult *r = PQexec(c, SETUP);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        fprintf(stderr, "setup: %s", PQerrorMessage(c));
        return 1;
    }
    PQclear(r);
    PQfinish(c);

    double t0 = now_s(), c0 = cpu_s();
    if (strcmp(argv[2], "threads") == 0)
        run_threads(url, n);
    else
        run_pipeline(url, n);
    double wall = now_s() - t0, cpu = cpu_s() - c0;
    printf("%s connections=%d transactions=%ld: %.0f/s, client CPU %.1f us per transaction\n",
           argv[2], n, total, (double)total / wall, cpu * 1e6 / (double)total);
    return 0;
}
