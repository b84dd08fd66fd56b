/* lease.c: who is working on an intake, and for how long (issue 14).
 *
 * Several order processes may share one PostgreSQL database. A pending
 * intake is a payment call in flight in exactly one of them; when that
 * process dies, the intake must be settled with payment by another one,
 * exactly once, and never while its own process is still waiting for the
 * answer. So every intake carries an owner (this process's instance id) and
 * a lease (`lease_until`, milliseconds since the epoch):
 *
 *  - rental_reserve writes the intake with this instance as owner and a
 *    lease of ORDER_LEASE_MS (10 s);
 *  - while the payment call is in flight, the intake is in this keeper's
 *    set, and a timer renews the leases of the whole set every third of a
 *    lease, in one statement (intake_store_renew), as a unit of work;
 *  - the call's end takes it out of the set, whatever happened: an intake
 *    left pending then (its outcome could not be written) is no longer
 *    renewed, and its lease runs out;
 *  - the reconciler (reconcile.c) takes only intakes whose lease ran out, or
 *    voiding and in-doubt ones it owns, and takes them with a lease of its
 *    own (intake_store_claim: a row lock, FOR UPDATE SKIP LOCKED, so two
 *    reconcilers never take the same intake).
 * A frozen process (SIGSTOP, a long pause) loses its leases like a dead one;
 * when it wakes, its late approval and the other's settlement are both
 * guarded state changes, of which the first wins (rental.c answers from
 * whatever the intake became).
 *
 * The owner is the process's instance id (lib/instance.h: INSTANCE_ID, the
 * name its log lines and metrics carry too, else hostname-pid, so that a
 * restarted process never mistakes a dead predecessor's intakes for its
 * own). Leases are compared with the database's clock on PostgreSQL
 * (replicas on several machines need no synchronized clocks) and with this
 * machine's on SQLite (one process). */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "instance.h"
#include "log.h"
#include "mem.h"
#include "order.h"

#define LEASE_DEFAULT_MS 10000

struct lease_keeper {
    db *db;
    long lease_ms;
    struct event *timer;
    long long *ids;          /* the intakes whose payment call is in flight */
    int n, cap;
    /* one renewal at a time: its own copy of the set */
    bool running;
    bool stopping;           /* stopped while running: the renewal's end frees it */
    long long *batch;
    int batch_n;
};

long order_lease_ms(void)
{
    return (long)config_int("ORDER_LEASE_MS", LEASE_DEFAULT_MS, 300, 3600000);
}

long long lease_now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* ---- the renewal ---- */

static void schedule(lease_keeper *k)
{
    long every = k->lease_ms / 3;
    struct timeval tv = {every / 1000, (every % 1000) * 1000};
    evtimer_add(k->timer, &tv);
}

static void free_keeper(lease_keeper *k)
{
    event_free(k->timer);
    free(k->ids);
    free(k->batch);
    free(k);
}

static void renew_work(store *st, void *arg)
{
    lease_keeper *k = arg;
    int rc = store_begin(st) == SQLITE_OK
        ? intake_store_renew(st, instance_id(), k->batch, k->batch_n, k->lease_ms) : -1;
    if (rc < 0 || store_commit(st) != SQLITE_OK) {
        store_rollback(st);
        log_warn("msg=\"intake leases could not be renewed; retried at the next tick\" "
                 "intakes=%d", k->batch_n);
    }
}

static void renew_done(void *arg, db_status status)
{
    (void)status;    /* a failed renewal is tried again at the next tick */
    lease_keeper *k = arg;
    k->running = false;
    if (k->stopping)
        free_keeper(k);
    else
        schedule(k);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    lease_keeper *k = arg;
    if (k->n == 0) {
        schedule(k);
        return;
    }
    k->batch = mem_must(realloc(k->batch, (size_t)k->n * sizeof *k->batch));
    memcpy(k->batch, k->ids, (size_t)k->n * sizeof *k->ids);
    k->batch_n = k->n;
    k->running = true;
    if (!db_run(k->db, renew_work, renew_done, k)) {
        k->running = false;
        schedule(k);
    }
}

/* ---- the set ---- */

lease_keeper *lease_keeper_new(struct event_base *base, db *d)
{
    lease_keeper *k = mem_must(calloc(1, sizeof *k));
    k->db = d;
    k->lease_ms = order_lease_ms();
    k->timer = evtimer_new(base, on_tick, k);
    if (!k->timer) {
        free(k);
        return NULL;
    }
    schedule(k);
    return k;
}

void lease_keeper_add(lease_keeper *k, long long intake_id)
{
    if (k->n == k->cap) {
        k->cap = k->cap ? k->cap * 2 : 64;
        k->ids = mem_must(realloc(k->ids, (size_t)k->cap * sizeof *k->ids));
    }
    k->ids[k->n++] = intake_id;
}

void lease_keeper_remove(lease_keeper *k, long long intake_id)
{
    /* In flight at once: at most the payment client's bulkhead and queue
     * (a few hundred), so a linear search is cheap. */
    for (int i = 0; i < k->n; i++) {
        if (k->ids[i] == intake_id) {
            k->ids[i] = k->ids[--k->n];
            return;
        }
    }
}

void lease_keeper_stop(lease_keeper *k)
{
    if (!k)
        return;
    if (k->running) {
        k->stopping = true;
        evtimer_del(k->timer);
        return;
    }
    free_keeper(k);
}
