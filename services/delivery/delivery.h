/* delivery.h: what the files of the delivery service share.
 *
 * Delivery brings a rented car to its customer. It learns about rentals only
 * from events: `Ordered` (order accepted the rental), `Paid` (payment charged
 * it) and `OrderCancelled`. It ships when it has seen BOTH Ordered and Paid
 * for an order and no cancellation: Paid alone is not enough, because a
 * payment whose intake order then voided (docs/DESIGN.md, "Why intakes")
 * has no rental behind it and must never be delivered. A cancellation, by
 * event or by POST /cancellations, is recorded once per order and is
 * remembered even when it arrives before anything else, so the order can
 * never be shipped afterwards.
 *
 * One delivery row exists per order at most, created either when the car is
 * shipped (status "Shipped") or, when the cancellation came first, directly
 * as "DeliveryCancelled" so that the DeliveryCanceled event always carries a
 * delivery id. Every change of a delivery and its event (Shipped,
 * DeliveryCanceled) are written in one transaction (bus.h, outbox).
 *
 * Files: domain.c (the rules, no I/O), store.c (all SQL), policy.c (the
 * event handlers and the cancel command they share with the API), api.c
 * (HTTP), main.c (wiring). */
#ifndef CARSHARE_DELIVERY_H
#define CARSHARE_DELIVERY_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>
#include "bus.h"
#include "events.h"
#include "service.h"
#include "db.h"
#include "store.h"

#define DELIVERY_SHIPPED   "Shipped"
#define DELIVERY_CANCELLED "DeliveryCancelled"

/* Ids are positive; 0 means "none" (a delivery cancelled before any payment
 * was seen has payment_id 0, shown as null). */
typedef struct delivery {
    long long id;
    long long order_id;
    long long payment_id;
    char status[24];
} delivery;

typedef struct cancellation {
    long long id;
    long long order_id;
    long long delivery_id;
    long long payment_id;
} cancellation;

/* What delivery knows about one order from the events seen so far. */
typedef struct order_facts {
    long long order_id;
    bool ordered;           /* its Ordered event was seen */
    bool paid;              /* its Paid event was seen */
    long long payment_id;   /* from Paid, 0 before */
    bool has_delivery;      /* a delivery exists (shipped or cancelled) */
    bool cancelled;         /* a cancellation is recorded */
} order_facts;

/* ---- domain.c ---- */

/* True when the order may be shipped now: ordered, paid, never cancelled,
 * not shipped yet. */
bool delivery_should_ship(const order_facts *f);

/* The Shipped or DeliveryCanceled event for d (events.h); its strings
 * borrow from d. */
event_delivery delivery_event(const delivery *d);

/* The event a delivery in this status publishes (EVENT_SHIPPED or
 * EVENT_DELIVERY_CANCELED, the seed's spelling). */
const char *delivery_event_type(const delivery *d);

/* ---- store.c: every function returns -1 on a database error (logged) ---- */

extern const char *const delivery_migrations[];
extern const db_schema delivery_schema;    /* db_open(..., &delivery_schema) */

int delivery_store_note_ordered(store *st, long long order_id);
int delivery_store_note_paid(store *st, long long order_id, long long payment_id);
int delivery_store_facts(store *st, long long order_id, order_facts *out);

int delivery_store_insert(store *st, delivery *d);             /* sets d->id */
int delivery_store_set_status(store *st, long long id, const char *status);
/* 1 found (*out filled), 0 not found. */
int delivery_store_get(store *st, long long id, delivery *out);
int delivery_store_find_by_order(store *st, long long order_id, delivery *out);
long long delivery_store_count(store *st, long long order_id_or_0);
/* Visits deliveries by id, `limit` from `offset`; order_id_or_0 filters. */
int delivery_store_list(store *st, long long order_id_or_0, long offset, long limit,
                        void (*visit)(const delivery *d, void *arg), void *arg);

int cancellation_store_insert(store *st, cancellation *c);     /* sets c->id */
int cancellation_store_get(store *st, long long id, cancellation *out);
int cancellation_store_find_by_order(store *st, long long order_id, cancellation *out);
long long cancellation_store_count(store *st);
int cancellation_store_list(store *st, long offset, long limit,
                            void (*visit)(const cancellation *c, void *arg), void *arg);

/* ---- store_pg.c: the same on PostgreSQL, called by store.c only ---- */

extern const char *const delivery_pg_migrations[];
int delivery_pg_note_ordered(store *st, long long order_id);
int delivery_pg_note_paid(store *st, long long order_id, long long payment_id);
int delivery_pg_facts(store *st, long long order_id, order_facts *out);
int delivery_pg_insert(store *st, delivery *d);
int delivery_pg_set_status(store *st, long long id, const char *status);
int delivery_pg_get(store *st, long long id, delivery *out);
int delivery_pg_find_by_order(store *st, long long order_id, delivery *out);
long long delivery_pg_count(store *st, long long order_id_or_0);
int delivery_pg_list(store *st, long long order_id_or_0, long offset, long limit,
                     void (*visit)(const delivery *d, void *arg), void *arg);
int cancellation_pg_insert(store *st, cancellation *c);
int cancellation_pg_get(store *st, long long id, cancellation *out);
int cancellation_pg_find_by_order(store *st, long long order_id, cancellation *out);
long long cancellation_pg_count(store *st);
int cancellation_pg_list(store *st, long offset, long limit,
                         void (*visit)(const cancellation *c, void *arg), void *arg);

/* ---- policy.c ---- */

/* Registers the handlers for Ordered, Paid and OrderCancelled on b. */
void delivery_policy_register(bus *b);

/* The bus handlers (bus.h), exposed for the unit tests. */
int delivery_on_ordered(store *st, const json_t *event, const char *request_id,
                        void *arg, char *err, size_t errlen);
int delivery_on_paid(store *st, const json_t *event, const char *request_id,
                     void *arg, char *err, size_t errlen);
int delivery_on_order_cancelled(store *st, const json_t *event, const char *request_id,
                                void *arg, char *err, size_t errlen);

/* Cancels the delivery of an order, inside the caller's transaction: the
 * first time, records a cancellation, makes the delivery DeliveryCancelled
 * (creating it if nothing was shipped yet) and adds DeliveryCanceled to the
 * outbox, setting *created; afterwards returns the existing cancellation.
 * Returns 0, or -1 with err filled. */
int delivery_cancel(store *st, long long order_id, const char *request_id,
                    cancellation *out, bool *created, char *err, size_t errlen);

/* ---- api.c ---- */

void delivery_api_register(service *svc, db *d);

#endif
