/* rental.c: POST /orders, the rental: reserve, pay, settle.
 *
 *   POST /orders    rent and pay (201, 400, 402, 404, 409, 422, 503)
 *
 * Step by step (docs/DESIGN.md):
 *   1. validate the body and the Idempotency-Key header (400);
 *   2. a key seen before answers with the outcome of its first request;
 *   3. an unknown model is a 404 whatever the state of payment;
 *   4. while the payment client would refuse the call (its breaker is
 *      open, its bulkhead full: balance_refusal), answer the fallback
 *      503 at once, before anything is reserved;
 *   5. book the cars on every day of the period and write a pending intake
 *      (one transaction; 409 naming the first day without enough cars);
 *   6. POST /payments {orderId, productId, qty, amount, cardNumber} through
 *      the payment client (an instance of payment chosen by lib/balance.h;
 *      timeouts, bulkhead, breaker, retries: lib/httpc);
 *   7. settle the intake from the answer: Paid -> order + Ordered, 201;
 *      402 -> declined, cars released, 402; refused by the bulkhead before
 *      it left -> voided, cars released, 503; anything else -> voiding (the
 *      reconciler cancels it at payment and releases the cars), 503, once
 *      the voiding is on record (500 "outcome unknown" if it cannot be:
 *      answer_not_booked).
 * Between 5 and 7 nothing is locked: the event loop serves other requests.
 *
 * Steps 2 to 5 are one unit of work (db.h: intake_work) and each way of
 * settling in step 7 another (settle_work): on SQLite they run at once on
 * the loop, on PostgreSQL on a database thread, the payment call being
 * made on the loop between them. The state of the payment client (step 4)
 * is read on the loop when the request arrives and handed to the unit.
 *
 * Who rents: the signed-in customer (the route admits customers only, so
 * staff get 403); customerId comes from the token, and a body naming
 * another customer is a 403. Idempotency-Key is scoped to the customer
 * (rental_scoped_key): another customer's key is unknown to you. Only the
 * payment asked for approves a rental (rental_payment_verdict); a 409 from
 * payment is a refusal, never shown as "busy, try again".
 *
 * Replicas (several order processes on one PostgreSQL database): the
 * intake is written with this instance as its owner and a lease that
 * lease.c renews while the payment call is in flight, so no reconciler
 * takes it meanwhile; if one took it anyway (this process froze past the
 * lease) and made it an order, the answer is that order (read_standing).
 *
 * ORDER_TEST_CRASH_AFTER_PAYMENT (test only) makes the process _exit() the
 * moment a successful payment answer arrives, before step 7 commits: the
 * crash the end-to-end tests use to check recovery. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "balance.h"
#include "db.h"
#include "httpc.h"
#include "jtext.h"
#include "instance.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "order.h"
#include "rep.h"
#include "service.h"
#include "token.h"

#define CARD_TEXT_MAX 40

/* ---- POST /orders: before the call ---- */

typedef struct rental_input {
    rental_request rq;
    char product_buf[ORDER_PRODUCT_MAX + 1];
    char customer_buf[ORDER_CUSTOMER_MAX + 1];
    char scoped_key[ORDER_SCOPED_KEY_MAX + 1];
    char card_digits[24];       /* "" when no card */
} rental_input;

/* Card numbers: digits, optionally grouped by single spaces or dashes,
 * 4 to 19 digits. Writes the bare digits; false when not a card number. */
static bool card_digits(const char *card, char *out, size_t size)
{
    size_t n = 0;
    bool after_digit = false;
    for (const char *p = card; *p; p++) {
        if (*p >= '0' && *p <= '9') {
            if (n + 1 >= size || n >= 19)
                return false;
            out[n++] = *p;
            after_digit = true;
        } else if ((*p == ' ' || *p == '-') && after_digit && p[1]) {
            after_digit = false;
        } else {
            return false;
        }
    }
    out[n] = '\0';
    return n >= 4 && after_digit;
}

/* from and to of the body: strings (numbers are not dates), then
 * rental_period's rules (domain.c) against today in the company's zone. */
static bool read_period(const json_t *body, rental_input *ri, char *err, size_t errlen)
{
    static const char *const fields[] = {"from", "to"};
    const char *text[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        const json_t *v = json_object_get(body, fields[i]);
        if (!v || json_is_null(v))
            continue;
        if (!json_is_string(v) || json_string_length(v) > 16) {
            snprintf(err, errlen, "%s must be a date written YYYY-MM-DD", fields[i]);
            return false;
        }
        text[i] = json_string_value(v);
    }
    return rental_period(text[0], text[1], cal_today(), &ri->rq.from_day, &ri->rq.to_day, err,
                         errlen);
}

static bool read_rental(http_req *r, const json_t *body, rental_input *ri)
{
    char err[200];
    const char *card = NULL;
    char card_buf[CARD_TEXT_MAX + 1];

    memset(ri, 0, sizeof *ri);
    if (!read_period(body, ri, err, sizeof err)) {
        http_reply_error(r, 400, "%s", err);
        return false;
    }
    if (rep_str(body, "productId", true, ORDER_PRODUCT_MAX, &ri->rq.product_id, ri->product_buf,
                sizeof ri->product_buf, err, sizeof err) < 0
        || rep_int(body, "qty", true, 1, ORDER_MAX_QTY, &ri->rq.qty, err, sizeof err) < 0
        || rep_str(body, "customerId", false, ORDER_CUSTOMER_MAX, &ri->rq.customer_id,
                   ri->customer_buf, sizeof ri->customer_buf, err, sizeof err) < 0
        || rep_str(body, "cardNumber", false, CARD_TEXT_MAX, &card, card_buf, sizeof card_buf,
                   err, sizeof err) < 0) {
        explicit_bzero(card_buf, sizeof card_buf);
        http_reply_error(r, 400, "%s", err);
        return false;
    }
    /* Copies: rep_str may point into the body, which the caller frees. */
    if (ri->rq.product_id != ri->product_buf) {
        snprintf(ri->product_buf, sizeof ri->product_buf, "%s", ri->rq.product_id);
        ri->rq.product_id = ri->product_buf;
    }
    /* The customer is the caller; a body may name them, but nobody else. */
    const char *caller = http_req_caller(r);
    if (ri->rq.customer_id && strcmp(ri->rq.customer_id, caller) != 0) {
        explicit_bzero(card_buf, sizeof card_buf);
        http_reply_error(r, 403, "customerId %s is not you: rentals are made for the signed-in "
                         "customer (%s); leave customerId out", ri->rq.customer_id, caller);
        return false;
    }
    snprintf(ri->customer_buf, sizeof ri->customer_buf, "%s", caller);
    ri->rq.customer_id = ri->customer_buf;
    if (card && !card_digits(card, ri->card_digits, sizeof ri->card_digits)) {
        explicit_bzero(card_buf, sizeof card_buf);
        explicit_bzero(ri->card_digits, sizeof ri->card_digits);
        /* The number itself is never echoed back. */
        http_reply_error(r, 400, "cardNumber must be 4 to 19 digits (single spaces or dashes "
                         "between groups allowed)");
        return false;
    }
    explicit_bzero(card_buf, sizeof card_buf);
    ri->rq.request_id = http_req_id(r);
    return true;
}

typedef struct rental_api {
    struct event_base *base;
    db *db;
    balance_set *payment;       /* payment's instances (lib/balance.h) */
    reconciler *reconciler;
    lease_keeper *leases;
    bool test_crash_after_payment;
} rental_api;

/* What the intake unit found (step 2 to 5). */
typedef enum {
    STEP_FAILED,            /* the database could not do it: 503 */
    STEP_REPLAY,            /* the key's earlier outcome: prev (and o when approved) */
    STEP_UNKNOWN_CAR,
    STEP_REFUSING,          /* the payment client refuses calls: fallback, nothing written */
    STEP_NOT_ENOUGH,        /* some day is full: full_* name the first one */
    STEP_RESERVED,          /* cars booked, `in` is the pending intake: call payment */
} intake_step;

/* How an intake is settled once payment answered (step 7), each one a
 * unit of work whose `done` sends the answer. */
typedef enum {
    SETTLE_APPROVE,         /* paid: order + Ordered, 201 */
    SETTLE_DECLINE,         /* 402 */
    SETTLE_VOID_UNSENT,     /* the bulkhead refused the call: voided at once, 503 */
    SETTLE_VOID_REFUSED,    /* payment refused this order id: voiding, 502 */
    SETTLE_VOID_NOT_BOOKED, /* outcome unknown: voiding on record, then 503 (else 500) */
    SETTLE_VOID_NO_CALL,    /* the call could not be made: voiding, 503 */
} settle_op;

/* One POST /orders, from its first unit of work to its answer. The request
 * stays valid until it is answered (http.h); the units of work touch only
 * the fields below it, never the request (they may run on a database
 * thread, db.h). */
typedef struct rental_call {
    rental_api *api;
    http_req *req;
    rental_input ri;            /* the request; holds the card digits, wiped at free */
    char request_id[72];
    bool refusing;              /* the payment client refused calls when the request came */
    unsigned long long refusing_ms;
    /* the intake unit's results */
    intake_step step;
    intake prev;                /* STEP_REPLAY */
    int prev_order;             /* order_store_get of an approved prev: 1, 0, -1 */
    order o;                    /* STEP_REPLAY's order, SETTLE_APPROVE's new one */
    car c;
    int full_found;             /* STEP_NOT_ENOUGH: booking_store_first_full */
    long full_day;
    long long full_free;
    intake in;                  /* STEP_RESERVED */
    bool leased;                /* in the lease keeper's set while the call is in flight */
    /* the payment call */
    char *body;                 /* holds the card number, wiped after use */
    size_t body_len;
    /* the settling unit */
    settle_op op;
    long long payment_id;
    char message[ORDER_MESSAGE_MAX + 1];
    unsigned long long retry_after_ms;
    int settled;                /* the domain's 1 applied, 0 already settled, -1 failed */
    bool standing;              /* settled elsewhere as approved: call->o is the order */
    int void_tries;
    struct event *void_timer;
} rental_call;

static void rental_call_free(rental_call *call)
{
    if (call->leased)
        lease_keeper_remove(call->api->leases, call->in.id);
    if (call->body) {
        explicit_bzero(call->body, call->body_len);
        free(call->body);
    }
    explicit_bzero(call->ri.card_digits, sizeof call->ri.card_digits);
    if (call->void_timer)
        event_free(call->void_timer);
    free(call);
}

/* The seed's fallback: the customer is asked to pay again a little later. */
static void reply_fallback(http_req *r, unsigned long long retry_after_ms)
{
    unsigned long long seconds = (retry_after_ms + 999) / 1000;
    char value[24];
    if (seconds < 1)
        seconds = 1;
    snprintf(value, sizeof value, "%llu", seconds);
    http_set_header(r, "Retry-After", value);
    metrics_count_outcome("carshare_rentals_total", "fallback");
    http_reply_error(r, 503, "Payment is busy right now; please try the payment again shortly "
                     "(in about %llu s). The rental was not booked and you will not be charged.",
                     seconds);
}

/* The database could not take the write (full disk, I/O error, a long
 * lock, PostgreSQL unreachable): nothing was reserved or charged, and
 * trying again later is the right advice, so 503, not 500. */
static void reply_store_unavailable(http_req *r)
{
    metrics_count_outcome("carshare_rentals_total", "store_unavailable");
    http_set_header(r, "Retry-After", "5");
    http_reply_error(r, 503, "the rental could not be recorded right now; nothing was reserved "
                     "or charged; please try again shortly");
}

/* ---- step 7: settling from payment's answer ---- */

/* A settlement that found the intake settled already (settled 0): by
 * another order process that took it while this one was frozen past its
 * lease (lease.c), or by this one's reconciler. If that made the rental an
 * order, the customer is told so, whatever this process's own step was. */
static void read_standing(store *st, rental_call *call)
{
    intake now;
    call->standing = intake_store_get(st, call->in.id, &now) == 1 &&
                     now.state == INTAKE_APPROVED &&
                     order_store_get(st, call->in.id, &call->o) == 1;
}

static void settle_work(store *st, void *arg)
{
    rental_call *call = arg;
    long long id = call->in.id;
    call->standing = false;
    switch (call->op) {
    case SETTLE_APPROVE:
        call->settled = rental_approve(st, id, call->payment_id, &call->o);
        break;
    case SETTLE_DECLINE:
        call->settled = rental_decline(st, id, call->message);
        break;
    case SETTLE_VOID_UNSENT:
        call->settled = rental_void_unsent(st, id);
        break;
    case SETTLE_VOID_REFUSED:
    case SETTLE_VOID_NOT_BOOKED:
    case SETTLE_VOID_NO_CALL:
        call->settled = rental_start_void(st, id);
        break;
    }
    if (call->settled == 0)
        read_standing(st, call);
}

static void settle_done(void *arg, db_status status);

/* Runs the settling unit `op`; a database that cannot take it is a failed
 * settlement (settle_done decides what that means for the answer). */
static void settle(rental_call *call, settle_op op)
{
    call->op = op;
    if (!db_run(call->api->db, settle_work, settle_done, call)) {
        call->settled = -1;
        settle_done(call, DB_UNAVAILABLE);
    }
}

/* The customer is about to be told 503 "not booked, not charged" for an
 * intake payment may have charged. That is true only once the intake is on
 * record as voiding (the reconciler then refunds it): if the database
 * refused that write too, the intake would stay pending, and the next
 * start would settle it with payment and accept the rental the customer
 * was told was not booked (the double failure of the earlier notes). So
 * the write is tried again for a moment (a busy, locked or briefly full
 * database), the answer waiting meanwhile; if it never lands, the customer
 * is told what is true: the outcome is not known yet (500), and the
 * rental may still be accepted. */
#define VOID_TRIES 6            /* now, then after 50, 100, 200, 400, 800 ms */

static void retry_void(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    settle(arg, SETTLE_VOID_NOT_BOOKED);
}

static void answer_not_booked(rental_call *call, unsigned long long retry_after_ms)
{
    call->retry_after_ms = retry_after_ms;
    call->void_tries = 0;
    settle(call, SETTLE_VOID_NOT_BOOKED);
}

/* SETTLE_VOID_NOT_BOOKED's outcome: true when the call is finished. */
static bool not_booked_done(rental_call *call)
{
    http_req *r = call->req;
    if (call->settled >= 0) {
        if (call->settled == 1)
            reconciler_kick(call->api->reconciler);
        reply_fallback(r, call->retry_after_ms);
        return true;
    }
    if (++call->void_tries < VOID_TRIES) {
        if (!call->void_timer)
            call->void_timer = evtimer_new(call->api->base, retry_void, call);
        struct timeval tv = {0, 50000L << (call->void_tries - 1)};
        if (call->void_timer && evtimer_add(call->void_timer, &tv) == 0)
            return false;
    }
    log_error("req=%s msg=\"intake could not be marked voiding: answering that the outcome "
              "is unknown; it will be settled with payment later\" intake=%lld", http_req_id(r),
              call->in.id);
    metrics_count_outcome("carshare_rentals_total", "unknown");
    http_reply_error(r, 500, "The outcome of this rental could not be recorded: it may "
                     "still be accepted. Check your rentals before trying again.");
    return true;
}

static void approve_done(rental_call *call)
{
    http_req *r = call->req;
    const order *o = &call->o;
    log_info("req=%s msg=\"rental accepted\" order=%lld payment=%lld product=%s qty=%lld "
             "amount=%lld", http_req_id(r), o->id, o->payment_id, o->product_id, o->qty,
             o->amount);
    metrics_count_outcome("carshare_rentals_total", "approved");
    rep_reply_created(r, order_json(o, http_req_base_url(r)));
}

static void settle_done(void *arg, db_status status)
{
    rental_call *call = arg;
    http_req *r = call->req;
    if (status == DB_UNAVAILABLE)
        call->settled = -1;
    if (call->settled == 0 && call->standing) {
        approve_done(call);
        rental_call_free(call);
        return;
    }
    switch (call->op) {
    case SETTLE_APPROVE:
        if (call->settled == 1) {
            approve_done(call);
            break;
        }
        /* Paid but not recorded: the customer is told 503, so the payment
         * must not stand. Voiding makes the reconciler refund it. */
        log_error("req=%s msg=\"paid rental could not be recorded, voiding it\" intake=%lld "
                  "payment=%lld", http_req_id(r), call->in.id, call->payment_id);
        answer_not_booked(call, 1000);
        return;
    case SETTLE_DECLINE:
        if (call->settled < 0)
            log_error("req=%s msg=\"declined intake could not be recorded; it will be settled "
                      "with payment later\" intake=%lld", http_req_id(r), call->in.id);
        log_info("req=%s msg=\"rental declined by payment\" intake=%lld", http_req_id(r),
                 call->in.id);
        metrics_count_outcome("carshare_rentals_total", "declined");
        http_reply_error(r, 402, "%s", call->message);
        break;
    case SETTLE_VOID_UNSENT:
        if (call->settled < 0)
            log_error("req=%s msg=\"shed intake could not be voided; it will be settled with "
                      "payment later\" intake=%lld", http_req_id(r), call->in.id);
        reply_fallback(r, 1000);
        break;
    case SETTLE_VOID_REFUSED:
        if (call->settled == 1)
            reconciler_kick(call->api->reconciler);
        metrics_count_outcome("carshare_rentals_total", "payment_refused");
        http_reply_error(r, 502, "the payment service refused this rental, so it was not made "
                         "and nothing stays charged; please place it again");
        break;
    case SETTLE_VOID_NOT_BOOKED:
        if (!not_booked_done(call))
            return;     /* tried again after a pause */
        break;
    case SETTLE_VOID_NO_CALL:
        if (call->settled == 1)
            reconciler_kick(call->api->reconciler);
        reply_fallback(r, 1000);
        break;
    }
    rental_call_free(call);
}

static void settle_declined(rental_call *call)
{
    /* Payment's own message names the order id, which for a declined rental
     * is an attempt the customer never sees among their orders: say it in
     * the customer's terms instead. */
    snprintf(call->message, sizeof call->message,
             "payment declined: the card was refused and nothing was charged; "
             "try another card");
    settle(call, SETTLE_DECLINE);
}

static void settle_unknown(rental_call *call, const httpc_response *resp)
{
    http_req *r = call->req;
    if (resp->result == HTTPC_BUSY) {
        /* The bulkhead refused the call before anything was sent: payment
         * never saw this order, so there is nothing to cancel there. */
        log_warn("req=%s msg=\"payment bulkhead full, rental shed\" intake=%lld", http_req_id(r),
                 call->in.id);
        settle(call, SETTLE_VOID_UNSENT);
        return;
    }
    log_warn("req=%s msg=\"payment outcome unknown, voiding the rental\" intake=%lld result=%s "
             "status=%d elapsed_ms=%llu", http_req_id(r), call->in.id,
             httpc_result_name(resp->result), resp->status, resp->elapsed_ms);
    unsigned long long retry_ms = resp->result == HTTPC_OPEN ? resp->retry_after_ms : 0;
    if (!retry_ms)
        balance_refusal(call->api->payment, &retry_ms);
    answer_not_booked(call, retry_ms ? retry_ms : 1000);
}

/* Payment refused this order id (409), or answered a payment that is not
 * the one asked for. Either way no payment of ours stands for it: the
 * intake is voided (the reconciler cancels whatever payment holds that
 * order id, then releases the cars). This is no overload, so the customer
 * is not told "busy, try again shortly" (503): it is a 502 saying the
 * rental was not made and nothing stays charged. */
static void settle_refused(rental_call *call, payment_verdict v)
{
    log_warn("req=%s msg=\"payment %s, voiding the rental\" intake=%lld", http_req_id(call->req),
             v == PAYMENT_VERDICT_REFUSED ? "refused this order id (409)"
                                          : "answered another payment than asked",
             call->in.id);
    settle(call, SETTLE_VOID_REFUSED);
}

static void on_payment_answer(const httpc_response *resp, void *arg)
{
    rental_call *call = arg;
    long long payment_id = 0;
    payment_verdict v = resp->result == HTTPC_OK
        ? rental_payment_verdict(resp->status, resp->body, &call->in, &payment_id)
        : PAYMENT_VERDICT_UNKNOWN;
    explicit_bzero(call->body, call->body_len);   /* the card number is not needed again */

    if (call->api->test_crash_after_payment && v == PAYMENT_VERDICT_PAID) {
        log_warn("req=%s msg=\"ORDER_TEST_CRASH_AFTER_PAYMENT: exiting between the payment and "
                 "the commit\" intake=%lld payment=%lld", http_req_id(call->req), call->in.id,
                 payment_id);
        _exit(70);
    }

    switch (v) {
    case PAYMENT_VERDICT_PAID:
        call->payment_id = payment_id;
        settle(call, SETTLE_APPROVE);
        break;
    case PAYMENT_VERDICT_DECLINED:
        settle_declined(call);
        break;
    case PAYMENT_VERDICT_REFUSED:
    case PAYMENT_VERDICT_MISMATCH:
        settle_refused(call, v);
        break;
    case PAYMENT_VERDICT_UNKNOWN:
        settle_unknown(call, resp);
        break;
    }
}

static char *payment_request_body(const intake *in, const char *card_digits, size_t *len)
{
    json_t *doc = json_pack("{s:I, s:s, s:I, s:I}", "orderId", (json_int_t)in->id,
                            "productId", in->product_id, "qty", (json_int_t)in->qty,
                            "amount", (json_int_t)in->amount);
    if (doc && card_digits)
        json_object_set_new(doc, "cardNumber", json_string(card_digits));
    /* jtext_dump: the same bytes as json_dumps, ~10,000 instructions
     * fewer per rental (measured). The stack copy holds the card number. */
    char text[512];
    long n = doc ? jtext_dump(doc, false, text, sizeof text) : -1;
    char *body = n >= 0 ? malloc((size_t)n + 1) : doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    if (body && n >= 0)
        memcpy(body, text, (size_t)n + 1);
    explicit_bzero(text, sizeof text);
    json_decref(doc);
    if (body)
        *len = strlen(body);
    return body;
}

static void call_payment(rental_call *call)
{
    const char *digits = call->ri.card_digits[0] ? call->ri.card_digits : NULL;
    call->body = payment_request_body(&call->in, digits, &call->body_len);
    explicit_bzero(call->ri.card_digits, sizeof call->ri.card_digits);
    if (!call->body) {
        log_error("req=%s msg=\"out of memory for the payment call\" intake=%lld",
                  http_req_id(call->req), call->in.id);
        settle(call, SETTLE_VOID_NO_CALL);
        return;
    }
    /* Idempotent: payment charges at most once per orderId, so the client
     * may retry a lost attempt, on the same instance or (lib/balance.h: only
     * when the first was never delivered or its connection broke) on
     * another -- payment's replicas share one database, where "one payment
     * per orderId" holds across them (UNIQUE(order_id), SERIALIZABLE). A
     * BUSY outcome still means "never sent" after such a retry: the set
     * reports the broken first attempt instead (balance_first_outcome_wins). */
    balance_json(call->api->payment, "POST", "/payments", http_req_id(call->req), call->body,
                 true, on_payment_answer, call);
}

/* ---- steps 2 to 5: the intake, one unit of work ---- */

/* Same Idempotency-Key as an earlier request: its outcome, not a new rental.
 *   approved -> 201 with the order (as it is now: a later cancel shows)
 *   declined -> 402 with the same message
 *   voiding  -> 503 fallback (the first attempt is being cancelled at payment)
 *   pending, in doubt -> 409 "still being processed"
 *   voided   -> not a replay: the attempt left nothing, a new one starts
 * The same key with another productId, qty, customerId or period is a 422. */
static void replay(rental_call *call)
{
    http_req *r = call->req;
    const intake *prev = &call->prev;
    if (!rental_same_request(prev, &call->ri.rq)) {
        http_reply_error(r, 422, "this Idempotency-Key was already used for a different rental "
                         "(productId, qty, customerId or period differ); use a new key");
        return;
    }
    switch (prev->state) {
    case INTAKE_APPROVED:
        if (call->prev_order == 1) {
            metrics_count_outcome("carshare_rentals_total", "replayed");
            rep_reply_created(r, order_json(&call->o, http_req_base_url(r)));
        } else {
            http_reply_error(r, 500, "order %lld could not be read", prev->id);
        }
        return;
    case INTAKE_DECLINED:
        http_reply_error(r, 402, "%s", prev->message[0] ? prev->message : "payment declined");
        return;
    case INTAKE_VOIDING:
        reply_fallback(r, 1000);
        return;
    case INTAKE_PENDING:
    case INTAKE_IN_DOUBT:
        http_set_header(r, "Retry-After", "1");
        http_reply_error(r, 409, "a rental with this Idempotency-Key is still being processed; "
                         "retry shortly to get its outcome");
        return;
    case INTAKE_VOIDED:
        break;   /* not a replay: the unit started a new attempt */
    }
    http_reply_error(r, 500, "unexpected state of the earlier rental with this key");
}

/* 409 naming the first day of the period without enough cars. Read after
 * the booking was rolled back, so another rental may have changed the
 * picture meanwhile: then the message speaks of the period. */
static void reply_full(rental_call *call)
{
    http_req *r = call->req;
    const car *c = &call->c;
    const rental_request *rq = &call->ri.rq;
    char date[CAL_DATE_SIZE];
    metrics_count_outcome("carshare_rentals_total", "no_cars");
    if (call->full_found == 1) {
        http_reply_error(r, 409, "not enough cars available on %s: %lld of model %s (%s) free "
                         "that day, %lld requested", cal_format(call->full_day, date),
                         call->full_free, c->id, c->name, rq->qty);
        return;
    }
    http_reply_error(r, 409, "not enough cars available for the %ld days from %s of model %s "
                     "(%s); %lld requested", rq->to_day - rq->from_day,
                     cal_format(rq->from_day, date), c->id, c->name, rq->qty);
}

/* The earlier intake holding this request's key answers it (replay):
 * true, with what the answer needs read. */
static bool find_replay(store *st, rental_call *call)
{
    const char *key = call->ri.rq.idempotency_key;
    int found = key ? intake_store_find_by_key(st, key, &call->prev) : 0;
    if (found < 0 || !found || call->prev.state == INTAKE_VOIDED)
        return false;
    call->step = STEP_REPLAY;
    call->prev_order = call->prev.state == INTAKE_APPROVED
        ? order_store_get(st, call->prev.id, &call->o) : 0;
    return true;
}

static void intake_work(store *st, void *arg)
{
    rental_call *call = arg;
    const rental_request *rq = &call->ri.rq;
    call->step = STEP_FAILED;   /* this may be a rerun (db.h): nothing kept from before */
    if (find_replay(st, call))
        return;
    int found = car_store_get(st, rq->product_id, rq->from_day, rq->to_day, &call->c);
    if (found <= 0) {
        call->step = found == 0 ? STEP_UNKNOWN_CAR : STEP_FAILED;
        return;
    }
    /* The breaker is open or the bulkhead full: shed now, before writing
     * anything, rather than reserve cars only to have the call refused. */
    if (call->refusing) {
        call->step = STEP_REFUSING;
        return;
    }
    switch (rental_reserve(st, rq, &call->in, &call->c)) {
    case RESERVE_OK:
        call->step = STEP_RESERVED;
        return;
    case RESERVE_UNKNOWN_CAR:
        call->step = STEP_UNKNOWN_CAR;
        return;
    case RESERVE_NOT_ENOUGH:
        call->step = STEP_NOT_ENOUGH;
        call->full_found = booking_store_first_full(st, rq->product_id, rq->from_day, rq->to_day,
                                                    rq->qty, &call->full_day, &call->full_free);
        return;
    case RESERVE_KEY_IN_USE:
    case RESERVE_FAILED:
        /* A request with the same key that committed first (another
         * connection, another replica) holds the key, or made this
         * insert fail on the key's uniqueness: that request answers this
         * one. */
        find_replay(st, call);
        return;
    }
}

static void intake_done(void *arg, db_status status)
{
    rental_call *call = arg;
    http_req *r = call->req;
    if (status == DB_UNAVAILABLE)
        call->step = call->step == STEP_RESERVED ? STEP_RESERVED : STEP_FAILED;
    switch (call->step) {
    case STEP_RESERVED:
        lease_keeper_add(call->api->leases, call->in.id);
        call->leased = true;
        call_payment(call);
        return;     /* the call is answered from the payment's answer */
    case STEP_REPLAY:
        replay(call);
        break;
    case STEP_UNKNOWN_CAR:
        http_reply_error(r, 404, "no car model with productId %s", call->ri.rq.product_id);
        break;
    case STEP_REFUSING:
        reply_fallback(r, call->refusing_ms);
        break;
    case STEP_NOT_ENOUGH:
        reply_full(call);
        break;
    case STEP_FAILED:
        reply_store_unavailable(r);
        break;
    }
    rental_call_free(call);
}

static void post_order(http_req *r, void *arg)
{
    rental_api *api = arg;
    const char *key = http_req_header(r, "Idempotency-Key");
    if (key && !rental_key_valid(key)) {
        http_reply_error(r, 400, "Idempotency-Key must be 1 to %d printable ASCII characters",
                         ORDER_IDEMPOTENCY_KEY_MAX);
        return;
    }
    json_t *body = http_req_json(r);
    if (!body)
        return;
    rental_call *call = mem_must(calloc(1, sizeof *call));
    bool ok = read_rental(r, body, &call->ri);
    json_decref(body);   /* read_rental copied what it keeps */
    if (!ok) {
        rental_call_free(call);
        return;
    }
    call->api = api;
    call->req = r;
    rental_request *rq = &call->ri.rq;
    snprintf(call->request_id, sizeof call->request_id, "%s", http_req_id(r));
    rq->request_id = call->request_id;
    rq->owner = instance_id();
    rq->lease_ms = order_lease_ms();
    if (key) {
        rental_scoped_key(rq->customer_id, key, call->ri.scoped_key, sizeof call->ri.scoped_key);
        rq->idempotency_key = call->ri.scoped_key;
    }
    call->refusing = balance_refusal(api->payment, &call->refusing_ms) != HTTPC_OK;
    if (!db_run(api->db, intake_work, intake_done, call)) {
        reply_store_unavailable(r);
        rental_call_free(call);
    }
}

static void free_rental_api(void *arg)
{
    free(arg);
}

void order_rental_register(service *svc, db *d, const order_api_config *cfg)
{
    rental_api *api = mem_must(calloc(1, sizeof *api));
    api->base = svc->base;
    api->db = d;
    api->payment = cfg->payment;
    api->reconciler = cfg->reconciler;
    api->leases = cfg->leases;
    api->test_crash_after_payment = cfg->test_crash_after_payment;
    http_server_route_for(svc->http, "POST", "/orders", TOKEN_ROLE_CUSTOMER, post_order, api);
    service_on_stop(svc, free_rental_api, api);
}
