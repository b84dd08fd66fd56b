/* customerpage.h: what the files of the customer page service share.
 *
 * The customer page is a read model (CQRS) written only from events. One
 * row per rental; its id IS the order id (the rental's identity across the
 * system), which also makes a rebuilt view identical to the live one, ids
 * included.
 *
 * How it converges whatever the arrival order. The view does not update a
 * row incrementally. It keeps the facts: for each (order, eventType) one
 * stored event (page_events; if two different events of one type ever
 * arrive for an order, the one with the smallest (timestamp, eventId) is
 * kept, a choice that does not depend on arrival order). After each new
 * fact the row is recomputed from all the facts of its order by a pure fold
 * (domain.c): every field has a fixed source priority, `status` is the step
 * of highest rank, `history` has one entry per step sorted by (timestamp,
 * rank). The row is thus a function of the SET of facts: any permutation
 * gives the same row, and a duplicate, which adds nothing to the set,
 * changes nothing.
 *
 * Steps, by rank (the contract's order, with Paid, which it does not list,
 * placed first since a payment precedes the order's acceptance):
 *   Paid "Paid" < Ordered "OrderApproved" < Shipped "Shipped"
 *   < Returned "Returned" < OrderCancelled "OrderCancelled"
 *   < DeliveryCanceled "DeliveryCancelled" < PayCancelled "PaymentCancelled"
 * A row whose Ordered was never seen (a voided intake's payment) is kept
 * but hidden from every GET.
 *
 * Rebuild. POST /admin/rebuild replays the stream (bus_replay) into shadow
 * tables while the live consumer keeps applying to the live tables AND to
 * the shadow ones, so nothing that arrives during the rebuild is lost; at
 * the end one transaction replaces the live tables by the shadow ones. On
 * PostgreSQL "a rebuild runs" is a row every replica's live handler reads,
 * not the state of the replica that started it.
 *
 * Files: domain.c (the fold, no I/O), store.c (all SQL), policy.c (event
 * handlers and the rebuild), api.c (HTTP), main.c (wiring). */
#ifndef CARSHARE_CUSTOMERPAGE_H
#define CARSHARE_CUSTOMERPAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>
#include <stdatomic.h>
#include "bus.h"
#include "service.h"
#include "db.h"
#include "store.h"

/* Which pair of tables: the live view or the rebuild's shadow. */
typedef enum { PAGE_LIVE = 0, PAGE_REBUILD = 1 } page_view;

/* ---- domain.c ---- */

typedef struct page_step {
    const char *event_type;   /* "Paid" */
    const char *status;       /* "Paid", "OrderApproved", ... */
    int rank;                 /* 0 .. PAGE_STEPS-1 */
} page_step;

#define PAGE_STEPS 7

/* The step of an event type, or NULL when the view does not use it. */
const page_step *page_step_of(const char *event_type);

/* One stored event of an order. */
typedef struct page_fact {
    long long order_id;
    char event_type[32];
    char event_id[64];
    char timestamp[16];     /* yyyyMMddHHmmss, compares as text */
    json_t *event;          /* the whole event; owned */
} page_fact;

/* Reads the envelope of an event into f (f->event: a new reference).
 * Returns 1 when the event feeds the view, 0 when it is of another type
 * (nothing filled), -1 when it is malformed (err says what is wrong). */
int page_fact_from_event(const json_t *event, page_fact *f, char *err, size_t errlen);
void page_fact_clear(page_fact *f);

/* Unknown numbers are PAGE_UNKNOWN (shown as null), unknown strings "". */
#define PAGE_UNKNOWN (-1LL)

typedef struct customer_page {
    long long order_id;           /* also the row's id */
    char customer_id[129];
    char product_id[65];
    long long qty, amount, payment_id, delivery_id;
    char from[11], to[11];        /* the period, YYYY-MM-DD ("" unknown) */
    long long days;
    char status[24];
    int rank;
    bool visible;                 /* its Ordered was seen */
    json_t *history;              /* array of {eventType, status, timestamp}; owned */
} customer_page;

/* The row of an order from the set of its facts (any order, n >= 1). */
void customer_page_fold(long long order_id, const page_fact *facts, size_t n,
                        customer_page *out);
void customer_page_clear(customer_page *p);

/* ---- store.c: -1 on a database error (logged) ---- */

extern const char *const customerpage_migrations[];
extern const db_schema customerpage_schema;   /* db_open(..., &customerpage_schema) */

/* Stores a fact unless an equal or preferred one is there: returns 1 when
 * the set of facts of its order changed, 0 when not. */
int page_store_put_fact(store *st, page_view v, const page_fact *f);
/* All facts of an order but the one of type except_type (NULL: all), *out
 * malloc'ed with room for PAGE_STEPS facts, each fact to be cleared. */
int page_store_facts(store *st, page_view v, long long order_id, const char *except_type,
                     page_fact **out, size_t *n);
int page_store_put_page(store *st, page_view v, const customer_page *p);

/* Live view, visible rows only. 1 found, 0 not. */
int page_store_get(store *st, long long order_id, customer_page *out);
/* customer_id NULL = every customer. */
long long page_store_count(store *st, const char *customer_id);
int page_store_list(store *st, const char *customer_id, long offset, long limit,
                    void (*visit)(const customer_page *p, void *arg), void *arg);

/* Rebuild support. */
int page_store_clear_rebuild(store *st);
long long page_store_rebuild_rows(store *st);
/* Rows that differ between the live and the shadow view (both ways). */
long long page_store_rebuild_differences(store *st);
/* Inside the caller's transaction: live := shadow, shadow emptied. */
int page_store_swap_in_rebuild(store *st);
/* Whether the live handler must also apply events to the shadow view: 1 or
 * 0, -1 on error. SQLite: `here` (this process's rebuild state: one process
 * per file). PostgreSQL: the flag in the database (page_rebuild), since a
 * rebuild started on one replica must see the events the others apply. */
int page_store_rebuilding(store *st, bool here);
/* PostgreSQL: sets that flag (caller's transaction); SQLite: nothing. */
int page_store_set_rebuilding(store *st, bool on);

/* ---- store_pg.c: the same on PostgreSQL, called by store.c only ---- */

extern const char *const customerpage_pg_migrations[];
int page_pg_put_fact(store *st, page_view v, const page_fact *f);
int page_pg_facts(store *st, page_view v, long long order_id, const char *except_type,
                  page_fact **out, size_t *n);
int page_pg_put_page(store *st, page_view v, const customer_page *p);
int page_pg_get(store *st, long long order_id, customer_page *out);
long long page_pg_count(store *st, const char *customer_id);
int page_pg_list(store *st, const char *customer_id, long offset, long limit,
                 void (*visit)(const customer_page *p, void *arg), void *arg);
int page_pg_clear_rebuild(store *st);
long long page_pg_rebuild_rows(store *st);
long long page_pg_rebuild_differences(store *st);
int page_pg_swap_in_rebuild(store *st);
int page_pg_rebuilding(store *st);
int page_pg_set_rebuilding(store *st, bool on);

/* ---- policy.c ---- */

typedef enum { REBUILD_IDLE, REBUILD_RUNNING, REBUILD_DONE, REBUILD_FAILED } rebuild_state;

/* state and events are atomic: on PostgreSQL the live consumer reads the
 * state, and the replay counts events, on threads of their own (db.h). */
typedef struct rebuild_status {
    _Atomic rebuild_state state;
    atomic_long events;      /* events replayed */
    long long rows;          /* rows in the rebuilt view (hidden included) */
    long long differences;   /* rows the rebuild changed, added or removed */
    char started_at[15], finished_at[15];
    char error[320];
} rebuild_status;

typedef struct customerpage_app {
    db *db;                  /* where the API's and the rebuild's work runs */
    store *st;               /* db_store(db): the view's handlers get theirs from the bus */
    bus *bus;                /* NULL in unit tests that do not rebuild */
    bool starting;           /* loop: a rebuild is emptying its tables */
    rebuild_status rebuild;
} customerpage_app;

/* Registers the seven handlers on app->bus. */
void customerpage_policy_register(customerpage_app *app);

/* The bus handler for every event type (arg: the app). Applies the event
 * to the live view, and to the shadow view while a rebuild runs. */
int customerpage_on_event(store *st, const json_t *event, const char *request_id,
                          void *arg, char *err, size_t errlen);

typedef enum {
    APPLY_MALFORMED = -2,   /* the event lacks what the view needs (err says what) */
    APPLY_FAILED = -1,      /* database error (err says which) */
    APPLY_UNCHANGED = 0,    /* not a view event, or a fact already known */
    APPLY_CHANGED = 1,      /* a new fact: the row was recomputed */
} apply_result;

/* Applies one event to one view (inside the caller's transaction).
 * *order_id (may be NULL) receives the rental's id when the event has one. */
apply_result customerpage_apply(store *st, page_view v, const json_t *event,
                                long long *order_id, char *err, size_t errlen);

/* Starts a rebuild; answer(arg, status, err) tells how: 202 started, 409
 * one is running, 503 the tables or the stream cannot be used now (err). */
typedef void (*rebuild_answer)(void *arg, int status, const char *err);
void customerpage_rebuild_start(customerpage_app *app, rebuild_answer answer, void *arg);
const char *rebuild_state_name(rebuild_state s);

/* ---- api.c ---- */

/* The item representation of a row (without _links), for the API and tests. */
json_t *customer_page_json(const customer_page *p);
void customerpage_api_register(service *svc, customerpage_app *app);

#endif
