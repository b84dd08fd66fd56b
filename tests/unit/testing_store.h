/* testing_store.h: the store a unit test works on: a fresh one in a
 * temporary directory, and reading back what the code under test wrote to
 * it: a count, and the events it put in the outbox (bus.h), which is where
 * a unit test without NATS finds what would be published.
 *
 * Statements are prepared and finalized here, not taken from the store's
 * cache, so that a test's queries leave the store as the code left it.
 * And for the PostgreSQL twins: units of work raced on the pool's
 * connections at once (race_units). Include after testing.h. */
#ifndef CARSHARE_TESTING_STORE_H
#define CARSHARE_TESTING_STORE_H

#include <stdlib.h>
#include <event2/event.h>
#include <jansson.h>
#include "db.h"
#include "store.h"
#include "store_pg.h"

/* Opens <name>.db with these migrations in a new temporary directory
 * (temp_dir_make), whose path is written into dir (of `size` bytes; the
 * caller removes it with temp_dir_remove). NULL, with the reason printed,
 * on failure. */
static inline store *temp_store_open(char *dir, size_t size, const char *name,
                                     const char *const *migrations)
{
    char path[160];
    if (!temp_dir_make(dir, size, name))
        return NULL;
    snprintf(path, sizeof path, "%s/%s.db", dir, name);
    store *st = store_open_path(path, migrations);
    if (!st)
        fprintf(stderr, "cannot open %s\n", path);
    return st;
}

/* The single integer a query such as SELECT COUNT(*) answers, or -1 (on
 * either backend: the SQL must then be in both dialects). */
static inline long long count(store *st, const char *sql)
{
    if (store_is_pg(st))
        return store_pg_one_int(st, sql, 0, NULL, "test count");
    sqlite3_stmt *s;
    long long n = -1;
    if (sqlite3_prepare_v2(store_db(st), sql, -1, &s, NULL) != SQLITE_OK) {
        fprintf(stderr, "cannot run %s: %s\n", sql, store_error(st));
        return -1;
    }
    if (sqlite3_step(s) == SQLITE_ROW)
        n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return n;
}

#define OUTBOX_OF_ORDER "FROM outbox WHERE event_type = ?1 " \
                        "AND json_extract(payload, '$.orderId') = ?2"

/* How many events of that type about that order are in the outbox, or -1. */
static inline long long outbox_count(store *st, const char *type, long long order_id)
{
    sqlite3_stmt *s;
    long long n = -1;
    if (sqlite3_prepare_v2(store_db(st), "SELECT COUNT(*) " OUTBOX_OF_ORDER, -1, &s, NULL)
        != SQLITE_OK)
        return -1;
    sqlite3_bind_text(s, 1, type, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, order_id);
    if (sqlite3_step(s) == SQLITE_ROW)
        n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return n;
}

/* The first event of that type about that order in the outbox, parsed
 * (the caller decrefs), or NULL. */
static inline json_t *outbox_event(store *st, const char *type, long long order_id)
{
    sqlite3_stmt *s;
    json_t *e = NULL;
    if (sqlite3_prepare_v2(store_db(st), "SELECT payload " OUTBOX_OF_ORDER " ORDER BY seq LIMIT 1",
                           -1, &s, NULL) != SQLITE_OK)
        return NULL;
    sqlite3_bind_text(s, 1, type, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, order_id);
    if (sqlite3_step(s) == SQLITE_ROW)
        e = json_loads((const char *)sqlite3_column_text(s, 0), 0, NULL);
    sqlite3_finalize(s);
    return e;
}

/* One unit of work of a race: the item it works on, and how it ended. */
typedef struct {
    void *item;
    db_work_fn work;
    db_status status;
    int *finished, total;
    struct event_base *base;
} race_unit;

static inline void race_unit_work(store *st, void *arg)
{
    race_unit *u = arg;
    u->work(st, u->item);
}

static inline void race_unit_done(void *arg, db_status status)
{
    race_unit *u = arg;
    u->status = status;
    if (++*u->finished == u->total)
        event_base_loopbreak(u->base);
}

/* Runs work(st, item) for each of the n items (`size` bytes each, from
 * items) as units of work at once on d's database threads, and the loop
 * until every one ended; each must end DB_DONE (a serialization conflict's
 * loser is run again by lib/db.c). race(base, d, array, n, work) for an
 * array of items. */
static inline void race_units(struct event_base *base, db *d, void *items, size_t size, int n,
                              db_work_fn work)
{
    race_unit *u = calloc((size_t)n, sizeof *u);
    int finished = 0;
    for (int i = 0; i < n; i++) {
        u[i] = (race_unit){.item = (char *)items + (size_t)i * size, .work = work,
                           .finished = &finished, .total = n, .base = base};
        CHECK(db_run(d, race_unit_work, race_unit_done, &u[i]));
    }
    event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY);
    CHECK_INT(finished, n);
    for (int i = 0; i < n; i++)
        CHECK_INT(u[i].status, DB_DONE);
    free(u);
}
#define race(base, d, items, n, work) race_units(base, d, items, sizeof *(items), n, work)

#endif
