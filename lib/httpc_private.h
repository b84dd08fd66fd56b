/* httpc_private.h: what the two files of the HTTP client share (httpc.h
 * is the public side). Not for services.
 *
 *   httpc.c       a call's state machine: admission (breaker, bulkhead,
 *                 group commit), the wait queue, attempts, retries,
 *                 timeouts, completion
 *   httpc_pool.c  the connection pool: slots and their evhttp
 *                 connections, stale-connection checks, the client's
 *                 construction from a base URL and options
 *
 * A client owns its slots, its call objects (reused through a free list)
 * and each call's copy of the request. */
#ifndef CARSHARE_HTTPC_PRIVATE_H
#define CARSHARE_HTTPC_PRIVATE_H

#include "httpc.h"

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

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

/* An answer's head, as httpc_parse_head reads it. */
typedef struct httpc_head {
    int status, minor;
    long long length;                  /* Content-Length, -1 when none */
    bool chunked, close, keep_alive;   /* Transfer-Encoding; Connection's tokens */
    int count;                         /* header fields */
} httpc_head;

struct httpc_slot {
    httpc *client;
    struct bufferevent *bev;           /* NULL until first use or after a kill */
    struct event *readable;            /* reads its socket once connected (httpc_conn.c) */
    httpc_call *call;                  /* the call on the wire, or NULL */
    unsigned long long idle_since_ms;
    bool keep_alive;
    bool reached;                      /* the connection got established */
    bool connecting_now;               /* inside httpc_slot_connect */
    bool connect_failed;               /* ... and it failed there */

    /* the answer being read (httpc_conn.c) */
    int rstate;
    bool head_request;                 /* no body follows the head */
    bool in_trailers;
    size_t scanned;                    /* input searched for the head's end so far */
    httpc_head answer;
    struct evkeyvalq headers;          /* the answer's fields: kv[0..answer.count) */
    struct evkeyval *kv;
    int kv_cap;
    char *head;                        /* the answer's head, split in place */
    size_t head_cap;
    char *body;                        /* NUL-terminated */
    size_t body_len, body_cap;
};

struct httpc_call {
    httpc *client;
    httpc_cb cb;
    void *cb_arg;
    call_phase phase;
    struct event timer;
    httpc_call *prev, *next;           /* the wait queue, or the free list */
    httpc_call *all_next;              /* every call object, for httpc_free */
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
    bool starting;                     /* inside attempt_start */
    bool fresh;                        /* it opened a new connection */
    bool malformed;                    /* the answer broke HTTP: not retried */
    httpc_result outcome;              /* for PENDING and DEFERRED */
    int outcome_status;

    /* the request, copied: uri, request id, content type (each
     * NUL-terminated), the headers' lines ("Name: value\r\n"), body */
    char *mem;
    size_t mem_cap;
    size_t uri_off, rid_off, ctype_off, hdr_off, body_off;
    size_t uri_len, rid_len, ctype_len, hdr_len, body_len;
    bool has_rid;
};

struct httpc {
    struct event_base *base;
    char name[64];
    char labels[96];                   /* upstream="name" */
    /* The labels of the last outcome exported (see export_outcome). */
    char outcome_labels[160];
    httpc_result outcome_result;
    int outcome_status;                /* -1: none yet */
    struct metrics_series *m_outcome;  /* that outcome's counter */
    struct metrics_series *m_inflight, *m_duration;
    char *host;                        /* for connecting (no IPv6 brackets) */
    struct evdns_base *dns;            /* resolves host; NULL when it is an address */
    char *host_header;
    size_t host_header_len;
    char *prefix;                      /* base URL path, no trailing slash */
    size_t prefix_len;
    int port;
    int family;
    httpc_opts opts;             /* resolved: no zero fields left */
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
    httpc_auth_fn auth;                /* Authorization of every attempt, or NULL */
    void *auth_arg;
};

static inline unsigned long long httpc_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000ULL + (unsigned long long)ts.tv_nsec / 1000000ULL;
}

/* ---- httpc.c ---- */

/* The attempt on slot ended: an answer (status > 0, read into the slot),
 * or a failure (status 0; malformed: the answer broke HTTP). */
void httpc_attempt_end(httpc_slot *slot, int status, bool malformed);
/* The slot's new connection is established (its connect phase is over). */
void httpc_attempt_connected(httpc_slot *slot);

/* ---- httpc_conn.c ---- */

/* Gives the slot a new connection (connecting). False when it cannot. */
bool httpc_slot_connect(httpc_slot *slot);
/* The request is in the output: read its answer. */
void httpc_slot_expect_answer(httpc_slot *slot, bool head_request);
/* Drops the slot's connection with whatever request is on it, at once. */
void httpc_slot_kill(httpc_slot *slot);
/* Drops an idle connection. */
void httpc_slot_drop_idle(httpc_slot *slot);
int httpc_slot_fd(const httpc_slot *slot);
void httpc_slot_free_buffers(httpc_slot *slot);
/* Checks an answer's head (NUL-terminated, ending with its empty line)
 * and splits it in place: fields into kv (at most kv_max). Pure: the fuzz
 * target tests/fuzz/fuzz_httpc_head.c drives it. */
struct evkeyval;
bool httpc_parse_head(char *head, httpc_head *h, struct evkeyval *kv, int kv_max);

/* ---- httpc_pool.c ---- */

/* An idle slot, warmest first, or NULL when all are busy. */
httpc_slot *httpc_slot_acquire(httpc *c);
void httpc_slot_set_nodelay(const httpc_slot *slot);
bool httpc_idle_socket_alive(int fd);
bool httpc_socket_connected(int fd);
void httpc_export_inflight(httpc *c);
/* Frees the connections, the resolver and the client (no call left). */
void httpc_pool_free(httpc *c);

#endif
