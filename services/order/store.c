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
 * open between transactions (store.h). */
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

static void copy_text(char *dst, size_t size, sqlite3_stmt *s, int col)
{
    const unsigned char *t = sqlite3_column_text(s, col);
    snprintf(dst, size, "%s", t ? (const char *)t : "");
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

/* Reads the current row of s into *out (a car, an intake or an order). */
typedef void (*row_reader)(sqlite3_stmt *s, void *out);

/* Steps s, a SELECT of at most one row: 1 and the row read into *out, 0
 * when there is none, -1 on error (logged, naming `what`). Resets s. */
static int one_row(store *st, sqlite3_stmt *s, row_reader read, void *out, const char *what)
{
    int rc = sqlite3_step(s), found = 0;
    if (rc == SQLITE_ROW) {
        read(s, out);
        found = 1;
    } else if (rc != SQLITE_DONE) {
        log_error("msg=\"%s read failed\" error=\"%s\"", what, store_error(st));
        found = -1;
    }
    sqlite3_reset(s);
    return found;
}

static long long count_of(store *st, sqlite3_stmt *s)
{
    long long n = -1;
    if (sqlite3_step(s) == SQLITE_ROW)
        n = sqlite3_column_int64(s, 0);
    else
        log_error("msg=\"count failed\" error=\"%s\"", store_error(st));
    sqlite3_reset(s);
    return n;
}

/* ---- cars ---- */

#define CAR_COLUMNS "id, name, location, daily_price, total, available"

static void read_car(sqlite3_stmt *s, void *out)
{
    car *c = out;
    copy_text(c->id, sizeof c->id, s, 0);
    copy_text(c->name, sizeof c->name, s, 1);
    copy_text(c->location, sizeof c->location, s, 2);
    c->daily_price = sqlite3_column_int64(s, 3);
    c->total = sqlite3_column_int64(s, 4);
    c->available = sqlite3_column_int64(s, 5);
}

long long car_store_count(store *st)
{
    sqlite3_stmt *s = store_prepare(st, "SELECT COUNT(*) FROM cars");
    return s ? count_of(st, s) : -1;
}

int car_store_get(store *st, const char *id, car *out)
{
    sqlite3_stmt *s = store_prepare(st, "SELECT " CAR_COLUMNS " FROM cars WHERE id = ?");
    if (!s)
        return -1;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_TRANSIENT);
    return one_row(st, s, read_car, out, "car");
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
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        car c;
        read_car(s, &c);
        each(&c, arg);
    }
    sqlite3_reset(s);
    return rc == SQLITE_DONE ? 0 : -1;
}

int car_store_reserve(store *st, const char *id, long long qty)
{
    sqlite3_stmt *s = store_prepare(st, "UPDATE cars SET available = available - ?1"
                                        " WHERE id = ?2 AND available >= ?1");
    if (!s)
        return -1;
    sqlite3_bind_int64(s, 1, qty);
    sqlite3_bind_text(s, 2, id, -1, SQLITE_TRANSIENT);
    return run_write(st, s, "car reservation");
}

int car_store_release(store *st, const char *id, long long qty)
{
    /* MIN(total, ...): a fleet file may have shrunk the model meanwhile.
     * A model removed from the fleet has no row left: nothing to release. */
    sqlite3_stmt *s = store_prepare(st, "UPDATE cars SET available = MIN(total, available + ?1)"
                                        " WHERE id = ?2");
    if (!s)
        return -1;
    sqlite3_bind_int64(s, 1, qty);
    sqlite3_bind_text(s, 2, id, -1, SQLITE_TRANSIENT);
    return run_write(st, s, "car release") < 0 ? -1 : 0;
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

static void read_intake(sqlite3_stmt *s, void *out)
{
    intake *in = out;
    char state[24];
    in->id = sqlite3_column_int64(s, 0);
    copy_text(in->idempotency_key, sizeof in->idempotency_key, s, 1);
    copy_text(in->product_id, sizeof in->product_id, s, 2);
    in->qty = sqlite3_column_int64(s, 3);
    copy_text(in->customer_id, sizeof in->customer_id, s, 4);
    in->amount = sqlite3_column_int64(s, 5);
    copy_text(state, sizeof state, s, 6);
    if (!intake_state_parse(state, &in->state)) {
        log_error("msg=\"intake with an unknown state, treated as in doubt\" intake=%lld "
                  "state=\"%s\"", in->id, state);
        in->state = INTAKE_IN_DOUBT;
    }
    in->payment_id = sqlite3_column_int64(s, 7);
    copy_text(in->message, sizeof in->message, s, 8);
    copy_text(in->request_id, sizeof in->request_id, s, 9);
}

int intake_store_insert(store *st, intake *in)
{
    sqlite3_stmt *s = store_prepare(st,
        "INSERT INTO intakes (idempotency_key, product_id, qty, customer_id, amount, state,"
        " request_id) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id");
    if (!s)
        return -1;
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
    sqlite3_stmt *s = store_prepare(st, "SELECT " INTAKE_COLUMNS " FROM intakes WHERE id = ?");
    if (!s)
        return -1;
    sqlite3_bind_int64(s, 1, id);
    return one_row(st, s, read_intake, out, "intake");
}

int intake_store_find_by_key(store *st, const char *key, intake *out)
{
    sqlite3_stmt *s = store_prepare(st, "SELECT " INTAKE_COLUMNS
                                        " FROM intakes WHERE idempotency_key = ?");
    if (!s)
        return -1;
    sqlite3_bind_text(s, 1, key, -1, SQLITE_TRANSIENT);
    return one_row(st, s, read_intake, out, "intake");
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
        " updated_at = strftime('%Y-%m-%dT%H:%M:%fZ','now')"
        " WHERE id = ?1 AND state IN (?4, ?5, ?6)");
    if (!s || count < 1 || count > 3)
        return -1;
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
    int n = 0, rc = SQLITE_DONE;
    while (n < (int)(sizeof batch / sizeof batch[0]) && (rc = sqlite3_step(s)) == SQLITE_ROW)
        read_intake(s, &batch[n++]);
    bool failed = n < (int)(sizeof batch / sizeof batch[0]) && rc != SQLITE_DONE;
    sqlite3_reset(s);
    if (failed) {
        log_error("msg=\"unsettled intakes read failed\" error=\"%s\"", store_error(st));
        return -1;
    }
    for (int i = 0; i < n; i++)
        each(&batch[i], arg);
    return n;
}

/* ---- orders ---- */

#define ORDER_COLUMNS "id, product_id, qty, customer_id, amount, payment_id, status"

static void read_order(sqlite3_stmt *s, void *out)
{
    order *o = out;
    o->id = sqlite3_column_int64(s, 0);
    copy_text(o->product_id, sizeof o->product_id, s, 1);
    o->qty = sqlite3_column_int64(s, 2);
    copy_text(o->customer_id, sizeof o->customer_id, s, 3);
    o->amount = sqlite3_column_int64(s, 4);
    o->payment_id = sqlite3_column_int64(s, 5);
    copy_text(o->status, sizeof o->status, s, 6);
}

int order_store_insert(store *st, const order *o)
{
    sqlite3_stmt *s = store_prepare(st, "INSERT INTO orders (" ORDER_COLUMNS ")"
                                        " VALUES (?, ?, ?, ?, ?, ?, ?)");
    if (!s)
        return -1;
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
    sqlite3_stmt *s = store_prepare(st, "SELECT " ORDER_COLUMNS " FROM orders WHERE id = ?");
    if (!s)
        return -1;
    sqlite3_bind_int64(s, 1, id);
    return one_row(st, s, read_order, out, "order");
}

int order_store_set_status(store *st, long long id, const char *from, const char *to)
{
    sqlite3_stmt *s = store_prepare(st, "UPDATE orders SET status = ?3,"
                                        " updated_at = strftime('%Y-%m-%dT%H:%M:%fZ','now')"
                                        " WHERE id = ?1 AND status = ?2");
    if (!s)
        return -1;
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
    return count_of(st, s);
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
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        order o;
        read_order(s, &o);
        each(&o, arg);
    }
    sqlite3_reset(s);
    return rc == SQLITE_DONE ? 0 : -1;
}
