/* store.h: a service's SQLite database.
 *
 * One database file per service, in WAL mode with synchronous=FULL (or
 * group commit, below): an acknowledged commit survives a crash or power
 * loss, and readers never block the writer. Schema changes are migrations: an array of SQL scripts,
 * script i bringing the schema to version i+1 (PRAGMA user_version); each is
 * applied once, in its own transaction, at open. The platform's own tables
 * (outbox, processed events, dead letters: see bus.h) are created by
 * store_open as well, before the service's migrations.
 *
 * A store is used from one thread. Worker threads (the bus relay) open their
 * own connection to the same file with store_open_path(..., NULL).
 * Statements are cached by SQL text: store_prepare returns a reset
 * statement with cleared bindings, owned by the store.
 *
 * Services never put SQL outside their store.c: their domain code calls
 * functions like order_store_insert(), so that another database (PostgreSQL)
 * replaces store.c without touching the domain. */
#ifndef CARSHARE_STORE_H
#define CARSHARE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <sqlite3.h>

typedef struct store store;

/* Opens (creating) the database at `path` and applies the platform tables
 * and `migrations` (NULL-terminated; NULL = none). Logs and returns NULL on
 * failure. */
store *store_open_path(const char *path, const char *const *migrations);

/* Same, with the file DB_PATH or else <DATA_DIR>/<service>.db. */
store *store_open(const char *service_name, const char *const *migrations);

void store_close(store *st);
sqlite3 *store_db(store *st);
const char *store_path(const store *st);
bool store_ready(void *st);   /* a service_check: the database answers */

/* BEGIN IMMEDIATE (take the write lock now, so a transaction never fails
 * halfway on SQLITE_BUSY), COMMIT, ROLLBACK. Return SQLITE_OK or the error. */
int store_begin(store *st);
/* A transaction whose rule is held by row locks and guarded statements
 * alone (an UPDATE ... WHERE <the rule still holds>, a unique constraint),
 * never by what an earlier read saw. SQLite: store_begin. PostgreSQL: READ
 * COMMITTED instead of SERIALIZABLE, so that a writer that finds the row
 * changed by a concurrent commit waits for it and checks its guard against
 * the latest version, instead of being refused (40001) and run again: a
 * hot row (the last cars of a day) is then a queue, not a retry storm. */
int store_begin_locking(store *st);
int store_commit(store *st);
void store_rollback(store *st);

/* Called on the store's thread after every successful store_commit (the
 * bus uses it to wake its outbox relay at once). One hook per store. */
void store_on_commit(store *st, void (*fn)(void *arg), void *arg);

/* Group commit for the store of a service's loop (see durable.h): from now
 * on its commits return before they are on disk, and the HTTP answers,
 * outgoing calls, event acks and publishes that follow them wait for the
 * sync thread's next fsync. One store per process; `base` must be the
 * loop's, thread-aware. store_close makes the last commits durable.
 * Returns 0, or -1 (logged; the store keeps syncing at every commit). */
struct event_base;
int store_group_commit(store *st, struct event_base *base);

/* A cached, reset statement for sql, or NULL (logged) on error. */
sqlite3_stmt *store_prepare(store *st, const char *sql);

/* Runs SQL without results (several statements allowed). */
int store_exec(store *st, const char *sql);

/* Last error message of the connection. */
const char *store_error(store *st);

/* True between store_begin and store_commit/store_rollback. */
bool store_in_transaction(store *st);

/* True for a PostgreSQL store (store_pg.h): a service's store.c hands such
 * a store to its store_pg.c. The domain never asks. */
bool store_is_pg(const store *st);

/* ---- reading rows ----
 * The small loops every store.c would otherwise write again. Each one
 * resets the statement when it is done with it (at the end of the rows, on
 * error, or after the one row it wanted), so no read snapshot stays open
 * across the caller's COMMIT. Errors are logged with `what` (the purpose,
 * e.g. "car read") and the database's path. */

/* Copies text column `col` of the current row into buf (`size` bytes, NUL
 * terminated, truncated if longer); NULL reads as "". */
void store_column_text(sqlite3_stmt *s, int col, char *buf, size_t size);

/* Turns the current row of a statement into *row (a car, a payment ...):
 * 0, or -1 when the row cannot be read (the reader logs why). */
typedef int (*store_row_reader)(sqlite3_stmt *s, void *row);

/* Steps s to its next row: 1 and the row read into *row (s stays on it);
 * 0 at the end of the rows; -1 on error or when read failed. On 0 and -1
 * s is reset. The loop of a list:
 *     while ((rc = store_next_row(st, s, read_car, &c, "car list")) > 0)
 *         each(&c, arg);
 *     return rc; */
int store_next_row(store *st, sqlite3_stmt *s, store_row_reader read, void *row,
                   const char *what);

/* Steps s, a SELECT of at most one row: 1 and the row read into *row, 0
 * when there is none, -1 on error or when read failed. Resets s. */
int store_one_row(store *st, sqlite3_stmt *s, store_row_reader read, void *row,
                  const char *what);

/* Steps s, a SELECT of one row whose first column is an integer (a COUNT):
 * that value, or -1 on error. Resets s. */
long long store_one_int(store *st, sqlite3_stmt *s, const char *what);

/* store_one_row for the common case: prepares sql, a SELECT of at most one
 * row by its one integer parameter (an id, an order id), bound to `key`.
 * Also -1 when sql cannot be prepared. */
int store_find_one(store *st, const char *sql, long long key, store_row_reader read, void *row,
                   const char *what);

#endif
