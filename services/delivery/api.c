/* api.c: delivery's HTTP interface.
 *
 *   GET  /deliveries                              HAL collection, paged
 *   GET  /deliveries/{id}
 *   GET  /deliveries/search/findByOrderId?orderId=7   collection (0 or 1 item)
 *   GET  /cancellations                           HAL collection, paged
 *   GET  /cancellations/{id}
 *   POST /cancellations {"orderId": 7}            201 the new cancellation,
 *                                                 200 the existing one on repeat
 *
 * Handlers parse and validate, call the store or the cancel command of
 * policy.c, and shape the answer (rep.h). Everything runs on the loop
 * thread, as do the bus handlers, so a command's transaction never
 * interleaves with an event's. */
#include "delivery.h"

#include <limits.h>
#include <stdio.h>
#include "http.h"
#include "token.h"
#include "rep.h"

/* ---- representations ---- */

static json_t *id_or_null(long long id)
{
    return id > 0 ? json_integer(id) : json_null();
}

static json_t *delivery_item(const delivery *d, const char *base_url)
{
    char id[24];
    snprintf(id, sizeof id, "%lld", d->id);
    json_t *item = json_pack("{s:I, s:I, s:o, s:s}",
                             "id", (json_int_t)d->id,
                             "orderId", (json_int_t)d->order_id,
                             "paymentId", id_or_null(d->payment_id),
                             "status", d->status);
    return rep_item(item, base_url, "deliveries", id);
}

static json_t *cancellation_item(const cancellation *c, const char *base_url)
{
    char id[24];
    snprintf(id, sizeof id, "%lld", c->id);
    json_t *item = json_pack("{s:I, s:I, s:I, s:o, s:s}",
                             "id", (json_int_t)c->id,
                             "orderId", (json_int_t)c->order_id,
                             "deliveryId", (json_int_t)c->delivery_id,
                             "paymentId", id_or_null(c->payment_id),
                             "status", DELIVERY_CANCELLED);
    return rep_item(item, base_url, "cancellations", id);
}

/* ---- deliveries ---- */

static void add_delivery(const delivery *d, void *arg)
{
    rep_list *l = arg;
    json_array_append_new(l->items, delivery_item(d, l->base_url));
}

static void add_cancellation(const cancellation *c, void *arg)
{
    rep_list *l = arg;
    json_array_append_new(l->items, cancellation_item(c, l->base_url));
}

/* Lists deliveries, all or those of one order. */
static void reply_deliveries(http_req *r, store *st, long long order_id_or_0)
{
    long page, size;
    if (!rep_page_query(r, &page, &size)) return;
    long long total = delivery_store_count(st, order_id_or_0);
    rep_list list = { json_array(), http_req_base_url(r) };
    if (total < 0 || delivery_store_list(st, order_id_or_0, page * size, size,
                                         add_delivery, &list) < 0) {
        json_decref(list.items);
        http_reply_error(r, 500, "could not read deliveries: %s", store_error(st));
        return;
    }
    rep_reply_collection(r, "deliveries", list.items, page, size, total);
}

static void get_deliveries(http_req *r, void *arg)
{
    reply_deliveries(r, arg, 0);
}

static void find_deliveries_by_order(http_req *r, void *arg)
{
    long long order_id;
    if (rep_query_int(r, "orderId", 1, LLONG_MAX, &order_id)) reply_deliveries(r, arg, order_id);
}

static void get_delivery(http_req *r, void *arg)
{
    store *st = arg;
    const char *raw = http_req_param(r, "id");
    long long id;
    delivery d;
    int found = rep_path_id(raw, &id) ? delivery_store_get(st, id, &d) : 0;
    rep_reply_found(r, found, found > 0 ? delivery_item(&d, http_req_base_url(r)) : NULL,
                    "delivery", raw);
}

/* ---- cancellations ---- */

static void get_cancellations(http_req *r, void *arg)
{
    store *st = arg;
    long page, size;
    if (!rep_page_query(r, &page, &size)) return;
    long long total = cancellation_store_count(st);
    rep_list list = { json_array(), http_req_base_url(r) };
    if (total < 0 || cancellation_store_list(st, page * size, size, add_cancellation, &list) < 0) {
        json_decref(list.items);
        http_reply_error(r, 500, "could not read cancellations: %s", store_error(st));
        return;
    }
    rep_reply_collection(r, "cancellations", list.items, page, size, total);
}

static void get_cancellation(http_req *r, void *arg)
{
    store *st = arg;
    const char *raw = http_req_param(r, "id");
    long long id;
    cancellation c;
    int found = rep_path_id(raw, &id) ? cancellation_store_get(st, id, &c) : 0;
    rep_reply_found(r, found, found > 0 ? cancellation_item(&c, http_req_base_url(r)) : NULL,
                    "cancellation", raw);
}

/* POST /cancellations: the same command as the OrderCancelled policy, in
 * its own transaction. A repeat finds the recorded cancellation (200). */
static void post_cancellation(http_req *r, void *arg)
{
    store *st = arg;
    json_t *body = http_req_json(r);
    if (!body) return;
    long long order_id;
    char err[200];
    int rc = rep_int(body, "orderId", true, 1, LLONG_MAX, &order_id, err, sizeof err);
    json_decref(body);
    if (rc != 1) {
        http_reply_error(r, 400, "%s", err);
        return;
    }
    if (store_begin(st) != SQLITE_OK) {
        http_set_header(r, "Retry-After", "1");
        http_reply_error(r, 503, "the delivery database is busy, try again: %s", store_error(st));
        return;
    }
    cancellation c;
    bool created;
    if (delivery_cancel(st, order_id, http_req_id(r), &c, &created, err, sizeof err) < 0) {
        store_rollback(st);
        http_reply_error(r, 500, "could not cancel the delivery of order %lld: %s", order_id, err);
        return;
    }
    if (store_commit(st) != SQLITE_OK) {
        store_rollback(st);
        http_reply_error(r, 500, "could not cancel the delivery of order %lld: %s", order_id,
                         store_error(st));
        return;
    }
    json_t *item = cancellation_item(&c, http_req_base_url(r));
    if (created) rep_reply_created(r, item);
    else http_reply_json(r, 200, item);
}

void delivery_api_register(service *svc, store *st)
{
    http_server_route(svc->http, "GET", "/deliveries", get_deliveries, st);
    http_server_route(svc->http, "GET", "/deliveries/search/findByOrderId",
                      find_deliveries_by_order, st);
    http_server_route(svc->http, "GET", "/deliveries/{id}", get_delivery, st);
    http_server_route(svc->http, "GET", "/cancellations", get_cancellations, st);
    /* Between services only: never a person's call (the gateway does not
     * route it either). The reads are staff only (the default). */
    http_server_route_for(svc->http, "POST", "/cancellations", TOKEN_ROLE_SERVICE,
                          post_cancellation, st);
    http_server_route(svc->http, "GET", "/cancellations/{id}", get_cancellation, st);
}
