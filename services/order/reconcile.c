/* reconcile.c: settles the intakes whose payment outcome is unknown.
 *
 * Two kinds of intake wait here (order.h):
 *  - voiding: the customer was told 503 while payment may or may not have
 *    charged. POST /paymentCancellations {orderId} refunds the payment if
 *    there is one and otherwise makes payment refuse any late one; then
 *    the intake is voided and its cars are released.
 *  - in_doubt: the process died while the payment call was in flight, and
 *    nobody was answered. GET /payments/search/findByOrderId tells: paid ->
 *    the rental is accepted exactly as if the answer had arrived (order +
 *    Ordered, and a retry with the same Idempotency-Key gets the 201);
 *    not paid -> voiding, as above.
 *
 * A third kind is taken too: a pending intake whose lease ran out (lease.c),
 * i.e. whose process died or froze during its payment call; taking it
 * makes it in doubt. Intakes are taken (intake_store_claim) with a lease
 * of this instance: with several order processes on one PostgreSQL
 * database, each intake is settled by one reconciler at a time, and a
 * pending one is never taken while its own process still renews its lease.
 *
 * A pass takes up to RECONCILE_BATCH intakes, oldest first, and calls
 * payment for all of them at once (through its own small client set, so
 * background work never takes the customers' bulkhead slots); when every
 * answer is in, the next pass is scheduled: at once if the pass settled
 * something (more may wait), after RECONCILE_INTERVAL_MS if there was
 * nothing to do, and with exponential backoff (capped, jittered) while
 * payment fails, so an outage is not hammered yet a stuck intake is
 * settled within a bounded time after payment returns.
 *
 * The database work is done in units of work (db.h): reading a batch is
 * one, and settling each intake from payment's answer another (at once
 * on the loop on SQLite, on a database thread on PostgreSQL). A call
 * counts as in flight until its settling unit is done, so a pass never
 * overlaps the next one. */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "balance.h"
#include "instance.h"
#include "log.h"
#include "metrics.h"
#include "order.h"

#define RECONCILE_BATCH 32
#define RECONCILE_MAX_BACKOFF_MS 5000

struct reconciler {
    struct event_base *base;
    db *db;
    balance_set *payment;
    int interval_ms;
    int backoff_ms;          /* 0 while payment answers */
    struct event *timer;
    int inflight;            /* calls of the current pass */
    bool pass_failed;        /* some call of this pass failed */
    bool pass_progress;      /* some intake changed state in this pass */
    bool stopping;
    /* the batch read by the pass's first unit */
    intake batch[RECONCILE_BATCH];
    int batch_n;             /* -1: the read failed */
};

/* How an intake is settled once payment answered. */
typedef enum {
    SETTLE_FINISH_VOID,      /* cancelled at payment: voided, cars released */
    SETTLE_APPROVE,          /* in doubt, paid: the rental is accepted */
    SETTLE_START_VOID,       /* in doubt, not paid: voiding */
} settle_op;

/* One intake being settled. */
typedef struct settle_call {
    reconciler *r;
    intake in;
    settle_op op;
    long long payment_id;
    int rc;                  /* the domain's 1 applied, 0 already settled, -1 failed */
} settle_call;

static void schedule(reconciler *r, int delay_ms)
{
    struct timeval tv = {delay_ms / 1000, (delay_ms % 1000) * 1000};
    evtimer_add(r->timer, &tv);
}

static void pass_done(reconciler *r)
{
    if (r->pass_failed) {
        int next = r->backoff_ms ? r->backoff_ms * 2 : r->interval_ms;
        if (next > RECONCILE_MAX_BACKOFF_MS)
            next = RECONCILE_MAX_BACKOFF_MS > r->interval_ms ? RECONCILE_MAX_BACKOFF_MS
                                                             : r->interval_ms;
        r->backoff_ms = next;
        schedule(r, next / 2 + rand() % (next / 2 + 1));   /* jitter: spread retries */
    } else {
        r->backoff_ms = 0;
        schedule(r, r->pass_progress ? 0 : r->interval_ms);
    }
}

static void call_done(reconciler *r)
{
    r->inflight--;
    if (r->stopping) {
        if (r->inflight == 0) {
            event_free(r->timer);
            free(r);
        }
        return;
    }
    if (r->inflight == 0)
        pass_done(r);
}

static const char *req_of(const intake *in)
{
    return in->request_id[0] ? in->request_id : "-";
}

static void settle_work(store *st, void *arg)
{
    settle_call *c = arg;
    switch (c->op) {
    case SETTLE_FINISH_VOID:
        c->rc = rental_finish_void(st, c->in.id);
        break;
    case SETTLE_APPROVE: {
        order o;
        c->rc = rental_approve(st, c->in.id, c->payment_id, &o);
        break;
    }
    case SETTLE_START_VOID:
        c->rc = rental_start_void(st, c->in.id);
        break;
    }
}

static void settle_done(void *arg, db_status status)
{
    settle_call *c = arg;
    reconciler *r = c->r;
    const intake *in = &c->in;
    if (status == DB_UNAVAILABLE)
        c->rc = -1;
    if (c->rc < 0) {
        r->pass_failed = true;
    } else if (c->rc == 1) {
        r->pass_progress = true;
        switch (c->op) {
        case SETTLE_FINISH_VOID:
            log_info("req=%s msg=\"intake voided: payment cancelled, cars released\" "
                     "intake=%lld product=%s qty=%lld", req_of(in), in->id, in->product_id,
                     in->qty);
            metrics_count_outcome("carshare_order_reconciled_total", "voided");
            break;
        case SETTLE_APPROVE:
            log_info("req=%s msg=\"rental accepted after restart: payment found\" order=%lld "
                     "payment=%lld", req_of(in), in->id, c->payment_id);
            metrics_count_outcome("carshare_order_reconciled_total", "approved");
            break;
        case SETTLE_START_VOID:
            log_info("req=%s msg=\"intake in doubt was not paid: voiding\" intake=%lld",
                     req_of(in), in->id);
            break;
        }
    }
    free(c);
    call_done(r);
}

/* Settles c in a unit of work; c stays in flight until it is done. */
static void settle(settle_call *c, settle_op op)
{
    c->op = op;
    if (c->r->stopping || !db_run(c->r->db, settle_work, settle_done, c)) {
        c->rc = -1;
        settle_done(c, DB_UNAVAILABLE);
    }
}

/* Answer to POST /paymentCancellations for a voiding intake. */
static void on_cancellation(const httpc_response *resp, void *arg)
{
    settle_call *c = arg;
    if (resp->result == HTTPC_OK && (resp->status == 200 || resp->status == 201)) {
        settle(c, SETTLE_FINISH_VOID);
        return;
    }
    if (!c->r->stopping)
        log_warn("req=%s msg=\"payment cancellation failed, will retry\" intake=%lld "
                 "result=%s status=%d", req_of(&c->in), c->in.id,
                 httpc_result_name(resp->result), resp->status);
    c->r->pass_failed = true;
    reconciler *r = c->r;
    free(c);
    call_done(r);
}

/* The first payment of findByOrderId's collection, or NULL. */
static const json_t *found_payment(const json_t *doc)
{
    const json_t *list = json_object_get(json_object_get(doc, "_embedded"), "payments");
    return json_array_size(list) > 0 ? json_array_get(list, 0) : NULL;
}

/* What payment's findByOrderId answer means for an in-doubt intake. */
static void settle_in_doubt(settle_call *c, const json_t *doc)
{
    const json_t *p = found_payment(doc);
    const char *status = json_string_value(json_object_get(p, "status"));
    json_int_t payment_id = json_integer_value(json_object_get(p, "id"));

    /* Only the payment order asked for approves the rental: one made for
     * this id with another amount, qty or car is cancelled like no payment. */
    if (p && status && strcmp(status, "Paid") == 0 && payment_id > 0
        && rental_payment_matches(p, &c->in)) {
        c->payment_id = payment_id;
        settle(c, SETTLE_APPROVE);
        return;
    }
    /* Never paid (or already refunded): cancel at payment so that a late
     * charge is refused, then release. */
    settle(c, SETTLE_START_VOID);
}

/* Answer to GET /payments/search/findByOrderId for an in-doubt intake. */
static void on_payment_lookup(const httpc_response *resp, void *arg)
{
    settle_call *c = arg;
    reconciler *r = c->r;
    json_t *doc = resp->result == HTTPC_OK && resp->status == 200 && !r->stopping
        ? json_loads(resp->body, 0, NULL) : NULL;
    if (doc) {
        settle_in_doubt(c, doc);
        json_decref(doc);
        return;
    }
    if (!r->stopping)
        log_warn("req=%s msg=\"payment lookup failed, will retry\" intake=%lld result=%s "
                 "status=%d", req_of(&c->in), c->in.id, httpc_result_name(resp->result),
                 resp->status);
    r->pass_failed = true;
    free(c);
    call_done(r);
}

/* intake_store_claim's rows into the batch (the work runs alone). */
static void keep_intake(const intake *in, void *arg)
{
    reconciler *r = arg;
    if (r->batch_n < RECONCILE_BATCH)
        r->batch[r->batch_n++] = *in;
}

static void settle_one(const intake *in, void *arg)
{
    reconciler *r = arg;
    settle_call *c = calloc(1, sizeof *c);
    if (!c) {
        r->pass_failed = true;
        return;
    }
    c->r = r;
    c->in = *in;
    r->inflight++;
    const char *req = in->request_id[0] ? in->request_id : NULL;
    char buf[128];
    if (in->state == INTAKE_VOIDING) {
        snprintf(buf, sizeof buf, "{\"orderId\":%lld}", in->id);
        balance_json(r->payment, "POST", "/paymentCancellations", req, buf, true,
                         on_cancellation, c);
    } else {
        snprintf(buf, sizeof buf, "/payments/search/findByOrderId?orderId=%lld", in->id);
        balance_json(r->payment, "GET", buf, req, NULL, true, on_payment_lookup, c);
    }
}

static void batch_work(store *st, void *arg)
{
    reconciler *r = arg;
    r->batch_n = 0;
    if (store_begin(st) != SQLITE_OK) {
        r->batch_n = -1;
        return;
    }
    int n = intake_store_claim(st, instance_id(), order_lease_ms(), RECONCILE_BATCH,
                               keep_intake, r);
    if (n < 0 || store_commit(st) != SQLITE_OK) {
        store_rollback(st);
        n = -1;
    }
    r->batch_n = n;
}

static void batch_done(void *arg, db_status status)
{
    reconciler *r = arg;
    if (status == DB_UNAVAILABLE || r->batch_n < 0)
        r->pass_failed = true;
    else if (!r->stopping)
        for (int i = 0; i < r->batch_n; i++)
            settle_one(&r->batch[i], r);
    call_done(r);   /* the pass's own hold */
}

static void run_pass(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    reconciler *r = arg;
    if (r->stopping || r->inflight > 0)
        return;   /* the pass in flight schedules the next one */
    r->pass_failed = false;
    r->pass_progress = false;
    r->inflight++;   /* held until the batch has been read and sent */
    if (!db_run(r->db, batch_work, batch_done, r)) {
        r->pass_failed = true;
        call_done(r);
    }
}

reconciler *reconciler_new(struct event_base *base, db *d, balance_set *payment,
                           int interval_ms)
{
    reconciler *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->base = base;
    r->db = d;
    r->payment = payment;
    r->interval_ms = interval_ms > 0 ? interval_ms : 1000;
    r->timer = evtimer_new(base, run_pass, r);
    if (!r->timer) {
        free(r);
        return NULL;
    }
    schedule(r, 0);   /* at start: settle what a previous run left */
    return r;
}

void reconciler_kick(reconciler *r)
{
    /* Not while backing off: a fresh failure means payment is still
     * unwell, and the backoff already bounds the wait. */
    if (r && !r->stopping && r->inflight == 0 && r->backoff_ms == 0)
        schedule(r, 0);
}

void reconciler_stop(reconciler *r)
{
    if (!r)
        return;
    r->stopping = true;
    evtimer_del(r->timer);
    if (r->inflight == 0) {
        event_free(r->timer);
        free(r);
    }
}
