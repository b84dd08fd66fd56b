/* http_conn.c: the server's connections (http_private.h).
 *
 * evhttp builds each accepted connection's bufferevent through our
 * callback, which records the connection; it is adopted on the same loop
 * turn, before any of its bytes are read: from then on its close callback
 * is ours, for its whole life. Through it the connection knows the
 * request waiting for a handler's answer and whether an answer is still
 * being written. It also carries the read deadline: evhttp's timeout is
 * per read, so a client sending a byte now and then (slowloris) would hold
 * a connection for ever; instead a request must be complete within
 * HTTP_IDLE_TIMEOUT_S of the connection becoming ready for it (accepted,
 * or its previous answer written out), else the connection is closed. The
 * clock stops while a handler works and while its answer is written.
 *
 * Framing. Every byte a client sends passes the RFC 9112 check of
 * http_frame.h (an evbuffer callback on the connection's input, which runs
 * as bytes are added, before evhttp's read callback parses them). A
 * refusal drains the input, so evhttp never parses the offending request,
 * takes the bufferevent's callbacks from evhttp, writes the contract's
 * JSON error (Connection: close) and closes the connection once written.
 * An earlier request still being answered there loses its answer instead:
 * a pipelining client that then breaks the framing is not owed one. The
 * input is also bounded (a read high-water mark of one whole request), so
 * a client that pipelines without reading answers stops being read.
 *
 * In libevent 2.1, a connection that fails while a request is pending
 * detaches the request (its connection becomes NULL) instead of freeing
 * it; sending on such a request frees it. http_req_client sorts that out
 * for the answer path: no evhttp_request or a detached one means the
 * client is gone. */
#include "http_private.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "log.h"
#include "mem.h"
#include "metrics.h"

/* evhttp creates the bufferevent of each accepted connection through this
 * callback, before the connection object exists: the connection is
 * recorded here and adopted (below) once evhttp has finished setting it
 * up, later in the same loop turn and before any of its bytes are read.
 * The extra reference keeps the bufferevent valid until then, whatever
 * evhttp does meanwhile. Options 0 are evhttp's own defaults. */
struct bufferevent *http_conn_new_bev(struct event_base *base, void *arg)
{
    http_server *s = arg;
    struct bufferevent *bev = s->make_bev ? s->make_bev(base, s->make_bev_arg)
                                          : bufferevent_socket_new(base, -1, 0);
    if (!bev)
        return NULL;   /* evhttp tries to make one, and drops the connection if it cannot */
    http_conn *c = mem_must(calloc(1, sizeof *c));
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
static void on_read_deadline(evutil_socket_t fd, short what, void *arg);

/* ---- framing refusals ---- */

static void close_when_written(struct bufferevent *bev, void *arg)
{
    (void)bev;
    http_conn *c = arg;
    event_active(c->deadline, EV_TIMEOUT, 1);   /* closes it outside libevent's callback */
}

static void close_on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)what;
    close_when_written(bev, arg);
}

static void refuse_connection(http_conn *c, struct evbuffer *input)
{
    const http_frame *f = &c->frame;
    http_server *s = c->server;
    c->refused = true;
    /* The reason, with the limit when a limit was passed. */
    char message[200];
    if (f->status == 413)
        snprintf(message, sizeof message, "the request body is larger than the limit of %zu bytes",
                 s->max_body);
    else if (f->status == 431)
        snprintf(message, sizeof message, "the request line and headers are larger than the limit "
                 "of %zu bytes", s->max_headers);
    else
        snprintf(message, sizeof message, "%s", f->why);
    bufferevent_disable(c->bev, EV_READ);
    evbuffer_drain(input, evbuffer_get_length(input));
    char labels[32], why[160];
    snprintf(labels, sizeof labels, "status=\"%d\"", f->status);
    metrics_counter_add("carshare_http_refused_total", labels, 1);
    log_warn("msg=\"request refused by framing\" status=%d why=%s requests_before=%lu", f->status,
             log_quote(why, sizeof why, f->why), f->requests);
    if (c->waiting || c->unflushed || c->held) {
        event_active(c->deadline, EV_TIMEOUT, 1);
        return;
    }
    /* From here the bufferevent is ours: evhttp is between requests (or
     * reading the refused one), and is only told at the close. */
    bufferevent_setcb(c->bev, NULL, close_when_written, close_on_event, c);
    struct evbuffer *body = evbuffer_new();
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t len = body ? http_write_error_body(body, f->status, message, f->path) : 0;
    evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                        "Content-Length: %zu\r\nConnection: close\r\n\r\n", f->status,
                        http_reason(f->status), len);
    if (body) {
        evbuffer_add_buffer(out, body);
        evbuffer_free(body);
    }
    bufferevent_enable(c->bev, EV_WRITE);
}

/* The new bytes again, without chunk extensions: they are taken out of
 * the input and put back as evhttp can read them (http_frame_feed_copy).
 * False when refused. */
static bool feed_rewriting(http_conn *c, struct evbuffer *input, size_t added)
{
    size_t len = evbuffer_get_length(input);
    char *raw = malloc(added), *kept = malloc(added);
    struct evbuffer *tail = evbuffer_new();
    size_t nkept = 0;
    bool ok = raw && kept && tail &&
              evbuffer_remove_buffer(input, tail, len - added) == (int)(len - added) &&
              evbuffer_remove(input, raw, added) == (ev_ssize_t)added;
    /* input now holds the new bytes only: put the older ones back first. */
    if (ok) {
        evbuffer_add_buffer(tail, input);   /* tail: old bytes; input: empty */
        evbuffer_add_buffer(input, tail);
        ok = http_frame_feed_copy(&c->frame, raw, added, kept, &nkept) == added;
        if (ok) evbuffer_add(input, kept, nkept);
    }
    free(raw);
    free(kept);
    if (tail) evbuffer_free(tail);
    return ok;
}

/* Runs as bytes are added to a connection's input: the new ones (the
 * last n_added) go through the framing check before evhttp sees them. A
 * read holding a ';' (rare: a chunk extension, or a ';' in a target or a
 * value) is put back without its chunk extensions (feed_rewriting). */
static void on_input(struct evbuffer *input, const struct evbuffer_cb_info *info, void *arg)
{
    http_conn *c = arg;
    if (info->n_added == 0 || c->refused || c->rewriting)
        return;     /* evhttp draining what it parsed, or our own putting back */
    size_t len = evbuffer_get_length(input);
    struct evbuffer_ptr at;
    if (evbuffer_ptr_set(input, &at, len - info->n_added, EVBUFFER_PTR_SET) != 0)
        return;
    /* The new bytes are nearly always one chunk of the buffer: one peek. */
    struct evbuffer_iovec v[8];
    int n = evbuffer_peek(input, (ev_ssize_t)info->n_added, &at, v, 8);
    bool has_semicolon = n > 8;     /* more pieces than looked at: take the careful path */
    for (int i = 0; i < n && i < 8 && !has_semicolon; i++)
        has_semicolon = memchr(v[i].iov_base, ';', v[i].iov_len) != NULL;
    if (has_semicolon) {
        c->rewriting = true;
        bool ok = feed_rewriting(c, input, info->n_added);
        c->rewriting = false;
        if (!ok) refuse_connection(c, input);
        return;
    }
    size_t left = info->n_added;
    for (int i = 0; i < n && left > 0; i++) {
        size_t take = v[i].iov_len < left ? v[i].iov_len : left;
        if (http_frame_feed(&c->frame, v[i].iov_base, take) < take) {
            refuse_connection(c, input);
            return;
        }
        left -= take;
    }
}

static void conn_index(http_server *s, http_conn *c)
{
    size_t fd = (size_t)c->fd;
    if (fd >= s->conn_by_fd_cap) {
        size_t cap = s->conn_by_fd_cap ? s->conn_by_fd_cap : 256;
        while (cap <= fd)
            cap *= 2;
        s->conn_by_fd = mem_must(realloc(s->conn_by_fd, cap * sizeof *s->conn_by_fd));
        memset(s->conn_by_fd + s->conn_by_fd_cap, 0,
               (cap - s->conn_by_fd_cap) * sizeof *s->conn_by_fd);
        s->conn_by_fd_cap = cap;
    }
    s->conn_by_fd[fd] = c;
}

/* Over HTTP_MAX_CONNECTIONS: answered 503 at once (a plain socket takes
 * the few bytes without waiting) and closed, before anything is read. */
static void refuse_over_cap(http_server *s, http_conn *c, struct evhttp_connection *evcon)
{
    static const char answer[] =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        "Retry-After: 1\r\nConnection: close\r\nContent-Length: 106\r\n\r\n"
        "{\"status\":503,\"error\":\"Service Unavailable\",\"message\":\"too many connections; "
        "try again shortly\",\"path\":\"\"}";
    if (!s->make_bev)
        (void)!send(c->fd, answer, sizeof answer - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    metrics_counter_add("carshare_http_connections_refused_total", "", 1);
    evhttp_connection_free(evcon);
    free(c);
}

/* From now on the connection is ours to watch: its close callback is ours
 * for its whole life, and its first request must arrive in time. A
 * connection over the cap is refused instead. */
void http_conn_adopt(evutil_socket_t fd, short what, void *arg)
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
        s->accept_backoff_ms = 0;   /* accept() works again */
        if (s->nconns >= s->max_conns) {
            refuse_over_cap(s, c, evcon);
            continue;
        }
        metrics_gauge_set("carshare_http_connections", "", (double)++s->nconns);
        int nodelay = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, sizeof nodelay);
        c->deadline = mem_must(evtimer_new(s->base, on_read_deadline, c));
        c->evcon = evcon;
        c->fresh = true;
        s->fresh++;
        http_frame_init(&c->frame, s->max_headers, s->max_body);
        evbuffer_add_cb(bufferevent_get_input(c->bev), on_input, c);
        /* One whole request at most waits unread (bounded buffering). */
        bufferevent_setwatermark(c->bev, EV_READ, 0, s->max_headers + s->max_body + 4096);
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
http_conn *http_conn_of(http_server *s, struct evhttp_request *ev)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(ev);
    if (!evcon)
        return NULL;
    http_conn *c = conn_lookup(s, evcon);
    if (!c && s->unadopted) {
        http_conn_adopt(-1, 0, s);
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
    if (c->fresh)
        s->fresh--;
    if (c->held)    /* libevent frees the request with the connection */
        http_defer_cancel(http_send_held_answer, c);
    if (c->prev) c->prev->next = c->next;
    else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    if ((size_t)c->fd < s->conn_by_fd_cap && s->conn_by_fd[c->fd] == c)
        s->conn_by_fd[c->fd] = NULL;
    metrics_gauge_set("carshare_http_connections", "", (double)--s->nconns);
    event_free(c->deadline);
    free(c);
    http_drain_check(s);
}

/* The evhttp request to write the answer on, or NULL when the client is
 * gone (the answer is then dropped). */
struct evhttp_request *http_req_client(http_req *r)
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
