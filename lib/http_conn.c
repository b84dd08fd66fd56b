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

#include "mem.h"

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

/* From now on the connection is ours to watch: its close callback is ours
 * for its whole life, and its first request must arrive in time. */
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
        int nodelay = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, sizeof nodelay);
        c->deadline = mem_must(evtimer_new(s->base, on_read_deadline, c));
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
    if (c->held)    /* libevent frees the request with the connection */
        http_defer_cancel(http_send_held_answer, c);
    if (c->prev) c->prev->next = c->next;
    else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    if ((size_t)c->fd < s->conn_by_fd_cap && s->conn_by_fd[c->fd] == c)
        s->conn_by_fd[c->fd] = NULL;
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
