/* http.c: the HTTP server of every carshare process, on libevent's evhttp.
 *
 * evhttp reads and parses requests; everything else is here: one generic
 * callback takes every request, wraps it in an http_req, routes it, and
 * owns the answer, so that every answer (errors included) has the
 * contract's shape, a request id, an access-log line and its metrics.
 *
 * Files (http_private.h): this one, the lifecycle and dispatch; the route
 * trie (http_route.c); connections and the read deadline (http_conn.c);
 * the answer path (http_answer.c); a request's memory and accessors
 * (http_req.c).
 *
 * Limits and framing. evhttp refuses oversized bodies and headers itself
 * with HTML pages and has no hook to change them (evhttp_set_errorcb is
 * 2.2 only), and is lenient where leniency is a smuggling risk. So every
 * byte first passes the RFC 9112 check of http_frame.h (http_conn.c),
 * which refuses in the contract's JSON shape, before evhttp reads it:
 * malformed framing, a declared body over HTTP_MAX_BODY (413 before the
 * body is read), a head over HTTP_MAX_HEADERS (431), unknown methods
 * (501), other major versions (505). evhttp's own limits are set above
 * ours and are never reached.
 *
 * Listening. evhttp_bind_socket listens with a backlog of 128: a burst of
 * connections beyond it has SYNs dropped, and each client then loses a
 * second to the SYN retransmit. So we bind the listener ourselves
 * (http_listener_open, usable by any server on the loop), with a
 * backlog of HTTP_LISTEN_BACKLOG (default 1024; the kernel caps it at
 * net.core.somaxconn), and hand it to evhttp, which owns and frees it.
 *
 * Drain, in two phases. First a drain period (the caller's, DRAIN_MS in
 * service.c): the listeners stay open and every request is still served,
 * but each answer says "Connection: close", so keep-alive clients move
 * their next request to a new connection; meanwhile a balancer's probes
 * see the process's readiness at 503 and stop choosing it. Closing the
 * listener at once instead would refuse the requests a balancer sends
 * before its next probe. Then the listeners close, keep-alive connections
 * with no request in progress are closed (nobody chooses this process any
 * more, so no request can be crossing the close), connections accepted
 * just before get HTTP_DRAIN_NEW_CONN_MS to bring their request (end_period),
 * and when none is left in flight
 * and every answer has been written out, the caller's callback runs from
 * the loop. Requests a handler still holds when the server is freed become
 * orphans that wait for their reply alone.
 *
 * Everything runs on the loop thread; only metrics and logs are shared. */
#include "http_private.h"

#include <errno.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h>    /* the request's version, for answer_as_http11 */
#include <event2/keyvalq_struct.h>
#include <sys/queue.h>
#include <strings.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "config.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"

/* ---- the deferral (http.h) ---- */

static const http_deferral *deferral;

void http_set_deferral(const http_deferral *d)
{
    deferral = d;
}

bool http_defer(void (*fn)(void *arg), void *arg)
{
    return deferral && deferral->defer(fn, arg);
}

void http_defer_cancel(void (*fn)(void *arg), void *arg)
{
    if (deferral)
        deferral->cancel(fn, arg);
}

void http_drain_check(http_server *s)
{
    if (s->draining && s->period_over && s->inflight == 0 && s->unflushed == 0 &&
        s->drain_done && (s->fresh == 0 || s->drain_grace_over))
        event_active(s->drain_event, EV_TIMEOUT, 0);
}

/* ---- dispatch ---- */

static void dispatch(http_req *r, http_handler handler, void *arg)
{
    r->in_handler = true;
    handler(r, arg);
    r->in_handler = false;
    if (r->replied) {   /* answered during the handler: the common case */
        http_req_release(r);
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

static void deliver(http_server *s, http_req *r, const destination *d)
{
    if (!d->node) {
        if (s->fallback)
            dispatch(r, s->fallback, s->fallback_arg);
        else
            http_refuse(r, 404, "no route for %s %s", r->method, r->path);
        return;
    }
    if (!d->route) {
        http_set_header(r, "Allow", d->node->allow);
        if (r->cmd == EVHTTP_REQ_OPTIONS) {
            r->replied = true;
            http_send_answer(r, http_req_client(r), 204, NULL, 0);
            http_req_release(r);
        } else {
            http_refuse(r, 405, "method %s is not allowed on %s; allowed: %s", r->method, r->path,
                   d->node->allow);
        }
        return;
    }
    r->nparams = d->route->nparams;
    for (int i = 0; i < d->route->nparams; i++) {
        r->param_names[i] = d->route->param_names[i];
        r->param_values[i] = d->captured[i];
    }
    /* A refusing guard has answered, and the answer released the request. */
    if (d->route->roles != HTTP_OPEN && s->guard && !s->guard(r, d->route->roles, s->guard_arg))
        return;
    dispatch(r, d->route->handler, d->route->arg);
}

/* evhttp's generic callback: every request that parsed comes here. */
/* A body sent with POST, PUT, PATCH or DELETE must say it is JSON
 * (parameters such as "; charset=utf-8" allowed). A browser sends a
 * cross-site form (text/plain, form-urlencoded) without asking first; this
 * refuses it before any handler sees it. */
static bool body_type_acceptable(struct evhttp_request *ev)
{
    enum evhttp_cmd_type cmd = evhttp_request_get_command(ev);
    if (cmd != EVHTTP_REQ_POST && cmd != EVHTTP_REQ_PUT && cmd != EVHTTP_REQ_PATCH &&
        cmd != EVHTTP_REQ_DELETE)
        return true;
    const char *ct = evhttp_find_header(evhttp_request_get_input_headers(ev), "Content-Type");
    static const char json[] = "application/json";
    if (!ct)
        return false;
    while (*ct == ' ' || *ct == '\t') ct++;
    if (strncasecmp(ct, json, sizeof json - 1) != 0)
        return false;
    ct += sizeof json - 1;
    while (*ct == ' ' || *ct == '\t') ct++;
    return *ct == '\0' || *ct == ';';
}

/* Answers carry the server's own version, HTTP/1.1 (RFC 9110 6.2), where
 * evhttp would echo the request's ("HTTP/1.7 200", "HTTP/1.0 200"); only
 * major version 1 gets this far (http_frame.h). An HTTP/1.0 client that
 * did not ask to keep the connection gets Connection: close, as it
 * expects. evhttp writes the status line from these two fields. */
static void answer_as_http11(struct evhttp_request *ev)
{
    if (ev->minor == 0) {
        const char *conn = evhttp_find_header(evhttp_request_get_input_headers(ev), "Connection");
        if (!conn || strcasecmp(conn, "keep-alive") != 0)
            evhttp_add_header(evhttp_request_get_output_headers(ev), "Connection", "close");
    }
    ev->major = 1;
    ev->minor = 1;
}

static void on_request(struct evhttp_request *ev, void *arg)
{
    http_server *s = arg;
    answer_as_http11(ev);
    http_req *r = http_req_acquire(s);
    const char *raw_path = "/";
    http_req_begin(r, ev, &raw_path);
    s->inflight++;
    /* The request is in: its connection's clock stops until the answer
     * has been written out. */
    r->conn = http_conn_of(s, ev);
    if (r->conn)
        event_del(r->conn->deadline);
    if (r->conn && r->conn->fresh) {
        r->conn->fresh = false;
        s->fresh--;
    }

    destination d;
    http_route_resolve(s, r, raw_path, &d);

    size_t head_size = request_head_size(ev);
    if (head_size > s->max_headers) {
        http_refuse(r, 431, "the request line and headers take %zu bytes; the limit is %zu bytes",
               head_size, s->max_headers);
        return;
    }
    struct evbuffer *input = evhttp_request_get_input_buffer(ev);
    size_t body_len = evbuffer_get_length(input);
    if (body_len > s->max_body) {
        http_refuse(r, 413, "the request body has %zu bytes; the limit is %zu bytes", body_len,
               s->max_body);
        return;
    }
    if (body_len > 0 && !body_type_acceptable(ev)) {
        http_refuse(r, 415, "the request body must be JSON, sent with Content-Type: application/json");
        return;
    }
    if (body_len > 0) {
        char *body = http_req_alloc(r, body_len + 1);
        evbuffer_copyout(input, body, body_len);
        body[body_len] = '\0';
        r->body = body;
        r->body_len = body_len;
    }
    deliver(s, r, &d);
}

/* ---- the server ---- */

/* accept() failing for lack of descriptors (EMFILE, ENFILE) or memory
 * leaves the connection in the backlog, and the listener would fire again
 * at once: the loop would spin. So accepting pauses instead, 100 ms at
 * first, doubling to 1 s while it lasts (the next accepted connection
 * resets it); meanwhile connections wait in the backlog. libevent gives
 * the error callback evhttp's argument, not ours: the server is found in
 * this short list (a process runs one or two servers). */
#define MAX_SERVERS 8
static http_server *servers[MAX_SERVERS];

static void resume_accepting(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_server *s = arg;
    for (int i = 0; i < s->nbound; i++)
        evconnlistener_enable(evhttp_bound_socket_get_listener(s->bound[i]));
}

static void on_accept_error(struct evconnlistener *l, void *evhttp_arg)
{
    int err = EVUTIL_SOCKET_ERROR();
    http_server *s = NULL;
    for (int i = 0; i < MAX_SERVERS && !s; i++)
        if (servers[i] && (void *)servers[i]->evhttp == evhttp_arg) s = servers[i];
    if (!s || (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM)) {
        log_warn("msg=\"accept failed\" error=\"%s\"", strerror(err));
        return;
    }
    s->accept_backoff_ms = s->accept_backoff_ms ? s->accept_backoff_ms * 2 : 100;
    if (s->accept_backoff_ms > 1000) s->accept_backoff_ms = 1000;
    if (s->accept_backoff_ms == 100)
        log_warn("msg=\"out of descriptors: accepting paused\" error=\"%s\" connections=%ld",
                 strerror(err), s->nconns);
    metrics_counter_add("carshare_http_accept_paused_total", "", 1);
    for (int i = 0; i < s->nbound; i++)
        evconnlistener_disable(evhttp_bound_socket_get_listener(s->bound[i]));
    (void)l;
    struct timeval tv = { s->accept_backoff_ms / 1000, (s->accept_backoff_ms % 1000) * 1000 };
    evtimer_add(s->accept_resume, &tv);
}

/* HTTP_MAX_CONNECTIONS by default: what the descriptor limit leaves after
 * 64 for the process's own files, databases and outgoing connections. */
static long default_max_connections(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > 10064)
        return 10000;
    return rl.rlim_cur > 80 ? (long)rl.rlim_cur - 64 : 16;
}

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

/* A connection is idle when it has served a request (one accepted but
 * with no request yet is "fresh": the drain waits for it, below) and
 * nothing of it is being answered, held for group commit or written out,
 * and no byte of a next request has arrived. */
static bool conn_idle(const http_conn *c)
{
    return !c->fresh && !c->waiting && !c->unflushed && !c->held &&
           evbuffer_get_length(bufferevent_get_input(c->bev)) == 0;
}

static void on_drain_grace(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_server *s = arg;
    s->drain_grace_over = true;
    if (s->fresh > 0)
        log_info("msg=\"drain: closing connections that sent no request\" connections=%d",
                 s->fresh);
    http_drain_check(s);
}

/* The end of the drain period: no new connections; idle keep-alive ones
 * closed (nobody chooses this process any more, so no request can be
 * crossing the close); and connections accepted just before, which may not
 * have sent their request yet (it may be on its way, or unread in the
 * socket buffer: closing them would drop a request the client believes
 * delivered), get at most HTTP_DRAIN_NEW_CONN_MS to bring it (answered
 * with "Connection: close") or hang up. */
static void end_period(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_server *s = arg;
    for (int i = 0; i < s->nbound; i++)
        evhttp_del_accept_socket(s->evhttp, s->bound[i]);
    s->nbound = 0;
    http_conn_adopt(-1, 0, s);
    int closed = 0;
    for (http_conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        if (conn_idle(c)) {
            evhttp_connection_free(c->evcon);   /* on_connection_closed frees c */
            closed++;
        }
    }
    if (s->fresh > 0) {
        long wait_ms = config_int("HTTP_DRAIN_NEW_CONN_MS", 2000, 0, 60000);
        struct timeval tv = {wait_ms / 1000, (wait_ms % 1000) * 1000};
        s->drain_grace = mem_must(evtimer_new(s->base, on_drain_grace, s));
        evtimer_add(s->drain_grace, &tv);
    }
    s->period_over = true;
    log_info("msg=\"http drain: listener closed\" idle_closed=%d inflight=%d unflushed=%d "
             "new_connections=%d", closed, s->inflight, s->unflushed, s->fresh);
    http_drain_check(s);
}

http_server *http_server_new(struct event_base *base)
{
    http_server *s = mem_must(calloc(1, sizeof *s));
    s->base = base;
    s->root = mem_must(calloc(1, sizeof *s->root));
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
    s->drain_event = mem_must(event_new(base, -1, 0, on_drained, s));
    s->period_timer = mem_must(evtimer_new(base, end_period, s));
    s->adopt_event = mem_must(event_new(base, -1, 0, http_conn_adopt, s));
    s->accept_resume = mem_must(evtimer_new(base, resume_accepting, s));
    s->max_conns = config_int("HTTP_MAX_CONNECTIONS", default_max_connections(), 1, 1000000);
    TAILQ_INIT(&s->answer_headers);

    s->evhttp = evhttp_new(base);
    if (!s->evhttp) {
        log_error("msg=\"cannot create the HTTP server\"");
        event_free(s->drain_event);
        event_free(s->period_timer);
        event_free(s->adopt_event);
        event_free(s->accept_resume);
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
    evhttp_set_bevcb(s->evhttp, http_conn_new_bev, s);
    evhttp_set_default_content_type(s->evhttp, NULL);
    evhttp_set_gencb(s->evhttp, on_request, s);
    for (int i = 0; i < MAX_SERVERS; i++)
        if (!servers[i]) {
            servers[i] = s;
            break;
        }
    return s;
}

/* ---- listening sockets (http.h: http_listener_open) ---- */

static int http_listener_port(evutil_socket_t fd)
{
    struct sockaddr_storage addr;
    socklen_t alen = sizeof addr;
    if (getsockname(fd, (struct sockaddr *)&addr, &alen) != 0)
        return -1;
    if (addr.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&addr)->sin_port);
    if (addr.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&addr)->sin6_port);
    return -1;
}

struct evconnlistener *http_listener_open(struct event_base *base, const char *host, int port,
                                          bool reuse_port, int *bound_port)
{
    if (port < 0 || port > 65535) {
        log_error("msg=\"cannot listen\" host=%s port=%d reason=\"port out of range\"", host, port);
        return NULL;
    }
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
    /* No callback: libevent keeps the listener disabled until one is set. */
    unsigned flags = LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC;
    if (reuse_port)
        flags |= LEV_OPT_REUSEABLE_PORT;
    struct evconnlistener *l = evconnlistener_new_bind(base, NULL, NULL, flags, backlog,
                                                       ai->ai_addr, (int)ai->ai_addrlen);
    if (!l)
        log_error("msg=\"cannot listen\" host=%s port=%d reason=\"%s\"", host, port, strerror(errno));
    evutil_freeaddrinfo(ai);
    if (l && bound_port) {
        int p = http_listener_port(evconnlistener_get_fd(l));
        *bound_port = p > 0 ? p : port;
    }
    return l;
}

int http_server_listen_on(http_server *s, struct evconnlistener *listener, const char *host)
{
    if (s->nbound == MAX_LISTENERS) {
        log_error("msg=\"cannot listen\" host=%s reason=\"too many listeners\"", host);
        evconnlistener_free(listener);
        return -1;
    }
    int bound_port = http_listener_port(evconnlistener_get_fd(listener));
    /* From here evhttp owns the listener: evhttp_del_accept_socket frees it. */
    struct evhttp_bound_socket *b = evhttp_bind_listener(s->evhttp, listener);
    if (!b) {
        log_error("msg=\"cannot listen\" host=%s port=%d reason=\"out of memory\"", host,
                  bound_port);
        evconnlistener_free(listener);
        return -1;
    }
    s->bound[s->nbound++] = b;
    evconnlistener_set_error_cb(listener, on_accept_error);
    if (s->listen_port == 0) {
        snprintf(s->listen_host, sizeof s->listen_host, "%s", host);
        s->listen_port = bound_port;
    }
    return bound_port;
}

int http_server_listen(http_server *s, const char *host, int port)
{
    struct evconnlistener *listener = http_listener_open(s->base, host, port, false, NULL);
    return listener ? http_server_listen_on(s, listener, host) : -1;
}

void http_server_drain(http_server *s, long period_ms, void (*done)(void *arg), void *arg)
{
    s->draining = true;
    s->drain_done = done;
    s->drain_arg = arg;
    log_info("msg=\"http draining\" period_ms=%ld inflight=%d unflushed=%d", period_ms,
             s->inflight, s->unflushed);
    struct timeval tv = { period_ms > 0 ? period_ms / 1000 : 0,
                          period_ms > 0 ? (period_ms % 1000) * 1000 : 0 };
    evtimer_add(s->period_timer, &tv);   /* 0: on the loop's next turn */
}

int http_server_inflight(const http_server *s)
{
    return s->inflight;
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
        http_req_orphan(r);
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
    event_free(s->accept_resume);
    for (int i = 0; i < MAX_SERVERS; i++)
        if (servers[i] == s) servers[i] = NULL;
    while (s->pool) {
        http_req *next = s->pool->next;
        http_req_destroy(s->pool);
        s->pool = next;
    }
    event_free(s->drain_event);
    event_free(s->period_timer);
    if (s->drain_grace)
        event_free(s->drain_grace);
    http_route_free(s->root);
    free(s->fallback_label);
    free(s->fallback_metric_label);
    free(s->public_base_url);
    evhttp_clear_headers(&s->answer_headers);
    free(s);
}

int http_server_set_public_base_url(http_server *s, const char *url)
{
    size_t len = strlen(url);
    while (len > 0 && url[len - 1] == '/')
        len--;
    size_t scheme = strncmp(url, "https://", 8) == 0 ? 8 : strncmp(url, "http://", 7) == 0 ? 7 : 0;
    if (scheme == 0 || len <= scheme || len > 255)
        return -1;
    for (size_t i = scheme; i < len; i++) {
        unsigned char c = (unsigned char)url[i];
        /* It is written into JSON and headers as it is: no quotes, no
         * spaces, nothing a client could mistake for the end of a value. */
        if (c <= ' ' || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '?' ||
            c == '#')
            return -1;
    }
    free(s->public_base_url);
    s->public_base_url = mem_must(strndup(url, len));
    return 0;
}

void http_server_add_answer_header(http_server *s, const char *name, const char *value)
{
    evhttp_add_header(&s->answer_headers, name, value);
}

void http_server_set_connection_factory(http_server *s, http_connection_factory fn, void *arg)
{
    s->make_bev = fn;
    s->make_bev_arg = arg;
}
