/* domain.c: delivery's rules, with no I/O.
 *
 * The one real decision is when to ship. Shipping needs both halves of a
 * rental: the Ordered event proves order accepted it (an intake that was
 * voided after its payment never publishes Ordered) and the Paid event gives
 * the payment the delivery refers to. The two arrive through independent
 * outboxes, in either order, so the rule is evaluated after each of them;
 * whichever comes second triggers the shipment. A recorded cancellation, or
 * an existing delivery, makes the answer "no" for ever: that is what keeps a
 * cancelled order from being shipped when its Paid arrives late, and what
 * makes a redelivered event ship nothing twice. */
#include "delivery.h"

#include <string.h>
#include "events.h"

bool delivery_should_ship(const order_facts *f)
{
    return f->ordered && f->paid && !f->cancelled && !f->has_delivery;
}

const char *delivery_event_type(const delivery *d)
{
    return strcmp(d->status, DELIVERY_CANCELLED) == 0 ? EVENT_DELIVERY_CANCELED : EVENT_SHIPPED;
}

event_delivery delivery_event(const delivery *d)
{
    return (event_delivery){ .id = d->id, .order_id = d->order_id,
                             .payment_id = d->payment_id, .status = d->status };
}
