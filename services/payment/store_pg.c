/* store_pg.c: payment's SQL in PostgreSQL's dialect (see store.c, whose
 * functions call these when the store is a PostgreSQL one, and
 * lib/store_pg.h).
 *
 * The same two tables and rules as the SQLite schema: one payment and one
 * cancellation per order at most (UNIQUE(order_id)), ids that are never
 * reused (BIGSERIAL), the card's last four digits only. Timestamps are the
 * same ISO 8601 text as SQLite's, written by the program, so that answers
 * are identical on both backends. */
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "payment.h"
#include "store_pg.h"

const char *const payment_pg_migrations[] = {
    /* 1 */
    "CREATE TABLE payments ("
    "  id          BIGSERIAL PRIMARY KEY,"
    "  order_id    BIGINT NOT NULL UNIQUE,"
    "  product_id  TEXT NOT NULL,"
    "  qty         BIGINT NOT NULL CHECK (qty > 0),"
    "  amount      BIGINT NOT NULL CHECK (amount >= 0),"
    "  card_last4  TEXT NOT NULL DEFAULT '' CHECK (length(card_last4) <= 4),"
    "  status      TEXT NOT NULL,"
    "  created_at  TEXT NOT NULL);"
    "CREATE TABLE payment_cancellations ("
    "  id          BIGSERIAL PRIMARY KEY,"
    "  order_id    BIGINT NOT NULL UNIQUE,"
    "  payment_id  BIGINT REFERENCES payments(id),"
    "  product_id  TEXT NOT NULL DEFAULT '',"
    "  qty         BIGINT NOT NULL DEFAULT 0,"
    "  amount      BIGINT NOT NULL DEFAULT 0,"
    "  status      TEXT NOT NULL,"
    "  created_at  TEXT NOT NULL);",
    NULL
};

/* ---- payments ---- */

#define PAYMENT_COLUMNS "id, order_id, product_id, qty, amount, card_last4, status, created_at"

static void read_payment(const PGresult *r, int i, payment *p)
{
    p->id = store_pg_get_int(r, i, 0);
    p->order_id = store_pg_get_int(r, i, 1);
    store_pg_get_text(r, i, 2, p->product_id, sizeof p->product_id);
    p->qty = store_pg_get_int(r, i, 3);
    p->amount = store_pg_get_int(r, i, 4);
    store_pg_get_text(r, i, 5, p->card_last4, sizeof p->card_last4);
    store_pg_get_text(r, i, 6, p->status, sizeof p->status);
    store_pg_get_text(r, i, 7, p->created_at, sizeof p->created_at);
}

/* 1 and *out, 0 when no row, -1 on error: a lookup by one integer key. */
static int find_payment(store *st, const char *sql, long long key, payment *out)
{
    char k[24];
    const char *p[] = {store_pg_int(k, key)};
    PGresult *r = store_pg_query(st, sql, 1, p, "payment read");
    if (!r) return -1;
    int found = PQntuples(r) > 0;
    if (found) read_payment(r, 0, out);
    PQclear(r);
    return found;
}

int payment_pg_get(store *st, long long id, payment *out)
{
    return find_payment(st, "SELECT " PAYMENT_COLUMNS " FROM payments WHERE id = $1", id, out);
}

int payment_pg_find_by_order(store *st, long long order_id, payment *out)
{
    return find_payment(st, "SELECT " PAYMENT_COLUMNS " FROM payments WHERE order_id = $1",
                        order_id, out);
}

int payment_pg_insert(store *st, payment *p)
{
    char now[32], order[24], qty[24], amount[24];
    const char *v[] = {store_pg_int(order, p->order_id), p->product_id, store_pg_int(qty, p->qty),
                       store_pg_int(amount, p->amount), p->card_last4, p->status,
                       log_utc_now(now, false)};
    PGresult *r = store_pg_query(st,
        "INSERT INTO payments (order_id, product_id, qty, amount, card_last4, status, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id, created_at", 7, v, "payment insert");
    if (!r) return -1;
    p->id = store_pg_get_int(r, 0, 0);
    store_pg_get_text(r, 0, 1, p->created_at, sizeof p->created_at);
    PQclear(r);
    return 0;
}

int payment_pg_set_status(store *st, long long id, const char *status)
{
    char k[24];
    const char *v[] = {status, store_pg_int(k, id)};
    return store_pg_command(st, "UPDATE payments SET status = $1 WHERE id = $2", 2, v,
                            "payment update") < 0 ? -1 : 0;
}

long long payment_pg_count(store *st)
{
    return store_pg_one_int(st, "SELECT count(*) FROM payments", 0, NULL, "payment count");
}

int payment_pg_list(store *st, long offset, long limit,
                    void (*each)(const payment *p, void *arg), void *arg)
{
    char l[24], o[24];
    const char *v[] = {store_pg_int(l, limit), store_pg_int(o, offset)};
    PGresult *r = store_pg_query(st, "SELECT " PAYMENT_COLUMNS " FROM payments ORDER BY id"
                                     " LIMIT $1 OFFSET $2", 2, v, "payment list");
    if (!r) return -1;
    for (int i = 0; i < PQntuples(r); i++) {
        payment p;
        read_payment(r, i, &p);
        each(&p, arg);
    }
    PQclear(r);
    return 0;
}

/* ---- cancellations ---- */

#define CANCELLATION_COLUMNS \
    "id, order_id, payment_id, product_id, qty, amount, status, created_at"

static void read_cancellation(const PGresult *r, int i, payment_cancellation *c)
{
    c->id = store_pg_get_int(r, i, 0);
    c->order_id = store_pg_get_int(r, i, 1);
    c->payment_id = store_pg_get_int(r, i, 2);     /* NULL reads as 0 */
    store_pg_get_text(r, i, 3, c->product_id, sizeof c->product_id);
    c->qty = store_pg_get_int(r, i, 4);
    c->amount = store_pg_get_int(r, i, 5);
    store_pg_get_text(r, i, 6, c->status, sizeof c->status);
    store_pg_get_text(r, i, 7, c->created_at, sizeof c->created_at);
}

static int find_cancellation(store *st, const char *sql, long long key, payment_cancellation *out)
{
    char k[24];
    const char *p[] = {store_pg_int(k, key)};
    PGresult *r = store_pg_query(st, sql, 1, p, "cancellation read");
    if (!r) return -1;
    int found = PQntuples(r) > 0;
    if (found) read_cancellation(r, 0, out);
    PQclear(r);
    return found;
}

int cancellation_pg_get(store *st, long long id, payment_cancellation *out)
{
    return find_cancellation(st, "SELECT " CANCELLATION_COLUMNS
                                 " FROM payment_cancellations WHERE id = $1", id, out);
}

int cancellation_pg_find_by_order(store *st, long long order_id, payment_cancellation *out)
{
    return find_cancellation(st, "SELECT " CANCELLATION_COLUMNS
                                 " FROM payment_cancellations WHERE order_id = $1", order_id, out);
}

int cancellation_pg_insert(store *st, payment_cancellation *c)
{
    char now[32], order[24], pay[24], qty[24], amount[24];
    const char *v[] = {store_pg_int(order, c->order_id),
                       c->payment_id > 0 ? store_pg_int(pay, c->payment_id) : NULL,
                       c->product_id, store_pg_int(qty, c->qty), store_pg_int(amount, c->amount),
                       c->status, log_utc_now(now, false)};
    PGresult *r = store_pg_query(st,
        "INSERT INTO payment_cancellations (order_id, payment_id, product_id, qty, amount, status,"
        " created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id, created_at", 7, v,
        "cancellation insert");
    if (!r) return -1;
    c->id = store_pg_get_int(r, 0, 0);
    store_pg_get_text(r, 0, 1, c->created_at, sizeof c->created_at);
    PQclear(r);
    return 0;
}

long long cancellation_pg_count(store *st)
{
    return store_pg_one_int(st, "SELECT count(*) FROM payment_cancellations", 0, NULL,
                            "cancellation count");
}

int cancellation_pg_list(store *st, long offset, long limit,
                         void (*each)(const payment_cancellation *c, void *arg), void *arg)
{
    char l[24], o[24];
    const char *v[] = {store_pg_int(l, limit), store_pg_int(o, offset)};
    PGresult *r = store_pg_query(st, "SELECT " CANCELLATION_COLUMNS " FROM payment_cancellations"
                                     " ORDER BY id LIMIT $1 OFFSET $2", 2, v, "cancellation list");
    if (!r) return -1;
    for (int i = 0; i < PQntuples(r); i++) {
        payment_cancellation c;
        read_cancellation(r, i, &c);
        each(&c, arg);
    }
    PQclear(r);
    return 0;
}
