/* policy.c: how delivery reacts to events, and the cancel command.
 *
 * Each handler runs inside the bus's transaction (bus.h): what it writes,
 * the events it adds to the outbox and the bus's record of the eventId
 * commit together, so a crash at any point either keeps all of it or none,
 * and the redelivered event then finds the work done or not done, never half
 * done. Handlers are also idempotent on their own (a second Paid finds the
 * delivery already there), which matters when the same fact comes back
 * under a different eventId.
 *
 *   Ordered        note "ordered"; ship if Paid was seen too
 *   Paid           note "paid" and its payment id; ship if Ordered was seen
 *   OrderCancelled cancel (delivery_cancel), once per order
 *
 * An event that lacks the ids it needs is refused (-1 with the reason):
 * the bus retries it and then sets it aside as a dead letter. */
#include "delivery.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include "events.h"
#include "log.h"
#include "rep.h"

/* What the handler did, for the bus's one log line of the event
 * (bus_handler): the order and the outcome. */
static void handled(char *err, size_t errlen, long long order_id, const char *outcome)
{
    snprintf(err, errlen, "orderId=%lld outcome=%s", order_id, outcome);
}

static int db_error(store *st, char *err, size_t errlen)
{
    snprintf(err, errlen, "database error: %s", store_error(st));
    return -1;
}

/* Adds the event of d's current status to the outbox (caller's transaction). */
static int publish(store *st, const delivery *d, const char *request_id)
{
    event_delivery e = delivery_event(d);
    return event_delivery_add(st, delivery_event_type(d), &e, request_id);
}

/* Ships the order if the rule allows it now. *outcome says what happened. */
static int ship_if_ready(store *st, long long order_id, const char *request_id,
                         const char **outcome, char *err, size_t errlen)
{
    order_facts f;
    if (delivery_store_facts(st, order_id, &f) < 0) return db_error(st, err, errlen);
    if (!delivery_should_ship(&f)) {
        *outcome = f.cancelled ? "not-shipped-cancelled"
                 : f.has_delivery ? "already-shipped"
                 : "waiting";
        return 0;
    }
    delivery d = { .order_id = order_id, .payment_id = f.payment_id };
    snprintf(d.status, sizeof d.status, "%s", DELIVERY_SHIPPED);
    if (delivery_store_insert(st, &d) < 0 || publish(st, &d, request_id) < 0)
        return db_error(st, err, errlen);
    *outcome = "shipped";
    return 0;
}

int delivery_on_ordered(store *st, const json_t *event, const char *request_id,
                        void *arg, char *err, size_t errlen)
{
    (void)arg;
    event_ordered e;
    const char *outcome = NULL;
    if (event_ordered_read(event, &e, err, errlen) < 0) return -1;
    long long order_id = e.id;
    if (delivery_store_note_ordered(st, order_id) < 0) return db_error(st, err, errlen);
    if (ship_if_ready(st, order_id, request_id, &outcome, err, errlen) < 0) return -1;
    handled(err, errlen, order_id, outcome);
    return 0;
}

int delivery_on_paid(store *st, const json_t *event, const char *request_id,
                     void *arg, char *err, size_t errlen)
{
    (void)arg;
    event_paid e;
    const char *outcome = NULL;
    if (event_paid_read(event, &e, err, errlen) < 0) return -1;
    long long order_id = e.order_id, payment_id = e.id;
    if (delivery_store_note_paid(st, order_id, payment_id) < 0) return db_error(st, err, errlen);
    if (ship_if_ready(st, order_id, request_id, &outcome, err, errlen) < 0) return -1;
    handled(err, errlen, order_id, outcome);
    return 0;
}

int delivery_on_order_cancelled(store *st, const json_t *event, const char *request_id,
                                void *arg, char *err, size_t errlen)
{
    (void)arg;
    event_order_cancelled e;
    cancellation c;
    bool created = false;
    if (event_order_cancelled_read(event, &e, err, errlen) < 0) return -1;
    long long order_id = e.id;
    if (delivery_cancel(st, order_id, request_id, &c, &created, err, errlen) < 0) return -1;
    handled(err, errlen, order_id, created ? "cancelled" : "already-cancelled");
    return 0;
}

int delivery_cancel(store *st, long long order_id, const char *request_id,
                    cancellation *out, bool *created, char *err, size_t errlen)
{
    *created = false;
    int found = cancellation_store_find_by_order(st, order_id, out);
    if (found < 0) return db_error(st, err, errlen);
    if (found) return 0;

    order_facts f;
    delivery d;
    if (delivery_store_facts(st, order_id, &f) < 0) return db_error(st, err, errlen);
    found = delivery_store_find_by_order(st, order_id, &d);
    if (found < 0) return db_error(st, err, errlen);
    if (found) {
        /* Shipped already: the company takes the car back. */
        snprintf(d.status, sizeof d.status, "%s", DELIVERY_CANCELLED);
        if (delivery_store_set_status(st, d.id, d.status) < 0) return db_error(st, err, errlen);
    } else {
        /* Nothing shipped yet: the delivery is born cancelled, so it can
         * never ship and the event still names a delivery. */
        memset(&d, 0, sizeof d);
        d.order_id = order_id;
        d.payment_id = f.paid ? f.payment_id : 0;
        snprintf(d.status, sizeof d.status, "%s", DELIVERY_CANCELLED);
        if (delivery_store_insert(st, &d) < 0) return db_error(st, err, errlen);
    }
    cancellation c = { .order_id = order_id, .delivery_id = d.id, .payment_id = d.payment_id };
    if (cancellation_store_insert(st, &c) < 0 || publish(st, &d, request_id) < 0)
        return db_error(st, err, errlen);
    *out = c;
    *created = true;
    return 0;
}

void delivery_policy_register(bus *b)
{
    bus_on(b, EVENT_ORDERED, delivery_on_ordered, NULL);
    bus_on(b, EVENT_PAID, delivery_on_paid, NULL);
    bus_on(b, EVENT_ORDER_CANCELLED, delivery_on_order_cancelled, NULL);
}
