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
 * With the PostgreSQL backend these transactions leave the loop like the
 * others (docs/DESIGN.md); the rule does not change. */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>

#include "log.h"
#include "metrics.h"
#include "order.h"

#define RETURN_BATCH 64

struct return_timer {
    store *st;
    int interval_ms;
    struct event *timer;
    long swept_day;          /* the last day whose old bookings were deleted */
};

static void schedule(return_timer *t, int delay_ms)
{
    struct timeval tv = {delay_ms / 1000, (delay_ms % 1000) * 1000};
    evtimer_add(t->timer, &tv);
}

/* Returns the due rentals of one batch: how many were looked at, -1 on a
 * database error. */
static int return_batch(return_timer *t, long today, time_t now)
{
    long long ids[RETURN_BATCH];
    int n = order_store_due(t->st, today, ids, RETURN_BATCH);
    for (int i = 0; i < n; i++) {
        order o;
        char req[48];
        snprintf(req, sizeof req, "auto-return-%lld", ids[i]);
        return_outcome r = order_return(t->st, ids[i], today, now, req, &o);
        if (r == RETURN_DONE) {
            char to[CAL_DATE_SIZE];
            log_info("req=%s msg=\"rental returned at the end of its period\" order=%lld "
                     "product=%s qty=%lld to=%s", req, o.id, o.product_id, o.qty,
                     cal_format(o.to_day, to));
            metrics_counter_add("carshare_returns_total", "by=\"timer\"", 1);
        } else if (r == RETURN_FAILED) {
            log_error("req=%s msg=\"automatic return failed; retried at the next pass\" "
                      "order=%lld", req, ids[i]);
            return -1;
        }
    }
    return n;
}

/* At most once a day: the bookings of days before yesterday go. */
static void sweep_bookings(return_timer *t, long today)
{
    if (t->swept_day == today)
        return;
    if (store_begin(t->st) != SQLITE_OK)
        return;
    int n = booking_store_forget_before(t->st, today - 1);
    if (n < 0 || store_commit(t->st) != SQLITE_OK) {
        store_rollback(t->st);
        return;   /* tried again at the next pass */
    }
    t->swept_day = today;
    if (n > 0)
        log_info("msg=\"bookings of past days deleted\" rows=%d", n);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    return_timer *t = arg;
    sweep_bookings(t, cal_today());
    int n = return_batch(t, cal_today(), cal_now());
    schedule(t, n == RETURN_BATCH ? 0 : t->interval_ms);
}

return_timer *return_timer_new(struct event_base *base, store *st, int interval_ms)
{
    return_timer *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->st = st;
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
    event_free(t->timer);
    free(t);
}
