/* store_pg.c: account's SQL in PostgreSQL's dialect (see store.c, whose
 * functions call these when the store is a PostgreSQL one, and
 * lib/store_pg.h).
 *
 * The same two tables and rules as the SQLite schema: one account per
 * customerId (the PRIMARY KEY decides two sign-ups racing for one id, ON
 * CONFLICT DO NOTHING reports the loser as "taken"), and one row per failed
 * (or still running) sign-in attempt, ids never reused (BIGSERIAL).
 * Timestamps of accounts are the same ISO 8601 text as SQLite's, written by
 * the program, so that answers are identical on both backends; a failure's
 * time is seconds since the epoch, as there.
 *
 * Sign-in's throttle reads the failures of one id and adds one in a single
 * SERIALIZABLE transaction (domain.c): two attempts for the same id on two
 * database threads conflict on the index range read, and the loser is run
 * again (lib/db.c), so parallel guesses cannot both pass a limit of five. */
#include <stdio.h>
#include <string.h>

#include "account.h"
#include "log.h"
#include "store_pg.h"

const char *const account_pg_migrations[] = {
    /* 1 */
    "CREATE TABLE accounts ("
    "  customer_id   TEXT PRIMARY KEY,"
    "  name          TEXT NOT NULL DEFAULT '',"
    "  role          TEXT NOT NULL,"
    "  password_hash TEXT NOT NULL,"
    "  created_at    TEXT NOT NULL);"
    "CREATE TABLE sign_in_failures ("
    "  id          BIGSERIAL PRIMARY KEY,"
    "  customer_id TEXT NOT NULL,"
    "  at          BIGINT NOT NULL);"
    "CREATE INDEX sign_in_failures_by_id ON sign_in_failures (customer_id, at);",
    NULL
};

/* ---- accounts ---- */

int account_pg_insert(store *st, account *a)
{
    log_utc_now(a->created_at, false);
    const char *v[] = {a->customer_id, a->name, token_role_name(a->role), a->password_hash,
                       a->created_at};
    long long n = store_pg_command(st,
        "INSERT INTO accounts (customer_id, name, role, password_hash, created_at)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (customer_id) DO NOTHING", 5, v,
        "account insert");
    return n < 0 ? -1 : n == 1 ? 1 : 0;
}

int account_pg_get(store *st, const char *customer_id, account *out)
{
    const char *v[] = {customer_id};
    PGresult *r = store_pg_query(st,
        "SELECT customer_id, name, role, password_hash, created_at FROM accounts"
        " WHERE customer_id = $1", 1, v, "account read");
    if (!r) return -1;
    int found = PQntuples(r) > 0;
    if (found) {
        char role[16];
        store_pg_get_text(r, 0, 0, out->customer_id, sizeof out->customer_id);
        store_pg_get_text(r, 0, 1, out->name, sizeof out->name);
        store_pg_get_text(r, 0, 2, role, sizeof role);
        store_pg_get_text(r, 0, 3, out->password_hash, sizeof out->password_hash);
        store_pg_get_text(r, 0, 4, out->created_at, sizeof out->created_at);
        if (!token_role_parse(role, &out->role)) {
            log_error("msg=\"account with an unknown role\" role=\"%s\"", role);
            found = -1;
        }
    }
    PQclear(r);
    return found;
}

/* ---- failed sign-ins ---- */

int failure_pg_recent(store *st, const char *customer_id, long long since, long long *out,
                      int max)
{
    char s[24], m[24];
    const char *v[] = {customer_id, store_pg_int(s, since), store_pg_int(m, max)};
    PGresult *r = store_pg_query(st,
        "SELECT at FROM sign_in_failures WHERE customer_id = $1 AND at > $2"
        " ORDER BY at, id LIMIT $3", 3, v, "sign-in failures read");
    if (!r) return -1;
    int n = PQntuples(r);
    for (int i = 0; i < n; i++) out[i] = store_pg_get_int(r, i, 0);
    PQclear(r);
    return n;
}

int failure_pg_add(store *st, const char *customer_id, long long at, long long *id)
{
    char a[24];
    const char *v[] = {customer_id, store_pg_int(a, at)};
    PGresult *r = store_pg_query(st,
        "INSERT INTO sign_in_failures (customer_id, at) VALUES ($1, $2) RETURNING id", 2, v,
        "sign-in failure insert");
    if (!r) return -1;
    *id = store_pg_get_int(r, 0, 0);
    PQclear(r);
    return 0;
}

int failure_pg_forgive(store *st, long long id)
{
    char k[24];
    const char *v[] = {store_pg_int(k, id)};
    return store_pg_command(st, "DELETE FROM sign_in_failures WHERE id = $1", 1, v,
                            "sign-in failure delete") < 0 ? -1 : 0;
}

int failure_pg_prune(store *st, long long before)
{
    char b[24];
    const char *v[] = {store_pg_int(b, before)};
    return store_pg_command(st, "DELETE FROM sign_in_failures WHERE at <= $1", 1, v,
                            "sign-in failure prune") < 0 ? -1 : 0;
}
