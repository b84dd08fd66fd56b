/* api.c: payment's HTTP interface (see payment.h and the contract).
 *
 *   POST /payments                         charge once per orderId (201, or 200 repeat)
 *   GET  /payments[?page&size]             list
 *   GET  /payments/{id}
 *   GET  /payments/search/findByOrderId?orderId=7
 *   POST /paymentCancellations             refund or void, once per orderId (201, or 200)
 *   GET  /paymentCancellations[?page&size]
 *   GET  /paymentCancellations/{id}
 *
 * Answers worth knowing:
 *  - POST /payments: 201 new payment (status "Paid"); 200 the existing
 *    payment of that orderId (nothing charged); 402 card 4000000000000002
 *    (nothing stored); 409 the order was cancelled or voided first, or was
 *    paid already with another amount, qty, product or card.
 *  - POST /paymentCancellations: 201 with the new cancellation, 200 with
 *    the existing one. Its status is "PaymentCancelled" when a payment was
 *    refunded (the payment's own status becomes "PaymentCancelled" too and
 *    PayCancelled is published, its id being the cancellation's), or
 *    "PaymentVoided" when the order had no payment: nothing is refunded or
 *    published, and any later POST /payments for that order gets 409.
 *  - Items: payment {id, orderId, productId, qty, amount, cardLast4,
 *    status, createdAt}; cancellation {id, orderId, paymentId (null when
 *    voided), productId, qty, amount, status, createdAt}.
 *
 * Handlers parse and validate, call the domain, and shape the answer; no
 * SQL and no rule lives here. The card number is read into a stack buffer,
 * reduced to its digits, given to the domain (which keeps the last four)
 * and wiped before the handler returns.
 *
 * PAYMENT_TEST_DELAY_MS (test only, 0 = off) holds every POST /payments
 * answer back for that long AFTER the charge has been committed: this is
 * how the end-to-end tests make payment slow, and make an answer arrive
 * after the order service gave up waiting (a "lost answer"). */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "log.h"
#include "mem.h"
#include "payment.h"
#include "rep.h"
#include "service.h"
#include "token.h"

#define MAX_QTY 1000000LL
#define MAX_AMOUNT 1000000000000000LL   /* 10^15 KRW: beyond any rental */
#define MAX_ORDER_ID 9007199254740991LL /* 2^53 - 1: exact in every JSON client */

typedef struct payment_api {
    store *st;
    struct event_base *base;
    int test_delay_ms;
} payment_api;

/* ---- representations ---- */

static json_t *payment_json(const payment *p, const char *base_url)
{
    char id[24];
    json_t *item = json_pack("{s:I, s:I, s:s, s:I, s:I, s:s?, s:s, s:s}",
                             "id", (json_int_t)p->id, "orderId", (json_int_t)p->order_id,
                             "productId", p->product_id, "qty", (json_int_t)p->qty,
                             "amount", (json_int_t)p->amount,
                             "cardLast4", p->card_last4[0] ? p->card_last4 : NULL,
                             "status", p->status, "createdAt", p->created_at);
    snprintf(id, sizeof id, "%lld", p->id);
    return rep_item(item, base_url, "payments", id);
}

static json_t *cancellation_json(const payment_cancellation *c, const char *base_url)
{
    char id[24];
    json_t *item = json_pack("{s:I, s:I, s:o, s:s?, s:I, s:I, s:s, s:s}",
                             "id", (json_int_t)c->id, "orderId", (json_int_t)c->order_id,
                             "paymentId", c->payment_id > 0 ? json_integer(c->payment_id)
                                                            : json_null(),
                             "productId", c->product_id[0] ? c->product_id : NULL,
                             "qty", (json_int_t)c->qty, "amount", (json_int_t)c->amount,
                             "status", c->status, "createdAt", c->created_at);
    snprintf(id, sizeof id, "%lld", c->id);
    return rep_item(item, base_url, "paymentCancellations", id);
}

/* A positive integer path parameter, else a 400 naming it. */
static bool path_id(http_req *r, const char *what, long long *out)
{
    if (rep_path_id(http_req_param(r, "id"), out))
        return true;
    http_reply_error(r, 400, "%s id must be a positive integer", what);
    return false;
}

/* ---- POST /payments ---- */

/* An answer held back by PAYMENT_TEST_DELAY_MS. */
typedef struct delayed_answer {
    http_req *req;
    int status;
    json_t *body;
    struct event *timer;
} delayed_answer;

static void send_charge_answer(http_req *r, int status, json_t *body)
{
    if (status == 201)
        rep_reply_created(r, body);
    else
        http_reply_json(r, status, body);
}

static void delayed_answer_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    delayed_answer *d = arg;
    send_charge_answer(d->req, d->status, d->body);
    event_free(d->timer);
    free(d);
}

static void answer_charge(payment_api *api, http_req *r, int status, json_t *body)
{
    if (api->test_delay_ms > 0) {
        delayed_answer *d = calloc(1, sizeof *d);
        if (d) {
            d->req = r;
            d->status = status;
            d->body = body;
            d->timer = evtimer_new(api->base, delayed_answer_fire, d);
            struct timeval tv = {api->test_delay_ms / 1000, (api->test_delay_ms % 1000) * 1000};
            if (d->timer && evtimer_add(d->timer, &tv) == 0)
                return;
            if (d->timer)
                event_free(d->timer);
            free(d);
        }
    }
    send_charge_answer(r, status, body);
}

/* Reads the charge request; on a bad field replies 400 and returns false.
 * `digits` receives the normalized card number, or "" when none. */
static bool read_charge(http_req *r, const json_t *in, charge_request *rq, char *product_buf,
                        size_t product_len, char *digits, size_t digits_len)
{
    char err[160];
    const char *card = NULL;
    char card_buf[64];

    memset(rq, 0, sizeof *rq);
    if (rep_int(in, "orderId", true, 1, MAX_ORDER_ID, &rq->order_id, err, sizeof err) < 0
        || rep_str(in, "productId", true, PAYMENT_PRODUCT_MAX, &rq->product_id, product_buf,
                   product_len, err, sizeof err) < 0
        || rep_int(in, "qty", true, 1, MAX_QTY, &rq->qty, err, sizeof err) < 0
        || rep_int(in, "amount", true, 0, MAX_AMOUNT, &rq->amount, err, sizeof err) < 0
        || rep_str(in, "cardNumber", false, sizeof card_buf - 1, &card, card_buf,
                   sizeof card_buf, err, sizeof err) < 0) {
        explicit_bzero(card_buf, sizeof card_buf);
        http_reply_error(r, 400, "%s", err);
        return false;
    }
    digits[0] = '\0';
    if (card && payment_card_digits(card, digits, digits_len) < 0) {
        explicit_bzero(card_buf, sizeof card_buf);
        explicit_bzero(digits, digits_len);
        /* Never echo the number: the message only says what is expected. */
        http_reply_error(r, 400, "cardNumber must be %d to %d digits (spaces or dashes between "
                         "groups allowed)", PAYMENT_CARD_MIN_DIGITS, PAYMENT_CARD_MAX_DIGITS);
        return false;
    }
    explicit_bzero(card_buf, sizeof card_buf);
    rq->card_digits = digits[0] ? digits : NULL;
    return true;
}

static void post_payment(http_req *r, void *arg)
{
    payment_api *api = arg;
    json_t *in = http_req_json(r);
    if (!in)
        return;

    charge_request rq;
    char product_buf[PAYMENT_PRODUCT_MAX + 1];
    char digits[PAYMENT_CARD_MAX_DIGITS + 1];
    if (!read_charge(r, in, &rq, product_buf, sizeof product_buf, digits, sizeof digits)) {
        json_decref(in);
        return;
    }

    payment p;
    charge_outcome o = payment_charge(api->st, &rq, http_req_id(r), &p);
    explicit_bzero(digits, sizeof digits);
    /* The body held the card number too: jansson frees it without wiping,
     * but it is never copied anywhere else. */
    json_decref(in);

    const char *path = http_req_path(r);
    char msg[200];
    switch (o) {
    case CHARGE_CREATED:
        answer_charge(api, r, 201, payment_json(&p, http_req_base_url(r)));
        return;
    case CHARGE_EXISTING:
        log_info("req=%s msg=\"payment repeated, existing one returned\" payment=%lld order=%lld",
                 http_req_id(r), p.id, p.order_id);
        answer_charge(api, r, 200, payment_json(&p, http_req_base_url(r)));
        return;
    case CHARGE_DECLINED:
        log_info("req=%s msg=\"card declined\" order=%lld", http_req_id(r), rq.order_id);
        snprintf(msg, sizeof msg, "the card was declined; order %lld was not charged",
                 rq.order_id);
        answer_charge(api, r, 402, rep_error(402, msg, path));
        return;
    case CHARGE_ORDER_CANCELLED:
        log_info("req=%s msg=\"payment refused: order cancelled\" order=%lld", http_req_id(r),
                 rq.order_id);
        snprintf(msg, sizeof msg, "order %lld was cancelled; it can no longer be paid",
                 rq.order_id);
        answer_charge(api, r, 409, rep_error(409, msg, path));
        return;
    case CHARGE_CONFLICT:
        log_warn("req=%s msg=\"payment refused: order already paid with other fields\" "
                 "order=%lld", http_req_id(r), rq.order_id);
        snprintf(msg, sizeof msg, "order %lld is already paid with another amount, qty, product "
                 "or card; nothing was charged", rq.order_id);
        answer_charge(api, r, 409, rep_error(409, msg, path));
        return;
    case CHARGE_FAILED:
        break;
    }
    http_reply_error(r, 500, "the payment for order %lld could not be stored; nothing was "
                     "charged, please retry", rq.order_id);
}

/* ---- reads ---- */

static void add_payment(const payment *p, void *arg)
{
    rep_list *l = arg;
    json_array_append_new(l->items, payment_json(p, l->base_url));
}

static void add_cancellation(const payment_cancellation *c, void *arg)
{
    rep_list *l = arg;
    json_array_append_new(l->items, cancellation_json(c, l->base_url));
}

static void list_payments(http_req *r, void *arg)
{
    payment_api *api = arg;
    long page, size;
    if (!rep_page_query(r, &page, &size))
        return;
    rep_list list = {json_array(), http_req_base_url(r)};
    long long total = payment_store_count(api->st);
    if (total < 0 || payment_store_list(api->st, page * size, size, add_payment, &list) != 0) {
        json_decref(list.items);
        http_reply_error(r, 500, "the payments could not be read");
        return;
    }
    rep_reply_collection(r, "payments", list.items, page, size, total);
}

static void get_payment(http_req *r, void *arg)
{
    payment_api *api = arg;
    long long id;
    if (!path_id(r, "payment", &id))
        return;
    payment p;
    int found = payment_store_get(api->st, id, &p);
    rep_reply_found(r, found, found > 0 ? payment_json(&p, http_req_base_url(r)) : NULL, "payment",
                    http_req_param(r, "id"));
}

static void find_payment_by_order(http_req *r, void *arg)
{
    payment_api *api = arg;
    long long order_id;
    if (!rep_query_int(r, "orderId", 1, MAX_ORDER_ID, &order_id))
        return;
    payment p;
    int found = payment_store_find_by_order(api->st, order_id, &p);
    if (found < 0) {
        http_reply_error(r, 500, "the payment of order %lld could not be read", order_id);
        return;
    }
    json_t *items = json_array();
    if (found)
        json_array_append_new(items, payment_json(&p, http_req_base_url(r)));
    rep_reply_collection(r, "payments", items, 0, 20, found);
}

/* ---- cancellations ---- */

static void post_cancellation(http_req *r, void *arg)
{
    payment_api *api = arg;
    json_t *in = http_req_json(r);
    if (!in)
        return;
    char err[160];
    long long order_id;
    int ok = rep_int(in, "orderId", true, 1, MAX_ORDER_ID, &order_id, err, sizeof err);
    json_decref(in);
    if (ok < 0) {
        http_reply_error(r, 400, "%s", err);
        return;
    }

    payment_cancellation c;
    switch (payment_refund(api->st, order_id, http_req_id(r), false, &c)) {
    case REFUND_CREATED:
        log_info("req=%s msg=\"payment cancelled\" order=%lld cancellation=%lld status=%s "
                 "amount=%lld", http_req_id(r), order_id, c.id, c.status, c.amount);
        rep_reply_created(r, cancellation_json(&c, http_req_base_url(r)));
        return;
    case REFUND_EXISTING:
        http_reply_json(r, 200, cancellation_json(&c, http_req_base_url(r)));
        return;
    case REFUND_FAILED:
        break;
    }
    http_reply_error(r, 500, "the cancellation of order %lld could not be stored; please retry",
                     order_id);
}

static void list_cancellations(http_req *r, void *arg)
{
    payment_api *api = arg;
    long page, size;
    if (!rep_page_query(r, &page, &size))
        return;
    rep_list list = {json_array(), http_req_base_url(r)};
    long long total = cancellation_store_count(api->st);
    if (total < 0
        || cancellation_store_list(api->st, page * size, size, add_cancellation, &list) != 0) {
        json_decref(list.items);
        http_reply_error(r, 500, "the payment cancellations could not be read");
        return;
    }
    rep_reply_collection(r, "paymentCancellations", list.items, page, size, total);
}

static void get_cancellation(http_req *r, void *arg)
{
    payment_api *api = arg;
    long long id;
    if (!path_id(r, "payment cancellation", &id))
        return;
    payment_cancellation c;
    int found = cancellation_store_get(api->st, id, &c);
    rep_reply_found(r, found, found > 0 ? cancellation_json(&c, http_req_base_url(r)) : NULL,
                    "payment cancellation", http_req_param(r, "id"));
}

static void free_api(void *arg)
{
    free(arg);
}

void payment_api_register(service *svc, store *st, const payment_api_config *cfg)
{
    payment_api *api = mem_must(calloc(1, sizeof *api));
    api->st = st;
    api->base = svc->base;
    api->test_delay_ms = cfg ? cfg->test_delay_ms : 0;

    http_server *h = svc->http;
    /* Charges and refunds are asked by order only (a service token);
     * customers get refunds by cancelling the rental. Reads: staff only
     * (the default). */
    http_server_route_for(h, "POST", "/payments", TOKEN_ROLE_SERVICE, post_payment, api);
    http_server_route(h, "GET", "/payments", list_payments, api);
    /* order's reconciler asks this for an order whose outcome it lost. */
    http_server_route_for(h, "GET", "/payments/search/findByOrderId",
                          TOKEN_ROLE_STAFF | TOKEN_ROLE_SERVICE, find_payment_by_order, api);
    http_server_route(h, "GET", "/payments/{id}", get_payment, api);
    http_server_route_for(h, "POST", "/paymentCancellations", TOKEN_ROLE_SERVICE,
                          post_cancellation, api);
    http_server_route(h, "GET", "/paymentCancellations", list_cancellations, api);
    http_server_route(h, "GET", "/paymentCancellations/{id}", get_cancellation, api);
    service_on_stop(svc, free_api, api);
}
