/* store.c: all of account's SQL.
 *
 * Tables:
 *   accounts          one row per customerId (the PRIMARY KEY makes "409 when
 *                     the id is taken" hold even for two sign-ups racing);
 *                     the Argon2id hash string carries its own salt and
 *                     parameters, so a later change of limits needs no
 *                     migration.
 *   sign_in_failures  one row per failed (or still running) sign-in attempt:
 *                     the throttle's memory. Rows older than the window are
 *                     pruned; unknown ids get rows too, so the answers for
 *                     them cannot differ from those for real ones.
 * Statements are reset after use (no read stays open across a COMMIT);
 * errors are logged with the statement's purpose and reported as -1.
 *
 * The same functions on PostgreSQL are in store_pg.c: each function here
 * hands a PostgreSQL store over to its twin, so domain.c and api.c never
 * ask which backend they run on. */
#include "account.h"

#include <stdio.h>
#include <string.h>
#include "log.h"

static const char *const account_migrations[] = {
    "CREATE TABLE accounts ("
    "  customer_id   TEXT PRIMARY KEY,"
    "  name          TEXT NOT NULL DEFAULT '',"
    "  role          TEXT NOT NULL,"
    "  password_hash TEXT NOT NULL,"
    "  created_at    TEXT NOT NULL);"
    "CREATE TABLE sign_in_failures ("
    "  id          INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  customer_id TEXT NOT NULL,"
    "  at          INTEGER NOT NULL);"
    "CREATE INDEX sign_in_failures_by_id ON sign_in_failures (customer_id, at);",
    NULL
};

const db_schema account_schema = {account_migrations, account_pg_migrations};

store *account_store_open_path(const char *path)
{
    return store_open_path(path, account_migrations);
}

static int fail(store *st, sqlite3_stmt *s, const char *what)
{
    log_error("msg=\"account store: %s failed\" sqlite=\"%s\"", what, store_error(st));
    if (s)
        sqlite3_reset(s);
    return -1;
}

/* ---- accounts ---- */

int account_store_insert(store *st, account *a)
{
    if (store_is_pg(st))
        return account_pg_insert(st, a);
    sqlite3_stmt *s = store_prepare(st,
        "INSERT INTO accounts (customer_id, name, role, password_hash, created_at)"
        " VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (customer_id) DO NOTHING");
    if (!s)
        return -1;
    log_utc_now(a->created_at, false);
    sqlite3_bind_text(s, 1, a->customer_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 2, a->name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 3, token_role_name(a->role), -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 4, a->password_hash, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 5, a->created_at, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(s) != SQLITE_DONE)
        return fail(st, s, "account insert");
    sqlite3_reset(s);
    return sqlite3_changes(store_db(st)) == 1 ? 1 : 0;
}

static int read_account(sqlite3_stmt *s, void *row)
{
    account *a = row;
    char role[16];
    store_column_text(s, 0, a->customer_id, sizeof a->customer_id);
    store_column_text(s, 1, a->name, sizeof a->name);
    store_column_text(s, 2, role, sizeof role);
    store_column_text(s, 3, a->password_hash, sizeof a->password_hash);
    store_column_text(s, 4, a->created_at, sizeof a->created_at);
    if (!token_role_parse(role, &a->role)) {
        log_error("msg=\"account with an unknown role\" role=\"%s\"", role);
        return -1;
    }
    return 0;
}

int account_store_get(store *st, const char *customer_id, account *out)
{
    if (store_is_pg(st))
        return account_pg_get(st, customer_id, out);
    sqlite3_stmt *s = store_prepare(st,
        "SELECT customer_id, name, role, password_hash, created_at FROM accounts"
        " WHERE customer_id = ?1");
    if (!s)
        return -1;
    sqlite3_bind_text(s, 1, customer_id, -1, SQLITE_TRANSIENT);
    return store_one_row(st, s, read_account, out, "account read");
}

/* ---- failed sign-ins ---- */

static int read_time(sqlite3_stmt *s, void *row)
{
    *(long long *)row = sqlite3_column_int64(s, 0);
    return 0;
}

int failure_store_recent(store *st, const char *customer_id, long long since, long long *out,
                         int max)
{
    if (store_is_pg(st))
        return failure_pg_recent(st, customer_id, since, out, max);
    sqlite3_stmt *s = store_prepare(st,
        "SELECT at FROM sign_in_failures WHERE customer_id = ?1 AND at > ?2"
        " ORDER BY at, id LIMIT ?3");
    if (!s)
        return -1;
    sqlite3_bind_text(s, 1, customer_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 2, since);
    sqlite3_bind_int(s, 3, max);
    int n = 0, rc;
    long long at;
    while ((rc = store_next_row(st, s, read_time, &at, "sign-in failures read")) > 0)
        out[n++] = at;
    return rc < 0 ? -1 : n;
}

int failure_store_add(store *st, const char *customer_id, long long at, long long *id)
{
    if (store_is_pg(st))
        return failure_pg_add(st, customer_id, at, id);
    sqlite3_stmt *s = store_prepare(st,
        "INSERT INTO sign_in_failures (customer_id, at) VALUES (?1, ?2)");
    if (!s)
        return -1;
    sqlite3_bind_text(s, 1, customer_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 2, at);
    if (sqlite3_step(s) != SQLITE_DONE)
        return fail(st, s, "sign-in failure insert");
    sqlite3_reset(s);
    *id = sqlite3_last_insert_rowid(store_db(st));
    return 0;
}

int failure_store_forgive(store *st, long long id)
{
    if (store_is_pg(st))
        return failure_pg_forgive(st, id);
    sqlite3_stmt *s = store_prepare(st, "DELETE FROM sign_in_failures WHERE id = ?1");
    if (!s)
        return -1;
    sqlite3_bind_int64(s, 1, id);
    if (sqlite3_step(s) != SQLITE_DONE)
        return fail(st, s, "sign-in failure delete");
    sqlite3_reset(s);
    return 0;
}

int failure_store_prune(store *st, long long before)
{
    if (store_is_pg(st))
        return failure_pg_prune(st, before);
    sqlite3_stmt *s = store_prepare(st, "DELETE FROM sign_in_failures WHERE at <= ?1");
    if (!s)
        return -1;
    sqlite3_bind_int64(s, 1, before);
    if (sqlite3_step(s) != SQLITE_DONE)
        return fail(st, s, "sign-in failure prune");
    sqlite3_reset(s);
    return 0;
}
