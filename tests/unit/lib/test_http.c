/* test_http.c: the HTTP server (lib/http.c) over real sockets.
 *
 * The server runs on an ephemeral loopback port inside this process, on an
 * event loop this test drives. The client is a few lines of raw sockets:
 * a request is written with blocking send() (it fits in the socket buffer),
 * then the loop runs until the answer has arrived, read by an event on the
 * client socket. Nothing here depends on timing beyond generous deadlines
 * that only turn a hang into a failure. */
#include "testing.h"
#include "testing_http.h"

#include "http.h"
#include "metrics.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#define DEADLINE_MS 5000

static struct event_base *base;

/* ---- a raw HTTP client ---- */

typedef struct {
    int status;
    char head[8192];          /* status line and headers */
    char body[1 << 17];
    size_t body_len;
    bool complete;
} response;

typedef struct {
    int fd;
    bool head_only;
    char buf[1 << 18];
    size_t len;
    bool closed;
    bool complete;
} reader;

static void send_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) continue;
            return;
        }
        data += n;
        len -= (size_t)n;
    }
}

static const char *find_header(const char *head, const char *name, char *out, size_t outlen)
{
    size_t nlen = strlen(name);
    const char *line = strstr(head, "\r\n");
    while (line) {
        line += 2;
        if (!strncasecmp(line, name, nlen) && line[nlen] == ':') {
            const char *v = line + nlen + 1;
            while (*v == ' ') v++;
            size_t vlen = strcspn(v, "\r\n");
            if (vlen >= outlen) vlen = outlen - 1;
            memcpy(out, v, vlen);
            out[vlen] = '\0';
            return out;
        }
        line = strstr(line, "\r\n");
    }
    return NULL;
}

/* Whether the bytes read so far hold a whole answer. */
static bool reader_complete(reader *rd)
{
    rd->buf[rd->len] = '\0';
    char *end = strstr(rd->buf, "\r\n\r\n");
    if (!end)
        return false;
    size_t head_len = (size_t)(end - rd->buf) + 4;
    int status = 0;
    sscanf(rd->buf, "HTTP/1.%*d %d", &status);
    if (rd->head_only || status == 204 || status == 304)
        return true;
    char value[32];
    char saved = rd->buf[head_len];
    rd->buf[head_len] = '\0';
    const char *cl = find_header(rd->buf, "Content-Length", value, sizeof value);
    rd->buf[head_len] = saved;
    if (cl)
        return rd->len >= head_len + (size_t)atol(cl);
    return rd->closed;
}

static void on_client_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    reader *rd = arg;
    for (;;) {
        if (rd->len >= sizeof rd->buf - 1) {
            rd->closed = true;
            break;
        }
        ssize_t n = recv(fd, rd->buf + rd->len, sizeof rd->buf - 1 - rd->len, MSG_DONTWAIT);
        if (n > 0) {
            rd->len += (size_t)n;
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            rd->closed = true;
        break;
    }
    if (reader_complete(rd) || rd->closed) {
        rd->complete = reader_complete(rd);
        event_base_loopbreak(base);
    }
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    *(bool *)arg = true;
    event_base_loopbreak(base);
}

/* Runs the loop until *flag is true or ms have passed. */
static void run_until(bool *flag, int ms)
{
    bool expired = false;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    struct event *deadline = evtimer_new(base, on_deadline, &expired);
    evtimer_add(deadline, &tv);
    while (!(flag && *flag) && !expired)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(deadline);
}

/* Reads one answer from fd, running the server meanwhile. */
static bool read_response(int fd, bool head_only, response *res)
{
    reader *rd = calloc(1, sizeof *rd);
    rd->fd = fd;
    rd->head_only = head_only;
    struct event *ev = event_new(base, fd, EV_READ | EV_PERSIST, on_client_readable, rd);
    event_add(ev, NULL);
    bool expired = false;
    struct timeval tv = {DEADLINE_MS / 1000, 0};
    struct event *deadline = evtimer_new(base, on_deadline, &expired);
    evtimer_add(deadline, &tv);
    while (!rd->complete && !rd->closed && !expired)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(deadline);
    event_free(ev);

    memset(res, 0, sizeof *res);
    res->complete = rd->complete;
    rd->buf[rd->len] = '\0';
    char *end = strstr(rd->buf, "\r\n\r\n");
    if (end) {
        size_t head_len = (size_t)(end - rd->buf);
        if (head_len >= sizeof res->head) head_len = sizeof res->head - 1;
        memcpy(res->head, rd->buf, head_len);
        res->head[head_len] = '\0';
        sscanf(res->head, "HTTP/1.%*d %d", &res->status);
        size_t body_start = (size_t)(end - rd->buf) + 4;
        res->body_len = rd->len - body_start;
        if (res->body_len >= sizeof res->body) res->body_len = sizeof res->body - 1;
        memcpy(res->body, rd->buf + body_start, res->body_len);
        res->body[res->body_len] = '\0';
    }
    free(rd);
    return res->complete;
}

/* One request on a fresh connection. */
static bool roundtrip(int port, const char *raw, response *res)
{
    int fd = loopback_connect(port);
    if (fd < 0) {
        memset(res, 0, sizeof *res);
        return false;
    }
    send_all(fd, raw, strlen(raw));
    bool ok = read_response(fd, !strncmp(raw, "HEAD ", 5), res);
    close(fd);
    return ok;
}

/* POST with a correct Content-Length; extra is more header lines. */
static bool post(int port, const char *path, const char *extra, const char *body, response *res)
{
    size_t blen = strlen(body);
    size_t cap = strlen(path) + strlen(extra) + blen + 256;
    char *req = malloc(cap);
    snprintf(req, cap, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "%sContent-Length: %zu\r\n\r\n%s", path, extra, blen, body);
    bool ok = roundtrip(port, req, res);
    free(req);
    return ok;
}

static const char *header(const response *res, const char *name)
{
    static char value[1024];
    return find_header(res->head, name, value, sizeof value);
}

static json_t *body_json(const response *res)
{
    json_error_t err;
    json_t *j = json_loadb(res->body, res->body_len, 0, &err);
    if (!j) fprintf(stderr, "body is not JSON: %s (%s)\n", res->body, err.text);
    return j;
}

static const char *jstr(json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

/* Checks the contract's error shape: {"status","error","message","path"}. */
static void check_error_body(const response *res, int status, const char *reason, const char *path)
{
    CHECK_INT(res->status, status);
    const char *ctype = header(res, "Content-Type");
    CHECK(ctype && !strncmp(ctype, "application/json", 16));
    json_t *j = body_json(res);
    CHECK(j != NULL);
    if (!j) return;
    CHECK_INT(json_integer_value(json_object_get(j, "status")), status);
    CHECK_STR(jstr(j, "error"), reason);
    CHECK(jstr(j, "message") && strlen(jstr(j, "message")) > 0);
    CHECK_STR(jstr(j, "path"), path);
    CHECK_INT(json_object_size(j), 4);
    json_decref(j);
}

/* ---- handlers ---- */

static http_req *stashed;          /* a request whose answer the test gives later */
static int stash_calls;

static void h_order(http_req *r, void *arg)
{
    (void)arg;
    const char *q = http_req_query(r, "q");
    http_reply_json(r, 200, json_pack("{s:s,s:s,s:s,s:s,s:s?}", "id", http_req_param(r, "id"),
                                      "route", http_req_route(r), "method", http_req_method(r),
                                      "reqId", http_req_id(r), "q", q));
}

static void h_item_of_order(http_req *r, void *arg)
{
    (void)arg;
    http_reply_json(r, 200, json_pack("{s:s,s:s}", "id", http_req_param(r, "id"),
                                      "item", http_req_param(r, "item")));
}

static void h_search(http_req *r, void *arg)
{
    (void)arg;
    const char *c = http_req_query(r, "customerId");
    const char *page = http_req_query(r, "page");
    http_reply_json(r, 200, json_pack("{s:s,s:s?,s:s?,s:b}", "route", http_req_route(r),
                                      "customerId", c, "page", page,
                                      "missingIsNull", http_req_query(r, "nope") == NULL));
}

static void h_echo(http_req *r, void *arg)
{
    (void)arg;
    json_t *in = http_req_json(r);
    if (!in)
        return;
    http_set_header(r, "Location", "/echo/1");
    http_reply_json(r, 201, json_pack("{s:o,s:s}", "got", in, "base", http_req_base_url(r)));
}

static void h_stash(http_req *r, void *arg)
{
    (void)arg;
    stashed = r;
    stash_calls++;
}

static void later_reply(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_req *r = arg;
    http_reply_json(r, 202, json_pack("{s:b,s:b}", "late", 1, "alive", http_req_alive(r)));
}

static void h_timer(http_req *r, void *arg)
{
    (void)arg;
    struct timeval tv = {0, 30 * 1000};
    event_base_once(base, -1, EV_TIMEOUT, later_reply, r, &tv);
}

static void h_empty(http_req *r, void *arg)
{
    (void)arg;
    http_reply_empty(r, 204);
}

static void h_fallback(http_req *r, void *arg)
{
    (void)arg;
    char text[512];
    snprintf(text, sizeof text, "fallback %s %s", http_req_method(r), http_req_path(r));
    http_reply_raw(r, 200, "text/plain", text, strlen(text));
}

/* ---- tests ---- */

static void test_routing_with_params(int port)
{
    response res;
    CHECK(roundtrip(port, "GET /orders/42 HTTP/1.1\r\nHost: x\r\n\r\n", &res));
    CHECK_INT(res.status, 200);
    CHECK_STR(header(&res, "Content-Type"), "application/json");
    json_t *j = body_json(&res);
    CHECK_STR(jstr(j, "id"), "42");
    CHECK_STR(jstr(j, "route"), "/orders/{id}");
    CHECK_STR(jstr(j, "method"), "GET");
    json_decref(j);
    /* The body is the compact dump. */
    CHECK(strchr(res.body, ' ') == NULL);

    /* A trailing slash does not matter; two params in one pattern. */
    CHECK(roundtrip(port, "GET /orders/7/items/x9/ HTTP/1.1\r\nHost: x\r\n\r\n", &res));
    CHECK_INT(res.status, 200);
    j = body_json(&res);
    CHECK_STR(jstr(j, "id"), "7");
    CHECK_STR(jstr(j, "item"), "x9");
    json_decref(j);

    /* A param is decoded after the split: %2F stays inside it. */
    CHECK(roundtrip(port, "GET /orders/a%2Fb%20c HTTP/1.1\r\nHost: x\r\n\r\n", &res));
    CHECK_INT(res.status, 200);
    j = body_json(&res);
    CHECK_STR(jstr(j, "id"), "a/b c");
    json_decref(j);
}

static void test_literal_route_and_query(int port)
{
    response res;
    /* The literal segment wins over {id}; query values are decoded, '+' too. */
    CHECK(roundtrip(port,
                    "GET /orders/search/findByCustomerId?customerId=kim%20lee+jr&page=2 HTTP/1.1\r\n"
                    "Host: x\r\n\r\n", &res));
    CHECK_INT(res.status, 200);
    json_t *j = body_json(&res);
    CHECK_STR(jstr(j, "route"), "/orders/search/findByCustomerId");
    CHECK_STR(jstr(j, "customerId"), "kim lee jr");
    CHECK_STR(jstr(j, "page"), "2");
    CHECK(json_is_true(json_object_get(j, "missingIsNull")));
    json_decref(j);

    /* A path that starts like the literal route but goes on: backtrack to {id}. */
    CHECK(roundtrip(port, "GET /orders/search HTTP/1.1\r\nHost: x\r\n\r\n", &res));
    CHECK_INT(res.status, 200);
    j = body_json(&res);
    CHECK_STR(jstr(j, "route"), "/orders/{id}");
    CHECK_STR(jstr(j, "id"), "search");
    json_decref(j);

    CHECK(roundtrip(port, "GET /orders/1?q=a%26b%3Dc&q=second HTTP/1.1\r\nHost: x\r\n\r\n", &res));
    j = body_json(&res);
    CHECK_STR(jstr(j, "q"), "a&b=c");
    json_decref(j);
}

static void test_not_found(int port)
{
    response res;
    CHECK(roundtrip(port, "GET /nowhere/at/all?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", &res));
    check_error_body(&res, 404, "Not Found", "/nowhere/at/all");
    CHECK(header(&res, "X-Request-Id") != NULL);
    /* Deeper than any pattern can be. */
    CHECK(roundtrip(port, "GET /orders/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16/17/18/19/20/21/22/23/24/25/26/27/28/29/30/31/32/33 HTTP/1.1\r\nHost: x\r\n\r\n", &res));
    CHECK_INT(res.status, 404);
}

static void test_method_not_allowed(int port)
{
    response res;
    CHECK(roundtrip(port, "DELETE /orders/42 HTTP/1.1\r\nHost: x\r\n\r\n", &res));
    check_error_body(&res, 405, "Method Not Allowed", "/orders/42");
    CHECK_STR(header(&res, "Allow"), "GET, HEAD, OPTIONS");
    CHECK(roundtrip(port, "PATCH /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          "Content-Length: 2\r\n\r\n{}", &res));
    check_error_body(&res, 405, "Method Not Allowed", "/echo");
    CHECK_STR(header(&res, "Allow"), "POST, OPTIONS");
    /* TRACE reaches us too, so even it gets the contract's answer. */
    CHECK(roundtrip(port, "TRACE /echo HTTP/1.1\r\nHost: x\r\n\r\n", &res));
    check_error_body(&res, 405, "Method Not Allowed", "/echo");
}

static void test_head_and_options(int port)
{
    /* HEAD runs the GET handler: same headers, no body. */
    response get, head;
    CHECK(roundtrip(port, "GET /orders/5/items/z HTTP/1.1\r\nHost: x\r\n\r\n", &get));
    CHECK(roundtrip(port, "HEAD /orders/5/items/z HTTP/1.1\r\nHost: x\r\n\r\n", &head));
    CHECK_INT(head.status, 200);
    CHECK_INT(head.body_len, 0);
    char cl[32];
    CHECK(find_header(head.head, "Content-Length", cl, sizeof cl) != NULL);
    CHECK_INT(atol(cl), get.body_len);
    CHECK_STR(header(&head, "Content-Type"), "application/json");

    /* HEAD on a path without GET is a 405. */
    CHECK(roundtrip(port, "HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n", &head));
    CHECK_INT(head.status, 405);

    response opt;
    CHECK(roundtrip(port, "OPTIONS /orders/5 HTTP/1.1\r\nHost: x\r\n\r\n", &opt));
    CHECK_INT(opt.status, 204);
    CHECK_STR(header(&opt, "Allow"), "GET, HEAD, OPTIONS");

    response empty;
    CHECK(roundtrip(port, "DELETE /things/1 HTTP/1.1\r\nHost: x\r\n\r\n", &empty));
    CHECK_INT(empty.status, 204);
    CHECK_INT(empty.body_len, 0);
}

static bool looks_like_uuid_v4(const char *s)
{
    if (!s || strlen(s) != 36) return false;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-') return false;
        } else if (!strchr("0123456789abcdef", s[i])) {
            return false;
        }
    }
    return s[14] == '4' && strchr("89ab", s[19]) != NULL;
}

static void test_request_id(int port)
{
    response res;
    CHECK(roundtrip(port, "GET /orders/1 HTTP/1.1\r\nHost: x\r\nX-Request-Id: rental-7.abc_1\r\n\r\n", &res));
    CHECK_STR(header(&res, "X-Request-Id"), "rental-7.abc_1");
    json_t *j = body_json(&res);
    CHECK_STR(jstr(j, "reqId"), "rental-7.abc_1");
    json_decref(j);

    char first[64] = "";
    CHECK(roundtrip(port, "GET /orders/1 HTTP/1.1\r\nHost: x\r\n\r\n", &res));
    const char *id = header(&res, "X-Request-Id");
    CHECK(looks_like_uuid_v4(id));
    if (id) snprintf(first, sizeof first, "%s", id);
    j = body_json(&res);
    CHECK_STR(jstr(j, "reqId"), first);
    json_decref(j);

    CHECK(roundtrip(port, "GET /orders/1 HTTP/1.1\r\nHost: x\r\n\r\n", &res));
    id = header(&res, "X-Request-Id");
    CHECK(looks_like_uuid_v4(id));
    CHECK(id && strcmp(id, first) != 0);

    /* An id that is not a plain token (it would break log lines) is replaced. */
    CHECK(roundtrip(port, "GET /orders/1 HTTP/1.1\r\nHost: x\r\nX-Request-Id: a b\"c\r\n\r\n", &res));
    CHECK(looks_like_uuid_v4(header(&res, "X-Request-Id")));
    /* Errors carry it as well. */
    CHECK(roundtrip(port, "GET /nope HTTP/1.1\r\nHost: x\r\nX-Request-Id: err-1\r\n\r\n", &res));
    CHECK_STR(header(&res, "X-Request-Id"), "err-1");
}

static void test_body_limit(int port)
{
    /* HTTP_MAX_BODY=1024 for this server. */
    char *req = malloc(8192);
    char *payload = malloc(4096);
    response res;

    size_t n = 1000;
    payload[0] = '{';
    payload[1] = '"';
    payload[2] = 'k';
    payload[3] = '"';
    payload[4] = ':';
    payload[5] = '"';
    memset(payload + 6, 'a', n - 8);
    payload[n - 2] = '"';
    payload[n - 1] = '}';
    payload[n] = '\0';
    snprintf(req, 8192, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n%s", n, payload);
    CHECK(roundtrip(port, req, &res));
    CHECK_INT(res.status, 201);

    n = 2000;
    memset(payload, 'b', n);
    payload[n] = '\0';
    snprintf(req, 8192, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n%s", n, payload);
    CHECK(roundtrip(port, req, &res));
    check_error_body(&res, 413, "Payload Too Large", "/echo");
    json_t *j = body_json(&res);
    CHECK(jstr(j, "message") && strstr(jstr(j, "message"), "1024"));
    json_decref(j);

    /* Far beyond the limit: refused before the body is read, in the
     * contract's shape too (lib/http_frame.h). */
    CHECK(roundtrip(port, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    "Content-Length: 50000000\r\n\r\n", &res));
    check_error_body(&res, 413, "Payload Too Large", "/echo");
    free(req);
    free(payload);
}

static void test_header_limit(int port)
{
    /* HTTP_MAX_HEADERS=1024 for this server (evhttp's own bound is 2x). */
    char *req = malloc(4096);
    char big[1500];
    memset(big, 'h', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    snprintf(req, 4096, "GET /orders/1 HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", big);
    response res;
    CHECK(roundtrip(port, req, &res));
    check_error_body(&res, 431, "Request Header Fields Too Large", "/orders/1");
    free(req);
}

static void test_json_body(int port)
{
    response res;
    CHECK(post(port, "/echo", "", "{not json", &res));
    check_error_body(&res, 400, "Bad Request", "/echo");
    json_t *j = body_json(&res);
    CHECK(jstr(j, "message") && strstr(jstr(j, "message"), "not valid JSON"));
    json_decref(j);

    CHECK(post(port, "/echo", "", "[1,2]", &res));
    check_error_body(&res, 400, "Bad Request", "/echo");
    j = body_json(&res);
    CHECK(jstr(j, "message") && strstr(jstr(j, "message"), "JSON object"));
    json_decref(j);

    CHECK(post(port, "/echo", "", "", &res));
    check_error_body(&res, 400, "Bad Request", "/echo");

    /* Invalid UTF-8 quoted in the error message still gives valid JSON. */
    CHECK(post(port, "/echo", "", "\xff\xfe{}", &res));
    check_error_body(&res, 400, "Bad Request", "/echo");

    CHECK(post(port, "/echo", "", "{\"qty\": \"1\", \"a\"", &res));
    CHECK_INT(res.status, 400);
    /* Links come from the configured public base URL, never from the
     * client's Host or X-Forwarded-Host/Proto. */
    CHECK(roundtrip(port,
                    "POST /echo HTTP/1.1\r\nHost: evil.example:8088\r\n"
                    "Content-Type: Application/JSON; charset=utf-8\r\nContent-Length: 12\r\n\r\n"
                    "{\"qty\": \"1\"}", &res));
    CHECK_INT(res.status, 201);
    CHECK_STR(header(&res, "Location"), "/echo/1");
    j = body_json(&res);
    CHECK_STR(json_string_value(json_object_get(json_object_get(j, "got"), "qty")), "1");
    CHECK_STR(jstr(j, "base"), "https://shop.example");
    json_decref(j);
    CHECK(post(port, "/echo", "X-Forwarded-Host: gw.example:8088, inner:1\r\nX-Forwarded-Proto: http\r\n",
               "{}", &res));
    j = body_json(&res);
    CHECK_STR(jstr(j, "base"), "https://shop.example");
    json_decref(j);

    /* A body must say it is JSON (415 in the contract's shape, no handler
     * run); without a body no Content-Type is needed. */
    static const char *const refused[] = {
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}",
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\na=1",
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/jsonx\r\nContent-Length: 2\r\n\r\n{}",
        "DELETE /things/1 HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}",
    };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        CHECK(roundtrip(port, refused[i], &res));
        check_error_body(&res, 415, "Unsupported Media Type", i == 4 ? "/things/1" : "/echo");
        CHECK_STR(header(&res, "X-Content-Type-Options"), "nosniff");   /* on refusals too */
    }
    CHECK(roundtrip(port, "DELETE /things/1 HTTP/1.1\r\nHost: x\r\n\r\n", &res));
    CHECK_INT(res.status, 204);
}

static void test_async_reply_after_timer(int port)
{
    response res;
    CHECK(roundtrip(port, "GET /async/timer HTTP/1.1\r\nHost: x\r\n\r\n", &res));
    CHECK_INT(res.status, 202);
    json_t *j = body_json(&res);
    CHECK(json_is_true(json_object_get(j, "late")));
    CHECK(json_is_true(json_object_get(j, "alive")));
    json_decref(j);
}

static void test_keepalive(int port)
{
    int fd = loopback_connect(port);
    CHECK(fd >= 0);
    response res;
    const char *req = "GET /orders/1 HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(fd, req, strlen(req));
    CHECK(read_response(fd, false, &res));
    CHECK_INT(res.status, 200);
    req = "GET /orders/2 HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(fd, req, strlen(req));
    CHECK(read_response(fd, false, &res));
    CHECK_INT(res.status, 200);
    json_t *j = body_json(&res);
    CHECK_STR(jstr(j, "id"), "2");
    json_decref(j);
    /* Empty lines before a request are skipped (RFC 9112 2.2): the CRLF
     * some clients add after a POST body, and more before the next one. */
    req = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          "Content-Length: 9\r\n\r\n{\"a\":\"b\"}\r\n";
    send_all(fd, req, strlen(req));
    CHECK(read_response(fd, false, &res));
    CHECK_INT(res.status, 201);
    j = body_json(&res);
    CHECK_STR(json_string_value(json_object_get(json_object_get(j, "got"), "a")), "b");
    json_decref(j);
    req = "\r\n\r\nGET /orders/3 HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(fd, req, strlen(req));
    CHECK(read_response(fd, false, &res));
    CHECK_INT(res.status, 200);
    j = body_json(&res);
    CHECK_STR(jstr(j, "id"), "3");
    json_decref(j);
    close(fd);
}

static void test_client_disconnect(http_server *s, int port)
{
    stashed = NULL;
    int fd = loopback_connect(port);
    const char *req = "GET /async/stash HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(fd, req, strlen(req));
    for (int i = 0; i < 100 && !stashed; i++)
        run_until(NULL, 20);
    CHECK(stashed != NULL);
    if (!stashed) return;
    CHECK(http_req_alive(stashed));
    CHECK_INT(http_server_inflight(s), 1);
    close(fd);
    run_until(NULL, 50);   /* let the FIN arrive */
    CHECK(!http_req_alive(stashed));
    /* The request is still readable, and the late reply is a no-op. */
    CHECK_STR(http_req_path(stashed), "/async/stash");
    CHECK_STR(http_req_route(stashed), "/async/stash");
    http_reply_json(stashed, 200, json_pack("{s:s}", "too", "late"));
    stashed = NULL;
    run_until(NULL, 50);
    CHECK_INT(http_server_inflight(s), 0);

    /* The server is fine afterwards. */
    response res;
    CHECK(roundtrip(port, "GET /orders/9 HTTP/1.1\r\nHost: x\r\n\r\n", &res));
    CHECK_INT(res.status, 200);
}

static void test_metrics(void)
{
    struct evbuffer *out = evbuffer_new();
    metrics_render(out);
    evbuffer_add(out, "", 1);
    const char *text = (const char *)evbuffer_pullup(out, -1);
    CHECK(strstr(text, "carshare_http_requests_total{route=\"/orders/{id}\",method=\"GET\",status=\"200\"}") != NULL);
    CHECK(strstr(text, "carshare_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"}") != NULL);
    /* A declared body over the limit is refused before routing (http_frame.h). */
    CHECK(strstr(text, "carshare_http_refused_total{status=\"413\"}") != NULL);
    CHECK(strstr(text, "carshare_http_request_duration_seconds_bucket{route=\"/orders/{id}\",method=\"GET\",le=\"+Inf\"}") != NULL);
    CHECK(strstr(text, "carshare_http_request_duration_seconds_count{route=\"/orders/{id}\",method=\"GET\"}") != NULL);
    evbuffer_free(out);
}

static int drained_calls;
static void on_drained(void *arg)
{
    (void)arg;
    drained_calls++;
}

/* Like service_run once its loop ends: the server goes away at once. */
static void on_drained_free(void *arg)
{
    drained_calls++;
    http_server_free(arg);
}

/* Drain waits for the request in flight, and for its answer to be written
 * out: the callback frees the server, and the client still gets it all. */
static void test_drain(http_server *s, int port)
{
    stashed = NULL;
    drained_calls = 0;
    int fd = loopback_connect(port);
    const char *req = "GET /async/stash HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(fd, req, strlen(req));
    for (int i = 0; i < 100 && !stashed; i++)
        run_until(NULL, 20);
    CHECK(stashed != NULL);
    if (!stashed) return;

    http_server_drain(s, 0, on_drained_free, s);
    run_until(NULL, 100);
    CHECK_INT(drained_calls, 0);              /* one request still in flight */
    CHECK_INT(http_server_inflight(s), 1);
    int late = loopback_connect(port);
    CHECK(late < 0);                           /* the listener is closed */
    if (late >= 0) close(late);

    char big[20000];
    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    http_reply_json(stashed, 200, json_pack("{s:b,s:s}", "finished", 1, "pad", big));
    stashed = NULL;
    response res;
    CHECK(read_response(fd, false, &res));
    CHECK_INT(res.status, 200);
    CHECK_STR(header(&res, "Connection"), "close");
    json_t *j = body_json(&res);
    CHECK(json_is_true(json_object_get(j, "finished")));
    json_decref(j);
    close(fd);
    for (int i = 0; i < 100 && drained_calls == 0; i++)
        run_until(NULL, 20);
    CHECK_INT(drained_calls, 1);               /* and s is gone now */
}

/* Opens `n` connections at once to a server whose loop does not run (so
 * accepts nothing), and returns how many the kernel completed within a
 * second: a connection beyond the listen backlog has its SYN dropped and
 * stays pending (a real client would retry after a second). */
static int burst_connected(int port, int n)
{
    int *fds = calloc((size_t)n, sizeof *fds);
    struct pollfd *p = calloc((size_t)n, sizeof *p);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    for (int i = 0; i < n; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fds[i] >= 0 && connect(fds[i], (struct sockaddr *)&sa, sizeof sa) != 0 &&
            errno != EINPROGRESS) {
            close(fds[i]);
            fds[i] = -1;
        }
        p[i] = (struct pollfd){.fd = fds[i], .events = POLLOUT};
    }
    int connected = 0;
    for (int waited = 0; waited < 1000 && connected < n; waited += 50) {
        poll(p, (nfds_t)n, 50);
        connected = 0;
        for (int i = 0; i < n; i++) {
            int err = -1;
            socklen_t len = sizeof err;
            if (fds[i] >= 0 && (p[i].revents & POLLOUT) &&
                getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0)
                connected++;
        }
    }
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(p);
    free(fds);
    return connected;
}

/* A burst above evhttp's own backlog (128) waits in the kernel for the
 * server to accept it, instead of losing SYNs; HTTP_LISTEN_BACKLOG sets it. */
static void test_listen_backlog(void)
{
    enum { BURST = 400 };
    http_server *s = http_server_new(base);
    int port = http_server_listen(s, "127.0.0.1", 0);
    CHECK(port > 0);
    CHECK_INT(burst_connected(port, BURST), BURST);
    http_server_free(s);

    setenv("HTTP_LISTEN_BACKLOG", "16", 1);
    s = http_server_new(base);
    port = http_server_listen(s, "127.0.0.1", 0);
    unsetenv("HTTP_LISTEN_BACKLOG");
    CHECK(port > 0);
    int few = burst_connected(port, 64);
    CHECK(few >= 1 && few < 64);
    http_server_free(s);
}

/* http_listener_open: a second listener on a port taken is refused unless
 * both asked for SO_REUSEPORT (the gateway's hand-over); the port bound is
 * reported; a listener without a callback is not accepting. */
static void test_listener_open(void)
{
    int port = 0;
    struct evconnlistener *a = http_listener_open(base, "127.0.0.1", 0, false, &port);
    CHECK(a != NULL && port > 0);
    CHECK(http_listener_open(base, "127.0.0.1", port, false, NULL) == NULL);
    CHECK(http_listener_open(base, "127.0.0.1", port, true, NULL) == NULL);
    evconnlistener_free(a);

    int p1 = 0, p2 = 0;
    struct evconnlistener *r1 = http_listener_open(base, "127.0.0.1", 0, true, &p1);
    CHECK(r1 != NULL && p1 > 0);
    struct evconnlistener *r2 = http_listener_open(base, "127.0.0.1", p1, true, &p2);
    CHECK(r2 != NULL);
    CHECK_INT(p2, p1);
    evconnlistener_free(r2);
    evconnlistener_free(r1);
    CHECK(http_listener_open(base, "127.0.0.1", 70000, false, NULL) == NULL);
}

/* http_handover_*: a process offering its listening socket at a path hands
 * the very same socket (same port, already listening) to one taking it;
 * nobody at the path, or a socket on another port, is "nothing taken";
 * after stop the path is gone. The offer is answered from the loop, so the
 * taking side runs on a thread here. */
typedef struct {
    const char *path;
    int port;
    struct event_base *own;
    struct evconnlistener *got;
} take_job;

static void *take_thread(void *arg)
{
    take_job *j = arg;
    j->got = http_handover_take(j->own, j->path, j->port);
    return NULL;
}

static bool take_while_looping(take_job *j)
{
    pthread_t t;
    j->own = event_base_new();
    j->got = NULL;
    if (pthread_create(&t, NULL, take_thread, j) != 0)
        return false;
    /* Serve the offer until the taker is done. */
    for (int i = 0; i < 400; i++) {
        struct timeval tv = {0, 5000};
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
        if (pthread_tryjoin_np(t, NULL) == 0)
            return true;
    }
    pthread_join(t, NULL);
    return true;
}

static void test_handover(void)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/carshare-unit-handover-%ld", (long)getpid());
    unlink(path);
    CHECK(http_handover_take(base, path, 0) == NULL);   /* nobody there */

    int port = 0;
    struct evconnlistener *l = http_listener_open(base, "127.0.0.1", 0, true, &port);
    CHECK(l != NULL);
    http_handover *h = http_handover_offer(base, path, (int)evconnlistener_get_fd(l));
    CHECK(h != NULL);

    take_job j = {.path = path, .port = port};
    CHECK(take_while_looping(&j));
    CHECK(j.got != NULL);
    if (j.got) {
        struct sockaddr_in sa;
        socklen_t len = sizeof sa;
        CHECK(getsockname(evconnlistener_get_fd(j.got), (struct sockaddr *)&sa, &len) == 0);
        CHECK_INT(ntohs(sa.sin_port), port);
        /* The same socket: a connection made now is accepted through the
         * descriptor taken, even once the offering side closed its own. */
        evconnlistener_free(l);
        l = NULL;
        int c = loopback_connect(port);
        CHECK(c >= 0);
        int a = accept(evconnlistener_get_fd(j.got), NULL, NULL);
        CHECK(a >= 0);
        close(a);
        close(c);
        evconnlistener_free(j.got);
    }
    event_base_free(j.own);

    /* Another port asked for: not taken. */
    if (l == NULL)
        l = http_listener_open(base, "127.0.0.1", 0, false, &port);
    http_handover_stop(h);
    h = http_handover_offer(base, path, (int)evconnlistener_get_fd(l));
    j = (take_job){.path = path, .port = port == 65535 ? 1 : port + 1};
    CHECK(take_while_looping(&j));
    CHECK(j.got == NULL);
    event_base_free(j.own);
    http_handover_stop(h);
    CHECK(access(path, F_OK) != 0);
    evconnlistener_free(l);
}

/* Drain with nothing in flight still calls back from the loop, not inline. */
static void test_drain_idle(void)
{
    http_server *s = http_server_new(base);
    CHECK(http_server_listen(s, "127.0.0.1", 0) > 0);
    drained_calls = 0;
    http_server_drain(s, 0, on_drained, NULL);
    CHECK_INT(drained_calls, 0);
    run_until(NULL, 50);
    CHECK_INT(drained_calls, 1);
    http_server_free(s);
}

/* The drain's grace period: the listener still accepts, every answer says
 * "Connection: close" (so keep-alive clients move on); a keep-alive
 * connection idle through the grace is closed at its end, then nobody can
 * connect and the drain ends. The grace is long (3 s) so that a stalled
 * machine cannot end it before the checks made inside it. */
static void test_drain_grace(void)
{
    http_server *s = http_server_new(base);
    http_server_route(s, "GET", "/orders/{id}", h_order, NULL);
    int port = http_server_listen(s, "127.0.0.1", 0);
    CHECK(port > 0);
    const char *req = "GET /orders/1 HTTP/1.1\r\nHost: x\r\n\r\n";
    response res;
    int idle = loopback_connect(port);
    CHECK(idle >= 0);
    /* An empty line after its request (skipped) leaves it idle. */
    const char *then_empty = "GET /orders/1 HTTP/1.1\r\nHost: x\r\n\r\n\r\n";
    send_all(idle, then_empty, strlen(then_empty));
    CHECK(read_response(idle, false, &res));
    CHECK_INT(res.status, 200);
    CHECK(header(&res, "Connection") == NULL);     /* kept alive before the drain */

    drained_calls = 0;
    http_server_drain(s, 3000, on_drained, NULL);
    int late = loopback_connect(port);
    CHECK(late >= 0);                                /* still accepting */
    send_all(late, req, strlen(req));
    CHECK(read_response(late, false, &res));
    CHECK_INT(res.status, 200);
    CHECK_STR(header(&res, "Connection"), "close");
    close(late);
    CHECK_INT(drained_calls, 0);                     /* not before the grace ends */

    for (int i = 0; i < 1000 && drained_calls == 0; i++)
        run_until(NULL, 20);
    CHECK_INT(drained_calls, 1);
    char byte;
    CHECK(recv(idle, &byte, 1, 0) == 0);             /* the idle one closed cleanly */
    close(idle);
    int after = loopback_connect(port);
    CHECK(after < 0);                                /* the listener is closed */
    if (after >= 0) close(after);
    http_server_free(s);
}

static void test_request_timeout_and_fallback(void)
{
    setenv("HTTP_REQUEST_TIMEOUT_MS", "100", 1);
    http_server *s = http_server_new(base);
    unsetenv("HTTP_REQUEST_TIMEOUT_MS");
    http_server_route(s, "GET", "/slow", h_stash, NULL);
    http_server_fallback(s, "web", h_fallback, NULL);
    int port = http_server_listen(s, "127.0.0.1", 0);
    CHECK(port > 0);

    response res;
    CHECK(roundtrip(port, "GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n", &res));
    CHECK_INT(res.status, 200);
    CHECK_STR(res.body, "fallback GET /index.html");
    CHECK(post(port, "/api/anything", "", "", &res));
    CHECK_STR(res.body, "fallback POST /api/anything");

    stashed = NULL;
    CHECK(roundtrip(port, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n", &res));
    check_error_body(&res, 503, "Service Unavailable", "/slow");
    CHECK(stashed != NULL);
    CHECK_INT(http_server_inflight(s), 0);
    if (stashed) {
        CHECK(!http_req_alive(stashed));
        http_reply_json(stashed, 200, json_pack("{s:s}", "late", "dropped"));
        stashed = NULL;
    }

    struct evbuffer *out = evbuffer_new();
    metrics_render(out);
    evbuffer_add(out, "", 1);
    const char *text = (const char *)evbuffer_pullup(out, -1);
    CHECK(strstr(text, "route=\"web\",method=\"GET\",status=\"200\"") != NULL);
    CHECK(strstr(text, "route=\"/slow\",method=\"GET\",status=\"503\"") != NULL);
    evbuffer_free(out);
    http_server_free(s);
}

/* Freeing the server under a pending request: the handler may still reply. */
static void test_free_with_pending_request(void)
{
    http_server *s = http_server_new(base);
    http_server_route(s, "GET", "/pending/{id}", h_stash, NULL);
    int port = http_server_listen(s, "127.0.0.1", 0);
    stashed = NULL;
    int fd = loopback_connect(port);
    const char *req = "GET /pending/77?x=y HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(fd, req, strlen(req));
    for (int i = 0; i < 100 && !stashed; i++)
        run_until(NULL, 20);
    CHECK(stashed != NULL);
    http_server_free(s);
    if (stashed) {
        CHECK_STR(http_req_param(stashed, "id"), "77");
        CHECK_STR(http_req_query(stashed, "x"), "y");
        CHECK_STR(http_req_route(stashed), "/pending/{id}");
        CHECK(!http_req_alive(stashed));
        http_reply_error(stashed, 500, "gone %d", 1);
        stashed = NULL;
    }
    response res;
    CHECK(!read_response(fd, false, &res));   /* closed without an answer */
    close(fd);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();
    base = event_base_new();

    setenv("HTTP_MAX_BODY", "1024", 1);
    setenv("HTTP_MAX_HEADERS", "1024", 1);
    http_server *s = http_server_new(base);
    unsetenv("HTTP_MAX_BODY");
    unsetenv("HTTP_MAX_HEADERS");
    CHECK(s != NULL);
    CHECK_INT(http_server_set_public_base_url(s, "ftp://x"), -1);
    CHECK_INT(http_server_set_public_base_url(s, "https://a b"), -1);
    CHECK_INT(http_server_set_public_base_url(s, "https://x\"><script>"), -1);
    CHECK_INT(http_server_set_public_base_url(s, "https://shop.example/"), 0);
    http_server_add_answer_header(s, "X-Content-Type-Options", "nosniff");
    http_server_route(s, "GET", "/orders/{id}", h_order, NULL);
    http_server_route(s, "GET", "/orders/{id}/items/{item}", h_item_of_order, NULL);
    http_server_route(s, "GET", "/orders/search/findByCustomerId", h_search, NULL);
    http_server_route(s, "POST", "/echo", h_echo, NULL);
    http_server_route(s, "GET", "/async/stash", h_stash, NULL);
    http_server_route(s, "GET", "/async/timer", h_timer, NULL);
    http_server_route(s, "DELETE", "/things/{id}", h_empty, NULL);
    int port = http_server_listen(s, "127.0.0.1", 0);
    CHECK(port > 0);

    test_routing_with_params(port);
    test_literal_route_and_query(port);
    test_not_found(port);
    test_method_not_allowed(port);
    test_head_and_options(port);
    test_request_id(port);
    test_body_limit(port);
    test_header_limit(port);
    test_json_body(port);
    test_async_reply_after_timer(port);
    test_keepalive(port);
    test_client_disconnect(s, port);
    test_metrics();
    test_drain(s, port);   /* frees s */

    test_drain_idle();
    test_drain_grace();
    test_listen_backlog();
    test_listener_open();
    test_handover();
    test_request_timeout_and_fallback();
    test_free_with_pending_request();

    event_base_free(base);
    libevent_global_shutdown();
    return test_done("test_http");
}
