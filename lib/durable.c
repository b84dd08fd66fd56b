/* durable.c: group commit (see durable.h for the contract).
 *
 * Counting. The loop numbers its commits (`committed`); `want` is the
 * highest number the loop has asked to be synced, `synced` the highest
 * number known to be on disk. A sync run first reads `want` (every commit
 * up to it has returned, so its WAL writes are done), then calls the sync
 * function: when that returns, everything up to the number it read is on
 * disk. Commits made during a run wait for the next one, which starts as
 * soon as the run ends: under load, one fsync covers all the commits of
 * the previous fsync's duration.
 *
 * Waiters are a FIFO of (number, callback) on the loop thread, released by
 * an event the sync thread activates after each run. Threads other than
 * the loop (the relay) cannot know which commit wrote the rows they read,
 * only that it was visible, hence begun: the loop publishes the number of
 * the commit it is about to make (`committing`) before COMMIT, and such a
 * thread waits until `synced` reaches the value it read after its read.
 * Usually the sync that the commit itself asked for is done or under way,
 * so the reader waits for no fsync of its own.
 *
 * The domain is a process-wide singleton: answers, calls and acks must all
 * wait for the same disk, and the HTTP layer asks without a handle. */
#include "durable.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include <event2/event.h>

#include "log.h"
#include "mem.h"
#include "metrics.h"

/* What an operator sees on /metrics: how long a sync takes, and how long
 * answers, calls and acks waited for one. */
#define METRIC_SYNC "carshare_durable_sync_seconds"
#define METRIC_WAIT "carshare_durable_wait_seconds"

static double now_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

struct waiter {
    uint64_t seq;                   /* runs once synced >= seq */
    double since;                   /* when it began to wait */
    void (*fn)(void *arg);
    void *arg;
    struct waiter *next;
};

struct domain {
    struct event_base *base;
    struct event *release;          /* activated by the sync thread after each run */
    durable_sync_fn sync;
    void *sync_arg;
    pthread_t thread;

    /* loop thread only (committing: written by the loop, read by others) */
    _Atomic uint64_t committing;    /* number of the commit under way, or the last */
    uint64_t committed;
    uint64_t synced_seen;           /* `synced` as of the last release */
    struct waiter *head, *tail, *spare;

    /* under mu */
    pthread_mutex_t mu;
    pthread_cond_t work;            /* the sync thread waits for work */
    pthread_cond_t done;            /* broadcast after each run */
    uint64_t want, synced;
    bool stopping;
};

static struct domain *dom;

/* ---- the sync thread ---- */

static bool has_work(const struct domain *d)
{
    return d->want > d->synced;
}

static void *sync_main(void *arg)
{
    struct domain *d = arg;
    pthread_mutex_lock(&d->mu);
    for (;;) {
        while (!d->stopping && !has_work(d)) pthread_cond_wait(&d->work, &d->mu);
        if (d->stopping && !has_work(d)) break;
        uint64_t target = d->want;
        pthread_mutex_unlock(&d->mu);

        double t0 = now_seconds();
        if (d->sync(d->sync_arg) != 0) {
            log_error("msg=\"cannot make commits durable (fsync failed): stopping, a restart "
                      "recovers from what the disk holds\"");
            abort();
        }

        metrics_histogram_observe(METRIC_SYNC, "", now_seconds() - t0);
        pthread_mutex_lock(&d->mu);
        if (target > d->synced) d->synced = target;
        pthread_cond_broadcast(&d->done);
        event_active(d->release, EV_READ, 0);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

/* ---- waiters (loop thread) ---- */

static uint64_t read_synced(struct domain *d)
{
    pthread_mutex_lock(&d->mu);
    uint64_t synced = d->synced;
    pthread_mutex_unlock(&d->mu);
    return synced;
}

/* Runs the waiters up to `synced`, oldest first. A callback may defer
 * again (it then waits for a later commit) or cancel others: the head is
 * re-read after each one. */
static void release_upto(struct domain *d, uint64_t synced)
{
    if (synced > d->synced_seen) d->synced_seen = synced;
    double now = d->head ? now_seconds() : 0;
    while (d->head && d->head->seq <= d->synced_seen) {
        struct waiter *w = d->head;
        /* FIFO by commit number: a waiter never waits for less than the
         * one deferred before it (what lets the release stop at the
         * first waiter still pending). */
        assert(!w->next || w->next->seq >= w->seq);
        d->head = w->next;
        if (!d->head) d->tail = NULL;
        void (*fn)(void *) = w->fn;
        void *arg = w->arg;
        metrics_histogram_observe(METRIC_WAIT, "", now - w->since);
        w->next = d->spare;
        d->spare = w;
        fn(arg);
    }
}

static void on_release(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct domain *d = arg;
    release_upto(d, read_synced(d));
}

/* ---- the interface ---- */

int durable_start(struct event_base *base, durable_sync_fn sync, void *arg)
{
    if (dom) {
        log_error("msg=\"durable_start: a durability domain is already started\"");
        return -1;
    }
    struct domain *d = calloc(1, sizeof *d);
    if (!d) return -1;
    d->base = base;
    d->sync = sync;
    d->sync_arg = arg;
    d->release = event_new(base, -1, 0, on_release, d);
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->work, NULL);
    pthread_cond_init(&d->done, NULL);
    if (!d->release || pthread_create(&d->thread, NULL, sync_main, d) != 0) {
        log_error("msg=\"durable_start: cannot start the sync thread\"");
        if (d->release) event_free(d->release);
        pthread_mutex_destroy(&d->mu);
        pthread_cond_destroy(&d->work);
        pthread_cond_destroy(&d->done);
        free(d);
        return -1;
    }
    dom = d;
    return 0;
}

void durable_committing(void)
{
    struct domain *d = dom;
    if (d) atomic_store(&d->committing, d->committed + 1);
}

void durable_committed(void)
{
    struct domain *d = dom;
    if (!d) return;
    d->committed++;
    pthread_mutex_lock(&d->mu);
    d->want = d->committed;
    pthread_cond_signal(&d->work);
    pthread_mutex_unlock(&d->mu);
}

bool durable_pending(void)
{
    struct domain *d = dom;
    if (!d || d->committed <= d->synced_seen) return false;
    /* The release event may not have run yet: look at the thread's figure. */
    d->synced_seen = read_synced(d);
    return d->committed > d->synced_seen;
}

bool durable_defer(void (*fn)(void *arg), void *arg)
{
    struct domain *d = dom;
    if (!durable_pending()) return false;
    struct waiter *w = d->spare;
    /* Out of memory: mem.h's policy. (It used to flush here instead,
     * which ran every other waiter inside this call: callbacks re-entered
     * their callers, e.g. an HTTP answer sent from inside a handler.) */
    if (w) d->spare = w->next;
    else w = mem_must(malloc(sizeof *w));
    *w = (struct waiter){.seq = d->committed, .since = now_seconds(), .fn = fn, .arg = arg};
    assert(!d->tail || d->tail->seq <= w->seq);
    if (d->tail) d->tail->next = w;
    else d->head = w;
    d->tail = w;
    return true;
}

void durable_cancel(void (*fn)(void *arg), void *arg)
{
    struct domain *d = dom;
    if (!d) return;
    struct waiter **p = &d->head, *prev = NULL;
    while (*p) {
        struct waiter *w = *p;
        if (w->fn == fn && w->arg == arg) {
            *p = w->next;
            w->next = d->spare;
            d->spare = w;
        } else {
            prev = w;
            p = &w->next;
        }
    }
    d->tail = prev;
}

/* Blocks until every commit up to `target` is on disk (or stopping). */
static void wait_until_synced(struct domain *d, uint64_t target)
{
    pthread_mutex_lock(&d->mu);
    while (d->synced < target && !d->stopping) pthread_cond_wait(&d->done, &d->mu);
    pthread_mutex_unlock(&d->mu);
}

void durable_sync_wait(void)
{
    struct domain *d = dom;
    if (!d) return;
    wait_until_synced(d, atomic_load(&d->committing));
}

void durable_flush(void)
{
    struct domain *d = dom;
    if (!d) return;
    if (d->committed > d->synced_seen) {
        pthread_mutex_lock(&d->mu);
        d->want = d->committed;
        pthread_cond_signal(&d->work);
        pthread_mutex_unlock(&d->mu);
        wait_until_synced(d, d->committed);
    }
    release_upto(d, read_synced(d));
}

void durable_stop(void)
{
    struct domain *d = dom;
    if (!d) return;
    durable_flush();
    pthread_mutex_lock(&d->mu);
    d->stopping = true;
    pthread_cond_signal(&d->work);
    pthread_mutex_unlock(&d->mu);
    pthread_join(d->thread, NULL);
    dom = NULL;
    /* Waiters deferred by the last callbacks, after the final sync: the
     * thread is gone, so this sync runs here. */
    if (d->head && d->sync(d->sync_arg) != 0) abort();
    release_upto(d, d->committed);
    while (d->spare) {
        struct waiter *w = d->spare;
        d->spare = w->next;
        free(w);
    }
    event_free(d->release);
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->work);
    pthread_cond_destroy(&d->done);
    free(d);
}
