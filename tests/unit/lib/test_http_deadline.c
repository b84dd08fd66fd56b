/* test_http_deadline.c: the HTTP server (lib/http.c) closes connections that
 * do not deliver a complete request in time, and only those.
 *
 * evhttp's own timeout is per read: a client sending a byte now and then
 * (slowloris) keeps a connection and a half-read request for ever. The
 * server's promise is HTTP_IDLE_TIMEOUT_S for a whole request, counted from
 * the moment the connection is ready for it. Checked with the timeout at 1 s:
 *  - headers trickled a line every 200 ms: the connection is closed;
 *  - a body trickled a byte every 200 ms: the connection is closed;
 *  - a connection that sends nothing: closed (as before);
 *  - a handler that takes 2 s to answer: the answer arrives, and the same
 *    connection serves the next request (handler time does not count);
 *  - a keep-alive connection sending a request every 250 ms for 2.5 s: every
 *    request is answered on it (the clock restarts after each answer).
 *  - an answer larger than the socket buffers, read late: it arrives whole
 *    and the same connection serves the next request (the write event
 *    that finishes a partial write, http_write_now, works and lets go);
 *  - the same answer never read: the connection is closed (write timeout);
 *  - a client that half-closes after its request still gets its answer,
 *    then the connection ends;
 *  - more pipelined requests than the input holds (one whole request's
 *    worth) behind a slow one: the server stops reading, then takes up
 *    again, and every request is answered in order.
 * The limits (4 s to see a close) only turn a hang into a failure. */
#include "testing.h"
#include "testing_http.h"

#include "http.h"

#include <event2/event.h>
#include <event2/thread.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct event_base *base;

/* ---- server side ---- */

static void h_fast(http_req *r, void *arg)
{
    (void)arg;
    http_reply_json(r, 200, json_pack("{s:s}", "path", http_req_path(r)));
}

static void h_echo(http_req *r, void *arg)
{
    (void)arg;
    size_t len;
    http_req_body(r, &len);
    http_reply_json(r, 200, json_pack("{s:I}", "bytes", (json_int_t)len));
}

static void slow_reply(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_reply_json(arg, 200, json_pack("{s:b}", "slow", 1));
}

static void h_slow(http_req *r, void *arg)
{
    (void)arg;
    struct timeval two_s = {2, 0};
    event_base_once(base, -1, EV_TIMEOUT, slow_reply, r, &two_s);
}

/* Larger than loopback's socket buffers (4 MiB to send, 6 MiB to receive
 * at most): the server cannot write it in one go. */
#define BIG_ANSWER (16u << 20)

static void h_big(http_req *r, void *arg)
{
    (void)arg;
    char *body = malloc(BIG_ANSWER);
    memset(body, 'b', BIG_ANSWER);
    http_reply_raw(r, 200, "text/plain", body, BIG_ANSWER);
    free(body);
}

/* ---- client side: a raw socket watched by the loop ---- */

typedef struct {
    int fd;
    char buf[16384];
    size_t len;
    bool closed;
    struct event *readable;
} client;

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    client *c = arg;
    for (;;) {
        ssize_t n = recv(fd, c->buf + c->len, sizeof c->buf - 1 - c->len, MSG_DONTWAIT);
        if (n > 0) {
            c->len += (size_t)n;
            c->buf[c->len] = '\0';
            if (c->len < sizeof c->buf - 1)
                continue;
        } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            c->closed = true;
            event_del(c->readable);
        }
        break;
    }
}

static bool client_open(client *c, int port)
{
    memset(c, 0, sizeof *c);
    if ((c->fd = loopback_connect(port)) < 0)
        return false;
    c->readable = event_new(base, c->fd, EV_READ | EV_PERSIST, on_readable, c);
    event_add(c->readable, NULL);
    return true;
}

static void client_close(client *c)
{
    event_free(c->readable);
    close(c->fd);
}

static void client_send(client *c, const char *text)
{
    if (send(c->fd, text, strlen(text), MSG_NOSIGNAL) < 0)
        c->closed = true;
}

/* Runs the loop for ms milliseconds. */
static void run_for(long ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

static int count_answers(const client *c)
{
    int n = 0;
    for (const char *p = c->buf; (p = strstr(p, "HTTP/1.1 ")); p++)
        n++;
    return n;
}

/* Runs the loop until the client holds `answers` complete answers (each
 * ends with a JSON object's '}'), or it is closed, or 5 s have passed. */
static bool wait_answers(client *c, int answers)
{
    for (int i = 0; i < 100 && !c->closed; i++) {
        if (count_answers(c) >= answers && c->buf[c->len - 1] == '}')
            return true;
        run_for(50);
    }
    return count_answers(c) >= answers && c->len > 0 && c->buf[c->len - 1] == '}';
}

/* Sends `piece` every 200 ms until the server closes or 4 s pass. */
static bool trickled_until_closed(client *c, const char *piece)
{
    for (int i = 0; i < 20 && !c->closed; i++) {
        client_send(c, piece);
        run_for(200);
    }
    return c->closed;
}

/* A client that counts what it receives (the big answer), keeping its
 * start, and reads only once `reading` is set. */
typedef struct {
    int fd;
    size_t got;
    char start[4096];
    int answers;                 /* status lines "HTTP/1.1 200 OK" seen */
    char tail[sizeof "HTTP/1.1 200 OK\r\n"];  /* the last bytes seen, for a line split over reads */
    bool closed;
    struct event *readable;
} sink;

static const char OK_LINE[] = "HTTP/1.1 200 OK\r\n";

/* Counts the status lines in what arrived, across read boundaries. */
static void sink_count(sink *k, const char *p, size_t n)
{
    const size_t line = sizeof OK_LINE - 1;
    char joined[sizeof k->tail + 65536];
    size_t t = strlen(k->tail);
    memcpy(joined, k->tail, t);
    memcpy(joined + t, p, n);
    size_t len = t + n;
    for (size_t i = 0; i + line <= len; i++)
        if (i + line > t && memcmp(joined + i, OK_LINE, line) == 0)
            k->answers++;
    size_t keep = len < line - 1 ? len : line - 1;
    memcpy(k->tail, joined + len - keep, keep);
    k->tail[keep] = '\0';
}

static void on_sink_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    sink *k = arg;
    static char chunk[65536];
    for (;;) {
        ssize_t n = recv(fd, chunk, sizeof chunk, MSG_DONTWAIT);
        if (n > 0) {
            if (k->got < sizeof k->start - 1) {
                size_t keep = sizeof k->start - 1 - k->got;
                memcpy(k->start + k->got, chunk, (size_t)n < keep ? (size_t)n : keep);
            }
            k->got += (size_t)n;
            sink_count(k, chunk, (size_t)n);
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            k->closed = true;
            event_del(k->readable);
        }
        return;
    }
}

static bool sink_open(sink *k, int port)
{
    memset(k, 0, sizeof *k);
    if ((k->fd = loopback_connect(port)) < 0)
        return false;
    k->readable = event_new(base, k->fd, EV_READ | EV_PERSIST, on_sink_readable, k);
    return true;
}

/* The size of the first answer's head in k->start, or 0. */
static size_t sink_head(const sink *k)
{
    const char *end = strstr(k->start, "\r\n\r\n");
    return end ? (size_t)(end - k->start) + 4 : 0;
}

/* ---- the cases ---- */

static void test_trickled_headers(int port)
{
    client c;
    CHECK(client_open(&c, port));
    client_send(&c, "GET /fast HTTP/1.1\r\nHost: x\r\n");
    CHECK(trickled_until_closed(&c, "X-Pad: y\r\n"));
    CHECK_INT(count_answers(&c), 0);   /* the request never completed */
    client_close(&c);
}

static void test_trickled_body(int port)
{
    client c;
    CHECK(client_open(&c, port));
    client_send(&c, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n");
    CHECK(trickled_until_closed(&c, "x"));
    CHECK_INT(count_answers(&c), 0);
    client_close(&c);
}

static void test_silent_connection(int port)
{
    client c;
    CHECK(client_open(&c, port));
    for (int i = 0; i < 20 && !c.closed; i++)
        run_for(200);
    CHECK(c.closed);
    client_close(&c);
}

static void test_slow_handler_keeps_connection(int port)
{
    client c;
    CHECK(client_open(&c, port));
    client_send(&c, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK(wait_answers(&c, 1));
    CHECK(strstr(c.buf, "HTTP/1.1 200") == c.buf);
    CHECK(strstr(c.buf, "\"slow\": true") || strstr(c.buf, "\"slow\":true"));
    client_send(&c, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK(wait_answers(&c, 2));
    CHECK(!c.closed);
    client_close(&c);
}

static void test_keepalive_requests_keep_connection(int port)
{
    client c;
    CHECK(client_open(&c, port));
    for (int i = 1; i <= 10; i++) {
        run_for(250);
        client_send(&c, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n");
        CHECK(wait_answers(&c, i));
    }
    CHECK_INT(count_answers(&c), 10);
    CHECK(!c.closed);
    client_close(&c);
}

static void test_big_answer_read_late(int port)
{
    sink k;
    CHECK(sink_open(&k, port));
    const char *get_big = "GET /big HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK(send(k.fd, get_big, strlen(get_big), MSG_NOSIGNAL) > 0);
    run_for(300);                    /* the server fills the socket, then waits */
    event_add(k.readable, NULL);     /* within the write timeout (1 s) */
    for (int i = 0; i < 100 && !k.closed && (!sink_head(&k) || k.got < sink_head(&k) + BIG_ANSWER); i++)
        run_for(50);
    CHECK(!k.closed);
    CHECK(strstr(k.start, "HTTP/1.1 200") == k.start);
    CHECK(sink_head(&k) > 0);
    CHECK(k.got == sink_head(&k) + BIG_ANSWER);
    /* The same connection serves the next request. */
    k.got = 0;
    memset(k.start, 0, sizeof k.start);
    const char *get_fast = "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK(send(k.fd, get_fast, strlen(get_fast), MSG_NOSIGNAL) > 0);
    for (int i = 0; i < 100 && !k.closed && !strchr(k.start, '}'); i++)
        run_for(50);
    CHECK(strstr(k.start, "HTTP/1.1 200") == k.start);
    CHECK(strstr(k.start, "/fast") != NULL);
    CHECK(!k.closed);
    event_free(k.readable);
    close(k.fd);
}

static void test_big_answer_never_read(int port)
{
    sink k;
    CHECK(sink_open(&k, port));
    const char *get_big = "GET /big HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK(send(k.fd, get_big, strlen(get_big), MSG_NOSIGNAL) > 0);
    run_for(3000);                   /* well past the write timeout (1 s) */
    event_add(k.readable, NULL);     /* what the kernel holds, then the close */
    for (int i = 0; i < 100 && !k.closed; i++)
        run_for(50);
    CHECK(k.closed);
    CHECK(k.got < BIG_ANSWER);       /* it never got the whole answer */
    event_free(k.readable);
    close(k.fd);
}

static void test_half_close_gets_answer(int port)
{
    sink k;
    CHECK(sink_open(&k, port));
    event_add(k.readable, NULL);
    const char *get_slow = "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK(send(k.fd, get_slow, strlen(get_slow), MSG_NOSIGNAL) > 0);
    shutdown(k.fd, SHUT_WR);         /* all it has to say; the server reads EOF while busy */
    for (int i = 0; i < 100 && !k.closed; i++)
        run_for(50);
    CHECK(k.closed);                 /* ended after the answer */
    CHECK_INT(k.answers, 1);
    CHECK(strstr(k.start, "\"slow\"") != NULL);
    event_free(k.readable);
    close(k.fd);
}

static void test_pipelined_beyond_input_bound(int port)
{
    enum { FAST = 4000 };            /* 4000 x 33 bytes: more than the 78 kB the input holds */
    static const char get_fast[] = "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n";
    size_t len = strlen("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n") + FAST * (sizeof get_fast - 1);
    char *all = malloc(len + 1);
    strcpy(all, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
    for (int i = 0; i < FAST; i++)
        strcat(all + strlen("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n") + (size_t)i * (sizeof get_fast - 1),
               get_fast);
    sink k;
    CHECK(sink_open(&k, port));
    event_add(k.readable, NULL);
    size_t sent = 0;
    for (int i = 0; i < 500 && sent < len; i++) {
        ssize_t n = send(k.fd, all + sent, len - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0)
            sent += (size_t)n;
        else
            run_for(20);
    }
    CHECK(sent == len);
    for (int i = 0; i < 200 && !k.closed && k.answers < FAST + 1; i++)
        run_for(50);
    CHECK_INT(k.answers, FAST + 1);
    CHECK(strstr(k.start, "\"slow\"") != NULL);    /* the first, answered first */
    CHECK(!k.closed);
    event_free(k.readable);
    close(k.fd);
    free(all);
}

int main(void)
{
    evthread_use_pthreads();
    base = event_base_new();
    setenv("HTTP_IDLE_TIMEOUT_S", "1", 1);
    http_server *s = http_server_new(base);
    unsetenv("HTTP_IDLE_TIMEOUT_S");
    http_server_route(s, "GET", "/fast", h_fast, NULL);
    http_server_route(s, "GET", "/slow", h_slow, NULL);
    http_server_route(s, "POST", "/echo", h_echo, NULL);
    http_server_route(s, "GET", "/big", h_big, NULL);
    int port = http_server_listen(s, "127.0.0.1", 0);
    CHECK(port > 0);

    test_trickled_headers(port);
    test_trickled_body(port);
    test_silent_connection(port);
    test_slow_handler_keeps_connection(port);
    test_keepalive_requests_keep_connection(port);
    test_big_answer_read_late(port);
    test_big_answer_never_read(port);
    test_half_close_gets_answer(port);
    test_pipelined_beyond_input_bound(port);

    http_server_free(s);
    event_base_free(base);
    return test_done("test_http_deadline");
}
