/* processed.c: the idempotent consumer's memory and the bus's bounds in a
 * service's database (processed.h says what and why). Pure store work: the
 * bus calls processed_upkeep from a timer on the loop (consumer.c; on
 * PostgreSQL as a unit of work on a database thread). Each function speaks
 * the dialect of the store it is given. */
#include "processed.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "log.h"
#include "metrics.h"
#include "store_pg.h"

#define PRUNE_CHUNK 1000    /* ids deleted per step: a few ms of work */

bool processed_seen(store *st, const char *event_id)
{
    if (store_is_pg(st))
        return store_pg_one_int(st, "SELECT count(*) FROM (SELECT 1 FROM processed_events"
                                    " WHERE event_id = $1 UNION ALL SELECT 1 FROM"
                                    " processed_events_previous WHERE event_id = $1) AS seen",
                                1, &event_id, "processed event read") > 0;
    sqlite3_stmt *s = store_prepare(st,
        "SELECT 1 FROM processed_events WHERE event_id = ?1"
        " UNION ALL SELECT 1 FROM processed_events_previous WHERE event_id = ?1 LIMIT 1");
    if (!s) return false;
    sqlite3_bind_text(s, 1, event_id, -1, SQLITE_STATIC);
    bool found = sqlite3_step(s) == SQLITE_ROW;
    sqlite3_reset(s);
    return found;
}

bool processed_mark(store *st, const char *event_id, const char *event_type)
{
    if (store_is_pg(st)) {
        char now[32];
        const char *p[] = {event_id, event_type, log_utc_now(now, true)};
        return store_pg_command(st, "INSERT INTO processed_events (event_id, event_type,"
                                    " processed_at) VALUES ($1, $2, $3)", 3, p,
                                "processed event insert") == 1;
    }
    sqlite3_stmt *s = store_prepare(st,
        "INSERT INTO processed_events (event_id, event_type, processed_at) VALUES (?, ?, ?)");
    if (!s) return false;
    char now[32];   /* bound, not the column's strftime() default: ~4,000 instructions */
    sqlite3_bind_text(s, 3, log_utc_now(now, true), -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 1, event_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, event_type, -1, SQLITE_STATIC);
    bool ok = sqlite3_step(s) == SQLITE_DONE;
    sqlite3_reset(s);
    return ok;
}

int processed_claim(store *st, const char *event_id, const char *event_type)
{
    char now[32];
    const char *p[] = {event_id, event_type, log_utc_now(now, true)};
    return (int)store_pg_command(st, "INSERT INTO processed_events (event_id, event_type,"
                                     " processed_at) SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1"
                                     " FROM processed_events_previous WHERE event_id = $1)"
                                     " ON CONFLICT (event_id) DO NOTHING", 3, p,
                                 "processed event claim");
}

/* A PostgreSQL text[] literal of n strings, each quoted, in one allocation
 * (free it); NULL when out of memory. */
static char *text_array(int n, const char *const *v)
{
    size_t len = 3;
    for (int i = 0; i < n; i++) len += 2 * strlen(v[i]) + 3;
    char *out = malloc(len), *p = out;
    if (!out) return NULL;
    *p++ = '{';
    for (int i = 0; i < n; i++) {
        if (i) *p++ = ',';
        *p++ = '"';
        for (const char *c = v[i]; *c; c++) {
            if (*c == '"' || *c == '\\') *p++ = '\\';
            *p++ = *c;
        }
        *p++ = '"';
    }
    *p++ = '}';
    *p = '\0';
    return out;
}

int processed_claim_all(store *st, int n, const char *const *ids, const char *const *types,
                        bool *claimed)
{
    for (int i = 0; i < n; i++) claimed[i] = false;
    if (n == 0) return 0;
    char now[32];
    char *id_list = text_array(n, ids), *type_list = text_array(n, types);
    const char *p[] = {id_list, type_list, log_utc_now(now, true)};
    /* Inserted in the list's order: of two equal ids the first is inserted
     * and the second meets it (DO NOTHING), so RETURNING names it once. */
    PGresult *r = id_list && type_list
        ? store_pg_query(st, "INSERT INTO processed_events (event_id, event_type, processed_at)"
                             " SELECT e.id, e.type, $3 FROM unnest($1::text[], $2::text[])"
                             " WITH ORDINALITY AS e(id, type, i) WHERE NOT EXISTS (SELECT 1 FROM"
                             " processed_events_previous p WHERE p.event_id = e.id) ORDER BY e.i"
                             " ON CONFLICT (event_id) DO NOTHING RETURNING event_id", 3, p,
                         "processed events claim")
        : NULL;
    free(id_list);
    free(type_list);
    if (!r) return -1;
    for (int row = 0; row < PQntuples(r); row++) {
        const char *id = PQgetvalue(r, row, 0);
        for (int i = 0; i < n; i++)
            if (strcmp(ids[i], id) == 0) {
                claimed[i] = true;
                break;
            }
    }
    PQclear(r);
    return 0;
}

/* Runs a statement with one integer parameter to its end. */
static bool run_with(store *st, const char *sql, long long arg)
{
    sqlite3_stmt *s = store_prepare(st, sql);
    if (!s) return false;
    sqlite3_bind_int64(s, 1, arg);
    bool ok = sqlite3_step(s) == SQLITE_DONE;
    sqlite3_reset(s);
    return ok;
}

/* Dead letters beyond the bound, oldest first. Rows dropped, or -1. */
static long long trim_dead_letters(store *st, long long max)
{
    return run_with(st, "DELETE FROM dead_letters WHERE id <= (SELECT MAX(id) FROM dead_letters) - ?",
                    max) ? sqlite3_changes(store_db(st)) : -1;
}

/* The rotation, once due: 1 = a chunk of the previous generation deleted
 * (more may follow), 0 = swapped or not due, -1 = error. */
static int rotate(store *st, long long now_s, long long keep_s)
{
    sqlite3_stmt *s = store_prepare(st, "SELECT started_at FROM processed_generation");
    long long started = s ? store_one_int(st, s, "processed_generation") : -1;
    if (started < 0) return -1;
    if (now_s - started < keep_s) return 0;
    if (!run_with(st, "DELETE FROM processed_events_previous WHERE event_id IN"
                      " (SELECT event_id FROM processed_events_previous LIMIT ?)", PRUNE_CHUNK))
        return -1;
    if (sqlite3_changes(store_db(st)) > 0) return 1;
    /* Empty: the swap is three renames, whatever the tables hold. */
    if (store_exec(st, "ALTER TABLE processed_events RENAME TO processed_events_swap;"
                       "ALTER TABLE processed_events_previous RENAME TO processed_events;"
                       "ALTER TABLE processed_events_swap RENAME TO processed_events_previous")
        != SQLITE_OK)
        return -1;
    return run_with(st, "UPDATE processed_generation SET started_at = ?", now_s) ? 0 : -1;
}

/* PostgreSQL's dialect of the two steps above. */
static long long trim_dead_letters_pg(store *st, long long max)
{
    char m[24];
    const char *p[] = {store_pg_int(m, max)};
    return store_pg_command(st, "DELETE FROM dead_letters WHERE id <= (SELECT max(id) FROM"
                                " dead_letters) - $1", 1, p, "dead letter trim");
}

static int rotate_pg(store *st, long long now_s, long long keep_s)
{
    long long started = store_pg_one_int(st, "SELECT started_at FROM processed_generation", 0,
                                         NULL, "processed_generation");
    if (started < 0) return -1;
    if (now_s - started < keep_s) return 0;
    char chunk[24], now[24];
    const char *p[] = {store_pg_int(chunk, PRUNE_CHUNK)};
    long long deleted = store_pg_command(st, "DELETE FROM processed_events_previous WHERE event_id"
                                             " IN (SELECT event_id FROM processed_events_previous"
                                             " LIMIT $1)", 1, p, "processed prune");
    if (deleted != 0) return deleted > 0 ? 1 : -1;
    if (store_exec(st, "ALTER TABLE processed_events RENAME TO processed_events_swap;"
                       "ALTER TABLE processed_events_previous RENAME TO processed_events;"
                       "ALTER TABLE processed_events_swap RENAME TO processed_events_previous")
        != SQLITE_OK)
        return -1;
    const char *q[] = {store_pg_int(now, now_s)};
    return store_pg_command(st, "UPDATE processed_generation SET started_at = $1", 1, q,
                            "processed_generation") < 0 ? -1 : 0;
}

int processed_upkeep(store *st, long long now_s, long long keep_s, long long dead_letters_max)
{
    if (store_begin(st) != SQLITE_OK) return -1;
    bool pg = store_is_pg(st);
    long long dropped = pg ? trim_dead_letters_pg(st, dead_letters_max)
                           : trim_dead_letters(st, dead_letters_max);
    int more = dropped < 0 ? -1 : pg ? rotate_pg(st, now_s, keep_s) : rotate(st, now_s, keep_s);
    if (more < 0 || store_commit(st) != SQLITE_OK) {
        char e[200];
        log_error("msg=\"bus upkeep failed\" error=%s", log_quote(e, sizeof e, store_error(st)));
        store_rollback(st);
        return -1;
    }
    if (dropped > 0) {
        log_warn("msg=\"oldest dead letters dropped (the events stay in the stream)\" rows=%lld "
                 "max=%lld", dropped, dead_letters_max);
        metrics_counter_add("carshare_bus_dead_letters_dropped_total", "", (double)dropped);
    }
    return more;
}
