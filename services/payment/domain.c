/* domain.c: payment's rules.
 *
 * A charge and a refund are each one short transaction: read what exists
 * for the order, decide, write the new state and its event (outbox) and
 * commit. Two requests for the same order are serialized: on SQLite both
 * run on the service's single loop thread and take the write lock at BEGIN
 * (BEGIN IMMEDIATE); on PostgreSQL the transaction is SERIALIZABLE and the
 * loser of a conflict is run again (lib/db.h). The UNIQUE(order_id)
 * constraints are a last line of defence, never the expected path.
 *
 * The decline rule is the contract's: card 4000000000000002 is declined,
 * any other card, or none, is approved. A declined charge stores nothing
 * and publishes nothing.
 *
 * Card numbers are handled as plain digits only long enough to take the
 * last four; they are never written to the store, the outbox or a log. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <jansson.h>

#include "events.h"
#include "log.h"
#include "payment.h"

int payment_card_digits(const char *card, char *digits, size_t size)
{
    size_t n = 0;
    bool last_was_separator = true;   /* no separator first */

    if (!card)
        return -1;
    for (const char *p = card; *p; p++) {
        if (isdigit((unsigned char)*p)) {
            if (n + 1 >= size || n >= PAYMENT_CARD_MAX_DIGITS)
                return -1;
            digits[n++] = *p;
            last_was_separator = false;
        } else if ((*p == ' ' || *p == '-') && !last_was_separator) {
            last_was_separator = true;
        } else {
            return -1;
        }
    }
    if (last_was_separator && n > 0)
        return -1;                    /* trailing separator */
    if (n < PAYMENT_CARD_MIN_DIGITS)
        return -1;
    digits[n] = '\0';
    return (int)n;
}

bool payment_card_declined(const char *digits)
{
    return digits && strcmp(digits, PAYMENT_DECLINED_CARD) == 0;
}

static int add_paid(store *st, const payment *p, const char *request_id)
{
    event_paid e = {
        .id = p->id, .order_id = p->order_id, .product_id = p->product_id, .qty = p->qty,
        .amount = p->amount, .status = p->status,
    };
    return event_paid_add(st, &e, request_id);
}

static int add_pay_cancelled(store *st, const payment_cancellation *c, const char *request_id)
{
    event_pay_cancelled e = {
        .id = c->id, .order_id = c->order_id, .product_id = c->product_id, .qty = c->qty,
        .amount = c->amount,
    };
    return event_pay_cancelled_add(st, &e, request_id);
}

/* The last four digits of a card, "" without one. */
static void card_last4(const char *digits, char *out, size_t size)
{
    size_t n = digits ? strlen(digits) : 0;
    snprintf(out, size, "%s", n >= 4 ? digits + (n - 4) : "");
}

bool payment_same_charge(const payment *p, const charge_request *rq)
{
    /* The card is compared by what is kept of it, its last four digits
     * (full numbers are never stored): a repeat with another card of the
     * same last four is taken as the same, which order never sends. */
    char last4[5];
    card_last4(rq->card_digits, last4, sizeof last4);
    return p->amount == rq->amount && p->qty == rq->qty
           && strcmp(p->product_id, rq->product_id) == 0 && strcmp(p->card_last4, last4) == 0;
}

/* Inside a transaction: the part of a charge that reads and decides. */
static charge_outcome charge_locked(store *st, const charge_request *rq, const char *request_id,
                                    payment *out)
{
    payment_cancellation c;
    int found = cancellation_store_find_by_order(st, rq->order_id, &c);
    if (found < 0)
        return CHARGE_FAILED;
    if (found)
        return CHARGE_ORDER_CANCELLED;

    found = payment_store_find_by_order(st, rq->order_id, out);
    if (found < 0)
        return CHARGE_FAILED;
    /* A refunded payment also has a cancellation: handled above. A repeat
     * is only a repeat with the same fields: anything else is a different
     * charge claiming the same order id, refused. */
    if (found)
        return payment_same_charge(out, rq) ? CHARGE_EXISTING : CHARGE_CONFLICT;

    if (payment_card_declined(rq->card_digits))
        return CHARGE_DECLINED;

    memset(out, 0, sizeof *out);
    out->order_id = rq->order_id;
    snprintf(out->product_id, sizeof out->product_id, "%s", rq->product_id);
    out->qty = rq->qty;
    out->amount = rq->amount;
    card_last4(rq->card_digits, out->card_last4, sizeof out->card_last4);
    snprintf(out->status, sizeof out->status, "%s", PAYMENT_STATUS_PAID);
    if (payment_store_insert(st, out) != 0)
        return CHARGE_FAILED;
    if (add_paid(st, out, request_id) != 0)
        return CHARGE_FAILED;
    return CHARGE_CREATED;
}

charge_outcome payment_charge(store *st, const charge_request *rq, const char *request_id,
                              payment *out)
{
    if (store_begin(st) != SQLITE_OK)
        return CHARGE_FAILED;
    charge_outcome o = charge_locked(st, rq, request_id, out);
    if (o == CHARGE_CREATED) {
        if (store_commit(st) != SQLITE_OK) {
            store_rollback(st);
            return CHARGE_FAILED;
        }
        log_info("req=%s msg=\"payment created\" payment=%lld order=%lld amount=%lld",
                 request_id ? request_id : "-", out->id, out->order_id, out->amount);
    } else {
        store_rollback(st);   /* nothing was written */
    }
    return o;
}

static refund_outcome refund_locked(store *st, long long order_id, const char *request_id,
                                    payment_cancellation *out)
{
    int found = cancellation_store_find_by_order(st, order_id, out);
    if (found < 0)
        return REFUND_FAILED;
    if (found)
        return REFUND_EXISTING;

    payment p;
    found = payment_store_find_by_order(st, order_id, &p);
    if (found < 0)
        return REFUND_FAILED;

    memset(out, 0, sizeof *out);
    out->order_id = order_id;
    if (!found) {
        /* Nothing to refund: remember the order is closed, so that a
         * payment arriving late for it is refused instead of charged. */
        snprintf(out->status, sizeof out->status, "%s", CANCELLATION_STATUS_VOIDED);
        return cancellation_store_insert(st, out) == 0 ? REFUND_CREATED : REFUND_FAILED;
    }

    out->payment_id = p.id;
    snprintf(out->product_id, sizeof out->product_id, "%s", p.product_id);
    out->qty = p.qty;
    out->amount = p.amount;
    snprintf(out->status, sizeof out->status, "%s", CANCELLATION_STATUS_REFUNDED);
    if (cancellation_store_insert(st, out) != 0
        || payment_store_set_status(st, p.id, PAYMENT_STATUS_CANCELLED) != 0
        || add_pay_cancelled(st, out, request_id) != 0)
        return REFUND_FAILED;
    return REFUND_CREATED;
}

refund_outcome payment_refund(store *st, long long order_id, const char *request_id,
                              bool in_transaction, payment_cancellation *out)
{
    if (in_transaction)
        return refund_locked(st, order_id, request_id, out);

    if (store_begin(st) != SQLITE_OK)
        return REFUND_FAILED;
    refund_outcome o = refund_locked(st, order_id, request_id, out);
    if (o == REFUND_CREATED) {
        if (store_commit(st) != SQLITE_OK) {
            store_rollback(st);
            return REFUND_FAILED;
        }
    } else {
        store_rollback(st);
    }
    return o;
}
