/* store_pg.c: the customer page's SQL in PostgreSQL's dialect (see
 * store.c, whose functions call these when the store is a PostgreSQL one,
 * and lib/store_pg.h).
 *
 * The same two pairs of tables (live and shadow) and the same rules: one
 * kept fact per (order, event type), the smallest (timestamp, eventId),
 * compared byte by byte (COLLATE "C", as SQLite compares text) whatever
 * the database's collation. The parsed-fact cache of store.c is not used
 * here: on PostgreSQL the live consumer and a rebuild's replay apply
 * events on two threads at once, and the cache is one thread's. */
#include "customerpage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jtext.h"
#include "log.h"
#include "store_pg.h"

#define EVENTS_TABLE(name) \
    "CREATE TABLE " name " ("                                   \
    "  order_id   BIGINT NOT NULL,"                             \
    "  event_type TEXT NOT NULL,"                               \
    "  event_id   TEXT NOT NULL,"                               \
    "  timestamp  TEXT NOT NULL,"                               \
    "  event      TEXT NOT NULL,"                               \
    "  PRIMARY KEY (order_id, event_type));"

#define PAGES_TABLE(name) \
    "CREATE TABLE " name " ("                                   \
    "  order_id    BIGINT PRIMARY KEY,"                         \
    "  customer_id TEXT NOT NULL,"                              \
    "  product_id  TEXT NOT NULL,"                              \
    "  qty         BIGINT,"                                     \
    "  amount      BIGINT,"                                     \
    "  payment_id  BIGINT,"                                     \
    "  delivery_id BIGINT,"                                     \
    "  status      TEXT NOT NULL,"                              \
    "  step_rank   INTEGER NOT NULL,"                           \
    "  visible     INTEGER NOT NULL,"                           \
    "  history     TEXT NOT NULL,"                              \
    "  from_date   TEXT,"                                       \
    "  to_date     TEXT,"                                       \
    "  days        BIGINT);"                                    \
    "CREATE INDEX " name "_by_customer ON " name " (customer_id, order_id);"

const char *const customerpage_pg_migrations[] = {
    EVENTS_TABLE("page_events") PAGES_TABLE("customer_pages")
    EVENTS_TABLE("page_events_rebuild") PAGES_TABLE("customer_pages_rebuild"),
    /* 2: whether a rebuild runs, for every replica (page_pg_rebuilding). */
    "CREATE TABLE page_rebuild (running INTEGER NOT NULL);"
    "INSERT INTO page_rebuild VALUES (0);",
    NULL
};

#define PAGE_COLUMNS "order_id, customer_id, product_id, qty, amount, payment_id, " \
                     "delivery_id, status, step_rank, visible, history, from_date, to_date, days"
#define EVENT_COLUMNS "order_id, event_type, event_id, timestamp, event"
#define FOR_BOTH(make) { make("page_events", "customer_pages"), \
                         make("page_events_rebuild", "customer_pages_rebuild") }

static const char *known(char buf[24], long long v)
{
    return v == PAGE_UNKNOWN ? NULL : store_pg_int(buf, v);
}

static long long get_known(const PGresult *r, int i, int c)
{
    return PQgetisnull(r, i, c) ? PAGE_UNKNOWN : store_pg_get_int(r, i, c);
}

/* ---- facts ---- */

#define PUT_FACT(events, pages) \
    "INSERT INTO " events " (" EVENT_COLUMNS ") VALUES ($1, $2, $3, $4, $5) "          \
    "ON CONFLICT (order_id, event_type) DO UPDATE SET event_id = EXCLUDED.event_id, "  \
    "timestamp = EXCLUDED.timestamp, event = EXCLUDED.event "                          \
    "WHERE (EXCLUDED.timestamp COLLATE \"C\", EXCLUDED.event_id COLLATE \"C\") < ("     \
    events ".timestamp COLLATE \"C\", " events ".event_id COLLATE \"C\")"

int page_pg_put_fact(store *st, page_view v, const page_fact *f)
{
    static const char *const sql[2] = FOR_BOTH(PUT_FACT);
    char buf[4096], order[24];
    char *text = jtext_dump(f->event, true, buf, sizeof buf) >= 0 ? buf
                 : json_dumps(f->event, JSON_COMPACT | JSON_SORT_KEYS);
    if (!text) {
        log_error("msg=\"customerpage store: cannot serialize event\" eventId=%s", f->event_id);
        return -1;
    }
    const char *p[] = {store_pg_int(order, f->order_id), f->event_type, f->event_id, f->timestamp,
                       text};
    long long changed = store_pg_command(st, sql[v], 5, p, "store fact");
    if (text != buf) free(text);
    return changed < 0 ? -1 : changed > 0;
}

#define GET_FACTS(events, pages) \
    "SELECT " EVENT_COLUMNS " FROM " events " WHERE order_id = $1" \
    " AND ($2::text IS NULL OR event_type <> $2)"

int page_pg_facts(store *st, page_view v, long long order_id, const char *except_type,
                  page_fact **out, size_t *n)
{
    static const char *const sql[2] = FOR_BOTH(GET_FACTS);
    *out = NULL;
    *n = 0;
    char order[24];
    const char *p[] = {store_pg_int(order, order_id), except_type};
    PGresult *r = store_pg_query(st, sql[v], 2, p, "read facts");
    if (!r) return -1;
    page_fact *facts = calloc(PAGE_STEPS, sizeof *facts);   /* one per step at most */
    if (!facts) {
        PQclear(r);
        return -1;
    }
    size_t count = 0, room = except_type ? PAGE_STEPS - 1 : PAGE_STEPS;   /* the caller adds its own */
    for (int i = 0; i < PQntuples(r) && count < room; i++) {
        page_fact *f = &facts[count];
        f->order_id = store_pg_get_int(r, i, 0);
        store_pg_get_text(r, i, 1, f->event_type, sizeof f->event_type);
        store_pg_get_text(r, i, 2, f->event_id, sizeof f->event_id);
        store_pg_get_text(r, i, 3, f->timestamp, sizeof f->timestamp);
        f->event = jtext_load(PQgetvalue(r, i, 4), (size_t)PQgetlength(r, i, 4));
        if (f->event) count++;
        else log_error("msg=\"customerpage store: unreadable stored event\" orderId=%lld",
                       order_id);
    }
    PQclear(r);
    *out = facts;
    *n = count;
    return 0;
}

/* ---- rows ---- */

#define PUT_PAGE(events, pages) \
    "INSERT INTO " pages " (" PAGE_COLUMNS ") "                                           \
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) "                \
    "ON CONFLICT (order_id) DO UPDATE SET customer_id = EXCLUDED.customer_id, "           \
    "product_id = EXCLUDED.product_id, qty = EXCLUDED.qty, amount = EXCLUDED.amount, "    \
    "payment_id = EXCLUDED.payment_id, delivery_id = EXCLUDED.delivery_id, "              \
    "status = EXCLUDED.status, step_rank = EXCLUDED.step_rank, "                          \
    "visible = EXCLUDED.visible, history = EXCLUDED.history, "                            \
    "from_date = EXCLUDED.from_date, to_date = EXCLUDED.to_date, days = EXCLUDED.days"

int page_pg_put_page(store *st, page_view v, const customer_page *pg)
{
    static const char *const sql[2] = FOR_BOTH(PUT_PAGE);
    char text[2048];
    char *history = jtext_dump(pg->history, false, text, sizeof text) >= 0 ? text
                    : json_dumps(pg->history, JSON_COMPACT);
    if (!history) {
        log_error("msg=\"customerpage store: cannot serialize history\" orderId=%lld", pg->order_id);
        return -1;
    }
    char order[24], qty[24], amount[24], pay[24], del[24], rank[24], days[24];
    const char *p[] = {store_pg_int(order, pg->order_id), pg->customer_id, pg->product_id,
                       known(qty, pg->qty), known(amount, pg->amount), known(pay, pg->payment_id),
                       known(del, pg->delivery_id), pg->status, store_pg_int(rank, pg->rank),
                       pg->visible ? "1" : "0", history, pg->from[0] ? pg->from : NULL,
                       pg->to[0] ? pg->to : NULL, known(days, pg->days)};
    long long rc = store_pg_command(st, sql[v], 14, p, "store page");
    if (history != text) free(history);
    return rc < 0 ? -1 : 0;
}

static int read_page(const PGresult *r, int i, customer_page *p)
{
    memset(p, 0, sizeof *p);
    p->order_id = store_pg_get_int(r, i, 0);
    store_pg_get_text(r, i, 1, p->customer_id, sizeof p->customer_id);
    store_pg_get_text(r, i, 2, p->product_id, sizeof p->product_id);
    p->qty = get_known(r, i, 3);
    p->amount = get_known(r, i, 4);
    p->payment_id = get_known(r, i, 5);
    p->delivery_id = get_known(r, i, 6);
    store_pg_get_text(r, i, 7, p->status, sizeof p->status);
    p->rank = (int)store_pg_get_int(r, i, 8);
    p->visible = store_pg_get_int(r, i, 9) != 0;
    store_pg_get_text(r, i, 11, p->from, sizeof p->from);
    store_pg_get_text(r, i, 12, p->to, sizeof p->to);
    p->days = get_known(r, i, 13);
    p->history = json_loads(PQgetvalue(r, i, 10), 0, NULL);
    if (!p->history) {
        log_error("msg=\"customerpage store: unreadable history\" orderId=%lld", p->order_id);
        return -1;
    }
    return 0;
}

int page_pg_get(store *st, long long order_id, customer_page *out)
{
    char order[24];
    const char *p[] = {store_pg_int(order, order_id)};
    PGresult *r = store_pg_query(st, "SELECT " PAGE_COLUMNS " FROM customer_pages"
                                     " WHERE order_id = $1 AND visible = 1", 1, p, "read page");
    if (!r) return -1;
    int found = PQntuples(r) > 0 ? (read_page(r, 0, out) == 0 ? 1 : -1) : 0;
    PQclear(r);
    return found;
}

long long page_pg_count(store *st, const char *customer_id)
{
    const char *p[] = {customer_id};
    return store_pg_one_int(st, "SELECT count(*) FROM customer_pages WHERE visible = 1"
                                " AND ($1::text IS NULL OR customer_id = $1)", 1, p,
                            "count pages");
}

int page_pg_list(store *st, const char *customer_id, long offset, long limit,
                 void (*visit)(const customer_page *p, void *arg), void *arg)
{
    char l[24], o[24];
    const char *p[] = {customer_id, store_pg_int(l, limit), store_pg_int(o, offset)};
    PGresult *r = store_pg_query(st, "SELECT " PAGE_COLUMNS " FROM customer_pages WHERE visible = 1"
                                     " AND ($1::text IS NULL OR customer_id = $1)"
                                     " ORDER BY order_id LIMIT $2 OFFSET $3", 3, p, "list pages");
    if (!r) return -1;
    int rc = 0;
    for (int i = 0; i < PQntuples(r) && rc == 0; i++) {
        customer_page page;
        if ((rc = read_page(r, i, &page)) == 0) {
            visit(&page, arg);
            customer_page_clear(&page);
        }
    }
    PQclear(r);
    return rc;
}

/* ---- rebuild ---- */

int page_pg_clear_rebuild(store *st)
{
    return store_exec(st, "DELETE FROM page_events_rebuild; DELETE FROM customer_pages_rebuild;")
           == SQLITE_OK ? 0 : -1;
}

long long page_pg_rebuild_rows(store *st)
{
    return store_pg_one_int(st, "SELECT count(*) FROM customer_pages_rebuild", 0, NULL,
                            "count rebuilt pages");
}

long long page_pg_rebuild_differences(store *st)
{
    return store_pg_one_int(st,
        "SELECT count(DISTINCT order_id) FROM ("
        "  (SELECT " PAGE_COLUMNS " FROM customer_pages"
        "   EXCEPT SELECT " PAGE_COLUMNS " FROM customer_pages_rebuild)"
        "  UNION ALL"
        "  (SELECT " PAGE_COLUMNS " FROM customer_pages_rebuild"
        "   EXCEPT SELECT " PAGE_COLUMNS " FROM customer_pages)) AS differing",
        0, NULL, "compare live and rebuilt pages");
}

int page_pg_swap_in_rebuild(store *st)
{
    return store_exec(st,
        "DELETE FROM page_events;"
        "INSERT INTO page_events (" EVENT_COLUMNS ") SELECT " EVENT_COLUMNS
        "  FROM page_events_rebuild;"
        "DELETE FROM customer_pages;"
        "INSERT INTO customer_pages (" PAGE_COLUMNS ") SELECT " PAGE_COLUMNS
        "  FROM customer_pages_rebuild;"
        "DELETE FROM page_events_rebuild;"
        "DELETE FROM customer_pages_rebuild;") == SQLITE_OK ? 0 : -1;
}

/* Read by every live event's transaction: under SERIALIZABLE, an event
 * applied concurrently with the start or the swap is ordered before or
 * after it by PostgreSQL (or rerun), so it lands in the shadow view or
 * after the swap in the live one, never only in a live view about to be
 * replaced. Read once per transaction, not per event: the transaction sees
 * one snapshot, none of its events writes the flag, and PostgreSQL
 * records the transaction's read of the row once, so a second read would
 * return the same and protect nothing more; a consumer's slice is up to 64
 * events, and this read was one of their 4 round trips each. Per thread,
 * as each thread has its own connection. */
static _Thread_local unsigned long flag_txn;
static _Thread_local int flag_running;

int page_pg_rebuilding(store *st)
{
    unsigned long txn = store_pg_transaction(st);
    if (txn && txn == flag_txn) return flag_running;
    long long v = store_pg_one_int(st, "SELECT running FROM page_rebuild", 0, NULL,
                                   "read the rebuild flag");
    if (v < 0) return -1;
    flag_txn = txn;
    flag_running = v != 0;
    return flag_running;
}

int page_pg_set_rebuilding(store *st, bool on)
{
    flag_txn = 0;       /* written in this transaction: read it again */
    const char *p[] = {on ? "1" : "0"};
    return store_pg_command(st, "UPDATE page_rebuild SET running = $1", 1, p,
                            "set the rebuild flag") < 0 ? -1 : 0;
}
