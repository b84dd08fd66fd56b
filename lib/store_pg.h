/* store_pg.h: a store on PostgreSQL (libpq), for the services' store_pg.c.
 *
 * A PostgreSQL store is one connection, used by one thread at a time: the
 * database threads of lib/db.c each own one, and the bus's relay another.
 * It is a `store` like an SQLite one (store.h): store_begin, store_commit,
 * store_rollback, store_exec, store_ready and store_close work on both, so
 * the domain code and the bus never ask which backend they run on; only a
 * service's store_pg.c (its SQL in PostgreSQL's dialect) uses the helpers
 * below.
 *
 * Guarantees:
 *  - synchronous_commit is on for every connection (set at connect, whatever
 *    the server's default): COMMIT returns once the WAL is flushed, so an
 *    answer sent after it never reports a change a crash can lose.
 *    PostgreSQL's own group commit shares the flushes; lib/durable.c is not
 *    used on this backend.
 *  - Transactions are SERIALIZABLE. The domain's rules were written for
 *    SQLite's single writer ("charge only if no payment exists"); under
 *    SERIALIZABLE, PostgreSQL makes concurrent transactions behave as if run
 *    one after another, and refuses one of two that conflict with
 *    SQLSTATE 40001 instead. The store marks that (store_should_retry) and
 *    lib/db.c runs the whole unit of work again.
 *  - Every statement has a deadline (DB_STATEMENT_TIMEOUT_MS, default 5000):
 *    PostgreSQL cancels a statement that runs longer (57014), and the store
 *    reports the database unavailable (store_unavailable), which handlers
 *    answer with 503.
 *  - A connection lost (PostgreSQL restarted, network cut) is re-opened at
 *    the next BEGIN; the failed unit of work reports unavailable.
 *  - Statements are prepared once per connection, cached by SQL text (as
 *    store_prepare does for SQLite), and prepared again after a reconnect.
 *
 * Parameters are passed as text (PostgreSQL converts them with the column's
 * type); store_pg_int formats an integer parameter. */
#ifndef CARSHARE_STORE_PG_H
#define CARSHARE_STORE_PG_H

#include <stdbool.h>
#include <stddef.h>
#include <libpq-fe.h>

#include "store.h"

/* Connects to `url` (a postgres:// URL), named by `setting` in every
 * message (the environment variable it came from). With `migrations`
 * (NULL-terminated, or NULL for none), applies the platform's tables and
 * then the service's scripts under an advisory lock (two processes starting
 * at once apply each script once). Returns NULL (logged) on failure. */
store *store_pg_open(const char *url, const char *setting, const char *service,
                     const char *const *migrations);

/* Runs sql (cached as a prepared statement) with `n` text parameters
 * (NULL = SQL NULL). Returns the result (PGRES_TUPLES_OK or
 * PGRES_COMMAND_OK; PQclear it), or NULL on error: logged with `what`,
 * unavailable/retry marked. */
PGresult *store_pg_query(store *st, const char *sql, int n, const char *const *params,
                         const char *what);

/* store_pg_query for a statement without rows: the number of rows it
 * changed, or -1 on error. */
long long store_pg_command(store *st, const char *sql, int n, const char *const *params,
                           const char *what);

/* One integer from column 0 of row 0 of sql (a COUNT): the value, or -1. */
long long store_pg_one_int(store *st, const char *sql, int n, const char *const *params,
                           const char *what);

/* Formats v into buf (24 bytes) and returns buf: an integer parameter. */
const char *store_pg_int(char buf[24], long long v);

/* Reading a result: the integer (0 when NULL) or the text (copied into buf,
 * "" when NULL, truncated to size) of row r, column c. */
long long store_pg_get_int(const PGresult *res, int r, int c);
void store_pg_get_text(const PGresult *res, int r, int c, char *buf, size_t size);

/* True when the last failure was the database being unreachable or too slow
 * (connection lost, statement cancelled at its deadline): answer 503. */
bool store_unavailable(const store *st);

/* True when the last failure was a serialization conflict (40001, 40P01):
 * the unit of work may simply be run again. */
bool store_should_retry(const store *st);

/* Clears both marks before a unit of work. */
void store_clear_failure(store *st);

/* Sleeps before rerun number `attempt` (0, 1, ...) of a transaction that
 * lost a serialization conflict: 0.2 ms doubling up to 50 ms, times a
 * random 0.5-1.5. The transactions that conflict are the ones running
 * together (two database threads, two replicas), so fixed pauses would
 * rerun them together again. Any thread (the draw is per thread). */
void store_pg_pause_before_rerun(long attempt);

/* Which session the connection is in: a number that changes when the
 * connection is re-opened (everything tied to the old session, such as
 * advisory locks and LISTENs, is gone then). */
unsigned long store_pg_session(const store *st);

/* Which transaction is open on st: a number no other transaction of the
 * process had or will have (0 outside one that store_begin opened, and on
 * SQLite). For what may be read once per transaction (a SERIALIZABLE one
 * sees one snapshot throughout). */
unsigned long store_pg_transaction(const store *st);

/* pg_try_advisory_lock(key), a session-level lock (outside or inside a
 * transaction): true when this session holds it now. It is held until the
 * session ends (the connection closes or breaks, the process dies); taking
 * it again in the same session just stacks it. */
bool store_pg_try_lock(store *st, long long key);

/* From now on, connections under way and to come give up at once (a
 * service that is stopping must not wait seconds for a connect). */
void store_pg_abandon_connects(void);

/* The URL with its password replaced by "***", for logs. */
void store_pg_redact(const char *url, char *buf, size_t size);

#endif
