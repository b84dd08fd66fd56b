/* events.h: the event contract, in one place (docs/API.md, "Events").
 *
 * Every event type the services exchange, its payload fields, a builder
 * for its producer and a reader for its consumers. A producer adds an
 * event with event_<type>_add inside the transaction of the change it
 * announces; a consumer subscribes with bus_on(b, EVENT_<TYPE>, ...) and
 * reads the payload with event_<type>_read. So one case-insensitive search
 * for "event_ordered" finds every producer and every consumer of Ordered.
 *
 *   type              producer  payload
 *   Ordered           order     id, productId, qty, customerId, amount, status[, from, to, days]
 *   OrderCancelled    order     id, productId, qty, customerId
 *   Paid              payment   id, orderId, productId, qty, amount, status
 *   PayCancelled      payment   id, orderId, productId, qty, amount
 *   Shipped           delivery  id, orderId, paymentId (null before a payment), status
 *   DeliveryCanceled  delivery  id, orderId, paymentId (null before a payment), status
 *   Returned          order     id, productId, qty, customerId, from, to, returnedAt
 *
 * The names are the seed's, spelling included (DeliveryCanceled has one
 * l). Order's own events name the order `id`; the others name it
 * `orderId` (event_order_id knows which). The envelope (eventType,
 * timestamp, eventId) is the bus's (bus.h), not the payload's.
 *
 * Readers follow the contract's input rules (rep.h: a number may be a
 * numeric string) and are lenient the way consumers have always been: the
 * ids a consumer acts on are required, every other field is optional and
 * reads as 0 or NULL when absent or malformed. Strings a reader returns
 * are borrowed from the event: valid while the event lives. */
#ifndef CARSHARE_EVENTS_H
#define CARSHARE_EVENTS_H

#include <stddef.h>
#include <jansson.h>
#include "store.h"

#define EVENT_ORDERED           "Ordered"
#define EVENT_ORDER_CANCELLED   "OrderCancelled"
#define EVENT_PAID              "Paid"
#define EVENT_PAY_CANCELLED     "PayCancelled"
#define EVENT_SHIPPED           "Shipped"
#define EVENT_DELIVERY_CANCELED "DeliveryCanceled"
#define EVENT_RETURNED          "Returned"

#define EVENT_TYPE_COUNT 7

/* Every type of the contract, in the table's order. */
extern const char *const event_types[EVENT_TYPE_COUNT];

/* Ordered: a rental was accepted (after payment). from/to/days: the
 * rental's period, left out of the payload while from is NULL. */
typedef struct event_ordered {
    long long id;
    const char *product_id;
    long long qty;
    const char *customer_id;
    long long amount;
    const char *status;
    const char *from, *to;      /* YYYY-MM-DD, or NULL */
    long long days;
} event_ordered;

/* OrderCancelled: a rental was cancelled. */
typedef struct event_order_cancelled {
    long long id;
    const char *product_id;
    long long qty;
    const char *customer_id;
} event_order_cancelled;

/* Paid: a payment succeeded. */
typedef struct event_paid {
    long long id;               /* the payment's id */
    long long order_id;
    const char *product_id;
    long long qty;
    long long amount;
    const char *status;
} event_paid;

/* PayCancelled: a refund. */
typedef struct event_pay_cancelled {
    long long id;               /* the cancellation's id */
    long long order_id;
    const char *product_id;
    long long qty;
    long long amount;
} event_pay_cancelled;

/* Shipped and DeliveryCanceled: a delivery's state changed. */
typedef struct event_delivery {
    long long id;               /* the delivery's id */
    long long order_id;
    long long payment_id;       /* 0: none (null in the payload) */
    const char *status;
} event_delivery;

/* Returned: a rental ended and its cars came back. */
typedef struct event_returned {
    long long id;
    const char *product_id;
    long long qty;
    const char *customer_id;
    const char *from, *to;      /* YYYY-MM-DD */
    const char *returned_at;
} event_returned;

/* ---- producers: inside the caller's open transaction on st ---- */

/* Each adds the event to the outbox (outbox_add) and returns 0, or -1
 * (out of memory, no transaction, database error: the caller rolls back).
 * request_id may be NULL. */
int event_ordered_add(store *st, const event_ordered *e, const char *request_id);
int event_order_cancelled_add(store *st, const event_order_cancelled *e, const char *request_id);
int event_paid_add(store *st, const event_paid *e, const char *request_id);
int event_pay_cancelled_add(store *st, const event_pay_cancelled *e, const char *request_id);
/* type: EVENT_SHIPPED or EVENT_DELIVERY_CANCELED. */
int event_delivery_add(store *st, const char *type, const event_delivery *e,
                       const char *request_id);
int event_returned_add(store *st, const event_returned *e, const char *request_id);

/* The payloads alone (a new reference, NULL when out of memory). */
json_t *event_ordered_payload(const event_ordered *e);
json_t *event_order_cancelled_payload(const event_order_cancelled *e);
json_t *event_paid_payload(const event_paid *e);
json_t *event_pay_cancelled_payload(const event_pay_cancelled *e);
json_t *event_delivery_payload(const event_delivery *e);
json_t *event_returned_payload(const event_returned *e);

/* ---- consumers ---- */

/* Each returns 0, or -1 when a required id is missing or invalid, with
 * err saying which ("Paid: orderId is required"). Required: Ordered,
 * OrderCancelled, Returned: id; Paid: id and orderId; PayCancelled,
 * Shipped, DeliveryCanceled: orderId. */
int event_ordered_read(const json_t *ev, event_ordered *out, char *err, size_t errlen);
int event_order_cancelled_read(const json_t *ev, event_order_cancelled *out, char *err,
                               size_t errlen);
int event_paid_read(const json_t *ev, event_paid *out, char *err, size_t errlen);
int event_pay_cancelled_read(const json_t *ev, event_pay_cancelled *out, char *err,
                             size_t errlen);
int event_delivery_read(const json_t *ev, event_delivery *out, char *err, size_t errlen);
int event_returned_read(const json_t *ev, event_returned *out, char *err, size_t errlen);

/* The payload field that names the order in events of this type: "id"
 * for order's own events, "orderId" for the others, NULL for a type
 * outside the contract. */
const char *event_order_field(const char *type);

/* The order an event is about (by its eventType). 0, or -1 with err. */
int event_order_id(const json_t *ev, long long *order_id, char *err, size_t errlen);

#endif
