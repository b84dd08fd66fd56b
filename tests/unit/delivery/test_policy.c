/* test_policy.c: delivery's event handlers and cancel command, called
 * directly on a real store in a temporary directory, each event in its own
 * transaction as the bus runs them.
 *
 * What must hold: a delivery is shipped exactly once when both Ordered and
 * Paid were seen, in either order, and never for a cancelled order, even
 * when Paid (or Ordered) arrives after OrderCancelled, in every order of
 * the three events and with duplicates; a cancellation happens once per
 * order and publishes exactly one DeliveryCanceled; malformed events are
 * refused without side effects; what was decided survives a reopen. The
 * published events are read back from the outbox table. */
#include "testing.h"
#include "testing_store.h"

#include <stdlib.h>
#include <string.h>
#include "delivery.h"
#include "log.h"

static char dir[64];
static char db_path[128];

static store *open_store(void)
{
    store *st = store_open_path(db_path, delivery_migrations);
    if (!st) {
        fprintf(stderr, "cannot open %s\n", db_path);
        exit(1);
    }
    return st;
}

static json_t *ordered(long long order_id)
{
    return json_pack("{s:s, s:s, s:s, s:I, s:s, s:i, s:s, s:i, s:s}",
                     "eventType", "Ordered", "eventId", "e-ordered", "timestamp", "20261124015039",
                     "id", (json_int_t)order_id, "productId", "1001", "qty", 2,
                     "customerId", "kim", "amount", 240000, "status", "OrderApproved");
}

static json_t *paid(long long order_id, long long payment_id)
{
    return json_pack("{s:s, s:s, s:s, s:I, s:I, s:s, s:i, s:i, s:s}",
                     "eventType", "Paid", "eventId", "e-paid", "timestamp", "20261124015039",
                     "id", (json_int_t)payment_id, "orderId", (json_int_t)order_id,
                     "productId", "1001", "qty", 2, "amount", 240000, "status", "Paid");
}

static json_t *order_cancelled(long long order_id)
{
    return json_pack("{s:s, s:s, s:s, s:I, s:s, s:i, s:s}",
                     "eventType", "OrderCancelled", "eventId", "e-cancel",
                     "timestamp", "20261124015100", "id", (json_int_t)order_id,
                     "productId", "1001", "qty", 2, "customerId", "kim");
}

/* Runs the handler of the event's type in a transaction, as the bus does;
 * steals event. Returns the handler's result; err receives its reason. */
static int deliver(store *st, json_t *event, char *err, size_t errlen)
{
    const char *type = json_string_value(json_object_get(event, "eventType"));
    bus_handler h = !strcmp(type, "Ordered") ? delivery_on_ordered
                  : !strcmp(type, "Paid") ? delivery_on_paid
                  : delivery_on_order_cancelled;
    err[0] = '\0';
    CHECK_INT(store_begin(st), SQLITE_OK);
    int rc = h(st, event, "req-unit", NULL, err, errlen);
    if (rc == 0) CHECK_INT(store_commit(st), SQLITE_OK);
    else store_rollback(st);
    json_decref(event);
    return rc;
}

static void apply(store *st, json_t *event)
{
    char err[256];
    int rc = deliver(st, event, err, sizeof err);
    if (rc != 0) fprintf(stderr, "handler refused: %s\n", err);
    CHECK_INT(rc, 0);
}

static long long int_field(const json_t *obj, const char *key)
{
    return json_integer_value(json_object_get(obj, key));
}

static void test_ships_once_paid_then_ordered(store *st)
{
    apply(st, paid(1, 501));
    delivery d;
    CHECK_INT(delivery_store_find_by_order(st, 1, &d), 0);   /* Paid alone ships nothing */
    CHECK_INT(outbox_count(st, "Shipped", 1), 0);
    apply(st, ordered(1));
    CHECK_INT(delivery_store_find_by_order(st, 1, &d), 1);
    CHECK_STR(d.status, "Shipped");
    CHECK_INT(d.payment_id, 501);
    CHECK_INT(outbox_count(st, "Shipped", 1), 1);

    json_t *e = outbox_event(st, "Shipped", 1);
    CHECK(e != NULL);
    if (e) {
        CHECK_STR(json_string_value(json_object_get(e, "eventType")), "Shipped");
        CHECK(json_string_value(json_object_get(e, "eventId")) != NULL);
        CHECK(json_string_value(json_object_get(e, "timestamp")) != NULL);
        CHECK_INT(int_field(e, "id"), d.id);
        CHECK_INT(int_field(e, "orderId"), 1);
        CHECK_INT(int_field(e, "paymentId"), 501);
        CHECK_STR(json_string_value(json_object_get(e, "status")), "Shipped");
        json_decref(e);
    }
    /* Redelivered or repeated events ship nothing more. */
    apply(st, paid(1, 501));
    apply(st, ordered(1));
    CHECK_INT(delivery_store_count(st, 1), 1);
    CHECK_INT(outbox_count(st, "Shipped", 1), 1);
}

static void test_ships_once_ordered_then_paid(store *st)
{
    apply(st, ordered(2));
    delivery d;
    CHECK_INT(delivery_store_find_by_order(st, 2, &d), 0);   /* Ordered alone ships nothing */
    apply(st, paid(2, 502));
    CHECK_INT(delivery_store_find_by_order(st, 2, &d), 1);
    CHECK_STR(d.status, "Shipped");
    CHECK_INT(d.payment_id, 502);
    apply(st, ordered(2));
    CHECK_INT(outbox_count(st, "Shipped", 2), 1);
}

/* The contract's rule: a cancelled order is never shipped, even when its
 * Paid arrives after its OrderCancelled. */
static void test_cancelled_order_never_shipped(store *st)
{
    apply(st, order_cancelled(3));
    delivery d;
    CHECK_INT(delivery_store_find_by_order(st, 3, &d), 1);
    CHECK_STR(d.status, "DeliveryCancelled");
    CHECK_INT(d.payment_id, 0);
    json_t *e = outbox_event(st, "DeliveryCanceled", 3);
    CHECK(e != NULL);
    if (e) {
        CHECK_INT(int_field(e, "id"), d.id);
        CHECK(json_is_null(json_object_get(e, "paymentId")));
        CHECK_STR(json_string_value(json_object_get(e, "status")), "DeliveryCancelled");
        json_decref(e);
    }
    apply(st, paid(3, 503));
    apply(st, ordered(3));
    apply(st, paid(3, 503));
    CHECK_INT(delivery_store_find_by_order(st, 3, &d), 1);
    CHECK_STR(d.status, "DeliveryCancelled");
    CHECK_INT(outbox_count(st, "Shipped", 3), 0);
    CHECK_INT(outbox_count(st, "DeliveryCanceled", 3), 1);
    CHECK_INT(delivery_store_count(st, 3), 1);
}

static void test_cancel_after_shipping(store *st)
{
    apply(st, ordered(4));
    apply(st, paid(4, 504));
    delivery shipped;
    CHECK_INT(delivery_store_find_by_order(st, 4, &shipped), 1);
    apply(st, order_cancelled(4));
    apply(st, order_cancelled(4));   /* redelivered */
    delivery d;
    CHECK_INT(delivery_store_find_by_order(st, 4, &d), 1);
    CHECK_INT(d.id, shipped.id);
    CHECK_STR(d.status, "DeliveryCancelled");
    CHECK_INT(outbox_count(st, "Shipped", 4), 1);
    CHECK_INT(outbox_count(st, "DeliveryCanceled", 4), 1);
    json_t *e = outbox_event(st, "DeliveryCanceled", 4);
    if (e) {
        CHECK_INT(int_field(e, "id"), shipped.id);
        CHECK_INT(int_field(e, "paymentId"), 504);
        json_decref(e);
    }
    cancellation c;
    CHECK_INT(cancellation_store_find_by_order(st, 4, &c), 1);
    CHECK_INT(c.delivery_id, shipped.id);
    CHECK_INT(c.payment_id, 504);
}

/* Every order of Ordered, Paid, OrderCancelled, each delivered twice in a
 * row (a redelivery): one DeliveryCanceled always; a Shipped exactly when
 * both Ordered and Paid came before the cancellation. */
static void test_every_order_of_three_events(store *st)
{
    static const int perms[6][3] = { {0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1},
                                     {2, 1, 0} };
    for (int p = 0; p < 6; p++) {
        long long order_id = 100 + p;
        int cancel_pos = 0;
        for (int i = 0; i < 3; i++) {
            int which = perms[p][i];
            if (which == 2) cancel_pos = i;
            for (int twice = 0; twice < 2; twice++)
                apply(st, which == 0 ? ordered(order_id)
                        : which == 1 ? paid(order_id, 1000 + order_id)
                        : order_cancelled(order_id));
        }
        int expect_shipped = cancel_pos == 2;
        CHECK_INT(outbox_count(st, "Shipped", order_id), expect_shipped);
        CHECK_INT(outbox_count(st, "DeliveryCanceled", order_id), 1);
        delivery d;
        CHECK_INT(delivery_store_find_by_order(st, order_id, &d), 1);
        CHECK_STR(d.status, "DeliveryCancelled");
        CHECK_INT(delivery_store_count(st, order_id), 1);
    }
}

/* The POST /cancellations command: once per order, repeat returns it. */
static void test_cancel_command(store *st)
{
    char err[256];
    cancellation first, again;
    bool created;
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(delivery_cancel(st, 7, "req-unit", &first, &created, err, sizeof err), 0);
    CHECK_INT(store_commit(st), SQLITE_OK);
    CHECK(created);
    CHECK_INT(first.order_id, 7);
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(delivery_cancel(st, 7, "req-unit", &again, &created, err, sizeof err), 0);
    CHECK_INT(store_commit(st), SQLITE_OK);
    CHECK(!created);
    CHECK_INT(again.id, first.id);
    CHECK_INT(again.delivery_id, first.delivery_id);
    /* The OrderCancelled event that follows the command adds nothing. */
    apply(st, order_cancelled(7));
    CHECK_INT(outbox_count(st, "DeliveryCanceled", 7), 1);
    apply(st, paid(7, 507));
    apply(st, ordered(7));
    CHECK_INT(outbox_count(st, "Shipped", 7), 0);
}

/* Malformed events are refused, saying why, and change nothing. */
static void test_malformed_events(store *st)
{
    char err[256];
    long long before = delivery_store_count(st, 0);
    json_t *e = paid(8, 508);
    json_object_del(e, "orderId");
    CHECK_INT(deliver(st, e, err, sizeof err), -1);
    CHECK(strstr(err, "orderId") != NULL);

    e = paid(8, 508);
    json_object_set_new(e, "id", json_string("abc"));
    CHECK_INT(deliver(st, e, err, sizeof err), -1);
    CHECK(strstr(err, "id") != NULL);

    e = ordered(8);
    json_object_set_new(e, "id", json_integer(-3));
    CHECK_INT(deliver(st, e, err, sizeof err), -1);

    e = order_cancelled(8);
    json_object_del(e, "id");
    CHECK_INT(deliver(st, e, err, sizeof err), -1);

    CHECK_INT(delivery_store_count(st, 0), before);
    order_facts f;
    CHECK_INT(delivery_store_facts(st, 8, &f), 0);
    CHECK(!f.ordered && !f.paid && !f.cancelled);

    /* Numeric strings are accepted, as everywhere in the contract. */
    e = paid(9, 509);
    json_object_set_new(e, "orderId", json_string("9"));
    apply(st, e);
    apply(st, ordered(9));
    CHECK_INT(outbox_count(st, "Shipped", 9), 1);
}

/* What was decided survives closing and reopening the database. */
static void test_survives_reopen(store **st)
{
    apply(*st, order_cancelled(10));
    apply(*st, ordered(11));
    store_close(*st);
    *st = open_store();
    apply(*st, paid(10, 510));
    apply(*st, ordered(10));
    CHECK_INT(outbox_count(*st, "Shipped", 10), 0);
    apply(*st, paid(11, 511));
    CHECK_INT(outbox_count(*st, "Shipped", 11), 1);
}

typedef struct listing {
    long long seen, last_id;
    bool increasing;
} listing;

static void visit_delivery(const delivery *d, void *arg)
{
    listing *l = arg;
    if (d->id <= l->last_id) l->increasing = false;
    l->last_id = d->id;
    l->seen++;
}

/* Paging through every delivery visits each once, in id order. */
static void test_listing(store *st)
{
    long long total = delivery_store_count(st, 0);
    CHECK(total >= 10);
    listing l = { 0, 0, true };
    for (long offset = 0; offset < total; offset += 3)
        CHECK_INT(delivery_store_list(st, 0, offset, 3, visit_delivery, &l), 0);
    CHECK_INT(l.seen, total);
    CHECK(l.increasing);
    listing one = { 0, 0, true };
    CHECK_INT(delivery_store_list(st, 4, 0, 20, visit_delivery, &one), 0);
    CHECK_INT(one.seen, 1);
    CHECK(cancellation_store_count(st) > 0);
}

int main(void)
{
    setenv("LOG_LEVEL", "warn", 1);
    log_init("test-delivery");
    if (!temp_dir_make(dir, sizeof dir, "delivery"))
        return 1;
    snprintf(db_path, sizeof db_path, "%s/delivery.db", dir);
    store *st = open_store();

    test_ships_once_paid_then_ordered(st);
    test_ships_once_ordered_then_paid(st);
    test_cancelled_order_never_shipped(st);
    test_cancel_after_shipping(st);
    test_every_order_of_three_events(st);
    test_cancel_command(st);
    test_malformed_events(st);
    test_survives_reopen(&st);
    test_listing(st);

    store_close(st);
    temp_dir_remove(dir);
    return test_done("delivery/test_policy");
}
