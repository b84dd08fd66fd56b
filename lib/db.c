/* db.c: a service's database and its database threads (see db.h).
 *
 * PostgreSQL: a FIFO queue of units of work under one mutex, DB_POOL_SIZE
 * threads that take from it, each with its own connection (opened when the
 * thread starts, and again before a unit of work if that failed, so a pool
 * whose server went away recovers by itself), and a list of finished units that
 * the loop drains when a thread activates `wake` (libevent's thread-aware
 * event_active). The queue is bounded: past DB_QUEUE_MAX the caller answers
 * 503 at once rather than piling up work whose clients have given up.
 *
 * Thread 0 also pings the database after a second without work, which keeps
 * the readiness flag true to the server's state while nothing happens.
 *
 * /metrics (PostgreSQL only): carshare_db_queue_depth and
 * carshare_db_units_in_flight (read under the queue's mutex when /metrics
 * is rendered, by a collector: nothing to keep up to date per unit),
 * carshare_db_serialization_retries_total, carshare_db_unavailable_total
 * (units whose `done` got DB_UNAVAILABLE) and carshare_db_refused_total
 * (db_run said no); store_pg.c counts statement timeouts and reconnects. */
#include "db.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "config.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "store_pg.h"

#define PING_MS 1000

struct job {
    db_work_fn work;
    db_done_fn done;
    void *arg;
    db_status status;
    struct job *next;
};

struct worker {
    db *d;
    int index;
    pthread_t thread;
    store *st;              /* its connection, NULL until opened */
};

struct db {
    struct event_base *base;
    char *service;
    store *st;              /* SQLite: the loop's store; PostgreSQL: main's */
    /* PostgreSQL only below. */
    char *url;
    char setting[80];
    long queue_max, retries;
    int nworkers;
    struct worker *workers;
    pthread_mutex_t mu;
    pthread_cond_t cond;    /* work queued, or stopping */
    struct job *head, *tail;
    long queued;
    long running;           /* units of work between take and finish */
    bool collecting;        /* collect_pool registered */
    bool stopping;
    struct job *finished, *finished_tail;
    struct event *wake;
    atomic_bool reachable;
    pthread_mutex_t hook_mu;    /* guards the commit hook */
    void (*hook)(void *arg);
    void *hook_arg;
};

/* Every PostgreSQL connection's commit hook: the db's current one. */
static void commit_trampoline(void *arg)
{
    db *d = arg;
    pthread_mutex_lock(&d->hook_mu);
    if (d->hook) d->hook(d->hook_arg);
    pthread_mutex_unlock(&d->hook_mu);
}

void db_on_commit(db *d, void (*fn)(void *arg), void *arg)
{
    if (!d->url) {
        store_on_commit(d->st, fn, arg);
        return;
    }
    pthread_mutex_lock(&d->hook_mu);
    d->hook = fn;
    d->hook_arg = arg;
    pthread_mutex_unlock(&d->hook_mu);
}

/* A new connection of the database, its commits hooked. */
static store *pg_connection(db *d)
{
    store *st = store_pg_open(d->url, d->setting, d->service, NULL);
    if (st) store_on_commit(st, commit_trampoline, d);
    return st;
}

/* ---- configuration ---- */

static bool postgres_scheme(const char *url)
{
    return strncmp(url, "postgres://", 11) == 0 || strncmp(url, "postgresql://", 13) == 0;
}

/* ---- the loop's side ---- */

static void run_finished(struct job *list)
{
    while (list) {
        struct job *next = list->next;
        list->done(list->arg, list->status);
        free(list);
        list = next;
    }
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    db *d = arg;
    pthread_mutex_lock(&d->mu);
    struct job *list = d->finished;
    d->finished = d->finished_tail = NULL;
    pthread_mutex_unlock(&d->mu);
    run_finished(list);
}

bool db_run(db *d, db_work_fn work, db_done_fn done, void *arg)
{
    if (!d->workers) {
        work(d->st, arg);
        done(arg, DB_DONE);
        return true;
    }
    struct job *j = mem_must(malloc(sizeof *j));   /* mem.h: a unit's bookkeeping */
    *j = (struct job){work, done, arg, DB_DONE, NULL};
    pthread_mutex_lock(&d->mu);
    bool ok = !d->stopping && d->queued < d->queue_max;
    if (ok) {
        if (d->tail) d->tail->next = j;
        else d->head = j;
        d->tail = j;
        d->queued++;
        pthread_cond_signal(&d->cond);
    }
    pthread_mutex_unlock(&d->mu);
    if (!ok) {
        free(j);
        metrics_counter_add("carshare_db_refused_total", "", 1);
        log_warn("msg=\"database queue full or closing: unit of work refused\" queued=%ld", d->queued);
    }
    return ok;
}

/* ---- the database threads ---- */

static bool worker_connect(struct worker *w)
{
    if (w->st) return true;
    w->st = pg_connection(w->d);
    if (!w->st) atomic_store(&w->d->reachable, false);
    return w->st != NULL;
}

static void run_job(struct worker *w, struct job *j)
{
    store *st = w->st;
    bool gave_up = false;
    for (long attempt = 0;; attempt++) {
        store_clear_failure(st);
        j->work(st, j->arg);
        /* A unit that forgot its transaction must not leave it open. */
        if (store_in_transaction(st)) store_rollback(st);
        if (!store_should_retry(st)) break;
        if (attempt >= w->d->retries) {
            gave_up = true;
            break;
        }
        metrics_counter_add("carshare_db_serialization_retries_total", "", 1);
        /* Doubling, jittered: the units that conflict are the ones running
         * together, and fixed pauses (the first version: 0.2, 0.4 ... ms)
         * reran them together again; seen in e2e_pg/test_resilience, 24
         * charges at once, one lost ten times in a row and answered 500. */
        store_pg_pause_before_rerun(attempt);
    }
    /* Still conflicting after DB_RETRIES reruns: whatever the work made of
     * its failure, the client hears "try again shortly" (503), not 500. */
    if (gave_up)
        log_warn("msg=\"unit of work still in serialization conflicts after DB_RETRIES reruns: "
                 "answered unavailable\" retries=%ld", w->d->retries);
    j->status = gave_up || store_unavailable(st) ? DB_UNAVAILABLE : DB_DONE;
    atomic_store(&w->d->reachable, !store_unavailable(st));
}

static void finish(db *d, struct job *j)
{
    if (j->status == DB_UNAVAILABLE)
        metrics_counter_add("carshare_db_unavailable_total", "", 1);
    pthread_mutex_lock(&d->mu);
    d->running--;
    j->next = NULL;
    if (d->finished_tail) d->finished_tail->next = j;
    else d->finished = j;
    d->finished_tail = j;
    pthread_mutex_unlock(&d->mu);
    event_active(d->wake, EV_READ, 0);
}

static struct timespec deadline_ms(long ms)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

static void ping(struct worker *w)
{
    bool ok = worker_connect(w) && store_ready(w->st);
    if (ok != atomic_load(&w->d->reachable))
        log_info("msg=\"PostgreSQL %s\" db=%s", ok ? "reachable again" : "unreachable",
                 w->st ? store_path(w->st) : w->d->setting);
    atomic_store(&w->d->reachable, ok);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    db *d = w->d;
    /* Connect now rather than at the first request: a connection costs a
     * backend's start and a password check on the server. */
    worker_connect(w);
    pthread_mutex_lock(&d->mu);
    for (;;) {
        while (!d->head && !d->stopping) {
            if (w->index != 0) {
                pthread_cond_wait(&d->cond, &d->mu);
                continue;
            }
            struct timespec t = deadline_ms(PING_MS);
            if (pthread_cond_timedwait(&d->cond, &d->mu, &t) != 0 && !d->head && !d->stopping) {
                pthread_mutex_unlock(&d->mu);
                ping(w);
                pthread_mutex_lock(&d->mu);
            }
        }
        if (!d->head) break;    /* stopping, and the queue is empty */
        struct job *j = d->head;
        d->head = j->next;
        if (!d->head) d->tail = NULL;
        d->queued--;
        d->running++;
        pthread_mutex_unlock(&d->mu);
        if (worker_connect(w)) run_job(w, j);
        else j->status = DB_UNAVAILABLE;     /* work never ran */
        finish(d, j);
        pthread_mutex_lock(&d->mu);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

/* ---- /metrics ---- */

static void collect_pool(void *arg)
{
    db *d = arg;
    pthread_mutex_lock(&d->mu);
    long queued = d->queued, running = d->running;
    pthread_mutex_unlock(&d->mu);
    metrics_gauge_set("carshare_db_queue_depth", "", (double)queued);
    metrics_gauge_set("carshare_db_units_in_flight", "", (double)running);
}

/* ---- open / close ---- */

static db *open_sqlite(db *d, const db_schema *schema)
{
    d->st = store_open(d->service, schema->sqlite);
    if (!d->st) {
        db_close(d);
        return NULL;
    }
    return d;
}

static bool start_workers(db *d)
{
    d->nworkers = (int)config_int("DB_POOL_SIZE", 4, 1, 64);
    d->queue_max = config_int("DB_QUEUE_MAX", 1024, 1, 1000000);
    d->retries = config_int("DB_RETRIES", 10, 0, 1000);
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cond, NULL);
    atomic_init(&d->reachable, true);
    d->wake = event_new(d->base, -1, 0, on_wake, d);
    d->workers = calloc((size_t)d->nworkers, sizeof *d->workers);
    if (!d->wake || !d->workers) return false;
    metrics_add_collector(collect_pool, d);
    d->collecting = true;
    for (int i = 0; i < d->nworkers; i++) {
        d->workers[i] = (struct worker){.d = d, .index = i};
        if (pthread_create(&d->workers[i].thread, NULL, worker_main, &d->workers[i]) != 0) {
            d->nworkers = i;
            return false;
        }
    }
    return true;
}

static db *open_pg(db *d, const char *url, const db_schema *schema)
{
    if (!postgres_scheme(url)) {
        log_error("msg=\"%s must be a postgres:// or postgresql:// URL\" setting=%s", d->setting,
                  d->setting);
        db_close(d);
        return NULL;
    }
    if (!schema->pg) {
        log_error("msg=\"%s is set, but the %s service does not run on PostgreSQL yet: unset it "
                  "(the service then uses SQLite)\" setting=%s", d->setting, d->service, d->setting);
        db_close(d);
        return NULL;
    }
    pthread_mutex_init(&d->hook_mu, NULL);
    if (!(d->url = strdup(url)) ||
        !(d->st = store_pg_open(url, d->setting, d->service, schema->pg))) {
        db_close(d);
        return NULL;
    }
    store_on_commit(d->st, commit_trampoline, d);
    if (!start_workers(d)) {
        log_error("msg=\"cannot start the database threads\"");
        db_close(d);
        return NULL;
    }
    log_info("msg=\"database: PostgreSQL\" setting=%s db=%s threads=%d", d->setting,
             store_path(d->st), d->nworkers);
    return d;
}

db *db_open(struct event_base *base, const char *service, const db_schema *schema)
{
    db *d = calloc(1, sizeof *d);
    if (!d || !(d->service = strdup(service))) {
        free(d);
        log_error("msg=\"out of memory opening the database\"");
        return NULL;
    }
    d->base = base;
    const char *url = config_database_url(service, d->setting, sizeof d->setting);
    return url ? open_pg(d, url, schema) : open_sqlite(d, schema);
}

db *db_of_store(struct event_base *base, store *st)
{
    db *d = calloc(1, sizeof *d);
    if (!d || !(d->service = strdup("test"))) {
        free(d);
        return NULL;
    }
    d->base = base;
    d->st = st;
    return d;
}

void db_close(db *d)
{
    if (!d) return;
    if (d->collecting) metrics_remove_collector(collect_pool, d);
    if (d->workers) {
        pthread_mutex_lock(&d->mu);
        d->stopping = true;
        pthread_cond_broadcast(&d->cond);
        pthread_mutex_unlock(&d->mu);
        for (int i = 0; i < d->nworkers; i++) {
            pthread_join(d->workers[i].thread, NULL);
            store_close(d->workers[i].st);
        }
        /* What finished after the loop's last turn still gets its done. */
        run_finished(d->finished);
        d->finished = d->finished_tail = NULL;
        pthread_mutex_destroy(&d->mu);
        pthread_cond_destroy(&d->cond);
    }
    if (d->wake) event_free(d->wake);
    if (d->url) pthread_mutex_destroy(&d->hook_mu);
    free(d->workers);
    store_close(d->st);
    free(d->url);
    free(d->service);
    free(d);
}

bool db_is_pg(const db *d) { return d->url != NULL; }

store *db_store(db *d) { return d->st; }

store *db_connect(db *d)
{
    if (d->url) return pg_connection(d);
    return store_open_path(store_path(d->st), NULL);
}

bool db_ready(void *arg)
{
    db *d = arg;
    if (!d->workers) return store_ready(d->st);
    return atomic_load(&d->reachable);
}
