/* store_pg.c: a store on PostgreSQL (see store_pg.h).
 *
 * One libpq connection, blocking: it is only ever used on a thread that may
 * wait (a database thread of lib/db.c, the bus's relay, or main() before the
 * loop runs). Session settings travel in the connection's `options`
 * parameter, so a PQreset after PostgreSQL restarted brings them back with
 * the connection.
 *
 * Failures are sorted by SQLSTATE, because the caller's answer depends on
 * them: a lost connection, a server shutting down, too many connections or a
 * statement cancelled at its deadline mean "try again shortly" (503); a
 * serialization conflict means "run the unit of work again" (lib/db.c does);
 * anything else is a bug or bad data (500).
 *
 * Migrations: one table `schema_versions (name, version)` holds the version
 * of the platform's tables ("platform") and of the service's ("service").
 * Each schema is brought up to date in one transaction that first takes a
 * transaction-scoped advisory lock, so a second process starting at the
 * same moment waits, then finds the scripts applied and applies nothing.
 * DDL is transactional in PostgreSQL: a failed script leaves nothing. */
#include "store_pg.h"

#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "metrics.h"
#include "store_private.h"

/* Any 64-bit number the services do not use for their own locks. */
#define MIGRATION_LOCK_KEY "7312013"

struct pg_stmt {
    char *sql;              /* key, owned; NULL = empty slot */
    uint64_t hash;
    unsigned id;            /* the statement's name is "s<id>" */
    bool prepared;          /* on the current connection (a reconnect clears it) */
};

struct pgstore {
    PGconn *conn;
    char *label;            /* the redacted URL, for logs */
    struct pg_stmt *cache;
    size_t cache_cap, cache_used;
    unsigned next_id;
    bool unavailable;       /* last failure: unreachable or too slow */
    bool retry;             /* last failure: serialization conflict */
    bool in_txn;
    unsigned long session;  /* connections made so far: a reconnect adds one */
    unsigned long txn;      /* the open transaction's number, 0 outside one */
    char error[256];
};

/* ---- platform schema (PostgreSQL's dialect of store.c's) ---- */

static const char *const pg_platform_migrations[] = {
    /* 1: the outbox, the idempotent consumer's memory, the dead letters.
     * BIGSERIAL never goes back, like SQLite's AUTOINCREMENT. */
    "CREATE TABLE outbox ("
    "  seq        BIGSERIAL PRIMARY KEY,"
    "  event_id   TEXT NOT NULL,"
    "  event_type TEXT NOT NULL,"
    "  payload    TEXT NOT NULL,"
    "  request_id TEXT,"
    "  created_at TEXT NOT NULL);"
    "CREATE TABLE processed_events ("
    "  event_id     TEXT PRIMARY KEY,"
    "  event_type   TEXT NOT NULL,"
    "  processed_at TEXT NOT NULL);"
    "CREATE TABLE dead_letters ("
    "  id          BIGSERIAL PRIMARY KEY,"
    "  event_id    TEXT NOT NULL UNIQUE,"
    "  event_type  TEXT NOT NULL,"
    "  subject     TEXT NOT NULL,"
    "  payload     TEXT NOT NULL,"
    "  request_id  TEXT,"
    "  deliveries  BIGINT NOT NULL,"
    "  error       TEXT NOT NULL,"
    "  stream_seq  BIGINT,"
    "  created_at  TEXT NOT NULL DEFAULT to_char(now() AT TIME ZONE 'UTC',"
    "                                          'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'));",
    /* 2: processed_events in two generations (lib/processed.h). */
    "CREATE TABLE processed_events_previous ("
    "  event_id     TEXT PRIMARY KEY,"
    "  event_type   TEXT NOT NULL,"
    "  processed_at TEXT NOT NULL);"
    "CREATE TABLE processed_generation (started_at BIGINT NOT NULL);"
    "INSERT INTO processed_generation VALUES (extract(epoch FROM now())::bigint);",
    NULL
};

/* ---- failures ---- */

static bool sqlstate_unavailable(const char *s)
{
    /* 08: connection exception; 53: insufficient resources (too many
     * connections); 57014: cancelled (statement_timeout); 57P01-03:
     * shutdown, crash, cannot connect now. */
    return s && (strncmp(s, "08", 2) == 0 || strncmp(s, "53", 2) == 0 ||
                 strcmp(s, "57014") == 0 || strncmp(s, "57P0", 4) == 0);
}

static bool sqlstate_retry(const char *s)
{
    return s && (strcmp(s, "40001") == 0 || strcmp(s, "40P01") == 0);
}

/* Records and logs a failure of `what`; res may be NULL (no result at all). */
static void note_failure(struct pgstore *pg, const PGresult *res, const char *what)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res ? PQresultErrorMessage(res) : PQerrorMessage(pg->conn);
    snprintf(pg->error, sizeof pg->error, "%s", msg && *msg ? msg : "unknown error");
    size_t n = strlen(pg->error);
    while (n && (pg->error[n - 1] == '\n' || pg->error[n - 1] == ' ')) pg->error[--n] = '\0';
    /* Sticky until store_clear_failure: once a transaction lost a conflict,
     * whatever its later statements say ("current transaction is aborted")
     * is a consequence, and the answer is still to run it again. */
    pg->retry = pg->retry || sqlstate_retry(state);
    if (state && strcmp(state, "57014") == 0)
        metrics_counter_add("carshare_db_statement_timeouts_total", "", 1);
    pg->unavailable = !pg->retry &&
                      (sqlstate_unavailable(state) || PQstatus(pg->conn) != CONNECTION_OK);
    char e[300];
    if (pg->retry)      /* expected under concurrency: the work runs again */
        log_info("msg=\"%s: serialization conflict, will retry\" db=%s", what, pg->label);
    else
        log_error("msg=\"%s failed\" db=%s sqlstate=%s error=%s", what, pg->label,
                  state ? state : "-", log_quote(e, sizeof e, pg->error));
}

bool store_unavailable(const store *st)
{
    struct pgstore *pg = store_pgstore(st);
    return pg && pg->unavailable;
}

bool store_should_retry(const store *st)
{
    struct pgstore *pg = store_pgstore(st);
    return pg && pg->retry;
}

void store_clear_failure(store *st)
{
    struct pgstore *pg = store_pgstore(st);
    if (pg) pg->unavailable = pg->retry = false;
}

void store_pg_pause_before_rerun(long attempt)
{
    /* Per thread and per process: replicas started from one image in the
     * same second must not draw the same pauses. */
    static _Thread_local unsigned seed;
    if (!seed) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        seed = ((unsigned)getpid() * 2654435761u) ^ (unsigned)now.tv_nsec ^
               (unsigned)(uintptr_t)&seed;
        seed |= 1;
    }
    long us = 200L << (attempt < 8 ? attempt : 8);
    if (us > 50000) us = 50000;
    us = us / 2 + (long)(rand_r(&seed) % (unsigned)(us + 1));
    struct timespec t = {us / 1000000, (us % 1000000) * 1000L};
    nanosleep(&t, NULL);
}

const char *pgstore_error(struct pgstore *pg) { return pg->error; }

bool pgstore_in_transaction(struct pgstore *pg) { return pg->in_txn; }

/* ---- statement cache ---- */

static uint64_t sql_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

static struct pg_stmt *cache_slot(struct pg_stmt *t, size_t cap, const char *sql, uint64_t h)
{
    for (size_t i = h & (cap - 1);; i = (i + 1) & (cap - 1))
        if (!t[i].sql || (t[i].hash == h && strcmp(t[i].sql, sql) == 0)) return &t[i];
}

static bool cache_grow(struct pgstore *pg)
{
    size_t cap = pg->cache_cap ? pg->cache_cap * 2 : 64;
    struct pg_stmt *t = calloc(cap, sizeof *t);
    if (!t) return false;
    for (size_t i = 0; i < pg->cache_cap; i++)
        if (pg->cache[i].sql) *cache_slot(t, cap, pg->cache[i].sql, pg->cache[i].hash) = pg->cache[i];
    free(pg->cache);
    pg->cache = t;
    pg->cache_cap = cap;
    return true;
}

/* The cached statement for sql, prepared on this connection; NULL on error. */
static struct pg_stmt *statement(struct pgstore *pg, const char *sql, int n, const char *what)
{
    if ((pg->cache_used + 1) * 4 > pg->cache_cap * 3 && !cache_grow(pg)) return NULL;
    uint64_t h = sql_hash(sql);
    struct pg_stmt *s = cache_slot(pg->cache, pg->cache_cap, sql, h);
    if (!s->sql) {
        if (!(s->sql = strdup(sql))) return NULL;
        s->hash = h;
        s->id = pg->next_id++;
        s->prepared = false;
        pg->cache_used++;
    }
    if (!s->prepared) {
        char name[16];
        snprintf(name, sizeof name, "s%u", s->id);
        PGresult *r = PQprepare(pg->conn, name, sql, n, NULL);
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok) note_failure(pg, r, what);
        PQclear(r);
        if (!ok) return NULL;
        s->prepared = true;
    }
    return s;
}

static void cache_forget_prepared(struct pgstore *pg)
{
    for (size_t i = 0; i < pg->cache_cap; i++) pg->cache[i].prepared = false;
}

static bool reconnect(struct pgstore *pg);

/* ---- queries ---- */

PGresult *store_pg_query(store *st, const char *sql, int n, const char *const *params,
                         const char *what)
{
    struct pgstore *pg = store_pgstore(st);
    /* A read outside a transaction is where a lost connection comes back
     * (inside one, the transaction is lost with it: the unit of work fails). */
    if (!pg->in_txn && PQstatus(pg->conn) != CONNECTION_OK && !reconnect(pg)) return NULL;
    struct pg_stmt *s = statement(pg, sql, n, what);
    if (!s) return NULL;
    char name[16];
    snprintf(name, sizeof name, "s%u", s->id);
    PGresult *r = PQexecPrepared(pg->conn, name, n, params, NULL, NULL, 0);
    ExecStatusType t = PQresultStatus(r);
    if (t == PGRES_TUPLES_OK || t == PGRES_COMMAND_OK) return r;
    note_failure(pg, r, what);
    PQclear(r);
    return NULL;
}

long long store_pg_command(store *st, const char *sql, int n, const char *const *params,
                           const char *what)
{
    PGresult *r = store_pg_query(st, sql, n, params, what);
    if (!r) return -1;
    long long rows = atoll(PQcmdTuples(r));
    PQclear(r);
    return rows;
}

long long store_pg_one_int(store *st, const char *sql, int n, const char *const *params,
                           const char *what)
{
    PGresult *r = store_pg_query(st, sql, n, params, what);
    if (!r) return -1;
    long long v = PQntuples(r) > 0 ? store_pg_get_int(r, 0, 0) : -1;
    PQclear(r);
    return v;
}

const char *store_pg_int(char buf[24], long long v)
{
    snprintf(buf, 24, "%lld", v);
    return buf;
}

long long store_pg_get_int(const PGresult *res, int r, int c)
{
    return PQgetisnull(res, r, c) ? 0 : strtoll(PQgetvalue(res, r, c), NULL, 10);
}

void store_pg_get_text(const PGresult *res, int r, int c, char *buf, size_t size)
{
    snprintf(buf, size, "%s", PQgetisnull(res, r, c) ? "" : PQgetvalue(res, r, c));
}

/* Runs SQL without parameters or cache (transaction boundaries, scripts). */
static bool run_plain(struct pgstore *pg, const char *sql, const char *what)
{
    PGresult *r = PQexec(pg->conn, sql);
    ExecStatusType t = PQresultStatus(r);
    bool ok = t == PGRES_COMMAND_OK || t == PGRES_TUPLES_OK;
    if (!ok) note_failure(pg, r, what);
    PQclear(r);
    return ok;
}

int pgstore_exec(struct pgstore *pg, const char *sql)
{
    return run_plain(pg, sql, "statement") ? 0 : 1;
}

/* ---- transactions ---- */

/* After the server went away the connection is re-opened, once per BEGIN:
 * nothing has been done yet in this unit of work, so nothing is lost. */
/* ---- connecting without blocking a shutdown ----
 *
 * libpq's blocking connect cannot be interrupted, and on a loaded machine
 * it can take seconds: a service told to stop would wait for it (and be
 * killed). So connections are made with PQconnectStart/PQconnectPoll,
 * polling in 100 ms slices, until DB_CONNECT_TIMEOUT_S or until
 * store_pg_abandon_connects() was called (the service is stopping). */

static atomic_bool connects_abandoned;

void store_pg_abandon_connects(void)
{
    atomic_store(&connects_abandoned, true);
}

static long connect_timeout_ms(void)
{
    return config_int("DB_CONNECT_TIMEOUT_S", 15, 1, 600) * 1000L;
}

/* Drives a connection started by PQconnectStart (reset: PQresetStart) to
 * its end: true when it is up. */
static bool wait_connected(PGconn *c, bool reset)
{
    if (!c || PQstatus(c) == CONNECTION_BAD) return false;
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long limit = connect_timeout_ms();
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    while (st != PGRES_POLLING_OK) {
        if (st == PGRES_POLLING_FAILED || atomic_load(&connects_abandoned)) return false;
        struct pollfd p = {.fd = PQsocket(c),
                           .events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT};
        int r = poll(&p, 1, 100);
        if (r < 0 && errno != EINTR) return false;
        if (r > 0) {
            st = reset ? PQresetPoll(c) : PQconnectPoll(c);
            continue;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - t0.tv_sec) * 1000L + (now.tv_nsec - t0.tv_nsec) / 1000000L > limit)
            return false;
    }
    return true;
}

static bool reconnect(struct pgstore *pg)
{
    bool up = PQresetStart(pg->conn) && wait_connected(pg->conn, true);
    cache_forget_prepared(pg);
    up = up && PQstatus(pg->conn) == CONNECTION_OK;
    metrics_count_outcome("carshare_db_reconnects_total", up ? "ok" : "failed");
    if (!up) {
        note_failure(pg, NULL, "reconnect");
        return false;
    }
    pg->session++;
    log_info("msg=\"reconnected to PostgreSQL\" db=%s", pg->label);
    return true;
}

unsigned long store_pg_session(const store *st)
{
    struct pgstore *pg = store_pgstore(st);
    return pg ? pg->session : 0;
}

bool store_pg_try_lock(store *st, long long key)
{
    char k[24];
    const char *p[] = {store_pg_int(k, key)};
    PGresult *r = store_pg_query(st, "SELECT pg_try_advisory_lock($1::bigint)", 1, p,
                                 "advisory lock");
    bool got = r && PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    return got;
}

unsigned long store_pg_transaction(const store *st)
{
    struct pgstore *pg = store_pgstore(st);
    return pg ? pg->txn : 0;
}

int pgstore_begin(struct pgstore *pg, bool locking)
{
    static atomic_ulong transactions;   /* every connection's: numbers never repeat */
    const char *sql = locking ? "BEGIN ISOLATION LEVEL READ COMMITTED"
                              : "BEGIN ISOLATION LEVEL SERIALIZABLE";
    if (PQstatus(pg->conn) != CONNECTION_OK && !reconnect(pg)) return 1;
    if (!run_plain(pg, sql, "begin")) {
        if (PQstatus(pg->conn) == CONNECTION_OK || !reconnect(pg) || !run_plain(pg, sql, "begin"))
            return 1;
    }
    pg->in_txn = true;
    pg->txn = atomic_fetch_add(&transactions, 1) + 1;
    return 0;
}

int pgstore_commit(struct pgstore *pg)
{
    pg->in_txn = false;
    pg->txn = 0;
    /* A COMMIT of a transaction that failed answers ROLLBACK without an
     * error: the status tells them apart. */
    PGresult *r = PQexec(pg->conn, "COMMIT");
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK && strcmp(PQcmdStatus(r), "COMMIT") == 0;
    if (!ok) {
        if (PQresultStatus(r) == PGRES_COMMAND_OK) {
            snprintf(pg->error, sizeof pg->error, "the transaction had failed: rolled back");
            log_error("msg=\"commit of a failed transaction\" db=%s", pg->label);
        } else {
            note_failure(pg, r, "commit");
        }
    }
    PQclear(r);
    return ok ? 0 : 1;
}

void pgstore_rollback(struct pgstore *pg)
{
    if (!pg->in_txn && PQtransactionStatus(pg->conn) == PQTRANS_IDLE) return;
    pg->in_txn = false;
    pg->txn = 0;
    if (PQstatus(pg->conn) == CONNECTION_OK) {
        PGresult *r = PQexec(pg->conn, "ROLLBACK");
        PQclear(r);
    }
}

bool pgstore_ready(struct pgstore *pg)
{
    if (PQstatus(pg->conn) != CONNECTION_OK && !reconnect(pg)) return false;
    PGresult *r = PQexec(pg->conn, "SELECT 1");
    bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    if (!ok && PQstatus(pg->conn) != CONNECTION_OK && reconnect(pg)) {
        PQclear(r);
        r = PQexec(pg->conn, "SELECT 1");
        ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    }
    PQclear(r);
    return ok;
}

void pgstore_free(struct pgstore *pg)
{
    if (!pg) return;
    if (pg->conn) PQfinish(pg->conn);
    for (size_t i = 0; i < pg->cache_cap; i++) free(pg->cache[i].sql);
    free(pg->cache);
    free(pg->label);
    free(pg);
}

/* ---- migrations ---- */

/* Brings schema `name` to the version of `scripts` in one transaction,
 * under the advisory lock. */
static bool migrate(struct pgstore *pg, const char *name, const char *const *scripts)
{
    long long known = 0;
    while (scripts[known]) known++;
    /* READ COMMITTED, not pgstore_begin's SERIALIZABLE: the version must be
     * read after the lock is granted, by a statement whose snapshot is
     * taken then, not at the transaction's first statement (the lock). */
    if (!run_plain(pg, "BEGIN", "migration")) return false;
    pg->in_txn = true;
    bool ok = run_plain(pg, "SELECT pg_advisory_xact_lock(" MIGRATION_LOCK_KEY ")", "migration lock") &&
              run_plain(pg, "CREATE TABLE IF NOT EXISTS schema_versions ("
                            " name TEXT PRIMARY KEY, version INTEGER NOT NULL)", "migration");
    long long version = -1;
    if (ok) {
        const char *p[1] = {name};
        PGresult *r = PQexecParams(pg->conn, "SELECT version FROM schema_versions WHERE name = $1",
                                   1, NULL, p, NULL, NULL, 0);
        if (PQresultStatus(r) == PGRES_TUPLES_OK)
            version = PQntuples(r) ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : 0;
        else
            note_failure(pg, r, "schema version read");
        PQclear(r);
    }
    if (version > known) {
        log_error("msg=\"database schema is newer than this program\" db=%s schema=%s version=%lld "
                  "known=%lld", pg->label, name, version, known);
        ok = false;
    }
    for (long long v = version; ok && v >= 0 && v < known; v++) {
        ok = run_plain(pg, scripts[v], "migration");
        if (ok) log_info("msg=\"schema migrated\" db=%s schema=%s version=%lld", pg->label, name,
                         v + 1);
    }
    if (ok && version >= 0 && version < known) {
        char sql[160], vs[24];
        snprintf(sql, sizeof sql, "INSERT INTO schema_versions (name, version) VALUES ('%s', %s)"
                 " ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version", name,
                 store_pg_int(vs, known));
        ok = run_plain(pg, sql, "migration");
    }
    if (!ok || version < 0) {
        pgstore_rollback(pg);
        return false;
    }
    return pgstore_commit(pg) == 0;
}

/* ---- open ---- */

void store_pg_redact(const char *url, char *buf, size_t size)
{
    /* postgres://user:password@host...: the password is between the first
     * ':' after the scheme and the '@'. */
    const char *scheme = strstr(url, "://");
    const char *start = scheme ? scheme + 3 : url;
    const char *at = strchr(start, '@');
    const char *colon = at ? memchr(start, ':', (size_t)(at - start)) : NULL;
    if (!colon) {
        snprintf(buf, size, "%s", url);
        return;
    }
    snprintf(buf, size, "%.*s:***%s", (int)(colon - url), url, at);
}

static struct pgstore *connect_to(const char *url, const char *setting, const char *service)
{
    struct pgstore *pg = calloc(1, sizeof *pg);
    char label[512];
    store_pg_redact(url, label, sizeof label);
    if (!pg || !(pg->label = strdup(label))) {
        free(pg);
        return NULL;
    }
    long timeout_ms = config_int("DB_STATEMENT_TIMEOUT_MS", 5000, 1, 3600000);
    char options[160];
    /* synchronous_commit on whatever the server's default: see store_pg.h. */
    snprintf(options, sizeof options, "-c synchronous_commit=on -c statement_timeout=%ld "
             "-c idle_in_transaction_session_timeout=%ld -c client_min_messages=warning",
             timeout_ms, timeout_ms * 2);
    /* A loaded machine can take seconds to fork a backend and check a
     * password: DB_CONNECT_TIMEOUT_S (15) before a connection counts as
     * failed (wait_connected). */
    const char *keys[] = {"dbname", "application_name", "options", NULL};
    const char *values[] = {url, service, options, NULL};
    pg->conn = PQconnectStartParams(keys, values, 1);
    if (!wait_connected(pg->conn, false) || PQstatus(pg->conn) != CONNECTION_OK) {
        char e[400];
        const char *why = !pg->conn ? "out of memory"
                          : *PQerrorMessage(pg->conn) ? PQerrorMessage(pg->conn)
                          : atomic_load(&connects_abandoned) ? "the service is stopping"
                          : "timeout expired (DB_CONNECT_TIMEOUT_S)";
        log_error("msg=\"cannot connect to PostgreSQL: check %s\" setting=%s db=%s error=%s",
                  setting, setting, pg->label, log_quote(e, sizeof e, why));
        pgstore_free(pg);
        return NULL;
    }
    return pg;
}

store *store_pg_open(const char *url, const char *setting, const char *service,
                     const char *const *migrations)
{
    struct pgstore *pg = connect_to(url, setting, service);
    if (!pg) return NULL;
    if (migrations && (!migrate(pg, "platform", pg_platform_migrations) ||
                       !migrate(pg, "service", migrations))) {
        log_error("msg=\"cannot bring the PostgreSQL schema up to date\" setting=%s db=%s", setting,
                  pg->label);
        pgstore_free(pg);
        return NULL;
    }
    store *st = store_new_pg(pg, pg->label);
    if (!st) pgstore_free(pg);
    return st;
}
