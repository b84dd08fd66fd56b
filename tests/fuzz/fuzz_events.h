/* fuzz_events.h: one service's consumer, driven by hostile event streams.
 *
 * A fuzz_events_<service>.c defines fuzz_open_store() and fuzz_register()
 * and includes this. The input is a stream of event texts, one per line,
 * each decoded as the bus decodes a message (jtext_load, an object with a
 * valid eventType and a plain eventId) and given to the handler the service
 * registered for its type, inside a savepoint of one transaction; a failed
 * handler is rolled back to the savepoint (the bus rolls its transaction
 * back and applies the other events again without it: the same rows for
 * every event, which a savepoint gets here without the rerun). Several
 * lines let the fuzzer build sequences (Ordered, Paid, OrderCancelled ...)
 * against the same rows.
 *
 * Checks beyond "no crash, no sanitizer report":
 *  - a handler that succeeded, given the same fact again under another
 *    eventId, succeeds and adds no event to the outbox (handlers are
 *    idempotent on their own, bus.h and each policy.c);
 *  - a handler that failed left nothing (its savepoint is undone, so the
 *    outbox row count is unchanged).
 * The transaction is rolled back after each input, so every input starts
 * from the same empty database, a file on /dev/shm (WAL needs a file;
 * memory-backed all the same) removed at exit.
 *
 * The handlers are the ones the service's own registration function gives
 * the bus: the target links with -Wl,--wrap=bus_on (tests/fuzz/CMakeLists),
 * so bus_on lands in __wrap_bus_on below, which keeps the table. */
#ifndef CARSHARE_FUZZ_EVENTS_H
#define CARSHARE_FUZZ_EVENTS_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus.h"
#include "jtext.h"
#include "store.h"

static store *fuzz_open_store(const char *path);
static void fuzz_register(bus *b, store *st);

/* lib/bus.c: the event types a subject may carry. */
bool bus_valid_event_type(const char *t);

struct fz_handler {
    const char *event_type;
    bus_handler fn;
    void *arg;
};

static store *fz_store;
static struct fz_handler fz_handlers[16];
static size_t fz_nhandlers;
static char fz_path[128];

void __wrap_bus_on(bus *b, const char *event_type, bus_handler h, void *arg);
void __wrap_bus_on(bus *b, const char *event_type, bus_handler h, void *arg)
{
    (void)b;
    if (fz_nhandlers == sizeof fz_handlers / sizeof fz_handlers[0])
        abort();
    fz_handlers[fz_nhandlers++] = (struct fz_handler){ event_type, h, arg };
}

static void fz_remove_files(void)
{
    char p[160];
    unlink(fz_path);
    snprintf(p, sizeof p, "%s-wal", fz_path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", fz_path);
    unlink(p);
}

static void fz_fail(const char *what, const char *line, size_t len)
{
    fprintf(stderr, "fuzz_events: %s: %.*s\n", what, (int)(len > 300 ? 300 : len), line);
    abort();
}

static void fz_setup(void)
{
    snprintf(fz_path, sizeof fz_path, "/dev/shm/carshare-fuzz-%ld.db", (long)getpid());
    fz_remove_files();
    atexit(fz_remove_files);
    fz_store = fuzz_open_store(fz_path);
    if (!fz_store) {
        fprintf(stderr, "fuzz_events: cannot open %s\n", fz_path);
        exit(1);
    }
    fuzz_register(NULL, fz_store);
    if (fz_nhandlers == 0)
        abort();
}

/* The statements of every input come from the store's cache (prepared
 * once): parsing them again per input was a good part of an exec. */
static long long fz_outbox_rows(void)
{
    sqlite3_stmt *s = store_prepare(fz_store, "SELECT COUNT(*) FROM outbox");
    long long n = s && sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : -1;
    if (s) sqlite3_reset(s);
    return n;
}

static int fz_step(const char *sql)
{
    sqlite3_stmt *s = store_prepare(fz_store, sql);
    int rc = s ? sqlite3_step(s) : SQLITE_ERROR;
    if (s) sqlite3_reset(s);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static const struct fz_handler *fz_handler(const char *type)
{
    for (size_t i = 0; i < fz_nhandlers; i++)
        if (strcmp(fz_handlers[i].event_type, type) == 0)
            return &fz_handlers[i];
    return NULL;
}

/* One handler call in its own savepoint. 0 or -1. */
static int fz_apply(const struct fz_handler *h, const json_t *event)
{
    char err[256] = "";
    fz_step("SAVEPOINT fuzz_event");
    int rc = h->fn(fz_store, event, "fuzz-request", h->arg, err, sizeof err);
    if (rc != 0)
        fz_step("ROLLBACK TO fuzz_event");
    fz_step("RELEASE fuzz_event");
    return rc;
}

static void fz_event(const char *line, size_t len)
{
    json_t *event = jtext_load(line, len);
    const char *type = json_string_value(json_object_get(event, "eventType"));
    const char *id = json_string_value(json_object_get(event, "eventId"));
    const struct fz_handler *h = json_is_object(event) && bus_valid_event_type(type) && id
                                  ? fz_handler(type) : NULL;
    if (h) {
        long long before = fz_outbox_rows();
        int rc = fz_apply(h, event);
        long long after = fz_outbox_rows();
        if (rc != 0 && after != before)
            fz_fail("a failed handler left events in the outbox", line, len);
        if (rc == 0) {
            json_t *again = json_deep_copy(event);
            json_object_set_new(again, "eventId", json_string("fuzz-redelivered"));
            if (fz_apply(h, again) != 0)
                fz_fail("the same fact failed the second time", line, len);
            if (fz_outbox_rows() != after)
                fz_fail("the same fact published again", line, len);
            json_decref(again);
        }
    }
    json_decref(event);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!fz_store)
        fz_setup();
    if (fz_step("BEGIN") != SQLITE_OK)
        abort();
    const char *p = (const char *)data, *end = p + size;
    for (int n = 0; p < end && n < 16; n++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        fz_event(p, len);
        p += len + 1;
    }
    fz_step("ROLLBACK");
    return 0;
}

#endif
