/* httpc.c: the non-blocking HTTP client of httpc.h, on libevent's evhttp:
 * a call's state machine. The connection pool (slots, their connections,
 * building a client from its URL and options) is httpc_pool.c; the types
 * both share are in httpc_private.h.
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
 * A call. Each httpc_send takes a call object from a per-client free
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
 * may call httpc_send again, but must not free the client.
 *
 * Options: zero means default; retries < 0 and max_queue < 0 mean none
 * (from the environment, RETRIES=0 and MAX_QUEUE=0 mean none). */
#include "httpc_private.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "http.h"
#include "http_frame.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"

static void call_timer_cb(evutil_socket_t fd, short what, void *arg);
static void attempt_start(httpc_call *hc, httpc_slot *slot);

static void timer_arm(httpc_call *hc, unsigned long long delay_ms)
{
    struct timeval tv = { .tv_sec = (time_t)(delay_ms / 1000),
                          .tv_usec = (suseconds_t)((delay_ms % 1000) * 1000) };
    evtimer_add(&hc->timer, &tv);
}

static void timer_arm_until(httpc_call *hc, unsigned long long when_ms)
{
    unsigned long long now = httpc_now_ms();
    timer_arm(hc, when_ms > now ? when_ms - now : 0);
}

static uint64_t rng_next(httpc *c)
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

void httpc_set_auth(httpc *c, httpc_auth_fn fn, void *arg)
{
    c->auth = fn;
    c->auth_arg = arg;
}

const breaker *httpc_breaker(const httpc *c)
{
    return &c->breaker;
}

/* The bulkhead: calls waiting for a slot (queued, or admitted and waiting
 * for group commit, which will want a slot the moment the disk catches
 * up) beyond the idle slots may not exceed max_queue. */
static bool bulkhead_full(const httpc *c)
{
    int idle = c->n_idle_keep + c->n_idle_extra;
    return c->queued + c->deferred >= idle + c->opts.max_queue;
}

httpc_result httpc_refusal(const httpc *c, unsigned long long *retry_ms)
{
    unsigned long long ms = breaker_retry_in_ms(&c->breaker, httpc_now_ms());
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

/* Headers of a caller's list that are not sent as they are: those the
 * client writes itself or that describe one hop only (a proxied request's
 * copy of them must not be forwarded), Content-Type (written from the
 * call's), and X-Request-Id when the call has its own id. Every header of
 * every call passes here: the length is compared first. */
static bool header_dropped(const char *key, size_t len, bool has_rid)
{
#define NAME(s) { s, sizeof s - 1 }
    static const struct { const char *name; size_t len; } dropped[] = {
        NAME("Host"), NAME("Connection"), NAME("Content-Length"), NAME("Transfer-Encoding"),
        NAME("Keep-Alive"), NAME("Proxy-Connection"), NAME("TE"), NAME("Trailer"),
        NAME("Upgrade"), NAME("Expect"), NAME("Content-Type"),
    };
#undef NAME
    for (size_t i = 0; i < sizeof dropped / sizeof dropped[0]; i++)
        if (dropped[i].len == len && strcasecmp(key, dropped[i].name) == 0)
            return true;
    return has_rid && len == 12 && strcasecmp(key, "X-Request-Id") == 0;
}

static void export_outcome(httpc *c, httpc_call *hc, httpc_result result, int status,
                           unsigned long long elapsed_ms)
{
    /* Nearly every call ends like the one before it (ok, 200): its labels
     * are formatted, and its series looked up, again only when the outcome
     * differs (measured: the snprintf was 1.4k instructions per proxied
     * request, each lookup about 700). */
    if (result != c->outcome_result || status != c->outcome_status) {
        snprintf(c->outcome_labels, sizeof c->outcome_labels, "%s,result=\"%s\",status=\"%d\"",
                 c->labels, httpc_result_name(result), status);
        c->outcome_result = result;
        c->outcome_status = status;
        c->m_outcome = metrics_counter_series("carshare_upstream_requests_total",
                                              c->outcome_labels);
    }
    metrics_series_add(c->m_outcome, 1);
    if (hc->admitted)   /* refusals take no time and would skew the latency */
        metrics_series_observe(c->m_duration, (double)elapsed_ms / 1000.0);
}

/* ---- call objects ---- */

static httpc_call *call_alloc(httpc *c)
{
    httpc_call *hc = c->free_calls;
    if (hc) {
        c->free_calls = hc->next;
    } else {
        hc = mem_must(calloc(1, sizeof *hc));   /* mem.h: no half-made call */
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
    hc->malformed = false;
    hc->outcome = HTTPC_OK;
    hc->outcome_status = 0;
    return hc;
}

static void call_release(httpc_call *hc)
{
    httpc *c = hc->client;
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

/* Appends len bytes at *at, growing the buffer (keep more bytes free
 * after them, and always one: the buffer exists once this returned true);
 * false when out of memory. */
static bool call_put(httpc_call *hc, size_t *at, const void *p, size_t len, size_t keep)
{
    if (!call_reserve(hc, *at + len + keep + 1))
        return false;
    if (len)    /* p may be NULL then (no body) */
        memcpy(hc->mem + *at, p, len);
    *at += len;
    return true;
}

/* The content type a body goes with: the call's, else a Content-Type in
 * its headers, else JSON. */
static const char *call_content_type(const httpc_request *call)
{
    if (call->content_type)
        return call->content_type;
    const struct evkeyval *h;
    if (call->headers)
        TAILQ_FOREACH(h, call->headers, next)
            if (strcasecmp(h->key, "Content-Type") == 0)
                return h->value;
    return "application/json";
}

/* The caller's headers, as the "Name: value\r\n" lines the request will
 * carry (written at once by every attempt). A header that is not valid
 * (http_field_valid) is left out, unless the caller vouched for all of
 * them (httpc_request.headers_valid). */
static bool call_copy_headers(httpc_call *hc, const httpc_request *call, size_t *at)
{
    hc->hdr_off = *at;
    const struct evkeyval *h;
    if (call->headers) {
        TAILQ_FOREACH(h, call->headers, next) {
            size_t klen = strlen(h->key), vlen = strlen(h->value);
            if (header_dropped(h->key, klen, hc->has_rid) ||
                (!call->headers_valid && !http_field_valid(h->key, h->value)))
                continue;
            if (!call_reserve(hc, *at + klen + vlen + 4 + call->body_len + 1))
                return false;
            char *line = hc->mem + *at;
            memcpy(line, h->key, klen);
            memcpy(line + klen, ": ", 2);
            memcpy(line + klen + 2, h->value, vlen);
            memcpy(line + klen + 2 + vlen, "\r\n", 2);
            *at += klen + vlen + 4;
        }
    }
    hc->hdr_len = *at - hc->hdr_off;
    return true;
}

/* Copies what a retry needs into the call's own buffer: the uri, the
 * request id and the content type (each NUL-terminated, lengths kept), the
 * header lines and the body. */
static bool call_copy_request(httpc_call *hc, const httpc_request *call)
{
    httpc *c = hc->client;
    const char *uri = call->uri && *call->uri ? call->uri : "/";
    /* Only a body has a content type: no look for one without. */
    const char *ctype = call->body_len ? call_content_type(call) : "";
    hc->has_rid = call->request_id && *call->request_id;
    const char *rid = hc->has_rid ? call->request_id : "";
    size_t ulen = strlen(uri), rlen = strlen(rid), clen = strlen(ctype);
    size_t at = 0;

    hc->uri_off = at;
    hc->uri_len = c->prefix_len + ulen;
    if (!call_put(hc, &at, c->prefix, c->prefix_len, 0) || !call_put(hc, &at, uri, ulen + 1, 0))
        return false;
    hc->rid_off = at;
    hc->rid_len = rlen;
    if (!call_put(hc, &at, rid, rlen + 1, 0))
        return false;
    hc->ctype_off = at;
    hc->ctype_len = clen;
    if (!call_put(hc, &at, ctype, clen + 1, 0) || !call_copy_headers(hc, call, &at))
        return false;

    hc->body_off = at;
    hc->body_len = call->body ? call->body_len : 0;
    return call_put(hc, &at, call->body, hc->body_len, 1);
}

/* ---- finishing a call ---- */

static void call_finish(httpc_call *hc, httpc_result result, int status,
                        const httpc_slot *answer)
{
    assert(hc->phase != CALL_FREE);   /* a call completes once */
    httpc *c = hc->client;
    unsigned long long now = httpc_now_ms();
    httpc_response resp = {
        .result = result,
        .status = result == HTTPC_OK ? status : 0,
        .headers = NULL,
        .body = "",
        .body_len = 0,
        .elapsed_ms = now - hc->started_ms,
        .retry_after_ms = result == HTTPC_OPEN ? breaker_retry_in_ms(&c->breaker, now) : 0,
    };
    if (result == HTTPC_OK && answer) {
        resp.headers = &answer->headers;
        if (answer->body_len > 0) {     /* NUL-terminated by httpc_conn.c */
            resp.body = answer->body;
            resp.body_len = answer->body_len;
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
    httpc *c = hc->client;
    char uri[256];
    log_warn("upstream=%s req=%s method=%s uri=%s attempt=%d result=%s status=%d "
             "elapsed_ms=%llu msg=\"%s\"",
             c->name, hc->has_rid ? hc->mem + hc->rid_off : "-", hc->method_name,
             log_quote(uri, sizeof uri, hc->mem + hc->uri_off), hc->attempts,
             httpc_result_name(result), status, httpc_now_ms() - hc->started_ms, what);
}

/* ---- the wait queue ---- */

static void queue_push(httpc *c, httpc_call *hc)
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

static void queue_remove(httpc *c, httpc_call *hc)
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
    httpc *c = hc->client;
    int wait_ms = c->opts.max_queue_wait_ms < hc->timeout_ms ? c->opts.max_queue_wait_ms
                                                             : hc->timeout_ms;
    hc->phase = CALL_QUEUED;
    hc->queue_deadline_ms = hc->attempts == 0 ? httpc_now_ms() + (unsigned long long)wait_ms
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
    httpc *c = hc->client;
    httpc_result result = hc->attempts == 0 ? HTTPC_BUSY : HTTPC_TIMEOUT;
    queue_remove(c, hc);
    log_failure(hc, result, 0, hc->attempts == 0
                ? "no connection became free within max_queue_wait_ms: not sent"
                : "no connection became free for the retry within the timeout");
    call_finish(hc, result, 0, NULL);
}

/* Hands a slot that just became free to the first queued call whose budget
 * is not spent, or puts it back on its idle stack. */
static void slot_release(httpc *c, httpc_slot *slot)
{
    unsigned long long now = httpc_now_ms();
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

/* ---- attempts ---- */

static bool answer_is_success(const httpc *c, httpc_result result, int status)
{
    return result == HTTPC_OK && (status < 500 || c->opts.breaker_ignores_5xx);
}

static bool attempt_should_retry(httpc_call *hc, httpc_result result, int status,
                                 unsigned long long now, unsigned long long *delay_ms)
{
    httpc *c = hc->client;
    if (!hc->idempotent || hc->attempts > c->opts.retries)
        return false;
    /* a malformed or oversized answer would only come back the same */
    bool malformed = hc->malformed;
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
 * complete the call. answer holds it for HTTPC_OK (valid until we return). */
static void attempt_done(httpc_call *hc, httpc_result result, int status,
                         const httpc_slot *answer)
{
    httpc *c = hc->client;
    httpc_slot *slot = hc->slot;
    unsigned long long now = httpc_now_ms();
    unsigned long long delay;

    evtimer_del(&hc->timer);
    hc->slot = NULL;
    slot->call = NULL;
    c->inflight--;
    httpc_export_inflight(c);

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
    call_finish(hc, result, status, answer);
}

/* From httpc_conn.c: the attempt on slot ended, with an answer (status)
 * or without. */
void httpc_attempt_end(httpc_slot *slot, int status, bool malformed)
{
    httpc_call *hc = slot->call;
    if (!hc)
        return;
    httpc_result result;
    if (status > 0)
        result = HTTPC_OK;
    else if (hc->fresh && !slot->reached)
        result = HTTPC_CONNECT;
    else
        result = HTTPC_BROKEN;
    hc->malformed = malformed;
    if (hc->starting) {
        /* failed inside attempt_start: finish from the loop */
        hc->outcome = result;
        hc->outcome_status = status;
        hc->phase = CALL_DEFERRED;
        return;
    }
    attempt_done(hc, result, status, status > 0 ? slot : NULL);
}

/* From httpc_conn.c: the slot's new connection is established. The call
 * on it is past its connect phase: its timer now runs to the deadline. */
void httpc_attempt_connected(httpc_slot *slot)
{
    httpc_call *hc = slot->call;
    if (!hc || hc->phase != CALL_CONNECTING)
        return;
    hc->phase = CALL_WIRE;
    timer_arm_until(hc, hc->deadline_ms);
}

/* The request, built in one buffer and added to the output at once. */
static void attempt_write_request(httpc_call *hc, httpc_slot *slot)
{
    httpc *c = hc->client;
    http_head_buf b;
    b.out = bufferevent_get_output(slot->bev);
    b.n = 0;
    http_head_put(&b, hc->method_name, strlen(hc->method_name));
    HTTP_HEAD_LITERAL(&b, " ");
    http_head_put(&b, hc->mem + hc->uri_off, hc->uri_len);
    HTTP_HEAD_LITERAL(&b, " HTTP/1.1\r\nHost: ");
    http_head_put(&b, c->host_header, c->host_header_len);
    /* HTTP/1.1 keeps a connection open unless a side says close (RFC 9112
     * 9.3): a pooled slot says nothing, one beyond the pool says close. A
     * "Connection: keep-alive" was one more header for every upstream to
     * parse (bench-hello, on evhttp: ~1.5 us of its CPU per request went to
     * the gateway's extra headers, measured against nginx's). */
    HTTP_HEAD_LITERAL(&b, "\r\n");
    if (!slot->keep_alive)
        HTTP_HEAD_LITERAL(&b, "Connection: close\r\n");
    if (hc->has_rid) {
        HTTP_HEAD_LITERAL(&b, "X-Request-Id: ");
        http_head_put(&b, hc->mem + hc->rid_off, hc->rid_len);
        HTTP_HEAD_LITERAL(&b, "\r\n");
    }
    const char *credentials = c->auth ? c->auth(c->auth_arg) : NULL;
    if (credentials && http_field_valid("Authorization", credentials))
        http_head_field(&b, "Authorization", credentials);
    /* The caller's, checked when copied: no injection. */
    http_head_put(&b, hc->mem + hc->hdr_off, hc->hdr_len);

    bool body_method = hc->method == EVHTTP_REQ_POST || hc->method == EVHTTP_REQ_PUT ||
                       hc->method == EVHTTP_REQ_PATCH;
    if (hc->body_len > 0 || body_method) {
        char length[24];
        snprintf(length, sizeof length, "%zu", hc->body_len);
        http_head_field(&b, "Content-Length", length);
        if (hc->body_len > 0) {
            HTTP_HEAD_LITERAL(&b, "Content-Type: ");
            http_head_put(&b, hc->mem + hc->ctype_off, hc->ctype_len);
            HTTP_HEAD_LITERAL(&b, "\r\n");
        }
    }
    HTTP_HEAD_LITERAL(&b, "\r\n");
    http_head_end(&b);
    if (hc->body_len > 0)
        evbuffer_add(b.out, hc->mem + hc->body_off, hc->body_len);
}

/* Puts one attempt of an admitted call on the wire, through `slot`. */
static void attempt_start(httpc_call *hc, httpc_slot *slot)
{
    httpc *c = hc->client;
    unsigned long long now = httpc_now_ms();

    if (hc->attempts == 0)     /* the budget starts on the wire, not in our queue */
        hc->deadline_ms = now + (unsigned long long)hc->timeout_ms;
    hc->attempts++;
    hc->slot = slot;
    hc->malformed = false;
    slot->call = hc;
    c->inflight++;
    httpc_export_inflight(c);

    /* A call that cannot be retried always checks; others only when the
     * connection idled long enough for a server to have given up on it. */
    int fd = httpc_slot_fd(slot);
    if (fd >= 0 && (((!hc->idempotent || now - slot->idle_since_ms >= HTTPC_STALE_MS) &&
                     !httpc_idle_socket_alive(fd)) || now - slot->idle_since_ms >= HTTPC_IDLE_MS))
        httpc_slot_drop_idle(slot);
    hc->fresh = slot->bev == NULL;
    hc->starting = true;
    if (hc->fresh && !httpc_slot_connect(slot)) {
        hc->starting = false;
        hc->outcome = HTTPC_CONNECT;
        hc->phase = CALL_DEFERRED;
        log_warn("upstream=%s msg=\"cannot start a connection\" host=%s", c->name, c->host);
        timer_arm(hc, 0);
        return;
    }

    hc->phase = CALL_WIRE;
    httpc_slot_expect_answer(slot, hc->method == EVHTTP_REQ_HEAD);
    attempt_write_request(hc, slot);
    /* A connected socket gets the request written at once (http_write_now);
     * a new one when it connects (its TCP_NODELAY is set then). */
    if (!hc->fresh)
        http_write_now(slot->bev);
    hc->starting = false;
    if (hc->phase == CALL_DEFERRED) {
        timer_arm(hc, 0);
        return;
    }
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
    httpc_slot *slot = httpc_slot_acquire(hc->client);
    if (slot)
        attempt_start(hc, slot);
    else
        call_enqueue(hc);
}

static void dispatch_when_durable(void *arg)
{
    httpc_call *hc = arg;
    assert(hc->phase == CALL_DURABLE);
    hc->client->deferred--;
    call_dispatch(hc);
}

static void call_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    httpc_call *hc = arg;
    httpc *c = hc->client;
    unsigned long long now = httpc_now_ms();

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
        if (now < hc->deadline_ms &&
            (hc->slot->reached || httpc_socket_connected(httpc_slot_fd(hc->slot)))) {
            hc->slot->reached = true;
            hc->phase = CALL_WIRE;
            timer_arm_until(hc, hc->deadline_ms);
            break;
        }
        httpc_slot_kill(hc->slot);
        attempt_done(hc, now < hc->deadline_ms ? HTTPC_CONNECT : HTTPC_TIMEOUT, 0, NULL);
        break;
    case CALL_WIRE:
        httpc_slot_kill(hc->slot);
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

static void deliver_now(httpc_cb cb, void *arg, httpc_result result)
{
    httpc_response resp = { .result = result, .body = "" };
    if (cb)
        cb(&resp, arg);
}

int httpc_send(httpc *c, const httpc_request *call, httpc_cb cb, void *arg)
{
    if (c->closing) {
        /* Sent from a callback that httpc_free runs: the client and maybe
         * the loop are going, nothing can complete later. The one
         * synchronous completion (httpc.h). */
        deliver_now(cb, arg, HTTPC_BROKEN);
        return 0;
    }
    httpc_call *hc = call_alloc(c);
    hc->cb = cb;
    hc->cb_arg = arg;
    hc->idempotent = call->idempotent;
    hc->started_ms = httpc_now_ms();
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
    /* Group commit (http_defer): a call may act on what the caller just
     * committed (payment charges for order's reservation), so it leaves
     * only once that is on disk. Retries need not wait again. */
    hc->phase = CALL_DURABLE;
    if (http_defer(dispatch_when_durable, hc))
        c->deferred++;
    else
        call_dispatch(hc);
    return 0;
}

int httpc_json(httpc *c, const char *method, const char *uri,
                     const char *request_id, const char *json_body, bool idempotent,
                     httpc_cb cb, void *arg)
{
    httpc_request call = {
        .method = method,
        .uri = uri,
        .request_id = request_id,
        .content_type = "application/json",
        .body = json_body,
        .body_len = json_body ? strlen(json_body) : 0,
        .idempotent = idempotent,
    };
    return httpc_send(c, &call, cb, arg);
}

void httpc_free(httpc *c)
{
    if (!c)
        return;
    c->closing = true;
    /* Connections first: their requests go without calling us back. */
    for (int i = 0; c->slots && i < c->nslots; i++)
        httpc_slot_kill(&c->slots[i]);
    /* Then every call still outstanding ends, as promised, exactly once. */
    for (httpc_call *hc = c->all_calls; hc; hc = hc->all_next) {
        if (hc->phase == CALL_FREE)
            continue;
        evtimer_del(&hc->timer);
        if (hc->phase == CALL_QUEUED)
            queue_remove(c, hc);
        if (hc->phase == CALL_DURABLE) {
            http_defer_cancel(dispatch_when_durable, hc);
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
    httpc_pool_free(c);
}
