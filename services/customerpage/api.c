/* api.c: the customer page's HTTP interface (read only, plus the rebuild).
 *
 *   GET  /customerpages                                      HAL collection, paged
 *   GET  /customerpages/{id}                                 id = the order id
 *   GET  /customerpages/search/findByOrderId?orderId=7       collection (0 or 1)
 *   GET  /customerpages/search/findByCustomerId?customerId=kim   collection, paged
 *   POST /admin/rebuild     202: a rebuild from the event stream has started
 *                           409: one is running; 503: the stream cannot be read
 *   GET  /admin/rebuild     its state: {"state", "events", "rows",
 *                           "differences", "startedAt", "finishedAt", "error"}
 *                           ("failed", the view kept, once retention has cut
 *                           the stream's start: lib/replay.c)
 *
 * Only rows whose Ordered event was seen are shown (customerpage.h).
 *
 * Who sees what (the contract's access table): staff see every row; a
 * customer sees only their own -- lists and searches hold only theirs
 * (a search for another customerId is empty), another's row is a 404, as
 * if it did not exist. The caller comes from the token (lib/auth.h), read
 * on the loop: before a unit of work (the filter) or after it (the check). */
#include "customerpage.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "auth.h"
#include "db_job.h"
#include "http.h"
#include "mem.h"
#include "rep.h"
#include "token.h"

/* ---- representations ---- */

static json_t *known_or_null(long long v)
{
    return v == PAGE_UNKNOWN ? json_null() : json_integer(v);
}

static json_t *text_or_null(const char *s)
{
    return *s ? json_string(s) : json_null();
}

json_t *customer_page_json(const customer_page *p)
{
    return json_pack("{s:I, s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:s, s:o}",
                     "id", (json_int_t)p->order_id,
                     "orderId", (json_int_t)p->order_id,
                     "customerId", text_or_null(p->customer_id),
                     "productId", text_or_null(p->product_id),
                     "qty", known_or_null(p->qty),
                     "amount", known_or_null(p->amount),
                     "from", text_or_null(p->from),
                     "to", text_or_null(p->to),
                     "days", known_or_null(p->days),
                     "paymentId", known_or_null(p->payment_id),
                     "deliveryId", known_or_null(p->delivery_id),
                     "status", p->status,
                     "history", p->history ? json_incref(p->history) : json_array());
}

static json_t *page_item(const customer_page *p, const char *base_url)
{
    char id[24];
    snprintf(id, sizeof id, "%lld", p->order_id);
    return rep_item(customer_page_json(p), base_url, "customerpages", id);
}

/* ---- input helpers ---- */

/* A required query parameter read with rep_str's rules, at most 128 bytes,
 * copied into text. */
static bool query_text(http_req *r, const char *name, char *text, size_t textlen)
{
    const char *v = http_req_query(r, name);
    if (!v) {
        http_reply_error(r, 400, "query parameter %s is required", name);
        return false;
    }
    char err[160];
    const char *s = NULL;
    json_t *holder = json_pack("{s:s}", name, v);
    int rc = holder ? rep_str(holder, name, true, 128, &s, text, textlen, err, sizeof err) : -1;
    if (rc == 1) snprintf(text, textlen, "%s", s);
    json_decref(holder);
    if (rc != 1) {
        if (holder) http_reply_error(r, 400, "%s", err);
        else http_reply_error(r, 400, "%s must be printable UTF-8 text", name);
        return false;
    }
    return true;
}

/* ---- one request's unit of work (db_job.h) ----
 *
 * The store is read by the `work` half (at once on SQLite, on a database
 * thread on PostgreSQL), the answer sent by the `done` half on the loop; a
 * database that is unreachable or too slow is answered 503. */

typedef struct page_job {
    db_job job;                  /* db_job.h */
    long long id;                /* path id or orderId */
    bool valid_id;
    char customer_id[160];
    bool by_customer;
    long page, size;
    long long total;
    int found;                   /* 1, 0, or -1 on a database error */
    customer_page one;
    int n;
    customer_page *rows;         /* a page of rows, each to be cleared */
    char err[200];
} page_job;

static void job_clear(db_job *job)
{
    page_job *j = (page_job *)job;
    for (int i = 0; i < j->n; i++) customer_page_clear(&j->rows[i]);
    customer_page_clear(&j->one);
    free(j->rows);
}

static page_job *job_new(http_req *r, customerpage_app *app)
{
    return db_job_new(r, app->db, sizeof(page_job), "the customer page database", job_clear);
}

/* ---- pages ---- */

static void keep_page(const customer_page *p, void *arg)
{
    page_job *j = arg;
    customer_page *kept = &j->rows[j->n++];
    *kept = *p;
    kept->history = json_incref(p->history);    /* the caller clears its own */
}

static void list_work(store *st, void *arg)
{
    page_job *j = arg;
    for (int i = 0; i < j->n; i++) customer_page_clear(&j->rows[i]);
    j->n = 0;
    const char *customer = j->by_customer ? j->customer_id : NULL;
    j->total = page_store_count(st, customer);
    j->found = j->total >= 0 &&
               page_store_list(st, customer, j->page * j->size, j->size, keep_page, j) >= 0;
    if (!j->found) snprintf(j->err, sizeof j->err, "%s", store_error(st));
}

static void list_done(void *arg, db_status status)
{
    page_job *j = arg;
    if (db_job_answered_unavailable(&j->job, status)) return;
    if (!j->found) {
        http_reply_error(j->job.req, 500, "could not read the customer pages: %s", j->err);
    } else {
        json_t *items = json_array();
        for (int i = 0; i < j->n; i++)
            json_array_append_new(items, page_item(&j->rows[i], http_req_base_url(j->job.req)));
        rep_reply_collection(j->job.req, "customerpages", items, j->page, j->size, j->total);
    }
    db_job_free(&j->job);
}

/* Lists the rows, all or one customer's. */
static void reply_pages(http_req *r, customerpage_app *app, const char *customer_id)
{
    long page, size;
    if (!rep_page_query(r, &page, &size)) return;
    page_job *j = job_new(r, app);
    j->page = page;
    j->size = size;
    if (customer_id) {
        j->by_customer = true;
        snprintf(j->customer_id, sizeof j->customer_id, "%s", customer_id);
    }
    j->rows = mem_must(calloc((size_t)size, sizeof *j->rows));   /* mem.h: the job's own */
    db_job_run(&j->job, list_work, list_done);
}

static void get_pages(http_req *r, void *arg)
{
    reply_pages(r, arg, auth_owner_filter(r));
}

/* A customer's search for someone else: an empty page, like no rows. */
static void reply_no_pages(http_req *r)
{
    long page, size;
    if (rep_page_query(r, &page, &size))
        rep_reply_collection(r, "customerpages", json_array(), page, size, 0);
}

static void find_pages_by_customer(http_req *r, void *arg)
{
    char customer_id[160];
    if (!query_text(r, "customerId", customer_id, sizeof customer_id))
        return;
    if (auth_may_see(r, customer_id))
        reply_pages(r, arg, customer_id);
    else
        reply_no_pages(r);
}

static void get_one_work(store *st, void *arg)
{
    page_job *j = arg;
    customer_page_clear(&j->one);
    j->found = j->valid_id ? page_store_get(st, j->id, &j->one) : 0;
    if (j->found < 0) snprintf(j->err, sizeof j->err, "%s", store_error(st));
}

/* Another customer's rental is as unknown as a missing one. */
static void hide_others(page_job *j)
{
    if (j->found > 0 && !auth_may_see(j->job.req, j->one.customer_id)) j->found = 0;
}

static void get_page_done(void *arg, db_status status)
{
    page_job *j = arg;
    if (db_job_answered_unavailable(&j->job, status)) return;
    hide_others(j);
    rep_reply_found(j->job.req, j->found,
                    j->found > 0 ? page_item(&j->one, http_req_base_url(j->job.req)) : NULL,
                    "customer page", http_req_param(j->job.req, "id"));
    db_job_free(&j->job);
}

static void get_page(http_req *r, void *arg)
{
    page_job *j = job_new(r, arg);
    j->valid_id = rep_path_id(http_req_param(r, "id"), &j->id);
    db_job_run(&j->job, get_one_work, get_page_done);
}

static void by_order_done(void *arg, db_status status)
{
    page_job *j = arg;
    if (db_job_answered_unavailable(&j->job, status)) return;
    hide_others(j);
    if (j->found < 0) {
        http_reply_error(j->job.req, 500, "could not read the customer page of order %lld: %s", j->id,
                         j->err);
    } else {
        json_t *items = json_array();
        if (j->found && j->page == 0)
            json_array_append_new(items, page_item(&j->one, http_req_base_url(j->job.req)));
        rep_reply_collection(j->job.req, "customerpages", items, j->page, j->size, j->found);
    }
    db_job_free(&j->job);
}

static void find_pages_by_order(http_req *r, void *arg)
{
    long long order_id;
    long page, size;
    if (!rep_query_int(r, "orderId", 1, LLONG_MAX, &order_id)
        || !rep_page_query(r, &page, &size))
        return;
    page_job *j = job_new(r, arg);
    j->id = order_id;
    j->valid_id = true;
    j->page = page;
    j->size = size;
    db_job_run(&j->job, get_one_work, by_order_done);
}

/* ---- rebuild ---- */

static json_t *rebuild_json(const rebuild_status *s)
{
    return json_pack("{s:s, s:I, s:I, s:I, s:o, s:o, s:o}",
                     "state", rebuild_state_name(s->state),
                     "events", (json_int_t)s->events,
                     "rows", (json_int_t)s->rows,
                     "differences", (json_int_t)s->differences,
                     "startedAt", text_or_null(s->started_at),
                     "finishedAt", text_or_null(s->finished_at),
                     "error", text_or_null(s->error));
}

/* The answer to POST /admin/rebuild, once the start is settled. */
typedef struct rebuild_request {
    http_req *req;
    customerpage_app *app;
} rebuild_request;

static void answer_rebuild(void *arg, int status, const char *err)
{
    rebuild_request *rq = arg;
    if (status == 202) {
        http_set_header(rq->req, "Location", "/admin/rebuild");
        http_reply_json(rq->req, 202, rebuild_json(&rq->app->rebuild));
    } else {
        if (status == 503) http_set_header(rq->req, "Retry-After", "5");
        http_reply_error(rq->req, status, "%s", err);
    }
    free(rq);
}

static void post_rebuild(http_req *r, void *arg)
{
    rebuild_request *rq = mem_must(malloc(sizeof *rq));   /* mem.h: a request's bookkeeping */
    *rq = (rebuild_request){r, arg};
    customerpage_rebuild_start(arg, answer_rebuild, rq);
}

static void get_rebuild(http_req *r, void *arg)
{
    customerpage_app *app = arg;
    http_reply_json(r, 200, rebuild_json(&app->rebuild));
}

void customerpage_api_register(service *svc, customerpage_app *app)
{
    const unsigned people = TOKEN_ROLE_CUSTOMER | TOKEN_ROLE_STAFF;
    http_server_route_for(svc->http, "GET", "/customerpages", people, get_pages, app);
    http_server_route_for(svc->http, "GET", "/customerpages/search/findByOrderId", people,
                          find_pages_by_order, app);
    http_server_route_for(svc->http, "GET", "/customerpages/search/findByCustomerId", people,
                          find_pages_by_customer, app);
    http_server_route_for(svc->http, "GET", "/customerpages/{id}", people, get_page, app);
    /* Staff only (http_server_route's default). */
    http_server_route(svc->http, "POST", "/admin/rebuild", post_rebuild, app);
    http_server_route(svc->http, "GET", "/admin/rebuild", get_rebuild, app);
}
