/* fuzz_events_delivery: delivery's consumer (Ordered, Paid,
 * OrderCancelled) under hostile events; the driver and its checks are in
 * fuzz_events.h. */
#include "delivery.h"
#include "fuzz_events.h"

static store *fuzz_open_store(const char *path)
{
    return store_open_path(path, delivery_migrations);
}
static void fuzz_register(bus *b, store *st) { (void)st; delivery_policy_register(b); }
