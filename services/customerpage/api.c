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
 *
 * Only rows whose Ordered event was seen are shown (customerpage.h).
 *
 * Who sees what (the contract's access table): staff see every row; a
 * customer sees only their own -- lists and searches hold only theirs
 * (a search for another customerId is empty), another's row is a 404, as
 * if it did not exist. The caller comes from the token (lib/auth.h). */
#include "customerpage.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include "auth.h"
#include "http.h"
#include "rep.h"

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

/* ---- pages ---- */

static void add_page(const customer_page *p, void *arg)
{
    rep_list *l = arg;
    json_array_append_new(l->items, page_item(p, l->base_url));
}

/* Lists the rows, all or one customer's. */
static void reply_pages(http_req *r, store *st, const char *customer_id)
{
    long page, size;
    if (!rep_page_query(r, &page, &size)) return;
    long long total = page_store_count(st, customer_id);
    rep_list list = { json_array(), http_req_base_url(r) };
    if (total < 0 || page_store_list(st, customer_id, page * size, size, add_page, &list) < 0) {
        json_decref(list.items);
        http_reply_error(r, 500, "could not read the customer pages: %s", store_error(st));
        return;
    }
    rep_reply_collection(r, "customerpages", list.items, page, size, total);
}

static void get_pages(http_req *r, void *arg)
{
    customerpage_app *app = arg;
    reply_pages(r, app->st, auth_owner_filter(r));
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
    customerpage_app *app = arg;
    char customer_id[160];
    if (!query_text(r, "customerId", customer_id, sizeof customer_id))
        return;
    if (auth_may_see(r, customer_id))
        reply_pages(r, app->st, customer_id);
    else
        reply_no_pages(r);
}

static void get_page(http_req *r, void *arg)
{
    customerpage_app *app = arg;
    const char *raw = http_req_param(r, "id");
    long long id;
    customer_page p = { 0 };
    int found = rep_path_id(raw, &id) ? page_store_get(app->st, id, &p) : 0;
    if (found > 0 && !auth_may_see(r, p.customer_id))
        found = 0;   /* another customer's rental: as unknown as a missing one */
    rep_reply_found(r, found, found > 0 ? page_item(&p, http_req_base_url(r)) : NULL,
                    "customer page", raw);
    customer_page_clear(&p);
}

static void find_pages_by_order(http_req *r, void *arg)
{
    customerpage_app *app = arg;
    long long order_id;
    long page, size;
    if (!rep_query_int(r, "orderId", 1, LLONG_MAX, &order_id)
        || !rep_page_query(r, &page, &size))
        return;
    customer_page p = { 0 };
    int found = page_store_get(app->st, order_id, &p);
    if (found > 0 && !auth_may_see(r, p.customer_id))
        found = 0;
    if (found < 0) {
        http_reply_error(r, 500, "could not read the customer page of order %lld: %s", order_id,
                         store_error(app->st));
        return;
    }
    json_t *items = json_array();
    if (found && page == 0) json_array_append_new(items, page_item(&p, http_req_base_url(r)));
    customer_page_clear(&p);
    rep_reply_collection(r, "customerpages", items, page, size, found);
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

static void post_rebuild(http_req *r, void *arg)
{
    customerpage_app *app = arg;
    bool conflict;
    char err[256];
    if (customerpage_rebuild_start(app, &conflict, err, sizeof err) < 0) {
        if (!conflict) http_set_header(r, "Retry-After", "5");
        http_reply_error(r, conflict ? 409 : 503, "%s", err);
        return;
    }
    http_set_header(r, "Location", "/admin/rebuild");
    http_reply_json(r, 202, rebuild_json(&app->rebuild));
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
