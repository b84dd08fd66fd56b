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
 * Who rents: the signed-in customer (the route admits customers only, so
 * staff get 403); customerId comes from the token, and a body naming
 * another customer is a 403. Idempotency-Key is scoped to the customer
 * (rental_scoped_key): another customer's key is unknown to you. Only the
 * payment asked for approves a rental (rental_payment_verdict); a 409 from
 * payment is a refusal, never shown as "busy, try again".
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
#include "httpc.h"
#include "jtext.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "order.h"
#include "rep.h"
#include "service.h"
#include "token.h"

#define CARD_TEXT_MAX 40

typedef struct rental_api {
    struct event_base *base;
    store *st;
    balance_set *payment;       /* payment's instances (lib/balance.h) */
    reconciler *reconciler;
    bool test_crash_after_payment;
} rental_api;

/* One POST /orders waiting for payment's answer. */
typedef struct rental_call {
    rental_api *api;
    http_req *req;
    intake in;
    char *body;        /* the payment request: holds the card number, wiped after use */
    size_t body_len;
} rental_call;

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

/* ---- POST /orders: settling from payment's answer ---- */

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
typedef struct void_attempt {
    rental_api *api;
    http_req *req;
    long long intake_id;
    unsigned long long retry_after_ms;
    int tries;
    struct event *timer;
} void_attempt;

#define VOID_TRIES 6            /* now, then after 50, 100, 200, 400, 800 ms */

static void finish_void(void_attempt *v, bool recorded, bool changed)
{
    if (recorded) {
        if (changed)
            reconciler_kick(v->api->reconciler);
        reply_fallback(v->req, v->retry_after_ms);
    } else {
        log_error("req=%s msg=\"intake could not be marked voiding: answering that the outcome "
                  "is unknown; it will be settled at the next start\" intake=%lld",
                  http_req_id(v->req), v->intake_id);
        metrics_count_outcome("carshare_rentals_total", "unknown");
        http_reply_error(v->req, 500, "The outcome of this rental could not be recorded: it may "
                         "still be accepted. Check your rentals before trying again.");
    }
    if (v->timer)
        event_free(v->timer);
    free(v);
}

static void try_void(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    void_attempt *v = arg;
    int rc = rental_start_void(v->api->st, v->intake_id);
    if (rc >= 0 || ++v->tries >= VOID_TRIES) {
        finish_void(v, rc >= 0, rc == 1);
        return;
    }
    if (!v->timer && !(v->timer = evtimer_new(v->api->base, try_void, v))) {
        finish_void(v, false, false);
        return;
    }
    struct timeval tv = { 0, 50000L << (v->tries - 1) };
    evtimer_add(v->timer, &tv);
}

/* Marks the intake voiding, then answers 503 (or 500 when it cannot). */
static void answer_not_booked(rental_api *api, http_req *r, long long intake_id,
                              unsigned long long retry_after_ms)
{
    void_attempt *v = calloc(1, sizeof *v);
    if (!v) {
        http_reply_error(r, 500, "out of memory");
        return;
    }
    *v = (void_attempt){ .api = api, .req = r, .intake_id = intake_id,
                         .retry_after_ms = retry_after_ms };
    try_void(-1, 0, v);
}

static void settle_paid(rental_call *call, long long payment_id)
{
    rental_api *api = call->api;
    http_req *r = call->req;
    order o;
    int rc = rental_approve(api->st, call->in.id, payment_id, &o);
    if (rc == 1) {
        log_info("req=%s msg=\"rental accepted\" order=%lld payment=%lld product=%s qty=%lld "
                 "amount=%lld", http_req_id(r), o.id, payment_id, o.product_id, o.qty, o.amount);
        metrics_count_outcome("carshare_rentals_total", "approved");
        rep_reply_created(r, order_json(&o, http_req_base_url(r)));
        return;
    }
    /* Paid but not recorded: the customer is told 503, so the payment
     * must not stand. Voiding makes the reconciler refund it. */
    log_error("req=%s msg=\"paid rental could not be recorded, voiding it\" intake=%lld "
              "payment=%lld", http_req_id(r), call->in.id, payment_id);
    answer_not_booked(api, r, call->in.id, 1000);
}

static void settle_declined(rental_call *call, const httpc_response *resp)
{
    rental_api *api = call->api;
    http_req *r = call->req;
    char message[ORDER_MESSAGE_MAX + 1];
    /* Payment's own message names the order id, which for a declined rental
     * is an attempt the customer never sees among their orders: say it in
     * the customer's terms instead. */
    (void)resp;
    snprintf(message, sizeof message,
             "payment declined: the card was refused and nothing was charged; "
             "try another card");

    if (rental_decline(api->st, call->in.id, message) < 0)
        log_error("req=%s msg=\"declined intake could not be recorded; it will be voided at "
                  "the next start\" intake=%lld", http_req_id(r), call->in.id);
    log_info("req=%s msg=\"rental declined by payment\" intake=%lld", http_req_id(r), call->in.id);
    metrics_count_outcome("carshare_rentals_total", "declined");
    http_reply_error(r, 402, "%s", message);
}

/* The bulkhead refused the call before anything was sent: payment never
 * saw this order, so there is nothing to cancel there. */
static void settle_unsent(rental_call *call)
{
    rental_api *api = call->api;
    http_req *r = call->req;
    log_warn("req=%s msg=\"payment bulkhead full, rental shed\" intake=%lld", http_req_id(r),
             call->in.id);
    if (rental_void_unsent(api->st, call->in.id) < 0)
        log_error("req=%s msg=\"shed intake could not be voided; it will be settled at the next "
                  "start\" intake=%lld", http_req_id(r), call->in.id);
    reply_fallback(r, 1000);
}

static void settle_unknown(rental_call *call, const httpc_response *resp)
{
    rental_api *api = call->api;
    http_req *r = call->req;
    if (resp->result == HTTPC_BUSY) {
        settle_unsent(call);
        return;
    }
    log_warn("req=%s msg=\"payment outcome unknown, voiding the rental\" intake=%lld result=%s "
             "status=%d elapsed_ms=%llu", http_req_id(r), call->in.id,
             httpc_result_name(resp->result), resp->status, resp->elapsed_ms);
    unsigned long long retry_ms = resp->result == HTTPC_OPEN ? resp->retry_after_ms : 0;
    if (!retry_ms)
        balance_refusal(api->payment, &retry_ms);
    answer_not_booked(api, r, call->in.id, retry_ms ? retry_ms : 1000);
}

/* Payment refused this order id (409), or answered a payment that is not
 * the one asked for. Either way no payment of ours stands for it: the
 * intake is voided (the reconciler cancels whatever payment holds that
 * order id, then releases the cars). This is no overload, so the customer
 * is not told "busy, try again shortly" (503): it is a 502 saying the
 * rental was not made and nothing stays charged. */
static void settle_refused(rental_call *call, payment_verdict v)
{
    rental_api *api = call->api;
    http_req *r = call->req;
    log_warn("req=%s msg=\"payment %s, voiding the rental\" intake=%lld", http_req_id(r),
             v == PAYMENT_VERDICT_REFUSED ? "refused this order id (409)"
                                          : "answered another payment than asked",
             call->in.id);
    if (rental_start_void(api->st, call->in.id) == 1)
        reconciler_kick(api->reconciler);
    metrics_count_outcome("carshare_rentals_total", "payment_refused");
    http_reply_error(r, 502, "the payment service refused this rental, so it was not made and "
                     "nothing stays charged; please place it again");
}

static void rental_call_free(rental_call *call)
{
    if (call->body) {
        explicit_bzero(call->body, call->body_len);
        free(call->body);
    }
    free(call);
}

static void on_payment_answer(const httpc_response *resp, void *arg)
{
    rental_call *call = arg;
    long long payment_id = 0;
    payment_verdict v = resp->result == HTTPC_OK
        ? rental_payment_verdict(resp->status, resp->body, &call->in, &payment_id)
        : PAYMENT_VERDICT_UNKNOWN;

    if (call->api->test_crash_after_payment && v == PAYMENT_VERDICT_PAID) {
        log_warn("req=%s msg=\"ORDER_TEST_CRASH_AFTER_PAYMENT: exiting between the payment and "
                 "the commit\" intake=%lld payment=%lld", http_req_id(call->req), call->in.id,
                 payment_id);
        _exit(70);
    }

    switch (v) {
    case PAYMENT_VERDICT_PAID:
        settle_paid(call, payment_id);
        break;
    case PAYMENT_VERDICT_DECLINED:
        settle_declined(call, resp);
        break;
    case PAYMENT_VERDICT_REFUSED:
    case PAYMENT_VERDICT_MISMATCH:
        settle_refused(call, v);
        break;
    case PAYMENT_VERDICT_UNKNOWN:
        settle_unknown(call, resp);
        break;
    }
    rental_call_free(call);
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

static void call_payment(rental_api *api, http_req *r, const intake *in, const char *card_digits)
{
    rental_call *call = calloc(1, sizeof *call);
    if (call)
        call->body = payment_request_body(in, card_digits, &call->body_len);
    if (!call || !call->body) {
        free(call);
        log_error("req=%s msg=\"out of memory for the payment call\" intake=%lld",
                  http_req_id(r), in->id);
        if (rental_start_void(api->st, in->id) == 1)
            reconciler_kick(api->reconciler);
        reply_fallback(r, 1000);
        return;
    }
    call->api = api;
    call->req = r;
    call->in = *in;
    /* Idempotent: payment charges at most once per orderId, so the client
     * may retry a lost attempt, on the same instance or (lib/balance.h: only
     * when the first was never delivered or its connection broke) on
     * another -- payment's replicas share one database, where "one payment
     * per orderId" holds across them (UNIQUE(order_id), SERIALIZABLE). A
     * BUSY outcome still means "never sent" after such a retry: the set
     * reports the broken first attempt instead (balance_first_outcome_wins). */
    balance_json(api->payment, "POST", "/payments", http_req_id(r), call->body, true,
                 on_payment_answer, call);
}

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

/* Same Idempotency-Key as an earlier request: its outcome, not a new rental.
 *   approved -> 201 with the order (as it is now: a later cancel shows)
 *   declined -> 402 with the same message
 *   voiding  -> 503 fallback (the first attempt is being cancelled at payment)
 *   pending, in doubt -> 409 "still being processed"
 *   voided   -> not a replay: the attempt left nothing, a new one starts
 * The same key with another productId, qty, customerId or period is a 422. */
static void replay(rental_api *api, http_req *r, const intake *prev, const rental_request *rq)
{
    if (!rental_same_request(prev, rq)) {
        http_reply_error(r, 422, "this Idempotency-Key was already used for a different rental "
                         "(productId, qty, customerId or period differ); use a new key");
        return;
    }
    order o;
    int found;
    switch (prev->state) {
    case INTAKE_APPROVED:
        found = order_store_get(api->st, prev->id, &o);
        if (found == 1) {
            metrics_count_outcome("carshare_rentals_total", "replayed");
            rep_reply_created(r, order_json(&o, http_req_base_url(r)));
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
        break;   /* not a replay: the caller starts a new attempt */
    }
    http_reply_error(r, 500, "unexpected state of the earlier rental with this key");
}

/* 409 naming the first day of the period without enough cars. Read after
 * the booking was rolled back, so another rental may have changed the
 * picture meanwhile: then the message speaks of the period. */
static void reply_full(rental_api *api, http_req *r, const car *c, const rental_request *rq)
{
    long day;
    long long free_cars;
    char date[CAL_DATE_SIZE];
    if (booking_store_first_full(api->st, rq->product_id, rq->from_day, rq->to_day, rq->qty,
                                 &day, &free_cars) == 1) {
        http_reply_error(r, 409, "not enough cars available on %s: %lld of model %s (%s) free "
                         "that day, %lld requested", cal_format(day, date), free_cars, c->id,
                         c->name, rq->qty);
        return;
    }
    http_reply_error(r, 409, "not enough cars available for the %ld days from %s of model %s "
                     "(%s); %lld requested", rq->to_day - rq->from_day,
                     cal_format(rq->from_day, date), c->id, c->name, rq->qty);
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
    rental_input ri;
    bool ok = read_rental(r, body, &ri);
    json_decref(body);   /* read_rental copied what it keeps */
    if (!ok)
        return;
    rental_request *rq = &ri.rq;
    if (key) {
        rental_scoped_key(rq->customer_id, key, ri.scoped_key, sizeof ri.scoped_key);
        rq->idempotency_key = key = ri.scoped_key;
    }

    intake prev;
    int found = key ? intake_store_find_by_key(api->st, key, &prev) : 0;
    if (found < 0)
        goto failed;
    if (found && prev.state != INTAKE_VOIDED) {
        replay(api, r, &prev, rq);
        goto done;
    }

    car c;
    found = car_store_get(api->st, rq->product_id, rq->from_day, rq->to_day, &c);
    if (found < 0)
        goto failed;
    if (!found) {
        http_reply_error(r, 404, "no car model with productId %s", rq->product_id);
        goto done;
    }

    /* The breaker is open or the bulkhead full: shed now, before writing
     * anything, rather than reserve cars only to have the call refused. */
    unsigned long long refusing;
    if (balance_refusal(api->payment, &refusing) != HTTPC_OK) {
        reply_fallback(r, refusing);
        goto done;
    }

    intake in;
    switch (rental_reserve(api->st, rq, &in, &c)) {
    case RESERVE_OK:
        call_payment(api, r, &in, ri.card_digits[0] ? ri.card_digits : NULL);
        goto done;
    case RESERVE_UNKNOWN_CAR:
        http_reply_error(r, 404, "no car model with productId %s", rq->product_id);
        goto done;
    case RESERVE_NOT_ENOUGH:
        metrics_count_outcome("carshare_rentals_total", "no_cars");
        reply_full(api, r, &c, rq);
        goto done;
    case RESERVE_FAILED:
        break;
    }
failed:
    /* The database could not take the write (full disk, I/O error, a
     * long lock): nothing was reserved or charged, and trying again later
     * is the right advice, so 503, not 500. */
    metrics_count_outcome("carshare_rentals_total", "store_unavailable");
    http_set_header(r, "Retry-After", "5");
    http_reply_error(r, 503, "the rental could not be recorded right now; nothing was reserved "
                     "or charged; please try again shortly");
done:
    explicit_bzero(ri.card_digits, sizeof ri.card_digits);
}

static void free_rental_api(void *arg)
{
    free(arg);
}

void order_rental_register(service *svc, store *st, const order_api_config *cfg)
{
    rental_api *api = mem_must(calloc(1, sizeof *api));
    api->base = svc->base;
    api->st = st;
    api->payment = cfg->payment;
    api->reconciler = cfg->reconciler;
    api->test_crash_after_payment = cfg->test_crash_after_payment;
    http_server_route_for(svc->http, "POST", "/orders", TOKEN_ROLE_CUSTOMER, post_order, api);
    service_on_stop(svc, free_rental_api, api);
}
