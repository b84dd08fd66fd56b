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
 * policy.c, and shape the answer (rep.h). Each request is one unit of work
 * (db_job.h): the store is used by its `work` half (at once on the loop on
 * SQLite, where a command's transaction never interleaves with an event's;
 * on a database thread on PostgreSQL, where SERIALIZABLE keeps them apart)
 * and the answer sent by its `done` half, on the loop. A database that is
 * unreachable or too slow is answered 503. */
#include "delivery.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include "db_job.h"
#include "http.h"
#include "mem.h"
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

/* ---- one request's unit of work ---- */

typedef struct delivery_job {
    db_job job;                  /* db_job.h */
    long long id;                /* path id or orderId; 0 = none */
    bool valid_id;
    db_job_page page;            /* a list's: deliveries or cancellations */
    int found;                   /* 1, 0, or -1 on a database error */
    delivery d;
    cancellation c;
    bool created;
    char err[200];
} delivery_job;

static void job_clear(db_job *job)
{
    db_job_page_free(&((delivery_job *)job)->page);
}

static delivery_job *job_new(http_req *r, db *d)
{
    return db_job_new(r, d, sizeof(delivery_job), "the delivery database", job_clear);
}

/* A job for one page of a list, with room for its rows; NULL when the
 * request was answered (a bad page). */
static delivery_job *page_job(http_req *r, db *d, size_t row_size)
{
    db_job_page page;
    if (!db_job_page_query(r, &page, row_size)) return NULL;
    delivery_job *j = job_new(r, d);
    j->page = page;
    return j;
}

/* The rows of one page, kept by the work (db_job.h); arg is the page. */
static void keep_delivery(const delivery *d, void *arg)
{
    db_job_page_keep(arg, d);
}

static void keep_cancellation(const cancellation *c, void *arg)
{
    db_job_page_keep(arg, c);
}

static json_t *delivery_row(const void *row, const char *base_url)
{
    return delivery_item(row, base_url);
}

static json_t *cancellation_row(const void *row, const char *base_url)
{
    return cancellation_item(row, base_url);
}

/* ---- deliveries ---- */

static void list_deliveries_work(store *st, void *arg)
{
    delivery_job *j = arg;
    db_job_page *p = &j->page;
    p->n = 0;
    p->total = delivery_store_count(st, j->id);
    p->failed = p->total < 0 ||
                delivery_store_list(st, j->id, p->page * p->size, p->size, keep_delivery, p) < 0;
    if (p->failed) snprintf(j->err, sizeof j->err, "%s", store_error(st));
}

static void list_deliveries_done(void *arg, db_status status)
{
    delivery_job *j = arg;
    if (db_job_answered_unavailable(&j->job, status)) return;
    db_job_reply_page(&j->job, &j->page, "deliveries", delivery_row,
                      "could not read deliveries: %s", j->err);
}

/* Lists deliveries, all or those of one order. */
static void reply_deliveries(http_req *r, db *d, long long order_id_or_0)
{
    delivery_job *j = page_job(r, d, sizeof(delivery));
    if (!j) return;
    j->id = order_id_or_0;
    db_job_run(&j->job, list_deliveries_work, list_deliveries_done);
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

static void get_delivery_work(store *st, void *arg)
{
    delivery_job *j = arg;
    j->found = j->valid_id ? delivery_store_get(st, j->id, &j->d) : 0;
}

static void get_delivery_done(void *arg, db_status status)
{
    delivery_job *j = arg;
    if (db_job_answered_unavailable(&j->job, status)) return;
    rep_reply_found(j->job.req, j->found,
                    j->found > 0 ? delivery_item(&j->d, http_req_base_url(j->job.req)) : NULL,
                    "delivery", http_req_param(j->job.req, "id"));
    db_job_free(&j->job);
}

static void get_delivery(http_req *r, void *arg)
{
    delivery_job *j = job_new(r, arg);
    j->valid_id = rep_path_id(http_req_param(r, "id"), &j->id);
    db_job_run(&j->job, get_delivery_work, get_delivery_done);
}

/* ---- cancellations ---- */

static void list_cancellations_work(store *st, void *arg)
{
    delivery_job *j = arg;
    db_job_page *p = &j->page;
    p->n = 0;
    p->total = cancellation_store_count(st);
    p->failed = p->total < 0 ||
                cancellation_store_list(st, p->page * p->size, p->size, keep_cancellation, p) < 0;
    if (p->failed) snprintf(j->err, sizeof j->err, "%s", store_error(st));
}

static void list_cancellations_done(void *arg, db_status status)
{
    delivery_job *j = arg;
    if (db_job_answered_unavailable(&j->job, status)) return;
    db_job_reply_page(&j->job, &j->page, "cancellations", cancellation_row,
                      "could not read cancellations: %s", j->err);
}

static void get_cancellations(http_req *r, void *arg)
{
    delivery_job *j = page_job(r, arg, sizeof(cancellation));
    if (!j) return;
    db_job_run(&j->job, list_cancellations_work, list_cancellations_done);
}

static void get_cancellation_work(store *st, void *arg)
{
    delivery_job *j = arg;
    j->found = j->valid_id ? cancellation_store_get(st, j->id, &j->c) : 0;
}

static void get_cancellation_done(void *arg, db_status status)
{
    delivery_job *j = arg;
    if (db_job_answered_unavailable(&j->job, status)) return;
    rep_reply_found(j->job.req, j->found,
                    j->found > 0 ? cancellation_item(&j->c, http_req_base_url(j->job.req)) : NULL,
                    "cancellation", http_req_param(j->job.req, "id"));
    db_job_free(&j->job);
}

static void get_cancellation(http_req *r, void *arg)
{
    delivery_job *j = job_new(r, arg);
    j->valid_id = rep_path_id(http_req_param(r, "id"), &j->id);
    db_job_run(&j->job, get_cancellation_work, get_cancellation_done);
}

/* POST /cancellations: the same command as the OrderCancelled policy, in
 * its own transaction. A repeat finds the recorded cancellation (200).
 * found: 1 done, 0 the database was busy (BEGIN failed), -1 failed. */
static void cancel_work(store *st, void *arg)
{
    delivery_job *j = arg;
    j->err[0] = '\0';
    if (store_begin(st) != SQLITE_OK) {
        j->found = 0;
        snprintf(j->err, sizeof j->err, "%s", store_error(st));
        return;
    }
    j->found = -1;
    if (delivery_cancel(st, j->id, j->job.request_id, &j->c, &j->created, j->err, sizeof j->err) < 0) {
        store_rollback(st);
        return;
    }
    if (store_commit(st) != SQLITE_OK) {
        store_rollback(st);
        snprintf(j->err, sizeof j->err, "%s", store_error(st));
        return;
    }
    j->found = 1;
}

static void cancel_done(void *arg, db_status status)
{
    delivery_job *j = arg;
    if (db_job_answered_unavailable(&j->job, status)) return;
    http_req *r = j->job.req;
    if (j->found == 0) {
        http_set_header(r, "Retry-After", "1");
        http_reply_error(r, 503, "the delivery database is busy, try again: %s", j->err);
    } else if (j->found < 0) {
        http_reply_error(r, 500, "could not cancel the delivery of order %lld: %s", j->id, j->err);
    } else {
        json_t *item = cancellation_item(&j->c, http_req_base_url(r));
        if (j->created) rep_reply_created(r, item);
        else http_reply_json(r, 200, item);
    }
    db_job_free(&j->job);
}

static void post_cancellation(http_req *r, void *arg)
{
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
    delivery_job *j = job_new(r, arg);
    j->id = order_id;
    db_job_run(&j->job, cancel_work, cancel_done);
}

void delivery_api_register(service *svc, db *d)
{
    http_server_route(svc->http, "GET", "/deliveries", get_deliveries, d);
    http_server_route(svc->http, "GET", "/deliveries/search/findByOrderId",
                      find_deliveries_by_order, d);
    http_server_route(svc->http, "GET", "/deliveries/{id}", get_delivery, d);
    http_server_route(svc->http, "GET", "/cancellations", get_cancellations, d);
    /* Between services only: never a person's call (the gateway does not
     * route it either). The reads are staff only (the default). */
    http_server_route_for(svc->http, "POST", "/cancellations", TOKEN_ROLE_SERVICE,
                          post_cancellation, d);
    http_server_route(svc->http, "GET", "/cancellations/{id}", get_cancellation, d);
}
