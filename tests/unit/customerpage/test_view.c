/* test_view.c: the customer page's handler and fold, called directly on a
 * real store in a temporary directory, each event in its own transaction
 * as the bus runs them.
 *
 * The central property: the row of a rental depends only on the SET of its
 * events. For every non-empty subset of one rental's seven events (Ordered,
 * Paid, Shipped, Returned, OrderCancelled, DeliveryCanceled, PayCancelled)
 * and every order of that subset (13699 sequences, 5040 for the full set),
 * the row and
 * its history must equal the row of the subset applied in canonical order;
 * then applying every event again, in reverse, or a re-published copy with
 * a new eventId and a later timestamp, must change nothing. Each sequence
 * uses its own order id in one store, and rows are compared whole (every
 * column, history included).
 *
 * Also: the exact row of the full rental (fields, status, history ordered
 * by (timestamp, rank)); the status of each subset is its highest step;
 * rows without Ordered are hidden; malformed events are refused and
 * change nothing; the rebuild's shadow view, filled in another order,
 * equals the live view and swaps in; live events during a rebuild reach
 * both views. */
#include "testing.h"
#include "testing_store.h"

#include <stdlib.h>
#include <string.h>
#include "customerpage.h"
#include "log.h"

enum { PAID, ORDERED, SHIPPED, RETURNED, ORDER_CANCELLED, DELIVERY_CANCELLED, PAY_CANCELLED,
       N_EVENTS };

static const char *const status_of[N_EVENTS] = { "Paid", "OrderApproved", "Shipped",
    "Returned", "OrderCancelled", "DeliveryCancelled", "PaymentCancelled" };

/* One rental's events. PayCancelled is stamped one second BEFORE
 * DeliveryCanceled (the two services react independently) and Paid shares
 * its second with Ordered: the history must order by timestamp first and
 * by rank within a second. `variant` > 0 makes a re-published copy: a new
 * eventId and a timestamp one hour later. */
static json_t *event_of(int which, long long o, int variant)
{
    static const char *const stamps[N_EVENTS] = { "20261124015039", "20261124015039",
        "20261124015040", "20261124015050", "20261124015101", "20261124015102",
        "20261124015101" };
    char id[48], ts[16];
    snprintf(id, sizeof id, "ev-%d-%lld-%d", which, o, variant);
    snprintf(ts, sizeof ts, "%s", stamps[which]);
    if (variant) ts[9] = (char)(ts[9] + 1);   /* one hour later */
    json_int_t order = (json_int_t)o;
    switch (which) {
    case PAID:
        return json_pack("{s:s, s:s, s:s, s:I, s:I, s:s, s:i, s:i, s:s}", "eventType", "Paid",
                         "eventId", id, "timestamp", ts, "id", order + 5000, "orderId", order,
                         "productId", "1001", "qty", 2, "amount", 240000, "status", "Paid");
    case ORDERED:
        return json_pack("{s:s, s:s, s:s, s:I, s:s, s:i, s:s, s:i, s:s, s:s, s:s, s:i}",
                         "eventType", "Ordered",
                         "eventId", id, "timestamp", ts, "id", order, "productId", "1001",
                         "qty", 2, "customerId", "kim", "amount", 240000,
                         "status", "OrderApproved", "from", "2026-12-30", "to", "2027-01-01",
                         "days", 2);
    case RETURNED:
        return json_pack("{s:s, s:s, s:s, s:I, s:s, s:i, s:s, s:s, s:s, s:s}",
                         "eventType", "Returned", "eventId", id, "timestamp", ts, "id", order,
                         "productId", "1001", "qty", 2, "customerId", "kim",
                         "from", "2026-12-30", "to", "2027-01-01",
                         "returnedAt", "2026-12-31T03:00:00Z");
    case SHIPPED:
        return json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:s}", "eventType", "Shipped",
                         "eventId", id, "timestamp", ts, "id", order + 9000, "orderId", order,
                         "paymentId", order + 5000, "status", "Shipped");
    case ORDER_CANCELLED:
        return json_pack("{s:s, s:s, s:s, s:I, s:s, s:i, s:s}", "eventType", "OrderCancelled",
                         "eventId", id, "timestamp", ts, "id", order, "productId", "1001",
                         "qty", 2, "customerId", "kim");
    case DELIVERY_CANCELLED:
        return json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:s}", "eventType", "DeliveryCanceled",
                         "eventId", id, "timestamp", ts, "id", order + 9000, "orderId", order,
                         "paymentId", order + 5000, "status", "DeliveryCancelled");
    default:
        return json_pack("{s:s, s:s, s:s, s:I, s:I, s:s, s:i, s:i}", "eventType", "PayCancelled",
                         "eventId", id, "timestamp", ts, "id", order + 7000, "orderId", order,
                         "productId", "1001", "qty", 2, "amount", 240000);
    }
}

/* The live handler in its own transaction, as the bus runs it. Steals
 * event; returns the handler's result. */
static int deliver(store *st, customerpage_app *app, json_t *event, char *err, size_t errlen)
{
    err[0] = '\0';
    CHECK_INT(store_begin(st), SQLITE_OK);
    int rc = customerpage_on_event(st, event, "req-unit", app, err, errlen);
    if (rc == 0) CHECK_INT(store_commit(st), SQLITE_OK);
    else store_rollback(st);
    json_decref(event);
    return rc;
}

static void apply(store *st, customerpage_app *app, json_t *event)
{
    char err[256];
    int rc = deliver(st, app, event, err, sizeof err);
    if (rc != 0) fprintf(stderr, "handler refused: %s\n", err);
    CHECK_INT(rc, 0);
}

/* The whole stored row of an order, every column, as text ("" if none).
 * Ids are shown relative to the order id (the test's events derive them
 * from it), so rows of different sequences compare equal when they are. */
static char *row_text(store *st, const char *table, long long o)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT json_array(customer_id, product_id, qty, amount, payment_id - ?1, "
             "delivery_id - ?1, "
             "status, step_rank, visible, json(history), from_date, to_date, days) "
             "FROM %s WHERE order_id = ?1", table);
    sqlite3_stmt *s = store_prepare(st, sql);
    sqlite3_bind_int64(s, 1, o);
    char *text = strdup(sqlite3_step(s) == SQLITE_ROW
                        ? (const char *)sqlite3_column_text(s, 0) : "");
    sqlite3_reset(s);
    return text;
}

/* ---- the exact row of a full rental ---- */

static void test_full_rental_row(store *st, customerpage_app *app)
{
    const long long o = 1;
    for (int e = 0; e < N_EVENTS; e++) apply(st, app, event_of(e, o, 0));
    customer_page p = { 0 };
    CHECK_INT(page_store_get(st, o, &p), 1);
    json_t *got = customer_page_json(&p);
    json_t *want = json_pack(
        "{s:I, s:I, s:s, s:s, s:i, s:i, s:s, s:s, s:i, s:I, s:I, s:s, s:["
        "{s:s, s:s, s:s}, {s:s, s:s, s:s}, {s:s, s:s, s:s}, {s:s, s:s, s:s},"
        "{s:s, s:s, s:s}, {s:s, s:s, s:s}, {s:s, s:s, s:s}]}",
        "id", (json_int_t)o, "orderId", (json_int_t)o, "customerId", "kim", "productId", "1001",
        "qty", 2, "amount", 240000, "from", "2026-12-30", "to", "2027-01-01", "days", 2,
        "paymentId", (json_int_t)(o + 5000),
        "deliveryId", (json_int_t)(o + 9000), "status", "PaymentCancelled", "history",
        "eventType", "Paid", "status", "Paid", "timestamp", "20261124015039",
        "eventType", "Ordered", "status", "OrderApproved", "timestamp", "20261124015039",
        "eventType", "Shipped", "status", "Shipped", "timestamp", "20261124015040",
        "eventType", "Returned", "status", "Returned", "timestamp", "20261124015050",
        "eventType", "OrderCancelled", "status", "OrderCancelled", "timestamp", "20261124015101",
        "eventType", "PayCancelled", "status", "PaymentCancelled", "timestamp", "20261124015101",
        "eventType", "DeliveryCanceled", "status", "DeliveryCancelled",
        "timestamp", "20261124015102");
    if (!json_equal(got, want)) {
        char *g = json_dumps(got, JSON_SORT_KEYS), *w = json_dumps(want, JSON_SORT_KEYS);
        fprintf(stderr, "full rental row:\n got  %s\n want %s\n", g, w);
        free(g);
        free(w);
        CHECK(!"the full rental's row is as specified");
    }
    json_decref(got);
    json_decref(want);
    customer_page_clear(&p);
}

/* ---- every subset, every order, duplicates ---- */

static bool next_permutation(int *a, int n)
{
    int i = n - 2;
    while (i >= 0 && a[i] >= a[i + 1]) i--;
    if (i < 0) return false;
    int j = n - 1;
    while (a[j] <= a[i]) j--;
    int t = a[i]; a[i] = a[j]; a[j] = t;
    for (int l = i + 1, r = n - 1; l < r; l++, r--) {
        t = a[l]; a[l] = a[r]; a[r] = t;
    }
    return true;
}

static int highest_step(int mask)
{
    int top = -1;
    for (int e = 0; e < N_EVENTS; e++)
        if (mask & (1 << e)) top = e;
    return top;
}

static void test_every_permutation_converges(store *st, customerpage_app *app)
{
    long long next_order = 1000;
    int sequences = 0, full_sequences = 0, mismatches = 0;
    for (int mask = 1; mask < (1 << N_EVENTS); mask++) {
        int items[N_EVENTS], k = 0;
        for (int e = 0; e < N_EVENTS; e++)
            if (mask & (1 << e)) items[k++] = e;
        char *expected = NULL;
        do {   /* items starts sorted: the first sequence is the canonical one */
            long long o = next_order++;
            for (int i = 0; i < k; i++) apply(st, app, event_of(items[i], o, 0));
            char *row = row_text(st, "customer_pages", o);
            sequences++;
            if (k == N_EVENTS) full_sequences++;
            if (!expected) {
                expected = row;
                /* The canonical row itself: status, visibility, history size. */
                customer_page p = { 0 };
                int visible = page_store_get(st, o, &p);
                CHECK_INT(visible, (mask & (1 << ORDERED)) ? 1 : 0);
                if (visible == 1) {
                    CHECK_STR(p.status, status_of[highest_step(mask)]);
                    CHECK_INT(json_array_size(p.history), k);
                }
                customer_page_clear(&p);
                continue;
            }
            if (strcmp(row, expected) != 0) {
                if (mismatches++ < 5)
                    fprintf(stderr, "mask %#x order %lld:\n got  %s\n want %s\n", mask, o, row,
                            expected);
            }
            /* Duplicates: everything again in reverse, then re-published
             * copies (new eventId, later timestamp). */
            for (int i = k - 1; i >= 0; i--) apply(st, app, event_of(items[i], o, 0));
            for (int i = 0; i < k; i++) apply(st, app, event_of(items[i], o, 1));
            char *after = row_text(st, "customer_pages", o);
            if (strcmp(after, row) != 0 && mismatches++ < 5)
                fprintf(stderr, "duplicates changed order %lld:\n before %s\n after  %s\n", o, row,
                        after);
            free(after);
            free(row);
        } while (next_permutation(items, k));
        free(expected);
    }
    CHECK_INT(sequences, 13699);
    CHECK_INT(full_sequences, 5040);
    CHECK_INT(mismatches, 0);
}

/* ---- visibility, partial rows, bad input ---- */

static void test_hidden_until_ordered(store *st, customerpage_app *app)
{
    const long long o = 50;
    customer_page p = { 0 };
    apply(st, app, event_of(PAID, o, 0));
    apply(st, app, event_of(SHIPPED, o, 0));
    CHECK_INT(page_store_get(st, o, &p), 0);
    char *hidden = row_text(st, "customer_pages", o);
    CHECK(strstr(hidden, "\"Shipped\"") != NULL);   /* kept, just not shown */
    free(hidden);
    long long before = page_store_count(st, "kim");
    apply(st, app, event_of(ORDERED, o, 0));
    CHECK_INT(page_store_get(st, o, &p), 1);
    CHECK_STR(p.status, "Shipped");
    CHECK_INT(p.delivery_id, o + 9000);
    CHECK_INT(p.payment_id, o + 5000);
    CHECK_STR(p.customer_id, "kim");
    CHECK_INT(page_store_count(st, "kim"), before + 1);
    CHECK_INT(page_store_count(st, "nobody"), 0);
    customer_page_clear(&p);

    /* Before Paid and Shipped, their fields are unknown (null). */
    apply(st, app, event_of(ORDERED, o + 1, 0));
    CHECK_INT(page_store_get(st, o + 1, &p), 1);
    json_t *j = customer_page_json(&p);
    CHECK(json_is_null(json_object_get(j, "paymentId")));
    CHECK(json_is_null(json_object_get(j, "deliveryId")));
    CHECK_STR(json_string_value(json_object_get(j, "status")), "OrderApproved");
    CHECK_STR(json_string_value(json_object_get(j, "from")), "2026-12-30");
    CHECK_INT(json_integer_value(json_object_get(j, "days")), 2);
    json_decref(j);
    customer_page_clear(&p);

    /* Returned after Shipped: the status moves on, the period stays. */
    apply(st, app, event_of(RETURNED, o + 1, 0));
    CHECK_INT(page_store_get(st, o + 1, &p), 1);
    CHECK_STR(p.status, "Returned");
    CHECK_STR(p.to, "2027-01-01");
    customer_page_clear(&p);
}

static void test_malformed_events(store *st, customerpage_app *app)
{
    char err[256];
    const long long o = 60;
    json_t *e = event_of(PAID, o, 0);
    json_object_del(e, "orderId");
    CHECK_INT(deliver(st, app, e, err, sizeof err), -1);
    CHECK(strstr(err, "orderId") != NULL);

    e = event_of(ORDERED, o, 0);
    json_object_del(e, "timestamp");
    CHECK_INT(deliver(st, app, e, err, sizeof err), -1);
    CHECK(strstr(err, "timestamp") != NULL);

    e = event_of(SHIPPED, o, 0);
    json_object_del(e, "eventId");
    CHECK_INT(deliver(st, app, e, err, sizeof err), -1);
    CHECK(strstr(err, "eventId") != NULL);

    e = event_of(ORDER_CANCELLED, o, 0);
    json_object_set_new(e, "id", json_string("seven"));
    CHECK_INT(deliver(st, app, e, err, sizeof err), -1);

    char *row = row_text(st, "customer_pages", o);
    CHECK_STR(row, "");
    free(row);

    /* Events the view does not use are accepted and ignored. */
    e = json_pack("{s:s, s:s, s:s, s:i}", "eventType", "CarAdded", "eventId", "x",
                  "timestamp", "20261124015039", "id", 3);
    apply(st, app, e);
}

/* ---- rebuild ---- */

static long long count_rows(store *st, const char *table)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM %s", table);
    sqlite3_stmt *s = store_prepare(st, sql);
    long long n = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : -1;
    sqlite3_reset(s);
    return n;
}

static void replay_into_shadow(store *st, json_t *event)
{
    char err[256];
    CHECK_INT(store_begin(st), SQLITE_OK);
    apply_result rc = customerpage_apply(st, PAGE_REBUILD, event, NULL, err, sizeof err);
    CHECK(rc == APPLY_CHANGED || rc == APPLY_UNCHANGED);
    CHECK_INT(store_commit(st), SQLITE_OK);
    json_decref(event);
}

static void test_rebuild_tables(store *st, customerpage_app *app)
{
    /* A small live view of its own: start from empty tables. */
    CHECK_INT(store_exec(st, "DELETE FROM page_events; DELETE FROM customer_pages;"), SQLITE_OK);
    for (long long o = 1; o <= 4; o++)
        for (int e = 0; e < (int)(o + 2) && e < N_EVENTS; e++) apply(st, app, event_of(e, o, 0));

    /* Replay the same events into the shadow in reverse order: equal. */
    CHECK_INT(page_store_clear_rebuild(st), 0);
    for (long long o = 4; o >= 1; o--)
        for (int e = N_EVENTS - 1; e >= 0; e--)
            if (e < (int)(o + 2)) replay_into_shadow(st, event_of(e, o, 0));
    CHECK_INT(page_store_rebuild_differences(st), 0);
    CHECK_INT(page_store_rebuild_rows(st), 4);

    /* A live event that arrives while a rebuild runs reaches both views. */
    app->rebuild.state = REBUILD_RUNNING;
    apply(st, app, event_of(PAY_CANCELLED, 1, 0));
    app->rebuild.state = REBUILD_IDLE;
    CHECK_INT(page_store_rebuild_differences(st), 0);

    /* A shadow that misses an event differs in exactly that row. */
    apply(st, app, event_of(ORDERED, 5, 0));
    CHECK_INT(page_store_rebuild_differences(st), 1);
    replay_into_shadow(st, event_of(ORDERED, 5, 0));
    CHECK_INT(page_store_rebuild_differences(st), 0);

    /* The swap: live := shadow, shadow emptied. */
    char *before = row_text(st, "customer_pages", 1);
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(page_store_swap_in_rebuild(st), 0);
    CHECK_INT(store_commit(st), SQLITE_OK);
    char *after = row_text(st, "customer_pages", 1);
    CHECK_STR(after, before);
    CHECK(strstr(after, "PaymentCancelled") != NULL);
    free(before);
    free(after);
    CHECK_INT(count_rows(st, "customer_pages"), 5);
    CHECK_INT(count_rows(st, "page_events_rebuild"), 0);
    CHECK_INT(count_rows(st, "customer_pages_rebuild"), 0);
}

int main(void)
{
    setenv("LOG_LEVEL", "warn", 1);
    log_init("test-customerpage");
    char dir[64];
    store *st = temp_store_open(dir, sizeof dir, "customerpage", customerpage_migrations);
    if (!st)
        return 1;
    /* Thousands of one-event transactions: durability is not under test
     * here, and an fsync per commit would make the test slow. */
    store_exec(st, "PRAGMA synchronous = OFF");
    customerpage_app app = { .st = st };

    test_full_rental_row(st, &app);
    test_every_permutation_converges(st, &app);
    test_hidden_until_ordered(st, &app);
    test_malformed_events(st, &app);
    test_rebuild_tables(st, &app);

    store_close(st);
    temp_dir_remove(dir);
    return test_done("customerpage/test_view");
}
