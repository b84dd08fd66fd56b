/* policy.c: how the customer page reacts to events, and its rebuild.
 *
 * Applying an event: read its fact (domain.c), store it in the view's fact
 * table, and if the set of facts of its order changed, fold them again into
 * the order's row. The live handler runs inside the bus's transaction, so
 * the row and the bus's record of the eventId commit together.
 *
 * Rebuild, step by step, driven from the loop thread (the database work as
 * units of work, db.h; on PostgreSQL the live handler and the replay run on
 * the bus's threads, hence the atomic state):
 *   1. empty the shadow tables, state := running;
 *   2. bus_replay delivers every stored event of the stream to
 *      replay_event, which applies it to the shadow view;
 *   3. meanwhile the live handler applies each new event to the live view
 *      AND to the shadow view: an event published after the replay's end
 *      point is thus in the shadow too, and one the replay also delivers is
 *      a duplicate, which changes nothing;
 *   4. at the end, one transaction counts the rows that differ, copies the
 *      shadow over the live tables and empties the shadow.
 * Readers see the old view until the swap commits, then the new one.
 *
 * A malformed event fails the live handler (the bus retries, then sets it
 * aside as a dead letter: it never reaches the view) and is skipped by the
 * replay, so that the rebuilt view equals the live one there too. */
#include "customerpage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "events.h"
#include "log.h"

static const char *string_or_dash(const json_t *obj, const char *key)
{
    const char *v = json_string_value(json_object_get(obj, key));
    return v ? v : "-";
}

/* Folds the facts of one order into its row. `stored` is the fact just
 * stored (the kept one of its type): it is used as it is, and only the
 * order's other facts are read back. */
static int refold(store *st, page_view v, const page_fact *stored)
{
    long long order_id = stored->order_id;
    page_fact *facts;
    size_t n;
    if (page_store_facts(st, v, order_id, stored->event_type, &facts, &n) < 0) return -1;
    facts[n] = *stored;
    facts[n++].event = json_incref(stored->event);
    customer_page page;
    customer_page_fold(order_id, facts, n, &page);
    int rc = page_store_put_page(st, v, &page);
    customer_page_clear(&page);
    for (size_t i = 0; i < n; i++) page_fact_clear(&facts[i]);
    free(facts);
    return rc;
}

apply_result customerpage_apply(store *st, page_view v, const json_t *event,
                                long long *order_id, char *err, size_t errlen)
{
    page_fact fact;
    if (order_id) *order_id = 0;
    int rc = page_fact_from_event(event, &fact, err, errlen);
    if (rc < 0) return APPLY_MALFORMED;
    if (rc == 0) return APPLY_UNCHANGED;
    if (order_id) *order_id = fact.order_id;
    int changed = page_store_put_fact(st, v, &fact);
    int folded = changed > 0 ? refold(st, v, &fact) : changed;
    page_fact_clear(&fact);
    if (changed == 0) return APPLY_UNCHANGED;
    if (folded < 0) {
        snprintf(err, errlen, "database error: %s", store_error(st));
        return APPLY_FAILED;
    }
    return APPLY_CHANGED;
}

int customerpage_on_event(store *st, const json_t *event, const char *request_id,
                          void *arg, char *err, size_t errlen)
{
    customerpage_app *app = arg;
    (void)request_id;   /* the bus logs it with the event */
    long long order_id;
    apply_result rc = customerpage_apply(st, PAGE_LIVE, event, &order_id, err, errlen);
    if (rc < 0) return -1;
    int shadow = page_store_rebuilding(st, app && app->rebuild.state == REBUILD_RUNNING);
    if (shadow < 0) {
        snprintf(err, errlen, "database error: %s", store_error(st));
        return -1;
    }
    if (shadow && customerpage_apply(st, PAGE_REBUILD, event, NULL, err, errlen) < 0)
        return -1;
    /* For the bus's one log line of the event (bus_handler). */
    snprintf(err, errlen, "orderId=%lld outcome=%s", order_id,
             rc == APPLY_CHANGED ? "applied" : "unchanged");
    return 0;
}

void customerpage_policy_register(customerpage_app *app)
{
    /* Every type of the contract that is a step of the view (domain.c):
     * the list lives there once. */
    for (int i = 0; i < EVENT_TYPE_COUNT; i++)
        if (page_step_of(event_types[i]))
            bus_on(app->bus, event_types[i], customerpage_on_event, app);
}

/* ---- rebuild ---- */

const char *rebuild_state_name(rebuild_state s)
{
    switch (s) {
    case REBUILD_RUNNING: return "running";
    case REBUILD_DONE: return "done";
    case REBUILD_FAILED: return "failed";
    default: return "idle";
    }
}

static int replay_event(store *st, const json_t *event, const char *request_id,
                        void *arg, char *err, size_t errlen)
{
    customerpage_app *app = arg;
    long long order_id;
    apply_result rc = customerpage_apply(st, PAGE_REBUILD, event, &order_id, err, errlen);
    app->rebuild.events++;
    if (rc == APPLY_FAILED) return -1;
    if (rc == APPLY_MALFORMED) {
        char why[200];
        log_warn("msg=\"rebuild skips a malformed event\" eventId=%s why=%s",
                 string_or_dash(event, "eventId"), log_quote(why, sizeof why, err));
    }
    (void)request_id;
    return 0;
}

/* Empties the shadow tables and sets whether a rebuild runs, in one
 * transaction (work of a unit, or at once on SQLite). */
static bool clear_shadow(store *st, bool running)
{
    if (store_begin(st) != SQLITE_OK) return false;
    if (page_store_clear_rebuild(st) == 0 && page_store_set_rebuilding(st, running) == 0 &&
        store_commit(st) == SQLITE_OK)
        return true;
    store_rollback(st);
    return false;
}

static void clear_work(store *st, void *arg)
{
    bool *ok = arg;
    *ok = clear_shadow(st, false);
}

static void cleared(void *arg, db_status status)
{
    (void)status;   /* a shadow left full is emptied by the next rebuild */
    free(arg);
}

static void rebuild_failed(customerpage_app *app, const char *why)
{
    app->rebuild.state = REBUILD_FAILED;
    snprintf(app->rebuild.error, sizeof app->rebuild.error, "%s", why);
    bus_timestamp(app->rebuild.finished_at);
    bool *ok = malloc(sizeof *ok);
    if (ok && !db_run(app->db, clear_work, cleared, ok)) free(ok);
    char q[256];
    log_error("msg=\"customer page rebuild failed\" why=%s", log_quote(q, sizeof q, why));
}

/* The swap, one transaction: counts, then live := shadow. */
typedef struct swap_job {
    customerpage_app *app;
    long count;
    long long differences, rows;
    bool ok;
    char why[256];
} swap_job;

static void swap_work(store *st, void *arg)
{
    swap_job *j = arg;
    j->ok = false;
    if (store_begin(st) != SQLITE_OK) {
        snprintf(j->why, sizeof j->why, "cannot begin the swap: %s", store_error(st));
        return;
    }
    j->differences = page_store_rebuild_differences(st);
    j->rows = page_store_rebuild_rows(st);
    if (j->differences < 0 || j->rows < 0 || page_store_swap_in_rebuild(st) < 0 ||
        page_store_set_rebuilding(st, false) < 0 || store_commit(st) != SQLITE_OK) {
        snprintf(j->why, sizeof j->why, "cannot swap in the rebuilt view: %s", store_error(st));
        store_rollback(st);
        return;
    }
    j->ok = true;
}

static void swapped(void *arg, db_status status)
{
    swap_job *j = arg;
    customerpage_app *app = j->app;
    if (status == DB_UNAVAILABLE || !j->ok) {
        rebuild_failed(app, status == DB_UNAVAILABLE ? "the database is unavailable" : j->why);
    } else {
        app->rebuild.state = REBUILD_DONE;
        app->rebuild.rows = j->rows;
        app->rebuild.differences = j->differences;
        bus_timestamp(app->rebuild.finished_at);
        log_info("msg=\"customer page rebuilt\" events=%ld rows=%lld differences=%lld",
                 j->count, j->rows, j->differences);
    }
    free(j);
}

/* The replay is over: swap the shadow in. */
static void rebuild_done(void *arg, bool ok, long count, const char *why)
{
    customerpage_app *app = arg;
    app->rebuild.events = count;
    if (!ok) {
        char msg[320];
        snprintf(msg, sizeof msg, "the replay of the event stream failed: %s", why);
        rebuild_failed(app, msg);
        return;
    }
    swap_job *j = calloc(1, sizeof *j);
    if (!j) {
        rebuild_failed(app, "out of memory");
        return;
    }
    j->app = app;
    j->count = count;
    if (!db_run(app->db, swap_work, swapped, j)) {
        free(j);
        rebuild_failed(app, "the database is busy");
    }
}

/* A start in progress: the tables are being emptied. */
typedef struct start_job {
    customerpage_app *app;
    rebuild_answer answer;
    void *arg;
    bool ok;
} start_job;

static void start_work(store *st, void *arg)
{
    start_job *j = arg;
    j->ok = clear_shadow(st, true);
}

static void started(void *arg, db_status status)
{
    start_job *j = arg;
    customerpage_app *app = j->app;
    app->starting = false;
    if (status == DB_UNAVAILABLE || !j->ok) {
        j->answer(j->arg, 503, "cannot empty the rebuild tables: the database failed");
        free(j);
        return;
    }
    memset(&app->rebuild, 0, sizeof app->rebuild);
    app->rebuild.state = REBUILD_RUNNING;
    bus_timestamp(app->rebuild.started_at);
    if (!app->bus || bus_replay(app->bus, replay_event, app, rebuild_done) != 0) {
        const char *err = "the event stream cannot be replayed now (is the bus connected?)";
        rebuild_failed(app, err);
        j->answer(j->arg, 503, err);
        free(j);
        return;
    }
    log_info("msg=\"customer page rebuild started\"");
    j->answer(j->arg, 202, NULL);
    free(j);
}

void customerpage_rebuild_start(customerpage_app *app, rebuild_answer answer, void *arg)
{
    if (app->rebuild.state == REBUILD_RUNNING || app->starting) {
        char err[200];
        snprintf(err, sizeof err, "a rebuild is already running (started %s, %ld events so far)",
                 app->rebuild.started_at, (long)app->rebuild.events);
        answer(arg, 409, err);
        return;
    }
    start_job *j = calloc(1, sizeof *j);
    if (!j) {
        answer(arg, 503, "out of memory");
        return;
    }
    *j = (start_job){.app = app, .answer = answer, .arg = arg};
    app->starting = true;
    if (!db_run(app->db, start_work, started, j)) {
        app->starting = false;
        free(j);
        answer(arg, 503, "the database is busy");
    }
}
