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
 * The limits (4 s to see a close) only turn a hang into a failure. */
#include "testing.h"

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
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0)
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
    int port = http_server_listen(s, "127.0.0.1", 0);
    CHECK(port > 0);

    test_trickled_headers(port);
    test_trickled_body(port);
    test_silent_connection(port);
    test_slow_handler_keeps_connection(port);
    test_keepalive_requests_keep_connection(port);

    http_server_free(s);
    event_base_free(base);
    return test_done("test_http_deadline");
}
