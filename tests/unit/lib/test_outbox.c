/* test_outbox.c: the transactional outbox (lib/outbox.c) without NATS.
 *
 *  - outbox_add writes one row in the caller's transaction: the envelope
 *    (eventType, timestamp, a fresh eventId) around a copy of the payload,
 *    whose own eventType/timestamp/eventId keys cannot override it; a
 *    rollback takes the row away with the change it announced;
 *  - it refuses outside a transaction, and a bad event type, writing nothing;
 *  - the loop's trim deletes exactly the rows up to the relay's mark;
 *  - a trim whose statement cannot be prepared leaves no transaction open
 *    (it used to: the next BEGIN of the loop then failed).
 * The relay and the consumer against a real nats-server: test_bus.c. */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <event2/event.h>
#include <sqlite3.h>

#include "bus.h"
#include "bus_private.h"
#include "store.h"
#include "testing.h"

static const char *const schema[] = {
    "CREATE TABLE rental (id INTEGER PRIMARY KEY, note TEXT NOT NULL);", NULL};

static long long count_rows(store *st)
{
    sqlite3_stmt *s = store_prepare(st, "SELECT count(*) FROM outbox");
    long long n = s && sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : -1;
    if (s) sqlite3_reset(s);
    return n;
}

/* The payload text of the row with the largest seq, parsed (a new reference). */
static json_t *last_event(store *st, long long *seq)
{
    sqlite3_stmt *s = store_prepare(st, "SELECT seq, payload FROM outbox ORDER BY seq DESC LIMIT 1");
    json_t *ev = NULL;
    if (s && sqlite3_step(s) == SQLITE_ROW) {
        *seq = sqlite3_column_int64(s, 0);
        ev = json_loads((const char *)sqlite3_column_text(s, 1), 0, NULL);
    }
    if (s) sqlite3_reset(s);
    return ev;
}

static void test_add(store *st)
{
    json_t *payload = json_pack("{s:i, s:s, s:s, s:s}", "id", 7, "productId", "1001",
                                "eventType", "Forged", "eventId", "not-mine");
    char id[37] = "";

    /* Outside a transaction: refused, nothing written. */
    CHECK_INT(outbox_add(st, "Ordered", payload, "req-1", id), -1);
    CHECK_INT(count_rows(st), 0);

    /* Inside: one row, the envelope ours. */
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(store_exec(st, "INSERT INTO rental (note) VALUES ('kept')"), SQLITE_OK);
    CHECK_INT(outbox_add(st, "Ordered", payload, "req-1", id), 0);
    CHECK_INT(store_commit(st), SQLITE_OK);
    CHECK_INT(count_rows(st), 1);
    long long seq = 0;
    json_t *ev = last_event(st, &seq);
    CHECK(ev != NULL);
    CHECK_STR(json_string_value(json_object_get(ev, "eventType")), "Ordered");
    CHECK_STR(json_string_value(json_object_get(ev, "eventId")), id);
    CHECK_INT(strlen(id), 36);
    CHECK_INT(strlen(json_string_value(json_object_get(ev, "timestamp"))), 14);
    CHECK_INT(json_integer_value(json_object_get(ev, "id")), 7);
    CHECK_STR(json_string_value(json_object_get(ev, "productId")), "1001");
    json_decref(ev);

    /* A rollback takes the event with the change. */
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(store_exec(st, "INSERT INTO rental (note) VALUES ('lost')"), SQLITE_OK);
    CHECK_INT(outbox_add(st, "Ordered", payload, NULL, NULL), 0);
    store_rollback(st);
    CHECK_INT(count_rows(st), 1);

    /* A type that cannot be a subject token is refused. */
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(outbox_add(st, "bad type.>", payload, NULL, NULL), -1);
    CHECK_INT(outbox_add(st, NULL, payload, NULL, NULL), -1);
    CHECK_INT(store_commit(st), SQLITE_OK);
    CHECK_INT(count_rows(st), 1);
    json_decref(payload);
}

static void add_events(store *st, int n)
{
    json_t *payload = json_pack("{s:i}", "id", 1);
    CHECK_INT(store_begin(st), SQLITE_OK);
    for (int i = 0; i < n; i++)
        CHECK_INT(outbox_add(st, "Paid", payload, NULL, NULL), 0);
    CHECK_INT(store_commit(st), SQLITE_OK);
    json_decref(payload);
}

static void test_trim(struct event_base *base, store *st)
{
    add_events(st, 4);
    long long last = 0;
    json_decref(last_event(st, &last));
    CHECK_INT(count_rows(st), 5);

    bus *b = bus_new(base, st, "outbox-test");
    CHECK(b != NULL);
    if (!b) return;
    /* A trim that fails after BEGIN rolls back. The outbox table is away
     * (renamed) before the trim's statement was ever prepared (store.c
     * caches statements), so DELETE cannot be prepared. */
    CHECK_INT(store_exec(st, "ALTER TABLE outbox RENAME TO outbox_away"), SQLITE_OK);
    atomic_store(&b->published_seq, last - 1);
    outbox_trim_now(b);
    CHECK(sqlite3_get_autocommit(store_db(st)));    /* no transaction left open */
    CHECK_INT(b->trimmed_seq, 0);                   /* and nothing claimed done */
    CHECK_INT(store_begin(st), SQLITE_OK);          /* the loop's next transaction begins */
    store_rollback(st);
    CHECK_INT(store_exec(st, "ALTER TABLE outbox_away RENAME TO outbox"), SQLITE_OK);

    /* The relay published everything up to the second-to-last row. */
    outbox_trim_now(b);
    CHECK_INT(count_rows(st), 1);
    CHECK_INT(b->trimmed_seq, last - 1);
    outbox_trim_now(b);     /* nothing new: nothing happens */
    CHECK_INT(count_rows(st), 1);
    atomic_store(&b->published_seq, last);
    outbox_trim_now(b);
    CHECK_INT(count_rows(st), 0);
    bus_free(b);
}

int main(void)
{
    char dir[256], path[300];
    if (!temp_dir_make(dir, sizeof dir, "outbox")) return 1;
    snprintf(path, sizeof path, "%s/outbox.db", dir);
    struct event_base *base = event_base_new();
    store *st = store_open_path(path, schema);
    CHECK(st != NULL);
    if (st) {
        test_add(st);
        test_trim(base, st);
        store_close(st);
    }
    event_base_free(base);
    temp_dir_remove(dir);
    return test_done("test_outbox");
}
