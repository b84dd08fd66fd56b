/* policy.c: payment's reactions to events.
 *
 * OrderCancelled -> refund the order's payment (the seed's policy). It runs
 * inside the bus's transaction, which also records the eventId, so a
 * redelivered event changes nothing; payment_refund is itself once per
 * order, so a refund already made through POST /paymentCancellations is
 * not repeated either. */
#include <limits.h>
#include <stdio.h>

#include "bus.h"
#include "events.h"
#include "log.h"
#include "payment.h"
#include "rep.h"

static int on_order_cancelled(store *st, const json_t *event, const char *request_id, void *arg,
                              char *err, size_t errlen)
{
    (void)arg;
    event_order_cancelled e;
    if (event_order_cancelled_read(event, &e, err, errlen) < 0)
        return -1;
    long long order_id = e.id;

    payment_cancellation c;
    switch (payment_refund(st, order_id, request_id, true, &c)) {
    case REFUND_CREATED:
        log_info("req=%s msg=\"payment cancelled on OrderCancelled\" order=%lld cancellation=%lld "
                 "status=%s amount=%lld", request_id ? request_id : "-", order_id, c.id, c.status,
                 c.amount);
        return 0;
    case REFUND_EXISTING:
        return 0;
    case REFUND_FAILED:
        break;
    }
    snprintf(err, errlen, "refund of order %lld could not be stored", order_id);
    return -1;
}

void payment_policy_register(bus *b)
{
    bus_on(b, EVENT_ORDER_CANCELLED, on_order_cancelled, NULL);
}
