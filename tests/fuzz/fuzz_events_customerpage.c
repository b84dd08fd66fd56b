/* fuzz_events_customerpage: the read model's consumer (every rental event)
 * under hostile events; the driver and its checks are in fuzz_events.h. */
#include "customerpage.h"
#include "fuzz_events.h"

static customerpage_app fz_app;

static store *fuzz_open_store(const char *path)
{
    return store_open_path(path, customerpage_migrations);
}
static void fuzz_register(bus *b, store *st)
{
    fz_app = (customerpage_app){ .st = st, .bus = b };
    customerpage_policy_register(&fz_app);
}
