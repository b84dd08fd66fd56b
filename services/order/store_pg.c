/* store_pg.c: order's SQL in PostgreSQL's dialect (see store.c, whose
 * functions call these when the store is a PostgreSQL one, and
 * lib/store_pg.h).
 *
 * The same tables and rules as the SQLite schema (store.c explains them):
 * cars, bookings (one row per model and day, the guarded UPSERT that books
 * every day of a period or none), intakes (every rental attempt; BIGSERIAL
 * never gives an id twice, so an orderId once sent to payment is never
 * reused), orders (the accepted rentals; the partial index orders_due
 * holds the active ones by due day).
 *
 * Why the reservation is atomic here too: two rentals of the same day both
 * reach the UPSERT on the same (model, day) row; the second waits for the
 * first's row lock, and when the first commits, PostgreSQL evaluates the
 * second's guard (booked + qty <= total) again against the row's latest
 * version (the reservation runs READ COMMITTED, store_begin_locking: its
 * rules are all in that guard and in UNIQUE constraints), so it can never
 * add on a stale count; a day that is now full is not written, and the
 * caller rolls back. Days are locked in ascending order, so overlapping
 * periods never deadlock. Periods that do not overlap touch different rows
 * and do not wait for each other. The other transactions are SERIALIZABLE
 * (a conflict is run again by lib/db.c).
 *
 * Parameters are text; each one that PostgreSQL could not type from its
 * column is cast ($2::bigint), so prepared statements have fixed types.
 * Timestamps are the program's ISO 8601 text (log_utc_now), the same as
 * SQLite's, so answers are identical on both backends. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "mem.h"
#include "order.h"
#include "store_pg.h"

const char *const order_pg_migrations[] = {
    /* 1: the schema of SQLite's migrations 1 and 2 (periods), in one. */
    "CREATE TABLE cars ("
    "  id          TEXT PRIMARY KEY,"
    "  name        TEXT NOT NULL,"
    "  location    TEXT NOT NULL,"
    "  daily_price BIGINT NOT NULL CHECK (daily_price > 0),"
    "  total       BIGINT NOT NULL CHECK (total >= 0));"
    "CREATE TABLE bookings ("
    "  product_id TEXT NOT NULL,"
    "  day        BIGINT NOT NULL,"
    "  booked     BIGINT NOT NULL CHECK (booked >= 0),"
    "  PRIMARY KEY (product_id, day));"
    "CREATE TABLE intakes ("
    "  id              BIGSERIAL PRIMARY KEY,"
    "  idempotency_key TEXT UNIQUE,"
    "  product_id      TEXT NOT NULL,"
    "  qty             BIGINT NOT NULL CHECK (qty > 0),"
    "  customer_id     TEXT NOT NULL,"
    "  amount          BIGINT NOT NULL CHECK (amount >= 0),"
    "  state           TEXT NOT NULL,"
    "  payment_id      BIGINT,"
    "  message         TEXT NOT NULL DEFAULT '',"
    "  request_id      TEXT NOT NULL DEFAULT '',"
    "  from_day        BIGINT NOT NULL,"
    "  to_day          BIGINT NOT NULL,"
    "  created_at      TEXT NOT NULL,"
    "  updated_at      TEXT NOT NULL);"
    "CREATE INDEX intakes_by_state ON intakes(state);"
    "CREATE TABLE orders ("
    "  id          BIGINT PRIMARY KEY,"
    "  product_id  TEXT NOT NULL,"
    "  qty         BIGINT NOT NULL CHECK (qty > 0),"
    "  customer_id TEXT NOT NULL,"
    "  amount      BIGINT NOT NULL,"
    "  payment_id  BIGINT NOT NULL,"
    "  status      TEXT NOT NULL,"
    "  from_day    BIGINT NOT NULL,"
    "  to_day      BIGINT NOT NULL,"
    "  returned_at TEXT,"
    "  created_at  TEXT NOT NULL,"
    "  updated_at  TEXT NOT NULL);"
    "CREATE INDEX orders_by_customer ON orders(customer_id, id);"
    "CREATE INDEX orders_due ON orders(to_day) WHERE status IN ('OrderApproved', 'Shipped');",
    /* 2: an owner and a lease per intake (lease.c), in milliseconds of the
     * database's clock (DB_NOW_MS). Intakes from before have none: expired. */
    "ALTER TABLE intakes ADD COLUMN owner TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE intakes ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;",
    NULL
};

/* The database's clock in milliseconds since the epoch: leases are set and
 * compared with it, so replicas on several machines need no synchronized
 * clocks. clock_timestamp(), not now(): a transaction run again after a
 * conflict must not reuse its first start's time. */
#define DB_NOW_MS "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"

/* ---- cars ---- */

#define CAR_COLUMNS "id, name, location, daily_price, total"
#define CAR_AVAILABLE(from, to) \
    "GREATEST(0, total - COALESCE((SELECT MAX(booked) FROM bookings b" \
    " WHERE b.product_id = cars.id AND b.day >= " from " AND b.day < " to "), 0))"

static void read_car(const PGresult *r, int i, car *c)
{
    store_pg_get_text(r, i, 0, c->id, sizeof c->id);
    store_pg_get_text(r, i, 1, c->name, sizeof c->name);
    store_pg_get_text(r, i, 2, c->location, sizeof c->location);
    c->daily_price = store_pg_get_int(r, i, 3);
    c->total = store_pg_get_int(r, i, 4);
    c->available = store_pg_get_int(r, i, 5);
}

long long car_pg_count(store *st)
{
    return store_pg_one_int(st, "SELECT count(*) FROM cars", 0, NULL, "car count");
}

int car_pg_get(store *st, const char *id, long from, long to, car *out)
{
    char f[24], t[24];
    const char *v[] = {id, store_pg_int(f, from), store_pg_int(t, to)};
    PGresult *r = store_pg_query(st, "SELECT " CAR_COLUMNS ", "
                                     CAR_AVAILABLE("$2::bigint", "$3::bigint")
                                     " FROM cars WHERE id = $1", 3, v, "car read");
    if (!r)
        return -1;
    int found = PQntuples(r) > 0;
    if (found)
        read_car(r, 0, out);
    PQclear(r);
    return found;
}

int car_pg_list(store *st, long from, long to, long offset, long limit,
                void (*each)(const car *c, void *arg), void *arg)
{
    char l[24], o[24], f[24], t[24];
    const char *v[] = {store_pg_int(l, limit), store_pg_int(o, offset), store_pg_int(f, from),
                       store_pg_int(t, to)};
    PGresult *r = store_pg_query(st, "SELECT " CAR_COLUMNS ", "
                                     CAR_AVAILABLE("$3::bigint", "$4::bigint")
                                     " FROM cars ORDER BY id LIMIT $1 OFFSET $2", 4, v,
                                 "car list");
    if (!r)
        return -1;
    for (int i = 0; i < PQntuples(r); i++) {
        car c;
        read_car(r, i, &c);
        each(&c, arg);
    }
    PQclear(r);
    return 0;
}

int car_pg_insert(store *st, const car *c)
{
    char price[24], total[24];
    const char *v[] = {c->id, c->name, c->location, store_pg_int(price, c->daily_price),
                       store_pg_int(total, c->total)};
    /* Two replicas starting together on an empty database both create the
     * demo fleet (fleet.c): the second finds the rows there. */
    return store_pg_command(st, "INSERT INTO cars (" CAR_COLUMNS ") VALUES ($1, $2, $3, $4, $5)"
                                " ON CONFLICT (id) DO NOTHING", 5, v, "car insert") < 0 ? -1 : 0;
}

int car_pg_replace_begin(store *st)
{
    /* Dropped with the transaction that loads the fleet, whatever its end. */
    return store_exec(st, "CREATE TEMP TABLE fleet_file (id TEXT PRIMARY KEY) ON COMMIT DROP")
           == SQLITE_OK ? 0 : -1;
}

int car_pg_replace_put(store *st, const car *c)
{
    char price[24], total[24];
    const char *v[] = {c->id, c->name, c->location, store_pg_int(price, c->daily_price),
                       store_pg_int(total, c->total)};
    if (store_pg_command(st, "INSERT INTO cars (" CAR_COLUMNS ") VALUES ($1, $2, $3, $4, $5)"
                             " ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name,"
                             " location = EXCLUDED.location, daily_price = EXCLUDED.daily_price,"
                             " total = EXCLUDED.total", 5, v, "fleet car") < 0)
        return -1;
    /* Cached like the others: PostgreSQL plans it again against each
     * load's new temporary table. */
    const char *k[] = {c->id};
    PGresult *r = store_pg_query(st, "INSERT INTO fleet_file (id) VALUES ($1)"
                                     " ON CONFLICT DO NOTHING", 1, k, "fleet id");
    if (!r)
        return -1;
    PQclear(r);
    return 0;
}

int car_pg_replace_end(store *st)
{
    return store_exec(st, "DELETE FROM cars WHERE id NOT IN (SELECT id FROM fleet_file)")
           == SQLITE_OK ? 0 : -1;
}

/* ---- bookings ---- */

int booking_pg_book(store *st, const char *id, long from, long to, long long qty)
{
    if (to <= from || to - from > ORDER_MAX_DAYS)
        return -1;
    char f[24], t[24], q[24];
    const char *v[] = {id, store_pg_int(f, from), store_pg_int(t, to), store_pg_int(q, qty)};
    long long changed = store_pg_command(st,
        "INSERT INTO bookings (product_id, day, booked)"
        " SELECT $1, d, $4::bigint FROM generate_series($2::bigint, $3::bigint - 1) AS d"
        " WHERE $4::bigint <= (SELECT total FROM cars WHERE id = $1)"
        " ON CONFLICT (product_id, day) DO UPDATE SET booked = bookings.booked + EXCLUDED.booked"
        " WHERE bookings.booked + EXCLUDED.booked <= (SELECT total FROM cars WHERE id = $1)",
        4, v, "booking");
    if (changed < 0)
        return -1;
    return changed == to - from ? 1 : 0;
}

int booking_pg_release(store *st, const char *id, long from, long to, long long qty)
{
    char f[24], t[24], q[24];
    const char *v[] = {id, store_pg_int(f, from), store_pg_int(t, to), store_pg_int(q, qty)};
    return store_pg_command(st, "UPDATE bookings SET booked = GREATEST(0, booked - $4::bigint)"
                                " WHERE product_id = $1 AND day >= $2::bigint AND day < $3::bigint",
                            4, v, "booking release") < 0 ? -1 : 0;
}

int booking_pg_forget_before(store *st, long day)
{
    char d[24];
    const char *v[] = {store_pg_int(d, day)};
    return (int)store_pg_command(st, "DELETE FROM bookings WHERE day < $1::bigint", 1, v,
                                 "old bookings");
}

int booking_pg_first_full(store *st, const char *id, long from, long to, long long qty,
                          long *day, long long *free_cars)
{
    char f[24], t[24], q[24];
    const char *v[] = {id, store_pg_int(f, from), store_pg_int(t, to), store_pg_int(q, qty)};
    PGresult *r = store_pg_query(st,
        "SELECT day, GREATEST(0, total - booked) FROM ("
        "  SELECT b.day AS day, b.booked AS booked, c.total AS total"
        "  FROM cars c JOIN bookings b ON b.product_id = c.id"
        "  WHERE c.id = $1 AND b.day >= $2::bigint AND b.day < $3::bigint"
        "    AND b.booked + $4::bigint > c.total"
        "  UNION ALL SELECT $2::bigint, 0, total FROM cars WHERE id = $1 AND $4::bigint > total)"
        " AS full_days ORDER BY day LIMIT 1", 4, v, "first full day");
    if (!r)
        return -1;
    int found = PQntuples(r) > 0;
    if (found) {
        *day = (long)store_pg_get_int(r, 0, 0);
        *free_cars = store_pg_get_int(r, 0, 1);
    }
    PQclear(r);
    return found;
}

/* ---- intakes ---- */

#define INTAKE_COLUMNS_OF(t) t "id, COALESCE(" t "idempotency_key, ''), " t "product_id, " \
    t "qty, " t "customer_id, " t "amount, " t "state, COALESCE(" t "payment_id, 0), " \
    t "message, " t "request_id, " t "from_day, " t "to_day, " t "owner"
#define INTAKE_COLUMNS INTAKE_COLUMNS_OF("")

static void read_intake(const PGresult *r, int i, intake *in)
{
    char state[24];
    in->id = store_pg_get_int(r, i, 0);
    store_pg_get_text(r, i, 1, in->idempotency_key, sizeof in->idempotency_key);
    store_pg_get_text(r, i, 2, in->product_id, sizeof in->product_id);
    in->qty = store_pg_get_int(r, i, 3);
    store_pg_get_text(r, i, 4, in->customer_id, sizeof in->customer_id);
    in->amount = store_pg_get_int(r, i, 5);
    store_pg_get_text(r, i, 6, state, sizeof state);
    if (!intake_state_parse(state, &in->state)) {
        log_error("msg=\"intake with an unknown state, treated as in doubt\" intake=%lld "
                  "state=\"%s\"", in->id, state);
        in->state = INTAKE_IN_DOUBT;
    }
    in->payment_id = store_pg_get_int(r, i, 7);
    store_pg_get_text(r, i, 8, in->message, sizeof in->message);
    store_pg_get_text(r, i, 9, in->request_id, sizeof in->request_id);
    in->from_day = (long)store_pg_get_int(r, i, 10);
    in->to_day = (long)store_pg_get_int(r, i, 11);
    store_pg_get_text(r, i, 12, in->owner, sizeof in->owner);
}

/* 1 and *out, 0 when no row, -1 on error: a lookup by one parameter. */
static int find_intake(store *st, const char *sql, const char *key, intake *out)
{
    const char *v[] = {key};
    PGresult *r = store_pg_query(st, sql, 1, v, "intake read");
    if (!r)
        return -1;
    int found = PQntuples(r) > 0;
    if (found)
        read_intake(r, 0, out);
    PQclear(r);
    return found;
}

int intake_pg_insert(store *st, intake *in)
{
    char now[32], qty[24], amount[24], from[24], to[24], lease[24];
    const char *v[] = {in->idempotency_key[0] ? in->idempotency_key : NULL, in->product_id,
                       store_pg_int(qty, in->qty), in->customer_id,
                       store_pg_int(amount, in->amount), intake_state_name(in->state),
                       in->request_id, log_utc_now(now, true), store_pg_int(from, in->from_day),
                       store_pg_int(to, in->to_day), in->owner, store_pg_int(lease, in->lease_ms)};
    PGresult *r = store_pg_query(st,
        "INSERT INTO intakes (idempotency_key, product_id, qty, customer_id, amount, state,"
        " request_id, created_at, updated_at, from_day, to_day, owner, lease_until)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10, $11, " DB_NOW_MS " + $12::bigint)"
        " RETURNING id", 12, v, "intake insert");
    if (!r)
        return -1;
    in->id = store_pg_get_int(r, 0, 0);
    PQclear(r);
    return 0;
}

int intake_pg_get(store *st, long long id, intake *out)
{
    char k[24];
    return find_intake(st, "SELECT " INTAKE_COLUMNS " FROM intakes WHERE id = $1",
                       store_pg_int(k, id), out);
}

int intake_pg_find_by_key(store *st, const char *key, intake *out)
{
    return find_intake(st, "SELECT " INTAKE_COLUMNS " FROM intakes WHERE idempotency_key = $1",
                       key, out);
}

int intake_pg_forget_key(store *st, long long id)
{
    char k[24];
    const char *v[] = {store_pg_int(k, id)};
    return store_pg_command(st, "UPDATE intakes SET idempotency_key = NULL WHERE id = $1", 1, v,
                            "intake key release") < 0 ? -1 : 0;
}

int intake_pg_transition(store *st, long long id, const intake_state *from, int count,
                         intake_state to, long long payment_id, const char *message)
{
    if (count < 1 || count > 3)
        return -1;
    char k[24], pay[24], now[32];
    const char *v[] = {store_pg_int(k, id), intake_state_name(to), store_pg_int(pay, payment_id),
                       intake_state_name(from[0]), intake_state_name(from[count > 1 ? 1 : 0]),
                       intake_state_name(from[count > 2 ? 2 : 0]), message,
                       log_utc_now(now, true)};
    return (int)store_pg_command(st,
        "UPDATE intakes SET state = $2,"
        " payment_id = CASE WHEN $3::bigint > 0 THEN $3::bigint ELSE payment_id END,"
        " message = COALESCE($7, message), updated_at = $8,"
        " lease_until = CASE WHEN $2 IN ('voiding', 'in_doubt') THEN 0 ELSE lease_until END"
        " WHERE id = $1 AND state IN ($4, $5, $6)", 8, v, "intake transition");
}

int intake_pg_mark_all(store *st, intake_state from, intake_state to)
{
    char now[32];
    const char *v[] = {intake_state_name(from), intake_state_name(to), log_utc_now(now, true)};
    return (int)store_pg_command(st, "UPDATE intakes SET state = $2, updated_at = $3"
                                     " WHERE state = $1", 3, v, "intake state change");
}

int intake_pg_claim(store *st, const char *owner, long lease_ms, int limit,
                    void (*each)(const intake *in, void *arg), void *arg)
{
    char l[24], lease[24], now[32];
    const char *v[] = {owner, store_pg_int(lease, lease_ms), store_pg_int(l, limit),
                       log_utc_now(now, true)};
    /* SKIP LOCKED: what another reconciler is taking right now is left to
     * it, not waited for; SERIALIZABLE refuses the rarer overlap with one
     * that already committed (40001), and the unit runs again. */
    PGresult *r = store_pg_query(st,
        "WITH taken AS (SELECT id FROM intakes"
        "  WHERE state IN ('voiding', 'in_doubt', 'pending')"
        "  AND (lease_until < " DB_NOW_MS " OR (owner = $1 AND state <> 'pending'))"
        "  ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)"
        " UPDATE intakes SET owner = $1, lease_until = " DB_NOW_MS " + $2::bigint,"
        " updated_at = $4,"
        " state = CASE WHEN intakes.state = 'pending' THEN 'in_doubt' ELSE intakes.state END"
        " FROM taken WHERE intakes.id = taken.id RETURNING " INTAKE_COLUMNS_OF("intakes."),
        4, v, "intake claim");
    if (!r)
        return -1;
    int n = PQntuples(r);
    for (int i = 0; i < n; i++) {
        intake in;
        read_intake(r, i, &in);
        each(&in, arg);
    }
    PQclear(r);
    return n;
}

int intake_pg_renew(store *st, const char *owner, const long long *ids, int n, long lease_ms)
{
    if (n <= 0)
        return 0;
    /* The ids as one array parameter: {1,2,3}. */
    size_t size = (size_t)n * 21 + 3;
    char *list = mem_must(malloc(size));
    size_t at = 0;
    list[at++] = '{';
    for (int i = 0; i < n; i++)
        at += (size_t)snprintf(list + at, size - at, "%s%lld", i ? "," : "", ids[i]);
    snprintf(list + at, size - at, "}");
    char lease[24];
    const char *v[] = {owner, list, store_pg_int(lease, lease_ms)};
    long long renewed = store_pg_command(st, "UPDATE intakes SET lease_until = " DB_NOW_MS
                                             " + $3::bigint WHERE id = ANY($2::bigint[])"
                                             " AND owner = $1 AND state = 'pending'", 3, v,
                                         "lease renewal");
    free(list);
    return (int)renewed;
}

/* ---- orders ---- */

#define ORDER_COLUMNS "id, product_id, qty, customer_id, amount, payment_id, status, from_day," \
                      " to_day, COALESCE(returned_at, '')"

static void read_order(const PGresult *r, int i, order *o)
{
    o->id = store_pg_get_int(r, i, 0);
    store_pg_get_text(r, i, 1, o->product_id, sizeof o->product_id);
    o->qty = store_pg_get_int(r, i, 2);
    store_pg_get_text(r, i, 3, o->customer_id, sizeof o->customer_id);
    o->amount = store_pg_get_int(r, i, 4);
    o->payment_id = store_pg_get_int(r, i, 5);
    store_pg_get_text(r, i, 6, o->status, sizeof o->status);
    o->from_day = (long)store_pg_get_int(r, i, 7);
    o->to_day = (long)store_pg_get_int(r, i, 8);
    store_pg_get_text(r, i, 9, o->returned_at, sizeof o->returned_at);
}

int order_pg_insert(store *st, const order *o)
{
    char id[24], qty[24], amount[24], pay[24], from[24], to[24], now[32];
    const char *v[] = {store_pg_int(id, o->id), o->product_id, store_pg_int(qty, o->qty),
                       o->customer_id, store_pg_int(amount, o->amount),
                       store_pg_int(pay, o->payment_id), o->status, log_utc_now(now, true),
                       store_pg_int(from, o->from_day), store_pg_int(to, o->to_day)};
    return store_pg_command(st, "INSERT INTO orders (id, product_id, qty, customer_id, amount,"
                                " payment_id, status, from_day, to_day, created_at, updated_at)"
                                " VALUES ($1, $2, $3, $4, $5, $6, $7, $9, $10, $8, $8)", 10, v,
                            "order insert") < 0 ? -1 : 0;
}

int order_pg_get(store *st, long long id, order *out)
{
    char k[24];
    const char *v[] = {store_pg_int(k, id)};
    PGresult *r = store_pg_query(st, "SELECT " ORDER_COLUMNS " FROM orders WHERE id = $1", 1, v,
                                 "order read");
    if (!r)
        return -1;
    int found = PQntuples(r) > 0;
    if (found)
        read_order(r, 0, out);
    PQclear(r);
    return found;
}

int order_pg_set_status(store *st, long long id, const char *from, const char *to)
{
    char k[24], now[32];
    const char *v[] = {store_pg_int(k, id), from, to, log_utc_now(now, true)};
    return (int)store_pg_command(st, "UPDATE orders SET status = $3, updated_at = $4"
                                     " WHERE id = $1 AND status = $2", 4, v,
                                 "order status change");
}

int order_pg_mark_returned(store *st, long long id, const char *returned_at)
{
    char k[24], now[32];
    const char *v[] = {store_pg_int(k, id), returned_at, log_utc_now(now, true)};
    return (int)store_pg_command(st, "UPDATE orders SET status = 'Returned', returned_at = $2,"
                                     " updated_at = $3"
                                     " WHERE id = $1 AND status IN ('OrderApproved', 'Shipped')",
                                 3, v, "order return");
}

int order_pg_due(store *st, long today, long long *ids, int max)
{
    char t[24], m[24];
    const char *v[] = {store_pg_int(t, today), store_pg_int(m, max)};
    PGresult *r = store_pg_query(st, "SELECT id FROM orders"
                                     " WHERE status IN ('OrderApproved', 'Shipped')"
                                     " AND to_day <= $1::bigint ORDER BY to_day, id LIMIT $2", 2,
                                 v, "due rentals read");
    if (!r)
        return -1;
    int n = PQntuples(r) < max ? PQntuples(r) : max;
    for (int i = 0; i < n; i++)
        ids[i] = store_pg_get_int(r, i, 0);
    PQclear(r);
    return n;
}

long long order_pg_count(store *st, const char *customer_id)
{
    const char *v[] = {customer_id};
    return customer_id
        ? store_pg_one_int(st, "SELECT count(*) FROM orders WHERE customer_id = $1", 1, v,
                           "order count")
        : store_pg_one_int(st, "SELECT count(*) FROM orders", 0, NULL, "order count");
}

int order_pg_list(store *st, const char *customer_id, long offset, long limit,
                  void (*each)(const order *o, void *arg), void *arg)
{
    char l[24], o[24];
    const char *v[] = {store_pg_int(l, limit), store_pg_int(o, offset), customer_id};
    PGresult *r = customer_id
        ? store_pg_query(st, "SELECT " ORDER_COLUMNS " FROM orders WHERE customer_id = $3"
                             " ORDER BY id LIMIT $1 OFFSET $2", 3, v, "order list")
        : store_pg_query(st, "SELECT " ORDER_COLUMNS " FROM orders ORDER BY id"
                             " LIMIT $1 OFFSET $2", 2, v, "order list");
    if (!r)
        return -1;
    for (int i = 0; i < PQntuples(r); i++) {
        order ord;
        read_order(r, i, &ord);
        each(&ord, arg);
    }
    PQclear(r);
    return 0;
}
