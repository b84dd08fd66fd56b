/* http_private.h: what the files of the HTTP server share (http.h is
 * the public side). Not for services.
 *
 *   http.c         the server's lifecycle (new, listen, drain, free) and
 *                  dispatch: every request from evhttp to its handler
 *   http_route.c   the route trie: registration and matching
 *   http_conn.c    connections: adoption, the read deadline, closing
 *   http_answer.c  the answer path: send, hold for group commit, errors,
 *                  Date, the request timeout, the http_reply_* functions
 *   http_req.c     a request's memory (pool, arena) and what handlers
 *                  read of it (the http_req_* accessors)
 *
 * Ownership. The server owns its route trie, connections (http_conn, from
 * adoption until libevent's close callback) and its pool of http_req; an
 * http_req is owned by the server from evhttp's callback until it is
 * released (answered AND replied AND its handler returned); everything a
 * request derives lives in its arena and dies with it. */
#ifndef CARSHARE_HTTP_PRIVATE_H
#define CARSHARE_HTTP_PRIVATE_H

#include "http.h"
#include "http_frame.h"

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#define REQ_ARENA_SIZE 4096    /* per-request scratch: fits typical requests */
#define REQ_POOL_MAX 1024      /* idle http_req kept for reuse */
#define MAX_SEGMENTS 32        /* deeper paths can only reach the fallback */
#define MAX_PARAMS 8
#define MAX_LISTENERS 4
#define REQUEST_ID_MAX 128
#define UNMATCHED_ROUTE "unmatched"

#define METRIC_REQUESTS "carshare_http_requests_total"
#define METRIC_DURATION "carshare_http_request_duration_seconds"

enum { SLOT_GET, SLOT_POST, SLOT_PUT, SLOT_PATCH, SLOT_DELETE, ROUTE_SLOTS };
static const char *const slot_names[ROUTE_SLOTS] = {"GET", "POST", "PUT", "PATCH", "DELETE"};

typedef struct route {
    http_handler handler;
    void *arg;
    unsigned roles;         /* who may call it: HTTP_OPEN, or role bits for the guard */
    char *pattern;          /* as registered: http_req_route() */
    char *label;            /* pattern escaped for a Prometheus label */
    int nparams;
    char *param_names[MAX_PARAMS];
} route;

typedef struct node {
    char *literal;          /* segment text; NULL for a {param} node */
    size_t literal_len;
    struct node **children; /* literal children */
    size_t nchildren;
    struct node *param_child;
    route *routes[ROUTE_SLOTS];
    bool has_routes;
    char allow[64];         /* "GET, HEAD, POST, OPTIONS" */
} node;

typedef struct spill {
    struct spill *next;
    max_align_t data[];
} spill;

typedef struct {
    const char *name, *value;
} query_pair;

/* One accepted connection, from its adoption (just after accept) until
 * libevent frees it (its close callback). */
typedef struct http_conn {
    http_server *server;
    struct evhttp_connection *evcon;   /* NULL until adopted */
    struct bufferevent *bev;
    int fd;
    http_req *waiting;             /* its request whose handler answers later */
    bool unflushed;                /* an answer handed to evhttp, not written out */
    struct evhttp_request *held;   /* its answer, waiting for the disk (hold_answer) */
    int held_status;
    struct event *deadline;        /* the next request must be in by then */
    http_frame frame;              /* RFC 9112 framing of what it sent (http_frame.h) */
    bool refused;                  /* its bytes broke the framing: being closed */
    bool fresh;                    /* accepted, no request yet (a drain waits for it) */
    bool rewriting;                /* putting bytes back without chunk extensions */
    struct http_conn *prev, *next; /* server's adopted list, or its unadopted list */
} http_conn;

struct http_req {
    http_server *server;           /* NULL once the server is freed (orphan) */
    struct evhttp_request *ev;     /* NULL once answered, or freed by libevent */
    http_conn *conn;               /* its connection while the answer is pending */
    http_req *prev, *next;         /* server's live list; `next` links the pool */
    struct event *timer;           /* request timeout, armed only when async */

    enum evhttp_cmd_type cmd;
    const char *method;
    bool head;                     /* HEAD: answer headers only */
    bool in_handler, replied, answered;
    bool timer_armed;
    unsigned long long t0_ns;

    const char *uri, *path, *query_raw, *id, *peer, *base_url;
    const char *route_pattern;     /* http_req_route */
    const char *route_label;       /* metrics label */
    int nparams;
    const char *param_names[MAX_PARAMS];
    const char *param_values[MAX_PARAMS];
    bool query_parsed;
    int nquery;
    query_pair *query;
    const char *body;
    size_t body_len;
    unsigned caller_role;          /* set by the guard: http_req_caller_role */
    char caller[HTTP_CALLER_MAX + 1];

    size_t arena_used;
    spill *spills;
    _Alignas(max_align_t) char arena[REQ_ARENA_SIZE];
};

struct http_server {
    struct event_base *base;
    struct evhttp *evhttp;
    node *root;

    http_handler fallback;
    void *fallback_arg;
    char *fallback_label, *fallback_metric_label;
    http_guard guard;              /* checks the caller of guarded routes (lib/auth.c) */
    void *guard_arg;

    struct evhttp_bound_socket *bound[MAX_LISTENERS];
    int nbound;
    char listen_host[64];
    int listen_port;

    size_t max_body, max_headers;
    long request_timeout_ms;
    struct timeval request_timeout;
    const struct timeval *request_timeout_tv;   /* common timeout, or &request_timeout */
    struct timeval read_deadline;               /* HTTP_IDLE_TIMEOUT_S */
    const struct timeval *read_deadline_tv;     /* common timeout, or &read_deadline */

    struct event *adopt_event;     /* adopts the connections accepted this turn */
    http_conn *unadopted, *conns;
    long nconns, max_conns;        /* adopted connections; HTTP_MAX_CONNECTIONS */
    struct event *accept_resume;   /* re-enables accepting after EMFILE (http.c) */
    long accept_backoff_ms;        /* 0 while accept() works */
    http_conn **conn_by_fd;        /* adopted connections by socket */
    size_t conn_by_fd_cap;

    int inflight;                  /* received, not answered yet */
    int unflushed;                 /* answered, not yet written out */
    bool draining;                 /* answers say Connection: close */
    bool period_over;              /* the drain period passed, listeners closed: it may end */
    struct event *period_timer;    /* ends the drain period */
    int fresh;                     /* connections with no request yet (http_conn.fresh) */
    bool drain_grace_over;         /* HTTP_DRAIN_NEW_CONN_MS passed: fresh ones do not count */
    struct event *drain_grace;
    void (*drain_done)(void *arg);
    void *drain_arg;
    struct event *drain_event;

    http_req *live;                /* every request not released yet */
    http_req *pool;
    size_t pool_count;

    char *public_base_url;         /* links' base: http_server_set_public_base_url */
    struct evkeyvalq answer_headers;   /* added to every answer: http_server_add_answer_header */
    http_connection_factory make_bev;  /* NULL: plain sockets; else e.g. TLS (the gateway's) */
    void *make_bev_arg;
};

typedef struct segments {
    int count;
    bool too_deep;
    const char *text[MAX_SEGMENTS];
    size_t len[MAX_SEGMENTS];
} segments;

/* Where a request goes: a route's handler, the fallback, or a refusal. */
typedef struct destination {
    const node *node;       /* NULL: no pattern matches the path */
    const route *route;     /* NULL: the node has no handler for the method */
    const char *captured[MAX_PARAMS];
} destination;

static inline unsigned long long http_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

/* ---- http.c ---- */

/* Ends a drain once nothing is in flight or unwritten. */
void http_drain_check(http_server *s);

/* ---- http_route.c ---- */

/* Matches the path and names the request after what it matched. */
void http_route_resolve(http_server *s, http_req *r, const char *raw_path, destination *d);
void http_route_free(node *n);
const char *http_method_name(enum evhttp_cmd_type cmd);

/* ---- http_conn.c ---- */

size_t http_write_error_body(struct evbuffer *out, int status, const char *message,
                             const char *path);
struct bufferevent *http_conn_new_bev(struct event_base *base, void *arg);
void http_conn_adopt(evutil_socket_t fd, short what, void *arg);
/* The connection a request came on (adopting it if needed), or NULL. */
http_conn *http_conn_of(http_server *s, struct evhttp_request *ev);
/* The evhttp request to answer on, or NULL when the client is gone. */
struct evhttp_request *http_req_client(http_req *r);

/* ---- http_answer.c ---- */

/* Sends the answer whose body (body_len bytes) is already in ev's output
 * buffer; ev NULL means the client is gone. */
void http_send_answer(http_req *r, struct evhttp_request *ev, int status,
                      const char *content_type, size_t body_len);
void http_send_held_answer(void *arg);
/* The server's own refusals (404, 405, 413, ...), before any handler. */
void http_refuse(http_req *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void http_on_request_timeout(evutil_socket_t fd, short what, void *arg);

/* ---- http_req.c ---- */

void *http_req_alloc(http_req *r, size_t n);
char *http_req_strndup(http_req *r, const char *s, size_t n);
char *http_req_strdup(http_req *r, const char *s);
size_t http_percent_decode(char *out, const char *in, size_t len, bool plus_is_space);
http_req *http_req_acquire(http_server *s);
void http_req_release(http_req *r);
void http_req_destroy(http_req *r);
/* Fills what a handler may read, copied into the arena. */
void http_req_begin(http_req *r, struct evhttp_request *ev, const char **raw_path);
/* The server is going: r keeps copies and waits for its reply alone. */
void http_req_orphan(http_req *r);

#endif
