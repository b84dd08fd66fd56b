/* order.h: what the files of the order service share.
 *
 * order (접수관리) is the rental intake and the fleet. A rental goes through
 * an INTAKE before it is an ORDER (docs/DESIGN.md):
 *
 *   book days + intake "pending"     --payment 201/200 Paid-->  "approved" + order + Ordered
 *        (one short transaction)     --payment 402--------->  "declined", cars released
 *                                    --bulkhead refused---->  "voided", cars released (never sent)
 *                                    --anything else------->  "voiding" (customer got 503)
 *   a "pending" intake found at start (the process died mid-call) -> "in_doubt"
 *   the reconciler: "voiding" -> POST /paymentCancellations -> "voided", cars released
 *                   "in_doubt" -> ask payment by orderId -> paid ? "approved" : "voiding"
 *
 * No lock is held across the payment call: the booking of every day of the
 * rental's period is one guarded UPSERT (store.c), committed before the
 * call. The intake's id is the order's id, so payment's
 * one-payment-per-orderId makes every retry safe. Only approved intakes
 * are orders; ids of the others are gaps. An order then ends as
 * "Returned" (by the customer, staff, or the return timer at the end of
 * its period: its days from the next one on are free again) or
 * "OrderCancelled" (all its days free again).
 *
 * Files: domain.c (rules and transactions), store.c (all SQL), fleet.c
 * (demo fleet, FLEET_FILE), api.c (HTTP: the fleet, reads, cancel, return),
 * rental.c (POST /orders and the payment call), reconcile.c
 * (settles intakes whose payment outcome is unknown), returns.c (the
 * automatic return), calendar.c (days in TIME_ZONE, the test clock),
 * policy.c (events), main.c (wiring). */
#ifndef CARSHARE_ORDER_H
#define CARSHARE_ORDER_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>
#include <jansson.h>
#include "db.h"
#include "store.h"

struct service;
struct bus;
struct event_base;
struct balance_set;

#define ORDER_PRODUCT_MAX 32        /* bytes of a car model id (productId) */
#define ORDER_CUSTOMER_MAX 64       /* bytes of a customerId */
#define ORDER_CAR_TEXT_MAX 96       /* bytes of a car's name or location */
#define ORDER_MAX_QTY 100           /* cars in one rental */
#define ORDER_MAX_DAILY_PRICE 100000000LL   /* KRW */
#define ORDER_MAX_FLEET_TOTAL 100000000LL   /* cars of one model */
#define ORDER_IDEMPOTENCY_KEY_MAX 128
/* A key as stored: "<customerId>:<Idempotency-Key>" (rental_scoped_key). */
#define ORDER_SCOPED_KEY_MAX (ORDER_CUSTOMER_MAX + 1 + ORDER_IDEMPOTENCY_KEY_MAX)
#define ORDER_MESSAGE_MAX 256
#define ORDER_OWNER_MAX 96          /* bytes of an instance id (lease.c) */

#define ORDER_STATUS_APPROVED "OrderApproved"
#define ORDER_STATUS_CANCELLED "OrderCancelled"
#define ORDER_STATUS_SHIPPED "Shipped"
#define ORDER_STATUS_RETURNED "Returned"

#define ORDER_MAX_DAYS 30           /* days of one rental */
#define ORDER_MAX_AHEAD_DAYS 90     /* how far ahead a rental may start */

/* ---- calendar.c: days in the company's time zone (TIME_ZONE) ---- */

#define CAL_MIN_YEAR 1970
#define CAL_DATE_SIZE 11            /* "YYYY-MM-DD" and its NUL */
#define CAL_INSTANT_SIZE 24         /* "YYYY-MM-DDTHH:MM:SSZ" and its NUL */

/* Day numbers: days since 1970-01-01 in the proleptic Gregorian calendar. */
long cal_from_civil(long y, unsigned m, unsigned d);
void cal_to_civil(long day, long *y, unsigned *m, unsigned *d);
/* Strict YYYY-MM-DD of a day that exists, year >= 1970. */
bool cal_parse(const char *text, long *day);
char *cal_format(long day, char out[CAL_DATE_SIZE]);
/* Once at start, before any thread: checks the zone's tzdata file and sets
 * TZ. Returns 0, or -1 with err filled. */
int cal_zone_init(const char *zone, char *err, size_t errlen);
/* TEST ONLY (ORDER_TEST_CLOCK_OFFSET_S): now is the real time + seconds. */
void cal_set_test_offset(long long seconds);
time_t cal_now(void);
long cal_day_of(time_t t);          /* the day t falls on in the zone */
long cal_today(void);               /* cal_day_of(cal_now()) */
char *cal_instant_text(time_t t, char out[CAL_INSTANT_SIZE]);   /* UTC, ISO 8601 */

typedef struct car {
    char id[ORDER_PRODUCT_MAX + 1];
    char name[ORDER_CAR_TEXT_MAX + 1];
    char location[ORDER_CAR_TEXT_MAX + 1];
    long long daily_price;      /* KRW per day */
    long long total;
    long long available;
} car;

typedef enum {
    INTAKE_PENDING,             /* payment call in flight */
    INTAKE_APPROVED,            /* paid: the order exists */
    INTAKE_DECLINED,            /* payment refused the card; cars released */
    INTAKE_VOIDING,             /* outcome unknown, customer told 503: to be cancelled at payment */
    INTAKE_VOIDED,              /* cancelled at payment; cars released */
    INTAKE_IN_DOUBT,            /* was pending when the process died: ask payment */
} intake_state;

typedef struct intake {
    long long id;               /* = the order id */
    char idempotency_key[ORDER_SCOPED_KEY_MAX + 1];   /* scoped; "" when none */
    char product_id[ORDER_PRODUCT_MAX + 1];
    long long qty;
    char customer_id[ORDER_CUSTOMER_MAX + 1];
    long long amount;
    long from_day, to_day;      /* the period [from, to), day numbers */
    intake_state state;
    long long payment_id;       /* 0 until approved */
    char message[ORDER_MESSAGE_MAX + 1];   /* why it was declined */
    char request_id[72];        /* of the request that created it, for logs */
    char owner[ORDER_OWNER_MAX + 1];   /* the instance working on it (lease.c) */
    long lease_ms;              /* insert only: the lease its owner starts with */
} intake;

typedef struct order {
    long long id;
    char product_id[ORDER_PRODUCT_MAX + 1];
    long long qty;
    char customer_id[ORDER_CUSTOMER_MAX + 1];
    long long amount;
    long long payment_id;
    long from_day, to_day;      /* the period [from, to), day numbers */
    char status[24];            /* ORDER_STATUS_* */
    char returned_at[CAL_INSTANT_SIZE];   /* "" until returned */
} order;

/* ---- domain.c: rules without I/O ---- */

const char *intake_state_name(intake_state s);
bool intake_state_parse(const char *name, intake_state *out);

/* What payment's answer means for the rental. */
typedef enum {
    PAYMENT_VERDICT_PAID,       /* 200/201 with status Paid, an id, and what we asked */
    PAYMENT_VERDICT_DECLINED,   /* 402 */
    PAYMENT_VERDICT_REFUSED,    /* 409: payment refuses this orderId (voided before, or
                                   paid before with other fields): not charged by us */
    PAYMENT_VERDICT_MISMATCH,   /* a Paid answer for another orderId, amount, qty or
                                   product than asked: never accepted, voided */
    PAYMENT_VERDICT_UNKNOWN,    /* anything else: maybe charged, maybe not */
} payment_verdict;

/* What payment's answer to POST /payments for the intake `asked` means. */
payment_verdict rental_payment_verdict(int http_status, const char *body, const intake *asked,
                                       long long *payment_id);
/* Whether a payment item (payment's JSON) is for exactly what `asked`
 * asked: its orderId, amount, qty and productId. Order accepts no other:
 * a payment made beforehand for a future order id, by anyone, with
 * another amount or car, never approves a rental. */
bool rental_payment_matches(const json_t *payment, const intake *asked);

/* amount = qty x days x dailyPrice, or -1 when it would overflow. */
long long rental_amount(long long qty, long long days, long long daily_price);

/* The period of a rental or an availability query from the texts of `from`
 * and `to` (NULL when absent): none -> today for one day; only from -> one
 * day from it; only to -> from today. Refuses a date that is not
 * YYYY-MM-DD or does not exist, a start before today or more than
 * ORDER_MAX_AHEAD_DAYS ahead, an end not after the start, more than
 * ORDER_MAX_DAYS days. Returns true, or false with err (a 400's message). */
bool rental_period(const char *from_text, const char *to_text, long today, long *from,
                   long *to, char *err, size_t errlen);

/* The first day a returned rental's cars are free again: the day after the
 * return, but never before the period starts. Days [result, to) are given
 * back; none when result >= to. */
long rental_release_from(long from, long today);

/* A rental request as read from POST /orders. */
typedef struct rental_request {
    const char *product_id;
    long long qty;
    long from_day, to_day;
    const char *customer_id;
    const char *idempotency_key;   /* scoped (rental_scoped_key); NULL when none */
    const char *request_id;
    const char *owner;             /* this instance (lib/instance.h: instance_id) */
    long lease_ms;                 /* the intake's first lease (order_lease_ms) */
} rental_request;

/* Whether an existing intake was created by the same request (same
 * product, qty and customer): a key reused for another request is refused. */
bool rental_same_request(const intake *in, const rental_request *rq);

/* Whether an Idempotency-Key header value is acceptable (1..128 printable ASCII). */
bool rental_key_valid(const char *key);

/* The contract scopes Idempotency-Key to the customer: another customer's
 * key is unknown to you. Keys are stored as "<customerId>:<key>" (':' is
 * not in the customerId alphabet, so no two pairs collide). out must hold
 * ORDER_SCOPED_KEY_MAX + 1 bytes. */
void rental_scoped_key(const char *customer_id, const char *key, char *out, size_t size);

/* ---- domain.c: transactions (each one commits or rolls back) ---- */

typedef enum {
    RESERVE_OK,                 /* cars reserved, *out is the new pending intake */
    RESERVE_UNKNOWN_CAR,
    RESERVE_NOT_ENOUGH,         /* some day of the period is full */
    RESERVE_KEY_IN_USE,         /* another attempt holds the idempotency key: replay it */
    RESERVE_FAILED,
} reserve_outcome;

/* Reserves the cars and writes the pending intake. A voided intake holding
 * the same idempotency key gives the key up (its attempt left nothing);
 * any other holder makes it RESERVE_KEY_IN_USE, nothing written. The
 * key's uniqueness is a constraint of the table, so two concurrent
 * requests with one key (two connections, two replicas) never both
 * reserve: the second fails (a serialization conflict, run again, or a
 * unique violation, RESERVE_FAILED) and finds the first's intake. */
reserve_outcome rental_reserve(store *st, const rental_request *rq, intake *out, car *car_out);

/* State changes of an intake. Each returns 1 when applied, 0 when the
 * intake was not in a state that allows it (already settled), -1 on a
 * database error. */
int rental_approve(store *st, long long intake_id, long long payment_id, order *out);
int rental_decline(store *st, long long intake_id, const char *message);
int rental_start_void(store *st, long long intake_id);
/* The payment request was refused before it left (bulkhead full): payment
 * never saw it, so the intake is voided and its cars released at once. */
int rental_void_unsent(store *st, long long intake_id);
int rental_finish_void(store *st, long long intake_id);
/* At start on SQLite (one process per database): every pending intake
 * belonged to a dead process. Returns how many. On PostgreSQL a replica may
 * still be working on one: the leases tell (lease.c). */
int rental_mark_in_doubt(store *st);

/* How ending a rental went: a cancel (order_cancel) or a return
 * (order_return). */
typedef enum {
    END_DONE,                   /* ended now: cars released, the event written */
    END_ALREADY,                /* ended this way before: nothing changed */
    END_NOT_FOUND,
    END_OTHER_WAY,              /* ended the other way before: a returned rental
                                   is not cancelled, a cancelled one not returned */
    END_FAILED,
} end_outcome;

end_outcome order_cancel(store *st, long long order_id, const char *request_id, order *out);

/* Ends a rental (OrderApproved or Shipped -> Returned) on day `today` at
 * instant `now`: its cars are free again from rental_release_from() on,
 * Returned is published. One guarded transaction: of two returns (a
 * customer's and the timer's, or two replicas'), one changes the row and
 * publishes, the other finds it Returned. */
end_outcome order_return(store *st, long long order_id, long today, time_t now,
                         const char *request_id, order *out);

/* Inside the bus's transaction: Shipped moves OrderApproved to Shipped.
 * Returns 1 changed, 0 nothing to change, -1 error. */
int order_mark_shipped(store *st, long long order_id);

/* ---- fleet.c ---- */

/* Parses a fleet document ({"cars": [...]} or a bare array of cars, each
 * {"id", "name", "location", "dailyPrice", "total"}). Returns a malloc'ed
 * array (*count entries) or NULL with err filled. */
car *fleet_parse(const json_t *doc, size_t *count, char *err, size_t errlen);

/* At start: FLEET_FILE given -> the fleet becomes the file's; else the demo
 * fleet is created if the fleet is empty. Returns 0, or -1 (logged). */
int fleet_load(store *st, const char *fleet_file);

/* ---- store.c ---- */

store *order_store_open(void);
store *order_store_open_path(const char *path);

long long car_store_count(store *st);
/* A car with `available` = the cars free on every day of [from, to). */
int car_store_get(store *st, const char *id, long from, long to, car *out);   /* 1, 0, -1 */
int car_store_list(store *st, long from, long to, long offset, long limit,
                   void (*each)(const car *c, void *arg), void *arg);
/* Books qty cars of model id on every day of [from, to), or none:
 * 1 booked, 0 some day is full (nothing changed: the caller rolls back
 * the transaction), -1 error. Inside the caller's transaction. */
int booking_store_book(store *st, const char *id, long from, long to, long long qty);
/* Gives qty cars back on every day of [from, to) (none if from >= to). */
int booking_store_release(store *st, const char *id, long from, long to, long long qty);
/* Deletes the rows of days before `day` (no rule reads them: a period never
 * starts in the past, a return frees days after it): rows deleted, or -1. */
int booking_store_forget_before(store *st, long day);
/* The first day of [from, to) where qty more cars of model id do not fit,
 * and how many are free that day: 1 found, 0 none, -1 error. */
int booking_store_first_full(store *st, const char *id, long from, long to, long long qty,
                             long *day, long long *free_cars);
/* Fleet replacement, inside one transaction: begin, put each car, end. */
int car_store_replace_begin(store *st);
int car_store_replace_put(store *st, const car *c);
int car_store_replace_end(store *st);   /* drops the cars not put */
int car_store_insert(store *st, const car *c);

int intake_store_insert(store *st, intake *in);                 /* sets in->id */
int intake_store_get(store *st, long long id, intake *out);
int intake_store_find_by_key(store *st, const char *key, intake *out);
int intake_store_forget_key(store *st, long long id);
/* Moves the intake from one of `from` (count states) to `to`, setting
 * payment_id (if > 0) and message (if not NULL). Returns rows changed. */
int intake_store_transition(store *st, long long id, const intake_state *from, int count,
                            intake_state to, long long payment_id, const char *message);
int intake_store_mark_all(store *st, intake_state from, intake_state to);
/* Takes up to `limit` intakes to settle, oldest first, for `owner` with a
 * lease of lease_ms: the voiding and in-doubt ones whose lease ran out or
 * that `owner` holds already, and the pending ones whose lease ran out
 * (their process died or froze: they become in doubt). On PostgreSQL the
 * rows are locked as they are taken (FOR UPDATE SKIP LOCKED): two
 * reconcilers never take the same intake. Returns how many, -1 on error. */
int intake_store_claim(store *st, const char *owner, long lease_ms, int limit,
                       void (*each)(const intake *in, void *arg), void *arg);
/* Renews by lease_ms the leases of the pending intakes among ids[0..n)
 * that `owner` holds: rows renewed, or -1. */
int intake_store_renew(store *st, const char *owner, const long long *ids, int n,
                       long lease_ms);

int order_store_insert(store *st, const order *o);
int order_store_get(store *st, long long id, order *out);
int order_store_set_status(store *st, long long id, const char *from, const char *to);
/* OrderApproved or Shipped -> Returned, with returned_at: rows changed. */
int order_store_mark_returned(store *st, long long id, const char *returned_at);
/* Ids of active rentals (OrderApproved, Shipped) due back by `today`
 * (to_day <= today), earliest first, at most `max`: how many, or -1. */
int order_store_due(store *st, long today, long long *ids, int max);
long long order_store_count(store *st, const char *customer_id);   /* NULL = all */
int order_store_list(store *st, const char *customer_id, long offset, long limit,
                     void (*each)(const order *o, void *arg), void *arg);

/* ---- store_pg.c: the same on PostgreSQL (store.c hands a PostgreSQL
 * store to these; nothing else calls them) ---- */

extern const db_schema order_schema;      /* db_open(..., &order_schema) */
extern const char *const order_pg_migrations[];
long long car_pg_count(store *st);
int car_pg_get(store *st, const char *id, long from, long to, car *out);
int car_pg_list(store *st, long from, long to, long offset, long limit,
                void (*each)(const car *c, void *arg), void *arg);
int car_pg_insert(store *st, const car *c);
int car_pg_replace_begin(store *st);
int car_pg_replace_put(store *st, const car *c);
int car_pg_replace_end(store *st);
int booking_pg_book(store *st, const char *id, long from, long to, long long qty);
int booking_pg_release(store *st, const char *id, long from, long to, long long qty);
int booking_pg_forget_before(store *st, long day);
int booking_pg_first_full(store *st, const char *id, long from, long to, long long qty,
                          long *day, long long *free_cars);
int intake_pg_insert(store *st, intake *in);
int intake_pg_get(store *st, long long id, intake *out);
int intake_pg_find_by_key(store *st, const char *key, intake *out);
int intake_pg_forget_key(store *st, long long id);
int intake_pg_transition(store *st, long long id, const intake_state *from, int count,
                         intake_state to, long long payment_id, const char *message);
int intake_pg_mark_all(store *st, intake_state from, intake_state to);
int intake_pg_claim(store *st, const char *owner, long lease_ms, int limit,
                    void (*each)(const intake *in, void *arg), void *arg);
int intake_pg_renew(store *st, const char *owner, const long long *ids, int n, long lease_ms);
int order_pg_insert(store *st, const order *o);
int order_pg_get(store *st, long long id, order *out);
int order_pg_set_status(store *st, long long id, const char *from, const char *to);
int order_pg_mark_returned(store *st, long long id, const char *returned_at);
int order_pg_due(store *st, long today, long long *ids, int max);
long long order_pg_count(store *st, const char *customer_id);
int order_pg_list(store *st, const char *customer_id, long offset, long limit,
                  void (*each)(const order *o, void *arg), void *arg);

/* ---- lease.c: intake owners and leases (replicas on one database) ---- */

typedef struct lease_keeper lease_keeper;

/* ORDER_LEASE_MS (10000): how long an intake stays its owner's unrenewed. */
long order_lease_ms(void);
long long lease_now_ms(void);       /* this machine's clock, ms since the epoch */
/* Renews the leases of the intakes added (payment calls in flight) every
 * third of a lease. */
lease_keeper *lease_keeper_new(struct event_base *base, db *d);
void lease_keeper_add(lease_keeper *k, long long intake_id);
void lease_keeper_remove(lease_keeper *k, long long intake_id);
void lease_keeper_stop(lease_keeper *k);

/* ---- reconcile.c ---- */

typedef struct reconciler reconciler;

reconciler *reconciler_new(struct event_base *base, db *d, struct balance_set *payment,
                           int interval_ms);
/* Runs a pass soon (an intake has just become voiding). */
void reconciler_kick(reconciler *r);
/* Stops the timer; frees itself once its calls in flight have completed. */
void reconciler_stop(reconciler *r);

/* ---- returns.c: the automatic return at the end of a period ---- */

typedef struct return_timer return_timer;

return_timer *return_timer_new(struct event_base *base, db *d, int interval_ms);
void return_timer_stop(return_timer *t);

/* ---- api.c ---- */

typedef struct order_api_config {
    struct balance_set *payment;    /* the synchronous payment call: payment's instances */
    reconciler *reconciler;
    lease_keeper *leases;     /* the intakes of the payment calls in flight */
    bool test_crash_after_payment;  /* ORDER_TEST_CRASH_AFTER_PAYMENT: test only */
} order_api_config;

/* Registers every route of order (POST /orders through rental.c). */
void order_api_register(struct service *svc, db *d, const order_api_config *cfg);
/* The order as the contract shows it (a new reference). */
json_t *order_json(const order *o, const char *base_url);

/* ---- rental.c ---- */

void order_rental_register(struct service *svc, db *d, const order_api_config *cfg);

/* ---- policy.c ---- */

void order_policy_register(struct bus *b);

#endif
