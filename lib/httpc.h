/* httpc.h: the non-blocking HTTP client, on the same event loop as the server.
 *
 * One httpc per upstream (a base URL such as http://127.0.0.1:8084).
 * It keeps a pool of keep-alive connections, and guards the upstream with:
 *  - a connect timeout and a total timeout per call, which runs from when
 *    the call is put on the wire (not from httpc_send);
 *  - a bulkhead: at most `max_inflight` calls on the wire and `max_queue`
 *    waiting for a connection; beyond that a call is refused at once, and a
 *    call that waited max_queue_wait_ms without getting a connection ends
 *    HTTPC_BUSY (it was never sent: answering 503 for it is safe);
 *  - a circuit breaker (breaker.h) named after the client: transport
 *    failures, timeouts and 5xx answers count as failures (5xx answers do
 *    not with breaker_ignores_5xx);
 *  - retries with exponential backoff and full jitter, only for calls the
 *    caller marks idempotent, only on transport failures and 502/503/504,
 *    and never while the breaker is open (so an outage is not multiplied).
 *
 * Completion is always reported through the callback, from the loop, never
 * from inside httpc_send: a refused call (breaker open, bulkhead full)
 * completes on the next loop turn with status 0 and its reason. The one
 * exception: a call sent from a callback that httpc_free is running (the
 * client is going) completes at once, inside httpc_send, HTTPC_BROKEN. */
#ifndef CARSHARE_HTTPC_H
#define CARSHARE_HTTPC_H

#include <stdbool.h>
#include <stddef.h>
#include "breaker.h"

struct event_base;
struct evkeyvalq;

typedef struct httpc httpc;

typedef struct httpc_opts {
    int connect_timeout_ms;   /* default 1000 */
    int timeout_ms;           /* default 5000: from putting the call on the wire
                                 to the complete answer (retries included) */
    int pool_size;            /* keep-alive connections, default 16 */
    int max_inflight;         /* default = pool_size */
    int max_queue;            /* default 4 * pool_size */
    int retries;              /* extra attempts for idempotent calls, default 2 */
    int backoff_ms;           /* first backoff, default 50 (doubles, full jitter) */
    breaker_config breaker;   /* zero = breaker defaults */
    int max_queue_wait_ms;    /* default = timeout_ms: longest wait for a
                                 connection before HTTPC_BUSY (and never longer
                                 than the call's own timeout) */
    /* false (default): a 5xx answer is a failure for the breaker (an
     * upstream answering 503 is overloaded: back off). true: any answer
     * is a success and only transport failures and timeouts count; for a
     * proxy, whose upstream's fast 5xx are its own deliberate answers
     * (e.g. order's 503 when payment hangs) and must not close every route
     * of that upstream. */
    bool breaker_ignores_5xx;
} httpc_opts;

typedef enum {
    HTTPC_OK = 0,        /* an HTTP answer arrived (any status) */
    HTTPC_CONNECT,       /* could not connect (refused, unreachable, connect timeout) */
    HTTPC_TIMEOUT,       /* no complete answer within timeout_ms of sending */
    HTTPC_BROKEN,        /* connection lost or malformed answer */
    HTTPC_OPEN,          /* refused: circuit breaker open */
    HTTPC_BUSY,          /* refused: bulkhead full, or no connection within
                            max_queue_wait_ms (never sent) */
} httpc_result;

typedef struct httpc_response {
    httpc_result result;
    int status;                        /* HTTP status, 0 unless HTTPC_OK */
    const struct evkeyvalq *headers;   /* answer headers, NULL unless HTTPC_OK */
    const char *body;                  /* NUL-terminated, "" when none */
    size_t body_len;
    unsigned long long elapsed_ms;
    unsigned long long retry_after_ms; /* for HTTPC_OPEN: breaker cool-down left */
} httpc_response;

/* The response and everything in it is valid only during the callback. */
typedef void (*httpc_cb)(const httpc_response *resp, void *arg);

typedef struct httpc_request {
    const char *method;                 /* "GET", "POST", ... */
    const char *uri;                    /* path and query, e.g. "/payments?x=1" */
    const char *request_id;             /* sent as X-Request-Id (may be NULL) */
    const struct evkeyvalq *headers;    /* extra headers to send (may be NULL); each
                                           one not valid (http_field_valid) is left out */
    /* true: the caller vouches that every header of `headers` is valid (its
     * name a token, its value field bytes only), so httpc does not check
     * them again: the gateway's forwarded headers, which the server's frame
     * check accepted (lib/http_frame.c, the same rules) and its own
     * X-Forwarded-* values. Never for headers of any other origin. */
    bool headers_valid;
    const char *content_type;           /* for body; NULL = application/json */
    const void *body;
    size_t body_len;
    bool idempotent;                    /* may be retried */
    int timeout_ms;                     /* 0 = client default */
} httpc_request;

/* name labels logs and metrics ("payment"). base_url is http://host:port. */
httpc *httpc_new(struct event_base *base, const char *name,
                             const char *base_url, const httpc_opts *opts);
void httpc_free(httpc *c);

/* Always completes through cb exactly once, never inside this call (but
 * see the exception above, while the client is being freed). Returns 0. Everything `call`
 * points to (uri, headers, body) is copied before it returns, so the caller
 * may reuse or free it at once (retries use the copy). */
int httpc_send(httpc *c, const httpc_request *call, httpc_cb cb, void *arg);

/* Convenience: JSON body (may be NULL), not idempotent unless said. */
int httpc_json(httpc *c, const char *method, const char *uri,
                     const char *request_id, const char *json_body, bool idempotent,
                     httpc_cb cb, void *arg);

/* Credentials: fn(arg) is asked for the Authorization header's value
 * ("Bearer ...") of every attempt -- retries included, so a token renewed
 * meanwhile is used -- and NULL sends none. Order's payment clients send
 * order's own service token this way (token_minter, lib/token.h). */
typedef const char *(*httpc_auth_fn)(void *arg);
void httpc_set_auth(httpc *c, httpc_auth_fn fn, void *arg);

const breaker *httpc_breaker(const httpc *c);

/* Would a call sent now be refused at once, and for how long? HTTPC_OK
 * when it would be admitted; HTTPC_OPEN while the breaker refuses (*retry_ms:
 * its cool-down left, or a short hint while a half-open trial is out);
 * HTTPC_BUSY when the bulkhead is full (*retry_ms: a 1 s hint). Reads
 * only: it reserves nothing, so a caller that asks before writing anything
 * (order, before reserving cars) may still be refused by the send. */
httpc_result httpc_refusal(const httpc *c, unsigned long long *retry_ms);
const char *httpc_result_name(httpc_result r);

/* Reads httpc_opts from the environment with the given prefix:
 * <PREFIX>_CONNECT_TIMEOUT_MS, _TIMEOUT_MS, _POOL_SIZE, _MAX_INFLIGHT,
 * _MAX_QUEUE, _MAX_QUEUE_WAIT_MS, _RETRIES, _BACKOFF_MS, _BREAKER_FAILURES, _BREAKER_RATIO_PCT,
 * _BREAKER_MIN_CALLS, _BREAKER_WINDOW_MS, _BREAKER_OPEN_MS. */
void httpc_opts_from_env(httpc_opts *o, const char *prefix);

#endif
