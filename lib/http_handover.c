/* http_handover.c: the listening socket handed from a running process to
 * its next release (http.h), so that a redeploy on one host refuses and
 * resets no connection.
 *
 * Why not SO_REUSEPORT alone. With SO_REUSEPORT the new process binds a
 * socket of its own on the same port, and the kernel spreads new
 * connections over both sockets by a hash. When the old process then
 * closes its socket, every connection already hashed to it and waiting in
 * its accept queue (the handshake done, the client perhaps already
 * sending) is reset: under steady load a few requests fail at every
 * rollout. Linux can move them instead (net.ipv4.tcp_migrate_req, 5.14+),
 * but that is a system-wide setting, off by default and not ours to turn
 * on; "keep accepting until no longer chosen" cannot work either, since a
 * socket stays in the hash group until it is closed.
 *
 * So the socket itself is handed over, as nginx does on a binary upgrade:
 * the running process offers the descriptor of its listening socket on a
 * Unix socket (HTTP_HANDOVER_SOCKET, a path only its user can reach: the
 * process umask is 077); a new process, before it would bind, connects
 * there and receives a duplicate of that descriptor (SCM_RIGHTS). Both
 * processes then accept from ONE socket and one queue; the old one, when
 * told to stop, closes its duplicate, which closes nothing while the new
 * one holds the socket: no connection waits anywhere it could be lost.
 * The new process then offers the socket in turn (it re-binds the path),
 * so the next release takes it from there. If nobody answers (first start,
 * or the previous process died), the new one binds as usual, with
 * SO_REUSEPORT so that it can start even beside a wedged old process.
 *
 * The exchange is one connection, one byte of data with the descriptor
 * attached, from the offering side's loop (a fresh Unix socket's buffer
 * always has room for it, so the send never waits); the taking side reads
 * it before its loop runs, with a 2 s timeout. The descriptor received is
 * checked: a listening TCP socket bound to the expected port. */
#include "http_private.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <netinet/in.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "log.h"
#include "mem.h"

#define HANDOVER_TAKE_TIMEOUT_S 2

struct http_handover {
    struct evconnlistener *control;     /* the Unix socket at path */
    char *path;
    int listen_fd;
    ino_t ino;                          /* of the path as we bound it */
    unsigned long given;
};

static bool http_handover_address(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa->sun_path) {
        log_error("msg=\"handover socket path too long\" path=%s max=%zu", path,
                  sizeof sa->sun_path - 1);
        return false;
    }
    snprintf(sa->sun_path, sizeof sa->sun_path, "%s", path);
    return true;
}

/* The descriptor carried by one message, or -1. */
static int http_handover_receive(int conn)
{
    char byte;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    ssize_t n;
    do
        n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n != 1 || (msg.msg_flags & MSG_CTRUNC))
        return -1;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (c == NULL || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS ||
        c->cmsg_len != CMSG_LEN(sizeof(int)))
        return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

/* A listening TCP socket on `port` (0: any)? */
static bool http_handover_usable(int fd, int port)
{
    int listening = 0, type = 0;
    socklen_t len = sizeof listening;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening)
        return false;
    len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM)
        return false;
    struct sockaddr_storage addr;
    len = sizeof addr;
    if (getsockname(fd, (struct sockaddr *)&addr, &len) != 0)
        return false;
    int bound = addr.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&addr)->sin_port)
              : addr.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&addr)->sin6_port)
              : -1;
    return bound > 0 && (port == 0 || bound == port);
}

struct evconnlistener *http_handover_take(struct event_base *base, const char *path, int port)
{
    struct sockaddr_un sa;
    if (!http_handover_address(path, &sa))
        return NULL;
    int conn = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (conn < 0)
        return NULL;
    struct timeval tv = {HANDOVER_TAKE_TIMEOUT_S, 0};
    setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(conn, (struct sockaddr *)&sa, sizeof sa) != 0) {
        /* Nobody there (first start, or the previous process is gone). */
        close(conn);
        return NULL;
    }
    int fd = http_handover_receive(conn);
    close(conn);
    if (fd < 0) {
        log_warn("msg=\"no listening socket handed over: binding a new one\" path=%s", path);
        return NULL;
    }
    if (!http_handover_usable(fd, port)) {
        log_warn("msg=\"the socket handed over is not a listening socket on our port: "
                 "binding a new one\" path=%s port=%d", path, port);
        close(fd);
        return NULL;
    }
    evutil_make_socket_nonblocking(fd);
    /* Backlog 0: it listens already (libevent calls listen() only for a
     * positive one). */
    struct evconnlistener *l = evconnlistener_new(base, NULL, NULL,
                                                  LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
                                                  0, fd);
    if (l == NULL) {
        close(fd);
        return NULL;
    }
    log_info("msg=\"listening socket taken over from the running process\" path=%s port=%d",
             path, port);
    return l;
}

/* One process asking: it gets the descriptor, and the connection ends. */
static void http_handover_give(struct evconnlistener *l, evutil_socket_t conn,
                               struct sockaddr *addr, int len, void *arg)
{
    (void)l;
    (void)addr;
    (void)len;
    http_handover *h = arg;
    char byte = 'L';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &h->listen_fd, sizeof h->listen_fd);
    ssize_t n;
    do
        n = sendmsg(conn, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n == 1) {
        h->given++;
        log_info("msg=\"listening socket handed to a new process\" path=%s given=%lu", h->path,
                 h->given);
    } else {
        log_warn("msg=\"cannot hand the listening socket over\" path=%s reason=\"%s\"", h->path,
                 strerror(errno));
    }
    evutil_closesocket(conn);
}

http_handover *http_handover_offer(struct event_base *base, const char *path, int listen_fd)
{
    struct sockaddr_un sa;
    if (!http_handover_address(path, &sa))
        return NULL;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return NULL;
    /* The path may name the previous process's socket (which handed us the
     * listener, or died): this process answers there from now on. */
    unlink(path);
    struct stat sb;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || stat(path, &sb) != 0) {
        log_error("msg=\"cannot offer the listening socket\" path=%s reason=\"%s\"", path,
                  strerror(errno));
        close(fd);
        return NULL;
    }
    http_handover *h = mem_must(calloc(1, sizeof *h));
    h->path = mem_must(strdup(path));
    h->listen_fd = listen_fd;
    h->ino = sb.st_ino;
    h->control = evconnlistener_new(base, http_handover_give, h,
                                    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 8, fd);
    if (h->control == NULL) {
        log_error("msg=\"cannot offer the listening socket\" path=%s", path);
        close(fd);
        unlink(path);
        free(h->path);
        free(h);
        return NULL;
    }
    log_info("msg=\"listening socket offered to the next release\" path=%s", path);
    return h;
}

void http_handover_stop(http_handover *h)
{
    if (h == NULL)
        return;
    evconnlistener_free(h->control);
    /* A newer process may have bound the path since: leave its socket. */
    struct stat sb;
    if (stat(h->path, &sb) == 0 && sb.st_ino == h->ino)
        unlink(h->path);
    free(h->path);
    free(h);
}
