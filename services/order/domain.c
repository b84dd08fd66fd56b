/* domain.c: order's rules and the transactions that apply them.
 *
 * Every state change of a rental is one short transaction that checks the
 * state it starts from (a guarded UPDATE) and writes the new state with
 * its consequences: booked or released days, the order row, the event in
 * the outbox.
 * A change whose starting state no longer holds changes nothing and says
 * so (returns 0): this is what makes a late payment answer, a second
 * DELETE or a redelivered event harmless.
 *
 * Nothing here waits on the network: the payment call happens between two
 * of these transactions (api.c), never inside one. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "events.h"
#include "jtext.h"
#include "log.h"
#include "order.h"

static const char *const state_names[] = {
    [INTAKE_PENDING] = "pending",
    [INTAKE_APPROVED] = "approved",
    [INTAKE_DECLINED] = "declined",
    [INTAKE_VOIDING] = "voiding",
    [INTAKE_VOIDED] = "voided",
    [INTAKE_IN_DOUBT] = "in_doubt",
};

const char *intake_state_name(intake_state s)
{
    return (unsigned)s < sizeof state_names / sizeof state_names[0] ? state_names[s] : "?";
}

bool intake_state_parse(const char *name, intake_state *out)
{
    for (size_t i = 0; i < sizeof state_names / sizeof state_names[0]; i++) {
        if (strcmp(name, state_names[i]) == 0) {
            *out = (intake_state)i;
            return true;
        }
    }
    return false;
}

/* ---- pure rules ---- */

bool rental_payment_matches(const json_t *p, const intake *asked)
{
    const char *product = json_string_value(json_object_get(p, "productId"));
    const json_t *order_id = json_object_get(p, "orderId");
    const json_t *amount = json_object_get(p, "amount");
    const json_t *qty = json_object_get(p, "qty");
    return json_is_integer(order_id) && json_integer_value(order_id) == asked->id
           && json_is_integer(amount) && json_integer_value(amount) == asked->amount
           && json_is_integer(qty) && json_integer_value(qty) == asked->qty
           && product && strcmp(product, asked->product_id) == 0;
}

payment_verdict rental_payment_verdict(int http_status, const char *body, const intake *asked,
                                       long long *payment_id)
{
    if (http_status == 402)
        return PAYMENT_VERDICT_DECLINED;
    if (http_status == 409)
        return PAYMENT_VERDICT_REFUSED;
    if (http_status != 200 && http_status != 201)
        return PAYMENT_VERDICT_UNKNOWN;

    /* A success status is only believed with a body that says Paid and
     * names the payment: anything else might be a proxy's page. */
    /* jtext_load: what json_loads returns, ~40,000 instructions fewer
     * for this answer (measured). */
    json_t *doc = body ? jtext_load(body, strlen(body)) : NULL;
    const json_t *id = json_object_get(doc, "id");
    const char *status = json_string_value(json_object_get(doc, "status"));
    payment_verdict v = PAYMENT_VERDICT_UNKNOWN;
    if (json_is_integer(id) && json_integer_value(id) > 0 && status && strcmp(status, "Paid") == 0) {
        *payment_id = json_integer_value(id);
        v = rental_payment_matches(doc, asked) ? PAYMENT_VERDICT_PAID : PAYMENT_VERDICT_MISMATCH;
    }
    json_decref(doc);
    return v;
}

long long rental_amount(long long qty, long long days, long long daily_price)
{
    long long cars_days, amount;
    if (qty < 0 || days < 0 || daily_price < 0 || __builtin_mul_overflow(qty, days, &cars_days)
        || __builtin_mul_overflow(cars_days, daily_price, &amount))
        return -1;
    return amount;
}

static bool read_date(const char *field, const char *text, long *day, char *err, size_t errlen)
{
    if (cal_parse(text, day))
        return true;
    snprintf(err, errlen, "%s must be a date that exists, written YYYY-MM-DD (got \"%.16s\")",
             field, text);
    return false;
}

bool rental_period(const char *from_text, const char *to_text, long today, long *from,
                   long *to, char *err, size_t errlen)
{
    char date[CAL_DATE_SIZE];
    if (from_text && !read_date("from", from_text, from, err, errlen))
        return false;
    if (to_text && !read_date("to", to_text, to, err, errlen))
        return false;
    if (!from_text)
        *from = today;
    if (!to_text)
        *to = *from + 1;
    if (*from < today) {
        snprintf(err, errlen, "from must not be in the past (today is %s in the company's time "
                 "zone)", cal_format(today, date));
        return false;
    }
    if (*from > today + ORDER_MAX_AHEAD_DAYS) {
        snprintf(err, errlen, "from must be at most %d days ahead (the latest start is %s)",
                 ORDER_MAX_AHEAD_DAYS, cal_format(today + ORDER_MAX_AHEAD_DAYS, date));
        return false;
    }
    if (*to <= *from) {
        snprintf(err, errlen, "to must be after from (to is the day the car is due back: "
                 "from=%s to=%s is one day)", cal_format(*from, date),
                 cal_format(*from + 1, (char[CAL_DATE_SIZE]){0}));
        return false;
    }
    if (*to - *from > ORDER_MAX_DAYS) {
        snprintf(err, errlen, "a rental is at most %d days (from %s, to is at the latest %s)",
                 ORDER_MAX_DAYS, cal_format(*from, date),
                 cal_format(*from + ORDER_MAX_DAYS, (char[CAL_DATE_SIZE]){0}));
        return false;
    }
    return true;
}

long rental_release_from(long from, long today)
{
    return today + 1 > from ? today + 1 : from;
}

bool rental_same_request(const intake *in, const rental_request *rq)
{
    return strcmp(in->product_id, rq->product_id) == 0 && in->qty == rq->qty
           && strcmp(in->customer_id, rq->customer_id) == 0 && in->from_day == rq->from_day
           && in->to_day == rq->to_day;
}

void rental_scoped_key(const char *customer_id, const char *key, char *out, size_t size)
{
    snprintf(out, size, "%s:%s", customer_id, key);
}

bool rental_key_valid(const char *key)
{
    size_t n = key ? strlen(key) : 0;
    if (n == 0 || n > ORDER_IDEMPOTENCY_KEY_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isprint((unsigned char)key[i]) || (unsigned char)key[i] > 126)
            return false;
    return true;
}

/* ---- transactions ---- */

static int commit_or_rollback(store *st, int result)
{
    if (result > 0) {
        if (store_commit(st) == SQLITE_OK)
            return result;
        result = -1;
    }
    store_rollback(st);
    return result;
}

static reserve_outcome reserve_locked(store *st, const rental_request *rq, intake *out,
                                      car *car_out)
{
    if (rq->idempotency_key) {
        /* A voided attempt left nothing, so its key is given to this new
         * one. Any other holder is an attempt that committed after the
         * caller looked (a concurrent request with the same key, on
         * another database connection or another replica): that one
         * answers this request (rental.c replays it). */
        intake old;
        int found = intake_store_find_by_key(st, rq->idempotency_key, &old);
        if (found < 0)
            return RESERVE_FAILED;
        if (found && old.state != INTAKE_VOIDED)
            return RESERVE_KEY_IN_USE;
        if (found && intake_store_forget_key(st, old.id) != 0)
            return RESERVE_FAILED;
    }

    int found = car_store_get(st, rq->product_id, rq->from_day, rq->to_day, car_out);
    if (found < 0)
        return RESERVE_FAILED;
    if (!found)
        return RESERVE_UNKNOWN_CAR;
    long long amount = rental_amount(rq->qty, rq->to_day - rq->from_day, car_out->daily_price);
    if (amount < 0 || rq->to_day <= rq->from_day)
        return RESERVE_FAILED;

    /* Every day of the period in one statement, all or none (store.c). */
    int reserved = booking_store_book(st, rq->product_id, rq->from_day, rq->to_day, rq->qty);
    if (reserved < 0)
        return RESERVE_FAILED;
    if (reserved == 0)
        return RESERVE_NOT_ENOUGH;

    memset(out, 0, sizeof *out);
    snprintf(out->idempotency_key, sizeof out->idempotency_key, "%s",
             rq->idempotency_key ? rq->idempotency_key : "");
    snprintf(out->product_id, sizeof out->product_id, "%s", rq->product_id);
    out->qty = rq->qty;
    snprintf(out->customer_id, sizeof out->customer_id, "%s", rq->customer_id);
    out->amount = amount;
    out->from_day = rq->from_day;
    out->to_day = rq->to_day;
    out->state = INTAKE_PENDING;
    snprintf(out->request_id, sizeof out->request_id, "%s", rq->request_id ? rq->request_id : "");
    snprintf(out->owner, sizeof out->owner, "%s", rq->owner ? rq->owner : "");
    out->lease_ms = rq->lease_ms;
    return intake_store_insert(st, out) == 0 ? RESERVE_OK : RESERVE_FAILED;
}

reserve_outcome rental_reserve(store *st, const rental_request *rq, intake *out, car *car_out)
{
    /* Every rule here is a guarded statement or a constraint (the booking
     * UPSERT's WHERE, the key's UNIQUE), none rests on an earlier read: so
     * rentals of the same car and day queue on its row instead of failing
     * and running again (store_begin_locking; measured: under a burst on
     * one model, SERIALIZABLE exhausted DB_RETRIES and answered 503). */
    if (store_begin_locking(st) != SQLITE_OK)
        return RESERVE_FAILED;
    reserve_outcome o = reserve_locked(st, rq, out, car_out);
    if (o == RESERVE_OK && store_commit(st) == SQLITE_OK)
        return o;
    store_rollback(st);
    return o == RESERVE_OK ? RESERVE_FAILED : o;
}

static int add_ordered(store *st, const order *o, const char *request_id)
{
    char from[CAL_DATE_SIZE], to[CAL_DATE_SIZE];
    event_ordered e = {
        .id = o->id, .product_id = o->product_id, .qty = o->qty,
        .customer_id = o->customer_id, .amount = o->amount, .status = o->status,
        .from = cal_format(o->from_day, from), .to = cal_format(o->to_day, to),
        .days = o->to_day - o->from_day,
    };
    return event_ordered_add(st, &e, request_id);
}

static int add_returned(store *st, const order *o, const char *request_id)
{
    char from[CAL_DATE_SIZE], to[CAL_DATE_SIZE];
    event_returned e = {
        .id = o->id, .product_id = o->product_id, .qty = o->qty, .customer_id = o->customer_id,
        .from = cal_format(o->from_day, from), .to = cal_format(o->to_day, to),
        .returned_at = o->returned_at,
    };
    return event_returned_add(st, &e, request_id);
}

static int add_order_cancelled(store *st, const order *o, const char *request_id)
{
    event_order_cancelled e = {
        .id = o->id, .product_id = o->product_id, .qty = o->qty, .customer_id = o->customer_id,
    };
    return event_order_cancelled_add(st, &e, request_id);
}

/* The settling transactions below are guarded state changes of the intake
 * (UPDATE ... WHERE state IN <from>) plus writes that follow from it; what
 * they read first (the intake's product, qty, period) never changes. So
 * they need no more than row locks (store_begin_locking): of two that
 * settle one intake at once (a replica's late answer and another's
 * reconciler), the second waits, finds the state changed and does nothing,
 * and settlements of different intakes never refuse each other. */
static int approve_locked(store *st, long long intake_id, long long payment_id, order *out)
{
    static const intake_state from[] = {INTAKE_PENDING, INTAKE_IN_DOUBT};
    intake in;
    int found = intake_store_get(st, intake_id, &in);
    if (found <= 0)
        return found;
    int changed = intake_store_transition(st, intake_id, from, 2, INTAKE_APPROVED, payment_id,
                                          NULL);
    if (changed <= 0)
        return changed;

    memset(out, 0, sizeof *out);
    out->id = in.id;
    snprintf(out->product_id, sizeof out->product_id, "%s", in.product_id);
    out->qty = in.qty;
    snprintf(out->customer_id, sizeof out->customer_id, "%s", in.customer_id);
    out->amount = in.amount;
    out->payment_id = payment_id;
    out->from_day = in.from_day;
    out->to_day = in.to_day;
    snprintf(out->status, sizeof out->status, "%s", ORDER_STATUS_APPROVED);
    if (order_store_insert(st, out) != 0
        || add_ordered(st, out, in.request_id[0] ? in.request_id : NULL))
        return -1;
    return 1;
}

int rental_approve(store *st, long long intake_id, long long payment_id, order *out)
{
    if (store_begin_locking(st) != SQLITE_OK)
        return -1;
    return commit_or_rollback(st, approve_locked(st, intake_id, payment_id, out));
}

/* Moves the intake to a final state that gives its cars back. */
static int release_locked(store *st, long long intake_id, const intake_state *from, int count,
                          intake_state to, const char *message)
{
    intake in;
    int found = intake_store_get(st, intake_id, &in);
    if (found <= 0)
        return found;
    int changed = intake_store_transition(st, intake_id, from, count, to, 0, message);
    if (changed <= 0)
        return changed;
    return booking_store_release(st, in.product_id, in.from_day, in.to_day, in.qty) == 0 ? 1
                                                                                   : -1;
}

int rental_decline(store *st, long long intake_id, const char *message)
{
    static const intake_state from[] = {INTAKE_PENDING};
    if (store_begin_locking(st) != SQLITE_OK)
        return -1;
    return commit_or_rollback(st, release_locked(st, intake_id, from, 1, INTAKE_DECLINED,
                                                 message));
}

int rental_finish_void(store *st, long long intake_id)
{
    static const intake_state from[] = {INTAKE_VOIDING};
    if (store_begin_locking(st) != SQLITE_OK)
        return -1;
    return commit_or_rollback(st, release_locked(st, intake_id, from, 1, INTAKE_VOIDED, NULL));
}

int rental_void_unsent(store *st, long long intake_id)
{
    static const intake_state from[] = {INTAKE_PENDING};
    if (store_begin_locking(st) != SQLITE_OK)
        return -1;
    return commit_or_rollback(st, release_locked(st, intake_id, from, 1, INTAKE_VOIDED, NULL));
}

int rental_start_void(store *st, long long intake_id)
{
    static const intake_state from[] = {INTAKE_PENDING, INTAKE_IN_DOUBT};
    if (store_begin_locking(st) != SQLITE_OK)
        return -1;
    return commit_or_rollback(st, intake_store_transition(st, intake_id, from, 2, INTAKE_VOIDING,
                                                          0, NULL));
}

int rental_mark_in_doubt(store *st)
{
    if (store_begin(st) != SQLITE_OK)
        return -1;
    int n = intake_store_mark_all(st, INTAKE_PENDING, INTAKE_IN_DOUBT);
    if (n < 0) {
        store_rollback(st);
        return -1;
    }
    if (store_commit(st) != SQLITE_OK) {
        store_rollback(st);
        return -1;
    }
    return n;
}

/* The order an ending (to the status `ending`) reads first, in its
 * transaction: END_DONE when it is still active (OrderApproved or Shipped)
 * and may end, else how the ending ends already. */
static end_outcome end_read(store *st, long long order_id, const char *ending, order *out)
{
    int found = order_store_get(st, order_id, out);
    if (found < 0)
        return END_FAILED;
    if (!found)
        return END_NOT_FOUND;
    if (strcmp(out->status, ending) == 0)
        return END_ALREADY;
    if (strcmp(out->status, ORDER_STATUS_CANCELLED) == 0 ||
        strcmp(out->status, ORDER_STATUS_RETURNED) == 0)
        return END_OTHER_WAY;
    return END_DONE;
}

/* An ending's transaction (begun) with what its steps gave: committed
 * when they ended the rental, else rolled back. */
static end_outcome end_commit(store *st, end_outcome o)
{
    if (o == END_DONE) {
        if (store_commit(st) == SQLITE_OK)
            return o;
        o = END_FAILED;
    }
    store_rollback(st);
    return o;
}

static end_outcome cancel_locked(store *st, long long order_id, const char *request_id,
                                 order *out)
{
    end_outcome o = end_read(st, order_id, ORDER_STATUS_CANCELLED, out);
    if (o != END_DONE)
        return o;
    /* From OrderApproved or Shipped: a shipped car is taken back too. */
    if (order_store_set_status(st, order_id, out->status, ORDER_STATUS_CANCELLED) != 1)
        return END_FAILED;
    snprintf(out->status, sizeof out->status, "%s", ORDER_STATUS_CANCELLED);
    /* The whole period: a cancelled rental never happened (it is refunded
     * in full), so none of its days stays booked. */
    if (booking_store_release(st, out->product_id, out->from_day, out->to_day, out->qty) != 0
        || add_order_cancelled(st, out, request_id) != 0)
        return END_FAILED;
    return END_DONE;
}

end_outcome order_cancel(store *st, long long order_id, const char *request_id, order *out)
{
    if (store_begin(st) != SQLITE_OK)
        return END_FAILED;
    return end_commit(st, cancel_locked(st, order_id, request_id, out));
}

static end_outcome return_locked(store *st, long long order_id, long today, time_t now,
                                 const char *request_id, order *out)
{
    end_outcome o = end_read(st, order_id, ORDER_STATUS_RETURNED, out);
    if (o != END_DONE)
        return o;

    /* The guarded transition is what makes a return happen once: the
     * transaction holds the write lock, and a second return (the timer's,
     * another replica's) finds the row Returned and publishes nothing. */
    cal_instant_text(now, out->returned_at);
    if (order_store_mark_returned(st, order_id, out->returned_at) != 1)
        return END_FAILED;
    snprintf(out->status, sizeof out->status, "%s", ORDER_STATUS_RETURNED);
    if (booking_store_release(st, out->product_id, rental_release_from(out->from_day, today),
                              out->to_day, out->qty) != 0
        || add_returned(st, out, request_id) != 0)
        return END_FAILED;
    return END_DONE;
}

end_outcome order_return(store *st, long long order_id, long today, time_t now,
                         const char *request_id, order *out)
{
    if (store_begin(st) != SQLITE_OK)
        return END_FAILED;
    return end_commit(st, return_locked(st, order_id, today, now, request_id, out));
}

int order_mark_shipped(store *st, long long order_id)
{
    /* Only from OrderApproved: a Shipped that arrives after a cancel must
     * not bring the cancelled rental back. */
    return order_store_set_status(st, order_id, ORDER_STATUS_APPROVED, ORDER_STATUS_SHIPPED);
}
