/* test_httpc.c: the HTTP client against real sockets, in one process.
 *
 * The upstreams are written here with raw libevent evhttp (not lib/http.c,
 * so a bug there cannot hide one here), on ephemeral loopback ports:
 *  - a server whose handlers answer 200/404/503 with bodies and headers,
 *    count attempts per path and note which connection each request came on;
 *  - a listening socket that never answers (accepts nothing): timeouts;
 *  - a listening socket whose accept queue is full: SYNs are dropped, so a
 *    connect never completes (connect timeout);
 *  - a port with nothing listening: connection refused;
 *  - a bare keep-alive responder on bufferevents, whose connections the
 *    test can close at a chosen moment (stale pooled connections).
 * Client and servers share one event loop; every wait has a watchdog so a
 * hang is a failure, not a stuck test. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

#include "httpc.h"
#include "metrics.h"
#include "testing.h"

static struct event_base *base;

/* ---- waiting on the loop ---- */

static bool watchdog_fired;

static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    watchdog_fired = true;
}

/* Runs the loop until *counter reaches target, or max_ms passes. */
static bool wait_for(const int *counter, int target, int max_ms)
{
    struct timeval tv = { max_ms / 1000, (max_ms % 1000) * 1000 };
    struct event *dog = evtimer_new(base, watchdog_cb, NULL);
    watchdog_fired = false;
    evtimer_add(dog, &tv);
    while (*counter < target && !watchdog_fired)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(dog);
    if (*counter < target)
        fprintf(stderr, "wait_for: gave up at %d of %d after %d ms\n", *counter, target, max_ms);
    return *counter >= target;
}

static void run_for(int ms)
{
    int never = 0;
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    struct event *dog = evtimer_new(base, watchdog_cb, NULL);
    watchdog_fired = false;
    evtimer_add(dog, &tv);
    while (!never && !watchdog_fired)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(dog);
}

/* ---- the test upstream ---- */

#define MAX_PEERS 256

typedef struct upstream {
    struct evhttp *http;
    int port;
    int hits_flaky, hits_fail, hits_post, hits_total;
    int peer_ports[MAX_PEERS];
    int npeers;
    char last_request_id[64], last_host[64], last_content_type[64], last_content_length[16];
    char last_custom[64], last_connection[32];
} upstream;

static void note_peer(upstream *u, struct evhttp_request *req)
{
    char *addr;
    ev_uint16_t port;
    evhttp_connection_get_peer(evhttp_request_get_connection(req), &addr, &port);
    u->hits_total++;
    for (int i = 0; i < u->npeers; i++)
        if (u->peer_ports[i] == port)
            return;
    if (u->npeers < MAX_PEERS)
        u->peer_ports[u->npeers++] = port;
}

static void copy_header(char *dst, size_t size, struct evhttp_request *req, const char *name)
{
    const char *v = evhttp_find_header(evhttp_request_get_input_headers(req), name);
    snprintf(dst, size, "%s", v ? v : "");
}

static void reply(struct evhttp_request *req, int status, const char *body)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, body, strlen(body));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
    evhttp_send_reply(req, status, NULL, b);
    evbuffer_free(b);
}

static void on_hello(struct evhttp_request *req, void *arg)
{
    upstream *u = arg;
    note_peer(u, req);
    copy_header(u->last_request_id, sizeof u->last_request_id, req, "X-Request-Id");
    copy_header(u->last_host, sizeof u->last_host, req, "Host");
    copy_header(u->last_custom, sizeof u->last_custom, req, "X-Custom");
    copy_header(u->last_connection, sizeof u->last_connection, req, "Connection");
    evhttp_add_header(evhttp_request_get_output_headers(req), "X-Test", "yes");
    reply(req, 200, "hello world");
}

static void on_missing(struct evhttp_request *req, void *arg)
{
    note_peer(arg, req);
    reply(req, 404, "no such thing");
}

/* 503 twice, then 200 */
static void on_flaky(struct evhttp_request *req, void *arg)
{
    upstream *u = arg;
    note_peer(u, req);
    u->hits_flaky++;
    if (u->hits_flaky <= 2)
        reply(req, 503, "try later");
    else
        reply(req, 200, "finally");
}

static void on_fail(struct evhttp_request *req, void *arg)
{
    upstream *u = arg;
    note_peer(u, req);
    u->hits_fail++;
    reply(req, 503, "always down");
}

/* echoes the body back, notes the body headers */
static void on_echo(struct evhttp_request *req, void *arg)
{
    upstream *u = arg;
    note_peer(u, req);
    u->hits_post++;
    copy_header(u->last_content_type, sizeof u->last_content_type, req, "Content-Type");
    copy_header(u->last_content_length, sizeof u->last_content_length, req, "Content-Length");
    copy_header(u->last_request_id, sizeof u->last_request_id, req, "X-Request-Id");
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    evhttp_send_reply(req, 201, "Created", in);
}

/* answers, and closes the connection afterwards */
static void on_close(struct evhttp_request *req, void *arg)
{
    note_peer(arg, req);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
    reply(req, 200, "bye");
}

static void on_prefixed(struct evhttp_request *req, void *arg)
{
    note_peer(arg, req);
    reply(req, 200, "prefixed");
}

/* answers 200 after SLOW_MS, as an upstream completing real work */
#define SLOW_MS 250

static void slow_reply(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    reply(arg, 200, "done");
}

static void on_slow(struct evhttp_request *req, void *arg)
{
    note_peer(arg, req);
    struct timeval tv = { 0, SLOW_MS * 1000 };
    event_base_once(base, -1, EV_TIMEOUT, slow_reply, req, &tv);
}

static bool upstream_start(upstream *u, int port)
{
    memset(u, 0, sizeof *u);
    u->http = evhttp_new(base);
    evhttp_set_cb(u->http, "/hello", on_hello, u);
    evhttp_set_cb(u->http, "/missing", on_missing, u);
    evhttp_set_cb(u->http, "/flaky", on_flaky, u);
    evhttp_set_cb(u->http, "/fail", on_fail, u);
    evhttp_set_cb(u->http, "/slow", on_slow, u);
    evhttp_set_cb(u->http, "/echo", on_echo, u);
    evhttp_set_cb(u->http, "/close", on_close, u);
    evhttp_set_cb(u->http, "/api/v1/hello", on_prefixed, u);
    struct evhttp_bound_socket *bound = evhttp_bind_socket_with_handle(u->http, "127.0.0.1", (ev_uint16_t)port);
    if (!bound) {
        evhttp_free(u->http);
        u->http = NULL;
        return false;
    }
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&sin, &len);
    u->port = ntohs(sin.sin_port);
    return true;
}

static void upstream_stop(upstream *u)
{
    if (u->http)
        evhttp_free(u->http);
    u->http = NULL;
}

/* A bound socket on 127.0.0.1: listening with `backlog`, or (backlog < 0)
 * not listening at all. Returns the fd, port in *port. */
static int raw_socket(int backlog, int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof sin) != 0)
        return -1;
    socklen_t len = sizeof sin;
    getsockname(fd, (struct sockaddr *)&sin, &len);
    *port = ntohs(sin.sin_port);
    if (backlog >= 0 && listen(fd, backlog) != 0)
        return -1;
    return fd;
}

/* A port nothing listens on (bound then closed: connecting is refused). */
static int closed_port(void)
{
    int port = 0;
    int fd = raw_socket(-1, &port);
    close(fd);
    return port;
}

/* ---- a bare keep-alive responder, for stale-connection tests ---- */

typedef struct raw_server {
    struct evconnlistener *listener;
    int port;
    int connections, requests;
    struct bufferevent *last;   /* the latest connection, to close at will */
} raw_server;

static void raw_read(struct bufferevent *bev, void *arg)
{
    raw_server *rs = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    for (;;) {
        struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
        if (end.pos < 0)
            return;
        size_t head = (size_t)end.pos + 4;
        char *h = malloc(head + 1);
        evbuffer_copyout(in, h, head);
        h[head] = '\0';
        const char *cl = strcasestr(h, "\r\nContent-Length:");
        size_t body = cl ? (size_t)strtol(cl + 17, NULL, 10) : 0;
        free(h);
        if (evbuffer_get_length(in) < head + body)
            return;
        evbuffer_drain(in, head + body);
        rs->requests++;
        evbuffer_add_printf(bufferevent_get_output(bev),
                            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    }
}

static void raw_event(struct bufferevent *bev, short what, void *arg)
{
    raw_server *rs = arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        if (rs->last == bev)
            rs->last = NULL;
        bufferevent_free(bev);
    }
}

static void raw_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                       int len, void *arg)
{
    (void)l;
    (void)sa;
    (void)len;
    raw_server *rs = arg;
    struct bufferevent *bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(bev, raw_read, NULL, raw_event, rs);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    rs->connections++;
    rs->last = bev;
}

static bool raw_server_start(raw_server *rs)
{
    memset(rs, 0, sizeof *rs);
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    rs->listener = evconnlistener_new_bind(base, raw_accept, rs,
                                           LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 16,
                                           (struct sockaddr *)&sin, sizeof sin);
    if (!rs->listener)
        return false;
    socklen_t len = sizeof sin;
    getsockname(evconnlistener_get_fd(rs->listener), (struct sockaddr *)&sin, &len);
    rs->port = ntohs(sin.sin_port);
    return true;
}

/* The server closes its side of the latest connection: the FIN reaches the
 * client's socket, but the client's loop has not seen it yet. */
static void raw_server_drop_latest(raw_server *rs)
{
    if (rs->last) {
        /* shutdown sends the FIN now; bufferevent_free closes only later */
        shutdown(bufferevent_getfd(rs->last), SHUT_RDWR);
        bufferevent_free(rs->last);
        rs->last = NULL;
    }
    usleep(20 * 1000);
}

static void raw_server_stop(raw_server *rs)
{
    if (rs->listener)
        evconnlistener_free(rs->listener);
    rs->listener = NULL;
}

static httpc *client_named(const char *name, int port, const char *path,
                                 const httpc_opts *opts)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    return httpc_new(base, name, url, opts);
}

static httpc *client_for(int port, const char *path, const httpc_opts *opts)
{
    return client_named("test", port, path, opts);
}

/* The value of one series in the /metrics text, or -1 when absent. */
static double metric_value(const char *name, const char *labels)
{
    struct evbuffer *out = evbuffer_new();
    metrics_render(out);
    evbuffer_add(out, "", 1);
    const char *text = (const char *)evbuffer_pullup(out, -1);
    char needle[256];
    snprintf(needle, sizeof needle, "\n%s{%s} ", name, labels);
    const char *at = strstr(text, needle);
    double v = at ? strtod(at + strlen(needle), NULL) : -1;
    evbuffer_free(out);
    return v;
}

/* ---- collecting answers ---- */

#define MAX_ANSWERS 128

typedef struct answer {
    httpc_result result;
    int status;
    char body[128];
    size_t body_len;
    bool body_terminated;
    char x_test[16];
    unsigned long long elapsed_ms, retry_after_ms;
    int order;
} answer;

typedef struct collector {
    answer a[MAX_ANSWERS];
    int done;
    bool in_send;        /* set while httpc_send runs: no sync completion */
    int sync_calls;
} collector;

typedef struct slot_arg {
    collector *col;
    int index;
} slot_arg;

static slot_arg args[MAX_ANSWERS];

static void on_answer(const httpc_response *r, void *arg)
{
    slot_arg *sa = arg;
    collector *col = sa->col;
    answer *a = &col->a[sa->index];
    if (col->in_send)
        col->sync_calls++;
    a->result = r->result;
    a->status = r->status;
    a->body_len = r->body_len;
    snprintf(a->body, sizeof a->body, "%.*s", (int)r->body_len, r->body);
    a->body_terminated = r->body[r->body_len] == '\0';
    const char *x = r->headers ? evhttp_find_header(r->headers, "X-Test") : NULL;
    snprintf(a->x_test, sizeof a->x_test, "%s", x ? x : "");
    a->elapsed_ms = r->elapsed_ms;
    a->retry_after_ms = r->retry_after_ms;
    a->order = col->done++;
}

static void send_call(httpc *c, collector *col, int index, const httpc_request *call)
{
    args[index].col = col;
    args[index].index = index;
    col->in_send = true;
    httpc_send(c, call, on_answer, &args[index]);
    col->in_send = false;
}

static void get(httpc *c, collector *col, int index, const char *uri, bool idempotent)
{
    httpc_request call = { .method = "GET", .uri = uri, .idempotent = idempotent };
    send_call(c, col, index, &call);
}

/* ---- the tests ---- */

static void test_answers_and_headers(upstream *u)
{
    collector col = { 0 };
    httpc *c = client_for(u->port, "", NULL);
    CHECK(c != NULL);

    httpc_request call = { .method = "GET", .uri = "/hello", .request_id = "req-42", .idempotent = true };
    send_call(c, &col, 0, &call);
    CHECK_INT(col.done, 0);   /* never completes inside httpc_send */
    get(c, &col, 1, "/missing", true);
    CHECK(wait_for(&col.done, 2, 5000));
    CHECK_INT(col.sync_calls, 0);

    CHECK_INT(col.a[0].result, HTTPC_OK);
    CHECK_INT(col.a[0].status, 200);
    CHECK_STR(col.a[0].body, "hello world");
    CHECK_INT(col.a[0].body_len, 11);
    CHECK(col.a[0].body_terminated);
    CHECK_STR(col.a[0].x_test, "yes");
    CHECK_STR(u->last_request_id, "req-42");
    char host[64];
    snprintf(host, sizeof host, "127.0.0.1:%d", u->port);
    CHECK_STR(u->last_host, host);

    CHECK_INT(col.a[1].result, HTTPC_OK);   /* a 404 is an answer, not a failure */
    CHECK_INT(col.a[1].status, 404);
    CHECK_STR(col.a[1].body, "no such thing");
    CHECK(col.a[1].body_terminated);

    /* a JSON POST: body, Content-Type and Content-Length arrive */
    const char *json = "{\"orderId\": 7, \"amount\": 120000}";
    CHECK_INT(httpc_json(c, "POST", "/echo", "req-43", json, false, on_answer,
                               (args[2] = (slot_arg){ &col, 2 }, &args[2])), 0);
    CHECK(wait_for(&col.done, 3, 5000));
    CHECK_INT(col.a[2].result, HTTPC_OK);
    CHECK_INT(col.a[2].status, 201);
    CHECK_STR(col.a[2].body, json);
    CHECK_STR(u->last_content_type, "application/json");
    char length[24];
    snprintf(length, sizeof length, "%zu", strlen(json));
    CHECK_STR(u->last_content_length, length);
    CHECK_STR(u->last_request_id, "req-43");

    /* an empty answer body is "" with length 0 */
    httpc_request empty = { .method = "POST", .uri = "/echo", .idempotent = false };
    send_call(c, &col, 3, &empty);
    CHECK(wait_for(&col.done, 4, 5000));
    CHECK_INT(col.a[3].status, 201);
    CHECK_INT(col.a[3].body_len, 0);
    CHECK_STR(col.a[3].body, "");
    CHECK_STR(u->last_content_length, "0");

    /* extra headers go along, except the ones the client owns (a proxied
     * request's Host and Connection must not reach the upstream) */
    struct evkeyvalq extra;
    TAILQ_INIT(&extra);
    evhttp_add_header(&extra, "X-Custom", "carshare");
    evhttp_add_header(&extra, "Host", "evil.example");
    evhttp_add_header(&extra, "Connection", "close");
    httpc_request with_headers = { .method = "GET", .uri = "/hello", .headers = &extra,
                               .idempotent = true };
    int peers = u->npeers;
    send_call(c, &col, 5, &with_headers);
    evhttp_clear_headers(&extra);   /* the client copied what it needs */
    CHECK(wait_for(&col.done, 5, 5000));
    CHECK_INT(col.a[5].status, 200);
    CHECK_STR(u->last_custom, "carshare");
    CHECK_STR(u->last_host, host);
    CHECK_STR(u->last_connection, "");   /* not the caller's: a pooled one says nothing */
    get(c, &col, 6, "/hello", true);
    CHECK(wait_for(&col.done, 6, 5000));
    CHECK_INT(u->npeers, peers);    /* the connection was kept */

    /* a header that is not valid is left out (this value would start a
     * header of its own); one the caller vouches for goes as it is */
    struct evkeyval bad = { .key = (char *)"X-Custom", .value = (char *)"evil\r\nX-Injected: yes" };
    TAILQ_INIT(&extra);
    TAILQ_INSERT_TAIL(&extra, &bad, next);
    httpc_request with_bad = { .method = "GET", .uri = "/hello", .headers = &extra,
                               .idempotent = true };
    send_call(c, &col, 7, &with_bad);
    CHECK(wait_for(&col.done, 7, 5000));
    CHECK_INT(col.a[7].status, 200);
    CHECK_STR(u->last_custom, "");
    struct evkeyval vouched = { .key = (char *)"X-Custom", .value = (char *)"vouched" };
    TAILQ_INIT(&extra);
    TAILQ_INSERT_TAIL(&extra, &vouched, next);
    httpc_request valid = { .method = "GET", .uri = "/hello", .headers = &extra,
                            .headers_valid = true, .idempotent = true };
    send_call(c, &col, 8, &valid);
    CHECK(wait_for(&col.done, 8, 5000));
    CHECK_INT(col.a[8].status, 200);
    CHECK_STR(u->last_custom, "vouched");
    httpc_free(c);

    /* a base URL with a path prefix */
    c = client_for(u->port, "/api/v1/", NULL);
    CHECK(c != NULL);
    get(c, &col, 4, "/hello", true);
    CHECK(wait_for(&col.done, 9, 5000));
    CHECK_INT(col.a[4].status, 200);
    CHECK_STR(col.a[4].body, "prefixed");
    httpc_free(c);

    /* unusable base URLs are refused at creation */
    CHECK(httpc_new(base, "bad", "https://127.0.0.1:1", NULL) == NULL);
    CHECK(httpc_new(base, "bad", "not a url", NULL) == NULL);
    CHECK(httpc_new(base, "bad", NULL, NULL) == NULL);
}

static void test_timeout(void)
{
    int port;
    int silent = raw_socket(16, &port);
    CHECK(silent >= 0);
    collector col = { 0 };
    httpc_opts o = { .timeout_ms = 300, .retries = -1 };
    httpc *c = client_for(port, "", &o);
    get(c, &col, 0, "/hello", true);
    /* per-call timeout overrides the client's */
    httpc_request call = { .method = "GET", .uri = "/x", .idempotent = true, .timeout_ms = 150 };
    send_call(c, &col, 1, &call);
    CHECK(wait_for(&col.done, 2, 10000));
    CHECK_INT(col.a[0].result, HTTPC_TIMEOUT);
    CHECK_INT(col.a[0].status, 0);
    CHECK(col.a[0].elapsed_ms >= 290);      /* not early: the budget was used */
    CHECK_INT(col.a[1].result, HTTPC_TIMEOUT);
    CHECK(col.a[1].elapsed_ms >= 140);
    CHECK(col.a[1].order == 0);             /* the shorter budget ended first */
    httpc_free(c);
    close(silent);
}

static void test_connect_failures(void)
{
    collector col = { 0 };
    httpc_opts o = { .retries = -1, .connect_timeout_ms = 200, .timeout_ms = 10000 };

    /* refused */
    httpc *c = client_for(closed_port(), "", &o);
    get(c, &col, 0, "/hello", true);
    CHECK(wait_for(&col.done, 1, 5000));
    CHECK_INT(col.a[0].result, HTTPC_CONNECT);
    CHECK_INT(col.a[0].status, 0);
    CHECK_STR(col.a[0].body, "");
    httpc_free(c);

    /* refused, idempotent: retried twice (then gives up with CONNECT);
     * not idempotent: never retried */
    httpc_opts r = { .retries = 2, .backoff_ms = 5,
                           .breaker = { .consecutive_failures = 100, .min_calls = 100 } };
    c = client_named("refused", closed_port(), "", &r);
    get(c, &col, 2, "/hello", true);
    CHECK(wait_for(&col.done, 2, 5000));
    CHECK_INT(col.a[2].result, HTTPC_CONNECT);
    CHECK(metric_value("carshare_upstream_retries_total", "upstream=\"refused\"") == 2);
    get(c, &col, 3, "/hello", false);
    CHECK(wait_for(&col.done, 3, 5000));
    CHECK_INT(col.a[3].result, HTTPC_CONNECT);
    CHECK(metric_value("carshare_upstream_retries_total", "upstream=\"refused\"") == 2);
    httpc_free(c);

    /* never accepted: a listener with a full accept queue drops our SYN */
    int port;
    int full = raw_socket(0, &port);
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int filler = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(connect(filler, (struct sockaddr *)&sin, sizeof sin) == 0);
    c = client_for(port, "", &o);
    get(c, &col, 1, "/hello", true);
    CHECK(wait_for(&col.done, 4, 8000));
    /* CONNECT, not TIMEOUT: the 200 ms connect limit ended it, not the 10 s budget */
    CHECK_INT(col.a[1].result, HTTPC_CONNECT);
    httpc_free(c);
    close(filler);
    close(full);
}

static void test_breaker_opens_and_recovers(void)
{
    collector col = { 0 };
    int port = closed_port();
    httpc_opts o = { .retries = -1,
                           .breaker = { .consecutive_failures = 3, .open_ms = 1000 } };
    httpc *c = client_named("brk", port, "", &o);

    for (int i = 0; i < 3; i++) {
        get(c, &col, i, "/hello", true);
        CHECK(wait_for(&col.done, i + 1, 5000));
        CHECK_INT(col.a[i].result, HTTPC_CONNECT);
    }
    CHECK_INT(httpc_breaker(c)->state, BREAKER_OPEN);
    CHECK(metric_value("carshare_breaker_state", "upstream=\"brk\"") == 1);
    unsigned long long retry_ms = 0;
    CHECK_INT(httpc_refusal(c, &retry_ms), HTTPC_OPEN);
    CHECK(retry_ms > 0 && retry_ms <= 1000);

    /* open: refused at once (on the next loop turn), with the cool-down left */
    get(c, &col, 3, "/hello", true);
    CHECK_INT(col.done, 3);
    CHECK(wait_for(&col.done, 4, 5000));
    CHECK_INT(col.a[3].result, HTTPC_OPEN);
    CHECK(col.a[3].retry_after_ms > 0 && col.a[3].retry_after_ms <= 1000);
    CHECK_INT(col.sync_calls, 0);
    CHECK(metric_value("carshare_breaker_rejected_total", "upstream=\"brk\"") == 1);
    CHECK(metric_value("carshare_upstream_requests_total",
                       "upstream=\"brk\",result=\"open\",status=\"0\"") == 1);
    CHECK(metric_value("carshare_upstream_requests_total",
                       "upstream=\"brk\",result=\"connect\",status=\"0\"") == 3);

    /* the upstream comes back on the same port; after open_ms a trial passes */
    upstream back;
    CHECK(upstream_start(&back, port));
    run_for(1050);
    get(c, &col, 4, "/hello", true);
    CHECK(wait_for(&col.done, 5, 5000));
    CHECK_INT(col.a[4].result, HTTPC_OK);
    CHECK_INT(col.a[4].status, 200);
    CHECK_INT(httpc_breaker(c)->state, BREAKER_CLOSED);
    get(c, &col, 5, "/hello", true);
    CHECK(wait_for(&col.done, 6, 5000));
    CHECK_INT(col.a[5].result, HTTPC_OK);
    CHECK(metric_value("carshare_breaker_state", "upstream=\"brk\"") == 0);
    CHECK_INT(httpc_refusal(c, &retry_ms), HTTPC_OK);
    CHECK(metric_value("carshare_upstream_requests_total",
                       "upstream=\"brk\",result=\"ok\",status=\"200\"") == 2);
    CHECK(metric_value("carshare_upstream_inflight", "upstream=\"brk\"") == 0);
    httpc_free(c);
    upstream_stop(&back);
}

static void test_half_open_trial_failure_reopens(void)
{
    collector col = { 0 };
    int port = closed_port();
    httpc_opts o = { .retries = -1,
                           .breaker = { .consecutive_failures = 1, .open_ms = 200 } };
    httpc *c = client_for(port, "", &o);
    get(c, &col, 0, "/hello", true);
    CHECK(wait_for(&col.done, 1, 5000));
    CHECK_INT(httpc_breaker(c)->state, BREAKER_OPEN);
    run_for(250);
    /* two calls at once in half-open: one trial goes out, the other is refused */
    get(c, &col, 1, "/hello", true);
    get(c, &col, 2, "/hello", true);
    CHECK(wait_for(&col.done, 3, 5000));
    CHECK_INT(col.a[1].result, HTTPC_CONNECT);
    CHECK_INT(col.a[2].result, HTTPC_OPEN);
    CHECK_INT(httpc_breaker(c)->state, BREAKER_OPEN);
    httpc_free(c);
}

static void test_bulkhead(void)
{
    int port;
    int silent = raw_socket(64, &port);
    collector col = { 0 };
    /* The queued call's wait (100 ms) ends before the calls on the wire time
     * out (300 ms): timers fire in deadline order however late the loop
     * runs, so the queued call never gets a freed slot. */
    httpc_opts o = { .pool_size = 2, .max_inflight = 2, .max_queue = 1,
                           .timeout_ms = 300, .max_queue_wait_ms = 100, .retries = -1,
                           .breaker = { .consecutive_failures = 100, .min_calls = 100 } };
    httpc *c = client_named("bulk", port, "", &o);
    unsigned long long retry_ms = 7;
    CHECK_INT(httpc_refusal(c, &retry_ms), HTTPC_OK);
    CHECK(retry_ms == 0);
    for (int i = 0; i < 5; i++)
        get(c, &col, i, "/hello", true);
    CHECK_INT(col.done, 0);
    /* two on the wire, one queued: the next would be refused, and the
     * question says so without sending anything */
    CHECK_INT(httpc_refusal(c, &retry_ms), HTTPC_BUSY);
    CHECK(retry_ms == 1000);
    CHECK(metric_value("carshare_upstream_inflight", "upstream=\"bulk\"") == 2);
    CHECK(wait_for(&col.done, 5, 10000));
    CHECK_INT(col.sync_calls, 0);
    /* 2 on the wire time out; the queued one waited max_queue_wait_ms and
     * was never sent: busy; the last 2 are refused, first */
    for (int i = 0; i < 2; i++)
        CHECK_INT(col.a[i].result, HTTPC_TIMEOUT);
    CHECK_INT(col.a[2].result, HTTPC_BUSY);
    for (int i = 3; i < 5; i++) {
        CHECK_INT(col.a[i].result, HTTPC_BUSY);
        CHECK(col.a[i].order < 2);
    }
    CHECK(metric_value("carshare_upstream_requests_total",
                       "upstream=\"bulk\",result=\"busy\",status=\"0\"") == 3);
    CHECK(metric_value("carshare_upstream_requests_total",
                       "upstream=\"bulk\",result=\"timeout\",status=\"0\"") == 2);
    CHECK(metric_value("carshare_upstream_inflight", "upstream=\"bulk\"") == 0);
    /* latency is observed for the calls that went out, not for refusals */
    CHECK(metric_value("carshare_upstream_duration_seconds_count", "upstream=\"bulk\"") == 3);
    CHECK_INT(httpc_refusal(c, &retry_ms), HTTPC_OK);
    httpc_free(c);
    close(silent);
}

/* The timeout runs from the wire: a call that waited in our queue behind a
 * slow one still gets its whole budget (before, it was sent late and gave
 * up while the upstream was completing it: a 504 for an accepted POST). */
static void test_timeout_starts_on_the_wire(upstream *u)
{
    collector col = { 0 };
    httpc_opts o = { .pool_size = 1, .max_inflight = 1, .timeout_ms = SLOW_MS + 150,
                           .retries = -1 };
    httpc *c = client_named("wire", u->port, "", &o);
    httpc_request call = { .method = "POST", .uri = "/slow", .body = "{}", .body_len = 2 };
    send_call(c, &col, 0, &call);
    send_call(c, &col, 1, &call);   /* waits SLOW_MS for the connection */
    CHECK(wait_for(&col.done, 2, 10000));
    for (int i = 0; i < 2; i++) {
        CHECK_INT(col.a[i].result, HTTPC_OK);
        CHECK_INT(col.a[i].status, 200);
    }
    CHECK(col.a[1].elapsed_ms >= 2 * SLOW_MS - 10);  /* it did wait behind the first */
    httpc_free(c);
}

/* A call that cannot get a connection within max_queue_wait_ms ends BUSY,
 * unsent, while the call on the wire keeps its own timeout. */
static void test_queue_wait_bound(void)
{
    int port;
    int silent = raw_socket(16, &port);
    collector col = { 0 };
    /* a breaker that opens on the first failure: the queued call's expiry
     * must not open it (it never reached the upstream); the timeout does */
    httpc_opts o = { .pool_size = 1, .max_inflight = 1, .timeout_ms = 600,
                           .max_queue_wait_ms = 100, .retries = -1,
                           .breaker = { .consecutive_failures = 1, .min_calls = 100 } };
    httpc *c = client_named("qwait", port, "", &o);
    get(c, &col, 0, "/hello", true);   /* on the wire, never answered */
    get(c, &col, 1, "/hello", true);   /* queued */
    CHECK(wait_for(&col.done, 1, 10000));
    CHECK_INT(httpc_breaker(c)->state, BREAKER_CLOSED);
    CHECK(wait_for(&col.done, 2, 10000));
    CHECK_INT(httpc_breaker(c)->state, BREAKER_OPEN);
    CHECK_INT(col.a[1].result, HTTPC_BUSY);
    CHECK_INT(col.a[1].order, 0);      /* gave up waiting long before the timeout */
    CHECK_INT(col.a[0].result, HTTPC_TIMEOUT);
    CHECK(col.a[0].elapsed_ms >= 590);
    httpc_free(c);
    close(silent);
}

/* Fast 503s: failures for the breaker by default (an overloaded upstream),
 * answers like any other with breaker_ignores_5xx (a proxy's upstream
 * speaking); transport failures still open it. */
static void test_breaker_and_5xx(upstream *u)
{
    collector col = { 0 };
    httpc_opts o = { .retries = -1, .breaker = { .consecutive_failures = 3, .open_ms = 5000 } };
    httpc *c = client_named("b5xx", u->port, "", &o);
    for (int i = 0; i < 4; i++) {
        get(c, &col, i, "/fail", true);
        CHECK(wait_for(&col.done, i + 1, 5000));
    }
    CHECK_INT(col.a[2].status, 503);
    CHECK_INT(col.a[3].result, HTTPC_OPEN);
    CHECK_INT(httpc_breaker(c)->state, BREAKER_OPEN);
    httpc_free(c);

    collector spoken = { 0 };
    o.breaker_ignores_5xx = true;
    c = client_named("b5xx_proxy", u->port, "", &o);
    for (int i = 0; i < 6; i++) {
        get(c, &spoken, i, "/fail", true);
        CHECK(wait_for(&spoken.done, i + 1, 5000));
        CHECK_INT(spoken.a[i].result, HTTPC_OK);
        CHECK_INT(spoken.a[i].status, 503);
    }
    CHECK_INT(httpc_breaker(c)->state, BREAKER_CLOSED);
    httpc_free(c);

    collector down = { 0 };
    c = client_named("b5xx_down", closed_port(), "", &o);
    for (int i = 0; i < 4; i++) {
        get(c, &down, i, "/fail", true);
        CHECK(wait_for(&down.done, i + 1, 5000));
    }
    CHECK_INT(down.a[2].result, HTTPC_CONNECT);
    CHECK_INT(down.a[3].result, HTTPC_OPEN);
    httpc_free(c);
}

static void test_queue_drains_in_order(upstream *u)
{
    /* more calls than connections: the queue feeds freed connections */
    collector col = { 0 };
    httpc_opts o = { .pool_size = 2, .max_queue = 30 };
    httpc *c = client_for(u->port, "", &o);
    for (int i = 0; i < 30; i++)
        get(c, &col, i, "/hello", true);
    CHECK(wait_for(&col.done, 30, 10000));
    int ok = 0;
    for (int i = 0; i < 30; i++)
        ok += col.a[i].result == HTTPC_OK && col.a[i].status == 200 &&
              strcmp(col.a[i].body, "hello world") == 0;
    /* Each answer whole, although its slot went to the next queued call
     * before the answer was delivered. */
    CHECK_INT(ok, 30);
    httpc_free(c);
}

static void test_retries(upstream *u)
{
    collector col = { 0 };
    httpc_opts o = { .retries = 2, .backoff_ms = 5,
                           .breaker = { .consecutive_failures = 100, .min_calls = 100 } };
    httpc *c = client_for(u->port, "", &o);

    /* idempotent: 503, 503, then 200 */
    u->hits_flaky = 0;
    get(c, &col, 0, "/flaky", true);
    CHECK(wait_for(&col.done, 1, 5000));
    CHECK_INT(col.a[0].result, HTTPC_OK);
    CHECK_INT(col.a[0].status, 200);
    CHECK_STR(col.a[0].body, "finally");
    CHECK_INT(u->hits_flaky, 3);

    /* idempotent but always failing: 1 + 2 retries, then the last 503 */
    u->hits_fail = 0;
    get(c, &col, 1, "/fail", true);
    CHECK(wait_for(&col.done, 2, 5000));
    CHECK_INT(col.a[1].result, HTTPC_OK);
    CHECK_INT(col.a[1].status, 503);
    CHECK_STR(col.a[1].body, "always down");
    CHECK_INT(u->hits_fail, 3);

    /* not idempotent: exactly one attempt */
    u->hits_fail = 0;
    httpc_request post = { .method = "POST", .uri = "/fail", .body = "{}", .body_len = 2 };
    send_call(c, &col, 2, &post);
    CHECK(wait_for(&col.done, 3, 5000));
    CHECK_INT(col.a[2].status, 503);
    CHECK_INT(u->hits_fail, 1);

    /* a 404 is an answer: not retried */
    int before = u->hits_total;
    get(c, &col, 3, "/missing", true);
    CHECK(wait_for(&col.done, 4, 5000));
    CHECK_INT(col.a[3].status, 404);
    CHECK_INT(u->hits_total - before, 1);
    httpc_free(c);

    /* no retry while the breaker is open: the 2nd failure opens it */
    httpc_opts o2 = { .retries = 5, .backoff_ms = 5,
                            .breaker = { .consecutive_failures = 2, .open_ms = 60000 } };
    c = client_for(u->port, "", &o2);
    u->hits_fail = 0;
    get(c, &col, 4, "/fail", true);
    CHECK(wait_for(&col.done, 5, 5000));
    CHECK_INT(u->hits_fail, 2);
    CHECK_INT(col.a[4].status, 503);
    CHECK_INT(httpc_breaker(c)->state, BREAKER_OPEN);
    httpc_free(c);
}

/* Chains `left` sequential calls, each sent from the previous callback. */
typedef struct chain {
    httpc *c;
    int left, ok, done;
    bool post;
} chain;

static void chain_next(chain *ch);

static void chain_answer(const httpc_response *r, void *arg)
{
    chain *ch = arg;
    ch->ok += r->result == HTTPC_OK && r->status < 300;
    if (--ch->left > 0)
        chain_next(ch);
    else
        ch->done = 1;
}

static void chain_next(chain *ch)
{
    httpc_request call = { .method = ch->post ? "POST" : "GET", .uri = ch->post ? "/echo" : "/hello",
                       .body = ch->post ? "{}" : NULL, .body_len = ch->post ? 2 : 0,
                       .idempotent = !ch->post };
    httpc_send(ch->c, &call, chain_answer, ch);
}

static void test_keep_alive(void)
{
    upstream u;
    CHECK(upstream_start(&u, 0));
    httpc_opts o = { .pool_size = 4, .max_queue = 64 };
    httpc *c = client_for(u.port, "", &o);

    /* 50 calls one after the other: one connection */
    chain ch = { .c = c, .left = 50 };
    chain_next(&ch);
    CHECK(wait_for(&ch.done, 1, 10000));
    CHECK_INT(ch.ok, 50);
    CHECK_INT(u.hits_total, 50);
    CHECK_INT(u.npeers, 1);

    /* 40 at once over a pool of 4: at most 4 connections in all */
    collector col = { 0 };
    for (int i = 0; i < 40; i++)
        get(c, &col, i, "/hello", true);
    CHECK(wait_for(&col.done, 40, 10000));
    int ok = 0;
    for (int i = 0; i < 40; i++)
        ok += col.a[i].status == 200;
    CHECK_INT(ok, 40);
    CHECK(u.npeers <= 4);
    httpc_free(c);
    upstream_stop(&u);
}

static void test_server_closes_connections(void)
{
    upstream u;
    CHECK(upstream_start(&u, 0));
    evhttp_set_timeout(u.http, 1);   /* the server drops idle connections after 1 s */
    httpc *c = client_for(u.port, "", NULL);

    chain ch = { .c = c, .left = 2, .post = true };
    chain_next(&ch);
    CHECK(wait_for(&ch.done, 1, 5000));
    CHECK_INT(ch.ok, 2);
    CHECK_INT(u.npeers, 1);

    /* the pooled connection is closed by the server meanwhile: a POST (which
     * could not be retried) must go out on a new connection and succeed */
    run_for(1500);
    ch = (chain){ .c = c, .left = 1, .post = true };
    chain_next(&ch);
    CHECK(wait_for(&ch.done, 1, 5000));
    CHECK_INT(ch.ok, 1);
    CHECK_INT(u.npeers, 2);

    /* answers with "Connection: close": the first goes on the pooled
     * connection, each next one needs a new connection; all succeed */
    collector col = { 0 };
    for (int i = 0; i < 3; i++) {
        get(c, &col, i, "/close", false);
        CHECK(wait_for(&col.done, i + 1, 5000));
        CHECK_INT(col.a[i].status, 200);
        CHECK_STR(col.a[i].body, "bye");
    }
    CHECK_INT(u.npeers, 4);
    httpc_free(c);
    upstream_stop(&u);
}

/* Stale connections: each step runs inside the previous call's callback,
 * right after the server closed that call's connection, so the client's
 * loop has not processed the close when the next call picks the connection. */
typedef struct stale_ctx {
    httpc *c;
    raw_server *rs;
    int step, done;
    httpc_result result[3];
    int status[3];
} stale_ctx;

static void stale_step(const httpc_response *r, void *arg)
{
    stale_ctx *s = arg;
    s->result[s->step] = r->result;
    s->status[s->step] = r->status;
    s->step++;
    if (s->step == 3) {
        s->done = 1;
        return;
    }
    raw_server_drop_latest(s->rs);
    httpc_request call = { .method = s->step == 1 ? "POST" : "GET", .uri = "/x",
                       .body = "{}", .body_len = s->step == 1 ? 2 : 0,
                       .idempotent = s->step == 2 };
    httpc_send(s->c, &call, stale_step, s);
}

static void test_stale_pooled_connection(void)
{
    raw_server rs;
    CHECK(raw_server_start(&rs));
    httpc_opts o = { .backoff_ms = 5 };
    stale_ctx s = { .rs = &rs };
    s.c = client_for(rs.port, "", &o);
    httpc_request first = { .method = "GET", .uri = "/x", .idempotent = true };
    httpc_send(s.c, &first, stale_step, &s);
    CHECK(wait_for(&s.done, 1, 5000));
    CHECK_INT(s.result[0], HTTPC_OK);
    /* the POST must not be written on the closed connection (it could not
     * be retried): the client sees the close and connects anew */
    CHECK_INT(s.result[1], HTTPC_OK);
    CHECK_INT(s.status[1], 200);
    /* the GET may go out on the closed connection, but is retried */
    CHECK_INT(s.result[2], HTTPC_OK);
    CHECK_INT(s.status[2], 200);
    CHECK_INT(rs.requests, 3);
    CHECK_INT(rs.connections, 3);
    httpc_free(s.c);
    raw_server_stop(&rs);
}

static void test_free_with_calls_outstanding(void)
{
    int port;
    int silent = raw_socket(16, &port);
    collector col = { 0 };
    httpc_opts o = { .pool_size = 1, .max_queue = 2, .timeout_ms = 5000 };
    httpc *c = client_for(port, "", &o);
    get(c, &col, 0, "/a", true);   /* on the wire */
    get(c, &col, 1, "/b", true);   /* queued */
    run_for(50);
    CHECK_INT(col.done, 0);
    httpc_free(c);
    CHECK_INT(col.done, 2);        /* each completed exactly once */
    CHECK_INT(col.a[0].result, HTTPC_BROKEN);
    CHECK_INT(col.a[1].result, HTTPC_BROKEN);
    run_for(50);
    CHECK_INT(col.done, 2);
    close(silent);
}

static void test_invalid_method(upstream *u)
{
    collector col = { 0 };
    httpc *c = client_for(u->port, "", NULL);
    httpc_request call = { .method = "BREW", .uri = "/hello" };
    send_call(c, &col, 0, &call);
    CHECK_INT(col.done, 0);
    CHECK(wait_for(&col.done, 1, 5000));
    CHECK_INT(col.a[0].result, HTTPC_BROKEN);
    httpc_free(c);
}

static void test_opts_from_env(void)
{
    setenv("TESTUP_TIMEOUT_MS", "1234", 1);
    setenv("TESTUP_POOL_SIZE", "3", 1);
    setenv("TESTUP_RETRIES", "0", 1);
    setenv("TESTUP_BREAKER_RATIO_PCT", "25", 1);
    setenv("TESTUP_BREAKER_OPEN_MS", "900", 1);
    httpc_opts o = { .connect_timeout_ms = 77 };
    httpc_opts_from_env(&o, "TESTUP");
    CHECK_INT(o.timeout_ms, 1234);
    CHECK_INT(o.pool_size, 3);
    CHECK_INT(o.connect_timeout_ms, 77);   /* unset: left as it was */
    CHECK(o.retries < 0);                  /* 0 from the environment: none */
    CHECK(o.breaker.failure_ratio > 0.249 && o.breaker.failure_ratio < 0.251);
    CHECK_INT(o.breaker.open_ms, 900);
    CHECK_INT(o.max_queue, 0);             /* unset: default */
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    base = event_base_new();
    upstream u;
    if (!base || !upstream_start(&u, 0)) {
        fprintf(stderr, "test_httpc: cannot set up the loop or the test server\n");
        return 1;
    }
    CHECK_STR(httpc_result_name(HTTPC_TIMEOUT), "timeout");
    CHECK_STR(httpc_result_name(HTTPC_BUSY), "busy");

    test_answers_and_headers(&u);
    test_timeout();
    test_connect_failures();
    test_breaker_opens_and_recovers();
    test_half_open_trial_failure_reopens();
    test_bulkhead();
    test_timeout_starts_on_the_wire(&u);
    test_queue_wait_bound();
    test_breaker_and_5xx(&u);
    test_queue_drains_in_order(&u);
    test_retries(&u);
    test_keep_alive();
    test_server_closes_connections();
    test_stale_pooled_connection();
    test_free_with_calls_outstanding();
    test_invalid_method(&u);
    test_opts_from_env();

    upstream_stop(&u);
    event_base_free(base);
    return test_done("test_httpc");
}
