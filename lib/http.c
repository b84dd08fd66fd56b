/* http.c: the HTTP server of every carshare process, on libevent's evhttp.
 *
 * evhttp reads and parses requests; everything else is here: one generic
 * callback takes every request, wraps it in an http_req, routes it, and
 * owns the answer, so that every answer (errors included) has the
 * contract's shape, a request id, an access-log line and its metrics.
 *
 * Routing. Patterns are stored in a segment trie: one node per path
 * segment, literal children first, plus at most one {param} child. A path
 * is matched segment by segment, preferring literals and backtracking to
 * the {param} child, so "/orders/search/findByCustomerId" and
 * "/orders/{id}" coexist. Each node holds one handler slot per method; a
 * node with handlers but not for this method is a 405 (with Allow), no node
 * at all is the fallback handler or a 404. HEAD runs the GET handler and
 * sends its headers only; OPTIONS answers 204 with Allow.
 *
 * Requests. An http_req comes from a per-server free list and carries an
 * arena for everything derived from the request (decoded path, segments,
 * query pairs, a copy of the body, the request id), so a typical request
 * costs no malloc of ours; bigger requests spill into malloc'ed blocks
 * freed with the request. What a handler may read after going
 * asynchronous is copied there, because libevent may free its
 * evhttp_request before the handler answers (see below).
 *
 * Lifetime. A handler answers at once or later. After the handler returns
 * without answering, the request is "async": a timer (a libevent common
 * timeout, O(1) to arm) answers 503 after HTTP_REQUEST_TIMEOUT_MS, and the
 * connection's close callback (below) notices when libevent frees the
 * connection (server freed). In libevent 2.1, a connection that fails
 * while a request is pending detaches the request (its connection becomes
 * NULL) instead of freeing it; sending on such a request frees it. So the
 * answer path checks: no evhttp_request or a detached one means the client
 * is gone, the answer is dropped (a detached request is freed here) and the
 * http_req is still released exactly once, when its handler replies.
 * Two flags keep this straight: `answered` (the client got its answer, from
 * the handler or the timeout) and `replied` (the handler called an
 * http_reply_* function). The http_req is released when both hold and the
 * handler has returned.
 *
 * Connections. evhttp builds each accepted connection's bufferevent through
 * our callback, which records the connection; it is adopted on the same
 * loop turn, before any of its bytes are read: from then on its close
 * callback is ours, for its whole life. Through it the connection knows
 * the request waiting for a handler's answer and whether an answer is
 * still being written. It also carries the read deadline: evhttp's timeout
 * is per read, so a client sending a byte now and then (slowloris) would
 * hold a connection for ever; instead a request must be complete within
 * HTTP_IDLE_TIMEOUT_S of the connection becoming ready for it (accepted,
 * or its previous answer written out), else the connection is closed. The
 * clock stops while a handler works and while its answer is written.
 *
 * Limits. evhttp refuses oversized bodies and headers itself with HTML
 * pages and has no hook to change them (evhttp_set_errorcb is 2.2 only).
 * So evhttp's own limits are set to a multiple of ours (a memory bound),
 * and ours are checked here on each complete request, answering 413/431 in
 * the contract's shape. Only requests beyond evhttp's bound, and request
 * lines evhttp cannot parse, get evhttp's HTML 413/400.
 *
 * Listening. evhttp_bind_socket listens with a backlog of 128: a burst of
 * connections beyond it has SYNs dropped, and each client then loses a
 * second to the SYN retransmit. So we bind the listener ourselves, with a
 * backlog of HTTP_LISTEN_BACKLOG (default 1024; the kernel caps it at
 * net.core.somaxconn), and hand it to evhttp, which owns and frees it.
 *
 * Drain. http_server_drain closes the listeners; requests already received
 * are answered with "Connection: close"; when none is left in flight and
 * every answer has been written out, the caller's callback runs from the
 * loop. Requests a handler still holds when
 * the server is freed become orphans that wait for their reply alone.
 *
 * Everything runs on the loop thread; only metrics and logs are shared. */
#include "http.h"
#include "config.h"
#include "durable.h"
#include "jtext.h"
#include "log.h"
#include "metrics.h"
#include "uuid.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <event2/util.h>

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#define REQ_ARENA_SIZE 4096    /* per-request scratch: fits typical requests */
#define REQ_POOL_MAX 1024      /* idle http_req kept for reuse */
#define MAX_SEGMENTS 32        /* deeper paths can only reach the fallback */
#define MAX_PARAMS 8
#define MAX_LISTENERS 4
#define REQUEST_ID_MAX 128
#define UNMATCHED_ROUTE "unmatched"

#define METRIC_REQUESTS "carshare_http_requests_total"
#define METRIC_DURATION "carshare_http_request_duration_seconds"

/* ------------------------------------------------------------------ */
/* Types                                                               */

enum { SLOT_GET, SLOT_POST, SLOT_PUT, SLOT_PATCH, SLOT_DELETE, ROUTE_SLOTS };
static const char *const slot_names[ROUTE_SLOTS] = {"GET", "POST", "PUT", "PATCH", "DELETE"};

typedef struct route {
    http_handler handler;
    void *arg;
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
    http_conn **conn_by_fd;        /* adopted connections by socket */
    size_t conn_by_fd_cap;

    int inflight;                  /* received, not answered yet */
    int unflushed;                 /* answered, not yet written out */
    bool draining;
    void (*drain_done)(void *arg);
    void *drain_arg;
    struct event *drain_event;

    http_req *live;                /* every request not released yet */
    http_req *pool;
    size_t pool_count;
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */

static void *must(void *p)
{
    /* Out of memory on the request path: like Redis, stop rather than
     * limp on with half-built state. */
    if (!p) {
        log_error("msg=\"out of memory\" where=http");
        abort();
    }
    return p;
}

static unsigned long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

static void *req_alloc(http_req *r, size_t n)
{
    size_t start = (r->arena_used + (_Alignof(max_align_t) - 1)) & ~(size_t)(_Alignof(max_align_t) - 1);
    if (start <= sizeof r->arena && n <= sizeof r->arena - start) {
        r->arena_used = start + n;
        return r->arena + start;
    }
    spill *sp = must(malloc(sizeof *sp + n));
    sp->next = r->spills;
    r->spills = sp;
    return sp->data;
}

static char *req_strndup(http_req *r, const char *s, size_t n)
{
    char *copy = req_alloc(r, n + 1);
    memcpy(copy, s, n);
    copy[n] = '\0';
    return copy;
}

static char *req_strdup(http_req *r, const char *s)
{
    return req_strndup(r, s, strlen(s));
}

static int hex_value(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes %XX escapes (and '+' as a space when plus_is_space) of in[0..len)
 * into out, which has room for len + 1 bytes. Malformed escapes and %00 are
 * kept as they are (a NUL would silently cut the string). */
static size_t percent_decode(char *out, const char *in, size_t len, bool plus_is_space)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        if (c == '%' && i + 2 < len) {
            int hi = hex_value((unsigned char)in[i + 1]);
            int lo = hex_value((unsigned char)in[i + 2]);
            if (hi >= 0 && lo >= 0 && (hi | lo) != 0) {
                out[o++] = (char)(hi * 16 + lo);
                i += 2;
                continue;
            }
        } else if (c == '+' && plus_is_space) {
            c = ' ';
        }
        out[o++] = c;
    }
    out[o] = '\0';
    return o;
}

/* Length of the valid UTF-8 sequence at p, or 0 when invalid. */
static size_t utf8_sequence_length(const unsigned char *p)
{
    unsigned char c = p[0];
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return (p[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        if ((p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80) return 0;
        if (c == 0xe0 && p[1] < 0xa0) return 0;    /* overlong */
        if (c == 0xed && p[1] >= 0xa0) return 0;   /* surrogate */
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if ((p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80) return 0;
        if (c == 0xf0 && p[1] < 0x90) return 0;    /* overlong */
        if (c == 0xf4 && p[1] >= 0x90) return 0;   /* beyond U+10FFFF */
        return 4;
    }
    return 0;
}

/* Appends s as a JSON string; invalid UTF-8 becomes U+FFFD, so that a
 * message quoting client input is still valid JSON. */
static void add_json_string(struct evbuffer *out, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    char buf[512];
    size_t n = 0;
    buf[n++] = '"';
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    while (*p) {
        if (n > sizeof buf - 8) {
            evbuffer_add(out, buf, n);
            n = 0;
        }
        unsigned char c = *p;
        if (c == '"' || c == '\\') {
            buf[n++] = '\\';
            buf[n++] = (char)c;
            p++;
        } else if (c < 0x20) {
            memcpy(buf + n, "\\u00", 4);
            buf[n + 4] = hex[c >> 4];
            buf[n + 5] = hex[c & 15];
            n += 6;
            p++;
        } else {
            size_t len = utf8_sequence_length(p);
            if (len) {
                memcpy(buf + n, p, len);
                n += len;
                p += len;
            } else {
                memcpy(buf + n, "\\ufffd", 6);
                n += 6;
                p++;
            }
        }
    }
    buf[n++] = '"';
    evbuffer_add(out, buf, n);
}

/* Escapes a Prometheus label value (backslash, quote, newline). */
static char *label_escape(const char *s)
{
    size_t len = strlen(s);
    char *out = must(malloc(2 * len + 1));
    size_t o = 0;
    for (const char *p = s; *p; p++) {
        if (*p == '\\' || *p == '"') { out[o++] = '\\'; out[o++] = *p; }
        else if (*p == '\n') { out[o++] = '\\'; out[o++] = 'n'; }
        else out[o++] = *p;
    }
    out[o] = '\0';
    return out;
}

/* ------------------------------------------------------------------ */
/* Request ids                                                         */

/* A client's X-Request-Id is kept when it is a plain token: it goes into
 * log lines and headers of other services unquoted. */
static bool request_id_acceptable(const char *id)
{
    size_t n = 0;
    for (const char *p = id; *p; p++, n++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_' || c == '.' || c == ':';
        if (!ok || n >= REQUEST_ID_MAX)
            return false;
    }
    return n > 0;
}

/* ------------------------------------------------------------------ */
/* Status phrases                                                      */

const char *http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default:
        if (status >= 200 && status < 300) return "Success";
        if (status >= 300 && status < 400) return "Redirection";
        if (status >= 400 && status < 500) return "Client Error";
        return "Server Error";
    }
}

static bool status_has_body(int status)
{
    return status >= 200 && status != 204 && status != 304;
}

/* ------------------------------------------------------------------ */
/* Route table                                                         */

static int slot_of_name(const char *method)
{
    for (int i = 0; i < ROUTE_SLOTS; i++)
        if (!strcmp(slot_names[i], method))
            return i;
    return -1;
}

static int slot_of_cmd(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET:
    case EVHTTP_REQ_HEAD:   return SLOT_GET;
    case EVHTTP_REQ_POST:   return SLOT_POST;
    case EVHTTP_REQ_PUT:    return SLOT_PUT;
    case EVHTTP_REQ_PATCH:  return SLOT_PATCH;
    case EVHTTP_REQ_DELETE: return SLOT_DELETE;
    default:                return -1;
    }
}

static const char *cmd_name(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET:     return "GET";
    case EVHTTP_REQ_POST:    return "POST";
    case EVHTTP_REQ_HEAD:    return "HEAD";
    case EVHTTP_REQ_PUT:     return "PUT";
    case EVHTTP_REQ_DELETE:  return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_TRACE:   return "TRACE";
    case EVHTTP_REQ_CONNECT: return "CONNECT";
    case EVHTTP_REQ_PATCH:   return "PATCH";
    default:                 return "UNKNOWN";
    }
}

static void route_table_misuse(const char *what, const char *method, const char *pattern)
{
    log_error("msg=\"invalid route registration\" reason=\"%s\" method=%s pattern=%s", what,
              method ? method : "(null)", pattern ? pattern : "(null)");
    abort();   /* a programming error: fail at start, loudly */
}

static node *node_literal_child(node *n, const char *seg, size_t len, bool create)
{
    for (size_t i = 0; i < n->nchildren; i++)
        if (n->children[i]->literal_len == len && !memcmp(n->children[i]->literal, seg, len))
            return n->children[i];
    if (!create)
        return NULL;
    node *c = must(calloc(1, sizeof *c));
    c->literal = must(strndup(seg, len));
    c->literal_len = len;
    n->children = must(realloc(n->children, (n->nchildren + 1) * sizeof *n->children));
    n->children[n->nchildren++] = c;
    return c;
}

static void node_update_allow(node *n)
{
    static const char *const order[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"};
    static const int slot_for[] = {SLOT_GET, SLOT_GET, SLOT_POST, SLOT_PUT, SLOT_PATCH, SLOT_DELETE};
    size_t o = 0;
    n->allow[0] = '\0';
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
        if (!n->routes[slot_for[i]])
            continue;
        o += (size_t)snprintf(n->allow + o, sizeof n->allow - o, "%s, ", order[i]);
    }
    snprintf(n->allow + o, sizeof n->allow - o, "OPTIONS");
}

static void node_free(node *n)
{
    if (!n) return;
    for (size_t i = 0; i < n->nchildren; i++)
        node_free(n->children[i]);
    free(n->children);
    node_free(n->param_child);
    for (int i = 0; i < ROUTE_SLOTS; i++) {
        route *rt = n->routes[i];
        if (!rt) continue;
        for (int p = 0; p < rt->nparams; p++)
            free(rt->param_names[p]);
        free(rt->pattern);
        free(rt->label);
        free(rt);
    }
    free(n->literal);
    free(n);
}

void http_server_route(http_server *s, const char *method, const char *pattern,
                       http_handler handler, void *arg)
{
    int slot = method ? slot_of_name(method) : -1;
    if (slot < 0)
        route_table_misuse("unknown method", method, pattern);
    if (!pattern || pattern[0] != '/' || !handler)
        route_table_misuse("a pattern starts with / and needs a handler", method, pattern);

    route *rt = must(calloc(1, sizeof *rt));
    node *n = s->root;
    int depth = 0;
    const char *p = pattern;
    while (*p) {
        while (*p == '/') p++;
        if (!*p) break;
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (++depth > MAX_SEGMENTS)
            route_table_misuse("too many segments", method, pattern);
        if (len > 2 && p[0] == '{' && p[len - 1] == '}') {
            if (rt->nparams == MAX_PARAMS)
                route_table_misuse("too many {params}", method, pattern);
            if (memchr(p + 1, '{', len - 2) || memchr(p + 1, '}', len - 2))
                route_table_misuse("malformed {param}", method, pattern);
            rt->param_names[rt->nparams++] = must(strndup(p + 1, len - 2));
            if (!n->param_child)
                n->param_child = must(calloc(1, sizeof *n->param_child));
            n = n->param_child;
        } else {
            if (memchr(p, '{', len) || memchr(p, '}', len))
                route_table_misuse("malformed {param}", method, pattern);
            n = node_literal_child(n, p, len, true);
        }
        p += len;
    }
    if (n->routes[slot])
        route_table_misuse("registered twice", method, pattern);
    rt->handler = handler;
    rt->arg = arg;
    rt->pattern = must(strdup(pattern));
    rt->label = label_escape(pattern);
    n->routes[slot] = rt;
    n->has_routes = true;
    node_update_allow(n);
}

void http_server_fallback(http_server *s, const char *fallback_label,
                          http_handler handler, void *arg)
{
    free(s->fallback_label);
    free(s->fallback_metric_label);
    s->fallback = handler;
    s->fallback_arg = arg;
    s->fallback_label = must(strdup(fallback_label ? fallback_label : "fallback"));
    s->fallback_metric_label = label_escape(s->fallback_label);
}

typedef struct {
    int count;
    bool too_deep;
    const char *text[MAX_SEGMENTS];
    size_t len[MAX_SEGMENTS];
} segments;

/* The node with handlers that matches segs[i..], literals first; captured
 * receives the {param} values along the matching path. */
static const node *match_node(const node *n, const segments *segs, int i,
                              const char **captured, int ncaptured)
{
    if (i == segs->count)
        return n->has_routes ? n : NULL;
    for (size_t c = 0; c < n->nchildren; c++) {
        const node *child = n->children[c];
        if (child->literal_len == segs->len[i] && !memcmp(child->literal, segs->text[i], segs->len[i])) {
            const node *found = match_node(child, segs, i + 1, captured, ncaptured);
            if (found)
                return found;
            break;
        }
    }
    if (n->param_child && ncaptured < MAX_PARAMS) {
        captured[ncaptured] = segs->text[i];
        return match_node(n->param_child, segs, i + 1, captured, ncaptured + 1);
    }
    return NULL;
}

/* Splits the raw path on '/' (empty segments ignored, so a trailing slash
 * does not matter) and decodes each segment, so "%2F" inside a {param}
 * stays a slash in its value instead of splitting it. */
static void split_path(http_req *r, const char *raw, segments *segs)
{
    segs->count = 0;
    segs->too_deep = false;
    const char *p = raw;
    while (*p) {
        while (*p == '/') p++;
        if (!*p) break;
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (segs->count == MAX_SEGMENTS) {
            segs->too_deep = true;
            return;
        }
        char *decoded = req_alloc(r, len + 1);
        segs->len[segs->count] = percent_decode(decoded, p, len, false);
        segs->text[segs->count] = decoded;
        segs->count++;
        p += len;
    }
}

/* ------------------------------------------------------------------ */
/* Request pool and lifetime                                           */

static void on_request_timeout(evutil_socket_t fd, short what, void *arg);

static http_req *req_acquire(http_server *s)
{
    http_req *r = s->pool;
    if (r) {
        s->pool = r->next;
        s->pool_count--;
    } else {
        r = must(malloc(sizeof *r));
        r->timer = must(evtimer_new(s->base, on_request_timeout, r));
    }
    struct event *timer = r->timer;
    memset(r, 0, offsetof(http_req, arena));
    r->timer = timer;
    r->server = s;
    r->next = s->live;
    if (s->live) s->live->prev = r;
    s->live = r;
    return r;
}

static void req_destroy(http_req *r)
{
    event_free(r->timer);
    free(r);
}

static void req_release(http_req *r)
{
    if (r->timer_armed) {
        event_del(r->timer);
        r->timer_armed = false;
    }
    while (r->spills) {
        spill *next = r->spills->next;
        free(r->spills);
        r->spills = next;
    }
    http_server *s = r->server;
    if (!s) {
        req_destroy(r);
        return;
    }
    if (r->prev) r->prev->next = r->next;
    else s->live = r->next;
    if (r->next) r->next->prev = r->prev;
    if (s->pool_count < REQ_POOL_MAX) {
        r->next = s->pool;
        s->pool = r;
        s->pool_count++;
    } else {
        req_destroy(r);
    }
}

static void drain_check(http_server *s)
{
    if (s->draining && s->inflight == 0 && s->unflushed == 0 && s->drain_done)
        event_active(s->drain_event, EV_TIMEOUT, 0);
}

/* ------------------------------------------------------------------ */
/* Connections                                                         */

/* evhttp creates the bufferevent of each accepted connection through this
 * callback, before the connection object exists: the connection is
 * recorded here and adopted (below) once evhttp has finished setting it
 * up, later in the same loop turn and before any of its bytes are read.
 * The extra reference keeps the bufferevent valid until then, whatever
 * evhttp does meanwhile. Options 0 are evhttp's own defaults. */
static struct bufferevent *on_new_connection(struct event_base *base, void *arg)
{
    http_server *s = arg;
    struct bufferevent *bev = bufferevent_socket_new(base, -1, 0);
    if (!bev)
        return NULL;   /* evhttp tries to make one, and drops the connection if it cannot */
    http_conn *c = must(calloc(1, sizeof *c));
    c->server = s;
    c->bev = bev;
    c->fd = -1;
    bufferevent_incref(bev);
    c->next = s->unadopted;
    s->unadopted = c;
    event_active(s->adopt_event, EV_TIMEOUT, 0);
    return bev;
}

static void on_connection_closed(struct evhttp_connection *evcon, void *arg);
static void send_held_answer(void *arg);
static void on_read_deadline(evutil_socket_t fd, short what, void *arg);

static void conn_index(http_server *s, http_conn *c)
{
    size_t fd = (size_t)c->fd;
    if (fd >= s->conn_by_fd_cap) {
        size_t cap = s->conn_by_fd_cap ? s->conn_by_fd_cap : 256;
        while (cap <= fd)
            cap *= 2;
        s->conn_by_fd = must(realloc(s->conn_by_fd, cap * sizeof *s->conn_by_fd));
        memset(s->conn_by_fd + s->conn_by_fd_cap, 0,
               (cap - s->conn_by_fd_cap) * sizeof *s->conn_by_fd);
        s->conn_by_fd_cap = cap;
    }
    s->conn_by_fd[fd] = c;
}

/* From now on the connection is ours to watch: its close callback is ours
 * for its whole life, and its first request must arrive in time. */
static void adopt_connections(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_server *s = arg;
    while (s->unadopted) {
        http_conn *c = s->unadopted;
        s->unadopted = c->next;
        void *evcon = NULL;   /* evhttp passes its connection to its callbacks */
        bufferevent_getcb(c->bev, NULL, NULL, NULL, &evcon);
        c->fd = bufferevent_getfd(c->bev);
        bufferevent_decref(c->bev);
        if (!evcon || c->fd < 0) {
            free(c);   /* evhttp dropped it already (out of memory) */
            continue;
        }
        /* An answer is written whole, then the next request waits for
         * it: Nagle would hold the answer's last segment until the
         * client's delayed ACK (40 ms). Fails harmlessly on a non-TCP
         * socket. */
        int nodelay = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, sizeof nodelay);
        c->deadline = must(evtimer_new(s->base, on_read_deadline, c));
        c->evcon = evcon;
        evhttp_connection_set_closecb(c->evcon, on_connection_closed, c);
        conn_index(s, c);
        c->prev = NULL;
        c->next = s->conns;
        if (s->conns) s->conns->prev = c;
        s->conns = c;
        event_add(c->deadline, s->read_deadline_tv);
    }
}

/* evhttp's timeouts are per read: a client sending one byte now and then
 * would hold a connection (and a request half read) for ever. So a request
 * must be complete, from its first byte to its last, within the idle
 * timeout of the connection becoming ready for it. */
static void on_read_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_conn *c = arg;
    evhttp_connection_free(c->evcon);   /* calls on_connection_closed */
}

static http_conn *conn_lookup(http_server *s, struct evhttp_connection *evcon)
{
    int fd = bufferevent_getfd(evhttp_connection_get_bufferevent(evcon));
    if (fd < 0 || (size_t)fd >= s->conn_by_fd_cap)
        return NULL;
    http_conn *c = s->conn_by_fd[fd];
    return c && c->evcon == evcon ? c : NULL;
}

/* The connection `ev` came on. Adoption runs before any byte is read, so
 * it is always there; adopting here too only makes that independent of
 * the order in which libevent runs callbacks. */
static http_conn *conn_of(http_server *s, struct evhttp_request *ev)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(ev);
    if (!evcon)
        return NULL;
    http_conn *c = conn_lookup(s, evcon);
    if (!c && s->unadopted) {
        adopt_connections(-1, 0, s);
        c = conn_lookup(s, evcon);
    }
    return c;
}

/* libevent is freeing the connection. A request of ours still waiting for
 * its answer there is forgotten if attached (it is freed with the
 * connection); a detached one (connection NULL) survives and is ours to
 * free when answering. An answer not yet written out is lost. */
static void on_connection_closed(struct evhttp_connection *evcon, void *arg)
{
    http_conn *c = arg;
    http_server *s = c->server;
    if (c->waiting) {
        http_req *r = c->waiting;
        if (r->ev && evhttp_request_get_connection(r->ev) == evcon)
            r->ev = NULL;
        r->conn = NULL;
    }
    if (c->unflushed)
        s->unflushed--;
    if (c->held)    /* libevent frees the request with the connection */
        durable_cancel(send_held_answer, c);
    if (c->prev) c->prev->next = c->next;
    else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    if ((size_t)c->fd < s->conn_by_fd_cap && s->conn_by_fd[c->fd] == c)
        s->conn_by_fd[c->fd] = NULL;
    event_free(c->deadline);
    free(c);
    drain_check(s);
}

/* The evhttp request to write the answer on, or NULL when the client is
 * gone (the answer is then dropped). */
static struct evhttp_request *req_client(http_req *r)
{
    struct evhttp_request *ev = r->ev;
    if (r->conn && r->conn->waiting == r)
        r->conn->waiting = NULL;
    if (!ev) {
        r->conn = NULL;
        return NULL;
    }
    if (!evhttp_request_get_connection(ev)) {
        evhttp_request_free(ev);
        r->ev = NULL;
        r->conn = NULL;
        return NULL;
    }
    return ev;
}

/* Eager write. evhttp only queues what it sends: the bufferevent enables
 * its write event, the loop's next turn reports the socket writable, the
 * bytes go out, and the write event is disabled again. That is an
 * epoll_ctl to add EPOLLOUT and one to remove it, plus a loop turn, for
 * every answer and every proxied request, although a loopback or LAN
 * socket almost always takes the whole message at once (nginx writes at
 * once too, and waits for EPOLLOUT only when the socket is full). So the
 * queued bytes are written here, right after evhttp queued them; when all
 * went out, bufferevent_trigger runs evhttp's write callback (its "message
 * written" step: read the next request, or the answer) in the same turn,
 * so the write event is enabled and disabled within one turn and
 * libevent's changelist sends nothing to epoll. What a full socket does
 * not take stays queued and the write event finishes it as before; an
 * error is left to that write event too, which reports it through
 * evhttp's usual path. bufferevent_trigger holds a reference, so evhttp
 * may free the connection in its callback (Connection: close).
 * Measured on the gateway (GET proxied to a bare evhttp upstream), per
 * request: epoll_ctl 5.9 -> 3.4, and 92k -> 85k instructions (callgrind). */
void http_write_now(struct bufferevent *bev)
{
    if (!bev)
        return;
    struct evbuffer *out = bufferevent_get_output(bev);
    int fd = bufferevent_getfd(bev);
    if (fd < 0 || evbuffer_get_length(out) == 0)
        return;   /* not connected yet, or nothing queued (a held answer) */
    /* A socket bufferevent keeps the start of its output frozen so that
     * only it drains the buffer; it thaws it around its own writes, so do
     * we (a frozen buffer refuses to write). */
    evbuffer_unfreeze(out, 1);
    int written = evbuffer_write(out, fd);
    evbuffer_freeze(out, 1);
    if (written < 0 || evbuffer_get_length(out) > 0)
        return;   /* error or a full socket: the write event takes over */
    bufferevent_trigger(bev, EV_WRITE, 0);
}

/* The Date header. evhttp formats one for every answer that has none
 * (gmtime and snprintf: 3.4k of the gateway's 85k instructions per proxied
 * request, measured with callgrind); its text changes once a second, so it
 * is formatted then and reused. Fixed English names, as RFC 9110 wants,
 * whatever the locale. (evhttp dated only HTTP/1.1 answers; an HTTP/1.0
 * client now gets a Date too, as RFC 9110 asks of a server with a clock.) */
static void add_date(struct evhttp_request *ev)
{
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    static _Thread_local time_t cached_second = -1;
    static _Thread_local char text[40];
    if (!ev)
        return;
    time_t now = time(NULL);
    if (now != cached_second) {
        struct tm tm;
        gmtime_r(&now, &tm);
        snprintf(text, sizeof text, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday % 7],
                 tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                 tm.tm_sec);
        cached_second = now;
    }
    evhttp_add_header(evhttp_request_get_output_headers(ev), "Date", text);
}


/* An answer handed to evhttp is only queued; the drain must not end (and
 * the service free the server) before it is on the wire. evhttp reports
 * the end of the write through the request's on-complete callback, or,
 * when the write fails, frees the connection without it: the close
 * callback covers that case. Once written, the connection waits for its
 * next request, which must arrive in time. */
static void on_answer_flushed(struct evhttp_request *ev, void *arg)
{
    (void)ev;
    http_conn *c = arg;
    http_server *s = c->server;
    if (c->unflushed) {
        c->unflushed = false;
        s->unflushed--;
    }
    event_add(c->deadline, s->read_deadline_tv);
    drain_check(s);
}

static void track_flush(http_server *s, http_conn *c, struct evhttp_request *ev)
{
    if (!c || !evhttp_request_get_connection(ev))
        return;
    s->unflushed++;
    c->unflushed = true;
    evhttp_request_set_on_complete_cb(ev, on_answer_flushed, c);
}

/* Bookkeeping once the client has its answer (or is gone): access log,
 * metrics, in-flight count. */
static void req_answered(http_req *r, int status, size_t bytes, bool client_gone)
{
    r->answered = true;
    if (r->timer_armed) {
        event_del(r->timer);
        r->timer_armed = false;
    }
    double seconds = (double)(now_ns() - r->t0_ns) / 1e9;
    char quoted_path[512], quoted_route[256];
    log_line(status >= 500 ? "warn" : "info",
             "msg=request req=%s method=%s path=%s route=%s status=%d dur_ms=%.3f bytes=%zu peer=%s%s",
             r->id, r->method, log_quote(quoted_path, sizeof quoted_path, r->path),
             log_quote(quoted_route, sizeof quoted_route, r->route_pattern), status,
             seconds * 1000.0, bytes, r->peer,
             client_gone ? " client=gone" : "");

    char labels[512];
    metrics_counter_add(METRIC_REQUESTS, metrics_route_labels(labels, sizeof labels,
                        r->route_label, r->method, true, status), 1);
    metrics_histogram_observe(METRIC_DURATION, metrics_route_labels(labels, sizeof labels,
                              r->route_label, r->method, false, 0), seconds);

    http_server *s = r->server;
    if (s) {
        s->inflight--;
        drain_check(s);
    }
}

/* Group commit (durable.h): while a commit is not on disk, answers wait
 * for the sync, complete (headers and body in ev) and counted as
 * unflushed, so a drain waits for them too. At most one per connection
 * (evhttp reads a connection's next request only after its answer), so
 * the connection keeps it. If the connection closes meanwhile, libevent
 * frees the request and the wait is cancelled (on_connection_closed). */
static void send_held_answer(void *arg)
{
    http_conn *c = arg;
    struct evhttp_request *ev = c->held;
    c->held = NULL;
    evhttp_send_reply(ev, c->held_status, http_reason(c->held_status), NULL);
    http_write_now(c->bev);     /* may free c (Connection: close) */
}

/* True when the answer is held; false: send it now. */
static bool hold_answer(http_conn *c, struct evhttp_request *ev, int status)
{
    if (!c || !durable_defer(send_held_answer, c))
        return false;
    c->held = ev;
    c->held_status = status;
    return true;
}

/* Sends the answer whose body (body_len bytes) is already in ev's output
 * buffer; ev NULL means the client is gone. */
static void send_answer(http_req *r, struct evhttp_request *ev, int status,
                        const char *content_type, size_t body_len)
{
    struct bufferevent *bev = NULL;   /* to write to at once (http_write_now) */
    if (ev) {
        struct evkeyvalq *h = evhttp_request_get_output_headers(ev);
        if (content_type) {
            evhttp_remove_header(h, "Content-Type");
            evhttp_add_header(h, "Content-Type", content_type);
        }
        evhttp_add_header(h, "X-Request-Id", r->id);
        if (r->head) {
            /* The body was measured and dropped: say how long it is, as the
             * GET would, since evhttp adds no Content-Length to HEAD. A
             * length the handler set (a proxied HEAD) is the right one. */
            struct evbuffer *out = evhttp_request_get_output_buffer(ev);
            evbuffer_drain(out, evbuffer_get_length(out));
            if (status_has_body(status) && !evhttp_find_header(h, "Content-Length")) {
                char len[24];
                snprintf(len, sizeof len, "%zu", body_len);
                evhttp_add_header(h, "Content-Length", len);
            }
        }
        if (r->server) {
            if (r->server->draining) {
                evhttp_remove_header(h, "Connection");
                evhttp_add_header(h, "Connection", "close");
            }
            track_flush(r->server, r->conn, ev);
        }
        add_date(ev);
        http_conn *c = r->conn;
        r->conn = NULL;   /* the connection is done with this request */
        if (!hold_answer(r->server ? c : NULL, ev, status)) {
            evhttp_send_reply(ev, status, http_reason(status), NULL);
            bev = c && c->evcon ? c->bev : NULL;
        }
        r->ev = NULL;
    }
    req_answered(r, status, body_len, ev == NULL);
    http_write_now(bev);    /* after the bookkeeping: it may serve the next request */
}

/* The contract's error body, written into out; returns its length. */
static size_t write_error_body(struct evbuffer *out, int status, const char *message,
                               const char *path)
{
    size_t before = evbuffer_get_length(out);
    evbuffer_add_printf(out, "{\"status\":%d,\"error\":", status);
    add_json_string(out, http_reason(status));
    evbuffer_add(out, ",\"message\":", 11);
    add_json_string(out, message);
    evbuffer_add(out, ",\"path\":", 8);
    add_json_string(out, path);
    evbuffer_add(out, "}", 1);
    return evbuffer_get_length(out) - before;
}

static void answer_error(http_req *r, int status, const char *message)
{
    struct evhttp_request *ev = req_client(r);
    size_t len = 0;
    if (ev)
        len = write_error_body(evhttp_request_get_output_buffer(ev), status, message, r->path);
    send_answer(r, ev, status, "application/json", len);
}

/* Dumps JSON straight into the output buffer (no intermediate string).
 * Returns its length, 0 if jansson refused the value. */
static size_t dump_json(struct evbuffer *out, const json_t *body)
{
    size_t want = 4096;
    for (int attempt = 0; attempt < 2; attempt++) {
        struct evbuffer_iovec v;
        if (evbuffer_reserve_space(out, (ev_ssize_t)want, &v, 1) < 1)
            must(NULL);
        long fast = jtext_dump(body, false, v.iov_base, v.iov_len);
        size_t n = fast >= 0 ? (size_t)fast
                             : json_dumpb(body, v.iov_base, v.iov_len, JSON_COMPACT | JSON_ENCODE_ANY);
        if (n == 0)
            return 0;
        if (n <= v.iov_len) {
            v.iov_len = n;
            evbuffer_commit_space(out, &v, 1);
            return n;
        }
        want = n;   /* too big for the first guess: reserve exactly that */
    }
    return 0;
}

/* After a handler's reply (the client has its answer by now): release
 * the request at once, or when the handler returns (see dispatch). */
static void reply_done(http_req *r)
{
    if (!r->in_handler)
        req_release(r);
}

/* Records the handler's reply. False when nothing is to be sent: a second
 * reply (ignored), or a late one after the request timeout answered (the
 * request is released here). */
static bool reply_claim(http_req *r)
{
    if (r->replied) {
        log_error("msg=\"second reply to one request ignored\" req=%s route=%s", r->id,
                  r->route_pattern);
        return false;
    }
    r->replied = true;
    if (r->answered) {
        log_warn("msg=\"late reply dropped\" req=%s route=%s reason=\"already answered by the request timeout\"",
                 r->id, r->route_pattern);
        reply_done(r);
        return false;
    }
    return true;
}

/* ------------------------------------------------------------------ */
/* Answers                                                             */

void http_set_header(http_req *r, const char *name, const char *value)
{
    if (r->ev && !r->answered)
        evhttp_add_header(evhttp_request_get_output_headers(r->ev), name, value);
}

void http_reply_json(http_req *r, int status, json_t *body)
{
    if (!reply_claim(r)) {
        json_decref(body);
        return;
    }
    struct evhttp_request *ev = req_client(r);
    if (ev && !body) {
        answer_error(r, 500, "the handler built no response body");
    } else {
        size_t len = ev ? dump_json(evhttp_request_get_output_buffer(ev), body) : 0;
        if (ev && len == 0)
            answer_error(r, 500, "the response body could not be encoded as JSON");
        else
            send_answer(r, ev, status, "application/json", len);
    }
    json_decref(body);
    reply_done(r);
}

void http_reply_error(http_req *r, int status, const char *fmt, ...)
{
    if (!reply_claim(r))
        return;
    char message[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    answer_error(r, status, message);
    reply_done(r);
}

void http_reply_raw(http_req *r, int status, const char *content_type, const void *data,
                    size_t len)
{
    if (!reply_claim(r))
        return;
    struct evhttp_request *ev = req_client(r);
    if (ev && len)
        evbuffer_add(evhttp_request_get_output_buffer(ev), data, len);
    send_answer(r, ev, status, content_type, len);
    reply_done(r);
}

void http_reply_empty(http_req *r, int status)
{
    if (!reply_claim(r))
        return;
    send_answer(r, req_client(r), status, NULL, 0);
    reply_done(r);
}

/* The server's own refusals (404, 405, 413, ...), before any handler. */
static void refuse(http_req *r, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void refuse(http_req *r, int status, const char *fmt, ...)
{
    char message[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    r->replied = true;
    answer_error(r, status, message);
    req_release(r);
}

static void on_request_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_req *r = arg;
    r->timer_armed = false;
    if (r->answered)
        return;
    long ms = r->server ? r->server->request_timeout_ms : 0;
    char message[160];
    snprintf(message, sizeof message,
             "the request was not answered within %ld ms; it may or may not have taken effect", ms);
    http_set_header(r, "Retry-After", "1");
    /* The handler still holds r: it is released when the handler replies. */
    answer_error(r, 503, message);
}

/* ------------------------------------------------------------------ */
/* Dispatch                                                            */

static void dispatch(http_req *r, http_handler handler, void *arg)
{
    r->in_handler = true;
    handler(r, arg);
    r->in_handler = false;
    if (r->replied) {   /* answered during the handler: the common case */
        req_release(r);
        return;
    }
    /* The handler answers later: guard the wait. */
    if (r->conn)
        r->conn->waiting = r;
    if (!r->answered && r->server) {
        event_add(r->timer, r->server->request_timeout_tv);
        r->timer_armed = true;
    }
}

/* Size of the request line and headers, as evhttp counts them. */
static size_t request_head_size(struct evhttp_request *ev)
{
    const char *uri = evhttp_request_get_uri(ev);
    size_t n = (uri ? strlen(uri) : 0) + 16;
    const struct evkeyvalq *headers = evhttp_request_get_input_headers(ev);
    for (const struct evkeyval *h = headers->tqh_first; h; h = h->next.tqe_next)
        n += strlen(h->key) + strlen(h->value) + 4;
    return n;
}

/* Fills what a handler may read, copied into the arena. */
static void req_begin(http_req *r, struct evhttp_request *ev, const char **raw_path)
{
    r->ev = ev;
    r->t0_ns = now_ns();
    r->cmd = evhttp_request_get_command(ev);
    r->method = cmd_name(r->cmd);
    r->head = r->cmd == EVHTTP_REQ_HEAD;
    r->route_pattern = UNMATCHED_ROUTE;
    r->route_label = UNMATCHED_ROUTE;

    const char *uri = evhttp_request_get_uri(ev);
    r->uri = req_strdup(r, uri ? uri : "/");
    const struct evhttp_uri *parsed = evhttp_request_get_evhttp_uri(ev);
    const char *path = parsed ? evhttp_uri_get_path(parsed) : NULL;
    if (!path || !*path) path = "/";
    *raw_path = path;
    size_t plen = strlen(path);
    char *decoded = req_alloc(r, plen + 1);
    percent_decode(decoded, path, plen, false);
    r->path = decoded;
    const char *query = parsed ? evhttp_uri_get_query(parsed) : NULL;
    r->query_raw = query ? req_strdup(r, query) : NULL;

    const char *id = evhttp_find_header(evhttp_request_get_input_headers(ev), "X-Request-Id");
    if (id && request_id_acceptable(id)) {
        r->id = req_strdup(r, id);
    } else {
        char *fresh = req_alloc(r, 37);
        uuid_v4(fresh);
        r->id = fresh;
    }

    struct evhttp_connection *conn = evhttp_request_get_connection(ev);
    char *address = NULL;
    ev_uint16_t port = 0;
    if (conn)
        evhttp_connection_get_peer(conn, &address, &port);
    r->peer = req_strdup(r, address ? address : "-");
}

/* Where a request goes: a route's handler, the fallback, or a refusal. */
typedef struct {
    const node *node;       /* NULL: no pattern matches the path */
    const route *route;     /* NULL: the node has no handler for the method */
    const char *captured[MAX_PARAMS];
} destination;

/* Matches the path and names the request after what it matched, so that
 * even refusals (413, 405) are counted under their route. */
static void resolve(http_server *s, http_req *r, const char *raw_path, destination *d)
{
    segments segs;
    split_path(r, raw_path, &segs);
    d->node = segs.too_deep ? NULL : match_node(s->root, &segs, 0, d->captured, 0);
    d->route = NULL;
    if (!d->node) {
        if (s->fallback) {
            r->route_pattern = s->fallback_label;
            r->route_label = s->fallback_metric_label;
        }
        return;
    }
    int slot = slot_of_cmd(r->cmd);
    d->route = slot >= 0 ? d->node->routes[slot] : NULL;
    /* Without a handler for this method, any route of the node names it. */
    const route *named = d->route;
    for (int i = 0; i < ROUTE_SLOTS && !named; i++)
        named = d->node->routes[i];
    r->route_pattern = named->pattern;
    r->route_label = named->label;
}

static void deliver(http_server *s, http_req *r, const destination *d)
{
    if (!d->node) {
        if (s->fallback)
            dispatch(r, s->fallback, s->fallback_arg);
        else
            refuse(r, 404, "no route for %s %s", r->method, r->path);
        return;
    }
    if (!d->route) {
        http_set_header(r, "Allow", d->node->allow);
        if (r->cmd == EVHTTP_REQ_OPTIONS) {
            r->replied = true;
            send_answer(r, req_client(r), 204, NULL, 0);
            req_release(r);
        } else {
            refuse(r, 405, "method %s is not allowed on %s; allowed: %s", r->method, r->path,
                   d->node->allow);
        }
        return;
    }
    r->nparams = d->route->nparams;
    for (int i = 0; i < d->route->nparams; i++) {
        r->param_names[i] = d->route->param_names[i];
        r->param_values[i] = d->captured[i];
    }
    dispatch(r, d->route->handler, d->route->arg);
}

/* evhttp's generic callback: every request that parsed comes here. */
static void on_request(struct evhttp_request *ev, void *arg)
{
    http_server *s = arg;
    http_req *r = req_acquire(s);
    const char *raw_path = "/";
    req_begin(r, ev, &raw_path);
    s->inflight++;
    /* The request is in: its connection's clock stops until the answer
     * has been written out. */
    r->conn = conn_of(s, ev);
    if (r->conn)
        event_del(r->conn->deadline);

    destination d;
    resolve(s, r, raw_path, &d);

    size_t head_size = request_head_size(ev);
    if (head_size > s->max_headers) {
        refuse(r, 431, "the request line and headers take %zu bytes; the limit is %zu bytes",
               head_size, s->max_headers);
        return;
    }
    struct evbuffer *input = evhttp_request_get_input_buffer(ev);
    size_t body_len = evbuffer_get_length(input);
    if (body_len > s->max_body) {
        refuse(r, 413, "the request body has %zu bytes; the limit is %zu bytes", body_len,
               s->max_body);
        return;
    }
    if (body_len > 0) {
        char *body = req_alloc(r, body_len + 1);
        evbuffer_copyout(input, body, body_len);
        body[body_len] = '\0';
        r->body = body;
        r->body_len = body_len;
    }
    deliver(s, r, &d);
}

/* ------------------------------------------------------------------ */
/* Server                                                              */

static void on_drained(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_server *s = arg;
    void (*done)(void *) = s->drain_done;
    s->drain_done = NULL;
    if (done)
        done(s->drain_arg);   /* may free s */
}

http_server *http_server_new(struct event_base *base, const char *service_name)
{
    (void)service_name;   /* log lines carry it already (log_init) */
    http_server *s = must(calloc(1, sizeof *s));
    s->base = base;
    s->root = must(calloc(1, sizeof *s->root));
    s->max_body = (size_t)config_int("HTTP_MAX_BODY", 65536, 0, 1L << 30);
    s->max_headers = (size_t)config_int("HTTP_MAX_HEADERS", 8192, 1024, 1L << 20);
    long idle_s = config_int("HTTP_IDLE_TIMEOUT_S", 60, 1, 86400);
    s->request_timeout_ms = config_int("HTTP_REQUEST_TIMEOUT_MS", 30000, 1, 3600000);
    s->request_timeout.tv_sec = s->request_timeout_ms / 1000;
    s->request_timeout.tv_usec = (s->request_timeout_ms % 1000) * 1000;
    s->request_timeout_tv = event_base_init_common_timeout(base, &s->request_timeout);
    if (!s->request_timeout_tv)
        s->request_timeout_tv = &s->request_timeout;
    s->read_deadline.tv_sec = idle_s;
    s->read_deadline_tv = event_base_init_common_timeout(base, &s->read_deadline);
    if (!s->read_deadline_tv)
        s->read_deadline_tv = &s->read_deadline;
    s->drain_event = must(event_new(base, -1, 0, on_drained, s));
    s->adopt_event = must(event_new(base, -1, 0, adopt_connections, s));

    s->evhttp = evhttp_new(base);
    if (!s->evhttp) {
        log_error("msg=\"cannot create the HTTP server\"");
        event_free(s->drain_event);
        event_free(s->adopt_event);
        free(s->root);
        free(s);
        return NULL;
    }
    /* Every method reaches us, so 405/404 are ours, in the contract's shape. */
    evhttp_set_allowed_methods(s->evhttp, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                              EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                              EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                              EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    /* evhttp's limits are only a memory bound, above ours (see the top). */
    size_t body_cap = s->max_body * 4 > (1u << 20) ? s->max_body * 4 : (1u << 20);
    evhttp_set_max_body_size(s->evhttp, (ev_ssize_t)body_cap);
    evhttp_set_max_headers_size(s->evhttp, (ev_ssize_t)(s->max_headers * 2));
    evhttp_set_timeout(s->evhttp, (int)idle_s);
    evhttp_set_bevcb(s->evhttp, on_new_connection, s);
    evhttp_set_default_content_type(s->evhttp, NULL);
    evhttp_set_gencb(s->evhttp, on_request, s);
    return s;
}

/* A listening socket on host:port with our backlog, disabled until evhttp
 * sets its callback. NULL (errno or a lookup error logged) on failure. */
static struct evconnlistener *listen_socket(http_server *s, const char *host, int port)
{
    int backlog = (int)config_int("HTTP_LISTEN_BACKLOG", 1024, 1, 65535);
    char service[8];
    snprintf(service, sizeof service, "%d", port);
    struct evutil_addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                     .ai_protocol = IPPROTO_TCP, .ai_flags = EVUTIL_AI_PASSIVE };
    struct evutil_addrinfo *ai = NULL;
    int rc = evutil_getaddrinfo(host, service, &hints, &ai);
    if (rc != 0 || !ai) {
        log_error("msg=\"cannot listen\" host=%s port=%d reason=\"%s\"", host, port,
                  rc != 0 ? evutil_gai_strerror(rc) : "no address");
        return NULL;
    }
    struct evconnlistener *l = evconnlistener_new_bind(
        s->base, NULL, NULL, LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
        backlog, ai->ai_addr, (int)ai->ai_addrlen);
    if (!l)
        log_error("msg=\"cannot listen\" host=%s port=%d reason=\"%s\"", host, port, strerror(errno));
    evutil_freeaddrinfo(ai);
    return l;
}

int http_server_listen(http_server *s, const char *host, int port)
{
    if (port < 0 || port > 65535) {
        log_error("msg=\"cannot listen\" host=%s port=%d reason=\"port out of range\"", host, port);
        return -1;
    }
    if (s->nbound == MAX_LISTENERS) {
        log_error("msg=\"cannot listen\" host=%s port=%d reason=\"too many listeners\"", host, port);
        return -1;
    }
    struct evconnlistener *listener = listen_socket(s, host, port);
    if (!listener)
        return -1;
    /* From here evhttp owns the listener: evhttp_del_accept_socket frees it. */
    struct evhttp_bound_socket *b = evhttp_bind_listener(s->evhttp, listener);
    if (!b) {
        log_error("msg=\"cannot listen\" host=%s port=%d reason=\"out of memory\"", host, port);
        evconnlistener_free(listener);
        return -1;
    }
    struct sockaddr_storage addr;
    socklen_t alen = sizeof addr;
    int bound_port = port;
    if (getsockname(evhttp_bound_socket_get_fd(b), (struct sockaddr *)&addr, &alen) == 0) {
        if (addr.ss_family == AF_INET)
            bound_port = ntohs(((struct sockaddr_in *)&addr)->sin_port);
        else if (addr.ss_family == AF_INET6)
            bound_port = ntohs(((struct sockaddr_in6 *)&addr)->sin6_port);
    }
    s->bound[s->nbound++] = b;
    if (s->listen_port == 0) {
        snprintf(s->listen_host, sizeof s->listen_host, "%s", host);
        s->listen_port = bound_port;
    }
    return bound_port;
}

void http_server_drain(http_server *s, void (*done)(void *arg), void *arg)
{
    s->draining = true;
    s->drain_done = done;
    s->drain_arg = arg;
    for (int i = 0; i < s->nbound; i++)
        evhttp_del_accept_socket(s->evhttp, s->bound[i]);
    s->nbound = 0;
    log_info("msg=\"http draining\" inflight=%d unflushed=%d", s->inflight, s->unflushed);
    drain_check(s);
}

int http_server_inflight(const http_server *s)
{
    return s->inflight;
}

/* A request outliving its server keeps copies of what pointed into the
 * route table, and waits for its handler's reply alone. */
static void req_orphan(http_req *r)
{
    r->server = NULL;
    if (r->timer_armed) {
        event_del(r->timer);
        r->timer_armed = false;
    }
    r->route_pattern = req_strdup(r, r->route_pattern);
    r->route_label = req_strdup(r, r->route_label);
    for (int i = 0; i < r->nparams; i++)
        r->param_names[i] = req_strdup(r, r->param_names[i]);
}

void http_server_free(http_server *s)
{
    if (!s)
        return;
    s->drain_done = NULL;   /* freeing connections below must not end a drain */
    http_req *r = s->live;
    while (r) {
        http_req *next = r->next;
        r->prev = r->next = NULL;
        req_orphan(r);
        r = next;
    }
    s->live = NULL;
    /* Frees every connection; pending requests on them are dropped through
     * on_connection_closed, which forgets the adopted connections. */
    evhttp_free(s->evhttp);
    while (s->unadopted) {
        http_conn *c = s->unadopted;
        s->unadopted = c->next;
        bufferevent_decref(c->bev);
        free(c);
    }
    free(s->conn_by_fd);
    event_free(s->adopt_event);
    while (s->pool) {
        http_req *next = s->pool->next;
        req_destroy(s->pool);
        s->pool = next;
    }
    event_free(s->drain_event);
    node_free(s->root);
    free(s->fallback_label);
    free(s->fallback_metric_label);
    free(s);
}

/* ------------------------------------------------------------------ */
/* The request, read side                                              */

const char *http_req_method(const http_req *r) { return r->method; }
const char *http_req_path(const http_req *r) { return r->path; }
const char *http_req_uri(const http_req *r) { return r->uri; }
const char *http_req_route(const http_req *r) { return r->route_pattern; }
const char *http_req_id(const http_req *r) { return r->id; }
const char *http_req_peer(const http_req *r) { return r->peer; }
struct evhttp_request *http_req_raw(http_req *r) { return r->answered ? NULL : r->ev; }

const char *http_req_param(const http_req *r, const char *name)
{
    for (int i = 0; i < r->nparams; i++)
        if (!strcmp(r->param_names[i], name))
            return r->param_values[i];
    return NULL;
}

/* Splits and decodes the query on first use ('+' is a space there). */
static void parse_query(http_req *r)
{
    r->query_parsed = true;
    if (!r->query_raw || !*r->query_raw)
        return;
    size_t len = strlen(r->query_raw);
    char *copy = req_strndup(r, r->query_raw, len);
    int max_pairs = 1;
    for (const char *p = copy; *p; p++)
        if (*p == '&') max_pairs++;
    r->query = req_alloc(r, (size_t)max_pairs * sizeof *r->query);
    char *p = copy;
    while (p) {
        char *amp = strchr(p, '&');
        if (amp) *amp = '\0';
        if (*p) {
            char *eq = strchr(p, '=');
            char *value = eq ? eq + 1 : p + strlen(p);
            if (eq) *eq = '\0';
            /* Decoding never lengthens a string: decode in place. */
            percent_decode(p, p, strlen(p), true);
            percent_decode(value, value, strlen(value), true);
            r->query[r->nquery].name = p;
            r->query[r->nquery].value = value;
            r->nquery++;
        }
        p = amp ? amp + 1 : NULL;
    }
}

const char *http_req_query(const http_req *cr, const char *name)
{
    http_req *r = (http_req *)cr;   /* parsed lazily: the cache is ours */
    if (!r->query_parsed)
        parse_query(r);
    for (int i = 0; i < r->nquery; i++)
        if (!strcmp(r->query[i].name, name))
            return r->query[i].value;
    return NULL;
}

const char *http_req_header(const http_req *r, const char *name)
{
    if (!r->ev || r->answered)
        return NULL;
    return evhttp_find_header(evhttp_request_get_input_headers(r->ev), name);
}

const char *http_req_body(const http_req *r, size_t *len)
{
    if (len)
        *len = r->body_len;
    return r->body ? r->body : "";
}

bool http_req_alive(const http_req *r)
{
    if (r->answered || !r->ev)
        return false;
    struct evhttp_connection *conn = evhttp_request_get_connection(r->ev);
    if (!conn)
        return false;   /* detached by libevent: the connection failed */
    int fd = bufferevent_getfd(evhttp_connection_get_bufferevent(conn));
    if (fd < 0)
        return false;
    /* evhttp stops reading while a request waits for its answer, so it
     * cannot have seen the client leave: peek at the socket. */
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0)
        return false;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        return false;
    return true;
}

/* The first comma-separated element of a header value, trimmed. */
static const char *first_element(const char *value, size_t *len)
{
    while (*value == ' ' || *value == '\t') value++;
    size_t n = strcspn(value, ",");
    while (n > 0 && (value[n - 1] == ' ' || value[n - 1] == '\t')) n--;
    *len = n;
    return value;
}

static bool host_acceptable(const char *host, size_t len)
{
    if (len == 0 || len > 255)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = host[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '-' || c == ':' || c == '[' || c == ']' || c == '_';
        if (!ok)
            return false;
    }
    return true;
}

const char *http_req_base_url(const http_req *cr)
{
    http_req *r = (http_req *)cr;   /* computed lazily: the cache is ours */
    if (r->base_url)
        return r->base_url;
    const char *proto = "http";
    const char *host = NULL;
    size_t host_len = 0;
    const char *fwd_proto = http_req_header(r, "X-Forwarded-Proto");
    if (fwd_proto) {
        size_t n;
        const char *p = first_element(fwd_proto, &n);
        if (n == 5 && !strncasecmp(p, "https", 5)) proto = "https";
    }
    const char *candidates[] = {http_req_header(r, "X-Forwarded-Host"), http_req_header(r, "Host")};
    for (size_t i = 0; i < 2 && !host; i++) {
        if (!candidates[i]) continue;
        size_t n;
        const char *h = first_element(candidates[i], &n);
        if (host_acceptable(h, n)) {
            host = h;
            host_len = n;
        }
    }
    char buf[300];
    if (host) {
        snprintf(buf, sizeof buf, "%s://%.*s", proto, (int)host_len, host);
    } else {
        const char *listen = r->server ? r->server->listen_host : "";
        if (!*listen || !strcmp(listen, "0.0.0.0") || !strcmp(listen, "::"))
            listen = "localhost";
        snprintf(buf, sizeof buf, "%s://%s:%d", proto, listen, r->server ? r->server->listen_port : 0);
    }
    r->base_url = req_strdup(r, buf);
    return r->base_url;
}

json_t *http_req_json(http_req *r)
{
    size_t len;
    const char *body = http_req_body(r, &len);
    if (len == 0) {
        http_reply_error(r, 400, "the request body is empty; a JSON object is expected");
        return NULL;
    }
    json_error_t error;
    json_t *json = jtext_load(body, len);   /* json_loadb's value, faster */
    if (!json)
        json = json_loadb(body, len, 0, &error);    /* for the error's place */
    if (!json) {
        http_reply_error(r, 400, "the request body is not valid JSON: %s (line %d, column %d)",
                         error.text, error.line, error.column);
        return NULL;
    }
    if (!json_is_object(json)) {
        static const char *const kinds[] = {"an object", "an array", "a string", "a number",
                                            "a number", "true", "false", "null"};
        int t = (int)json_typeof(json);
        json_decref(json);
        http_reply_error(r, 400, "the request body must be a JSON object, not %s",
                         t >= 0 && t < 8 ? kinds[t] : "this");
        return NULL;
    }
    return json;
}
