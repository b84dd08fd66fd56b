/* store_pg.c: delivery's SQL in PostgreSQL's dialect (see store.c, whose
 * functions call these when the store is a PostgreSQL one, and
 * lib/store_pg.h). The same three tables and UNIQUE constraints; ids never
 * reused (BIGSERIAL); timestamps written by the program as on SQLite, so
 * answers are identical on both backends. */
#include "delivery.h"

#include <stdio.h>
#include <string.h>

#include "log.h"
#include "store_pg.h"

const char *const delivery_pg_migrations[] = {
    "CREATE TABLE delivery_orders ("
    "  order_id   BIGINT PRIMARY KEY,"
    "  ordered    INTEGER NOT NULL DEFAULT 0,"
    "  paid       INTEGER NOT NULL DEFAULT 0,"
    "  payment_id BIGINT,"
    "  updated_at TEXT NOT NULL);"
    "CREATE TABLE deliveries ("
    "  id         BIGSERIAL PRIMARY KEY,"
    "  order_id   BIGINT NOT NULL UNIQUE,"
    "  payment_id BIGINT,"
    "  status     TEXT NOT NULL,"
    "  created_at TEXT NOT NULL,"
    "  updated_at TEXT NOT NULL);"
    "CREATE TABLE cancellations ("
    "  id          BIGSERIAL PRIMARY KEY,"
    "  order_id    BIGINT NOT NULL UNIQUE,"
    "  delivery_id BIGINT NOT NULL REFERENCES deliveries(id),"
    "  payment_id  BIGINT,"
    "  created_at  TEXT NOT NULL);",
    NULL
};

/* An id parameter: NULL when there is none (0). */
static const char *id_or_null(char buf[24], long long id)
{
    return id > 0 ? store_pg_int(buf, id) : NULL;
}

static int command(store *st, const char *sql, int n, const char *const *p, const char *what)
{
    return store_pg_command(st, sql, n, p, what) < 0 ? -1 : 0;
}

/* ---- what the events told us ---- */

int delivery_pg_note_ordered(store *st, long long order_id)
{
    char k[24], now[32];
    const char *p[] = {store_pg_int(k, order_id), log_utc_now(now, false)};
    return command(st, "INSERT INTO delivery_orders (order_id, ordered, updated_at) VALUES ($1, 1, $2)"
                       " ON CONFLICT (order_id) DO UPDATE SET ordered = 1, updated_at = $2",
                   2, p, "note ordered");
}

int delivery_pg_note_paid(store *st, long long order_id, long long payment_id)
{
    char k[24], pay[24], now[32];
    const char *p[] = {store_pg_int(k, order_id), store_pg_int(pay, payment_id),
                       log_utc_now(now, false)};
    return command(st, "INSERT INTO delivery_orders (order_id, paid, payment_id, updated_at)"
                       " VALUES ($1, 1, $2, $3) ON CONFLICT (order_id) DO UPDATE SET paid = 1,"
                       " payment_id = EXCLUDED.payment_id, updated_at = $3",
                   3, p, "note paid");
}

int delivery_pg_facts(store *st, long long order_id, order_facts *out)
{
    char k[24];
    const char *p[] = {store_pg_int(k, order_id)};
    PGresult *r = store_pg_query(st,
        "SELECT (SELECT ordered FROM delivery_orders WHERE order_id = $1),"
        "       (SELECT paid FROM delivery_orders WHERE order_id = $1),"
        "       (SELECT payment_id FROM delivery_orders WHERE order_id = $1),"
        "       EXISTS (SELECT 1 FROM deliveries WHERE order_id = $1)::int,"
        "       EXISTS (SELECT 1 FROM cancellations WHERE order_id = $1)::int", 1, p,
        "read order facts");
    if (!r) return -1;
    memset(out, 0, sizeof *out);
    out->order_id = order_id;
    out->ordered = store_pg_get_int(r, 0, 0) != 0;
    out->paid = store_pg_get_int(r, 0, 1) != 0;
    out->payment_id = store_pg_get_int(r, 0, 2);
    out->has_delivery = store_pg_get_int(r, 0, 3) != 0;
    out->cancelled = store_pg_get_int(r, 0, 4) != 0;
    PQclear(r);
    return 0;
}

/* ---- deliveries ---- */

#define DELIVERY_COLUMNS "id, order_id, payment_id, status"

static void read_delivery(const PGresult *r, int i, delivery *d)
{
    memset(d, 0, sizeof *d);
    d->id = store_pg_get_int(r, i, 0);
    d->order_id = store_pg_get_int(r, i, 1);
    d->payment_id = store_pg_get_int(r, i, 2);
    store_pg_get_text(r, i, 3, d->status, sizeof d->status);
}

int delivery_pg_insert(store *st, delivery *d)
{
    char k[24], pay[24], now[32];
    const char *p[] = {store_pg_int(k, d->order_id), id_or_null(pay, d->payment_id), d->status,
                       log_utc_now(now, false)};
    PGresult *r = store_pg_query(st, "INSERT INTO deliveries (order_id, payment_id, status,"
                                     " created_at, updated_at) VALUES ($1, $2, $3, $4, $4)"
                                     " RETURNING id", 4, p, "insert delivery");
    if (!r) return -1;
    d->id = store_pg_get_int(r, 0, 0);
    PQclear(r);
    return 0;
}

int delivery_pg_set_status(store *st, long long id, const char *status)
{
    char k[24], now[32];
    const char *p[] = {store_pg_int(k, id), status, log_utc_now(now, false)};
    return command(st, "UPDATE deliveries SET status = $2, updated_at = $3 WHERE id = $1", 3, p,
                   "update delivery status");
}

static int find_delivery(store *st, const char *sql, long long key, delivery *out)
{
    char k[24];
    const char *p[] = {store_pg_int(k, key)};
    PGresult *r = store_pg_query(st, sql, 1, p, "read delivery");
    if (!r) return -1;
    int found = PQntuples(r) > 0;
    if (found) read_delivery(r, 0, out);
    PQclear(r);
    return found;
}

int delivery_pg_get(store *st, long long id, delivery *out)
{
    return find_delivery(st, "SELECT " DELIVERY_COLUMNS " FROM deliveries WHERE id = $1", id, out);
}

int delivery_pg_find_by_order(store *st, long long order_id, delivery *out)
{
    return find_delivery(st, "SELECT " DELIVERY_COLUMNS " FROM deliveries WHERE order_id = $1",
                         order_id, out);
}

long long delivery_pg_count(store *st, long long order_id_or_0)
{
    char k[24];
    const char *p[] = {store_pg_int(k, order_id_or_0)};
    return store_pg_one_int(st, "SELECT count(*) FROM deliveries WHERE $1 = 0 OR order_id = $1",
                            1, p, "count deliveries");
}

int delivery_pg_list(store *st, long long order_id_or_0, long offset, long limit,
                     void (*visit)(const delivery *d, void *arg), void *arg)
{
    char k[24], l[24], o[24];
    const char *p[] = {store_pg_int(k, order_id_or_0), store_pg_int(l, limit),
                       store_pg_int(o, offset)};
    PGresult *r = store_pg_query(st, "SELECT " DELIVERY_COLUMNS " FROM deliveries"
                                     " WHERE $1 = 0 OR order_id = $1 ORDER BY id LIMIT $2 OFFSET $3",
                                 3, p, "list deliveries");
    if (!r) return -1;
    for (int i = 0; i < PQntuples(r); i++) {
        delivery d;
        read_delivery(r, i, &d);
        visit(&d, arg);
    }
    PQclear(r);
    return 0;
}

/* ---- cancellations ---- */

#define CANCELLATION_COLUMNS "id, order_id, delivery_id, payment_id"

static void read_cancellation(const PGresult *r, int i, cancellation *c)
{
    c->id = store_pg_get_int(r, i, 0);
    c->order_id = store_pg_get_int(r, i, 1);
    c->delivery_id = store_pg_get_int(r, i, 2);
    c->payment_id = store_pg_get_int(r, i, 3);
}

int cancellation_pg_insert(store *st, cancellation *c)
{
    char k[24], d[24], pay[24], now[32];
    const char *p[] = {store_pg_int(k, c->order_id), store_pg_int(d, c->delivery_id),
                       id_or_null(pay, c->payment_id), log_utc_now(now, false)};
    PGresult *r = store_pg_query(st, "INSERT INTO cancellations (order_id, delivery_id, payment_id,"
                                     " created_at) VALUES ($1, $2, $3, $4) RETURNING id", 4, p,
                                 "insert cancellation");
    if (!r) return -1;
    c->id = store_pg_get_int(r, 0, 0);
    PQclear(r);
    return 0;
}

static int find_cancellation(store *st, const char *sql, long long key, cancellation *out)
{
    char k[24];
    const char *p[] = {store_pg_int(k, key)};
    PGresult *r = store_pg_query(st, sql, 1, p, "read cancellation");
    if (!r) return -1;
    int found = PQntuples(r) > 0;
    if (found) read_cancellation(r, 0, out);
    PQclear(r);
    return found;
}

int cancellation_pg_get(store *st, long long id, cancellation *out)
{
    return find_cancellation(st, "SELECT " CANCELLATION_COLUMNS " FROM cancellations WHERE id = $1",
                             id, out);
}

int cancellation_pg_find_by_order(store *st, long long order_id, cancellation *out)
{
    return find_cancellation(st, "SELECT " CANCELLATION_COLUMNS
                                 " FROM cancellations WHERE order_id = $1", order_id, out);
}

long long cancellation_pg_count(store *st)
{
    return store_pg_one_int(st, "SELECT count(*) FROM cancellations", 0, NULL,
                            "count cancellations");
}

int cancellation_pg_list(store *st, long offset, long limit,
                         void (*visit)(const cancellation *c, void *arg), void *arg)
{
    char l[24], o[24];
    const char *p[] = {store_pg_int(l, limit), store_pg_int(o, offset)};
    PGresult *r = store_pg_query(st, "SELECT " CANCELLATION_COLUMNS " FROM cancellations"
                                     " ORDER BY id LIMIT $1 OFFSET $2", 2, p, "list cancellations");
    if (!r) return -1;
    for (int i = 0; i < PQntuples(r); i++) {
        cancellation c;
        read_cancellation(r, i, &c);
        visit(&c, arg);
    }
    PQclear(r);
    return 0;
}
