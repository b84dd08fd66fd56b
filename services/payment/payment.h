/* payment.h: what the files of the payment service share.
 *
 * payment (결제관리) charges and refunds. Its two rules are the contract's:
 *  - at most one payment per order: POST /payments is idempotent per
 *    orderId, so the order service may retry it safely;
 *  - at most one refund per order, however often asked (POST
 *    /paymentCancellations, or the OrderCancelled event).
 * A cancellation recorded for an order that has no payment yet is a
 * "void": it refuses any later payment for that order (409). The order
 * service relies on this to settle a rental whose payment outcome it does
 * not know (see docs/DESIGN.md, the reconciler).
 *
 * Full card numbers never leave the request that carried them: only the
 * last four digits are stored, and no log line or error message contains
 * a card number.
 *
 * Files: domain.c (the rules and the transactions), store.c (all SQL),
 * api.c (HTTP), policy.c (events consumed), main.c (wiring). */
#ifndef CARSHARE_PAYMENT_H
#define CARSHARE_PAYMENT_H

#include <stdbool.h>
#include <stddef.h>
#include "db.h"
#include "store.h"

struct service;
struct bus;

#define PAYMENT_PRODUCT_MAX 32              /* bytes of a productId */
#define PAYMENT_DECLINED_CARD "4000000000000002"
#define PAYMENT_CARD_MIN_DIGITS 4
#define PAYMENT_CARD_MAX_DIGITS 19

/* Statuses, as the contract and the customer page spell them. */
#define PAYMENT_STATUS_PAID "Paid"
#define PAYMENT_STATUS_CANCELLED "PaymentCancelled"   /* refunded */
#define CANCELLATION_STATUS_REFUNDED "PaymentCancelled"
#define CANCELLATION_STATUS_VOIDED "PaymentVoided"    /* no payment existed */

typedef struct payment {
    long long id;
    long long order_id;
    char product_id[PAYMENT_PRODUCT_MAX + 1];
    long long qty;
    long long amount;            /* KRW */
    char card_last4[5];          /* "" when the request carried no card */
    char status[24];             /* PAYMENT_STATUS_* */
    char created_at[24];         /* ISO 8601, UTC */
} payment;

typedef struct payment_cancellation {
    long long id;
    long long order_id;
    long long payment_id;        /* 0 when there was no payment to refund */
    char product_id[PAYMENT_PRODUCT_MAX + 1];  /* "" when voided */
    long long qty;               /* 0 when voided */
    long long amount;            /* refunded amount, 0 when voided */
    char status[24];             /* CANCELLATION_STATUS_* */
    char created_at[24];
} payment_cancellation;

/* ---- domain.c ---- */

/* Card numbers: digits, with spaces or dashes between groups allowed.
 * Writes the bare digits into `digits` and returns how many, or -1 when the
 * text is not a card number of PAYMENT_CARD_MIN..MAX_DIGITS digits. */
int payment_card_digits(const char *card, char *digits, size_t size);
bool payment_card_declined(const char *digits);

typedef struct charge_request {
    long long order_id;
    const char *product_id;
    long long qty;
    long long amount;
    const char *card_digits;     /* normalized, or NULL when no card */
} charge_request;

typedef enum {
    CHARGE_CREATED,              /* a new payment: 201 */
    CHARGE_EXISTING,             /* the order was already paid: 200 */
    CHARGE_DECLINED,             /* the card was declined: 402, nothing stored */
    CHARGE_ORDER_CANCELLED,      /* the order was cancelled or voided first: 409 */
    CHARGE_CONFLICT,             /* the order was paid with other fields: 409 */
    CHARGE_FAILED,               /* the database failed: 500 */
} charge_outcome;

/* Whether an existing payment is what rq asks again (amount, qty,
 * productId, card's last four): a repeat, answered with it. */
bool payment_same_charge(const payment *p, const charge_request *rq);

/* Charges once per order: in one transaction, refuses a cancelled order,
 * returns an existing payment, or stores a new one with its Paid event. */
charge_outcome payment_charge(store *st, const charge_request *rq, const char *request_id,
                              payment *out);

typedef enum {
    REFUND_CREATED,              /* a new cancellation (refund or void): 201 */
    REFUND_EXISTING,             /* already cancelled: 200, nothing new */
    REFUND_FAILED,
} refund_outcome;

/* Cancels the payment of an order, once: refunds it (status
 * PaymentCancelled, PayCancelled event) or, when the order has no payment,
 * records a void that refuses any later payment. `in_transaction` is true
 * when the caller (the bus) already holds a transaction on st. */
refund_outcome payment_refund(store *st, long long order_id, const char *request_id,
                              bool in_transaction, payment_cancellation *out);

/* ---- store.c ---- */

extern const db_schema payment_schema;     /* db_open(..., &payment_schema) */
store *payment_store_open(void);
store *payment_store_open_path(const char *path);

/* 1 found, 0 not found, -1 database error. */
int payment_store_get(store *st, long long id, payment *out);
int payment_store_find_by_order(store *st, long long order_id, payment *out);
int payment_store_insert(store *st, payment *p);           /* sets p->id, created_at */
int payment_store_set_status(store *st, long long id, const char *status);
long long payment_store_count(store *st);                  /* -1 on error */
/* Calls each() for the payments of one page, by id. Returns 0 or -1. */
int payment_store_list(store *st, long offset, long limit,
                       void (*each)(const payment *p, void *arg), void *arg);

int cancellation_store_get(store *st, long long id, payment_cancellation *out);
int cancellation_store_find_by_order(store *st, long long order_id, payment_cancellation *out);
int cancellation_store_insert(store *st, payment_cancellation *c);
long long cancellation_store_count(store *st);
int cancellation_store_list(store *st, long offset, long limit,
                            void (*each)(const payment_cancellation *c, void *arg), void *arg);

/* ---- store_pg.c: the same on PostgreSQL, called by store.c only ---- */

extern const char *const payment_pg_migrations[];
int payment_pg_get(store *st, long long id, payment *out);
int payment_pg_find_by_order(store *st, long long order_id, payment *out);
int payment_pg_insert(store *st, payment *p);
int payment_pg_set_status(store *st, long long id, const char *status);
long long payment_pg_count(store *st);
int payment_pg_list(store *st, long offset, long limit,
                    void (*each)(const payment *p, void *arg), void *arg);
int cancellation_pg_get(store *st, long long id, payment_cancellation *out);
int cancellation_pg_find_by_order(store *st, long long order_id, payment_cancellation *out);
int cancellation_pg_insert(store *st, payment_cancellation *c);
long long cancellation_pg_count(store *st);
int cancellation_pg_list(store *st, long offset, long limit,
                         void (*each)(const payment_cancellation *c, void *arg), void *arg);

/* ---- api.c ---- */

typedef struct payment_api_config {
    int test_delay_ms;           /* PAYMENT_TEST_DELAY_MS: test-only, 0 = off */
} payment_api_config;

void payment_api_register(struct service *svc, db *d, const payment_api_config *cfg);

/* ---- policy.c ---- */

/* Subscribes to OrderCancelled (refund). */
void payment_policy_register(struct bus *b);

#endif
