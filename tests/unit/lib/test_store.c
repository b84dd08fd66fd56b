/* test_store.c: the SQLite store: pragmas, migrations (once, in order, each
 * atomic, never shifted by the platform's tables), reopening, the statement
 * cache, the commit hook, rollback, stale read snapshots, waiting for a
 * write lock another connection holds, and the row reading helpers. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "store.h"
#include "testing.h"

static char dir[64];

static long long int_of(store *st, const char *sql)
{
    sqlite3_stmt *s = store_prepare(st, sql);
    long long v = -1;
    if (s && sqlite3_step(s) == SQLITE_ROW) v = sqlite3_column_int64(s, 0);
    if (s) sqlite3_reset(s);
    return v;
}

static const char *text_of(store *st, const char *sql, char *buf, size_t len)
{
    sqlite3_stmt *s = store_prepare(st, sql);
    buf[0] = '\0';
    if (s && sqlite3_step(s) == SQLITE_ROW && sqlite3_column_text(s, 0))
        snprintf(buf, len, "%s", (const char *)sqlite3_column_text(s, 0));
    if (s) sqlite3_reset(s);
    return buf;
}

static bool table_exists(store *st, const char *name)
{
    sqlite3_stmt *s = store_prepare(st, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?");
    sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
    bool found = sqlite3_step(s) == SQLITE_ROW;
    sqlite3_reset(s);
    return found;
}

/* Each migration leaves a trace of its number, so order and count show. */
static const char *const migrations_v2[] = {
    "CREATE TABLE trace (n INTEGER NOT NULL); INSERT INTO trace VALUES (1);"
    "CREATE TABLE car (id TEXT PRIMARY KEY, name TEXT NOT NULL);",
    "INSERT INTO trace VALUES (2); ALTER TABLE car ADD COLUMN price INTEGER NOT NULL DEFAULT 0;",
    NULL
};
static const char *const migrations_v3[] = {
    "CREATE TABLE trace (n INTEGER NOT NULL); INSERT INTO trace VALUES (1);"
    "CREATE TABLE car (id TEXT PRIMARY KEY, name TEXT NOT NULL);",
    "INSERT INTO trace VALUES (2); ALTER TABLE car ADD COLUMN price INTEGER NOT NULL DEFAULT 0;",
    "INSERT INTO trace VALUES (3); CREATE TABLE parent (id INTEGER PRIMARY KEY);"
    "CREATE TABLE child (pid INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);",
    NULL
};
static const char *const migrations_broken[] = {
    "CREATE TABLE trace (n INTEGER NOT NULL); INSERT INTO trace VALUES (1);"
    "CREATE TABLE car (id TEXT PRIMARY KEY, name TEXT NOT NULL);",
    "INSERT INTO trace VALUES (2); ALTER TABLE car ADD COLUMN price INTEGER NOT NULL DEFAULT 0;",
    "INSERT INTO trace VALUES (3); CREATE TABLE parent (id INTEGER PRIMARY KEY);"
    "CREATE TABLE child (pid INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);",
    "INSERT INTO trace VALUES (4); CREATE TABLE half_done (x); INSERT INTO no_such_table VALUES (1);",
    NULL
};

static void test_open_and_migrate(const char *path)
{
    store *st = store_open_path(path, migrations_v2);
    CHECK(st != NULL);
    if (!st) return;
    char buf[64];
    CHECK_STR(text_of(st, "PRAGMA journal_mode", buf, sizeof buf), "wal");
    CHECK_INT(int_of(st, "PRAGMA synchronous"), 2);         /* FULL */
    CHECK_INT(int_of(st, "PRAGMA foreign_keys"), 1);
    CHECK_INT(int_of(st, "PRAGMA user_version"), 2);        /* the service's count, not shifted */
    CHECK(table_exists(st, "outbox"));
    CHECK(table_exists(st, "processed_events"));
    CHECK(table_exists(st, "dead_letters"));
    CHECK_INT(int_of(st, "SELECT count(*) FROM trace"), 2);
    CHECK_INT(int_of(st, "SELECT group_concat(n, ',') = '1,2' FROM trace"), 1);
    CHECK(store_ready(st));
    CHECK_STR(store_path(st), path);

    CHECK_INT(store_exec(st, "INSERT INTO car (id, name, price) VALUES ('1001', 'Avante', 50000)"), SQLITE_OK);
    store_close(st);

    /* Reopen: nothing applied again, data kept. */
    st = store_open_path(path, migrations_v2);
    CHECK(st != NULL);
    if (!st) return;
    CHECK_INT(int_of(st, "SELECT count(*) FROM trace"), 2);
    CHECK_INT(int_of(st, "SELECT price FROM car WHERE id = '1001'"), 50000);
    store_close(st);

    /* A worker's connection (no migrations) leaves the service schema alone. */
    st = store_open_path(path, NULL);
    CHECK(st != NULL);
    if (st) {
        CHECK_INT(int_of(st, "PRAGMA user_version"), 2);
        store_close(st);
    }

    /* A new migration: only it runs. */
    st = store_open_path(path, migrations_v3);
    CHECK(st != NULL);
    if (!st) return;
    CHECK_INT(int_of(st, "PRAGMA user_version"), 3);
    CHECK_INT(int_of(st, "SELECT group_concat(n, ',') = '1,2,3' FROM trace"), 1);
    store_close(st);

    /* A failing migration is refused as a whole: no half-applied script. */
    st = store_open_path(path, migrations_broken);
    CHECK(st == NULL);
    store_close(st);
    st = store_open_path(path, migrations_v3);
    CHECK(st != NULL);
    if (!st) return;
    CHECK_INT(int_of(st, "PRAGMA user_version"), 3);
    CHECK(!table_exists(st, "half_done"));
    CHECK_INT(int_of(st, "SELECT count(*) FROM trace WHERE n = 4"), 0);
    store_close(st);

    /* A database newer than the program is refused, not damaged. */
    st = store_open_path(path, migrations_v2);
    CHECK(st == NULL);
    store_close(st);
}

static void test_statement_cache(const char *path)
{
    store *st = store_open_path(path, migrations_v3);
    CHECK(st != NULL);
    if (!st) return;

    sqlite3_stmt *a = store_prepare(st, "SELECT ?1 + 1");
    sqlite3_stmt *b = store_prepare(st, "SELECT ?1 + 2");
    CHECK(a && b && a != b);
    CHECK(store_prepare(st, "SELECT ?1 + 1") == a);

    /* Returned reset, with bindings cleared. */
    sqlite3_bind_int(a, 1, 41);
    CHECK_INT(sqlite3_step(a), SQLITE_ROW);
    CHECK_INT(sqlite3_column_int(a, 0), 42);
    a = store_prepare(st, "SELECT ?1 + 1");
    CHECK_INT(sqlite3_step(a), SQLITE_ROW);
    CHECK_INT(sqlite3_column_type(a, 0), SQLITE_NULL);
    sqlite3_reset(a);

    /* Hundreds of distinct statements: each found again, the same one. */
    enum { N = 600 };
    static sqlite3_stmt *stmts[N];
    char sql[64];
    for (int i = 0; i < N; i++) {
        snprintf(sql, sizeof sql, "SELECT %d", i);
        stmts[i] = store_prepare(st, sql);
        CHECK(stmts[i] != NULL);
    }
    int same = 0;
    for (int i = 0; i < N; i++) {
        snprintf(sql, sizeof sql, "SELECT %d", i);
        sqlite3_stmt *s = store_prepare(st, sql);
        same += s == stmts[i] && sqlite3_step(s) == SQLITE_ROW && sqlite3_column_int(s, 0) == i;
        sqlite3_reset(s);
    }
    CHECK_INT(same, N);
    CHECK(store_prepare(st, "SELECT ?1 + 1") == a);   /* survived the table's growth */

    /* Bad SQL is an error, not a cached entry. */
    CHECK(store_prepare(st, "SELEKT nonsense") == NULL);
    CHECK(store_prepare(st, "SELEKT nonsense") == NULL);
    store_close(st);
}

static int commits;
static void count_commit(void *arg)
{
    CHECK(arg == &commits);
    commits++;
}

static void test_transactions(const char *path)
{
    store *st = store_open_path(path, migrations_v3);
    CHECK(st != NULL);
    if (!st) return;
    store_on_commit(st, count_commit, &commits);
    long long cars = int_of(st, "SELECT count(*) FROM car");

    /* Commit: visible, hook called once. */
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(store_exec(st, "INSERT INTO car (id, name) VALUES ('2001', 'Sonata')"), SQLITE_OK);
    CHECK_INT(commits, 0);
    CHECK_INT(store_commit(st), SQLITE_OK);
    CHECK_INT(commits, 1);
    CHECK_INT(int_of(st, "SELECT count(*) FROM car"), cars + 1);

    /* Rollback: gone, no hook. */
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(store_exec(st, "INSERT INTO car (id, name) VALUES ('2002', 'K5')"), SQLITE_OK);
    store_rollback(st);
    CHECK_INT(commits, 1);
    CHECK_INT(int_of(st, "SELECT count(*) FROM car WHERE id = '2002'"), 0);
    CHECK(sqlite3_get_autocommit(store_db(st)));

    /* A commit that fails (deferred foreign key) is rolled back, no hook. */
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(store_exec(st, "INSERT INTO child (pid) VALUES (999)"), SQLITE_OK);
    CHECK(store_commit(st) != SQLITE_OK);
    CHECK_INT(commits, 1);
    CHECK(sqlite3_get_autocommit(store_db(st)));
    CHECK_INT(int_of(st, "SELECT count(*) FROM child"), 0);

    /* A read left half-stepped must not make the next write transaction
     * fail because another connection wrote in between. */
    store *other = store_open_path(path, NULL);
    CHECK(other != NULL);
    sqlite3_stmt *s = store_prepare(st, "SELECT id FROM car ORDER BY id");
    CHECK_INT(sqlite3_step(s), SQLITE_ROW);     /* left open on purpose */
    if (other) {
        CHECK_INT(store_begin(other), SQLITE_OK);
        CHECK_INT(store_exec(other, "INSERT INTO car (id, name) VALUES ('3001', 'Ioniq')"), SQLITE_OK);
        CHECK_INT(store_commit(other), SQLITE_OK);
        store_close(other);
    }
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(store_exec(st, "INSERT INTO car (id, name) VALUES ('3002', 'Casper')"), SQLITE_OK);
    CHECK_INT(store_commit(st), SQLITE_OK);
    CHECK_INT(int_of(st, "SELECT count(*) FROM car WHERE id IN ('3001', '3002')"), 2);

    /* A second BEGIN inside a transaction is an error, not a silent nest. */
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK(store_begin(st) != SQLITE_OK);
    store_rollback(st);
    store_close(st);
}

static void *commit_later(void *arg)
{
    usleep(30 * 1000);
    store_commit(arg);
    return NULL;
}

/* BEGIN IMMEDIATE while another connection holds the write lock waits for
 * it (the store's busy handler) instead of failing with SQLITE_BUSY, and
 * then sees the other connection's write. */
static void test_waits_for_write_lock(const char *path)
{
    store *st = store_open_path(path, NULL);
    store *other = store_open_path(path, NULL);
    CHECK(st != NULL && other != NULL);
    if (!st || !other) {
        store_close(st);
        store_close(other);
        return;
    }
    CHECK_INT(store_begin(other), SQLITE_OK);
    CHECK_INT(store_exec(other, "INSERT INTO car (id, name) VALUES ('4001', 'Ray')"), SQLITE_OK);
    pthread_t t;
    CHECK_INT(pthread_create(&t, NULL, commit_later, other), 0);
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(int_of(st, "SELECT count(*) FROM car WHERE id = '4001'"), 1);
    store_rollback(st);
    pthread_join(t, NULL);
    store_close(other);
    store_close(st);
}

static void test_store_open_in_data_dir(void)
{
    char data[128];
    snprintf(data, sizeof data, "%s/data", dir);
    setenv("DATA_DIR", data, 1);
    unsetenv("DB_PATH");
    store *st = store_open("unit", migrations_v2);
    CHECK(st != NULL);
    if (st) {
        char expected[160];
        snprintf(expected, sizeof expected, "%s/unit.db", data);
        CHECK_STR(store_path(st), expected);
        CHECK(access(expected, F_OK) == 0);
        store_close(st);
    }

    char db_path[128];
    snprintf(db_path, sizeof db_path, "%s/explicit.db", dir);
    setenv("DB_PATH", db_path, 1);
    st = store_open("unit", NULL);
    CHECK(st != NULL);
    if (st) {
        CHECK_STR(store_path(st), db_path);
        store_close(st);
    }
    unsetenv("DB_PATH");
}

/* ---- row reading helpers ---- */

struct test_car {
    char id[8];
    char name[6];       /* small on purpose: truncation */
    long long price;
};

static int read_test_car(sqlite3_stmt *s, void *out)
{
    struct test_car *c = out;
    store_column_text(s, 0, c->id, sizeof c->id);
    store_column_text(s, 1, c->name, sizeof c->name);
    c->price = sqlite3_column_int64(s, 2);
    return 0;
}

/* A reader that refuses the car named 'Bad': a row the service cannot use. */
static int read_picky_car(sqlite3_stmt *s, void *out)
{
    read_test_car(s, out);
    return strcmp(((struct test_car *)out)->name, "Bad") == 0 ? -1 : 0;
}

static void test_row_helpers(const char *path)
{
    store *st = store_open_path(path, migrations_v2);
    CHECK(st != NULL);
    if (!st) return;
    CHECK_INT(store_exec(st, "DELETE FROM car;"
                             "INSERT INTO car (id, name, price) VALUES"
                             " ('r1', 'Avante', 10), ('r2', 'Bad', 20), ('r3', 'K3', 30)"),
              SQLITE_OK);

    /* store_column_text: copies, truncates to the buffer, NULL reads as "". */
    sqlite3_stmt *s = store_prepare(st, "SELECT 'Sonata', NULL, 'x'");
    CHECK_INT(sqlite3_step(s), SQLITE_ROW);
    char small[4] = "zzz", empty[8] = "zzz", one[8];
    store_column_text(s, 0, small, sizeof small);
    store_column_text(s, 1, empty, sizeof empty);
    store_column_text(s, 2, one, sizeof one);
    CHECK_STR(small, "Son");
    CHECK_STR(empty, "");
    CHECK_STR(one, "x");
    sqlite3_reset(s);

    /* store_one_row: found, not found, reader failure, SQL error; the
     * statement is reset every time. */
    struct test_car c;
    memset(&c, 0, sizeof c);
    s = store_prepare(st, "SELECT id, name, price FROM car WHERE id = ?");
    sqlite3_bind_text(s, 1, "r1", -1, SQLITE_STATIC);
    CHECK_INT(store_one_row(st, s, read_test_car, &c, "car read"), 1);
    CHECK_STR(c.id, "r1");
    CHECK_STR(c.name, "Avant");     /* "Avante" cut to the 6-byte buffer */
    CHECK_INT(c.price, 10);
    CHECK(!sqlite3_stmt_busy(s));

    s = store_prepare(st, "SELECT id, name, price FROM car WHERE id = ?");
    sqlite3_bind_text(s, 1, "nope", -1, SQLITE_STATIC);
    CHECK_INT(store_one_row(st, s, read_test_car, &c, "car read"), 0);
    CHECK_STR(c.id, "r1");          /* untouched */
    CHECK(!sqlite3_stmt_busy(s));

    s = store_prepare(st, "SELECT id, name, price FROM car WHERE id = ?");
    sqlite3_bind_text(s, 1, "r2", -1, SQLITE_STATIC);
    CHECK_INT(store_one_row(st, s, read_picky_car, &c, "car read"), -1);
    CHECK(!sqlite3_stmt_busy(s));

    /* A run-time error (not a prepare error): abs() of the smallest integer
     * overflows when the row is computed. */
    s = store_prepare(st, "SELECT id, name, abs(-9223372036854775807 - 1) FROM car");
    CHECK(s != NULL);
    if (s) {
        CHECK_INT(store_one_row(st, s, read_test_car, &c, "overflowing read"), -1);
        CHECK(!sqlite3_stmt_busy(s));
    }

    /* store_find_one: prepares and binds the integer key itself. */
    memset(&c, 0, sizeof c);
    CHECK_INT(store_find_one(st, "SELECT id, name, price FROM car WHERE price = ?", 30,
                             read_test_car, &c, "car by price"), 1);
    CHECK_STR(c.id, "r3");
    CHECK_STR(c.name, "K3");
    CHECK_INT(store_find_one(st, "SELECT id, name, price FROM car WHERE price = ?", 31,
                             read_test_car, &c, "car by price"), 0);
    CHECK_STR(c.id, "r3");          /* untouched */
    CHECK_INT(store_find_one(st, "SELEKT nothing", 1, read_test_car, &c, "car by price"), -1);

    /* store_next_row: every row in order, then 0 and a reset statement. */
    s = store_prepare(st, "SELECT id, name, price FROM car ORDER BY id");
    char seen[64] = "";
    long long total = 0;
    int rc;
    while ((rc = store_next_row(st, s, read_test_car, &c, "car list")) > 0) {
        strncat(seen, c.id, sizeof seen - strlen(seen) - 1);
        total += c.price;
        CHECK(sqlite3_stmt_busy(s));    /* still on the row while visited */
    }
    CHECK_INT(rc, 0);
    CHECK_STR(seen, "r1r2r3");
    CHECK_INT(total, 60);
    CHECK(!sqlite3_stmt_busy(s));

    /* ... and stops with -1 at a row its reader refuses. */
    s = store_prepare(st, "SELECT id, name, price FROM car ORDER BY id");
    int rows = 0;
    while ((rc = store_next_row(st, s, read_picky_car, &c, "car list")) > 0) rows++;
    CHECK_INT(rc, -1);
    CHECK_INT(rows, 1);
    CHECK(!sqlite3_stmt_busy(s));

    /* store_one_int: the value, or -1 on error; reset either way. */
    s = store_prepare(st, "SELECT COUNT(*) FROM car WHERE price >= ?");
    sqlite3_bind_int64(s, 1, 20);
    CHECK_INT(store_one_int(st, s, "car count"), 2);
    CHECK(!sqlite3_stmt_busy(s));
    s = store_prepare(st, "SELECT abs(-9223372036854775807 - 1)");
    CHECK(s != NULL);
    if (s) {
        CHECK_INT(store_one_int(st, s, "overflowing count"), -1);
        CHECK(!sqlite3_stmt_busy(s));
    }
    s = store_prepare(st, "SELECT 1 FROM car WHERE 0");     /* no row at all */
    CHECK_INT(store_one_int(st, s, "empty count"), -1);

    /* Nothing left open: a write transaction from another connection and
     * then one from this one both go through. */
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(store_exec(st, "DELETE FROM car WHERE id LIKE 'r%'"), SQLITE_OK);
    CHECK_INT(store_commit(st), SQLITE_OK);
    store_close(st);
}

/* A database made before platform migration 2 (outbox with a UNIQUE
 * event_id): its waiting events survive the rebuild, seq goes on from
 * where it was, and the index is gone. */
static void test_outbox_migration(const char *path)
{
    sqlite3 *db = NULL;
    CHECK_INT(sqlite3_open(path, &db), SQLITE_OK);
    CHECK_INT(sqlite3_exec(db,
        "PRAGMA journal_mode=WAL;"
        "CREATE TABLE platform_schema (version INTEGER NOT NULL); INSERT INTO platform_schema VALUES (1);"
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,"
        "  event_type TEXT NOT NULL, payload TEXT NOT NULL, request_id TEXT,"
        "  created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));"
        "CREATE TABLE processed_events (event_id TEXT PRIMARY KEY, event_type TEXT NOT NULL,"
        "  processed_at TEXT NOT NULL DEFAULT '') WITHOUT ROWID;"
        "CREATE TABLE dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,"
        "  event_type TEXT NOT NULL, subject TEXT NOT NULL, payload TEXT NOT NULL, request_id TEXT,"
        "  deliveries INTEGER NOT NULL, error TEXT NOT NULL, stream_seq INTEGER,"
        "  created_at TEXT NOT NULL DEFAULT '');"
        "INSERT INTO outbox (event_id, event_type, payload) VALUES ('e1', 'Ordered', '{}'),"
        "  ('e2', 'Paid', '{}'), ('e3', 'Shipped', '{}');"
        "DELETE FROM outbox WHERE seq = 1;", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);

    store *st = store_open_path(path, NULL);
    CHECK(st != NULL);
    if (!st) return;
    CHECK_INT(int_of(st, "SELECT version FROM platform_schema"), 3);
    CHECK_INT(int_of(st, "SELECT count(*) FROM outbox WHERE seq IN (2, 3)"), 2);
    CHECK_INT(int_of(st, "SELECT count(*) FROM processed_events_previous"), 0);   /* migration 3 */
    CHECK(int_of(st, "SELECT started_at FROM processed_generation") > 1700000000);
    CHECK_INT(int_of(st, "SELECT count(*) FROM sqlite_master WHERE tbl_name = 'outbox' AND type = 'index'"), 0);
    CHECK_INT(store_exec(st, "INSERT INTO outbox (event_id, event_type, payload) VALUES ('e4', 'Paid', '{}')"),
              SQLITE_OK);
    CHECK_INT(int_of(st, "SELECT seq FROM outbox WHERE event_id = 'e4'"), 4);
    store_close(st);
}

int main(void)
{
    log_init("test_store");
    if (!temp_dir_make(dir, sizeof dir, "store"))
        return 1;
    char path[128];
    snprintf(path, sizeof path, "%s/service.db", dir);

    test_open_and_migrate(path);
    test_statement_cache(path);
    test_transactions(path);
    test_waits_for_write_lock(path);
    test_store_open_in_data_dir();
    snprintf(path, sizeof path, "%s/rows.db", dir);
    test_row_helpers(path);
    snprintf(path, sizeof path, "%s/old-outbox.db", dir);
    test_outbox_migration(path);

    temp_dir_remove(dir);
    return test_done("test_store");
}
