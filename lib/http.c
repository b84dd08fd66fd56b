/* http.c: the HTTP server of every carshare process: its lifecycle and
 * dispatch.
 *
 * Connections are read and framed by http_conn.c on plain bufferevents
 * (no evhttp: see there why); each whole request comes here, is wrapped in
 * an http_req, routed, and its answer owned by http_answer.c, so that
 * every answer (errors included) has the contract's shape, a request id,
 * an access-log line and its metrics.
 *
 * Files (http_private.h): this one, the lifecycle and dispatch; the route
 * trie (http_route.c); connections, reading and the read deadline
 * (http_conn.c); the answer path (http_answer.c); a request's memory,
 * parsing and accessors (http_req.c); the RFC 9112 framing (http_frame.c).
 *
 * Limits and framing. Every byte first passes the RFC 9112 check of
 * http_frame.h, which refuses in the contract's JSON shape: malformed
 * framing, a declared body over HTTP_MAX_BODY (413 before the body is
 * read), a head over HTTP_MAX_HEADERS (431), unknown methods (501), other
 * major versions (505).
 *
 * Listening. We bind the listener ourselves (http_listener_open, usable
 * by any server on the loop), with a backlog of HTTP_LISTEN_BACKLOG
 * (default 1024; the kernel caps it at net.core.somaxconn): with 128, a
 * burst of connections beyond it has SYNs dropped, and each client then
 * loses a second to the SYN retransmit.
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

/* A body sent with POST, PUT, PATCH or DELETE must say it is JSON
 * (parameters such as "; charset=utf-8" allowed). A browser sends a
 * cross-site form (text/plain, form-urlencoded) without asking first; this
 * refuses it before any handler sees it. */
static bool body_type_acceptable(const http_req *r)
{
    enum evhttp_cmd_type cmd = r->cmd;
    if (cmd != EVHTTP_REQ_POST && cmd != EVHTTP_REQ_PUT && cmd != EVHTTP_REQ_PATCH &&
        cmd != EVHTTP_REQ_DELETE)
        return true;
    const char *ct = http_req_header(r, "Content-Type");
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

void http_server_request(http_server *s, http_req *r, const char *raw_path)
{
    s->inflight++;
    destination d;
    http_route_resolve(s, r, raw_path, &d);
    if (r->body_len > s->max_body) {    /* http_frame refused it already: a bound */
        http_refuse(r, 413, "the request body has %zu bytes; the limit is %zu bytes", r->body_len,
                    s->max_body);
        return;
    }
    if (r->body_len > 0 && !body_type_acceptable(r)) {
        http_refuse(r, 415, "the request body must be JSON, sent with Content-Type: application/json");
        return;
    }
    deliver(s, r, &d);
}

/* ---- the server ---- */

/* accept() failing for lack of descriptors (EMFILE, ENFILE) or memory
 * leaves the connection in the backlog, and the listener would fire again
 * at once: the loop would spin. So accepting pauses instead, 100 ms at
 * first, doubling to 1 s while it lasts (the next accepted connection
 * resets it); meanwhile connections wait in the backlog. */
static void resume_accepting(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_server *s = arg;
    for (int i = 0; i < s->nbound; i++)
        evconnlistener_enable(s->bound[i]);
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    (void)l;
    int err = EVUTIL_SOCKET_ERROR();
    http_server *s = arg;
    if (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM) {
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
        evconnlistener_disable(s->bound[i]);
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
        evconnlistener_free(s->bound[i]);
    s->nbound = 0;
    http_conn_check_pending(-1, 0, s);   /* those accepted over the cap this turn */
    int closed = http_server_close_idle(s);
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
    s->write_timeout.tv_sec = idle_s;
    s->drain_event = mem_must(event_new(base, -1, 0, on_drained, s));
    s->period_timer = mem_must(evtimer_new(base, end_period, s));
    s->accept_resume = mem_must(evtimer_new(base, resume_accepting, s));
    s->cap_event = mem_must(event_new(base, -1, 0, http_conn_check_pending, s));
    s->max_conns = config_int("HTTP_MAX_CONNECTIONS", default_max_connections(), 1, 1000000);
    s->scratch = mem_must(evbuffer_new());
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
    evconnlistener_set_cb(listener, http_conn_accept, s);
    s->bound[s->nbound++] = listener;
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
    /* Frees every connection; requests waiting on them lose their client. */
    for (int i = 0; i < s->nbound; i++)
        evconnlistener_free(s->bound[i]);
    s->nbound = 0;
    http_server_close_conns(s);
    http_server_drop_pending(s);
    event_free(s->cap_event);
    event_free(s->accept_resume);
    evbuffer_free(s->scratch);
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
    free(s->answer_block);
    while (s->answer_headers) {
        http_header *next = s->answer_headers->next;
        free(s->answer_headers);
        s->answer_headers = next;
    }
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

/* The server's own headers as the lines every answer's head carries,
 * made once here rather than for every answer. */
static void answer_block_make(http_server *s)
{
    size_t len = 0;
    for (const http_header *a = s->answer_headers; a; a = a->next)
        len += strlen(a->name) + strlen(a->value) + 4;
    char *block = mem_must(malloc(len + 1));
    size_t at = 0;
    for (const http_header *a = s->answer_headers; a; a = a->next)
        at += (size_t)sprintf(block + at, "%s: %s\r\n", a->name, a->value);
    free(s->answer_block);
    s->answer_block = block;
    s->answer_block_len = at;
}

void http_server_add_answer_header(http_server *s, const char *name, const char *value)
{
    size_t nlen = strlen(name), vlen = strlen(value);
    http_header *h = mem_must(malloc(sizeof *h + nlen + vlen + 2));
    char *text = (char *)(h + 1);
    memcpy(text, name, nlen + 1);
    memcpy(text + nlen + 1, value, vlen + 1);
    h->name = text;
    h->value = text + nlen + 1;
    h->next = NULL;
    http_header **at = &s->answer_headers;
    while (*at) {
        if (strcasecmp((*at)->name, name) == 0) {   /* replaced */
            h->next = (*at)->next;
            free(*at);
            *at = h;
            answer_block_make(s);
            return;
        }
        at = &(*at)->next;
    }
    *at = h;
    answer_block_make(s);
}

void http_server_set_connection_factory(http_server *s, http_connection_factory fn, void *arg)
{
    s->make_bev = fn;
    s->make_bev_arg = arg;
}
