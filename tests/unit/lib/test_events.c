/* test_events.c: the event contract (lib/events.c): each builder writes
 * the contract's field names and nothing else, each reader gets back what
 * the builder wrote and refuses an event without the ids its consumers act
 * on, and event_order_id finds the order whichever side published. No
 * store: the outbox path is covered by test_bus and the services' tests. */
#include <string.h>

#include "events.h"
#include "testing.h"

/* The payload's keys, sorted, joined by commas. */
static const char *keys(const json_t *p, char *out, size_t size)
{
    const char *names[16];
    size_t n = 0;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)p, k, v) if (n < 16) names[n++] = k;
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++)
            if (strcmp(names[j], names[i]) < 0) { const char *t = names[i]; names[i] = names[j]; names[j] = t; }
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        strncat(out, names[i], size - strlen(out) - 1);
        if (i + 1 < n) strncat(out, ",", size - strlen(out) - 1);
    }
    return out;
}

static json_t *typed(json_t *payload, const char *type)
{
    json_object_set_new(payload, "eventType", json_string(type));
    return payload;
}

static void test_types(void)
{
    CHECK_INT(EVENT_TYPE_COUNT, 7);
    CHECK_STR(event_types[0], "Ordered");
    CHECK_STR(event_types[5], "DeliveryCanceled");   /* the seed's spelling */
    CHECK_STR(event_types[6], "Returned");
    CHECK_STR(event_order_field("Ordered"), "id");
    CHECK_STR(event_order_field("OrderCancelled"), "id");
    CHECK_STR(event_order_field("Returned"), "id");
    CHECK_STR(event_order_field("Paid"), "orderId");
    CHECK_STR(event_order_field("Shipped"), "orderId");
    CHECK(event_order_field("DeliveryCancelled") == NULL);
    CHECK(event_order_field(NULL) == NULL);
}

static void test_ordered(void)
{
    char k[256], err[200];
    event_ordered e = { .id = 7, .product_id = "1001", .qty = 2, .customer_id = "kim",
                        .amount = 240000, .status = "OrderApproved" };
    json_t *p = event_ordered_payload(&e);
    CHECK_STR(keys(p, k, sizeof k), "amount,customerId,id,productId,qty,status");
    e.from = "2026-12-10";
    e.to = "2026-12-12";
    e.days = 2;
    json_t *q = event_ordered_payload(&e);
    CHECK_STR(keys(q, k, sizeof k), "amount,customerId,days,from,id,productId,qty,status,to");
    event_ordered r;
    CHECK_INT(event_ordered_read(q, &r, err, sizeof err), 0);
    CHECK_INT(r.id, 7);
    CHECK_INT(r.qty, 2);
    CHECK_INT(r.days, 2);
    CHECK_STR(r.customer_id, "kim");
    CHECK_STR(r.to, "2026-12-12");
    long long order_id = 0;
    CHECK_INT(event_order_id(typed(q, "Ordered"), &order_id, err, sizeof err), 0);
    CHECK_INT(order_id, 7);
    json_object_del(p, "id");
    CHECK_INT(event_ordered_read(p, &r, err, sizeof err), -1);
    CHECK(strstr(err, "Ordered: id") != NULL);
    json_decref(p);
    json_decref(q);
}

static void test_payment_events(void)
{
    char k[256], err[200];
    event_paid e = { .id = 3, .order_id = 7, .product_id = "1001", .qty = 1, .amount = 120000,
                     .status = "Paid" };
    json_t *p = event_paid_payload(&e);
    CHECK_STR(keys(p, k, sizeof k), "amount,id,orderId,productId,qty,status");
    event_paid r;
    CHECK_INT(event_paid_read(p, &r, err, sizeof err), 0);
    CHECK_INT(r.id, 3);
    CHECK_INT(r.order_id, 7);
    CHECK_INT(r.amount, 120000);
    /* numbers as numeric strings are read like a client's body */
    json_object_set_new(p, "orderId", json_string("8"));
    CHECK_INT(event_paid_read(p, &r, err, sizeof err), 0);
    CHECK_INT(r.order_id, 8);
    json_object_set_new(p, "orderId", json_string("eight"));
    CHECK_INT(event_paid_read(p, &r, err, sizeof err), -1);
    CHECK(strstr(err, "Paid: orderId") != NULL);
    json_decref(p);

    event_pay_cancelled c = { .id = 4, .order_id = 7, .product_id = "1001", .qty = 1,
                              .amount = 120000 };
    p = event_pay_cancelled_payload(&c);
    CHECK_STR(keys(p, k, sizeof k), "amount,id,orderId,productId,qty");
    long long order_id = 0;
    CHECK_INT(event_order_id(typed(p, "PayCancelled"), &order_id, err, sizeof err), 0);
    CHECK_INT(order_id, 7);
    json_decref(p);
}

static void test_delivery_and_cancel_and_return(void)
{
    char k[256], err[200];
    event_delivery d = { .id = 5, .order_id = 7, .payment_id = 0, .status = "DeliveryCancelled" };
    json_t *p = event_delivery_payload(&d);
    CHECK_STR(keys(p, k, sizeof k), "id,orderId,paymentId,status");
    CHECK(json_is_null(json_object_get(p, "paymentId")));   /* none yet: null */
    event_delivery r;
    CHECK_INT(event_delivery_read(p, &r, err, sizeof err), 0);
    CHECK_INT(r.order_id, 7);
    CHECK_INT(r.payment_id, 0);
    json_object_del(p, "orderId");
    CHECK_INT(event_delivery_read(typed(p, "Shipped"), &r, err, sizeof err), -1);
    CHECK(strstr(err, "Shipped: orderId") != NULL);
    json_decref(p);

    event_order_cancelled c = { .id = 7, .product_id = "1001", .qty = 1, .customer_id = "kim" };
    p = event_order_cancelled_payload(&c);
    CHECK_STR(keys(p, k, sizeof k), "customerId,id,productId,qty");
    event_order_cancelled rc;
    CHECK_INT(event_order_cancelled_read(p, &rc, err, sizeof err), 0);
    CHECK_INT(rc.id, 7);
    json_decref(p);

    event_returned ret = { .id = 7, .product_id = "1001", .qty = 1, .customer_id = "kim",
                           .from = "2026-12-10", .to = "2026-12-12",
                           .returned_at = "20261211090000" };
    p = event_returned_payload(&ret);
    CHECK_STR(keys(p, k, sizeof k), "customerId,from,id,productId,qty,returnedAt,to");
    event_returned rr;
    CHECK_INT(event_returned_read(p, &rr, err, sizeof err), 0);
    CHECK_STR(rr.returned_at, "20261211090000");
    long long order_id = 0;
    CHECK_INT(event_order_id(typed(p, "Returned"), &order_id, err, sizeof err), 0);
    CHECK_INT(order_id, 7);
    json_object_set_new(p, "eventType", json_string("Lost"));
    CHECK_INT(event_order_id(p, &order_id, err, sizeof err), -1);
    json_decref(p);
}

int main(void)
{
    test_types();
    test_ordered();
    test_payment_events();
    test_delivery_and_cancel_and_return();
    return test_done("test_events");
}
