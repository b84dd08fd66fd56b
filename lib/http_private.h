/* http_private.h: what the files of the HTTP server share (http.h is
 * the public side). Not for services.
 *
 *   http.c         the server's lifecycle (new, listen, drain, free) and
 *                  dispatch: every request from its connection to its handler
 *   http_route.c   the route trie: registration and matching
 *   http_conn.c    connections: adoption, the read deadline, closing
 *   http_answer.c  the answer path: send, hold for group commit, errors,
 *                  Date, the request timeout, the http_reply_* functions
 *   http_req.c     a request's memory (pool, arena) and what handlers
 *                  read of it (the http_req_* accessors)
 *
 * Ownership. The server owns its route trie, connections (http_conn, from
 * adoption until libevent's close callback) and its pool of http_req; an
 * http_req is owned by the server from its arrival until it is
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
#include <event2/http.h>    /* enum evhttp_cmd_type only */

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

/* A request's headers (http_header, http.h), in its arena: read ones point
 * into its copy of the head, set ones are copied there; in order. */
typedef struct http_header_list {
    http_header *first, **tail;
    int count;
} http_header_list;

/* One accepted connection, from accept until it is closed (http_conn.c). */
typedef struct http_conn {
    http_server *server;
    struct bufferevent *bev;
    int fd;
    char peer[64];                 /* the client's address, for logs and X-Forwarded-For */
    http_req *waiting;             /* its request being handled (one at a time) */
    bool busy;                     /* a request read and not yet answered and written out */
    bool unflushed;                /* an answer queued, not written out */
    bool close_after;              /* close once the answer is written */
    bool closing;                  /* being closed: nothing more is read or sent */
    bool continued;                /* 100 Continue sent for the current request */
    bool processing;               /* inside conn_process: no re-entry */
    bool peer_closed;              /* EOF while a request was handled: close after its answer */
    bool refused;                  /* its bytes broke the framing: being answered and closed */
    struct evbuffer *held;         /* its answer, waiting for the disk (hold_answer) */
    struct event *deadline;        /* the next request must be in by then */
    bool deadline_armed;           /* its timer is pending (it may be early: on_deadline) */
    unsigned long long ready_ns;   /* when it became ready for its next request */
    struct event *readable;        /* plain sockets: reads the socket (http_conn.c); NULL: TLS */
    bool read_paused;              /* a whole request's worth is unread: not reading meanwhile */
    http_frame frame;              /* RFC 9112 framing of what it sent (http_frame.h) */
    size_t fed;                    /* input bytes the frame has seen (of the current request) */
    bool fresh;                    /* accepted, no request yet (a drain waits for it) */
    struct http_conn *prev, *next; /* the server's list */
} http_conn;

struct http_req {
    http_server *server;           /* NULL once the server is freed (orphan) */
    http_conn *conn;               /* its connection while the answer is pending */
    http_req *prev, *next;         /* server's live list; `next` links the pool */
    struct event *timer;           /* request timeout, armed only when async */

    enum evhttp_cmd_type cmd;
    const char *method;
    bool head;                     /* HEAD: answer headers only */
    bool in_handler, replied, answered;
    bool timer_armed;
    bool keep_alive;               /* the client may send another request */
    int minor;                     /* HTTP/1.<minor> of the request */
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
    http_header_list in;           /* the request's headers */
    http_header_list out;          /* the answer's, as handlers set them */

    size_t arena_used;
    spill *spills;
    _Alignas(max_align_t) char arena[REQ_ARENA_SIZE];
};

/* A request's metric series, kept by route label, method and status
 * (http_answer.c: request_metrics). */
#define HTTP_METRIC_CACHE 64
typedef struct http_metric_slot {
    const char *label, *method;
    int status;
    struct metrics_series *requests, *duration;
} http_metric_slot;

struct http_server {
    struct event_base *base;
    node *root;

    http_handler fallback;
    void *fallback_arg;
    char *fallback_label, *fallback_metric_label;
    http_guard guard;              /* checks the caller of guarded routes (lib/auth.c) */
    void *guard_arg;

    struct evconnlistener *bound[MAX_LISTENERS];
    int nbound;
    char listen_host[64];
    int listen_port;

    size_t max_body, max_headers;
    long request_timeout_ms;
    struct timeval request_timeout;
    const struct timeval *request_timeout_tv;   /* common timeout, or &request_timeout */
    struct timeval read_deadline;               /* HTTP_IDLE_TIMEOUT_S */
    const struct timeval *read_deadline_tv;     /* common timeout, or &read_deadline */

    http_conn *conns;
    long nconns, max_conns;        /* open connections; HTTP_MAX_CONNECTIONS */
    struct http_pending *over_cap; /* accepted over the cap, checked again at the turn's end */
    struct event *cap_event;
    struct event *accept_resume;   /* re-enables accepting after EMFILE (http.c) */
    long accept_backoff_ms;        /* 0 while accept() works */
    struct timeval write_timeout;  /* a client that takes no bytes that long is dropped */
    struct evbuffer *scratch;      /* an answer's body while its head is written */

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
    http_header *answer_headers;   /* added to every answer: http_server_add_answer_header */
    char *answer_block;            /* the same as the head's lines, "Name: value\r\n"... */
    size_t answer_block_len;
    http_metric_slot metric_cache[HTTP_METRIC_CACHE];
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

/* ---- http.c ---- */

/* A whole request read from c: route it and hand it to its handler. */
void http_server_request(http_server *s, http_req *r, const char *raw_path);

/* ---- http_conn.c ---- */

size_t http_write_error_body(struct evbuffer *out, int status, const char *message,
                             const char *path);
struct evconnlistener;
struct sockaddr;
void http_conn_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int socklen, void *arg);
/* The connection to answer r on, or NULL when the client is gone. */
http_conn *http_req_client(http_req *r);
/* An answer is queued on c (close_after: the connection ends with it). */
void http_conn_answered(http_conn *c, bool close_after);
/* Writes what is queued on c now (plain sockets) or lets the bufferevent. */
void http_conn_write(http_conn *c);
void http_server_close_conns(http_server *s);
/* Closes the connections with nothing in progress (the drain's end);
 * returns how many. */
int http_server_close_idle(http_server *s);
/* The connections accepted over the cap: opened if room was made in the
 * same loop turn, else refused (an event's callback); or dropped. */
void http_conn_check_pending(evutil_socket_t fd, short what, void *arg);
void http_server_drop_pending(http_server *s);

/* ---- http_answer.c ---- */

/* Sends the answer whose body (body_len bytes) is in the server's scratch
 * buffer; c NULL means the client is gone. */
void http_send_answer(http_req *r, http_conn *c, int status, const char *content_type,
                      size_t body_len);
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
void http_header_append(http_header_list *l, http_header *h);
/* Fills what a handler may read from the whole request at the start of
 * input (c->fed bytes, described by m), copied into the arena. */
void http_req_parse(http_req *r, http_conn *c, struct evbuffer *input,
                    const http_frame_message *m, const char **raw_path);
/* The server is going: r keeps copies and waits for its reply alone. */
void http_req_orphan(http_req *r);

#endif
