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
 * Only rows whose Ordered event was seen are shown (customerpage.h). */
#include "customerpage.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    return json_pack("{s:I, s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:s, s:o}",
                     "id", (json_int_t)p->order_id,
                     "orderId", (json_int_t)p->order_id,
                     "customerId", text_or_null(p->customer_id),
                     "productId", text_or_null(p->product_id),
                     "qty", known_or_null(p->qty),
                     "amount", known_or_null(p->amount),
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

static bool page_params(http_req *r, long *page, long *size)
{
    char err[160];
    if (!rep_page_params(http_req_query(r, "page"), http_req_query(r, "size"), page, size,
                         err, sizeof err)) {
        http_reply_error(r, 400, "%s", err);
        return false;
    }
    return true;
}

/* A required query parameter read with rep.h's rules: an integer (is_int)
 * or a string of at most 128 bytes. */
static bool query_field(http_req *r, const char *name, bool is_int, long long *num,
                        char *text, size_t textlen)
{
    const char *v = http_req_query(r, name);
    if (!v) {
        http_reply_error(r, 400, "query parameter %s is required", name);
        return false;
    }
    char err[160];
    const char *s = NULL;
    json_t *holder = json_pack("{s:s}", name, v);
    int rc = !holder ? -1
           : is_int ? rep_int(holder, name, true, 1, LLONG_MAX, num, err, sizeof err)
           : rep_str(holder, name, true, 128, &s, text, textlen, err, sizeof err);
    if (rc == 1 && !is_int) snprintf(text, textlen, "%s", s);
    json_decref(holder);
    if (rc != 1) {
        if (holder) http_reply_error(r, 400, "%s", err);
        else http_reply_error(r, 400, "%s must be printable UTF-8 text", name);
        return false;
    }
    return true;
}

static char *self_url(http_req *r)
{
    const char *base = http_req_base_url(r), *uri = http_req_uri(r);
    size_t n = strlen(base) + strlen(uri) + 1;
    char *url = malloc(n);
    if (url) snprintf(url, n, "%s%s", base, uri);
    return url;
}

static void reply_collection(http_req *r, json_t *items, long page, long size, long long total)
{
    char *self = self_url(r);
    http_reply_json(r, 200, rep_collection("customerpages", items, self ? self : "",
                                           page, size, total));
    free(self);
}

/* ---- pages ---- */

typedef struct list_ctx {
    json_t *items;
    const char *base_url;
} list_ctx;

static void add_page(const customer_page *p, void *arg)
{
    list_ctx *ctx = arg;
    json_array_append_new(ctx->items, page_item(p, ctx->base_url));
}

/* Lists the rows, all or one customer's. */
static void reply_pages(http_req *r, store *st, const char *customer_id)
{
    long page, size;
    if (!page_params(r, &page, &size)) return;
    long long total = page_store_count(st, customer_id);
    list_ctx ctx = { json_array(), http_req_base_url(r) };
    if (total < 0 || page_store_list(st, customer_id, page * size, size, add_page, &ctx) < 0) {
        json_decref(ctx.items);
        http_reply_error(r, 500, "could not read the customer pages: %s", store_error(st));
        return;
    }
    reply_collection(r, ctx.items, page, size, total);
}

static void get_pages(http_req *r, void *arg)
{
    customerpage_app *app = arg;
    reply_pages(r, app->st, NULL);
}

static void find_pages_by_customer(http_req *r, void *arg)
{
    customerpage_app *app = arg;
    char customer_id[160];
    if (query_field(r, "customerId", false, NULL, customer_id, sizeof customer_id))
        reply_pages(r, app->st, customer_id);
}

/* A path id: decimal digits only, positive. */
static bool parse_path_id(const char *s, long long *out)
{
    if (!s || !*s || strlen(s) > 18) return false;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9') return false;
    *out = strtoll(s, NULL, 10);
    return *out > 0;
}

static void get_page(http_req *r, void *arg)
{
    customerpage_app *app = arg;
    const char *raw = http_req_param(r, "id");
    long long id;
    customer_page p = { 0 };
    int found = parse_path_id(raw, &id) ? page_store_get(app->st, id, &p) : 0;
    if (found < 0)
        http_reply_error(r, 500, "could not read customer page %s: %s", raw, store_error(app->st));
    else if (!found)
        http_reply_error(r, 404, "customer page %s not found", raw);
    else
        http_reply_json(r, 200, page_item(&p, http_req_base_url(r)));
    customer_page_clear(&p);
}

static void find_pages_by_order(http_req *r, void *arg)
{
    customerpage_app *app = arg;
    long long order_id;
    long page, size;
    if (!query_field(r, "orderId", true, &order_id, NULL, 0) || !page_params(r, &page, &size))
        return;
    customer_page p = { 0 };
    int found = page_store_get(app->st, order_id, &p);
    if (found < 0) {
        http_reply_error(r, 500, "could not read the customer page of order %lld: %s", order_id,
                         store_error(app->st));
        return;
    }
    json_t *items = json_array();
    if (found && page == 0) json_array_append_new(items, page_item(&p, http_req_base_url(r)));
    customer_page_clear(&p);
    reply_collection(r, items, page, size, found);
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
    http_server_route(svc->http, "GET", "/customerpages", get_pages, app);
    http_server_route(svc->http, "GET", "/customerpages/search/findByOrderId",
                      find_pages_by_order, app);
    http_server_route(svc->http, "GET", "/customerpages/search/findByCustomerId",
                      find_pages_by_customer, app);
    http_server_route(svc->http, "GET", "/customerpages/{id}", get_page, app);
    http_server_route(svc->http, "POST", "/admin/rebuild", post_rebuild, app);
    http_server_route(svc->http, "GET", "/admin/rebuild", get_rebuild, app);
}
