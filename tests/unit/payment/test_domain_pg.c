/* test_domain_pg.c: payment's rules on PostgreSQL (tests/pg_run.py starts
 * the server), the twin of test_domain.c on SQLite: one payment per order
 * (a repeat returns the first and publishes nothing new), a declined card
 * stores nothing, a refund happens once and publishes PayCancelled once, a
 * void refuses the late payment; and what only this backend has to prove:
 * the same order charged from many connections at once is charged once
 * (SERIALIZABLE, the loser run again by lib/db.c), every other attempt
 * getting the existing payment. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "log.h"
#include "payment.h"
#include "store_pg.h"
#include "testing.h"
#include "testing_store.h"

static long long events_of(store *st, const char *type, long long order_id)
{
    char k[24];
    const char *p[] = {type, store_pg_int(k, order_id)};
    return store_pg_one_int(st, "SELECT count(*) FROM outbox WHERE event_type = $1"
                                " AND (payload::json ->> 'orderId')::bigint = $2", 2, p, "events");
}

static charge_request charge(long long order_id, const char *digits)
{
    return (charge_request){.order_id = order_id, .product_id = "1001", .qty = 1,
                            .amount = 45000, .card_digits = digits};
}

static void test_rules(store *st)
{
    payment p, again;
    charge_request rq = charge(1, "4111111111111111");
    CHECK_INT(payment_charge(st, &rq, "req-1", &p), CHARGE_CREATED);
    CHECK_STR(p.card_last4, "1111");
    CHECK(p.id > 0 && p.created_at[0]);
    CHECK_INT(payment_charge(st, &rq, "req-2", &again), CHARGE_EXISTING);
    CHECK_INT(again.id, p.id);
    CHECK_INT(events_of(st, "Paid", 1), 1);

    rq = charge(2, PAYMENT_DECLINED_CARD);
    CHECK_INT(payment_charge(st, &rq, "req-3", &p), CHARGE_DECLINED);
    CHECK_INT(count(st, "SELECT count(*) FROM payments WHERE order_id = 2"), 0);

    payment_cancellation c;
    CHECK_INT(payment_refund(st, 1, "req-4", false, &c), REFUND_CREATED);
    CHECK_STR(c.status, CANCELLATION_STATUS_REFUNDED);
    CHECK_INT(c.payment_id, again.id);
    CHECK_INT(payment_refund(st, 1, "req-5", false, &c), REFUND_EXISTING);
    CHECK_INT(events_of(st, "PayCancelled", 1), 1);
    CHECK_INT(payment_store_get(st, again.id, &p), 1);
    CHECK_STR(p.status, PAYMENT_STATUS_CANCELLED);

    /* A void before any payment refuses the late one. */
    CHECK_INT(payment_refund(st, 3, "req-6", false, &c), REFUND_CREATED);
    CHECK_STR(c.status, CANCELLATION_STATUS_VOIDED);
    CHECK_INT(c.payment_id, 0);
    rq = charge(3, NULL);
    CHECK_INT(payment_charge(st, &rq, "req-7", &p), CHARGE_ORDER_CANCELLED);
    CHECK_INT(payment_store_find_by_order(st, 3, &p), 0);

    /* The card number is nowhere but in its last four digits. */
    CHECK_INT(count(st, "SELECT count(*) FROM payments WHERE card_last4 LIKE '%4111111%'"), 0);
    CHECK_INT(count(st, "SELECT count(*) FROM outbox WHERE payload LIKE '%4111111111%'"), 0);
}

struct attempt {
    charge_request rq;
    charge_outcome outcome;
    payment p;
};

static void attempt_work(store *st, void *arg)
{
    struct attempt *a = arg;
    a->outcome = payment_charge(st, &a->rq, "race", &a->p);
}

static void test_same_order_from_many_connections(struct event_base *base, db *d)
{
    enum { N = 8 };
    struct attempt a[N];
    for (int i = 0; i < N; i++)
        a[i] = (struct attempt){.rq = charge(42, NULL)};
    race(base, d, a, N, attempt_work);
    int created = 0, existing = 0;
    for (int i = 0; i < N; i++) {
        created += a[i].outcome == CHARGE_CREATED;
        existing += a[i].outcome == CHARGE_EXISTING;
    }
    CHECK_INT(created, 1);
    CHECK_INT(existing, N - 1);
    store *st = db_store(d);
    CHECK_INT(count(st, "SELECT count(*) FROM payments WHERE order_id = 42"), 1);
    CHECK_INT(events_of(st, "Paid", 42), 1);
}

int main(void)
{
    const char *url = getenv("TEST_DATABASE_URL");
    if (!url) {
        fprintf(stderr, "TEST_DATABASE_URL is not set: run under tests/pg_run.py\n");
        return 1;
    }
    log_init("test_domain_pg");
    evthread_use_pthreads();
    struct event_base *base = event_base_new();
    setenv("PAYMENT_DATABASE_URL", url, 1);
    db *d = db_open(base, "payment", &payment_schema);
    CHECK(d != NULL);
    if (d) {
        CHECK(db_is_pg(d));
        test_rules(db_store(d));
        test_same_order_from_many_connections(base, d);
        db_close(d);
    }
    event_base_free(base);
    return test_done("test_domain_pg");
}
