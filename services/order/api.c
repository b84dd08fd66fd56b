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
 * only theirs) or anyone's for staff. POST /orders: rental.c.
 *
 * Each request is one unit of work (db.h): its `work` half reads or calls
 * the domain (at once on SQLite, on a database thread on PostgreSQL) into
 * an api_job, its `done` half answers on the loop. Whatever the work needs
 * from the request (the period, the caller's id, today) is read on the
 * loop first; the work never touches the request. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "db.h"
#include "db_job.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "order.h"
#include "rep.h"
#include "service.h"

typedef struct order_api {
    db *db;
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

/* ---- one request's unit of work ---- */

/* A handler's inputs, read on the loop, and the store's results, read by
 * the work (lib/db_job.h). */
typedef struct api_job {
    db_job job;                  /* first: the request, the database, request_id */
    long long id;                /* order id */
    char car_id[ORDER_PRODUCT_MAX + 1];
    long from, to;               /* a period */
    db_job_page page;            /* a list's: cars or orders */
    bool owner_only;             /* a customer: only their own rentals */
    char owner[ORDER_CUSTOMER_MAX + 1];
    long today;
    time_t now;
    /* results */
    int found;                   /* 1, 0, -1 error */
    long long total;
    car c;
    order o;
    end_outcome ended;           /* a cancel's or a return's */
} api_job;

static void clear_rows(db_job *job)
{
    db_job_page_free(&((api_job *)job)->page);
}

static api_job *job_new(http_req *r, order_api *api)
{
    api_job *j = db_job_new(r, api->db, sizeof *j, "the order database", clear_rows);
    const char *owner = auth_owner_filter(r);
    j->owner_only = owner != NULL;
    snprintf(j->owner, sizeof j->owner, "%s", owner ? owner : "");
    return j;
}

/* The rows of one page, kept by the work (db_job.h); arg is the page. */
static void keep_car(const car *c, void *arg)
{
    db_job_page_keep(arg, c);
}

static void keep_order(const order *o, void *arg)
{
    db_job_page_keep(arg, o);
}

/* The order j->id as the caller may see it: 1, 0 (missing or another
 * customer's: as unknown as a missing one), -1 error. */
static int visible_order(store *st, api_job *j)
{
    int found = order_store_get(st, j->id, &j->o);
    if (found > 0 && j->owner_only && strcmp(j->o.customer_id, j->owner) != 0)
        return 0;
    return found;
}

/* ---- reads ---- */

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

static void list_cars_work(store *st, void *arg)
{
    api_job *j = arg;
    db_job_page *p = &j->page;
    p->n = 0;
    p->total = car_store_count(st);
    p->failed = p->total < 0 ||
                car_store_list(st, j->from, j->to, p->page * p->size, p->size, keep_car, p) != 0;
}

static json_t *car_item(const void *row, const char *base_url)
{
    return car_json(row, base_url);
}

static json_t *order_item(const void *row, const char *base_url)
{
    return order_json(row, base_url);
}

static void list_cars_done(void *arg, db_status status)
{
    api_job *j = arg;
    if (!db_job_answered_unavailable(&j->job, status))
        db_job_reply_page(&j->job, &j->page, "cars", car_item, "the fleet could not be read");
}

static void list_cars(http_req *r, void *arg)
{
    long from, to;
    db_job_page page;
    if (!db_job_page_query(r, &page, sizeof(car)))
        return;
    if (!period_query(r, &from, &to)) {
        db_job_page_free(&page);
        return;
    }
    api_job *j = job_new(r, arg);
    j->page = page;
    j->from = from;
    j->to = to;
    db_job_run(&j->job, list_cars_work, list_cars_done);
}

static void get_car_work(store *st, void *arg)
{
    api_job *j = arg;
    j->found = car_store_get(st, j->car_id, j->from, j->to, &j->c);
}

static void get_car_done(void *arg, db_status status)
{
    api_job *j = arg;
    if (db_job_answered_unavailable(&j->job, status))
        return;
    http_req *r = j->job.req;
    if (j->found < 0)
        http_reply_error(r, 500, "the car could not be read");
    else if (!j->found)
        http_reply_error(r, 404, "no car model with id %s", j->car_id);
    else
        http_reply_json(r, 200, car_json(&j->c, http_req_base_url(r)));
    db_job_free(&j->job);
}

static void get_car(http_req *r, void *arg)
{
    const char *id = http_req_param(r, "id");
    long from, to;
    if (!period_query(r, &from, &to))
        return;
    if (!id || strlen(id) > ORDER_PRODUCT_MAX) {
        http_reply_error(r, 404, "no car model with id %.*s", ORDER_PRODUCT_MAX, id ? id : "");
        return;
    }
    api_job *j = job_new(r, arg);
    snprintf(j->car_id, sizeof j->car_id, "%s", id);
    j->from = from;
    j->to = to;
    db_job_run(&j->job, get_car_work, get_car_done);
}

/* A positive integer path parameter, else a 400. */
static bool order_id_param(http_req *r, long long *out)
{
    if (rep_path_id(http_req_param(r, "id"), out))
        return true;
    http_reply_error(r, 400, "order id must be a positive integer");
    return false;
}

static void list_orders_work(store *st, void *arg)
{
    api_job *j = arg;
    const char *customer = j->owner[0] ? j->owner : NULL;
    db_job_page *p = &j->page;
    p->n = 0;
    p->total = order_store_count(st, customer);
    p->failed = p->total < 0 ||
                order_store_list(st, customer, p->page * p->size, p->size, keep_order, p) != 0;
}

static void list_orders_done(void *arg, db_status status)
{
    api_job *j = arg;
    if (!db_job_answered_unavailable(&j->job, status))
        db_job_reply_page(&j->job, &j->page, "orders", order_item, "the orders could not be read");
}

/* The orders of customer_id (NULL: everyone's). */
static void list_orders_of(http_req *r, order_api *api, const char *customer_id)
{
    db_job_page page;
    if (!db_job_page_query(r, &page, sizeof(order)))
        return;
    api_job *j = job_new(r, api);
    j->page = page;
    snprintf(j->owner, sizeof j->owner, "%s", customer_id ? customer_id : "");
    db_job_run(&j->job, list_orders_work, list_orders_done);
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

static void get_order_work(store *st, void *arg)
{
    api_job *j = arg;
    j->found = visible_order(st, j);
}

static void get_order_done(void *arg, db_status status)
{
    api_job *j = arg;
    if (db_job_answered_unavailable(&j->job, status))
        return;
    http_req *r = j->job.req;
    rep_reply_found(r, j->found, j->found > 0 ? order_json(&j->o, http_req_base_url(r)) : NULL,
                    "order", http_req_param(r, "id"));
    db_job_free(&j->job);
}

/* A job for a request on /orders/{id}: NULL when it answered 400. */
static api_job *order_job(http_req *r, order_api *api)
{
    long long id;
    if (!order_id_param(r, &id))
        return NULL;
    api_job *j = job_new(r, api);
    j->id = id;
    return j;
}

static void get_order(http_req *r, void *arg)
{
    api_job *j = order_job(r, arg);
    if (j)
        db_job_run(&j->job, get_order_work, get_order_done);
}

/* ---- DELETE /orders/{id} ---- */

/* Before a change: the order could not be read (500) or is not the
 * caller's to see (404): answered, job freed, true. */
static bool answered_missing(api_job *j)
{
    if (j->found > 0)
        return false;
    if (j->found < 0)
        http_reply_error(j->job.req, 500, "order %lld could not be read; please retry", j->id);
    else
        http_reply_error(j->job.req, 404, "order %lld not found", j->id);
    db_job_free(&j->job);
    return true;
}

/* A cancel or a return that did not end the rental, now or before that
 * way (`verb`: "cancelled", `other`: the other ending): answered, job
 * freed, true. */
static bool answered_not_ended(api_job *j, const char *verb, const char *other)
{
    http_req *r = j->job.req;
    switch (j->ended) {
    case END_DONE:
    case END_ALREADY:
        return false;
    case END_NOT_FOUND:
        http_reply_error(r, 404, "order %lld not found", j->id);
        break;
    case END_OTHER_WAY:
        http_reply_error(r, 409, "order %lld was %s and cannot be %s", j->id, other, verb);
        break;
    case END_FAILED:
        http_reply_error(r, 500, "order %lld could not be %s; please retry", j->id, verb);
        break;
    }
    db_job_free(&j->job);
    return true;
}

/* The order exists and is the caller's (or the caller is staff), then the
 * cancel: another customer's order is a 404, as if it did not exist. */
static void cancel_work(store *st, void *arg)
{
    api_job *j = arg;
    j->found = visible_order(st, j);
    if (j->found > 0)
        j->ended = order_cancel(st, j->id, j->job.request_id, &j->o);
}

static void cancel_done(void *arg, db_status status)
{
    api_job *j = arg;
    if (db_job_answered_unavailable(&j->job, status))
        return;
    http_req *r = j->job.req;
    if (answered_missing(j) || answered_not_ended(j, "cancelled", "returned"))
        return;
    if (j->ended == END_DONE)
        log_info("req=%s msg=\"order cancelled\" order=%lld product=%s qty=%lld", http_req_id(r),
                 j->id, j->o.product_id, j->o.qty);
    http_reply_empty(r, 204);
    db_job_free(&j->job);
}

static void cancel_order(http_req *r, void *arg)
{
    api_job *j = order_job(r, arg);
    if (j)
        db_job_run(&j->job, cancel_work, cancel_done);
}

/* ---- POST /orders/{id}/return ---- */

static void return_work(store *st, void *arg)
{
    api_job *j = arg;
    j->found = visible_order(st, j);
    if (j->found > 0)
        j->ended = order_return(st, j->id, j->today, j->now, j->job.request_id, &j->o);
}

static void return_done(void *arg, db_status status)
{
    api_job *j = arg;
    if (db_job_answered_unavailable(&j->job, status))
        return;
    http_req *r = j->job.req;
    if (answered_missing(j) || answered_not_ended(j, "returned", "cancelled"))
        return;
    if (j->ended == END_DONE) {
        log_info("req=%s msg=\"order returned\" order=%lld product=%s qty=%lld", http_req_id(r),
                 j->id, j->o.product_id, j->o.qty);
        metrics_counter_add("carshare_returns_total", "by=\"request\"", 1);
    }
    /* Done now or before: the answer is the order as it is now. */
    http_reply_json(r, 200, order_json(&j->o, http_req_base_url(r)));
    db_job_free(&j->job);
}

static void return_order(http_req *r, void *arg)
{
    api_job *j = order_job(r, arg);
    if (!j)
        return;
    j->today = cal_today();
    j->now = cal_now();
    db_job_run(&j->job, return_work, return_done);
}

static void free_api(void *arg)
{
    free(arg);
}

void order_api_register(service *svc, db *d, const order_api_config *cfg)
{
    order_api *api = mem_must(calloc(1, sizeof *api));
    api->db = d;

    http_server *h = svc->http;
    const unsigned people = TOKEN_ROLE_CUSTOMER | TOKEN_ROLE_STAFF;
    http_server_route_for(h, "GET", "/cars", HTTP_OPEN, list_cars, api);
    http_server_route_for(h, "GET", "/cars/{id}", HTTP_OPEN, get_car, api);
    order_rental_register(svc, d, cfg);
    http_server_route_for(h, "GET", "/orders", people, list_orders, api);
    http_server_route_for(h, "GET", "/orders/search/findByCustomerId", people,
                          find_orders_by_customer, api);
    http_server_route_for(h, "GET", "/orders/{id}", people, get_order, api);
    http_server_route_for(h, "DELETE", "/orders/{id}", people, cancel_order, api);
    http_server_route_for(h, "POST", "/orders/{id}/return", people, return_order, api);
    service_on_stop(svc, free_api, api);
}
