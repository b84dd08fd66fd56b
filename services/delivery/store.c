/* store.c: all of delivery's SQL.
 *
 * Tables:
 *   delivery_orders  what the events told us about each order (Ordered seen,
 *                    Paid seen and its payment id). A row exists as soon as
 *                    either event arrived; it is the memory that lets the
 *                    second of the two trigger the shipment.
 *   deliveries       one per order at most (UNIQUE order_id), "Shipped" or
 *                    "DeliveryCancelled".
 *   cancellations    one per order at most (UNIQUE order_id): the record
 *                    that makes "once per order" and "never shipped after a
 *                    cancellation" hold across restarts.
 * The UNIQUE constraints are the last line of defence: even a bug in the
 * policy could not create a second delivery or cancellation for an order.
 *
 * Every statement is reset after use so that no read stays open across the
 * caller's COMMIT. Errors are logged here with the statement's purpose and
 * reported as -1.
 *
 * The statements of the event path bind their timestamps (log_utc_now, the
 * same text as strftime('%Y-%m-%dT%H:%M:%SZ','now')) instead of calling
 * SQLite's strftime: measured, that was 8% of delivery's CPU per rental.
 *
 * The same functions on PostgreSQL are in store_pg.c: each function here
 * hands a PostgreSQL store over to its twin. */
#include "delivery.h"

#include <stdio.h>
#include <string.h>
#include "log.h"

const char *const delivery_migrations[] = {
    "CREATE TABLE delivery_orders ("
    "  order_id   INTEGER PRIMARY KEY,"
    "  ordered    INTEGER NOT NULL DEFAULT 0,"
    "  paid       INTEGER NOT NULL DEFAULT 0,"
    "  payment_id INTEGER,"
    "  updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ','now')));"
    "CREATE TABLE deliveries ("
    "  id         INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  order_id   INTEGER NOT NULL UNIQUE,"
    "  payment_id INTEGER,"
    "  status     TEXT NOT NULL,"
    "  created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ','now')),"
    "  updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ','now')));"
    "CREATE TABLE cancellations ("
    "  id          INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  order_id    INTEGER NOT NULL UNIQUE,"
    "  delivery_id INTEGER NOT NULL REFERENCES deliveries(id),"
    "  payment_id  INTEGER,"
    "  created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ','now')));",
    NULL
};

const db_schema delivery_schema = {delivery_migrations, delivery_pg_migrations};

static int fail(store *st, sqlite3_stmt *s, const char *what)
{
    log_error("msg=\"delivery store: %s failed\" sqlite=\"%s\"", what, store_error(st));
    if (s) sqlite3_reset(s);
    return -1;
}

/* Steps a statement that returns no rows. */
static int run(store *st, sqlite3_stmt *s, const char *what)
{
    if (sqlite3_step(s) != SQLITE_DONE) return fail(st, s, what);
    sqlite3_reset(s);
    return 0;
}

static void bind_id_or_null(sqlite3_stmt *s, int i, long long id)
{
    if (id > 0) sqlite3_bind_int64(s, i, id);
    else sqlite3_bind_null(s, i);
}

/* ---- what the events told us ---- */

int delivery_store_note_ordered(store *st, long long order_id)
{
    if (store_is_pg(st)) return delivery_pg_note_ordered(st, order_id);
    sqlite3_stmt *s = store_prepare(st,
        "INSERT INTO delivery_orders (order_id, ordered, updated_at) VALUES (?1, 1, ?2) "
        "ON CONFLICT (order_id) DO UPDATE SET ordered = 1, updated_at = ?2");
    if (!s) return -1;
    char now[32];
    sqlite3_bind_int64(s, 1, order_id);
    sqlite3_bind_text(s, 2, log_utc_now(now, false), -1, SQLITE_TRANSIENT);
    return run(st, s, "note ordered");
}

int delivery_store_note_paid(store *st, long long order_id, long long payment_id)
{
    if (store_is_pg(st)) return delivery_pg_note_paid(st, order_id, payment_id);
    sqlite3_stmt *s = store_prepare(st,
        "INSERT INTO delivery_orders (order_id, paid, payment_id, updated_at) "
        "VALUES (?1, 1, ?2, ?3) "
        "ON CONFLICT (order_id) DO UPDATE SET paid = 1, payment_id = excluded.payment_id, "
        "updated_at = ?3");
    if (!s) return -1;
    char now[32];
    sqlite3_bind_int64(s, 1, order_id);
    sqlite3_bind_int64(s, 2, payment_id);
    sqlite3_bind_text(s, 3, log_utc_now(now, false), -1, SQLITE_TRANSIENT);
    return run(st, s, "note paid");
}

int delivery_store_facts(store *st, long long order_id, order_facts *out)
{
    if (store_is_pg(st)) return delivery_pg_facts(st, order_id, out);
    sqlite3_stmt *s = store_prepare(st,
        "SELECT (SELECT ordered FROM delivery_orders WHERE order_id = ?1),"
        "       (SELECT paid FROM delivery_orders WHERE order_id = ?1),"
        "       (SELECT payment_id FROM delivery_orders WHERE order_id = ?1),"
        "       EXISTS (SELECT 1 FROM deliveries WHERE order_id = ?1),"
        "       EXISTS (SELECT 1 FROM cancellations WHERE order_id = ?1)");
    if (!s) return -1;
    sqlite3_bind_int64(s, 1, order_id);
    if (sqlite3_step(s) != SQLITE_ROW) return fail(st, s, "read order facts");
    memset(out, 0, sizeof *out);
    out->order_id = order_id;
    out->ordered = sqlite3_column_int(s, 0) != 0;
    out->paid = sqlite3_column_int(s, 1) != 0;
    out->payment_id = sqlite3_column_int64(s, 2);   /* NULL reads as 0 */
    out->has_delivery = sqlite3_column_int(s, 3) != 0;
    out->cancelled = sqlite3_column_int(s, 4) != 0;
    sqlite3_reset(s);
    return 0;
}

/* ---- deliveries ---- */

#define DELIVERY_COLUMNS "id, order_id, payment_id, status"

static int read_delivery(sqlite3_stmt *s, void *out)
{
    delivery *d = out;
    memset(d, 0, sizeof *d);
    d->id = sqlite3_column_int64(s, 0);
    d->order_id = sqlite3_column_int64(s, 1);
    d->payment_id = sqlite3_column_int64(s, 2);
    store_column_text(s, 3, d->status, sizeof d->status);
    return 0;
}

int delivery_store_insert(store *st, delivery *d)
{
    if (store_is_pg(st)) return delivery_pg_insert(st, d);
    sqlite3_stmt *s = store_prepare(st,
        "INSERT INTO deliveries (order_id, payment_id, status, created_at, updated_at)"
        " VALUES (?1, ?2, ?3, ?4, ?4)");
    if (!s) return -1;
    char now[32];
    sqlite3_bind_int64(s, 1, d->order_id);
    bind_id_or_null(s, 2, d->payment_id);
    sqlite3_bind_text(s, 3, d->status, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 4, log_utc_now(now, false), -1, SQLITE_TRANSIENT);
    if (run(st, s, "insert delivery") < 0) return -1;
    d->id = sqlite3_last_insert_rowid(store_db(st));
    return 0;
}

int delivery_store_set_status(store *st, long long id, const char *status)
{
    if (store_is_pg(st)) return delivery_pg_set_status(st, id, status);
    sqlite3_stmt *s = store_prepare(st,
        "UPDATE deliveries SET status = ?2, updated_at = ?3 WHERE id = ?1");
    if (!s) return -1;
    char now[32];
    sqlite3_bind_int64(s, 1, id);
    sqlite3_bind_text(s, 2, status, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 3, log_utc_now(now, false), -1, SQLITE_TRANSIENT);
    return run(st, s, "update delivery status");
}

int delivery_store_get(store *st, long long id, delivery *out)
{
    if (store_is_pg(st)) return delivery_pg_get(st, id, out);
    return store_find_one(st, "SELECT " DELIVERY_COLUMNS " FROM deliveries WHERE id = ?1",
                          id, read_delivery, out, "read delivery");
}

int delivery_store_find_by_order(store *st, long long order_id, delivery *out)
{
    if (store_is_pg(st)) return delivery_pg_find_by_order(st, order_id, out);
    return store_find_one(st, "SELECT " DELIVERY_COLUMNS " FROM deliveries WHERE order_id = ?1",
                          order_id, read_delivery, out, "find delivery by order");
}

long long delivery_store_count(store *st, long long order_id_or_0)
{
    if (store_is_pg(st)) return delivery_pg_count(st, order_id_or_0);
    sqlite3_stmt *s = store_prepare(st,
        "SELECT COUNT(*) FROM deliveries WHERE ?1 = 0 OR order_id = ?1");
    if (!s) return -1;
    sqlite3_bind_int64(s, 1, order_id_or_0);
    return store_one_int(st, s, "count deliveries");
}

int delivery_store_list(store *st, long long order_id_or_0, long offset, long limit,
                        void (*visit)(const delivery *d, void *arg), void *arg)
{
    if (store_is_pg(st)) return delivery_pg_list(st, order_id_or_0, offset, limit, visit, arg);
    sqlite3_stmt *s = store_prepare(st,
        "SELECT " DELIVERY_COLUMNS " FROM deliveries WHERE ?1 = 0 OR order_id = ?1 "
        "ORDER BY id LIMIT ?2 OFFSET ?3");
    if (!s) return -1;
    sqlite3_bind_int64(s, 1, order_id_or_0);
    sqlite3_bind_int64(s, 2, limit);
    sqlite3_bind_int64(s, 3, offset);
    delivery d;
    int rc;
    while ((rc = store_next_row(st, s, read_delivery, &d, "list deliveries")) > 0)
        visit(&d, arg);
    return rc;
}

/* ---- cancellations ---- */

#define CANCELLATION_COLUMNS "id, order_id, delivery_id, payment_id"

static int read_cancellation(sqlite3_stmt *s, void *out)
{
    cancellation *c = out;
    c->id = sqlite3_column_int64(s, 0);
    c->order_id = sqlite3_column_int64(s, 1);
    c->delivery_id = sqlite3_column_int64(s, 2);
    c->payment_id = sqlite3_column_int64(s, 3);
    return 0;
}

int cancellation_store_insert(store *st, cancellation *c)
{
    if (store_is_pg(st)) return cancellation_pg_insert(st, c);
    sqlite3_stmt *s = store_prepare(st,
        "INSERT INTO cancellations (order_id, delivery_id, payment_id) VALUES (?1, ?2, ?3)");
    if (!s) return -1;
    sqlite3_bind_int64(s, 1, c->order_id);
    sqlite3_bind_int64(s, 2, c->delivery_id);
    bind_id_or_null(s, 3, c->payment_id);
    if (run(st, s, "insert cancellation") < 0) return -1;
    c->id = sqlite3_last_insert_rowid(store_db(st));
    return 0;
}

int cancellation_store_get(store *st, long long id, cancellation *out)
{
    if (store_is_pg(st)) return cancellation_pg_get(st, id, out);
    return store_find_one(st, "SELECT " CANCELLATION_COLUMNS " FROM cancellations WHERE id = ?1",
                          id, read_cancellation, out, "read cancellation");
}

int cancellation_store_find_by_order(store *st, long long order_id, cancellation *out)
{
    if (store_is_pg(st)) return cancellation_pg_find_by_order(st, order_id, out);
    return store_find_one(st, "SELECT " CANCELLATION_COLUMNS
                              " FROM cancellations WHERE order_id = ?1",
                          order_id, read_cancellation, out, "find cancellation by order");
}

long long cancellation_store_count(store *st)
{
    if (store_is_pg(st)) return cancellation_pg_count(st);
    sqlite3_stmt *s = store_prepare(st, "SELECT COUNT(*) FROM cancellations");
    if (!s) return -1;
    return store_one_int(st, s, "count cancellations");
}

int cancellation_store_list(store *st, long offset, long limit,
                            void (*visit)(const cancellation *c, void *arg), void *arg)
{
    if (store_is_pg(st)) return cancellation_pg_list(st, offset, limit, visit, arg);
    sqlite3_stmt *s = store_prepare(st,
        "SELECT " CANCELLATION_COLUMNS " FROM cancellations ORDER BY id LIMIT ?1 OFFSET ?2");
    if (!s) return -1;
    sqlite3_bind_int64(s, 1, limit);
    sqlite3_bind_int64(s, 2, offset);
    cancellation c;
    int rc;
    while ((rc = store_next_row(st, s, read_cancellation, &c, "list cancellations")) > 0)
        visit(&c, arg);
    return rc;
}
