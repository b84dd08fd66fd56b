/* events.c: builders and readers of the event contract (events.h).
 *
 * Builders write the payload fields in the contract's order with
 * json_pack; the envelope is added by outbox_add. Readers go through
 * rep_int/rep_str, so an event is read with the same rules as a client's
 * body, and prefix the reason with the event type, so a dead letter says
 * which event lacked what. Nothing here touches NATS: a Kafka adapter
 * would replace the bus, not this file. */
#include "events.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "bus.h"
#include "rep.h"

const char *const event_types[EVENT_TYPE_COUNT] = {
    EVENT_ORDERED, EVENT_ORDER_CANCELLED, EVENT_PAID, EVENT_PAY_CANCELLED,
    EVENT_SHIPPED, EVENT_DELIVERY_CANCELED, EVENT_RETURNED,
};

/* ---- producers ---- */

json_t *event_ordered_payload(const event_ordered *e)
{
    json_t *p = json_pack("{s:I, s:s, s:I, s:s, s:I, s:s}",
                          "id", (json_int_t)e->id, "productId", e->product_id,
                          "qty", (json_int_t)e->qty, "customerId", e->customer_id,
                          "amount", (json_int_t)e->amount, "status", e->status);
    if (p && e->from
        && (json_object_set_new(p, "from", json_string(e->from)) != 0
            || json_object_set_new(p, "to", json_string(e->to ? e->to : "")) != 0
            || json_object_set_new(p, "days", json_integer(e->days)) != 0)) {
        json_decref(p);
        return NULL;
    }
    return p;
}

json_t *event_order_cancelled_payload(const event_order_cancelled *e)
{
    return json_pack("{s:I, s:s, s:I, s:s}",
                     "id", (json_int_t)e->id, "productId", e->product_id,
                     "qty", (json_int_t)e->qty, "customerId", e->customer_id);
}

json_t *event_paid_payload(const event_paid *e)
{
    return json_pack("{s:I, s:I, s:s, s:I, s:I, s:s}",
                     "id", (json_int_t)e->id, "orderId", (json_int_t)e->order_id,
                     "productId", e->product_id, "qty", (json_int_t)e->qty,
                     "amount", (json_int_t)e->amount, "status", e->status);
}

json_t *event_pay_cancelled_payload(const event_pay_cancelled *e)
{
    return json_pack("{s:I, s:I, s:s, s:I, s:I}",
                     "id", (json_int_t)e->id, "orderId", (json_int_t)e->order_id,
                     "productId", e->product_id, "qty", (json_int_t)e->qty,
                     "amount", (json_int_t)e->amount);
}

json_t *event_delivery_payload(const event_delivery *e)
{
    return json_pack("{s:I, s:I, s:o, s:s}",
                     "id", (json_int_t)e->id, "orderId", (json_int_t)e->order_id,
                     "paymentId", e->payment_id > 0 ? json_integer(e->payment_id) : json_null(),
                     "status", e->status);
}

json_t *event_returned_payload(const event_returned *e)
{
    return json_pack("{s:I, s:s, s:I, s:s, s:s, s:s, s:s}",
                     "id", (json_int_t)e->id, "productId", e->product_id,
                     "qty", (json_int_t)e->qty, "customerId", e->customer_id,
                     "from", e->from, "to", e->to, "returnedAt", e->returned_at);
}

/* Takes the payload (NULL: out of memory, -1). */
static int add(store *st, const char *type, json_t *payload, const char *request_id)
{
    int rc = payload ? outbox_add(st, type, payload, request_id, NULL) : -1;
    json_decref(payload);
    return rc;
}

int event_ordered_add(store *st, const event_ordered *e, const char *request_id)
{
    return add(st, EVENT_ORDERED, event_ordered_payload(e), request_id);
}

int event_order_cancelled_add(store *st, const event_order_cancelled *e, const char *request_id)
{
    return add(st, EVENT_ORDER_CANCELLED, event_order_cancelled_payload(e), request_id);
}

int event_paid_add(store *st, const event_paid *e, const char *request_id)
{
    return add(st, EVENT_PAID, event_paid_payload(e), request_id);
}

int event_pay_cancelled_add(store *st, const event_pay_cancelled *e, const char *request_id)
{
    return add(st, EVENT_PAY_CANCELLED, event_pay_cancelled_payload(e), request_id);
}

int event_delivery_add(store *st, const char *type, const event_delivery *e,
                       const char *request_id)
{
    return add(st, type, event_delivery_payload(e), request_id);
}

int event_returned_add(store *st, const event_returned *e, const char *request_id)
{
    return add(st, EVENT_RETURNED, event_returned_payload(e), request_id);
}

/* ---- consumers ---- */

/* A required positive id; err: "<type>: <field> ...". */
static int need_id(const char *type, const json_t *ev, const char *field, long long *out,
                   char *err, size_t errlen)
{
    char why[160];
    if (rep_int(ev, field, true, 1, LLONG_MAX, out, why, sizeof why) == 1)
        return 0;
    snprintf(err, errlen, "%s: %s", type, why);
    return -1;
}

static long long opt_int(const json_t *ev, const char *field)
{
    char why[160];
    long long v;
    return rep_int(ev, field, false, LLONG_MIN, LLONG_MAX, &v, why, sizeof why) == 1 ? v : 0;
}

/* Borrowed from the event: JSON strings only (a number-as-text would need
 * a buffer that outlives the call). */
static const char *opt_str(const json_t *ev, const char *field)
{
    return json_string_value(json_object_get(ev, field));
}

int event_ordered_read(const json_t *ev, event_ordered *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->product_id = opt_str(ev, "productId");
    out->qty = opt_int(ev, "qty");
    out->customer_id = opt_str(ev, "customerId");
    out->amount = opt_int(ev, "amount");
    out->status = opt_str(ev, "status");
    out->from = opt_str(ev, "from");
    out->to = opt_str(ev, "to");
    out->days = opt_int(ev, "days");
    return need_id(EVENT_ORDERED, ev, "id", &out->id, err, errlen);
}

int event_order_cancelled_read(const json_t *ev, event_order_cancelled *out, char *err,
                               size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->product_id = opt_str(ev, "productId");
    out->qty = opt_int(ev, "qty");
    out->customer_id = opt_str(ev, "customerId");
    return need_id(EVENT_ORDER_CANCELLED, ev, "id", &out->id, err, errlen);
}

int event_paid_read(const json_t *ev, event_paid *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->product_id = opt_str(ev, "productId");
    out->qty = opt_int(ev, "qty");
    out->amount = opt_int(ev, "amount");
    out->status = opt_str(ev, "status");
    if (need_id(EVENT_PAID, ev, "orderId", &out->order_id, err, errlen) < 0)
        return -1;
    return need_id(EVENT_PAID, ev, "id", &out->id, err, errlen);
}

int event_pay_cancelled_read(const json_t *ev, event_pay_cancelled *out, char *err,
                             size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->id = opt_int(ev, "id");
    out->product_id = opt_str(ev, "productId");
    out->qty = opt_int(ev, "qty");
    out->amount = opt_int(ev, "amount");
    return need_id(EVENT_PAY_CANCELLED, ev, "orderId", &out->order_id, err, errlen);
}

int event_delivery_read(const json_t *ev, event_delivery *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    const char *type = json_string_value(json_object_get(ev, "eventType"));
    out->id = opt_int(ev, "id");
    out->payment_id = opt_int(ev, "paymentId");
    out->status = opt_str(ev, "status");
    return need_id(type ? type : EVENT_SHIPPED, ev, "orderId", &out->order_id, err, errlen);
}

int event_returned_read(const json_t *ev, event_returned *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->product_id = opt_str(ev, "productId");
    out->qty = opt_int(ev, "qty");
    out->customer_id = opt_str(ev, "customerId");
    out->from = opt_str(ev, "from");
    out->to = opt_str(ev, "to");
    out->returned_at = opt_str(ev, "returnedAt");
    return need_id(EVENT_RETURNED, ev, "id", &out->id, err, errlen);
}

const char *event_order_field(const char *type)
{
    if (!type)
        return NULL;
    if (!strcmp(type, EVENT_ORDERED) || !strcmp(type, EVENT_ORDER_CANCELLED)
        || !strcmp(type, EVENT_RETURNED))
        return "id";
    for (int i = 0; i < EVENT_TYPE_COUNT; i++)
        if (!strcmp(type, event_types[i]))
            return "orderId";
    return NULL;
}

int event_order_id(const json_t *ev, long long *order_id, char *err, size_t errlen)
{
    const char *type = json_string_value(json_object_get(ev, "eventType"));
    const char *field = event_order_field(type);
    if (!field) {
        snprintf(err, errlen, "eventType is missing or not in the event contract");
        return -1;
    }
    return need_id(type, ev, field, order_id, err, errlen);
}
