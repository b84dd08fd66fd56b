/* db.h: a service's database, on SQLite or PostgreSQL, and where its units
 * of work run so that the event loop never waits on the network for it.
 *
 * Selection: <SERVICE>_DATABASE_URL (e.g. PAYMENT_DATABASE_URL), else
 * DATABASE_URL, a postgres:// or postgresql:// URL, puts the service on
 * PostgreSQL; without either it stays on its SQLite file (store.h: DB_PATH
 * or $DATA_DIR/<service>.db). A URL of another scheme, a wrong password, an
 * unreachable server or a missing database stops the service at start, with
 * a message naming the variable; so does a URL given to a service whose
 * store has no PostgreSQL version yet.
 *
 * A unit of work is a function that does one thing with the store (a
 * domain transaction, a read for an answer) and a function that uses its
 * result on the loop (sends the answer):
 *
 *   - SQLite: both run at once, on the loop, in db_run (a local file; group
 *     commit keeps the fsync off the loop, see durable.h).
 *   - PostgreSQL: `work` runs on one of DB_POOL_SIZE (default 4) database
 *     threads, each with its own connection, then `done` runs on the loop.
 *     Measured against libpq's pipeline mode on the loop (docs/DESIGN.md):
 *     this keeps every domain function one sequential transaction, the same
 *     code on both backends, for ~22 µs more client CPU per transaction.
 *
 * So `work` must touch only its own argument and the store it is given
 * (never the loop's objects: HTTP requests, timers), and may run more than
 * once: a transaction that PostgreSQL refused for a serialization conflict
 * (store_should_retry) is run again from the start, up to DB_RETRIES times
 * (after a pause that doubles, with jitter; still conflicting after that,
 * it is reported DB_UNAVAILABLE: a 503, "try again shortly").
 * `done` learns whether the database was there: DB_UNAVAILABLE when `work`
 * could not run (no connection) or failed because the database was
 * unreachable or too slow (a statement past DB_STATEMENT_TIMEOUT_MS): the
 * answer is then 503, whatever `work` left in its argument.
 *
 * Readiness (db_ready): SQLite answers a query; PostgreSQL's threads keep a
 * flag, set by each unit of work and by a ping every second while idle, so
 * /health/ready turns 503 while PostgreSQL is down and 200 again once a
 * connection is back, without a restart and without asking on the loop. */
#ifndef CARSHARE_DB_H
#define CARSHARE_DB_H

#include <stdbool.h>

#include "store.h"

struct event_base;
typedef struct db db;

/* A service's migrations, one list per backend (NULL-terminated; pg NULL =
 * not on PostgreSQL yet). Script i of each brings that schema to i+1. */
typedef struct db_schema {
    const char *const *sqlite;
    const char *const *pg;
} db_schema;

/* Opens the service's database as configured, applies the migrations, and
 * on PostgreSQL starts the database threads. `base` must be thread-aware.
 * Returns NULL (logged, naming the setting) on failure. */
db *db_open(struct event_base *base, const char *service, const db_schema *schema);

/* An SQLite database around a store already open (tests): db_close closes
 * the store too. NULL when out of memory. */
db *db_of_store(struct event_base *base, store *st);

/* Closes after the queued units of work have run (their `done` too). */
void db_close(db *d);

bool db_is_pg(const db *d);

/* SQLite: the loop's store (for the bus and group commit); PostgreSQL: a
 * store of its own for the caller's thread (main, before the loop starts),
 * used for start-up work such as the bus's setup. */
store *db_store(db *d);

/* A new connection to the same database for another thread (the bus's
 * relay): store_close it there. NULL (logged) on failure. */
store *db_connect(db *d);

typedef enum { DB_DONE, DB_UNAVAILABLE } db_status;
typedef void (*db_work_fn)(store *st, void *arg);
typedef void (*db_done_fn)(void *arg, db_status status);

/* Runs work(st, arg), then done(arg) on the loop. Returns true; false when
 * PostgreSQL's queue is full (DB_QUEUE_MAX, default 1024) or the database
 * is closing: then neither runs and the caller answers 503 itself. */
bool db_run(db *d, db_work_fn work, db_done_fn done, void *arg);

/* Runs fn(arg) on the committing thread after every commit on any of the
 * database's connections (the bus wakes its relay); fn NULL removes it.
 * Any thread. */
void db_on_commit(db *d, void (*fn)(void *arg), void *arg);

/* A service_check: the database answers (see above). */
bool db_ready(void *d);

#endif
