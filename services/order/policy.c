/* policy.c: order's reactions to events.
 *
 * Shipped -> the order's status becomes "Shipped", but only from
 * "OrderApproved": a Shipped that arrives after the customer cancelled must
 * not bring the cancelled rental back, and a redelivered Shipped finds
 * nothing left to change. A Shipped for an order this service does not
 * know (another environment's event, say) is logged and skipped rather
 * than failed: retrying it could never succeed. */
#include <limits.h>
#include <stdio.h>

#include "bus.h"
#include "events.h"
#include "log.h"
#include "order.h"
#include "rep.h"

static int on_shipped(store *st, const json_t *event, const char *request_id, void *arg,
                      char *err, size_t errlen)
{
    (void)arg;
    event_delivery e;
    if (event_delivery_read(event, &e, err, errlen) < 0)
        return -1;
    long long order_id = e.order_id;
    int changed = order_mark_shipped(st, order_id);
    if (changed < 0) {
        snprintf(err, errlen, "order %lld could not be marked Shipped", order_id);
        return -1;
    }
    if (changed > 0) {
        log_info("req=%s msg=\"order shipped\" order=%lld", request_id ? request_id : "-",
                 order_id);
        return 0;
    }
    order o;
    if (order_store_get(st, order_id, &o) == 0)
        log_warn("req=%s msg=\"Shipped for an unknown order, ignored\" order=%lld",
                 request_id ? request_id : "-", order_id);
    return 0;
}

void order_policy_register(bus *b)
{
    bus_on(b, EVENT_SHIPPED, on_shipped, NULL);
}
