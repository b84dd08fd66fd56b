/* http_conn.c: the server's connections (http_private.h), on plain
 * bufferevents: accept, read, frame, hand each request over, write the
 * answer, keep the connection alive, close it.
 *
 * Why not evhttp. evhttp was about 2/3 of the gateway's instructions per
 * proxied request (a malloc'ed request, its header lists and every header
 * string duplicated, a URI parse, lines read one evbuffer_readln at a
 * time), it is lenient where leniency is a smuggling risk and it answers
 * some refusals in HTML. Here every byte passes the RFC 9112 check of
 * http_frame.h once, which also says where each request ends; a request
 * is read only once it is whole, its head copied into the request's arena
 * and split in place (no allocation), its body copied (or its chunks
 * decoded) after it.
 *
 * One request at a time per connection. While a request is handled and
 * its answer written, pipelined requests wait in the input, which is
 * bounded by one whole request (conn_input_max), so a client that
 * pipelines without reading answers stops being read. Reading is not
 * switched off meanwhile (that would be two epoll_ctl calls per request):
 * an EOF then (a client that half-closed after its request) lets the
 * answer be written and ends the connection after it. Once the answer is
 * written, the next request is taken from the input, or the connection
 * waits.
 *
 * The read deadline: a request must be complete within HTTP_IDLE_TIMEOUT_S
 * of the connection becoming ready for it (accepted, or its previous answer
 * written out), however slowly it trickles (slowloris); the clock stops
 * while a handler works and while its answer is written. The timer is not
 * deleted when a request arrives and added again when its answer is out
 * (an event_del and an event_add per request: measured on a proxied
 * request, 28.75k -> 28.24k instructions, callgrind): it stays armed, the
 * connection notes when it became ready (ready_ns), and when the timer
 * fires it ignores a busy connection (the answer's end arms it again) and
 * re-arms itself for what is left if the connection became ready since.
 * An answer the client does not take within the same time closes the
 * connection (the bufferevent's write timeout).
 *
 * Refusals. A framing refusal drains the input, writes the contract's JSON
 * error with Connection: close and closes the connection once written. An
 * earlier request still being answered there loses its answer instead: a
 * pipelining client that then breaks the framing is not owed one.
 *
 * Reading. A plain connection's socket is read here (on_readable), one
 * recv straight into the free space of the bufferevent's input; its
 * bufferevent only writes. The bufferevent's own reading asks the socket
 * how much it holds (ioctl FIONREAD) before every readv, and its read
 * high-water mark re-adds the read event (event_add) at every change of
 * the input. Measured on the gateway (GET proxied to bench-hello; the
 * upstream side, httpc_conn.c, reads the same way), per request: syscalls
 * 7.1 -> 5.1 (the two ioctl; nginx's worker 6.1), instructions 30.4k ->
 * 28.7k (callgrind), CPU 9.74 -> 8.81 us (nginx 8.27; proxy_cost.py). A TLS
 * connection reads through its bufferevent, bounded by a read high-water
 * mark of one whole request.
 *
 * Closing is never done inside a bufferevent callback or an answer's call
 * stack: it is scheduled (the connection's deadline event made active),
 * so nothing above still holds the connection when it is freed. */
#include "http_private.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "log.h"
#include "mem.h"
#include "metrics.h"

static void conn_process(http_conn *c);

/* ---- closing ---- */

static void conn_free(http_conn *c)
{
    http_server *s = c->server;
    if (c->waiting) {               /* its handler answers later: to nobody */
        c->waiting->conn = NULL;
        c->waiting = NULL;
    }
    if (c->unflushed)
        s->unflushed--;
    if (c->fresh)
        s->fresh--;
    if (c->held) {
        http_defer_cancel(http_send_held_answer, c);
        evbuffer_free(c->held);
    }
    if (c->prev) c->prev->next = c->next;
    else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    metrics_gauge_set("carshare_http_connections", "", (double)--s->nconns);
    event_free(c->deadline);
    if (c->readable)
        event_free(c->readable);
    bufferevent_free(c->bev);       /* closes the socket (BEV_OPT_CLOSE_ON_FREE) */
    free(c);
    http_drain_check(s);
}

/* Arms the read deadline unless it is armed already (see the top). */
static void deadline_arm(http_conn *c)
{
    if (!c->deadline_armed) {
        c->deadline_armed = true;
        event_add(c->deadline, c->server->read_deadline_tv);
    }
}

/* The deadline event doubles as the deferred close: it runs from the loop,
 * with nothing of this connection on the stack. */
static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_conn *c = arg;
    c->deadline_armed = false;
    if (!c->closing) {
        if (c->busy)
            return;     /* the clock stopped: on_flushed starts it again */
        const struct timeval *idle = &c->server->read_deadline;
        unsigned long long due = c->ready_ns + (unsigned long long)idle->tv_sec * 1000000000ULL +
                                 (unsigned long long)idle->tv_usec * 1000ULL;
        unsigned long long now = http_now_ns();
        if (now < due) {    /* it became ready again since the timer was set */
            unsigned long long left_us = (due - now + 999) / 1000;
            struct timeval tv = {(time_t)(left_us / 1000000), (suseconds_t)(left_us % 1000000)};
            c->deadline_armed = true;
            event_add(c->deadline, &tv);
            return;
        }
    }
    conn_free(c);
}

static void conn_close_soon(http_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    if (c->readable)
        event_del(c->readable);
    event_active(c->deadline, EV_TIMEOUT, 1);
}

/* A connection is idle when it has served a request (one accepted but
 * with no request yet is "fresh": the drain waits for it) and nothing of
 * it is being handled, held for group commit or written out, and no byte
 * of a next request has arrived (empty lines before one are skipped, so a
 * client that ends a POST with an extra CRLF is idle too). The drain's end
 * closes those (http.c). */
static bool conn_idle(const http_conn *c)
{
    return !c->fresh && !c->busy && !c->waiting && !c->unflushed && !c->held && !c->closing &&
           evbuffer_get_length(bufferevent_get_input(c->bev)) == c->fed &&
           http_frame_idle(&c->frame);
}

int http_server_close_idle(http_server *s)
{
    int closed = 0;
    for (http_conn *c = s->conns; c; c = c->next)
        if (conn_idle(c)) {
            conn_close_soon(c);
            closed++;
        }
    return closed;
}

void http_server_close_conns(http_server *s)
{
    while (s->conns)
        conn_free(s->conns);
}

/* ---- the answer's end ---- */

/* The answer is on the wire: close, or wait for the next request. */
static void on_flushed(http_conn *c)
{
    http_server *s = c->server;
    c->unflushed = false;
    s->unflushed--;
    http_drain_check(s);
    if (c->close_after) {
        conn_close_soon(c);
        return;
    }
    if (c->peer_closed) {      /* it said all it had to say: done */
        conn_close_soon(c);
        return;
    }
    c->busy = false;
    c->ready_ns = http_now_ns();
    deadline_arm(c);
    if (!c->processing)
        conn_process(c);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    http_conn *c = arg;
    if (c->closing || evbuffer_get_length(bufferevent_get_output(bev)) > 0)
        return;
    if (c->refused) {
        conn_close_soon(c);
        return;
    }
    if (c->unflushed && !c->held)
        on_flushed(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    http_conn *c = arg;
    if (what & BEV_EVENT_CONNECTED)
        return;             /* a TLS handshake done: the connection begins */
    if ((what & BEV_EVENT_EOF) && (what & BEV_EVENT_READING) && c->busy && !c->closing) {
        /* The client closed its side after a request (a half-close): it
         * still gets its answer, then the connection ends. */
        c->peer_closed = true;
        return;
    }
    conn_close_soon(c);     /* EOF, an error, or the write timeout: the end either way */
}

void http_conn_answered(http_conn *c, bool close_after)
{
    c->unflushed = true;
    c->close_after = close_after;
    c->server->unflushed++;
}

void http_conn_write(http_conn *c)
{
    if (c->closing)
        return;
    if (c->server->make_bev)       /* TLS: only the bufferevent may write its socket */
        bufferevent_enable(c->bev, EV_WRITE);
    else
        http_write_now(c->bev);
}

/* ---- framing refusals ---- */

static void refuse_connection(http_conn *c, struct evbuffer *input)
{
    const http_frame *f = &c->frame;
    http_server *s = c->server;
    c->refused = true;
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
    if (c->readable)
        event_del(c->readable);
    evbuffer_drain(input, evbuffer_get_length(input));
    char labels[32], why[160];
    snprintf(labels, sizeof labels, "status=\"%d\"", f->status);
    metrics_counter_add("carshare_http_refused_total", labels, 1);
    log_warn("msg=\"request refused by framing\" status=%d why=%s requests_before=%lu", f->status,
             log_quote(why, sizeof why, f->why), f->requests);
    if (c->busy) {      /* an earlier request is being answered: it loses its answer */
        conn_close_soon(c);
        return;
    }
    event_del(c->deadline);
    c->deadline_armed = false;
    struct evbuffer *body = s->scratch;
    evbuffer_drain(body, evbuffer_get_length(body));
    size_t len = http_write_error_body(body, f->status, message, f->path);
    struct evbuffer *out = bufferevent_get_output(c->bev);
    evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                        "Content-Length: %zu\r\nConnection: close\r\n\r\n", f->status,
                        http_reason(f->status), len);
    evbuffer_add_buffer(out, body);
    if (s->make_bev) {
        bufferevent_enable(c->bev, EV_WRITE);
    } else {
        http_write_now(c->bev);
        if (evbuffer_get_length(out) == 0)
            conn_close_soon(c);
    }
}

/* ---- reading ---- */

/* The most a connection's input holds: one whole request (the read
 * high-water mark). */
static size_t conn_input_max(const http_server *s)
{
    return s->max_headers + s->max_body + 4096;
}

/* Feeds the input the frame has not seen yet, up to the end of one
 * request. 1: a request is whole (its bytes are the first c->fed of the
 * input); 0: more bytes are needed; -1: refused. */
static int feed_frame(http_conn *c, struct evbuffer *input)
{
    size_t len = evbuffer_get_length(input);
    while (c->fed < len) {
        struct evbuffer_ptr at;
        if (evbuffer_ptr_set(input, &at, c->fed, EVBUFFER_PTR_SET) != 0)
            return 0;
        struct evbuffer_iovec v[4];
        int n = evbuffer_peek(input, (ev_ssize_t)(len - c->fed), &at, v, 4);
        if (n > 4) n = 4;
        for (int i = 0; i < n; i++) {
            bool ended = false;
            size_t used = http_frame_feed_message(&c->frame, v[i].iov_base, v[i].iov_len, &ended);
            c->fed += used;
            if (c->frame.status)
                return -1;
            if (ended)
                return 1;
        }
    }
    return 0;
}

/* "Expect: 100-continue" on a body we will take: the client may send it. */
static void maybe_continue(http_conn *c)
{
    const http_frame *f = &c->frame;
    if (c->continued || !f->expect_continue || f->minor < 1 || !http_frame_in_body(f))
        return;
    c->continued = true;
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    bufferevent_write(c->bev, cont, sizeof cont - 1);
    http_conn_write(c);
}

/* Takes the requests the input holds, one at a time, while none is being
 * answered. */
static void conn_process(http_conn *c)
{
    http_server *s = c->server;
    struct evbuffer *input = bufferevent_get_input(c->bev);
    c->processing = true;
    while (!c->busy && !c->closing && !c->refused) {
        int whole = feed_frame(c, input);
        if (whole < 0) {
            refuse_connection(c, input);
            break;
        }
        if (whole == 0) {
            if (evbuffer_get_length(input) >= conn_input_max(s)) {
                /* Only chunk framing (sizes, extensions) can make a
                 * request this large whose body is within the limit: it
                 * is kept whole until read, so it is refused instead. */
                c->frame.status = 413;
                c->frame.why = "the request's chunk framing is larger than the limit";
                refuse_connection(c, input);
                break;
            }
            maybe_continue(c);
            break;
        }
        c->busy = true;
        c->continued = false;
        if (c->fresh) {     /* a drain no longer waits for it to say something */
            c->fresh = false;
            s->fresh--;
        }
        if (c->frame.last.lead_len) {   /* empty lines before it: skipped */
            evbuffer_drain(input, c->frame.last.lead_len);
            c->fed -= c->frame.last.lead_len;
        }
        http_req *r = http_req_acquire(s);
        const char *raw_path = "/";
        http_req_parse(r, c, input, &c->frame.last, &raw_path);
        evbuffer_drain(input, c->fed);
        c->fed = 0;
        if (c->read_paused) {   /* room again for what the client sends */
            c->read_paused = false;
            event_add(c->readable, NULL);
        }
        http_server_request(s, r, raw_path);    /* may answer, and write, at once */
    }
    c->processing = false;
}

static void on_read(struct bufferevent *bev, void *arg)
{
    (void)bev;
    http_conn *c = arg;
    if (!c->processing)
        conn_process(c);
}

/* The most one recv takes (the rest is read on the next turn). */
#define CONN_READ_MAX 16384

/* A plain connection's socket is readable (see the top of the file). */
static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    http_conn *c = arg;
    struct evbuffer *input = bufferevent_get_input(c->bev);
    size_t have = evbuffer_get_length(input), max = conn_input_max(c->server);
    if (have >= max) {      /* a whole request waits: the client waits too */
        c->read_paused = true;
        event_del(c->readable);
        return;
    }
    size_t want = max - have < CONN_READ_MAX ? max - have : CONN_READ_MAX;
    int err;
    ssize_t n = http_recv_into(fd, input, want, &err);
    if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK || err == EINTR))
        return;
    if (n <= 0) {           /* the client closed its side, or an error */
        event_del(c->readable);
        on_event(c->bev, (short)(BEV_EVENT_READING | (n == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR)), c);
        return;
    }
    if (!c->processing)
        conn_process(c);
}

/* ---- accepting ---- */

/* Over HTTP_MAX_CONNECTIONS: answered 503 at once (a plain socket takes
 * the few bytes without waiting) and closed, before anything is read. */
static void refuse_over_cap(http_server *s, evutil_socket_t fd)
{
    static const char answer[] =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        "Retry-After: 1\r\nConnection: close\r\nContent-Length: 106\r\n\r\n"
        "{\"status\":503,\"error\":\"Service Unavailable\",\"message\":\"too many connections; "
        "try again shortly\",\"path\":\"\"}";
    if (!s->make_bev)
        (void)!send(fd, answer, sizeof answer - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    metrics_counter_add("carshare_http_connections_refused_total", "", 1);
    evutil_closesocket(fd);
}

static void peer_text(const struct sockaddr *sa, char *out, size_t size)
{
    const char *p = NULL;
    if (sa->sa_family == AF_INET)
        p = evutil_inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, size);
    else if (sa->sa_family == AF_INET6)
        p = evutil_inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, size);
    if (!p)
        snprintf(out, size, "-");
}

/* A connection accepted over the cap waits for the end of the loop turn
 * before it is refused: closes seen in the same turn (a client that just
 * hung up) may have made room, and their callbacks can run after ours. */
typedef struct http_pending {
    evutil_socket_t fd;
    struct sockaddr_storage addr;
    struct http_pending *next;
} http_pending;

static void conn_open(http_server *s, evutil_socket_t fd, const struct sockaddr *sa);

void http_conn_check_pending(evutil_socket_t unused, short what, void *arg)
{
    (void)unused;
    (void)what;
    http_server *s = arg;
    http_pending *first = NULL;     /* in the order accepted */
    while (s->over_cap) {
        http_pending *p = s->over_cap;
        s->over_cap = p->next;
        p->next = first;
        first = p;
    }
    while (first) {
        http_pending *p = first;
        first = p->next;
        if (s->nconns >= s->max_conns)
            refuse_over_cap(s, p->fd);
        else
            conn_open(s, p->fd, (const struct sockaddr *)&p->addr);
        free(p);
    }
}

void http_server_drop_pending(http_server *s)
{
    while (s->over_cap) {
        http_pending *p = s->over_cap;
        s->over_cap = p->next;
        evutil_closesocket(p->fd);
        free(p);
    }
}

void http_conn_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int socklen, void *arg)
{
    (void)l;
    http_server *s = arg;
    s->accept_backoff_ms = 0;   /* accept() works again */
    if (s->nconns < s->max_conns) {
        conn_open(s, fd, sa);
        return;
    }
    http_pending *p = mem_must(calloc(1, sizeof *p));
    p->fd = fd;
    if (socklen > 0 && (size_t)socklen <= sizeof p->addr)
        memcpy(&p->addr, sa, (size_t)socklen);
    p->next = s->over_cap;
    s->over_cap = p;
    event_active(s->cap_event, EV_TIMEOUT, 0);
}

static void conn_open(http_server *s, evutil_socket_t fd, const struct sockaddr *sa)
{
    struct bufferevent *bev;    /* the listener made the socket non-blocking */
    if (s->make_bev) {
        bev = s->make_bev(s->base, s->make_bev_arg);
        if (bev && bufferevent_setfd(bev, fd) != 0) {
            bufferevent_free(bev);
            bev = NULL;
        }
    } else {
        bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    if (!bev) {
        log_warn("msg=\"connection dropped: out of memory\"");
        evutil_closesocket(fd);
        return;
    }
    http_conn *c = mem_must(calloc(1, sizeof *c));
    c->server = s;
    c->bev = bev;
    c->fd = fd;
    peer_text(sa, c->peer, sizeof c->peer);
    /* An answer is written whole, then the next request waits for it:
     * Nagle would hold the answer's last segment until the client's
     * delayed ACK (40 ms). Fails harmlessly on a non-TCP socket. */
    int nodelay = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, sizeof nodelay);
    c->deadline = mem_must(evtimer_new(s->base, on_deadline, c));
    http_frame_init(&c->frame, s->max_headers, s->max_body);
    bufferevent_setcb(bev, on_read, on_write, on_event, c);
    bufferevent_set_timeouts(bev, NULL, &s->write_timeout);
    if (s->make_bev) {
        /* One whole request at most waits unread (bounded buffering). */
        bufferevent_setwatermark(bev, EV_READ, 0, conn_input_max(s));
        bufferevent_enable(bev, EV_READ | EV_WRITE);
    } else {
        /* Read here, not by the bufferevent; its EV_WRITE is enabled only
         * while an answer waits for room (http_write_now): enabled now, it
         * would cost an EPOLLOUT wake-up and two epoll_ctl. */
        c->readable = mem_must(event_new(s->base, fd, EV_READ | EV_PERSIST, on_readable, c));
        event_add(c->readable, NULL);
    }
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    c->fresh = true;
    s->fresh++;
    metrics_gauge_set("carshare_http_connections", "", (double)++s->nconns);
    c->ready_ns = http_now_ns();
    deadline_arm(c);
}

/* The connection to write r's answer on, or NULL when the client is gone
 * (the answer is then dropped). */
http_conn *http_req_client(http_req *r)
{
    http_conn *c = r->conn;
    if (c && c->waiting == r)
        c->waiting = NULL;
    if (c && (c->closing || c->refused)) {
        r->conn = NULL;
        return NULL;
    }
    return c;
}
