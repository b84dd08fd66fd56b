/* fuzz_events_payment: payment's consumer (OrderCancelled: the refund)
 * under hostile events; the driver and its checks are in fuzz_events.h. */
#include "payment.h"
#include "fuzz_events.h"

static store *fuzz_open_store(const char *path) { return payment_store_open_path(path); }
static void fuzz_register(bus *b, store *st) { (void)st; payment_policy_register(b); }
