/* fuzz_events_order: order's consumer (Shipped) under hostile events;
 * the driver and its checks are in fuzz_events.h. */
#include "order.h"
#include "fuzz_events.h"

static store *fuzz_open_store(const char *path) { return order_store_open_path(path); }
static void fuzz_register(bus *b, store *st) { (void)st; order_policy_register(b); }
