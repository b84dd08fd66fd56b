/* store.c: a service's SQLite database (see store.h).
 *
 * Durability first: WAL with synchronous=FULL, so a commit that returned is
 * on disk (or, for a service's loop, group commit: the commit returns at
 * once and what acknowledges it waits for a shared fsync; see below and
 * durable.h), and readers on other connections (the bus relay) never block the
 * writer. A second connection waits for the write lock (up to 5 s) instead
 * of failing at once; store_begin takes that lock up front (BEGIN
 * IMMEDIATE) so a transaction cannot fail half way through with
 * SQLITE_BUSY after it has already done work.
 *
 * The wait is our own busy handler, not sqlite3_busy_timeout: SQLite's
 * sleeps 1, 2, 5, 10 ... 100 ms between tries, while the other writer (the
 * bus relay deleting published rows, unsynced) holds the lock for tens of
 * microseconds. A loop thread blocked in BEGIN for 10 ms when the lock was
 * free after 0.1 ms stalls every request; so we poll every 50-200 µs for
 * the first milliseconds, and only then back off to 1 ms.
 *
 * Two schema histories live in one file and never interfere:
 *  - the platform's tables (outbox, processed_events, dead_letters), whose
 *    version is kept in the one-row table platform_schema;
 *  - the service's tables, whose version is PRAGMA user_version, so that a
 *    service's migration i always brings user_version to i+1, whatever the
 *    platform adds later.
 * Each migration runs in its own IMMEDIATE transaction and re-reads the
 * version inside it, so two processes opening the same file at once (a
 * service and its relay connection) apply every script exactly once.
 *
 * Statements are cached by SQL text in an open-addressing hash table (FNV-1a,
 * linear probing, grown at 3/4 load): services prepare by literal SQL on
 * every call, so lookups must stay O(1) with hundreds of statements.
 *
 * A cached statement left stepping (a SELECT read to its first row and never
 * reset) would keep a read snapshot open; in WAL mode that makes the next
 * BEGIN IMMEDIATE fail with SQLITE_BUSY_SNAPSHOT once another connection has
 * written. So every transaction boundary resets the statements still busy.
 * The boundaries themselves (BEGIN IMMEDIATE, COMMIT, ROLLBACK) are cached
 * statements too: sqlite3_exec would parse them again on every call. */
#include "store.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "durable.h"
#include "log.h"
#include "instance.h"
#include "store_private.h"

struct cached_stmt {
    char *sql;              /* key, owned; NULL = empty slot */
    uint64_t hash;
    sqlite3_stmt *stmt;
};

struct store {
    sqlite3 *db;
    char *path;
    struct cached_stmt *cache;
    size_t cache_cap;       /* a power of two */
    size_t cache_used;
    void (*on_commit)(void *arg);
    void *on_commit_arg;
    struct timespec busy_since;     /* start of the current wait for a lock */
    struct group *group;            /* group commit on the loop, or NULL */
    struct pgstore *pg;             /* a PostgreSQL store (store_pg.c): db is NULL */
};

/* A store in group commit (store_group_commit). Everything here but
 * `checkpoint_due` belongs to the sync thread. */
struct group {
    char *wal_path;
    char *db_path;
    int wal_fd;                     /* our own descriptor of the WAL: fdatasync */
    sqlite3 *checkpointer;          /* the sync thread's connection */
    atomic_bool checkpoint_due;     /* set by the loop's WAL hook */
    atomic_bool finish_due;         /* set by the sync thread after its checkpoint */
};

/* WAL frames after which the sync thread checkpoints: SQLite's own
 * auto-checkpoint threshold, which the loop connection no longer runs. */
#define CHECKPOINT_FRAMES 1000

static void finish_checkpoint(store *st);

/* How long a connection waits for a lock held by another one. */
#define BUSY_TIMEOUT_NS (5000LL * 1000000LL)

/* ---- platform schema ---- */

/* Version i+1 of the platform's own tables. Append only: never edit a
 * script that has shipped. */
static const char *const platform_migrations[] = {
    /* 1: the bus's transactional outbox, idempotent consumer, and the
     * events that kept failing. */
    "CREATE TABLE outbox ("
    "  seq        INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  event_id   TEXT NOT NULL UNIQUE,"
    "  event_type TEXT NOT NULL,"
    "  payload    TEXT NOT NULL,"
    "  request_id TEXT,"
    "  created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));"
    "CREATE TABLE processed_events ("
    "  event_id     TEXT PRIMARY KEY,"
    "  event_type   TEXT NOT NULL,"
    "  processed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))"
    ") WITHOUT ROWID;"
    "CREATE TABLE dead_letters ("
    "  id          INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  event_id    TEXT NOT NULL UNIQUE,"
    "  event_type  TEXT NOT NULL,"
    "  subject     TEXT NOT NULL,"
    "  payload     TEXT NOT NULL,"
    "  request_id  TEXT,"
    "  deliveries  INTEGER NOT NULL,"
    "  error       TEXT NOT NULL,"
    "  stream_seq  INTEGER,"
    "  created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));",
    /* 2: the outbox without the UNIQUE index on event_id. Event ids are
     * UUIDs made by outbox_add, and the index cost a page write for every
     * event written and deleted (measured: 3.2 -> 2.2 WAL frames per event
     * commit). AUTOINCREMENT stays: seq must never go back below the
     * relay's mark, even when every row has been deleted. */
    "CREATE TABLE outbox_v2 ("
    "  seq        INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  event_id   TEXT NOT NULL,"
    "  event_type TEXT NOT NULL,"
    "  payload    TEXT NOT NULL,"
    "  request_id TEXT,"
    "  created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));"
    "INSERT INTO outbox_v2 SELECT seq, event_id, event_type, payload, request_id, created_at"
    "  FROM outbox;"
    "DROP TABLE outbox;"
    "ALTER TABLE outbox_v2 RENAME TO outbox;",
    /* 3: processed_events in two generations, so that it can be pruned
     * without an index on processed_at (processed.h). */
    "CREATE TABLE processed_events_previous ("
    "  event_id     TEXT PRIMARY KEY,"
    "  event_type   TEXT NOT NULL,"
    "  processed_at TEXT NOT NULL"
    ") WITHOUT ROWID;"
    "CREATE TABLE processed_generation (started_at INTEGER NOT NULL);"
    "INSERT INTO processed_generation VALUES (CAST(strftime('%s','now') AS INTEGER));",
    NULL
};

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

/* The slot holding sql, or the empty slot where it belongs. */
static struct cached_stmt *cache_slot(struct cached_stmt *table, size_t cap,
                                      const char *sql, uint64_t hash)
{
    size_t i = (size_t)hash & (cap - 1);
    for (;;) {
        struct cached_stmt *c = &table[i];
        if (!c->sql || (c->hash == hash && strcmp(c->sql, sql) == 0)) return c;
        i = (i + 1) & (cap - 1);
    }
}

static bool cache_grow(store *st)
{
    size_t cap = st->cache_cap ? st->cache_cap * 2 : 64;
    struct cached_stmt *table = calloc(cap, sizeof *table);
    if (!table) return false;
    for (size_t i = 0; i < st->cache_cap; i++) {
        struct cached_stmt *old = &st->cache[i];
        if (old->sql) *cache_slot(table, cap, old->sql, old->hash) = *old;
    }
    free(st->cache);
    st->cache = table;
    st->cache_cap = cap;
    return true;
}

static void cache_clear(store *st)
{
    for (size_t i = 0; i < st->cache_cap; i++) {
        sqlite3_finalize(st->cache[i].stmt);
        free(st->cache[i].sql);
    }
    free(st->cache);
    st->cache = NULL;
    st->cache_cap = st->cache_used = 0;
}

/* Ends every read a caller left open on a cached statement. */
static void reset_busy_statements(store *st)
{
    for (sqlite3_stmt *s = sqlite3_next_stmt(st->db, NULL); s; s = sqlite3_next_stmt(st->db, s))
        if (sqlite3_stmt_busy(s)) sqlite3_reset(s);
}

sqlite3_stmt *store_prepare(store *st, const char *sql)
{
    if ((st->cache_used + 1) * 4 > st->cache_cap * 3 && !cache_grow(st)) {
        log_error("msg=\"statement cache: out of memory\" db=%s", st->path);
        return NULL;
    }
    uint64_t hash = sql_hash(sql);
    struct cached_stmt *c = cache_slot(st->cache, st->cache_cap, sql, hash);
    if (c->sql) {
        sqlite3_reset(c->stmt);
        sqlite3_clear_bindings(c->stmt);
        return c->stmt;
    }
    sqlite3_stmt *stmt = NULL;
    if (sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, NULL) != SQLITE_OK) {
        char q[512], e[256];
        log_error("msg=\"cannot prepare statement\" db=%s error=%s sql=%s", st->path,
                  log_quote(e, sizeof e, sqlite3_errmsg(st->db)), log_quote(q, sizeof q, sql));
        return NULL;
    }
    char *key = strdup(sql);
    if (!key) {
        sqlite3_finalize(stmt);
        return NULL;
    }
    c->sql = key;
    c->hash = hash;
    c->stmt = stmt;
    st->cache_used++;
    return stmt;
}

/* ---- plain execution ---- */

int store_exec(store *st, const char *sql)
{
    if (st->pg) return pgstore_exec(st->pg, sql) == 0 ? SQLITE_OK : SQLITE_ERROR;
    char *msg = NULL;
    int rc = sqlite3_exec(st->db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        char q[512], e[256];
        log_error("msg=\"statement failed\" db=%s error=%s sql=%s", st->path,
                  log_quote(e, sizeof e, msg ? msg : sqlite3_errstr(rc)), log_quote(q, sizeof q, sql));
    }
    sqlite3_free(msg);
    return rc;
}

/* ---- reading rows ---- */

void store_column_text(sqlite3_stmt *s, int col, char *buf, size_t size)
{
    const unsigned char *t = sqlite3_column_text(s, col);
    snprintf(buf, size, "%s", t ? (const char *)t : "");
}

/* error: NULL for the connection's last error. */
static void log_read_failure(store *st, const char *what, const char *error)
{
    char e[256];
    log_error("msg=\"%s failed\" db=%s error=%s", what, st->path,
              log_quote(e, sizeof e, error ? error : sqlite3_errmsg(st->db)));
}

int store_next_row(store *st, sqlite3_stmt *s, store_row_reader read, void *row,
                   const char *what)
{
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        if (read(s, row) == 0) return 1;
        /* The reader has said why. */
        sqlite3_reset(s);
        return -1;
    }
    if (rc != SQLITE_DONE) log_read_failure(st, what, NULL);
    sqlite3_reset(s);
    return rc == SQLITE_DONE ? 0 : -1;
}

int store_one_row(store *st, sqlite3_stmt *s, store_row_reader read, void *row,
                  const char *what)
{
    int found = store_next_row(st, s, read, row, what);
    if (found > 0) sqlite3_reset(s);
    return found;
}

int store_find_one(store *st, const char *sql, long long key, store_row_reader read, void *row,
                   const char *what)
{
    sqlite3_stmt *s = store_prepare(st, sql);
    if (!s) return -1;
    sqlite3_bind_int64(s, 1, key);
    return store_one_row(st, s, read, row, what);
}

long long store_one_int(store *st, sqlite3_stmt *s, const char *what)
{
    long long v = -1;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        v = sqlite3_column_int64(s, 0);
    else
        log_read_failure(st, what, rc == SQLITE_DONE ? "the query returned no row" : NULL);
    sqlite3_reset(s);
    return v;
}

/* Runs a statement expected to return one integer; -1 on error. */
static long long query_int(store *st, const char *sql)
{
    sqlite3_stmt *s = NULL;
    long long v = -1;
    if (sqlite3_prepare_v2(st->db, sql, -1, &s, NULL) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
        v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return v;
}

/* ---- transactions ---- */

/* Steps a cached statement that returns no rows (a transaction boundary):
 * SQLITE_OK or the error. */
static int step_cached(store *st, const char *sql)
{
    sqlite3_stmt *s = store_prepare(st, sql);
    if (!s) return SQLITE_ERROR;
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

static int begin(store *st, bool locking)
{
    if (st->pg) return pgstore_begin(st->pg, locking) == 0 ? SQLITE_OK : SQLITE_ERROR;
    reset_busy_statements(st);
    int rc = step_cached(st, "BEGIN IMMEDIATE");
    if (rc != SQLITE_OK) {
        char e[256];
        log_error("msg=\"cannot begin transaction\" db=%s error=%s", st->path,
                  log_quote(e, sizeof e, sqlite3_errmsg(st->db)));
    }
    return rc;
}

int store_begin(store *st) { return begin(st, false); }

int store_begin_locking(store *st) { return begin(st, true); }

/* PostgreSQL: a failed COMMIT has ended the transaction too. */
static int commit_pg(store *st)
{
    if (pgstore_commit(st->pg) != 0) return SQLITE_ERROR;
    if (st->on_commit) st->on_commit(st->on_commit_arg);
    return SQLITE_OK;
}

/* On failure the transaction is rolled back, so the caller never has to
 * guess whether it is still inside one. */
int store_commit(store *st)
{
    if (st->pg) return commit_pg(st);
    reset_busy_statements(st);
    if (st->group) durable_committing();
    int rc = step_cached(st, "COMMIT");
    if (st->group) durable_committed();    /* even when it failed: see durable.h */
    if (rc != SQLITE_OK) {
        char e[256];
        log_error("msg=\"commit failed\" db=%s error=%s", st->path,
                  log_quote(e, sizeof e, sqlite3_errmsg(st->db)));
        if (!sqlite3_get_autocommit(st->db)) step_cached(st, "ROLLBACK");
        return rc;
    }
    if (st->group && atomic_exchange(&st->group->finish_due, false)) finish_checkpoint(st);
    if (st->on_commit) st->on_commit(st->on_commit_arg);
    return SQLITE_OK;
}

void store_rollback(store *st)
{
    if (st->pg) {
        pgstore_rollback(st->pg);
        return;
    }
    reset_busy_statements(st);
    if (!sqlite3_get_autocommit(st->db)) step_cached(st, "ROLLBACK");
}

void store_on_commit(store *st, void (*fn)(void *arg), void *arg)
{
    st->on_commit = fn;
    st->on_commit_arg = arg;
}

/* ---- group commit (see durable.h) ----
 *
 * The loop connection commits with synchronous=NORMAL: the WAL is written
 * at COMMIT (a process crash loses nothing) but fsynced by the sync
 * thread, once for all the commits made since its last run, through a
 * descriptor of its own (fsync applies to the file, whoever wrote it).
 * Checkpoints mostly leave the loop too: SQLite runs them inside the
 * COMMIT that crosses 1000 WAL frames (two fsyncs and a copy of every
 * page, on the loop). Here the loop's WAL hook only flags it, and the sync
 * thread runs a PASSIVE checkpoint, which never blocks the writer, after
 * its fsync. That alone is not enough: the WAL starts over from its
 * beginning only when a write finds every frame copied, which a checkpoint
 * racing a busy writer never achieves (measured: order's WAL grew to 1.1 GB
 * in a 30 s bench, and every fsync was followed by a checkpoint). So once
 * the sync thread's checkpoint has copied the bulk, the loop, between two
 * of its own transactions, checkpoints the few frames left (no write can
 * come in meanwhile) and its next write restarts the WAL. */

static int note_wal_size(void *arg, sqlite3 *db, const char *name, int frames)
{
    (void)db;
    (void)name;
    struct group *g = arg;
    if (frames >= CHECKPOINT_FRAMES) atomic_store(&g->checkpoint_due, true);
    return SQLITE_OK;
}

/* The WAL's directory entry must be durable too, once, when we first see
 * the file (SQLite syncs it only when it syncs the WAL itself). */
static int sync_directory_of(const char *path)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) dir[1] = '\0';
    else if (slash) *slash = '\0';
    else snprintf(dir, sizeof dir, ".");
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* Our descriptor of the WAL, (re)opened when the file was replaced: SQLite
 * deletes the WAL when its last connection closes. */
static bool wal_open(struct group *g)
{
    struct stat st;
    if (g->wal_fd >= 0 && fstat(g->wal_fd, &st) == 0 && st.st_nlink > 0) return true;
    if (g->wal_fd >= 0) close(g->wal_fd);
    g->wal_fd = open(g->wal_path, O_RDONLY | O_CLOEXEC);
    if (g->wal_fd < 0) {
        log_error("msg=\"cannot open the WAL to sync it\" wal=%s error=\"%s\"", g->wal_path,
                  strerror(errno));
        return false;
    }
    if (sync_directory_of(g->wal_path) != 0) {
        log_error("msg=\"cannot sync the database directory\" wal=%s error=\"%s\"", g->wal_path,
                  strerror(errno));
        return false;
    }
    return true;
}

static void checkpoint(struct group *g)
{
    if (!g->checkpointer &&
        sqlite3_open_v2(g->db_path, &g->checkpointer, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        log_warn("msg=\"cannot open the checkpoint connection\" db=%s", g->db_path);
        sqlite3_close(g->checkpointer);
        g->checkpointer = NULL;
        return;
    }
    int frames = 0, copied = 0;
    int rc = sqlite3_wal_checkpoint_v2(g->checkpointer, "main", SQLITE_CHECKPOINT_PASSIVE, &frames,
                                       &copied);
    if (rc == SQLITE_OK)
        atomic_store(&g->finish_due, true);
    else if (rc != SQLITE_BUSY)
        log_warn("msg=\"checkpoint failed\" db=%s error=%d", g->db_path, rc);
}

/* Loop thread, outside a transaction: copies what the sync thread's
 * checkpoint left, so that the next write restarts the WAL. */
static void finish_checkpoint(store *st)
{
    int rc = sqlite3_wal_checkpoint_v2(st->db, "main", SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    if (rc != SQLITE_OK && rc != SQLITE_BUSY)
        log_warn("msg=\"checkpoint failed\" db=%s error=%d", st->path, rc);
}

/* The sync thread's work: durable_sync_fn. */
static int group_sync(void *arg)
{
    struct group *g = arg;
    if (!wal_open(g)) return -1;
    if (fdatasync(g->wal_fd) != 0) {
        log_error("msg=\"fdatasync of the WAL failed\" wal=%s error=\"%s\"", g->wal_path,
                  strerror(errno));
        return -1;
    }
    if (atomic_exchange(&g->checkpoint_due, false)) checkpoint(g);
    return 0;
}

static void group_free(struct group *g)
{
    if (g->wal_fd >= 0) close(g->wal_fd);
    if (g->checkpointer) sqlite3_close(g->checkpointer);
    free(g->wal_path);
    free(g->db_path);
    free(g);
}

int store_group_commit(store *st, struct event_base *base)
{
    struct group *g = calloc(1, sizeof *g);
    size_t len = strlen(st->path);
    if (!g || !(g->wal_path = malloc(len + 5)) || !(g->db_path = strdup(st->path))) {
        if (g) free(g->wal_path);
        free(g);
        log_error("msg=\"out of memory for group commit\" db=%s", st->path);
        return -1;
    }
    memcpy(g->wal_path, st->path, len);
    memcpy(g->wal_path + len, "-wal", 5);
    g->wal_fd = -1;
    atomic_init(&g->checkpoint_due, false);
    atomic_init(&g->finish_due, false);
    /* Everything committed so far was committed with FULL; from here on
     * commits are made durable by the sync thread. */
    if (durable_start(base, group_sync, g) != 0) {
        group_free(g);
        return -1;
    }
    if (store_exec(st, "PRAGMA synchronous=NORMAL") != SQLITE_OK) {
        durable_stop();
        group_free(g);
        return -1;
    }
    sqlite3_wal_hook(st->db, note_wal_size, g);   /* replaces auto-checkpoint */
    st->group = g;
    return 0;
}

/* Before the connection closes: the last commits reach the disk and their
 * waiters run; then the sync thread and its connection go. */
static void group_stop(store *st)
{
    durable_stop();
    sqlite3_wal_hook(st->db, NULL, NULL);
    group_free(st->group);
    st->group = NULL;
}

/* ---- migrations ---- */

/* Applies scripts[v..] one by one, each in its own transaction, where v is
 * read by get_version inside that transaction. */
static bool migrate(store *st, const char *what, const char *const *scripts,
                    long long (*get_version)(store *), const char *set_version_fmt)
{
    long long known = 0;
    while (scripts[known]) known++;

    for (;;) {
        if (store_begin(st) != SQLITE_OK) return false;
        long long version = get_version(st);
        if (version < 0) {
            log_error("msg=\"cannot read schema version\" db=%s schema=%s", st->path, what);
            store_rollback(st);
            return false;
        }
        if (version > known) {
            log_error("msg=\"database schema is newer than this program\" db=%s schema=%s "
                      "version=%lld known=%lld", st->path, what, version, known);
            store_rollback(st);
            return false;
        }
        if (version == known) {
            store_rollback(st);
            return true;
        }
        char set_version[128];
        snprintf(set_version, sizeof set_version, set_version_fmt, version + 1);
        if (store_exec(st, scripts[version]) != SQLITE_OK || store_exec(st, set_version) != SQLITE_OK) {
            log_error("msg=\"migration failed\" db=%s schema=%s to_version=%lld", st->path, what,
                      version + 1);
            store_rollback(st);
            return false;
        }
        /* The hook is not installed yet: a plain COMMIT is enough. */
        if (store_commit(st) != SQLITE_OK) return false;
        log_info("msg=\"schema migrated\" db=%s schema=%s version=%lld", st->path, what, version + 1);
    }
}

static long long platform_version(store *st)
{
    if (store_exec(st, "CREATE TABLE IF NOT EXISTS platform_schema (version INTEGER NOT NULL);"
                       "INSERT INTO platform_schema (version) SELECT 0"
                       " WHERE NOT EXISTS (SELECT 1 FROM platform_schema)") != SQLITE_OK)
        return -1;
    return query_int(st, "SELECT version FROM platform_schema");
}

static long long service_version(store *st)
{
    return query_int(st, "PRAGMA user_version");
}

/* ---- open / close ---- */

/* SQLite's busy handler: called with tries = 0, 1, 2 ... while another
 * connection holds the lock; returns 0 to give up (SQLITE_BUSY). */
static int busy_wait(void *arg, int tries)
{
    store *st = arg;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (tries == 0) st->busy_since = now;
    long long waited = (now.tv_sec - st->busy_since.tv_sec) * 1000000000LL +
                       (now.tv_nsec - st->busy_since.tv_nsec);
    if (waited >= BUSY_TIMEOUT_NS) return 0;
    /* 50, 100, 200, 200 ... µs while the holder is likely a short
     * transaction; 1 ms once it has lasted (a checkpoint, a long write). */
    long sleep_us = waited < 5000000LL ? 50L << (tries < 2 ? tries : 2) : 1000L;
    struct timespec pause = {0, sleep_us * 1000L};
    nanosleep(&pause, NULL);
    return 1;
}

/* Each connection's page cache, in KiB (PRAGMA cache_size). SQLite's
 * default, 2000 KiB, was full on every service's loop connection after
 * `make bench` (sqlite3_memory_used 2.3 MB of a 6 MB private RSS): at
 * 1024 KiB it keeps the interior pages of the hot tables and indexes, and a
 * page it drops is one pread from the OS's cache away (make bench,
 * before/after in the hardening note). The relay's and the checkpoint's
 * connections touch few pages and never fill theirs. */
#define STORE_CACHE_KB_DEFAULT 1024

static bool configure(store *st)
{
    sqlite3_busy_handler(st->db, busy_wait, st);
    sqlite3_extended_result_codes(st->db, 1);
    /* journal_mode answers with the mode in force: a file system without
     * shared memory support silently stays in "delete" mode. */
    sqlite3_stmt *s = NULL;
    bool wal = false;
    if (sqlite3_prepare_v2(st->db, "PRAGMA journal_mode=WAL", -1, &s, NULL) == SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW)
        wal = strcmp((const char *)sqlite3_column_text(s, 0), "wal") == 0;
    sqlite3_finalize(s);
    if (!wal) {
        log_error("msg=\"cannot switch the database to WAL mode\" db=%s", st->path);
        return false;
    }
    char pragmas[160];
    snprintf(pragmas, sizeof pragmas,
             "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA cache_size=-%ld",
             config_int("STORE_CACHE_KB", STORE_CACHE_KB_DEFAULT, 64, 1024 * 1024));
    return store_exec(st, pragmas) == SQLITE_OK;
}

/* The database and its WAL and shared-memory files hold customers' data:
 * owner only. New files are (the process's umask is 077, service.c); this
 * also closes files a release before that left readable by others. SQLite
 * gives the -wal and -shm it creates the main file's mode. */
static void store_make_private(const char *path)
{
    static const char *const suffixes[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
        char file[4096];
        if ((size_t)snprintf(file, sizeof file, "%s%s", path, suffixes[i]) >= sizeof file) return;
        if (chmod(file, 0600) != 0 && errno != ENOENT)
            log_warn("msg=\"cannot make the database private\" file=%s errno=%d", file, errno);
    }
}

store *store_open_path(const char *path, const char *const *migrations)
{
    store *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) {
        free(st);
        log_error("msg=\"out of memory opening database\" db=%s", path);
        return NULL;
    }
    int rc = sqlite3_open_v2(path, &st->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        char e[256];
        log_error("msg=\"cannot open database\" db=%s error=%s", path,
                  log_quote(e, sizeof e, st->db ? sqlite3_errmsg(st->db) : sqlite3_errstr(rc)));
        store_close(st);
        return NULL;
    }
    store_make_private(path);
    if (!configure(st) ||
        !migrate(st, "platform", platform_migrations, platform_version,
                 "UPDATE platform_schema SET version = %lld") ||
        (migrations && !migrate(st, "service", migrations, service_version,
                                "PRAGMA user_version = %lld"))) {
        store_close(st);
        return NULL;
    }
    return st;
}

store *store_open(const char *service_name, const char *const *migrations)
{
    /* A service that opens its SQLite file directly has no PostgreSQL store
     * (the ported ones go through db_open, which comes here only without a
     * URL): a URL meant for it must not be silently ignored. */
    char setting[80];
    if (config_database_url(service_name, setting, sizeof setting)) {
        log_error("msg=\"%s is set, but the %s service does not run on PostgreSQL yet: unset it "
                  "(the service then uses SQLite)\" setting=%s", setting, service_name, setting);
        return NULL;
    }
    const char *db_path = config_str("DB_PATH", NULL);
    char file[256];
    snprintf(file, sizeof file, "%s.db", service_name);
    char *path = db_path ? strdup(db_path) : config_data_path(file);
    if (!path) {
        log_error("msg=\"no data directory for the database\" file=%s", file);
        return NULL;
    }
    /* One process per SQLite file (instance.h): claimed before the first
     * write, so a second process changes nothing, not even a migration. */
    store *st = instance_claim_sqlite(service_name, path) ? store_open_path(path, migrations) : NULL;
    free(path);
    return st;
}

void store_close(store *st)
{
    if (!st) return;
    pgstore_free(st->pg);
    if (st->group) group_stop(st);
    cache_clear(st);
    if (st->db) {
        /* A transaction left open by a failed caller must not be committed
         * implicitly: sqlite3_close rolls it back. */
        if (sqlite3_close(st->db) != SQLITE_OK) {
            char e[256];
            log_error("msg=\"database close failed\" db=%s error=%s", st->path,
                      log_quote(e, sizeof e, sqlite3_errmsg(st->db)));
            sqlite3_close_v2(st->db);
        }
    }
    free(st->path);
    free(st);
}

sqlite3 *store_db(store *st) { return st->db; }

const char *store_path(const store *st) { return st->path; }

const char *store_error(store *st)
{
    return st->pg ? pgstore_error(st->pg) : sqlite3_errmsg(st->db);
}

bool store_in_transaction(store *st)
{
    return st->pg ? pgstore_in_transaction(st->pg) : !sqlite3_get_autocommit(st->db);
}

bool store_is_pg(const store *st) { return st->pg != NULL; }

store *store_new_pg(struct pgstore *pg, const char *label)
{
    store *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(label))) {
        free(st);
        return NULL;
    }
    st->pg = pg;
    return st;
}

struct pgstore *store_pgstore(const store *st) { return st ? st->pg : NULL; }

bool store_ready(void *arg)
{
    store *st = arg;
    if (st && st->pg) return pgstore_ready(st->pg);
    if (!st || !st->db) return false;
    sqlite3_stmt *s = store_prepare(st, "SELECT 1");
    bool ok = s && sqlite3_step(s) == SQLITE_ROW;
    if (s) sqlite3_reset(s);
    return ok;
}
