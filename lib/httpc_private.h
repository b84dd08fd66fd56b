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
    httpc *client;
    struct evhttp_connection *evcon;   /* NULL until first use or after a kill */
    httpc_call *call;                  /* the call on the wire, or NULL */
    unsigned long long idle_since_ms;
    int evcon_timeout_ms;
    bool keep_alive;
    bool reached;                      /* the connection got established */
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

struct httpc {
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

/* ---- httpc_pool.c ---- */

/* An idle slot, warmest first, or NULL when all are busy. */
httpc_slot *httpc_slot_acquire(httpc *c);
/* Gives the slot a new evhttp connection (not connected yet). */
bool httpc_slot_connect(httpc_slot *slot);
/* Drops the slot's connection with whatever request is on it, at once. */
void httpc_slot_kill(httpc_slot *slot);
/* Drops an idle connection, freeing it on the next loop turn. */
void httpc_slot_drop_idle(httpc_slot *slot);
int httpc_slot_fd(const httpc_slot *slot);
void httpc_slot_set_nodelay(const httpc_slot *slot);
bool httpc_idle_socket_alive(int fd);
bool httpc_socket_connected(int fd);
void httpc_export_inflight(httpc *c);
/* Frees the connections, the resolver and the client (no call left). */
void httpc_pool_free(httpc *c);

#endif
