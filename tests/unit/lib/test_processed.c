/* test_processed: the consumer's memory of applied events is kept for at
 * least the window and then forgotten, in bounded steps; dead letters stay
 * under their bound, newest kept (lib/processed.c). The clock is the
 * caller's argument, so no test waits. */
#include "testing.h"
#include "testing_store.h"
#include "processed.h"

#define KEEP 3600

static void mark(store *st, const char *id)
{
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK(processed_mark(st, id, "Ordered"));
    CHECK_INT(store_commit(st), SQLITE_OK);
}

static bool seen(store *st, const char *id)
{
    store_begin(st);
    bool found = processed_seen(st, id);
    store_rollback(st);
    return found;
}

/* Runs upkeep at `now` until it has nothing more to do at once; steps taken. */
static int upkeep_until_done(store *st, long long now)
{
    int steps = 0, more;
    while ((more = processed_upkeep(st, now, KEEP, 1000)) == 1)
        steps++;
    CHECK_INT(more, 0);
    return steps + 1;
}

static void test_window(store *st)
{
    long long g = count(st, "SELECT started_at FROM processed_generation");
    CHECK(g > 0);
    mark(st, "old");
    upkeep_until_done(st, g + KEEP - 1);            /* not due yet */
    CHECK(seen(st, "old"));
    upkeep_until_done(st, g + KEEP);                /* due: swap, "old" is kept */
    CHECK(seen(st, "old"));
    CHECK_INT(count(st, "SELECT started_at FROM processed_generation"), g + KEEP);
    mark(st, "new");
    CHECK(seen(st, "new"));
    upkeep_until_done(st, g + 2 * KEEP - 1);
    CHECK(seen(st, "old"));
    upkeep_until_done(st, g + 2 * KEEP);            /* "old" is 2 windows old: gone */
    CHECK(!seen(st, "old"));
    CHECK(seen(st, "new"));
    upkeep_until_done(st, g + 3 * KEEP);
    CHECK(!seen(st, "new"));
}

/* A big previous generation goes in chunks: several steps, each bounded. */
static void test_chunks(store *st)
{
    long long g = count(st, "SELECT started_at FROM processed_generation");
    CHECK_INT(store_exec(st, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
                             " WHERE i < 2500) INSERT INTO processed_events"
                             " SELECT 'bulk-' || i, 'Paid', 'x' FROM n"), SQLITE_OK);
    upkeep_until_done(st, g + KEEP);                /* swap: the 2500 are "previous" */
    CHECK_INT(count(st, "SELECT COUNT(*) FROM processed_events_previous"), 2500);
    CHECK_INT(upkeep_until_done(st, g + 2 * KEEP), 4);   /* 1000, 1000, 500, then the swap */
    CHECK_INT(count(st, "SELECT COUNT(*) FROM processed_events_previous"), 0);
    CHECK_INT(count(st, "SELECT COUNT(*) FROM processed_events"), 0);
}

static void test_dead_letters(store *st)
{
    for (int i = 0; i < 7; i++) {
        char sql[300];
        snprintf(sql, sizeof sql, "INSERT INTO dead_letters (event_id, event_type, subject, payload,"
                 " deliveries, error) VALUES ('dl-%d', 'Paid', 'carshare.Paid', '{}', 5, 'x')", i);
        CHECK_INT(store_exec(st, sql), SQLITE_OK);
    }
    long long g = count(st, "SELECT started_at FROM processed_generation");
    CHECK_INT(processed_upkeep(st, g, KEEP, 3), 0);
    CHECK_INT(count(st, "SELECT COUNT(*) FROM dead_letters"), 3);
    CHECK_INT(count(st, "SELECT COUNT(*) FROM dead_letters WHERE event_id IN ('dl-4','dl-5','dl-6')"),
              3);
}

int main(void)
{
    char dir[128];
    store *st = temp_store_open(dir, sizeof dir, "processed", NULL);
    if (!st) return 1;
    test_window(st);
    test_chunks(st);
    test_dead_letters(st);
    store_close(st);
    temp_dir_remove(dir);
    return test_done("test_processed");
}
