/* store.c: every SQL statement of the order service.
 *
 * Tables:
 *  - cars: one row per model (productId) with its `total`.
 *  - bookings: one row per (model, day) that has cars booked, with how
 *    many (`booked`; a missing row is 0). A rental books every day of its
 *    period in ONE statement (booking_store_book): an UPSERT over the days
 *    of the period whose conflict branch only adds where booked + qty
 *    still fits in the model's total; the statement changed a row for
 *    every day, or the caller rolls the whole transaction back. The write
 *    lock of the transaction (BEGIN IMMEDIATE; row locks in PostgreSQL,
 *    where the statement reads the latest committed row) serializes two
 *    rentals of the same day, so overlapping periods can never overbook a
 *    day, and periods that do not overlap touch different rows. Cost: one
 *    statement and one B-tree range of at most ORDER_MAX_DAYS rows per
 *    rental, whatever the number of rentals; availability for a period is
 *    MAX(booked) over the same range (no scan of rentals).
 *    Invariant: booked(model, day) = the qty of every pending or approved
 *    intake and every active order whose period covers the day, plus that
 *    of returned orders for the days after their return.
 *  - intakes: every rental attempt, in its state (order.h), with its period
 *    (from_day, to_day: day numbers, calendar.c). AUTOINCREMENT: an id once
 *    sent to payment as an orderId is never given again.
 *  - orders: the accepted rentals only; id = the intake's id. The partial
 *    index orders_due holds only the active ones, by the day they are due
 *    back: the return timer's query reads just those that are due.
 *
 * PostgreSQL: the same functions are in store_pg.c; each function here
 * hands a PostgreSQL store over to its twin, so the domain never asks which
 * backend it runs on. There the day series is generate_series($2, $3 - 1),
 * the UPSERT has the same ON CONFLICT ... DO UPDATE ... WHERE form,
 * changes() is the command's row count, MAX(0, x) is GREATEST(0, x).
 *
 * Reads reset their statement before returning, so no read snapshot stays
 * open between transactions (store.h).
 *
 * The statements of the rental path bind their timestamps (log_utc_now, the
 * same text as strftime('%Y-%m-%dT%H:%M:%fZ','now')) instead of calling
 * SQLite's strftime: measured, ~34,000 instructions per rental. */
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "order.h"

static const char *const order_migrations[] = {
    /* 1 */
    "CREATE TABLE cars ("
    "  id          TEXT PRIMARY KEY,"
    "  name        TEXT NOT NULL,"
    "  location    TEXT NOT NULL,"
    "  daily_price INTEGER NOT NULL CHECK (daily_price > 0),"
    "  total       INTEGER NOT NULL CHECK (total >= 0),"
    "  available   INTEGER NOT NULL CHECK (available >= 0 AND available <= total));"
    "CREATE TABLE intakes ("
    "  id              INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  idempotency_key TEXT UNIQUE,"
    "  product_id      TEXT NOT NULL,"
    "  qty             INTEGER NOT NULL CHECK (qty > 0),"
    "  customer_id     TEXT NOT NULL,"
    "  amount          INTEGER NOT NULL CHECK (amount >= 0),"
    "  state           TEXT NOT NULL,"
    "  payment_id      INTEGER,"
    "  message         TEXT NOT NULL DEFAULT '',"
    "  request_id      TEXT NOT NULL DEFAULT '',"
    "  created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),"
    "  updated_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));"
    "CREATE INDEX intakes_by_state ON intakes(state);"
    "CREATE TABLE orders ("
    "  id          INTEGER PRIMARY KEY,"
    "  product_id  TEXT NOT NULL,"
    "  qty         INTEGER NOT NULL CHECK (qty > 0),"
    "  customer_id TEXT NOT NULL,"
    "  amount      INTEGER NOT NULL,"
    "  payment_id  INTEGER NOT NULL,"
    "  status      TEXT NOT NULL,"
    "  created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),"
    "  updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));"
    "CREATE INDEX orders_by_customer ON orders(customer_id, id);",
    /* 2: rental periods (issue 12). A rental made before periods existed is
     * taken as one day from the (UTC) day it was made, due back the next
     * day: the return timer brings the active ones back then (at its first
     * pass for the older ones). The cars they hold are booked on that day,
     * so the counts stay exact. */
    "ALTER TABLE intakes ADD COLUMN from_day INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE intakes ADD COLUMN to_day INTEGER NOT NULL DEFAULT 0;"
    "UPDATE intakes SET"
    "  from_day = CAST(julianday(substr(created_at, 1, 10)) - 2440587.5 AS INTEGER),"
    "  to_day = CAST(julianday(substr(created_at, 1, 10)) - 2440587.5 AS INTEGER) + 1;"
    "ALTER TABLE orders ADD COLUMN from_day INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE orders ADD COLUMN to_day INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE orders ADD COLUMN returned_at TEXT;"
    "UPDATE orders SET from_day = (SELECT from_day FROM intakes WHERE intakes.id = orders.id),"
    "  to_day = (SELECT to_day FROM intakes WHERE intakes.id = orders.id);"
    "CREATE TABLE bookings ("
    "  product_id TEXT NOT NULL,"
    "  day        INTEGER NOT NULL,"
    "  booked     INTEGER NOT NULL CHECK (booked >= 0),"
    "  PRIMARY KEY (product_id, day)) WITHOUT ROWID;"
    "INSERT INTO bookings (product_id, day, booked)"
    "  SELECT product_id, from_day, SUM(qty) FROM ("
    "    SELECT product_id, from_day, qty FROM orders"
    "      WHERE status IN ('OrderApproved', 'Shipped')"
    "    UNION ALL SELECT product_id, from_day, qty FROM intakes"
    "      WHERE state IN ('pending', 'voiding', 'in_doubt'))"
    "  WHERE true GROUP BY product_id, from_day;"
    "ALTER TABLE cars DROP COLUMN available;"
    "CREATE INDEX orders_due ON orders(to_day) WHERE status IN ('OrderApproved', 'Shipped');",
    /* 3: an owner and a lease per intake (lease.c). Intakes from before
     * have none: expired, so a reconciler may take what is unsettled. */
    "ALTER TABLE intakes ADD COLUMN owner TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE intakes ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0;",
    NULL
};

const db_schema order_schema = {order_migrations, order_pg_migrations};

store *order_store_open(void)
{
    return store_open("order", order_migrations);
}

store *order_store_open_path(const char *path)
{
    return store_open_path(path, order_migrations);
}

/* Steps a statement that writes; returns rows changed or -1. */
static int run_write(store *st, sqlite3_stmt *s, const char *what)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
        log_error("msg=\"%s failed\" error=\"%s\"", what, store_error(st));
        return -1;
    }
    return sqlite3_changes(store_db(st));
}

/* ---- cars ---- */

#define CAR_COLUMNS "id, name, location, daily_price, total"
/* The cars free on every day of [?from, ?to): the total less the most
 * booked day of the range (a fleet file may have shrunk the total below
 * what is booked: then none). */
#define CAR_AVAILABLE(from, to) \
    "MAX(0, total - COALESCE((SELECT MAX(booked) FROM bookings b WHERE b.product_id = cars.id" \
    " AND b.day >= " from " AND b.day < " to "), 0))"

static int read_car(sqlite3_stmt *s, void *out)
{
    car *c = out;
    store_column_text(s, 0, c->id, sizeof c->id);
    store_column_text(s, 1, c->name, sizeof c->name);
    store_column_text(s, 2, c->location, sizeof c->location);
    c->daily_price = sqlite3_column_int64(s, 3);
    c->total = sqlite3_column_int64(s, 4);
    c->available = sqlite3_column_int64(s, 5);
    return 0;
}

long long car_store_count(store *st)
{
    if (store_is_pg(st))
        return car_pg_count(st);
    sqlite3_stmt *s = store_prepare(st, "SELECT COUNT(*) FROM cars");
    return s ? store_one_int(st, s, "car count") : -1;
}

int car_store_get(store *st, const char *id, long from, long to, car *out)
{
    if (store_is_pg(st))
        return car_pg_get(st, id, from, to, out);
    sqlite3_stmt *s = store_prepare(st, "SELECT " CAR_COLUMNS ", " CAR_AVAILABLE("?2", "?3")
                                        " FROM cars WHERE id = ?1");
    if (!s)
        return -1;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 2, from);
    sqlite3_bind_int64(s, 3, to);
    return store_one_row(st, s, read_car, out, "car read");
}

int car_store_list(store *st, long from, long to, long offset, long limit,
                   void (*each)(const car *c, void *arg), void *arg)
{
    if (store_is_pg(st))
        return car_pg_list(st, from, to, offset, limit, each, arg);
    sqlite3_stmt *s = store_prepare(st, "SELECT " CAR_COLUMNS ", " CAR_AVAILABLE("?3", "?4")
                                        " FROM cars ORDER BY id LIMIT ?1 OFFSET ?2");
    if (!s)
        return -1;
    sqlite3_bind_int64(s, 1, limit);
    sqlite3_bind_int64(s, 2, offset);
    sqlite3_bind_int64(s, 3, from);
    sqlite3_bind_int64(s, 4, to);
    car c;
    int rc;
    while ((rc = store_next_row(st, s, read_car, &c, "car list")) > 0)
        each(&c, arg);
    return rc;
}

/* ---- bookings ---- */

/* The parameters every booking statement takes: ?1 model, [?2, ?3) the
 * days, ?4 the number of cars. */
static void bind_booking(sqlite3_stmt *s, const char *id, long from, long to, long long qty)
{
    sqlite3_bind_text(s, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 2, from);
    sqlite3_bind_int64(s, 3, to);
    sqlite3_bind_int64(s, 4, qty);
}

int booking_store_book(store *st, const char *id, long from, long to, long long qty)
{
    if (store_is_pg(st))
        return booking_pg_book(st, id, from, to, qty);
    /* The days of the period as a recursive CTE (SQLite has no
     * generate_series built in). A day without a row gets one if qty fits
     * in the total at all; a day with one is raised only where it still
     * fits. A day where it does not is neither inserted nor updated, so
     * fewer rows than days changed means "full somewhere". */
    sqlite3_stmt *s = store_prepare(st,
        "WITH RECURSIVE period(day) AS (SELECT ?2 UNION ALL SELECT day + 1 FROM period"
        "  WHERE day + 1 < ?3)"
        " INSERT INTO bookings (product_id, day, booked)"
        " SELECT ?1, day, ?4 FROM period WHERE ?4 <= (SELECT total FROM cars WHERE id = ?1)"
        " ON CONFLICT (product_id, day) DO UPDATE SET booked = booked + excluded.booked"
        " WHERE booked + excluded.booked <= (SELECT total FROM cars WHERE id = ?1)");
    if (!s || to <= from || to - from > ORDER_MAX_DAYS)
        return -1;
    bind_booking(s, id, from, to, qty);
    int changed = run_write(st, s, "booking");
    if (changed < 0)
        return -1;
    return changed == to - from ? 1 : 0;
}

int booking_store_release(store *st, const char *id, long from, long to, long long qty)
{
    if (store_is_pg(st))
        return booking_pg_release(st, id, from, to, qty);
    if (from >= to)
        return 0;
    /* MAX(0, ...): the rows of days long past may have been cleared. */
    sqlite3_stmt *s = store_prepare(st, "UPDATE bookings SET booked = MAX(0, booked - ?4)"
                                        " WHERE product_id = ?1 AND day >= ?2 AND day < ?3");
    if (!s)
        return -1;
    bind_booking(s, id, from, to, qty);
    return run_write(st, s, "booking release") < 0 ? -1 : 0;
}

int booking_store_forget_before(store *st, long day)
{
    if (store_is_pg(st))
        return booking_pg_forget_before(st, day);
    sqlite3_stmt *s = store_prepare(st, "DELETE FROM bookings WHERE day < ?1");
    if (!s)
        return -1;
    sqlite3_bind_int64(s, 1, day);
    return run_write(st, s, "old bookings");
}

typedef struct full_day {
    long day;
    long long free_cars;
} full_day;

static int read_full_day(sqlite3_stmt *s, void *out)
{
    full_day *f = out;
    f->day = (long)sqlite3_column_int64(s, 0);
    f->free_cars = sqlite3_column_int64(s, 1);
    return 0;
}

int booking_store_first_full(store *st, const char *id, long from, long to, long long qty,
                             long *day, long long *free_cars)
{
    if (store_is_pg(st))
        return booking_pg_first_full(st, id, from, to, qty, day, free_cars);
    /* A day without a row has all the cars free: it is full only when qty
     * exceeds the total, i.e. on the first day. */
    sqlite3_stmt *s = store_prepare(st,
        "SELECT day, MAX(0, total - booked) FROM ("
        "  SELECT b.day AS day, b.booked AS booked, c.total AS total"
        "  FROM cars c JOIN bookings b ON b.product_id = c.id"
        "  WHERE c.id = ?1 AND b.day >= ?2 AND b.day < ?3 AND b.booked + ?4 > c.total"
        "  UNION ALL SELECT ?2, 0, total FROM cars WHERE id = ?1 AND ?4 > total)"
        " ORDER BY day LIMIT 1");
    if (!s)
        return -1;
    bind_booking(s, id, from, to, qty);
    full_day f;
    int found = store_one_row(st, s, read_full_day, &f, "first full day");
    if (found == 1) {
        *day = f.day;
        *free_cars = f.free_cars;
    }
    return found;
}

int car_store_insert(store *st, const car *c)
{
    if (store_is_pg(st))
        return car_pg_insert(st, c);
    sqlite3_stmt *s = store_prepare(st, "INSERT INTO cars (" CAR_COLUMNS ")"
                                        " VALUES (?, ?, ?, ?, ?)");
    if (!s)
        return -1;
    sqlite3_bind_text(s, 1, c->id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 2, c->name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 3, c->location, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 4, c->daily_price);
    sqlite3_bind_int64(s, 5, c->total);
    return run_write(st, s, "car insert") < 0 ? -1 : 0;
}

int car_store_replace_begin(store *st)
{
    if (store_is_pg(st))
        return car_pg_replace_begin(st);
    return store_exec(st, "CREATE TEMP TABLE IF NOT EXISTS fleet_file (id TEXT PRIMARY KEY);"
                          "DELETE FROM temp.fleet_file;") == SQLITE_OK ? 0 : -1;
}

int car_store_replace_put(store *st, const car *c)
{
    if (store_is_pg(st))
        return car_pg_replace_put(st, c);
    /* The bookings of this model stay: what is free on a day is what the
     * new total leaves after them (CAR_AVAILABLE). */
    sqlite3_stmt *s = store_prepare(st,
        "INSERT INTO cars (" CAR_COLUMNS ") VALUES (?1, ?2, ?3, ?4, ?5)"
        " ON CONFLICT(id) DO UPDATE SET name = excluded.name, location = excluded.location,"
        " daily_price = excluded.daily_price, total = excluded.total");
    sqlite3_stmt *k = store_prepare(st, "INSERT OR IGNORE INTO temp.fleet_file (id) VALUES (?)");
    if (!s || !k)
        return -1;
    sqlite3_bind_text(s, 1, c->id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 2, c->name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 3, c->location, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 4, c->daily_price);
    sqlite3_bind_int64(s, 5, c->total);
    if (run_write(st, s, "fleet car") < 0)
        return -1;
    sqlite3_bind_text(k, 1, c->id, -1, SQLITE_TRANSIENT);
    return run_write(st, k, "fleet id") < 0 ? -1 : 0;
}

int car_store_replace_end(store *st)
{
    if (store_is_pg(st))
        return car_pg_replace_end(st);
    return store_exec(st, "DELETE FROM cars WHERE id NOT IN (SELECT id FROM temp.fleet_file);"
                          "DROP TABLE temp.fleet_file;") == SQLITE_OK ? 0 : -1;
}

/* ---- intakes ---- */

#define INTAKE_COLUMNS "id, COALESCE(idempotency_key, ''), product_id, qty, customer_id, amount," \
                       " state, COALESCE(payment_id, 0), message, request_id, from_day, to_day," \
                       " owner"

static int read_intake(sqlite3_stmt *s, void *out)
{
    intake *in = out;
    char state[24];
    in->id = sqlite3_column_int64(s, 0);
    store_column_text(s, 1, in->idempotency_key, sizeof in->idempotency_key);
    store_column_text(s, 2, in->product_id, sizeof in->product_id);
    in->qty = sqlite3_column_int64(s, 3);
    store_column_text(s, 4, in->customer_id, sizeof in->customer_id);
    in->amount = sqlite3_column_int64(s, 5);
    store_column_text(s, 6, state, sizeof state);
    if (!intake_state_parse(state, &in->state)) {
        log_error("msg=\"intake with an unknown state, treated as in doubt\" intake=%lld "
                  "state=\"%s\"", in->id, state);
        in->state = INTAKE_IN_DOUBT;
    }
    in->payment_id = sqlite3_column_int64(s, 7);
    store_column_text(s, 8, in->message, sizeof in->message);
    store_column_text(s, 9, in->request_id, sizeof in->request_id);
    in->from_day = (long)sqlite3_column_int64(s, 10);
    in->to_day = (long)sqlite3_column_int64(s, 11);
    store_column_text(s, 12, in->owner, sizeof in->owner);
    return 0;
}

int intake_store_insert(store *st, intake *in)
{
    if (store_is_pg(st))
        return intake_pg_insert(st, in);
    sqlite3_stmt *s = store_prepare(st,
        "INSERT INTO intakes (idempotency_key, product_id, qty, customer_id, amount, state,"
        " request_id, created_at, updated_at, from_day, to_day, owner, lease_until)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?8, ?8, ?9, ?10, ?11, ?12) RETURNING id");
    if (!s)
        return -1;
    char now[32];
    sqlite3_bind_text(s, 8, log_utc_now(now, true), -1, SQLITE_TRANSIENT);
    if (in->idempotency_key[0])
        sqlite3_bind_text(s, 1, in->idempotency_key, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(s, 1);
    sqlite3_bind_text(s, 2, in->product_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 3, in->qty);
    sqlite3_bind_text(s, 4, in->customer_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 5, in->amount);
    sqlite3_bind_text(s, 6, intake_state_name(in->state), -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 7, in->request_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 9, in->from_day);
    sqlite3_bind_int64(s, 10, in->to_day);
    sqlite3_bind_text(s, 11, in->owner, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 12, lease_now_ms() + in->lease_ms);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        in->id = sqlite3_column_int64(s, 0);
    else
        log_error("msg=\"intake insert failed\" error=\"%s\"", store_error(st));
    sqlite3_reset(s);
    return rc == SQLITE_ROW ? 0 : -1;
}

int intake_store_get(store *st, long long id, intake *out)
{
    if (store_is_pg(st))
        return intake_pg_get(st, id, out);
    return store_find_one(st, "SELECT " INTAKE_COLUMNS " FROM intakes WHERE id = ?", id,
                          read_intake, out, "intake read");
}

int intake_store_find_by_key(store *st, const char *key, intake *out)
{
    if (store_is_pg(st))
        return intake_pg_find_by_key(st, key, out);
    sqlite3_stmt *s = store_prepare(st, "SELECT " INTAKE_COLUMNS
                                        " FROM intakes WHERE idempotency_key = ?");
    if (!s)
        return -1;
    sqlite3_bind_text(s, 1, key, -1, SQLITE_TRANSIENT);
    return store_one_row(st, s, read_intake, out, "intake read");
}

int intake_store_forget_key(store *st, long long id)
{
    if (store_is_pg(st))
        return intake_pg_forget_key(st, id);
    sqlite3_stmt *s = store_prepare(st, "UPDATE intakes SET idempotency_key = NULL WHERE id = ?");
    if (!s)
        return -1;
    sqlite3_bind_int64(s, 1, id);
    return run_write(st, s, "intake key release") < 0 ? -1 : 0;
}

int intake_store_transition(store *st, long long id, const intake_state *from, int count,
                            intake_state to, long long payment_id, const char *message)
{
    if (store_is_pg(st))
        return intake_pg_transition(st, id, from, count, to, payment_id, message);
    /* Up to three source states: ?4, ?5, ?6 (unused ones repeat the first).
     * An intake becoming voiding or in doubt is for a reconciler to take
     * at once: its lease ends (lease.c). */
    sqlite3_stmt *s = store_prepare(st,
        "UPDATE intakes SET state = ?2,"
        " payment_id = CASE WHEN ?3 > 0 THEN ?3 ELSE payment_id END,"
        " message = COALESCE(?7, message),"
        " updated_at = ?8,"
        " lease_until = CASE WHEN ?2 IN ('voiding', 'in_doubt') THEN 0 ELSE lease_until END"
        " WHERE id = ?1 AND state IN (?4, ?5, ?6)");
    if (!s || count < 1 || count > 3)
        return -1;
    char now[32];
    sqlite3_bind_text(s, 8, log_utc_now(now, true), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 1, id);
    sqlite3_bind_text(s, 2, intake_state_name(to), -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, payment_id);
    for (int i = 0; i < 3; i++)
        sqlite3_bind_text(s, 4 + i, intake_state_name(from[i < count ? i : 0]), -1,
                          SQLITE_STATIC);
    if (message)
        sqlite3_bind_text(s, 7, message, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(s, 7);
    return run_write(st, s, "intake transition");
}

int intake_store_mark_all(store *st, intake_state from, intake_state to)
{
    if (store_is_pg(st))
        return intake_pg_mark_all(st, from, to);
    sqlite3_stmt *s = store_prepare(st, "UPDATE intakes SET state = ?2,"
                                        " updated_at = strftime('%Y-%m-%dT%H:%M:%fZ','now')"
                                        " WHERE state = ?1");
    if (!s)
        return -1;
    sqlite3_bind_text(s, 1, intake_state_name(from), -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, intake_state_name(to), -1, SQLITE_STATIC);
    return run_write(st, s, "intake state change");
}

int intake_store_claim(store *st, const char *owner, long lease_ms, int limit,
                       void (*each)(const intake *in, void *arg), void *arg)
{
    if (store_is_pg(st))
        return intake_pg_claim(st, owner, lease_ms, limit, each, arg);
    /* One process per SQLite database: no other claimer to lock out. */
    sqlite3_stmt *s = store_prepare(st,
        "UPDATE intakes SET owner = ?1, lease_until = ?2 + ?3, updated_at = ?5,"
        " state = CASE WHEN state = 'pending' THEN 'in_doubt' ELSE state END"
        " WHERE id IN (SELECT id FROM intakes"
        "  WHERE state IN ('voiding', 'in_doubt', 'pending')"
        "  AND (lease_until < ?2 OR (owner = ?1 AND state <> 'pending'))"
        "  ORDER BY id LIMIT ?4)"
        " RETURNING " INTAKE_COLUMNS);
    if (!s)
        return -1;
    char now[32];
    long long now_ms = lease_now_ms();
    sqlite3_bind_text(s, 1, owner, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 2, now_ms);
    sqlite3_bind_int64(s, 3, lease_ms);
    sqlite3_bind_int(s, 4, limit);
    sqlite3_bind_text(s, 5, log_utc_now(now, true), -1, SQLITE_TRANSIENT);
    /* Collected first and handed over after the reset: each() may write. */
    intake batch[64];
    int n = 0, rc = 0;
    while (n < (int)(sizeof batch / sizeof batch[0]) &&
           (rc = store_next_row(st, s, read_intake, &batch[n], "intake claim")) > 0)
        n++;
    sqlite3_reset(s);   /* a full batch leaves s on its last row */
    if (rc < 0)
        return -1;
    for (int i = 0; i < n; i++)
        each(&batch[i], arg);
    return n;
}

int intake_store_renew(store *st, const char *owner, const long long *ids, int n,
                       long lease_ms)
{
    if (store_is_pg(st))
        return intake_pg_renew(st, owner, ids, n, lease_ms);
    sqlite3_stmt *s = store_prepare(st, "UPDATE intakes SET lease_until = ?2"
                                        " WHERE id = ?3 AND owner = ?1 AND state = 'pending'");
    if (!s)
        return -1;
    int renewed = 0;
    for (int i = 0; i < n; i++) {
        sqlite3_bind_text(s, 1, owner, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(s, 2, lease_now_ms() + lease_ms);
        sqlite3_bind_int64(s, 3, ids[i]);
        int changed = run_write(st, s, "lease renewal");
        if (changed < 0)
            return -1;
        renewed += changed;
    }
    return renewed;
}

/* ---- orders ---- */

#define ORDER_COLUMNS "id, product_id, qty, customer_id, amount, payment_id, status, from_day," \
                      " to_day"

static int read_order(sqlite3_stmt *s, void *out)
{
    order *o = out;
    o->id = sqlite3_column_int64(s, 0);
    store_column_text(s, 1, o->product_id, sizeof o->product_id);
    o->qty = sqlite3_column_int64(s, 2);
    store_column_text(s, 3, o->customer_id, sizeof o->customer_id);
    o->amount = sqlite3_column_int64(s, 4);
    o->payment_id = sqlite3_column_int64(s, 5);
    store_column_text(s, 6, o->status, sizeof o->status);
    o->from_day = (long)sqlite3_column_int64(s, 7);
    o->to_day = (long)sqlite3_column_int64(s, 8);
    store_column_text(s, 9, o->returned_at, sizeof o->returned_at);
    return 0;
}

int order_store_insert(store *st, const order *o)
{
    if (store_is_pg(st))
        return order_pg_insert(st, o);
    sqlite3_stmt *s = store_prepare(st, "INSERT INTO orders (" ORDER_COLUMNS
                                        ", created_at, updated_at)"
                                        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?9, ?10, ?8, ?8)");
    if (!s)
        return -1;
    char now[32];
    sqlite3_bind_text(s, 8, log_utc_now(now, true), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 1, o->id);
    sqlite3_bind_text(s, 2, o->product_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 3, o->qty);
    sqlite3_bind_text(s, 4, o->customer_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 5, o->amount);
    sqlite3_bind_int64(s, 6, o->payment_id);
    sqlite3_bind_text(s, 7, o->status, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 9, o->from_day);
    sqlite3_bind_int64(s, 10, o->to_day);
    return run_write(st, s, "order insert") < 0 ? -1 : 0;
}

int order_store_get(store *st, long long id, order *out)
{
    if (store_is_pg(st))
        return order_pg_get(st, id, out);
    return store_find_one(st, "SELECT " ORDER_COLUMNS ", returned_at FROM orders WHERE id = ?", id,
                          read_order, out, "order read");
}

int order_store_set_status(store *st, long long id, const char *from, const char *to)
{
    if (store_is_pg(st))
        return order_pg_set_status(st, id, from, to);
    sqlite3_stmt *s = store_prepare(st, "UPDATE orders SET status = ?3, updated_at = ?4"
                                        " WHERE id = ?1 AND status = ?2");
    if (!s)
        return -1;
    char now[32];
    sqlite3_bind_text(s, 4, log_utc_now(now, true), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 1, id);
    sqlite3_bind_text(s, 2, from, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 3, to, -1, SQLITE_TRANSIENT);
    return run_write(st, s, "order status change");
}

int order_store_mark_returned(store *st, long long id, const char *returned_at)
{
    if (store_is_pg(st))
        return order_pg_mark_returned(st, id, returned_at);
    sqlite3_stmt *s = store_prepare(st, "UPDATE orders SET status = 'Returned', returned_at = ?2,"
                                        " updated_at = ?3"
                                        " WHERE id = ?1 AND status IN ('OrderApproved', 'Shipped')");
    if (!s)
        return -1;
    char now[32];
    sqlite3_bind_int64(s, 1, id);
    sqlite3_bind_text(s, 2, returned_at, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 3, log_utc_now(now, true), -1, SQLITE_TRANSIENT);
    return run_write(st, s, "order return");
}

int order_store_due(store *st, long today, long long *ids, int max)
{
    if (store_is_pg(st))
        return order_pg_due(st, today, ids, max);
    /* The WHERE repeats the partial index's condition word for word, so
     * the planner reads orders_due (only active rentals, by due day). */
    sqlite3_stmt *s = store_prepare(st, "SELECT id FROM orders"
                                        " WHERE status IN ('OrderApproved', 'Shipped')"
                                        " AND to_day <= ?1 ORDER BY to_day, id LIMIT ?2");
    if (!s)
        return -1;
    sqlite3_bind_int64(s, 1, today);
    sqlite3_bind_int(s, 2, max);
    int n = 0, rc = SQLITE_DONE;
    while (n < max && (rc = sqlite3_step(s)) == SQLITE_ROW)
        ids[n++] = sqlite3_column_int64(s, 0);
    if (n < max && rc != SQLITE_DONE) {
        log_error("msg=\"due rentals read failed\" error=\"%s\"", store_error(st));
        n = -1;
    }
    sqlite3_reset(s);
    return n;
}

long long order_store_count(store *st, const char *customer_id)
{
    if (store_is_pg(st))
        return order_pg_count(st, customer_id);
    sqlite3_stmt *s = customer_id
        ? store_prepare(st, "SELECT COUNT(*) FROM orders WHERE customer_id = ?")
        : store_prepare(st, "SELECT COUNT(*) FROM orders");
    if (!s)
        return -1;
    if (customer_id)
        sqlite3_bind_text(s, 1, customer_id, -1, SQLITE_TRANSIENT);
    return store_one_int(st, s, "order count");
}

int order_store_list(store *st, const char *customer_id, long offset, long limit,
                     void (*each)(const order *o, void *arg), void *arg)
{
    if (store_is_pg(st))
        return order_pg_list(st, customer_id, offset, limit, each, arg);
    sqlite3_stmt *s = customer_id
        ? store_prepare(st, "SELECT " ORDER_COLUMNS ", returned_at FROM orders"
                            " WHERE customer_id = ?3 ORDER BY id LIMIT ?1 OFFSET ?2")
        : store_prepare(st, "SELECT " ORDER_COLUMNS ", returned_at FROM orders"
                            " ORDER BY id LIMIT ?1 OFFSET ?2");
    if (!s)
        return -1;
    sqlite3_bind_int64(s, 1, limit);
    sqlite3_bind_int64(s, 2, offset);
    if (customer_id)
        sqlite3_bind_text(s, 3, customer_id, -1, SQLITE_TRANSIENT);
    order o;
    int rc;
    while ((rc = store_next_row(st, s, read_order, &o, "order list")) > 0)
        each(&o, arg);
    return rc;
}
