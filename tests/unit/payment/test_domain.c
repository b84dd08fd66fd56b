/* test_domain.c: payment's rules, against a real (temporary) database.
 *
 * Card numbers: what is a card, the decline rule. Charges: one payment per
 * order (a repeat returns the first, charges nothing, publishes nothing
 * new), a declined card stores nothing, a refund happens once and
 * publishes PayCancelled once, a void before any payment refuses the late
 * payment, and the full card number appears nowhere in the database file. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "payment.h"
#include "testing.h"
#include "testing_store.h"

static char dir[64];

static bool file_contains(const char *path, const char *needle)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)size + 1);
    size_t n = fread(buf, 1, (size_t)size, f);
    fclose(f);
    bool found = memmem(buf, n, needle, strlen(needle)) != NULL;
    free(buf);
    return found;
}

static void test_card_rules(void)
{
    char d[32];
    CHECK_INT(payment_card_digits("4111111111111111", d, sizeof d), 16);
    CHECK_STR(d, "4111111111111111");
    CHECK_INT(payment_card_digits("4111 1111-1111 1111", d, sizeof d), 16);
    CHECK_STR(d, "4111111111111111");
    CHECK_INT(payment_card_digits("1234", d, sizeof d), 4);
    CHECK_INT(payment_card_digits("123", d, sizeof d), -1);                  /* too short */
    CHECK_INT(payment_card_digits("12345678901234567890", d, sizeof d), -1); /* 20 digits */
    CHECK_INT(payment_card_digits("4111x111", d, sizeof d), -1);
    CHECK_INT(payment_card_digits(" 4111", d, sizeof d), -1);
    CHECK_INT(payment_card_digits("4111 ", d, sizeof d), -1);
    CHECK_INT(payment_card_digits("41  11", d, sizeof d), -1);
    CHECK_INT(payment_card_digits("", d, sizeof d), -1);
    CHECK_INT(payment_card_digits(NULL, d, sizeof d), -1);

    CHECK(payment_card_declined("4000000000000002"));
    CHECK(!payment_card_declined("4000000000000001"));
    CHECK(!payment_card_declined(NULL));
}

static charge_request request(long long order_id, const char *card)
{
    return (charge_request){.order_id = order_id, .product_id = "1001", .qty = 2,
                            .amount = 90000, .card_digits = card};
}

static void test_charge_once(store *st)
{
    payment p, again;
    charge_request rq = request(7, "4111111111111111");
    CHECK_INT(payment_charge(st, &rq, "req-1", &p), CHARGE_CREATED);
    CHECK(p.id > 0);
    CHECK_INT(p.order_id, 7);
    CHECK_INT(p.amount, 90000);
    CHECK_STR(p.card_last4, "1111");
    CHECK_STR(p.status, "Paid");

    /* The same order again with the same fields: the first payment. */
    CHECK_INT(payment_charge(st, &rq, "req-2", &again), CHARGE_EXISTING);
    CHECK_INT(again.id, p.id);
    CHECK_INT(again.amount, 90000);

    /* The same order with any other amount, qty, product or card: refused,
     * nothing charged (a payment made beforehand cannot be re-used). */
    charge_request other = rq;
    other.amount = 1;
    CHECK_INT(payment_charge(st, &other, "req-3", &again), CHARGE_CONFLICT);
    other = rq;
    other.qty = 3;
    CHECK_INT(payment_charge(st, &other, "req-4", &again), CHARGE_CONFLICT);
    other = rq;
    other.product_id = "1002";
    CHECK_INT(payment_charge(st, &other, "req-5", &again), CHARGE_CONFLICT);
    other = rq;
    other.card_digits = "4000000000009995";
    CHECK_INT(payment_charge(st, &other, "req-6", &again), CHARGE_CONFLICT);
    other.card_digits = NULL;
    CHECK_INT(payment_charge(st, &other, "req-7", &again), CHARGE_CONFLICT);
    CHECK_INT(count(st, "SELECT COUNT(*) FROM payments WHERE order_id = 7"), 1);
    CHECK_INT(count(st, "SELECT COUNT(*) FROM outbox WHERE event_type = 'Paid'"), 1);

    json_t *ev = outbox_event(st, "Paid", 7);
    CHECK(ev != NULL);
    CHECK_INT(json_integer_value(json_object_get(ev, "id")), p.id);
    CHECK_INT(json_integer_value(json_object_get(ev, "orderId")), 7);
    CHECK_STR(json_string_value(json_object_get(ev, "productId")), "1001");
    CHECK_INT(json_integer_value(json_object_get(ev, "qty")), 2);
    CHECK_INT(json_integer_value(json_object_get(ev, "amount")), 90000);
    CHECK_STR(json_string_value(json_object_get(ev, "status")), "Paid");
    CHECK_STR(json_string_value(json_object_get(ev, "eventType")), "Paid");
    CHECK(json_object_get(ev, "cardNumber") == NULL);
    json_decref(ev);

    payment read;
    CHECK_INT(payment_store_find_by_order(st, 7, &read), 1);
    CHECK_INT(read.id, p.id);
    CHECK_INT(payment_store_get(st, p.id, &read), 1);
    CHECK_INT(payment_store_get(st, 999, &read), 0);
}

static void test_declined(store *st)
{
    payment p;
    long long before = count(st, "SELECT COUNT(*) FROM outbox");
    charge_request rq = request(8, "4000000000000002");
    CHECK_INT(payment_charge(st, &rq, NULL, &p), CHARGE_DECLINED);
    CHECK_INT(count(st, "SELECT COUNT(*) FROM payments WHERE order_id = 8"), 0);
    CHECK_INT(count(st, "SELECT COUNT(*) FROM outbox"), before);

    /* No card at all is approved. */
    rq = request(8, NULL);
    CHECK_INT(payment_charge(st, &rq, NULL, &p), CHARGE_CREATED);
    CHECK_STR(p.card_last4, "");
}

static void test_refund_once(store *st)
{
    payment_cancellation c, again;
    CHECK_INT(payment_refund(st, 7, "req-3", false, &c), REFUND_CREATED);
    CHECK_STR(c.status, "PaymentCancelled");
    CHECK_INT(c.order_id, 7);
    CHECK(c.payment_id > 0);
    CHECK_INT(c.amount, 90000);
    CHECK_INT(payment_refund(st, 7, "req-4", false, &again), REFUND_EXISTING);
    CHECK_INT(again.id, c.id);
    CHECK_INT(count(st, "SELECT COUNT(*) FROM payment_cancellations WHERE order_id = 7"), 1);
    CHECK_INT(count(st, "SELECT COUNT(*) FROM outbox WHERE event_type = 'PayCancelled'"), 1);

    json_t *ev = outbox_event(st, "PayCancelled", 7);
    CHECK(ev != NULL);
    CHECK_INT(json_integer_value(json_object_get(ev, "id")), c.id);
    CHECK_INT(json_integer_value(json_object_get(ev, "orderId")), 7);
    CHECK_STR(json_string_value(json_object_get(ev, "productId")), "1001");
    CHECK_INT(json_integer_value(json_object_get(ev, "qty")), 2);
    CHECK_INT(json_integer_value(json_object_get(ev, "amount")), 90000);
    json_decref(ev);

    payment p;
    CHECK_INT(payment_store_find_by_order(st, 7, &p), 1);
    CHECK_STR(p.status, "PaymentCancelled");

    /* A refunded order cannot be paid again. */
    charge_request rq = request(7, NULL);
    CHECK_INT(payment_charge(st, &rq, NULL, &p), CHARGE_ORDER_CANCELLED);
}

static void test_void_before_payment(store *st)
{
    payment_cancellation c;
    long long events = count(st, "SELECT COUNT(*) FROM outbox");
    CHECK_INT(payment_refund(st, 9, NULL, false, &c), REFUND_CREATED);
    CHECK_STR(c.status, "PaymentVoided");
    CHECK_INT(c.payment_id, 0);
    CHECK_INT(c.amount, 0);
    CHECK_INT(count(st, "SELECT COUNT(*) FROM outbox"), events);   /* nothing refunded */

    payment p;
    charge_request rq = request(9, "4111111111111111");
    CHECK_INT(payment_charge(st, &rq, NULL, &p), CHARGE_ORDER_CANCELLED);
    CHECK_INT(count(st, "SELECT COUNT(*) FROM payments WHERE order_id = 9"), 0);
}

static void test_refund_inside_transaction(store *st)
{
    payment p;
    payment_cancellation c;
    charge_request rq = request(10, NULL);
    CHECK_INT(payment_charge(st, &rq, NULL, &p), CHARGE_CREATED);
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(payment_refund(st, 10, NULL, true, &c), REFUND_CREATED);
    store_rollback(st);   /* as the bus does when a handler's transaction fails */
    CHECK_INT(count(st, "SELECT COUNT(*) FROM payment_cancellations WHERE order_id = 10"), 0);
    CHECK_INT(payment_store_find_by_order(st, 10, &p), 1);
    CHECK_STR(p.status, "Paid");
}

static void test_lists(store *st)
{
    CHECK_INT(payment_store_count(st), 3);
    CHECK_INT(cancellation_store_count(st), 2);
    payment_cancellation c;
    CHECK_INT(cancellation_store_find_by_order(st, 9, &c), 1);
    CHECK_INT(cancellation_store_get(st, c.id, &c), 1);
    CHECK_INT(c.order_id, 9);
}

int main(void)
{
    if (!temp_dir_make(dir, sizeof dir, "payment"))
        return 1;
    char path[300];
    snprintf(path, sizeof path, "%s/payment.db", dir);
    store *st = payment_store_open_path(path);
    CHECK(st != NULL);
    if (st) {
        test_card_rules();
        test_charge_once(st);
        test_declined(st);
        test_refund_once(st);
        test_void_before_payment(st);
        test_refund_inside_transaction(st);
        test_lists(st);
        store_close(st);

        /* The full number was given to a charge; only 1111 may be on disk. */
        char wal[320];
        snprintf(wal, sizeof wal, "%s-wal", path);
        CHECK(!file_contains(path, "4111111111111111"));
        CHECK(!file_contains(wal, "4111111111111111"));
    }
    temp_dir_remove(dir);
    return test_done("payment/test_domain");
}
