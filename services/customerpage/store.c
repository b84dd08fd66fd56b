/* store.c: all of the customer page's SQL.
 *
 * Two pairs of tables with the same shape:
 *   page_events, customer_pages                  the live view
 *   page_events_rebuild, customer_pages_rebuild  the shadow a rebuild fills
 * page_events holds the facts (one event per order and event type: the
 * primary key), customer_pages the rows folded from them, with the history
 * as JSON text. Every function that works on either pair takes a page_view
 * and picks the SQL text of that pair (statements are cached by text).
 *
 * Statements are reset after use so that no read stays open across the
 * caller's COMMIT. Errors are logged here and reported as -1.
 *
 * The same functions on PostgreSQL are in store_pg.c: each function here
 * hands a PostgreSQL store over to its twin. */
#include "customerpage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "jtext.h"
#include "log.h"
#include "rep.h"

#define EVENTS_TABLE(name) \
    "CREATE TABLE " name " ("                                   \
    "  order_id   INTEGER NOT NULL,"                            \
    "  event_type TEXT NOT NULL,"                               \
    "  event_id   TEXT NOT NULL,"                               \
    "  timestamp  TEXT NOT NULL,"                               \
    "  event      TEXT NOT NULL,"                               \
    "  PRIMARY KEY (order_id, event_type)) WITHOUT ROWID;"

#define PAGES_TABLE(name) \
    "CREATE TABLE " name " ("                                   \
    "  order_id    INTEGER PRIMARY KEY,"                        \
    "  customer_id TEXT NOT NULL,"                              \
    "  product_id  TEXT NOT NULL,"                              \
    "  qty         INTEGER,"                                    \
    "  amount      INTEGER,"                                    \
    "  payment_id  INTEGER,"                                    \
    "  delivery_id INTEGER,"                                    \
    "  status      TEXT NOT NULL,"                              \
    "  step_rank   INTEGER NOT NULL,"                           \
    "  visible     INTEGER NOT NULL,"                           \
    "  history     TEXT NOT NULL);"                             \
    "CREATE INDEX " name "_by_customer ON " name " (customer_id, order_id);"

/* 2: the rental's period (issue 12). Rows folded before it keep NULLs
 * there until their order's next event or a rebuild. */
#define PERIOD_COLUMNS(name) \
    "ALTER TABLE " name " ADD COLUMN from_date TEXT;"            \
    "ALTER TABLE " name " ADD COLUMN to_date TEXT;"              \
    "ALTER TABLE " name " ADD COLUMN days INTEGER;"

const char *const customerpage_migrations[] = {
    EVENTS_TABLE("page_events") PAGES_TABLE("customer_pages")
    EVENTS_TABLE("page_events_rebuild") PAGES_TABLE("customer_pages_rebuild"),
    PERIOD_COLUMNS("customer_pages") PERIOD_COLUMNS("customer_pages_rebuild"),
    NULL
};

const db_schema customerpage_schema = {customerpage_migrations, customerpage_pg_migrations};

#define PAGE_COLUMNS "order_id, customer_id, product_id, qty, amount, payment_id, " \
                     "delivery_id, status, step_rank, visible, history, from_date, to_date, days"
#define EVENT_COLUMNS "order_id, event_type, event_id, timestamp, event"

/* The SQL of one statement for each view. */
#define FOR_BOTH(make) { make("page_events", "customer_pages"), \
                         make("page_events_rebuild", "customer_pages_rebuild") }

static int fail(store *st, sqlite3_stmt *s, const char *what)
{
    log_error("msg=\"customerpage store: %s failed\" sqlite=\"%s\"", what, store_error(st));
    if (s) sqlite3_reset(s);
    return -1;
}

static void bind_known(sqlite3_stmt *s, int i, long long v)
{
    if (v == PAGE_UNKNOWN) sqlite3_bind_null(s, i);
    else sqlite3_bind_int64(s, i, v);
}

static long long column_known(sqlite3_stmt *s, int i)
{
    return sqlite3_column_type(s, i) == SQLITE_NULL ? PAGE_UNKNOWN : sqlite3_column_int64(s, i);
}

/* ---- facts ---- */

/* The parsed events of the facts last stored or read, so that the next
 * event of the same order does not parse them again (measured: parsing the
 * stored JSON of an order's other facts was ~115,000 instructions per
 * rental, a sixth of the service's CPU). A slot per (order, event type),
 * overwritten by any other fact hashed to it. An entry is used only for a
 * stored text equal, byte for byte, to the text it was made for, so it
 * holds what json_loads(text) holds: the event read and parsed once, or
 * the event that text was written from (json_dumps then json_loads gives
 * the same values back, and the fold reads values by key). Loop thread
 * only, like every event handler. */
#define FACT_CACHE_SLOTS 256

typedef struct cached_fact {
    long long order_id;
    char event_type[32];
    char *text;             /* NULL: empty slot */
    size_t len;
    json_t *event;
} cached_fact;

static cached_fact fact_cache[FACT_CACHE_SLOTS];

static cached_fact *fact_slot(long long order_id, const char *event_type)
{
    unsigned long long h = (unsigned long long)order_id * 0x9e3779b97f4a7c15ULL;
    for (const unsigned char *p = (const unsigned char *)event_type; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return &fact_cache[(h >> 32) % FACT_CACHE_SLOTS];
}

static void fact_cache_put(long long order_id, const char *event_type, const char *text,
                           size_t len, json_t *event)
{
    cached_fact *c = fact_slot(order_id, event_type);
    size_t type_len = strlen(event_type);
    char *copy = type_len < sizeof c->event_type ? malloc(len + 1) : NULL;
    if (!copy) return;   /* only a later parse is lost */
    memcpy(copy, text, len);
    copy[len] = '\0';
    free(c->text);
    json_decref(c->event);
    c->order_id = order_id;
    memcpy(c->event_type, event_type, type_len + 1);
    c->text = copy;
    c->len = len;
    c->event = json_incref(event);
}

/* A new reference to the event parsed from exactly this text, or NULL. */
static json_t *fact_cache_get(long long order_id, const char *event_type, const char *text,
                              size_t len)
{
    const cached_fact *c = fact_slot(order_id, event_type);
    if (c->text && c->order_id == order_id && c->len == len &&
        strcmp(c->event_type, event_type) == 0 && memcmp(c->text, text, len) == 0)
        return json_incref(c->event);
    return NULL;
}

/* The kept fact of a step is the smallest (timestamp, eventId): a newcomer
 * replaces it only when smaller, so arrival order does not matter. */
#define PUT_FACT(events, pages) \
    "INSERT INTO " events " (" EVENT_COLUMNS ") VALUES (?1, ?2, ?3, ?4, ?5) "   \
    "ON CONFLICT (order_id, event_type) DO UPDATE SET event_id = excluded.event_id, " \
    "timestamp = excluded.timestamp, event = excluded.event "                    \
    "WHERE (excluded.timestamp, excluded.event_id) < (" events ".timestamp, " events ".event_id)"

int page_store_put_fact(store *st, page_view v, const page_fact *f)
{
    if (store_is_pg(st)) return page_pg_put_fact(st, v, f);
    static const char *const sql[2] = FOR_BOTH(PUT_FACT);
    /* jtext_dump writes what json_dumps would; measured, json_dumps
     * cost ~20,000 instructions per event (the history's below, ~18,000). */
    char buf[4096];
    char *text = jtext_dump(f->event, true, buf, sizeof buf) >= 0 ? buf
                 : json_dumps(f->event, JSON_COMPACT | JSON_SORT_KEYS);
    if (!text) {
        log_error("msg=\"customerpage store: cannot serialize event\" eventId=%s", f->event_id);
        return -1;
    }
    sqlite3_stmt *s = store_prepare(st, sql[v]);
    if (!s) {
        if (text != buf) free(text);
        return -1;
    }
    sqlite3_bind_int64(s, 1, f->order_id);
    sqlite3_bind_text(s, 2, f->event_type, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 3, f->event_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 4, f->timestamp, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 5, text, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(s) != SQLITE_DONE) {
        if (text != buf) free(text);
        return fail(st, s, "store fact");
    }
    sqlite3_reset(s);
    int changed = sqlite3_changes(store_db(st)) > 0;
    if (changed)
        fact_cache_put(f->order_id, f->event_type, text, strlen(text), f->event);
    if (text != buf) free(text);
    return changed;
}

/* ?2 NULL: every fact; else all but that event type's, which the caller
 * holds already (measured: reading it back cost ~15,000 instructions per
 * rental). */
#define GET_FACTS(events, pages) \
    "SELECT " EVENT_COLUMNS " FROM " events " WHERE order_id = ?1" \
    " AND (?2 IS NULL OR event_type <> ?2)"

int page_store_facts(store *st, page_view v, long long order_id, const char *except_type,
                     page_fact **out, size_t *n)
{
    if (store_is_pg(st)) return page_pg_facts(st, v, order_id, except_type, out, n);
    static const char *const sql[2] = FOR_BOTH(GET_FACTS);
    *out = NULL;
    *n = 0;
    sqlite3_stmt *s = store_prepare(st, sql[v]);
    if (!s) return -1;
    sqlite3_bind_int64(s, 1, order_id);
    if (except_type) sqlite3_bind_text(s, 2, except_type, -1, SQLITE_STATIC);
    else sqlite3_bind_null(s, 2);
    page_fact *facts = calloc(PAGE_STEPS, sizeof *facts);   /* one per step at most */
    if (!facts) return fail(st, s, "read facts (out of memory)");
    size_t count = 0;
    int rc;
    size_t room = except_type ? PAGE_STEPS - 1 : PAGE_STEPS;   /* the caller adds its own */
    while ((rc = sqlite3_step(s)) == SQLITE_ROW && count < room) {
        page_fact *f = &facts[count];
        f->order_id = sqlite3_column_int64(s, 0);
        store_column_text(s, 1, f->event_type, sizeof f->event_type);
        store_column_text(s, 2, f->event_id, sizeof f->event_id);
        store_column_text(s, 3, f->timestamp, sizeof f->timestamp);
        const char *text = (const char *)sqlite3_column_text(s, 4);
        size_t len = (size_t)sqlite3_column_bytes(s, 4);
        f->event = text ? fact_cache_get(f->order_id, f->event_type, text, len) : NULL;
        if (!f->event && text && (f->event = jtext_load(text, strlen(text))))
            fact_cache_put(f->order_id, f->event_type, text, len, f->event);
        if (f->event) count++;
        else log_error("msg=\"customerpage store: unreadable stored event\" orderId=%lld",
                       order_id);
    }
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        for (size_t i = 0; i < count; i++) page_fact_clear(&facts[i]);
        free(facts);
        return fail(st, s, "read facts");
    }
    sqlite3_reset(s);
    *out = facts;
    *n = count;
    return 0;
}

/* ---- rows ---- */

#define PUT_PAGE(events, pages) \
    "INSERT OR REPLACE INTO " pages " (" PAGE_COLUMNS ") " \
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"

int page_store_put_page(store *st, page_view v, const customer_page *p)
{
    if (store_is_pg(st)) return page_pg_put_page(st, v, p);
    static const char *const sql[2] = FOR_BOTH(PUT_PAGE);
    char text[2048];
    char *history = jtext_dump(p->history, false, text, sizeof text) >= 0 ? text
                    : json_dumps(p->history, JSON_COMPACT);
    if (!history) {
        log_error("msg=\"customerpage store: cannot serialize history\" orderId=%lld", p->order_id);
        return -1;
    }
    sqlite3_stmt *s = store_prepare(st, sql[v]);
    if (!s) {
        if (history != text) free(history);
        return -1;
    }
    sqlite3_bind_int64(s, 1, p->order_id);
    sqlite3_bind_text(s, 2, p->customer_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 3, p->product_id, -1, SQLITE_TRANSIENT);
    bind_known(s, 4, p->qty);
    bind_known(s, 5, p->amount);
    bind_known(s, 6, p->payment_id);
    bind_known(s, 7, p->delivery_id);
    sqlite3_bind_text(s, 8, p->status, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(s, 9, p->rank);
    sqlite3_bind_int(s, 10, p->visible);
    if (p->from[0]) sqlite3_bind_text(s, 12, p->from, -1, SQLITE_TRANSIENT);
    if (p->to[0]) sqlite3_bind_text(s, 13, p->to, -1, SQLITE_TRANSIENT);
    bind_known(s, 14, p->days);
    if (history == text) sqlite3_bind_text(s, 11, history, -1, SQLITE_TRANSIENT);
    else sqlite3_bind_text(s, 11, history, -1, free);
    if (sqlite3_step(s) != SQLITE_DONE) return fail(st, s, "store page");
    sqlite3_reset(s);
    return 0;
}

static int read_page(sqlite3_stmt *s, void *out)
{
    customer_page *p = out;
    memset(p, 0, sizeof *p);
    p->order_id = sqlite3_column_int64(s, 0);
    store_column_text(s, 1, p->customer_id, sizeof p->customer_id);
    store_column_text(s, 2, p->product_id, sizeof p->product_id);
    p->qty = column_known(s, 3);
    p->amount = column_known(s, 4);
    p->payment_id = column_known(s, 5);
    p->delivery_id = column_known(s, 6);
    store_column_text(s, 7, p->status, sizeof p->status);
    p->rank = sqlite3_column_int(s, 8);
    p->visible = sqlite3_column_int(s, 9) != 0;
    store_column_text(s, 11, p->from, sizeof p->from);
    store_column_text(s, 12, p->to, sizeof p->to);
    p->days = column_known(s, 13);
    p->history = json_loads((const char *)sqlite3_column_text(s, 10), 0, NULL);
    if (!p->history) {
        log_error("msg=\"customerpage store: unreadable history\" orderId=%lld", p->order_id);
        return -1;
    }
    return 0;
}

int page_store_get(store *st, long long order_id, customer_page *out)
{
    if (store_is_pg(st)) return page_pg_get(st, order_id, out);
    sqlite3_stmt *s = store_prepare(st,
        "SELECT " PAGE_COLUMNS " FROM customer_pages WHERE order_id = ?1 AND visible = 1");
    if (!s) return -1;
    sqlite3_bind_int64(s, 1, order_id);
    return store_one_row(st, s, read_page, out, "read page");
}

long long page_store_count(store *st, const char *customer_id)
{
    if (store_is_pg(st)) return page_pg_count(st, customer_id);
    sqlite3_stmt *s = store_prepare(st,
        "SELECT COUNT(*) FROM customer_pages WHERE visible = 1 "
        "AND (?1 IS NULL OR customer_id = ?1)");
    if (!s) return -1;
    if (customer_id) sqlite3_bind_text(s, 1, customer_id, -1, SQLITE_TRANSIENT);
    return store_one_int(st, s, "count pages");
}

int page_store_list(store *st, const char *customer_id, long offset, long limit,
                    void (*visit)(const customer_page *p, void *arg), void *arg)
{
    if (store_is_pg(st)) return page_pg_list(st, customer_id, offset, limit, visit, arg);
    sqlite3_stmt *s = store_prepare(st,
        "SELECT " PAGE_COLUMNS " FROM customer_pages WHERE visible = 1 "
        "AND (?1 IS NULL OR customer_id = ?1) ORDER BY order_id LIMIT ?2 OFFSET ?3");
    if (!s) return -1;
    if (customer_id) sqlite3_bind_text(s, 1, customer_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 2, limit);
    sqlite3_bind_int64(s, 3, offset);
    customer_page p;
    int rc;
    while ((rc = store_next_row(st, s, read_page, &p, "list pages")) > 0) {
        visit(&p, arg);
        customer_page_clear(&p);
    }
    return rc;   /* a page read_page could not read holds nothing to clear */
}

/* ---- rebuild ---- */

int page_store_clear_rebuild(store *st)
{
    if (store_is_pg(st)) return page_pg_clear_rebuild(st);
    if (store_exec(st, "DELETE FROM page_events_rebuild; DELETE FROM customer_pages_rebuild;")
        != SQLITE_OK)
        return fail(st, NULL, "clear the rebuild tables");
    return 0;
}

long long page_store_rebuild_rows(store *st)
{
    if (store_is_pg(st)) return page_pg_rebuild_rows(st);
    sqlite3_stmt *s = store_prepare(st, "SELECT COUNT(*) FROM customer_pages_rebuild");
    if (!s) return -1;
    return store_one_int(st, s, "count rebuilt pages");
}

long long page_store_rebuild_differences(store *st)
{
    if (store_is_pg(st)) return page_pg_rebuild_differences(st);
    sqlite3_stmt *s = store_prepare(st,
        "SELECT COUNT(DISTINCT order_id) FROM ("
        "  SELECT * FROM (SELECT " PAGE_COLUMNS " FROM customer_pages"
        "                 EXCEPT SELECT " PAGE_COLUMNS " FROM customer_pages_rebuild)"
        "  UNION ALL"
        "  SELECT * FROM (SELECT " PAGE_COLUMNS " FROM customer_pages_rebuild"
        "                 EXCEPT SELECT " PAGE_COLUMNS " FROM customer_pages))");
    if (!s) return -1;
    return store_one_int(st, s, "compare live and rebuilt pages");
}

int page_store_rebuilding(store *st, bool here)
{
    return store_is_pg(st) ? page_pg_rebuilding(st) : here;
}

int page_store_set_rebuilding(store *st, bool on)
{
    return store_is_pg(st) ? page_pg_set_rebuilding(st, on) : 0;
}

int page_store_swap_in_rebuild(store *st)
{
    if (store_is_pg(st)) return page_pg_swap_in_rebuild(st);
    if (store_exec(st,
            "DELETE FROM page_events;"
            "INSERT INTO page_events (" EVENT_COLUMNS ") "
            "  SELECT " EVENT_COLUMNS " FROM page_events_rebuild;"
            "DELETE FROM customer_pages;"
            "INSERT INTO customer_pages (" PAGE_COLUMNS ") "
            "  SELECT " PAGE_COLUMNS " FROM customer_pages_rebuild;"
            "DELETE FROM page_events_rebuild;"
            "DELETE FROM customer_pages_rebuild;") != SQLITE_OK)
        return fail(st, NULL, "swap in the rebuilt view");
    return 0;
}
