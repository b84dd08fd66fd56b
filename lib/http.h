/* http.h: the HTTP server every carshare process runs, on libevent's
 * bufferevents with our own RFC 9112 parser (http_frame.h).
 *
 * A server owns a route table: (method, pattern) -> handler, where a pattern
 * is a literal path with `{name}` segments ("/orders/{id}"). Matching is
 * exact per segment; a path that matches some route but not its method is a
 * 405, no match at all is a 404 (or the fallback handler, for the gateway).
 * Every answer, including errors produced here, is in the contract's shape.
 *
 * One http_req exists per request, from arrival until its answer is sent.
 * A handler may answer at once or later (after an upstream call): the
 * http_req stays valid until one of the http_reply_* functions is called,
 * even if the client went away meanwhile (then the reply is dropped). Exactly
 * one reply per request. The server frees the http_req after the reply.
 *
 * The server also:
 *  - takes X-Request-Id from the request or generates one (a UUID), and
 *    sends it back in the answer;
 *  - writes one log line per request (method, path, status, duration, req);
 *  - counts requests and observes latency in /metrics, by route pattern
 *    (not raw path) and status;
 *  - enforces limits from the environment: HTTP_MAX_BODY (bytes, default
 *    65536: larger bodies get 413), HTTP_MAX_HEADERS (bytes, default 8192),
 *    HTTP_IDLE_TIMEOUT_S (default 60: a connection that has not delivered a
 *    whole request that long after accept or after its previous answer is
 *    closed, however slowly it trickles bytes), and HTTP_REQUEST_TIMEOUT_MS (default
 *    30000): a request not answered by then gets 503 and the late reply is
 *    dropped; HTTP_LISTEN_BACKLOG (default 1024) is the listen backlog;
 *  - counts requests in flight so that shutdown can drain them. */
#ifndef CARSHARE_HTTP_H
#define CARSHARE_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <sys/types.h>   /* ssize_t */
#include <jansson.h>

struct event_base;
struct evbuffer;

typedef struct http_server http_server;
typedef struct http_req http_req;
typedef void (*http_handler)(http_req *req, void *arg);

http_server *http_server_new(struct event_base *base);
void http_server_free(http_server *s);

/* method is "GET", "POST", "PUT", "PATCH" or "DELETE". HEAD is answered for
 * every GET route. Patterns are copied.
 *
 * Who may call a route: `roles` is a set of caller roles (the bits of
 * lib/token.h's TOKEN_ROLE_*), or HTTP_OPEN for a route that needs no
 * token (GET /cars, POST /sessions, /health/...). http_server_route
 * registers with HTTP_ROUTE_DEFAULT_ROLES, staff only: a route nobody
 * thought about is closed, not open. The server's guard (below) enforces
 * it before the handler runs. */
#define HTTP_OPEN 0u
#define HTTP_ROUTE_DEFAULT_ROLES 2u      /* TOKEN_ROLE_STAFF */
void http_server_route(http_server *s, const char *method, const char *pattern,
                       http_handler handler, void *arg);
void http_server_route_for(http_server *s, const char *method, const char *pattern,
                           unsigned roles, http_handler handler, void *arg);

/* The guard runs before the handler of every route that is not HTTP_OPEN
 * (lib/auth.c checks the token and the caller's role). It returns true to
 * let the request through, having named the caller (http_req_set_caller);
 * or it answers (401, 403) and returns false, and the request is then
 * over. A server without a guard (unit tests of this file) lets every
 * request through: every process gets one from service_new. The fallback
 * handler is not guarded: it checks for itself (the gateway). */
typedef bool (*http_guard)(http_req *req, unsigned roles, void *arg);
void http_server_guard(http_server *s, http_guard guard, void *arg);

/* Handler for requests that match no route (any method). Without one they
 * get 404. Its metrics/log route label is `fallback_label`. */
void http_server_fallback(http_server *s, const char *fallback_label,
                          http_handler handler, void *arg);

/* Binds host:port (port 0 = ephemeral) with http_listener_open. Returns the
 * bound port or -1. */
int http_server_listen(http_server *s, const char *host, int port);

/* ---- listening sockets, for any server on the loop ----
 *
 * http_listener_open: a listening TCP socket on host:port (port 0 =
 * ephemeral; *bound_port, if not NULL, gets the port actually bound) with
 * the listen backlog HTTP_LISTEN_BACKLOG (default 1024, not evhttp's 128:
 * a burst beyond the backlog loses SYNs and each such client a second),
 * SO_REUSEADDR, close-on-exec. reuse_port also sets SO_REUSEPORT, so that a
 * second process (a new release of the gateway) can bind the same port
 * while this one still listens; note that the kernel resets the
 * connections waiting in a SO_REUSEPORT socket's accept queue when that
 * socket is closed, so a process that shares the port this way must not
 * close its listener while it may still be chosen (DESIGN.md, "Handing
 * the gateway's port over").
 *
 * Returns a listener WITHOUT a callback: libevent keeps it disabled, so it
 * accepts nothing until the caller gives it one -- evconnlistener_set_cb
 * for a server on plain bufferevents, or evhttp_bind_listener (which then
 * owns it). Freeing it (evconnlistener_free) closes the socket. NULL on
 * failure, logged ("cannot listen" with the reason). Loop thread, before
 * or while the loop runs; it resolves `host` with getaddrinfo, so give an
 * address or a name from /etc/hosts ("localhost"), not one needing DNS. */
struct evconnlistener;
struct evconnlistener *http_listener_open(struct event_base *base, const char *host, int port,
                                          bool reuse_port, int *bound_port);

/* Serves on a listener from http_listener_open or http_handover_take
 * (takes it, even on failure). `host` names it in logs and in links
 * without PUBLIC_BASE_URL. Returns the bound port or -1. */
int http_server_listen_on(http_server *s, struct evconnlistener *listener, const char *host);

/* ---- handing the listening socket to the next process (http_handover.c) ----
 *
 * A new release of a process takes over its port from the one running,
 * with no connection refused or reset: the running process offers its
 * listening socket on a Unix socket at `path` (HTTP_HANDOVER_SOCKET); the
 * new one, starting, connects there and receives the very same listening
 * socket (SCM_RIGHTS), as nginx does across a binary upgrade. Both then
 * accept from one accept queue; the old one can stop at any time after:
 * closing its copy of the descriptor closes nothing (the new process
 * holds the socket), so no connection waiting in the queue is lost.
 * Plain SO_REUSEPORT would give the new process a socket of its own, and
 * the kernel resets whatever waits in the old socket's queue when it is
 * closed (DESIGN.md, "Handing the gateway's port over").
 *
 * http_handover_take: before the loop runs (it waits, at most 2 s, for
 * the running process's answer). A listener (without callback, as
 * http_listener_open's) on the socket received, when a process answered
 * at `path` with a listening socket on `port` (0: any); NULL when nobody
 * answered (then bind as usual) -- or when what arrived is not usable,
 * logged. */
struct evconnlistener *http_handover_take(struct event_base *base, const char *path, int port);
/* Offers `listen_fd` at `path` (replacing what is there: the path now
 * names this process) until http_handover_stop; the descriptor must stay
 * open that long. NULL when the path cannot be bound (logged). */
typedef struct http_handover http_handover;
http_handover *http_handover_offer(struct event_base *base, const char *path,
                                   int listen_fd);
/* Stops offering (before the listening socket is closed: a drain), and
 * removes the path if it still names this process. NULL is a no-op. */
void http_handover_stop(http_handover *h);

/* Graceful shutdown: for period_ms the server keeps accepting and serving,
 * every answer with "Connection: close" (balancers meanwhile see the
 * process not ready and stop choosing it); then it stops accepting, closes
 * its idle keep-alive connections, waits (HTTP_DRAIN_NEW_CONN_MS at most)
 * for connections accepted just before to bring their request, answers
 * the requests in flight, and calls done(arg) once from the loop.
 * period_ms 0: stop accepting at once. */
void http_server_drain(http_server *s, long period_ms, void (*done)(void *arg), void *arg);
int http_server_inflight(const http_server *s);

/* Links' base (see http_req_base_url): http:// or https://, a host, an
 * optional port and path; trailing slashes dropped. -1 if malformed. */
int http_server_set_public_base_url(http_server *s, const char *url);

/* A header every answer of this server carries (replacing one of the same
 * name that a handler or a proxied upstream set): the gateway's security
 * headers. */
void http_server_add_answer_header(http_server *s, const char *name, const char *value);

/* Makes the bufferevent of each accepted connection (fd -1: the server
 * sets the socket; it must own it, BEV_OPT_CLOSE_ON_FREE), instead of a
 * plain socket one: the gateway's TLS. Answers then leave through the
 * bufferevent only (no http_write_now). Before listening. */
typedef struct bufferevent *(*http_connection_factory)(struct event_base *base, void *arg);
void http_server_set_connection_factory(http_server *s, http_connection_factory fn, void *arg);

/* ---- the request ---- */
const char *http_req_method(const http_req *r);
const char *http_req_path(const http_req *r);       /* decoded path, no query */
const char *http_req_uri(const http_req *r);        /* path and query as received */
const char *http_req_route(const http_req *r);      /* matched pattern, or fallback label */
const char *http_req_param(const http_req *r, const char *name);  /* "{id}" value or NULL */
const char *http_req_query(const http_req *r, const char *name);  /* decoded, or NULL */
const char *http_req_header(const http_req *r, const char *name); /* or NULL */
const char *http_req_id(const http_req *r);         /* X-Request-Id */
const char *http_req_peer(const http_req *r);       /* client address */
/* The public base URL for HAL links and Location ("http://host:port", no
 * trailing slash): the server's configured one (service.c sets it from
 * PUBLIC_BASE_URL), else the listening address. Never the client's Host. */
const char *http_req_base_url(const http_req *r);
const char *http_req_body(const http_req *r, size_t *len);  /* NUL-terminated copy */
bool http_req_alive(const http_req *r);             /* client still connected */
/* Who is calling, as the guard verified it from the token (never from a
 * header a client could write): the role bit (0: nobody, on an open
 * route) and the subject ("kim", "order"; "" for nobody). */
#define HTTP_CALLER_MAX 64
void http_req_set_caller(http_req *r, unsigned role, const char *subject);
unsigned http_req_caller_role(const http_req *r);
const char *http_req_caller(const http_req *r);
/* The request's headers, in the order received (the gateway's proxy
 * forwards them). Valid until the request is answered and released. */
typedef struct http_header {
    const char *name, *value;
    struct http_header *next;
} http_header;
const http_header *http_req_headers(const http_req *r);

/* Parses the body as a JSON object. On failure (empty, not JSON, not an
 * object) replies 400 with a message saying so and returns NULL: the
 * handler must then return without replying. Caller owns the result. */
json_t *http_req_json(http_req *r);

/* ---- the answer (each frees the request) ---- */
void http_set_header(http_req *r, const char *name, const char *value);
void http_reply_json(http_req *r, int status, json_t *body);   /* steals body */
void http_reply_error(http_req *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void http_reply_raw(http_req *r, int status, const char *content_type,
                    const void *data, size_t len);
void http_reply_empty(http_req *r, int status);

/* Status reason phrase ("Bad Request"), for error bodies. */
const char *http_reason(int status);

/* Writes what is queued on bev (an answer, or httpc's request) at once
 * instead of on the loop's next turn, and when all of it went out, runs
 * the bufferevent's write callback (the "written" step) and leaves its
 * EV_WRITE disabled; else enables it, so the write event finishes (or
 * reports the error). For the server and httpc.c (plain sockets). */
struct bufferevent;
void http_write_now(struct bufferevent *bev);

/* Reads at most `want` bytes of plain socket fd with one recv, straight
 * into the end of its bufferevent's input (the server's and httpc's own
 * read event, instead of evbuffer_read's ioctl(FIONREAD) + readv).
 * Returns recv's result; when it is negative, *err is errno. */
struct evbuffer;
ssize_t http_recv_into(int fd, struct evbuffer *input, size_t want, int *err);

/* ---- writing a message head (the server's answers, httpc's requests) ----
 * Lines are gathered in one stack buffer and added to `out` with one
 * evbuffer_add at http_head_end (a head larger than the buffer goes out
 * in pieces). Set out and n = 0 first. */
typedef struct http_head_buf {
    struct evbuffer *out;
    size_t n;
    char text[2048];
} http_head_buf;
void http_head_put_slow(http_head_buf *b, const char *p, size_t len);
/* Inline: a head is a dozen short pieces, many of them literals whose
 * copy the compiler then makes a few moves. */
static inline void http_head_put(http_head_buf *b, const char *p, size_t len)
{
    if (b->n + len > sizeof b->text) {
        http_head_put_slow(b, p, len);
        return;
    }
    memcpy(b->text + b->n, p, len);
    b->n += len;
}
#define HTTP_HEAD_LITERAL(b, s) http_head_put(b, s, sizeof s - 1)   /* s a string literal */
/* "name: value\r\n" (inline too: a literal name's strlen is folded) */
static inline void http_head_field(http_head_buf *b, const char *name, const char *value)
{
    http_head_put(b, name, strlen(name));
    HTTP_HEAD_LITERAL(b, ": ");
    http_head_put(b, value, strlen(value));
    HTTP_HEAD_LITERAL(b, "\r\n");
}
void http_head_end(http_head_buf *b);

/* ---- group commit, as HTTP sees it ----
 *
 * An answer, and an outgoing call (httpc.h), may tell the outside world of
 * a commit that is not on disk yet: they wait until it is. HTTP does not
 * know how commits become durable; the service layer hands it a deferral
 * (service.c gives lib/durable.c's). defer(fn, arg): returns true when
 * something committed is not durable yet, and fn(arg) then runs on the
 * loop once it is, waiters in the order deferred; false: nothing waits, go
 * on at once (fn is not called). cancel(fn, arg) forgets a waiter whose
 * owner is going away. */
typedef struct http_deferral {
    bool (*defer)(void (*fn)(void *arg), void *arg);
    void (*cancel)(void (*fn)(void *arg), void *arg);
} http_deferral;

/* For every server and client of the process (loop thread; d must outlive
 * them; NULL: nothing ever waits, the default). */
void http_set_deferral(const http_deferral *d);
/* What servers and clients call: d->defer, or false without a deferral. */
bool http_defer(void (*fn)(void *arg), void *arg);
void http_defer_cancel(void (*fn)(void *arg), void *arg);

#endif
