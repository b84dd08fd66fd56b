/* store.c: every SQL statement of the order service.
 *
 * Tables:
 *  - cars: one row per model (productId) with `total` and `available`.
 *    The CHECK keeps 0 <= available <= total whatever a bug may try, and
 *    the reservation is a single guarded UPDATE (available >= qty), so two
 *    rentals of the last car can never both win.
 *  - intakes: every rental attempt, in its state (order.h). AUTOINCREMENT:
 *    an id once sent to payment as an orderId is never given again.
 *  - orders: the accepted rentals only; id = the intake's id.
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
    NULL
};

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

#define CAR_COLUMNS "id, name, location, daily_price, total, available"

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
    sqlite3_stmt *s = store_prepare(st, "SELECT COUNT(*) FROM cars");
    return s ? store_one_int(st, s, "car count") : -1;
}

int car_store_get(store *st, const char *id, car *out)
{
    sqlite3_stmt *s = store_prepare(st, "SELECT " CAR_COLUMNS " FROM cars WHERE id = ?");
    if (!s)
        return -1;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_TRANSIENT);
    return store_one_row(st, s, read_car, out, "car read");
}

int car_store_list(store *st, long offset, long limit,
                   void (*each)(const car *c, void *arg), void *arg)
{
    sqlite3_stmt *s = store_prepare(st, "SELECT " CAR_COLUMNS
                                        " FROM cars ORDER BY id LIMIT ? OFFSET ?");
    if (!s)
        return -1;
    sqlite3_bind_int64(s, 1, limit);
    sqlite3_bind_int64(s, 2, offset);
    car c;
    int rc;
    while ((rc = store_next_row(st, s, read_car, &c, "car list")) > 0)
        each(&c, arg);
    return rc;
}

/* Runs sql, an UPDATE of the available count of car ?2 by ?1 cars: rows
 * changed or -1. */
static int update_available(store *st, const char *sql, const char *id, long long qty,
                            const char *what)
{
    sqlite3_stmt *s = store_prepare(st, sql);
    if (!s)
        return -1;
    sqlite3_bind_int64(s, 1, qty);
    sqlite3_bind_text(s, 2, id, -1, SQLITE_TRANSIENT);
    return run_write(st, s, what);
}

int car_store_reserve(store *st, const char *id, long long qty)
{
    return update_available(st, "UPDATE cars SET available = available - ?1"
                                " WHERE id = ?2 AND available >= ?1", id, qty, "car reservation");
}

int car_store_release(store *st, const char *id, long long qty)
{
    /* MIN(total, ...): a fleet file may have shrunk the model meanwhile.
     * A model removed from the fleet has no row left: nothing to release. */
    return update_available(st, "UPDATE cars SET available = MIN(total, available + ?1)"
                                " WHERE id = ?2", id, qty, "car release") < 0 ? -1 : 0;
}

int car_store_insert(store *st, const car *c)
{
    sqlite3_stmt *s = store_prepare(st, "INSERT INTO cars (" CAR_COLUMNS ")"
                                        " VALUES (?, ?, ?, ?, ?, ?)");
    if (!s)
        return -1;
    sqlite3_bind_text(s, 1, c->id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 2, c->name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 3, c->location, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 4, c->daily_price);
    sqlite3_bind_int64(s, 5, c->total);
    sqlite3_bind_int64(s, 6, c->available);
    return run_write(st, s, "car insert") < 0 ? -1 : 0;
}

int car_store_replace_begin(store *st)
{
    return store_exec(st, "CREATE TEMP TABLE IF NOT EXISTS fleet_file (id TEXT PRIMARY KEY);"
                          "DELETE FROM temp.fleet_file;") == SQLITE_OK ? 0 : -1;
}

int car_store_replace_put(store *st, const car *c)
{
    /* The cars of this model that are out (total - available) stay out:
     * the new `available` is what the new total leaves after them. All the
     * right-hand sides read the row as it was before this UPDATE. */
    sqlite3_stmt *s = store_prepare(st,
        "INSERT INTO cars (" CAR_COLUMNS ") VALUES (?1, ?2, ?3, ?4, ?5, ?5)"
        " ON CONFLICT(id) DO UPDATE SET name = excluded.name, location = excluded.location,"
        " daily_price = excluded.daily_price, total = excluded.total,"
        " available = MAX(0, excluded.total - (cars.total - cars.available))");
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
    return store_exec(st, "DELETE FROM cars WHERE id NOT IN (SELECT id FROM temp.fleet_file);"
                          "DROP TABLE temp.fleet_file;") == SQLITE_OK ? 0 : -1;
}

/* ---- intakes ---- */

#define INTAKE_COLUMNS "id, COALESCE(idempotency_key, ''), product_id, qty, customer_id, amount," \
                       " state, COALESCE(payment_id, 0), message, request_id"

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
    return 0;
}

int intake_store_insert(store *st, intake *in)
{
    sqlite3_stmt *s = store_prepare(st,
        "INSERT INTO intakes (idempotency_key, product_id, qty, customer_id, amount, state,"
        " request_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?8, ?8) RETURNING id");
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
    return store_find_one(st, "SELECT " INTAKE_COLUMNS " FROM intakes WHERE id = ?", id,
                          read_intake, out, "intake read");
}

int intake_store_find_by_key(store *st, const char *key, intake *out)
{
    sqlite3_stmt *s = store_prepare(st, "SELECT " INTAKE_COLUMNS
                                        " FROM intakes WHERE idempotency_key = ?");
    if (!s)
        return -1;
    sqlite3_bind_text(s, 1, key, -1, SQLITE_TRANSIENT);
    return store_one_row(st, s, read_intake, out, "intake read");
}

int intake_store_forget_key(store *st, long long id)
{
    sqlite3_stmt *s = store_prepare(st, "UPDATE intakes SET idempotency_key = NULL WHERE id = ?");
    if (!s)
        return -1;
    sqlite3_bind_int64(s, 1, id);
    return run_write(st, s, "intake key release") < 0 ? -1 : 0;
}

int intake_store_transition(store *st, long long id, const intake_state *from, int count,
                            intake_state to, long long payment_id, const char *message)
{
    /* Up to three source states: ?4, ?5, ?6 (unused ones repeat the first). */
    sqlite3_stmt *s = store_prepare(st,
        "UPDATE intakes SET state = ?2,"
        " payment_id = CASE WHEN ?3 > 0 THEN ?3 ELSE payment_id END,"
        " message = COALESCE(?7, message),"
        " updated_at = ?8"
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
    sqlite3_stmt *s = store_prepare(st, "UPDATE intakes SET state = ?2,"
                                        " updated_at = strftime('%Y-%m-%dT%H:%M:%fZ','now')"
                                        " WHERE state = ?1");
    if (!s)
        return -1;
    sqlite3_bind_text(s, 1, intake_state_name(from), -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, intake_state_name(to), -1, SQLITE_STATIC);
    return run_write(st, s, "intake state change");
}

int intake_store_unsettled(store *st, int limit, void (*each)(const intake *in, void *arg),
                           void *arg)
{
    sqlite3_stmt *s = store_prepare(st, "SELECT " INTAKE_COLUMNS " FROM intakes"
                                        " WHERE state IN (?1, ?2) ORDER BY id LIMIT ?3");
    if (!s)
        return -1;
    sqlite3_bind_text(s, 1, intake_state_name(INTAKE_VOIDING), -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, intake_state_name(INTAKE_IN_DOUBT), -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 3, limit);
    /* Collected first and handed over after the reset: each() may write. */
    intake batch[64];
    int n = 0, rc = 0;
    while (n < (int)(sizeof batch / sizeof batch[0]) &&
           (rc = store_next_row(st, s, read_intake, &batch[n], "unsettled intakes read")) > 0)
        n++;
    sqlite3_reset(s);   /* a full batch leaves s on its last row */
    if (rc < 0)
        return -1;
    for (int i = 0; i < n; i++)
        each(&batch[i], arg);
    return n;
}

/* ---- orders ---- */

#define ORDER_COLUMNS "id, product_id, qty, customer_id, amount, payment_id, status"

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
    return 0;
}

int order_store_insert(store *st, const order *o)
{
    sqlite3_stmt *s = store_prepare(st, "INSERT INTO orders (" ORDER_COLUMNS
                                        ", created_at, updated_at)"
                                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?8, ?8)");
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
    return run_write(st, s, "order insert") < 0 ? -1 : 0;
}

int order_store_get(store *st, long long id, order *out)
{
    return store_find_one(st, "SELECT " ORDER_COLUMNS " FROM orders WHERE id = ?", id,
                          read_order, out, "order read");
}

int order_store_set_status(store *st, long long id, const char *from, const char *to)
{
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

long long order_store_count(store *st, const char *customer_id)
{
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
    sqlite3_stmt *s = customer_id
        ? store_prepare(st, "SELECT " ORDER_COLUMNS " FROM orders WHERE customer_id = ?3"
                            " ORDER BY id LIMIT ?1 OFFSET ?2")
        : store_prepare(st, "SELECT " ORDER_COLUMNS " FROM orders ORDER BY id LIMIT ?1 OFFSET ?2");
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
