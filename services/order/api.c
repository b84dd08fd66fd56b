/* api.c: order's HTTP interface, apart from the rental itself.
 *
 *   GET    /cars[?page&size][&from&to]  the fleet, available for a period
 *                                   (default today)    GET /cars/{id}[?from&to]
 *   POST   /orders                  rent and pay: rental.c
 *   GET    /orders[?page&size]      accepted rentals   GET /orders/{id}
 *   GET    /orders/search/findByCustomerId?customerId=kim
 *   DELETE /orders/{id}             cancel (204; again 204; unknown 404; returned 409)
 *   POST   /orders/{id}/return      end the rental (200; again 200; cancelled 409)
 *
 * The representations of a car and of an order live here; rental.c
 * answers with order_json too.
 *
 * Who may do what (the contract's access table, the caller from the token,
 * lib/auth.h): GET /cars is open; reads, searches and DELETE are a
 * customer's own rentals (another's id is a 404, lists and searches hold
 * only theirs) or anyone's for staff. POST /orders: rental.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "order.h"
#include "rep.h"
#include "service.h"

typedef struct order_api {
    store *st;
} order_api;

/* ---- representations ---- */

static json_t *car_json(const car *c, const char *base_url)
{
    json_t *item = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I}",
                             "id", c->id, "name", c->name, "location", c->location,
                             "dailyPrice", (json_int_t)c->daily_price,
                             "total", (json_int_t)c->total, "available", (json_int_t)c->available);
    return rep_item(item, base_url, "cars", c->id);
}

json_t *order_json(const order *o, const char *base_url)
{
    char id[24], from[CAL_DATE_SIZE], to[CAL_DATE_SIZE];
    json_t *item = json_pack("{s:I, s:s, s:I, s:s, s:I, s:I, s:s, s:s, s:s, s:I}",
                             "id", (json_int_t)o->id, "productId", o->product_id,
                             "qty", (json_int_t)o->qty, "customerId", o->customer_id,
                             "amount", (json_int_t)o->amount,
                             "paymentId", (json_int_t)o->payment_id, "status", o->status,
                             "from", cal_format(o->from_day, from),
                             "to", cal_format(o->to_day, to),
                             "days", (json_int_t)(o->to_day - o->from_day));
    if (item && o->returned_at[0])
        json_object_set_new(item, "returnedAt", json_string(o->returned_at));
    snprintf(id, sizeof id, "%lld", o->id);
    return rep_item(item, base_url, "orders", id);
}

/* ---- reads ---- */

static void add_car(const car *c, void *arg)
{
    rep_list *l = arg;
    json_array_append_new(l->items, car_json(c, l->base_url));
}

static void add_order(const order *o, void *arg)
{
    rep_list *l = arg;
    json_array_append_new(l->items, order_json(o, l->base_url));
}

/* The period of ?from&to (rental_period's rules; today without them), else
 * a 400. */
static bool period_query(http_req *r, long *from, long *to)
{
    char err[200];
    const char *f = http_req_query(r, "from"), *t = http_req_query(r, "to");
    if (rental_period(f, t, cal_today(), from, to, err, sizeof err))
        return true;
    http_reply_error(r, 400, "%s", err);
    return false;
}

static void list_cars(http_req *r, void *arg)
{
    order_api *api = arg;
    long page, size, from, to;
    if (!rep_page_query(r, &page, &size) || !period_query(r, &from, &to))
        return;
    rep_list list = {json_array(), http_req_base_url(r)};
    long long total = car_store_count(api->st);
    if (total < 0 || car_store_list(api->st, from, to, page * size, size, add_car, &list) != 0) {
        json_decref(list.items);
        http_reply_error(r, 500, "the fleet could not be read");
        return;
    }
    rep_reply_collection(r, "cars", list.items, page, size, total);
}

static void get_car(http_req *r, void *arg)
{
    order_api *api = arg;
    const char *id = http_req_param(r, "id");
    long from, to;
    if (!period_query(r, &from, &to))
        return;
    car c;
    int found = id && strlen(id) <= ORDER_PRODUCT_MAX ? car_store_get(api->st, id, from, to, &c)
                                                      : 0;
    if (found < 0)
        http_reply_error(r, 500, "the car could not be read");
    else if (!found)
        http_reply_error(r, 404, "no car model with id %.*s", ORDER_PRODUCT_MAX, id ? id : "");
    else
        http_reply_json(r, 200, car_json(&c, http_req_base_url(r)));
}

/* A positive integer path parameter, else a 400. */
static bool order_id_param(http_req *r, long long *out)
{
    if (rep_path_id(http_req_param(r, "id"), out))
        return true;
    http_reply_error(r, 400, "order id must be a positive integer");
    return false;
}

static void list_orders_of(http_req *r, order_api *api, const char *customer_id)
{
    long page, size;
    if (!rep_page_query(r, &page, &size))
        return;
    rep_list list = {json_array(), http_req_base_url(r)};
    long long total = order_store_count(api->st, customer_id);
    if (total < 0
        || order_store_list(api->st, customer_id, page * size, size, add_order, &list) != 0) {
        json_decref(list.items);
        http_reply_error(r, 500, "the orders could not be read");
        return;
    }
    rep_reply_collection(r, "orders", list.items, page, size, total);
}

static void list_orders(http_req *r, void *arg)
{
    list_orders_of(r, arg, auth_owner_filter(r));
}

static void find_orders_by_customer(http_req *r, void *arg)
{
    const char *customer = http_req_query(r, "customerId");
    if (!customer || !*customer) {
        http_reply_error(r, 400, "customerId is required");
        return;
    }
    if (strlen(customer) > ORDER_CUSTOMER_MAX) {
        http_reply_error(r, 400, "customerId must be at most %d characters long",
                         ORDER_CUSTOMER_MAX);
        return;
    }
    long page, size;
    /* A customer's search for someone else holds nothing. */
    if (!auth_may_see(r, customer)) {
        if (rep_page_query(r, &page, &size))
            rep_reply_collection(r, "orders", json_array(), page, size, 0);
        return;
    }
    list_orders_of(r, arg, customer);
}

static void get_order(http_req *r, void *arg)
{
    order_api *api = arg;
    long long id;
    if (!order_id_param(r, &id))
        return;
    order o;
    int found = order_store_get(api->st, id, &o);
    if (found > 0 && !auth_may_see(r, o.customer_id))
        found = 0;   /* another customer's rental: as unknown as a missing one */
    rep_reply_found(r, found, found > 0 ? order_json(&o, http_req_base_url(r)) : NULL, "order",
                    http_req_param(r, "id"));
}

/* Before a cancel or a return: the order exists and is the caller's (or
 * the caller is staff). Another customer's order is a 404, as if it did
 * not exist. False when it answered. */
static bool caller_may_change(http_req *r, order_api *api, long long id, order *o)
{
    int found = order_store_get(api->st, id, o);
    if (found < 0) {
        http_reply_error(r, 500, "order %lld could not be read; please retry", id);
        return false;
    }
    if (found == 0 || !auth_may_see(r, o->customer_id)) {
        http_reply_error(r, 404, "order %lld not found", id);
        return false;
    }
    return true;
}

/* ---- DELETE /orders/{id} ---- */

static void cancel_order(http_req *r, void *arg)
{
    order_api *api = arg;
    long long id;
    if (!order_id_param(r, &id))
        return;
    order o;
    if (!caller_may_change(r, api, id, &o))
        return;
    switch (order_cancel(api->st, id, http_req_id(r), &o)) {
    case CANCEL_DONE:
        log_info("req=%s msg=\"order cancelled\" order=%lld product=%s qty=%lld", http_req_id(r),
                 id, o.product_id, o.qty);
        http_reply_empty(r, 204);
        return;
    case CANCEL_ALREADY:
        http_reply_empty(r, 204);
        return;
    case CANCEL_NOT_FOUND:
        http_reply_error(r, 404, "order %lld not found", id);
        return;
    case CANCEL_RETURNED:
        http_reply_error(r, 409, "order %lld was returned and cannot be cancelled", id);
        return;
    case CANCEL_FAILED:
        break;
    }
    http_reply_error(r, 500, "order %lld could not be cancelled; please retry", id);
}

/* ---- POST /orders/{id}/return ---- */

static void return_order(http_req *r, void *arg)
{
    order_api *api = arg;
    long long id;
    if (!order_id_param(r, &id))
        return;
    order o;
    if (!caller_may_change(r, api, id, &o))
        return;
    return_outcome outcome = order_return(api->st, id, cal_today(), cal_now(), http_req_id(r),
                                          &o);
    if (outcome == RETURN_DONE) {
        log_info("req=%s msg=\"order returned\" order=%lld product=%s qty=%lld", http_req_id(r),
                 id, o.product_id, o.qty);
        metrics_counter_add("carshare_returns_total", "by=\"request\"", 1);
    }
    switch (outcome) {
    case RETURN_DONE:
    case RETURN_ALREADY:   /* the answer is the order as it is now */
        http_reply_json(r, 200, order_json(&o, http_req_base_url(r)));
        return;
    case RETURN_NOT_FOUND:
        http_reply_error(r, 404, "order %lld not found", id);
        return;
    case RETURN_CANCELLED:
        http_reply_error(r, 409, "order %lld was cancelled and cannot be returned", id);
        return;
    case RETURN_FAILED:
        break;
    }
    http_reply_error(r, 500, "order %lld could not be returned; please retry", id);
}

static void free_api(void *arg)
{
    free(arg);
}

void order_api_register(service *svc, store *st, const order_api_config *cfg)
{
    order_api *api = mem_must(calloc(1, sizeof *api));
    api->st = st;

    http_server *h = svc->http;
    const unsigned people = TOKEN_ROLE_CUSTOMER | TOKEN_ROLE_STAFF;
    http_server_route_for(h, "GET", "/cars", HTTP_OPEN, list_cars, api);
    http_server_route_for(h, "GET", "/cars/{id}", HTTP_OPEN, get_car, api);
    order_rental_register(svc, st, cfg);
    http_server_route_for(h, "GET", "/orders", people, list_orders, api);
    http_server_route_for(h, "GET", "/orders/search/findByCustomerId", people,
                          find_orders_by_customer, api);
    http_server_route_for(h, "GET", "/orders/{id}", people, get_order, api);
    http_server_route_for(h, "DELETE", "/orders/{id}", people, cancel_order, api);
    http_server_route_for(h, "POST", "/orders/{id}/return", people, return_order, api);
    service_on_stop(svc, free_api, api);
}
