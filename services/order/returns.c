/* returns.c: the automatic return at the end of a rental's period.
 *
 * A rental is due back on its `to` day (exclusive end of the period). A
 * libevent timer on the loop looks, every RETURN_INTERVAL_MS (60 s), for
 * active rentals due by today (cal_today: the company's zone, the test
 * clock) and returns each one exactly as POST /orders/{id}/return does
 * (order_return): status Returned, cars free again, Returned published.
 * A rental due at midnight is thus back within one interval.
 *
 * Why this is safe:
 *  - across restarts: the timer keeps no state. What is due is in the
 *    database (orders_due, a partial index of the active rentals by due
 *    day), so a pass after a restart finds whatever the last run did not
 *    return; the first pass runs at once when the process starts.
 *  - twice (a customer's return racing the timer, or, later, two replicas
 *    with their own timers): order_return is one transaction whose
 *    guarded UPDATE (status IN (OrderApproved, Shipped)) lets one return
 *    change the row and write the Returned event; the other finds
 *    Returned and publishes nothing.
 *  - under load: a pass returns at most RETURN_BATCH rentals, each in its
 *    own short local transaction (no network call), then yields the loop;
 *    a full batch schedules the next pass at once.
 * Once a day the timer also deletes the bookings of days before yesterday:
 * nothing reads them (no period starts in the past, a return frees days
 * after it, a cancel's release of a deleted day has nothing to do), and
 * without it the table would grow by a row per model and day forever.
 * A pass is one unit of work (db.h): at once on the loop on SQLite, on a
 * database thread on PostgreSQL (the loop only schedules it); one pass at
 * a time, the next scheduled when it is done. The rule does not change. */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>

#include "log.h"
#include "metrics.h"
#include "order.h"

#define RETURN_BATCH 64

struct return_timer {
    db *db;
    int interval_ms;
    struct event *timer;
    long swept_day;          /* the last day whose old bookings were deleted */
    /* One pass: read by the unit of work, which may run on a database thread. */
    bool running;            /* a pass is queued or running */
    bool stopping;           /* stopped while running: the pass's end frees it */
    long today;
    time_t now;
    int looked_at;           /* rentals the pass looked at, -1 on a database error */
};

static void schedule(return_timer *t, int delay_ms)
{
    struct timeval tv = {delay_ms / 1000, (delay_ms % 1000) * 1000};
    evtimer_add(t->timer, &tv);
}

/* Returns the due rentals of one batch: how many were looked at, -1 on a
 * database error. */
static int return_batch(store *st, long today, time_t now)
{
    long long ids[RETURN_BATCH];
    int n = order_store_due(st, today, ids, RETURN_BATCH);
    for (int i = 0; i < n; i++) {
        order o;
        char req[48];
        snprintf(req, sizeof req, "auto-return-%lld", ids[i]);
        end_outcome r = order_return(st, ids[i], today, now, req, &o);
        if (r == END_DONE) {
            char to[CAL_DATE_SIZE];
            log_info("req=%s msg=\"rental returned at the end of its period\" order=%lld "
                     "product=%s qty=%lld to=%s", req, o.id, o.product_id, o.qty,
                     cal_format(o.to_day, to));
            metrics_counter_add("carshare_returns_total", "by=\"timer\"", 1);
        } else if (r == END_FAILED) {
            log_error("req=%s msg=\"automatic return failed; retried at the next pass\" "
                      "order=%lld", req, ids[i]);
            return -1;
        }
    }
    return n;
}

/* At most once a day: the bookings of days before yesterday go. */
static void sweep_bookings(return_timer *t, store *st, long today)
{
    if (t->swept_day == today)
        return;
    if (store_begin(st) != SQLITE_OK)
        return;
    int n = booking_store_forget_before(st, today - 1);
    if (n < 0 || store_commit(st) != SQLITE_OK) {
        store_rollback(st);
        return;   /* tried again at the next pass */
    }
    t->swept_day = today;
    if (n > 0)
        log_info("msg=\"bookings of past days deleted\" rows=%d", n);
}

static void pass_work(store *st, void *arg)
{
    return_timer *t = arg;
    sweep_bookings(t, st, t->today);
    t->looked_at = return_batch(st, t->today, t->now);
}

static void pass_done(void *arg, db_status status)
{
    return_timer *t = arg;
    t->running = false;
    if (t->stopping) {
        event_free(t->timer);
        free(t);
        return;
    }
    schedule(t, status == DB_DONE && t->looked_at == RETURN_BATCH ? 0 : t->interval_ms);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    return_timer *t = arg;
    t->today = cal_today();
    t->now = cal_now();
    t->running = true;
    if (!db_run(t->db, pass_work, pass_done, t)) {
        t->running = false;
        schedule(t, t->interval_ms);   /* the database is closing or swamped */
    }
}

return_timer *return_timer_new(struct event_base *base, db *d, int interval_ms)
{
    return_timer *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->db = d;
    t->interval_ms = interval_ms;
    t->timer = evtimer_new(base, on_timer, t);
    if (!t->timer) {
        free(t);
        return NULL;
    }
    schedule(t, 0);   /* at start: what a previous run left due */
    return t;
}

void return_timer_stop(return_timer *t)
{
    if (!t)
        return;
    if (t->running) {
        t->stopping = true;    /* pass_done frees it */
        return;
    }
    event_free(t->timer);
    free(t);
}
