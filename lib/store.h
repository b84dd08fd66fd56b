/* store.h: a service's SQLite database.
 *
 * One database file per service, in WAL mode with synchronous=FULL: an
 * acknowledged commit survives a crash or power loss, and readers never
 * block the writer. Schema changes are migrations: an array of SQL scripts,
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
int store_commit(store *st);
void store_rollback(store *st);

/* Called on the store's thread after every successful store_commit (the
 * bus uses it to wake its outbox relay at once). One hook per store. */
void store_on_commit(store *st, void (*fn)(void *arg), void *arg);

/* A cached, reset statement for sql, or NULL (logged) on error. */
sqlite3_stmt *store_prepare(store *st, const char *sql);

/* Runs SQL without results (several statements allowed). */
int store_exec(store *st, const char *sql);

/* Last error message of the connection. */
const char *store_error(store *st);

#endif
