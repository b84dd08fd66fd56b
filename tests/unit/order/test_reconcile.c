/* test_reconcile.c: the reconciler (services/order/reconcile.c) against a
 * payment stand-in on loopback, in one loop, with a real order database.
 *
 *  - a voiding intake: POST /paymentCancellations {orderId}, then voided
 *    and its cars released;
 *  - an in-doubt intake that payment holds a matching Paid payment for:
 *    approved, the order written with that payment's id (and Ordered);
 *  - an in-doubt intake payment knows nothing of, or holds a payment of
 *    another amount for: voiding, cancelled at payment, then voided;
 *  - payment failing (500): nothing settles and nothing is lost; once it
 *    answers again, the next passes settle everything. */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "balance.h"
#include "httpc.h"
#include "order.h"
#include "rep.h"
#include "testing.h"
#include "testing_store.h"

#define TODAY 20800L   /* 2026-12-13 */

static struct event_base *base;
static char dir[64];

/* The payment stand-in. */
static struct {
    bool failing;                   /* answer 500 to everything */
    long long paid_order, paid_amount;   /* findByOrderId shows this payment */
    long long other_order;              /* and one of another amount for this order */
    long long cancelled[16];
    int ncancelled;
    int lookups;
} pay;

static void pay_cancel(http_req *r, void *arg)
{
    (void)arg;
    if (pay.failing) {
        http_reply_error(r, 500, "down");
        return;
    }
    json_t *body = http_req_json(r);
    if (!body)
        return;
    long long id = json_integer_value(json_object_get(body, "orderId"));
    json_decref(body);
    if (pay.ncancelled < 16)
        pay.cancelled[pay.ncancelled++] = id;
    http_reply_json(r, 201, json_pack("{s:I, s:I, s:s}", "id", (json_int_t)pay.ncancelled,
                                      "orderId", (json_int_t)id, "status", "PaymentVoided"));
}

static void pay_lookup(http_req *r, void *arg)
{
    (void)arg;
    pay.lookups++;
    if (pay.failing) {
        http_reply_error(r, 500, "down");
        return;
    }
    long long id = atoll(http_req_query(r, "orderId") ? http_req_query(r, "orderId") : "0");
    json_t *items = json_array();
    if (id == pay.paid_order || id == pay.other_order)
        json_array_append_new(items, json_pack("{s:i, s:I, s:s, s:i, s:I, s:s}", "id", 555,
                                               "orderId", (json_int_t)id, "productId", "1001",
                                               "qty", 1, "amount", (json_int_t)(
                                                   id == pay.paid_order ? pay.paid_amount
                                                                        : pay.paid_amount + 1),
                                               "status", "Paid"));
    http_reply_json(r, 200, json_pack("{s:{s:o}}", "_embedded", "payments", items));
}

static bool done_flag;
static void stop_loop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    done_flag = true;
}

/* Runs the loop until cond() or ms pass. */
static bool run_until(bool (*cond)(store *), store *st, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000}, tick = {0, 20000};
    done_flag = false;
    struct event *deadline = evtimer_new(base, stop_loop, NULL);
    evtimer_add(deadline, &tv);
    while (!done_flag && !(cond && cond(st))) {
        event_base_loopexit(base, &tick);
        event_base_dispatch(base);
    }
    event_free(deadline);
    return !cond || cond(st);
}

static intake_state state_of(store *st, long long id)
{
    intake in;
    return intake_store_get(st, id, &in) == 1 ? in.state : (intake_state)-1;
}

static long long ids[4];
static bool all_settled(store *st)
{
    for (int i = 0; i < 4; i++) {
        intake_state s = state_of(st, ids[i]);
        if (s != INTAKE_APPROVED && s != INTAKE_VOIDED)
            return false;
    }
    return true;
}

static long long available(store *st, const char *id)
{
    car c;
    return car_store_get(st, id, TODAY, TODAY + 1, &c) == 1 ? c.available : -1;
}

static long long reserve(store *st)
{
    rental_request rq = {.product_id = "1001", .qty = 1, .customer_id = "kim",
                         .request_id = "req-rec", .from_day = TODAY, .to_day = TODAY + 1};
    intake in;
    car c;
    CHECK_INT(rental_reserve(st, &rq, &in, &c), RESERVE_OK);
    return in.id;
}

int main(void)
{
    base = event_base_new();
    store *st = NULL;
    if (temp_dir_make(dir, sizeof dir, "reconcile")) {
        char path[300];
        snprintf(path, sizeof path, "%s/order.db", dir);
        st = order_store_open_path(path);
    }
    CHECK(st != NULL);
    if (!st || !base) return test_done("order/test_reconcile");
    CHECK_INT(fleet_load(st, NULL), 0);
    long long before = available(st, "1001");

    /* Four intakes: one voiding, three in doubt (paid, unknown, paid with
     * another amount). */
    for (int i = 0; i < 4; i++)
        ids[i] = reserve(st);
    CHECK_INT(rental_start_void(st, ids[0]), 1);
    CHECK_INT(rental_mark_in_doubt(st), 3);
    intake paid;
    CHECK_INT(intake_store_get(st, ids[1], &paid), 1);
    pay.paid_order = ids[1];
    pay.paid_amount = paid.amount;
    pay.other_order = ids[3];
    CHECK_INT(available(st, "1001"), before - 4);

    http_server *srv = http_server_new(base);
    http_server_route(srv, "POST", "/paymentCancellations", pay_cancel, NULL);
    http_server_route(srv, "GET", "/payments/search/findByOrderId", pay_lookup, NULL);
    int port = http_server_listen(srv, "127.0.0.1", 0);
    CHECK(port > 0);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    httpc_opts o = { .retries = -1, .timeout_ms = 2000, .breaker = { .open_ms = 100 } };
    balance_opts bo = { .http = o };
    balance_set *client = balance_set_new(base, "payment-reconciler", url, &bo);

    /* Payment is down: passes fail, nothing changes state wrongly. */
    pay.failing = true;
    db *d = db_of_store(base, st);
    CHECK(d != NULL);
    reconciler *rec = reconciler_new(base, d, client, 50);
    run_until(NULL, st, 400);
    CHECK(pay.lookups > 0);
    CHECK_INT(state_of(st, ids[0]), INTAKE_VOIDING);
    CHECK_INT(state_of(st, ids[1]), INTAKE_IN_DOUBT);
    CHECK_INT(available(st, "1001"), before - 4);

    /* Payment answers: everything settles. */
    pay.failing = false;
    CHECK(run_until(all_settled, st, 15000));
    CHECK_INT(state_of(st, ids[0]), INTAKE_VOIDED);
    CHECK_INT(state_of(st, ids[1]), INTAKE_APPROVED);
    CHECK_INT(state_of(st, ids[2]), INTAKE_VOIDED);
    /* paid, but not what order asked for: cancelled like no payment */
    CHECK_INT(state_of(st, ids[3]), INTAKE_VOIDED);
    order o1;
    CHECK_INT(order_store_get(st, ids[1], &o1), 1);
    CHECK_INT(o1.payment_id, 555);
    CHECK_INT(count(st, "SELECT count(*) FROM outbox WHERE event_type = 'Ordered'"), 1);
    /* every voided intake was cancelled at payment first, once each */
    int seen[4] = {0};
    for (int i = 0; i < pay.ncancelled; i++)
        for (int k = 0; k < 4; k++)
            if (pay.cancelled[i] == ids[k]) seen[k]++;
    CHECK(seen[0] >= 1 && seen[2] >= 1 && seen[3] >= 1);
    CHECK_INT(seen[1], 0);
    /* the approved rental keeps its car; the three others gave theirs back */
    CHECK_INT(available(st, "1001"), before - 1);

    reconciler_stop(rec);
    balance_set_free(client);
    http_server_free(srv);
    db_close(d);   /* closes st */
    event_base_free(base);
    temp_dir_remove(dir);
    return test_done("order/test_reconcile");
}
