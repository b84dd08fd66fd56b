/* httpc.c: the non-blocking HTTP client of httpc.h, on libevent's evhttp.
 *
 * Shape. A client owns a fixed array of connection slots, one
 * evhttp_connection each, and never puts more than one request on a
 * connection at a time (evhttp does not pipeline, so a second request would
 * only wait behind the first and escape the bulkhead). The slot array *is*
 * the bulkhead: max_inflight slots; a call that finds no idle slot waits in a
 * FIFO of at most max_queue calls; beyond that it is refused (HTTPC_BUSY).
 * The first min(pool_size, max_inflight) slots keep their connection alive
 * between calls; slots beyond pool_size send "Connection: close", so bursts
 * above the pool do not leave idle sockets behind. Idle slots are kept on a
 * LIFO stack: the most recently used (warmest) connection is reused first
 * and the ones at the bottom age out.
 *
 * A call. Each http_client_send takes a call object from a per-client free
 * list (no allocation once the pool is warm) and copies what it needs (uri,
 * headers, body) into the call's own reusable buffer, because a retry must
 * rebuild the request after the caller's memory is gone. Every call has one
 * timer, whose meaning follows the call's phase:
 *   PENDING     fires at once: a refusal, delivered on the next loop turn so
 *               that completion is never synchronous;
 *   QUEUED      the end of the wait for a slot: max_queue_wait_ms after
 *               the call arrived (it then ends HTTPC_BUSY: never sent, so
 *               the caller may safely answer 503), or, for a retry, the
 *               call's deadline;
 *   CONNECTING  the connect deadline, when the attempt opened a connection;
 *   WIRE        the call's deadline (the total timeout budget, which runs
 *               from when the first attempt is put on the wire: time spent
 *               in our own queue must not make us give up on an answer the
 *               upstream is about to give, e.g. for a POST it accepted);
 *   BACKOFF     the end of the sleep before a retry;
 *   DEFERRED    fires at once: an attempt that evhttp failed synchronously,
 *               inside evhttp_make_request, is finished from the loop.
 *
 * Timeouts. evhttp only has inactivity timeouts, used for connecting too, so
 * we keep evhttp's own timeout long (it doubles as the idle limit of a
 * pooled connection, see slot_timeout_ms) and enforce ours: the connect
 * timer checks with getpeername() whether the socket got connected, and the
 * total timer ends the attempt. Ending an attempt frees the whole
 * evhttp_connection, from our timer and never from inside an evhttp
 * callback: freeing (rather than evhttp_cancel_request, which resets and
 * keeps the connection) guarantees that no half-read answer and no deferred
 * read of the old request can reach the slot's next call.
 *
 * Failures and retries. Each attempt that passed the breaker records exactly
 * one outcome in it: an answer below 500 is a success; transport failures
 * and 5xx answers are failures (5xx answers are successes with
 * breaker_ignores_5xx: a proxy's upstream answering 503 fast is speaking,
 * not failing); a call that waits too long in the queue counts as a
 * failure too (the upstream is not keeping up). Only idempotent calls are
 * retried, on transport failures and on 502/503/504, after a full-jitter
 * backoff (uniform in [0, backoff_ms * 2^(n-1)]), only if the sleep ends
 * inside the call's budget, and only through breaker_allow: while the
 * breaker is open no retry leaves (the call then ends HTTPC_OPEN). A timeout
 * is never retried: the attempt used the whole budget.
 *
 * Stale keep-alive connections. evhttp watches idle connections and resets
 * one when the server closes it, so the next call reconnects transparently.
 * The remaining race is a close that arrived but was not yet processed: a
 * request written there fails with no way to know whether the server saw it.
 * Before a non-idempotent call reuses a connection, and before any call
 * reuses one idle for a while (HTTPC_STALE_MS), we therefore peek at the
 * socket: a connection that reads EOF (or any unexpected byte) is dropped
 * and replaced before anything is sent. A failure that still happens on a
 * reused connection (the close crossing our request on the wire) is
 * retried only for idempotent calls: for the others we cannot know whether
 * the server processed the request.
 *
 * Re-entrancy. Completions normally run inside evhttp's callbacks, which is
 * where evhttp allows starting the next request on the same connection: a
 * freed slot is handed at once to the first queued call. The user callback
 * may call http_client_send again, but must not free the client.
 *
 * Options: zero means default; retries < 0 and max_queue < 0 mean none
 * (from the environment, RETRIES=0 and MAX_QUEUE=0 mean none). */
#include "httpc.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "config.h"
#include "durable.h"
#include "http.h"
#include "log.h"
#include "metrics.h"

#define HTTPC_IDLE_MS       30000        /* pooled connection idle limit */
#define HTTPC_STALE_MS      200          /* idle longer than this: peek first */
#define HTTPC_MAX_BODY      (16 << 20)   /* answers larger than this are broken */
#define HTTPC_MAX_HEADERS   (64 << 10)
#define HTTPC_BACKOFF_CAP_MS 10000
#define HTTPC_BUSY_RETRY_MS  1000         /* a full bulkhead: a short hint */

typedef enum {
    CALL_FREE = 0,
    CALL_PENDING,
    CALL_QUEUED,
    CALL_CONNECTING,
    CALL_WIRE,
    CALL_BACKOFF,
    CALL_DEFERRED,
    CALL_DURABLE,       /* admitted, waiting for the commits before it to be on disk */
} call_phase;

typedef struct httpc_slot httpc_slot;
typedef struct httpc_call httpc_call;

struct httpc_slot {
    http_client *client;
    struct evhttp_connection *evcon;   /* NULL until first use or after a kill */
    httpc_call *call;                  /* the call on the wire, or NULL */
    unsigned long long idle_since_ms;
    int evcon_timeout_ms;
    bool keep_alive;
    bool reached;                      /* the connection got established */
};

struct httpc_call {
    http_client *client;
    http_client_cb cb;
    void *cb_arg;
    call_phase phase;
    struct event timer;
    httpc_call *prev, *next;           /* the wait queue, or the free list */
    httpc_call *all_next;              /* every call object, for http_client_free */
    httpc_slot *slot;                  /* while an attempt is on the wire */

    enum evhttp_cmd_type method;
    const char *method_name;
    bool idempotent;
    bool admitted;                     /* passed the breaker at least once */
    int attempts;
    int timeout_ms;                    /* the budget, from the first attempt on */
    unsigned long long started_ms;
    unsigned long long queue_deadline_ms;  /* while QUEUED */
    unsigned long long deadline_ms;    /* set when the first attempt starts */

    /* the attempt in progress */
    bool starting;                     /* inside evhttp_make_request */
    bool fresh;                        /* it opened a new connection */
    int error;                         /* evhttp_request_error, or -1 */
    httpc_result outcome;              /* for PENDING and DEFERRED */
    int outcome_status;

    /* the request, copied: uri, request id, content type, headers, body */
    char *mem;
    size_t mem_cap;
    size_t uri_off, rid_off, ctype_off, hdr_off, body_off, body_len;
    int hdr_count;
    bool has_rid;
};

struct http_client {
    struct event_base *base;
    char name[64];
    char labels[96];                   /* upstream="name" */
    /* The labels of the last outcome exported (see export_outcome). */
    char outcome_labels[160];
    httpc_result outcome_result;
    int outcome_status;                /* -1: none yet */
    char *host;                        /* for connecting (no IPv6 brackets) */
    struct evdns_base *dns;            /* resolves host; NULL when it is an address */
    char *host_header;
    char *prefix;                      /* base URL path, no trailing slash */
    size_t prefix_len;
    int port;
    int family;
    http_client_opts opts;             /* resolved: no zero fields left */
    breaker breaker;

    httpc_slot *slots;
    int nslots, nkeep;
    int *idle_keep, n_idle_keep;       /* LIFO stacks of slot indexes */
    int *idle_extra, n_idle_extra;
    int inflight;

    httpc_call *queue_head, *queue_tail;
    int queued;
    int deferred;                      /* admitted calls waiting for group commit */
    httpc_call *free_calls;
    httpc_call *all_calls;

    uint64_t rng;
    bool closing;
};

static void call_timer_cb(evutil_socket_t fd, short what, void *arg);
static void attempt_start(httpc_call *hc, httpc_slot *slot);

/* ---- small helpers ---- */

static unsigned long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000ULL + (unsigned long long)ts.tv_nsec / 1000000ULL;
}

static void timer_arm(httpc_call *hc, unsigned long long delay_ms)
{
    struct timeval tv = { .tv_sec = (time_t)(delay_ms / 1000),
                          .tv_usec = (suseconds_t)((delay_ms % 1000) * 1000) };
    evtimer_add(&hc->timer, &tv);
}

static void timer_arm_until(httpc_call *hc, unsigned long long when_ms)
{
    unsigned long long now = now_ms();
    timer_arm(hc, when_ms > now ? when_ms - now : 0);
}

static uint64_t rng_next(http_client *c)
{
    /* xorshift64*: plenty for jitter, no locking, no libc state */
    uint64_t x = c->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    c->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

const char *httpc_result_name(httpc_result r)
{
    switch (r) {
    case HTTPC_OK: return "ok";
    case HTTPC_CONNECT: return "connect";
    case HTTPC_TIMEOUT: return "timeout";
    case HTTPC_BROKEN: return "broken";
    case HTTPC_OPEN: return "open";
    case HTTPC_BUSY: return "busy";
    }
    return "unknown";
}

const breaker *http_client_breaker(const http_client *c)
{
    return &c->breaker;
}

/* The bulkhead: calls waiting for a slot (queued, or admitted and waiting
 * for group commit, which will want a slot the moment the disk catches
 * up) beyond the idle slots may not exceed max_queue. */
static bool bulkhead_full(const http_client *c)
{
    int idle = c->n_idle_keep + c->n_idle_extra;
    return c->queued + c->deferred >= idle + c->opts.max_queue;
}

httpc_result http_client_refusal(const http_client *c, unsigned long long *retry_ms)
{
    unsigned long long ms = breaker_retry_in_ms(&c->breaker, now_ms());
    if (ms > 0) {
        *retry_ms = ms;
        return HTTPC_OPEN;
    }
    if (bulkhead_full(c)) {
        *retry_ms = HTTPC_BUSY_RETRY_MS;
        return HTTPC_BUSY;
    }
    *retry_ms = 0;
    return HTTPC_OK;
}

static const struct {
    const char *name;
    enum evhttp_cmd_type type;
} httpc_methods[] = {
    { "GET", EVHTTP_REQ_GET },       { "POST", EVHTTP_REQ_POST },
    { "PUT", EVHTTP_REQ_PUT },       { "PATCH", EVHTTP_REQ_PATCH },
    { "DELETE", EVHTTP_REQ_DELETE }, { "HEAD", EVHTTP_REQ_HEAD },
    { "OPTIONS", EVHTTP_REQ_OPTIONS },
};

static bool method_lookup(const char *name, enum evhttp_cmd_type *type, const char **canonical)
{
    if (!name)
        return false;
    for (size_t i = 0; i < sizeof httpc_methods / sizeof httpc_methods[0]; i++) {
        if (strcmp(httpc_methods[i].name, name) == 0) {
            *type = httpc_methods[i].type;
            *canonical = httpc_methods[i].name;
            return true;
        }
    }
    return false;
}

/* Headers the client writes itself, or that describe one hop only: a
 * caller's copy of them (a proxied request's) must not be forwarded. */
static bool header_is_ours(const char *key)
{
#define OURS(s) { s, sizeof s - 1 }
    static const struct { const char *name; size_t len; } ours[] = {
        OURS("Host"), OURS("Connection"), OURS("Content-Length"), OURS("Transfer-Encoding"),
        OURS("Keep-Alive"), OURS("Proxy-Connection"), OURS("TE"), OURS("Trailer"),
        OURS("Upgrade"), OURS("Expect"),
    };
#undef OURS
    size_t len = strlen(key);   /* every proxied header passes here: cheap test first */
    for (size_t i = 0; i < sizeof ours / sizeof ours[0]; i++)
        if (ours[i].len == len && strcasecmp(key, ours[i].name) == 0)
            return true;
    return false;
}

/* ---- metrics ---- */

static void export_inflight(http_client *c)
{
    metrics_gauge_set("carshare_upstream_inflight", c->labels, (double)c->inflight);
}

static void export_outcome(http_client *c, httpc_call *hc, httpc_result result, int status,
                           unsigned long long elapsed_ms)
{
    /* Nearly every call ends like the one before it (ok, 200): its labels
     * are formatted again only when the outcome differs (measured: the
     * snprintf was 1.4k instructions per proxied request). */
    if (result != c->outcome_result || status != c->outcome_status) {
        snprintf(c->outcome_labels, sizeof c->outcome_labels, "%s,result=\"%s\",status=\"%d\"",
                 c->labels, httpc_result_name(result), status);
        c->outcome_result = result;
        c->outcome_status = status;
    }
    metrics_counter_add("carshare_upstream_requests_total", c->outcome_labels, 1);
    if (hc->admitted)   /* refusals take no time and would skew the latency */
        metrics_histogram_observe("carshare_upstream_duration_seconds", c->labels,
                                  (double)elapsed_ms / 1000.0);
}

/* ---- call objects ---- */

static httpc_call *call_alloc(http_client *c)
{
    httpc_call *hc = c->free_calls;
    if (hc) {
        c->free_calls = hc->next;
    } else {
        hc = calloc(1, sizeof *hc);
        if (!hc)
            return NULL;
        hc->client = c;
        evtimer_assign(&hc->timer, c->base, call_timer_cb, hc);
        hc->all_next = c->all_calls;
        c->all_calls = hc;
    }
    hc->prev = hc->next = NULL;
    hc->slot = NULL;
    hc->attempts = 0;
    hc->admitted = false;
    hc->starting = false;
    hc->error = -1;
    hc->outcome = HTTPC_OK;
    hc->outcome_status = 0;
    return hc;
}

static void call_release(httpc_call *hc)
{
    http_client *c = hc->client;
    hc->phase = CALL_FREE;
    hc->cb = NULL;
    hc->cb_arg = NULL;
    hc->next = c->free_calls;
    c->free_calls = hc;
}

static char *call_reserve(httpc_call *hc, size_t need)
{
    if (need > hc->mem_cap) {
        size_t cap = hc->mem_cap ? hc->mem_cap : 256;
        while (cap < need)
            cap *= 2;
        char *mem = realloc(hc->mem, cap);
        if (!mem)
            return NULL;
        hc->mem = mem;
        hc->mem_cap = cap;
    }
    return hc->mem;
}

/* Copies what a retry needs into the call's own buffer. */
static bool call_copy_request(httpc_call *hc, const http_call *call)
{
    http_client *c = hc->client;
    const char *uri = call->uri && *call->uri ? call->uri : "/";
    const char *ctype = call->content_type;
    bool has_rid = call->request_id && *call->request_id;
    const struct evkeyval *h;

    if (!ctype && call->headers) {
        TAILQ_FOREACH(h, call->headers, next)
            if (strcasecmp(h->key, "Content-Type") == 0) {
                ctype = h->value;
                break;
            }
    }
    if (!ctype)
        ctype = "application/json";

    size_t need = c->prefix_len + strlen(uri) + 1 + strlen(ctype) + 1 + call->body_len + 1;
    if (has_rid)
        need += strlen(call->request_id) + 1;
    if (call->headers)
        TAILQ_FOREACH(h, call->headers, next)
            need += strlen(h->key) + strlen(h->value) + 2;

    char *mem = call_reserve(hc, need);
    if (!mem)
        return false;
    size_t at = 0;

    hc->uri_off = at;
    memcpy(mem + at, c->prefix, c->prefix_len);
    at += c->prefix_len;
    size_t n = strlen(uri) + 1;
    memcpy(mem + at, uri, n);
    at += n;

    hc->has_rid = has_rid;
    hc->rid_off = at;
    if (has_rid) {
        n = strlen(call->request_id) + 1;
        memcpy(mem + at, call->request_id, n);
        at += n;
    }

    hc->ctype_off = at;
    n = strlen(ctype) + 1;
    memcpy(mem + at, ctype, n);
    at += n;

    hc->hdr_off = at;
    hc->hdr_count = 0;
    if (call->headers) {
        TAILQ_FOREACH(h, call->headers, next) {
            if (header_is_ours(h->key) || strcasecmp(h->key, "Content-Type") == 0 ||
                (has_rid && strcasecmp(h->key, "X-Request-Id") == 0))
                continue;
            n = strlen(h->key) + 1;
            memcpy(mem + at, h->key, n);
            at += n;
            n = strlen(h->value) + 1;
            memcpy(mem + at, h->value, n);
            at += n;
            hc->hdr_count++;
        }
    }

    hc->body_off = at;
    hc->body_len = call->body ? call->body_len : 0;
    if (hc->body_len)
        memcpy(mem + at, call->body, hc->body_len);
    return true;
}

/* ---- finishing a call ---- */

static void call_finish(httpc_call *hc, httpc_result result, int status,
                        struct evhttp_request *req)
{
    http_client *c = hc->client;
    unsigned long long now = now_ms();
    http_response resp = {
        .result = result,
        .status = result == HTTPC_OK ? status : 0,
        .headers = NULL,
        .body = "",
        .body_len = 0,
        .elapsed_ms = now - hc->started_ms,
        .retry_after_ms = result == HTTPC_OPEN ? breaker_retry_in_ms(&c->breaker, now) : 0,
    };
    if (result == HTTPC_OK && req) {
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t len = evbuffer_get_length(in);
        resp.headers = evhttp_request_get_input_headers(req);
        if (len > 0 && evbuffer_add(in, "", 1) == 0) {   /* NUL-terminate in place */
            resp.body = (const char *)evbuffer_pullup(in, -1);
            resp.body_len = len;
        }
    }
    export_outcome(c, hc, resp.result, resp.status, resp.elapsed_ms);
    evtimer_del(&hc->timer);
    hc->phase = CALL_FREE;
    if (hc->cb)
        hc->cb(&resp, hc->cb_arg);
    call_release(hc);
}

/* A call refused before it reached the wire completes on the next turn. */
static void call_refuse(httpc_call *hc, httpc_result result)
{
    hc->phase = CALL_PENDING;
    hc->outcome = result;
    timer_arm(hc, 0);
}

static void log_failure(httpc_call *hc, httpc_result result, int status, const char *what)
{
    http_client *c = hc->client;
    char uri[256];
    log_warn("upstream=%s req=%s method=%s uri=%s attempt=%d result=%s status=%d "
             "elapsed_ms=%llu msg=\"%s\"",
             c->name, hc->has_rid ? hc->mem + hc->rid_off : "-", hc->method_name,
             log_quote(uri, sizeof uri, hc->mem + hc->uri_off), hc->attempts,
             httpc_result_name(result), status, now_ms() - hc->started_ms, what);
}

/* ---- the wait queue ---- */

static void queue_push(http_client *c, httpc_call *hc)
{
    hc->next = NULL;
    hc->prev = c->queue_tail;
    if (c->queue_tail)
        c->queue_tail->next = hc;
    else
        c->queue_head = hc;
    c->queue_tail = hc;
    c->queued++;
}

static void queue_remove(http_client *c, httpc_call *hc)
{
    if (hc->prev)
        hc->prev->next = hc->next;
    else
        c->queue_head = hc->next;
    if (hc->next)
        hc->next->prev = hc->prev;
    else
        c->queue_tail = hc->prev;
    hc->prev = hc->next = NULL;
    c->queued--;
}

/* A call not sent yet may wait max_queue_wait_ms (and no longer than its
 * own timeout); a retry waits within the budget that started with its
 * first attempt. */
static void call_enqueue(httpc_call *hc)
{
    http_client *c = hc->client;
    int wait_ms = c->opts.max_queue_wait_ms < hc->timeout_ms ? c->opts.max_queue_wait_ms
                                                             : hc->timeout_ms;
    hc->phase = CALL_QUEUED;
    hc->queue_deadline_ms = hc->attempts == 0 ? now_ms() + (unsigned long long)wait_ms
                                              : hc->deadline_ms;
    queue_push(c, hc);
    timer_arm_until(hc, hc->queue_deadline_ms);
}

/* A queued call whose wait ran out before a slot freed up: HTTPC_BUSY if it
 * was never sent, else (a retry) HTTPC_TIMEOUT. The breaker is not told:
 * a call that never left says nothing of the upstream's health (the calls
 * on the wire do), and counting our own load shedding as failures would
 * let a burst open the breaker to an upstream that answers every call it
 * gets. A retry's earlier failure was recorded when it happened. */
static void queued_call_expire(httpc_call *hc)
{
    http_client *c = hc->client;
    httpc_result result = hc->attempts == 0 ? HTTPC_BUSY : HTTPC_TIMEOUT;
    queue_remove(c, hc);
    log_failure(hc, result, 0, hc->attempts == 0
                ? "no connection became free within max_queue_wait_ms: not sent"
                : "no connection became free for the retry within the timeout");
    call_finish(hc, result, 0, NULL);
}

/* ---- slots ---- */

static httpc_slot *slot_acquire(http_client *c)
{
    if (c->n_idle_keep > 0)
        return &c->slots[c->idle_keep[--c->n_idle_keep]];
    if (c->n_idle_extra > 0)
        return &c->slots[c->idle_extra[--c->n_idle_extra]];
    return NULL;
}

/* Hands a slot that just became free to the first queued call whose budget
 * is not spent, or puts it back on its idle stack. */
static void slot_release(http_client *c, httpc_slot *slot)
{
    unsigned long long now = now_ms();
    slot->idle_since_ms = now;   /* its connection was in use until now */
    while (c->queue_head) {
        httpc_call *next = c->queue_head;
        if (now >= next->queue_deadline_ms) {
            evtimer_del(&next->timer);
            queued_call_expire(next);
            continue;
        }
        queue_remove(c, next);
        evtimer_del(&next->timer);
        attempt_start(next, slot);
        return;
    }
    int index = (int)(slot - c->slots);
    if (slot->keep_alive)
        c->idle_keep[c->n_idle_keep++] = index;
    else
        c->idle_extra[c->n_idle_extra++] = index;
}

static void on_connection_close(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    httpc_slot *slot = arg;
    slot->reached = true;   /* evhttp only reports closing a connected socket */
}

static bool slot_connect(httpc_slot *slot)
{
    http_client *c = slot->client;
    struct evhttp_connection *evcon = evhttp_connection_base_new(c->base, c->dns, c->host,
                                                                 (unsigned short)c->port);
    if (!evcon)
        return false;
    evhttp_connection_set_family(evcon, c->family);
    /* read an early answer (413...) even if the server stops reading the body */
    evhttp_connection_set_flags(evcon, EVHTTP_CON_READ_ON_WRITE_ERROR);
    evhttp_connection_set_retries(evcon, 0);
    evhttp_connection_set_max_body_size(evcon, HTTPC_MAX_BODY);
    evhttp_connection_set_max_headers_size(evcon, HTTPC_MAX_HEADERS);
    evhttp_connection_set_closecb(evcon, on_connection_close, slot);
    struct timeval tv = { .tv_sec = slot->evcon_timeout_ms / 1000,
                          .tv_usec = (slot->evcon_timeout_ms % 1000) * 1000 };
    evhttp_connection_set_timeout_tv(evcon, &tv);
    slot->evcon = evcon;
    return true;
}

/* Drops the slot's connection with whatever request is on it, at once.
 * Never called from inside one of that connection's evhttp callbacks. */
static void slot_kill(httpc_slot *slot)
{
    if (!slot->evcon)
        return;
    evhttp_connection_set_closecb(slot->evcon, NULL, NULL);
    evhttp_connection_free(slot->evcon);
    slot->evcon = NULL;
}

static void evcon_free_later_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    evhttp_connection_free(arg);
}

/* Drops an idle connection. We may be inside one of its evhttp callbacks
 * (a user callback sending again), so the free waits for the next turn;
 * having no request, it cannot call us back meanwhile. */
static void slot_drop_idle(httpc_slot *slot)
{
    static const struct timeval now = { 0, 0 };
    struct evhttp_connection *evcon = slot->evcon;
    slot->evcon = NULL;
    evhttp_connection_set_closecb(evcon, NULL, NULL);
    if (event_base_once(slot->client->base, -1, EV_TIMEOUT, evcon_free_later_cb, evcon, &now) != 0)
        evhttp_connection_free(evcon);   /* out of memory: take the small risk */
}

static int slot_fd(const httpc_slot *slot)
{
    if (!slot->evcon)
        return -1;
    return bufferevent_getfd(evhttp_connection_get_bufferevent(slot->evcon));
}

/* A request is written whole and then waits for its answer: Nagle would
 * hold its last segment until the server's delayed ACK (40 ms). Set once
 * the socket exists: at once for a numeric host, after the name lookup
 * otherwise (the connect check, or the next call on the connection). */
static void slot_set_nodelay(const httpc_slot *slot)
{
    int fd = slot_fd(slot);
    int nodelay = 1;
    if (fd >= 0)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, sizeof nodelay);
}

/* True when an idle connection still looks usable: no EOF, no stray bytes. */
static bool idle_socket_alive(int fd)
{
    char byte;
    ssize_t n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    return false;   /* 0: the server closed it; >0: bytes nobody asked for */
}

/* ---- attempts ---- */

static bool answer_is_success(const http_client *c, httpc_result result, int status)
{
    return result == HTTPC_OK && (status < 500 || c->opts.breaker_ignores_5xx);
}

static bool attempt_should_retry(httpc_call *hc, httpc_result result, int status,
                                 unsigned long long now, unsigned long long *delay_ms)
{
    http_client *c = hc->client;
    if (!hc->idempotent || hc->attempts > c->opts.retries)
        return false;
    /* a malformed or oversized answer would only come back the same */
    bool malformed = hc->error == EVREQ_HTTP_INVALID_HEADER || hc->error == EVREQ_HTTP_DATA_TOO_LONG;
    bool retryable = result == HTTPC_CONNECT || (result == HTTPC_BROKEN && !malformed) ||
                     (result == HTTPC_OK && (status == 502 || status == 503 || status == 504));
    if (!retryable || c->breaker.state == BREAKER_OPEN)
        return false;
    unsigned long long cap = (unsigned long long)c->opts.backoff_ms;
    for (int i = 1; i < hc->attempts && cap < HTTPC_BACKOFF_CAP_MS; i++)
        cap *= 2;
    if (cap > HTTPC_BACKOFF_CAP_MS)
        cap = HTTPC_BACKOFF_CAP_MS;
    *delay_ms = cap ? rng_next(c) % (cap + 1) : 0;
    return now + *delay_ms < hc->deadline_ms;
}

/* The end of one attempt: free the slot, tell the breaker, then retry or
 * complete the call. req is the answer for HTTPC_OK (valid until we return). */
static void attempt_done(httpc_call *hc, httpc_result result, int status,
                         struct evhttp_request *req)
{
    http_client *c = hc->client;
    httpc_slot *slot = hc->slot;
    unsigned long long now = now_ms();
    unsigned long long delay;

    evtimer_del(&hc->timer);
    hc->slot = NULL;
    slot->call = NULL;
    c->inflight--;
    export_inflight(c);

    breaker_record(&c->breaker, answer_is_success(c, result, status), now);
    if (result != HTTPC_OK)
        log_failure(hc, result, status, hc->fresh ? "on a new connection" : "on a reused connection");

    if (attempt_should_retry(hc, result, status, now, &delay)) {
        metrics_counter_add("carshare_upstream_retries_total", c->labels, 1);
        hc->phase = CALL_BACKOFF;
        timer_arm(hc, delay);
        slot_release(c, slot);
        return;
    }
    slot_release(c, slot);
    call_finish(hc, result, status, req);
}

static void on_request_error(enum evhttp_request_error error, void *arg)
{
    httpc_call *hc = arg;
    hc->error = (int)error;
}

/* evhttp's completion: an answer (req with a status), a failed connect (req
 * without status) or a failure after connecting (req NULL, error set). */
static void on_response(struct evhttp_request *req, void *arg)
{
    httpc_call *hc = arg;
    httpc_result result;
    int status = 0;

    if (req && evhttp_request_get_response_code(req) > 0) {
        result = HTTPC_OK;
        status = evhttp_request_get_response_code(req);
    } else if (req) {
        result = HTTPC_CONNECT;
    } else if (hc->error == EVREQ_HTTP_TIMEOUT) {
        result = HTTPC_TIMEOUT;
    } else if (hc->fresh && !(hc->slot && hc->slot->reached)) {
        result = HTTPC_CONNECT;
    } else {
        result = HTTPC_BROKEN;
    }

    if (hc->starting) {
        /* evhttp failed inside evhttp_make_request: finish from the loop */
        hc->outcome = result;
        hc->outcome_status = status;
        hc->phase = CALL_DEFERRED;
        return;
    }
    attempt_done(hc, result, status, req);
}

static struct evhttp_request *attempt_build_request(httpc_call *hc, httpc_slot *slot)
{
    http_client *c = hc->client;
    struct evhttp_request *req = evhttp_request_new(on_response, hc);
    if (!req)
        return NULL;
    evhttp_request_set_error_cb(req, on_request_error);
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    evhttp_add_header(out, "Host", c->host_header);
    evhttp_add_header(out, "Connection", slot->keep_alive ? "keep-alive" : "close");
    if (hc->has_rid)
        evhttp_add_header(out, "X-Request-Id", hc->mem + hc->rid_off);

    const char *p = hc->mem + hc->hdr_off;
    for (int i = 0; i < hc->hdr_count; i++) {
        const char *key = p;
        const char *value = key + strlen(key) + 1;
        evhttp_add_header(out, key, value);   /* refuses CR/LF: no injection */
        p = value + strlen(value) + 1;
    }

    bool body_method = hc->method == EVHTTP_REQ_POST || hc->method == EVHTTP_REQ_PUT ||
                       hc->method == EVHTTP_REQ_PATCH;
    if (hc->body_len > 0 || body_method) {
        char length[24];
        snprintf(length, sizeof length, "%zu", hc->body_len);
        evhttp_add_header(out, "Content-Length", length);
        if (hc->body_len > 0) {
            evhttp_add_header(out, "Content-Type", hc->mem + hc->ctype_off);
            evbuffer_add(evhttp_request_get_output_buffer(req), hc->mem + hc->body_off,
                         hc->body_len);
        }
    }
    return req;
}

/* Puts one attempt of an admitted call on the wire, through `slot`. */
static void attempt_start(httpc_call *hc, httpc_slot *slot)
{
    http_client *c = hc->client;
    unsigned long long now = now_ms();

    if (hc->attempts == 0)     /* the budget starts on the wire, not in our queue */
        hc->deadline_ms = now + (unsigned long long)hc->timeout_ms;
    hc->attempts++;
    hc->slot = slot;
    hc->error = -1;
    slot->call = hc;
    c->inflight++;
    export_inflight(c);

    /* evhttp's own timeout must never fire before ours */
    unsigned long long budget = hc->deadline_ms > now ? hc->deadline_ms - now : 0;
    if (budget > 86400000ULL)
        budget = 86400000ULL;
    if ((long long)budget + 1000 > slot->evcon_timeout_ms) {
        slot->evcon_timeout_ms = (int)budget + 1000;
        if (slot->evcon) {
            struct timeval tv = { .tv_sec = slot->evcon_timeout_ms / 1000,
                                  .tv_usec = (slot->evcon_timeout_ms % 1000) * 1000 };
            evhttp_connection_set_timeout_tv(slot->evcon, &tv);
        }
    }

    /* A call that cannot be retried always checks; others only when the
     * connection idled long enough for a server to have given up on it. */
    int fd = slot_fd(slot);
    if (fd >= 0 && (!hc->idempotent || now - slot->idle_since_ms >= HTTPC_STALE_MS) &&
        !idle_socket_alive(fd))
        slot_drop_idle(slot);
    if (!slot->evcon && !slot_connect(slot)) {
        hc->fresh = true;
        hc->outcome = HTTPC_BROKEN;
        hc->phase = CALL_DEFERRED;
        log_error("upstream=%s msg=\"cannot create a connection object (out of memory?)\"", c->name);
        timer_arm(hc, 0);
        return;
    }
    hc->fresh = slot_fd(slot) < 0;
    slot->reached = false;

    struct evhttp_request *req = attempt_build_request(hc, slot);
    if (!req) {
        hc->outcome = HTTPC_BROKEN;
        hc->phase = CALL_DEFERRED;
        timer_arm(hc, 0);
        return;
    }

    hc->phase = CALL_WIRE;
    hc->starting = true;
    int rc = evhttp_make_request(slot->evcon, req, hc->method, hc->mem + hc->uri_off);
    hc->starting = false;
    if (rc != 0) {   /* evhttp freed the request */
        hc->outcome = HTTPC_BROKEN;
        hc->phase = CALL_DEFERRED;
    }
    if (hc->phase == CALL_DEFERRED) {
        timer_arm(hc, 0);
        return;
    }

    /* Only a socket made for this attempt needs TCP_NODELAY: evhttp makes
     * a new one only when it has none (it sets the fd to -1 whenever it
     * closes one, a reset keep-alive connection included), and that is
     * what `fresh` says. Measured: setting it on every call was one
     * syscall of 14 per proxied request. A connected socket gets the
     * request written at once (http_write_now). */
    if (hc->fresh)
        slot_set_nodelay(slot);
    else
        http_write_now(evhttp_connection_get_bufferevent(slot->evcon));
    unsigned long long connect_deadline = now + (unsigned long long)c->opts.connect_timeout_ms;
    if (hc->fresh && connect_deadline < hc->deadline_ms) {
        hc->phase = CALL_CONNECTING;
        timer_arm_until(hc, connect_deadline);
    } else {
        timer_arm_until(hc, hc->deadline_ms);
    }
}

/* A call admitted by the breaker takes a slot, or waits for one. */
static void call_dispatch(httpc_call *hc)
{
    httpc_slot *slot = slot_acquire(hc->client);
    if (slot)
        attempt_start(hc, slot);
    else
        call_enqueue(hc);
}

static void dispatch_when_durable(void *arg)
{
    httpc_call *hc = arg;
    hc->client->deferred--;
    call_dispatch(hc);
}

static bool socket_connected(int fd)
{
    struct sockaddr_storage peer;
    socklen_t len = sizeof peer;
    return fd >= 0 && getpeername(fd, (struct sockaddr *)&peer, &len) == 0;
}

static void call_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    httpc_call *hc = arg;
    http_client *c = hc->client;
    unsigned long long now = now_ms();

    switch (hc->phase) {
    case CALL_PENDING:
        call_finish(hc, hc->outcome, 0, NULL);
        break;
    case CALL_DEFERRED:
        attempt_done(hc, hc->outcome, hc->outcome_status, NULL);
        break;
    case CALL_QUEUED:
        queued_call_expire(hc);
        break;
    case CALL_CONNECTING:
        if (now < hc->deadline_ms && socket_connected(slot_fd(hc->slot))) {
            slot_set_nodelay(hc->slot);     /* its socket came after a lookup */
            hc->slot->reached = true;
            hc->phase = CALL_WIRE;
            timer_arm_until(hc, hc->deadline_ms);
            break;
        }
        slot_kill(hc->slot);
        attempt_done(hc, now < hc->deadline_ms ? HTTPC_CONNECT : HTTPC_TIMEOUT, 0, NULL);
        break;
    case CALL_WIRE:
        slot_kill(hc->slot);
        attempt_done(hc, HTTPC_TIMEOUT, 0, NULL);
        break;
    case CALL_BACKOFF:
        if (now >= hc->deadline_ms) {   /* the timer came late: budget spent */
            call_finish(hc, HTTPC_TIMEOUT, 0, NULL);
            break;
        }
        if (!breaker_allow(&c->breaker, now)) {
            call_finish(hc, HTTPC_OPEN, 0, NULL);
            break;
        }
        call_dispatch(hc);   /* already admitted: may queue past max_queue */
        break;
    case CALL_DURABLE:  /* no timer runs while waiting for the disk */
    case CALL_FREE:
        break;
    }
}

/* ---- the public interface ---- */

static void deliver_now(http_client_cb cb, void *arg, httpc_result result)
{
    http_response resp = { .result = result, .body = "" };
    if (cb)
        cb(&resp, arg);
}

int http_client_send(http_client *c, const http_call *call, http_client_cb cb, void *arg)
{
    if (c->closing) {
        /* the loop may be gone: the one synchronous completion */
        deliver_now(cb, arg, HTTPC_BROKEN);
        return 0;
    }
    httpc_call *hc = call_alloc(c);
    if (!hc) {
        log_error("upstream=%s msg=\"out of memory for a call\"", c->name);
        deliver_now(cb, arg, HTTPC_BROKEN);
        return 0;
    }
    hc->cb = cb;
    hc->cb_arg = arg;
    hc->idempotent = call->idempotent;
    hc->started_ms = now_ms();
    hc->timeout_ms = call->timeout_ms > 0 ? call->timeout_ms : c->opts.timeout_ms;
    if (hc->timeout_ms > 86400000)
        hc->timeout_ms = 86400000;

    if (!method_lookup(call->method, &hc->method, &hc->method_name)) {
        hc->method_name = "?";
        hc->has_rid = false;
        log_error("upstream=%s msg=\"unsupported HTTP method\" method=%s", c->name,
                  call->method ? call->method : "(null)");
        call_refuse(hc, HTTPC_BROKEN);
        return 0;
    }
    if (!call_copy_request(hc, call)) {
        hc->has_rid = false;
        log_error("upstream=%s msg=\"out of memory copying a request\"", c->name);
        call_refuse(hc, HTTPC_BROKEN);
        return 0;
    }

    if (bulkhead_full(c)) {
        call_refuse(hc, HTTPC_BUSY);
        return 0;
    }
    if (!breaker_allow(&c->breaker, hc->started_ms)) {
        call_refuse(hc, HTTPC_OPEN);
        return 0;
    }
    hc->admitted = true;
    /* Group commit (durable.h): a call may act on what the caller just
     * committed (payment charges for order's reservation), so it leaves
     * only once that is on disk. Retries need not wait again. */
    hc->phase = CALL_DURABLE;
    if (durable_defer(dispatch_when_durable, hc))
        c->deferred++;
    else
        call_dispatch(hc);
    return 0;
}

int http_client_json(http_client *c, const char *method, const char *uri,
                     const char *request_id, const char *json_body, bool idempotent,
                     http_client_cb cb, void *arg)
{
    http_call call = {
        .method = method,
        .uri = uri,
        .request_id = request_id,
        .content_type = "application/json",
        .body = json_body,
        .body_len = json_body ? strlen(json_body) : 0,
        .idempotent = idempotent,
    };
    return http_client_send(c, &call, cb, arg);
}

static void opts_resolve(http_client_opts *o, const http_client_opts *in)
{
    http_client_opts d = in ? *in : (http_client_opts){ 0 };
    if (d.connect_timeout_ms <= 0) d.connect_timeout_ms = 1000;
    if (d.timeout_ms <= 0) d.timeout_ms = 5000;
    if (d.timeout_ms > 86400000) d.timeout_ms = 86400000;
    if (d.pool_size <= 0) d.pool_size = 16;
    if (d.max_inflight <= 0) d.max_inflight = d.pool_size;
    if (d.max_queue == 0) d.max_queue = 4 * d.pool_size;
    if (d.max_queue < 0) d.max_queue = 0;
    if (d.retries == 0) d.retries = 2;
    if (d.retries < 0) d.retries = 0;
    if (d.backoff_ms <= 0) d.backoff_ms = 50;
    if (d.max_queue_wait_ms <= 0) d.max_queue_wait_ms = d.timeout_ms;
    if (d.max_queue_wait_ms > 86400000) d.max_queue_wait_ms = 86400000;
    *o = d;
}

/* Splits http://host:port/prefix. Returns false, with a log line, if the
 * URL is not a plain http URL with a host. */
static bool client_parse_url(http_client *c, const char *base_url)
{
    struct evhttp_uri *uri = base_url ? evhttp_uri_parse(base_url) : NULL;
    const char *scheme = uri ? evhttp_uri_get_scheme(uri) : NULL;
    const char *host = uri ? evhttp_uri_get_host(uri) : NULL;
    if (!uri || !scheme || strcasecmp(scheme, "http") != 0 || !host || !*host) {
        log_error("upstream=%s url=%s msg=\"not a usable base URL: expected http://host:port\"",
                  c->name, base_url ? base_url : "(null)");
        if (uri)
            evhttp_uri_free(uri);
        return false;
    }
    c->port = evhttp_uri_get_port(uri) > 0 ? evhttp_uri_get_port(uri) : 80;

    size_t hlen = strlen(host);
    bool bracketed = host[0] == '[' && hlen > 2 && host[hlen - 1] == ']';
    c->host = bracketed ? strndup(host + 1, hlen - 2) : strdup(host);

    char header[300];
    if (c->port == 80)
        snprintf(header, sizeof header, "%s", host);
    else
        snprintf(header, sizeof header, "%s:%d", host, c->port);
    c->host_header = strdup(header);

    const char *path = evhttp_uri_get_path(uri);
    size_t plen = path ? strlen(path) : 0;
    while (plen > 0 && path[plen - 1] == '/')
        plen--;
    c->prefix = strndup(path ? path : "", plen);
    c->prefix_len = plen;
    evhttp_uri_free(uri);

    /* "localhost" may resolve to ::1 first while our services listen on
     * 127.0.0.1; evhttp tries only the first address. */
    c->family = strcmp(c->host ? c->host : "", "localhost") == 0 ? AF_INET : AF_UNSPEC;
    return c->host && c->host_header && c->prefix;
}

/* Without a DNS base, evhttp resolves a host name with the blocking
 * getaddrinfo(3), on the loop, at every new connection: with names such as
 * http://payment:8084 (Kubernetes) a slow or absent DNS server would stall
 * every request of the process. libevent's own resolver is asynchronous
 * (it reads /etc/resolv.conf and /etc/hosts once, here). An address needs
 * no resolver at all. */
static void client_resolver(http_client *c)
{
    unsigned char addr[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, c->host, addr) == 1 || inet_pton(AF_INET6, c->host, addr) == 1)
        return;
    c->dns = evdns_base_new(c->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    if (!c->dns)
        log_warn("upstream=%s host=%s msg=\"no asynchronous resolver: names are resolved "
                 "with getaddrinfo on the loop\"", c->name, c->host);
}

http_client *http_client_new(struct event_base *base, const char *name,
                             const char *base_url, const http_client_opts *opts)
{
    http_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->base = base;
    snprintf(c->name, sizeof c->name, "%s", name ? name : "upstream");
    snprintf(c->labels, sizeof c->labels, "upstream=\"%s\"", c->name);
    c->outcome_status = -1;
    opts_resolve(&c->opts, opts);
    if (!client_parse_url(c, base_url)) {
        http_client_free(c);
        return NULL;
    }
    client_resolver(c);
    breaker_init(&c->breaker, c->name, &c->opts.breaker);
    c->opts.breaker = c->breaker.cfg;

    c->nslots = c->opts.max_inflight;
    c->nkeep = c->opts.pool_size < c->nslots ? c->opts.pool_size : c->nslots;
    c->slots = calloc((size_t)c->nslots, sizeof *c->slots);
    c->idle_keep = calloc((size_t)c->nslots, sizeof *c->idle_keep);
    c->idle_extra = calloc((size_t)c->nslots, sizeof *c->idle_extra);
    if (!c->slots || !c->idle_keep || !c->idle_extra) {
        http_client_free(c);
        return NULL;
    }
    int idle_ms = c->opts.timeout_ms + 1000 > HTTPC_IDLE_MS ? c->opts.timeout_ms + 1000 : HTTPC_IDLE_MS;
    /* pushed in reverse so that slot 0 is used first */
    for (int i = c->nslots - 1; i >= 0; i--) {
        httpc_slot *s = &c->slots[i];
        s->client = c;
        s->keep_alive = i < c->nkeep;
        s->evcon_timeout_ms = idle_ms;
        if (s->keep_alive)
            c->idle_keep[c->n_idle_keep++] = i;
        else
            c->idle_extra[c->n_idle_extra++] = i;
    }
    c->rng = (uint64_t)now_ms() * 0x9E3779B97F4A7C15ULL ^ (uint64_t)(uintptr_t)c;
    if (!c->rng)
        c->rng = 1;

    /* A write to a connection the upstream has closed raises SIGPIPE, whose
     * default action would kill the whole process; the error is handled as
     * a broken connection instead. Leave any handler the program set. */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);

    export_inflight(c);
    log_info("upstream=%s url=%s pool=%d max_inflight=%d max_queue=%d timeout_ms=%d "
             "connect_timeout_ms=%d retries=%d msg=\"http client ready\"",
             c->name, base_url, c->nkeep, c->nslots, c->opts.max_queue, c->opts.timeout_ms,
             c->opts.connect_timeout_ms, c->opts.retries);
    return c;
}

void http_client_free(http_client *c)
{
    if (!c)
        return;
    c->closing = true;
    /* Connections first: their requests go without calling us back. */
    for (int i = 0; c->slots && i < c->nslots; i++)
        slot_kill(&c->slots[i]);
    /* Then every call still outstanding ends, as promised, exactly once. */
    for (httpc_call *hc = c->all_calls; hc; hc = hc->all_next) {
        if (hc->phase == CALL_FREE)
            continue;
        evtimer_del(&hc->timer);
        if (hc->phase == CALL_QUEUED)
            queue_remove(c, hc);
        if (hc->phase == CALL_DURABLE) {
            durable_cancel(dispatch_when_durable, hc);
            c->deferred--;
        }
        if (hc->slot) {
            hc->slot->call = NULL;
            hc->slot = NULL;
        }
        call_finish(hc, hc->phase == CALL_PENDING ? hc->outcome : HTTPC_BROKEN, 0, NULL);
    }
    httpc_call *hc = c->all_calls;
    while (hc) {
        httpc_call *next = hc->all_next;
        evtimer_del(&hc->timer);
        free(hc->mem);
        free(hc);
        hc = next;
    }
    /* No lookup is left: freeing a connection cancels its own. */
    if (c->dns)
        evdns_base_free(c->dns, 0);
    free(c->slots);
    free(c->idle_keep);
    free(c->idle_extra);
    free(c->host);
    free(c->host_header);
    free(c->prefix);
    free(c);
}

void http_client_opts_from_env(http_client_opts *o, const char *prefix)
{
    char name[128];
#define OPT_INT(suffix, field, min, max)                                        \
    do {                                                                        \
        snprintf(name, sizeof name, "%s_" suffix, prefix);                      \
        o->field = (int)config_int(name, o->field, min, max);                   \
    } while (0)

    OPT_INT("CONNECT_TIMEOUT_MS", connect_timeout_ms, 0, 600000);
    OPT_INT("TIMEOUT_MS", timeout_ms, 0, 3600000);
    OPT_INT("POOL_SIZE", pool_size, 0, 4096);
    OPT_INT("MAX_INFLIGHT", max_inflight, 0, 4096);
    OPT_INT("BACKOFF_MS", backoff_ms, 0, 60000);
    OPT_INT("MAX_QUEUE_WAIT_MS", max_queue_wait_ms, 0, 3600000);
    OPT_INT("BREAKER_FAILURES", breaker.consecutive_failures, 0, 1000000);
    OPT_INT("BREAKER_MIN_CALLS", breaker.min_calls, 0, 1000000);
    OPT_INT("BREAKER_WINDOW_MS", breaker.window_ms, 0, 86400000);
    OPT_INT("BREAKER_OPEN_MS", breaker.open_ms, 0, 86400000);

    /* Here 0 means "none", not "default": these are set on purpose. */
    snprintf(name, sizeof name, "%s_RETRIES", prefix);
    long v = config_int(name, o->retries < 0 ? 0 : o->retries, 0, 100);
    if (config_str(name, NULL))
        o->retries = v == 0 ? -1 : (int)v;
    snprintf(name, sizeof name, "%s_MAX_QUEUE", prefix);
    v = config_int(name, o->max_queue < 0 ? 0 : o->max_queue, 0, 1000000);
    if (config_str(name, NULL))
        o->max_queue = v == 0 ? -1 : (int)v;

    snprintf(name, sizeof name, "%s_BREAKER_RATIO_PCT", prefix);
    long pct = config_int(name, (long)(o->breaker.failure_ratio * 100.0 + 0.5), 0, 100);
    o->breaker.failure_ratio = (double)pct / 100.0;
#undef OPT_INT
}
