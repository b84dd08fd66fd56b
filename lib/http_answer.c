/* http_answer.c: the answer path of the HTTP server (http_private.h).
 *
 * Every answer, errors included, leaves through http_send_answer: the
 * contract's shape, X-Request-Id, a Date, an access-log line, metrics.
 *
 * Lifetime. A handler answers at once or later. After the handler returns
 * without answering, the request is "async": a timer (a libevent common
 * timeout, O(1) to arm) answers 503 after HTTP_REQUEST_TIMEOUT_MS, and
 * the connection's close callback (http_conn.c) notices when libevent
 * frees the connection. The answer is then dropped, and the http_req is
 * still released exactly once, when its handler replies. Two flags keep
 * this straight: `answered` (the client got its answer, from the handler
 * or the timeout) and `replied` (the handler called an http_reply_*
 * function). The http_req is released when both hold and the handler has
 * returned.
 *
 * Group commit. While a commit is not on disk, an answer is held complete
 * by its connection until the sync (see hold_answer). */
#include "http_private.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include "jtext.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"

/* ------------------------------------------------------------------ */
/* Status phrases                                                      */

const char *http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default:
        if (status >= 200 && status < 300) return "Success";
        if (status >= 300 && status < 400) return "Redirection";
        if (status >= 400 && status < 500) return "Client Error";
        return "Server Error";
    }
}

static bool status_has_body(int status)
{
    return status >= 200 && status != 204 && status != 304;
}

static size_t utf8_sequence_length(const unsigned char *p)
{
    unsigned char c = p[0];
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return (p[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        if ((p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80) return 0;
        if (c == 0xe0 && p[1] < 0xa0) return 0;    /* overlong */
        if (c == 0xed && p[1] >= 0xa0) return 0;   /* surrogate */
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if ((p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80) return 0;
        if (c == 0xf0 && p[1] < 0x90) return 0;    /* overlong */
        if (c == 0xf4 && p[1] >= 0x90) return 0;   /* beyond U+10FFFF */
        return 4;
    }
    return 0;
}

/* Appends s as a JSON string; invalid UTF-8 becomes U+FFFD, so that a
 * message quoting client input is still valid JSON. */
static void add_json_string(struct evbuffer *out, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    char buf[512];
    size_t n = 0;
    buf[n++] = '"';
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    while (*p) {
        if (n > sizeof buf - 8) {
            evbuffer_add(out, buf, n);
            n = 0;
        }
        unsigned char c = *p;
        if (c == '"' || c == '\\') {
            buf[n++] = '\\';
            buf[n++] = (char)c;
            p++;
        } else if (c < 0x20) {
            memcpy(buf + n, "\\u00", 4);
            buf[n + 4] = hex[c >> 4];
            buf[n + 5] = hex[c & 15];
            n += 6;
            p++;
        } else {
            size_t len = utf8_sequence_length(p);
            if (len) {
                memcpy(buf + n, p, len);
                n += len;
                p += len;
            } else {
                memcpy(buf + n, "\\ufffd", 6);
                n += 6;
                p++;
            }
        }
    }
    buf[n++] = '"';
    evbuffer_add(out, buf, n);
}


/* Eager write. A bufferevent only queues what it is given: with its
 * write event enabled, the loop's next turn reports the socket writable,
 * the bytes go out, and the write event is deleted again. That is an
 * epoll_ctl to add EPOLLOUT and one to remove it, plus a loop turn, for
 * every answer and every proxied request, although a loopback or LAN
 * socket almost always takes the whole message at once (nginx writes at
 * once too, and waits for EPOLLOUT only when the socket is full). So the
 * queued bytes are written here, right after they were queued, and the
 * bufferevent's EV_WRITE is kept disabled while nothing waits (the server
 * enables only EV_READ on a plain connection): adding to the output then
 * arms nothing. What a full socket does not take enables EV_WRITE, and the
 * write event finishes it (with the write timeout) as before; an error is
 * left to that write event too, which reports it through the usual path.
 * When all went out, bufferevent_trigger runs the write callback (the
 * "message written" step: read the next request, or the answer) in the
 * same turn; it holds a reference while the callback runs.
 * Measured on the gateway (GET proxied to bench-hello), per request: with
 * EV_WRITE left enabled after the write, epoll_ctl 3.9 (EPOLLOUT added on
 * both sockets, then removed by the next turn's spurious wake-up); with it
 * disabled, 0. */
void http_write_now(struct bufferevent *bev)
{
    if (!bev)
        return;
    struct evbuffer *out = bufferevent_get_output(bev);
    int fd = bufferevent_getfd(bev);
    if (fd < 0 || evbuffer_get_length(out) == 0)
        return;   /* not connected yet, or nothing queued (a held answer) */
    /* A socket bufferevent keeps the start of its output frozen so that
     * only it drains the buffer; it thaws it around its own writes, so do
     * we (a frozen buffer refuses to write). */
    evbuffer_unfreeze(out, 1);
    int written = evbuffer_write(out, fd);
    evbuffer_freeze(out, 1);
    if (written < 0 || evbuffer_get_length(out) > 0) {
        bufferevent_enable(bev, EV_WRITE);  /* error or a full socket: the write event takes over */
        return;
    }
    /* Enabled: a connect's, or a full socket's earlier. Its event, added
     * when these bytes were queued, is deleted in the same turn, so epoll
     * hears of neither. */
    if (bufferevent_get_enabled(bev) & EV_WRITE)
        bufferevent_disable(bev, EV_WRITE);
    bufferevent_trigger(bev, EV_WRITE, 0);
}

ssize_t http_recv_into(int fd, struct evbuffer *input, size_t want, int *err)
{
    /* The bufferevent keeps its input's end frozen (only it adds there);
     * it thaws it around its own reads, so do we. */
    evbuffer_unfreeze(input, 0);
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(input, (ev_ssize_t)want, &v, 1) < 1)
        mem_must(NULL);
    ssize_t n = recv(fd, v.iov_base, v.iov_len < want ? v.iov_len : want, MSG_DONTWAIT);
    *err = n < 0 ? errno : 0;
    if (n > 0) {
        v.iov_len = (size_t)n;
        evbuffer_commit_space(input, &v, 1);
    }
    evbuffer_freeze(input, 0);
    return n;
}

/* The Date header's line, "Date: ...\r\n" (its length in *len). It
 * changes once a second, so it is formatted then and reused (gmtime and
 * snprintf cost 3.4k instructions). Fixed English names, as RFC 9110
 * wants, whatever the locale. */
static const char *date_line(size_t *len)
{
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    static _Thread_local time_t cached_second = -1;
    static _Thread_local char text[48];
    static _Thread_local size_t text_len;
    time_t now = time(NULL);
    if (now != cached_second) {
        struct tm tm;
        gmtime_r(&now, &tm);
        int n = snprintf(text, sizeof text, "Date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n",
                         days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12],
                         tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
        text_len = n > 0 && (size_t)n < sizeof text ? (size_t)n : 0;
        cached_second = now;
    }
    *len = text_len;
    return text;
}

/* The decimal digits of v, at the end of buf[24]; returns where they start
 * (at least min_digits of them, zeros in front). */
static char *decimal(char buf[24], unsigned long long v, int min_digits)
{
    char *p = buf + 24;
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v || buf + 24 - p < min_digits);
    return p;
}

/* The access log line, one per request, built without printf (vsnprintf
 * with a %.3f was about 4k instructions, a tenth of a proxied request):
 * msg=request req= method= path= route= status= dur_ms= bytes= peer=
 * [client=gone]. */
typedef struct line_buf {
    char text[1536];
    size_t n;
} line_buf;

static void line_put(line_buf *b, const char *s, size_t len)
{
    if (len > sizeof b->text - b->n)
        len = sizeof b->text - b->n;
    memcpy(b->text + b->n, s, len);
    b->n += len;
}

static void line_str(line_buf *b, const char *s)
{
    line_put(b, s, strlen(s));
}

#define LINE_LITERAL(b, s) line_put(b, s, sizeof s - 1)   /* s a string literal */

static void line_uint(line_buf *b, unsigned long long v, int min_digits)
{
    char digits[24];
    char *p = decimal(digits, v, min_digits);
    line_put(b, p, (size_t)(digits + sizeof digits - p));
}

static void access_log(const http_req *r, int status, unsigned long long ns, size_t bytes,
                       bool client_gone)
{
    const char *level = status >= 500 ? "warn" : "info";
    if (!log_enabled(level))
        return;
    char quoted[512];
    line_buf b;
    b.n = 0;
    LINE_LITERAL(&b, "msg=request req=");
    line_str(&b, r->id);
    LINE_LITERAL(&b, " method=");
    line_str(&b, r->method);
    LINE_LITERAL(&b, " path=");
    line_str(&b, log_quote(quoted, sizeof quoted, r->path));
    LINE_LITERAL(&b, " route=");
    line_str(&b, log_quote(quoted, 256, r->route_pattern));
    LINE_LITERAL(&b, " status=");
    line_uint(&b, (unsigned long long)(status >= 0 ? status : 0), 1);
    unsigned long long us = (ns + 500) / 1000;      /* milliseconds, 3 decimals */
    LINE_LITERAL(&b, " dur_ms=");
    line_uint(&b, us / 1000, 1);
    line_put(&b, ".", 1);
    line_uint(&b, us % 1000, 3);
    LINE_LITERAL(&b, " bytes=");
    line_uint(&b, bytes, 1);
    LINE_LITERAL(&b, " peer=");
    line_str(&b, r->peer);
    if (client_gone)
        LINE_LITERAL(&b, " client=gone");
    log_text(level, b.text, b.n);
}

/* A request's two series (count by route, method and status; duration by
 * route and method), from the server's cache: the route's label and the
 * method are the server's own strings, so their addresses and the status
 * are the key. A miss formats the labels and looks the series up, as an
 * orphan (its server gone) always does. */
static void request_metrics(const http_req *r, int status, double seconds)
{
    http_server *s = r->server;
    char labels[512];
    if (!s) {
        metrics_counter_add(METRIC_REQUESTS, metrics_route_labels(labels, sizeof labels,
                            r->route_label, r->method, true, status), 1);
        metrics_histogram_observe(METRIC_DURATION, metrics_route_labels(labels, sizeof labels,
                                  r->route_label, r->method, false, 0), seconds);
        return;
    }
    uintptr_t key = ((uintptr_t)r->route_label >> 3) * 31u + ((uintptr_t)r->method >> 3) * 7u +
                    (uintptr_t)status;
    http_metric_slot *m = &s->metric_cache[key % HTTP_METRIC_CACHE];
    if (m->label != r->route_label || m->method != r->method || m->status != status) {
        m->label = r->route_label;
        m->method = r->method;
        m->status = status;
        m->requests = metrics_counter_series(METRIC_REQUESTS, metrics_route_labels(
            labels, sizeof labels, r->route_label, r->method, true, status));
        m->duration = metrics_histogram_series(METRIC_DURATION, metrics_route_labels(
            labels, sizeof labels, r->route_label, r->method, false, 0));
    }
    metrics_series_add(m->requests, 1);
    metrics_series_observe(m->duration, seconds);
}

/* Bookkeeping once the client has its answer (or is gone): access log,
 * metrics, in-flight count. */
static void req_answered(http_req *r, int status, size_t bytes, bool client_gone)
{
    assert(!r->answered);   /* one answer per request: reply_claim and the timer see to it */
    r->answered = true;
    if (r->timer_armed) {
        event_del(r->timer);
        r->timer_armed = false;
    }
    unsigned long long ns = http_now_ns() - r->t0_ns;
    double seconds = (double)ns / 1e9;
    access_log(r, status, ns, bytes, client_gone);

    request_metrics(r, status, seconds);

    http_server *s = r->server;
    if (s) {
        s->inflight--;
        http_drain_check(s);
    }
}

/* Group commit (http_defer): while a commit is not on disk, an answer
 * waits for the sync, complete (head and body) in its connection's `held`
 * buffer and counted as unflushed, so a drain waits for it too. At most
 * one per connection (the next request is read only after the answer is
 * written). If the connection closes meanwhile, the wait is cancelled
 * (http_conn.c). */
void http_send_held_answer(void *arg)
{
    http_conn *c = arg;
    struct evbuffer *held = c->held;
    c->held = NULL;
    evbuffer_add_buffer(bufferevent_get_output(c->bev), held);
    evbuffer_free(held);
    http_conn_write(c);
}

/* ---- the answer's head ---- */

/* ---- message heads (http.h: http_head_buf) ---- */

/* What does not fit: the buffer goes out, and the piece after it (at once
 * when larger than the buffer). */
void http_head_put_slow(http_head_buf *h, const char *p, size_t len)
{
    evbuffer_add(h->out, h->text, h->n);
    h->n = 0;
    if (len > sizeof h->text) {
        evbuffer_add(h->out, p, len);
        return;
    }
    memcpy(h->text, p, len);
    h->n = len;
}

void http_head_end(http_head_buf *h)
{
    evbuffer_add(h->out, h->text, h->n);
    h->n = 0;
}

static bool name_is(const char *name, const char *what)
{
    return (name[0] | 0x20) == (what[0] | 0x20) && strcasecmp(name, what) == 0;
}

/* The server's own headers (the gateway's security headers) replace any of
 * the same name a handler or an upstream set. */
static bool replaced_by_server(const http_server *s, const char *name)
{
    for (const http_header *a = s ? s->answer_headers : NULL; a; a = a->next)
        if (name_is(name, a->name))
            return true;
    return false;
}

/* A handler's header that the head writes itself, or that belongs to the
 * hop (the connection's framing is this server's). */
static bool written_by_server(const char *name, bool own_type, bool own_length)
{
    switch (name[0] | 0x20) {
    case 'c':
        return name_is(name, "Connection") || (own_type && name_is(name, "Content-Type")) ||
               (own_length && name_is(name, "Content-Length"));
    case 'd': return name_is(name, "Date");
    case 't': return name_is(name, "Transfer-Encoding");
    case 'x': return name_is(name, "X-Request-Id");
    case 'k': return name_is(name, "Keep-Alive");
    default: return false;
    }
}

static void put_status_line(http_head_buf *h, int status)
{
    char line[64];
    int code = status >= 100 && status <= 999 ? status : 500;
    memcpy(line, "HTTP/1.1 ", 9);
    line[9] = (char)('0' + code / 100);
    line[10] = (char)('0' + code / 10 % 10);
    line[11] = (char)('0' + code % 10);
    line[12] = ' ';
    const char *reason = http_reason(code);
    size_t rlen = strlen(reason);
    if (rlen > sizeof line - 16) rlen = sizeof line - 16;
    memcpy(line + 13, reason, rlen);
    memcpy(line + 13 + rlen, "\r\n", 2);
    http_head_put(h, line, 15 + rlen);
}

/* Writes status line and headers into out. Answers always carry the
 * server's own version, HTTP/1.1 (RFC 9110 6.2), whatever the request's. */
static void write_head(http_req *r, struct evbuffer *out, int status, const char *content_type,
                       size_t body_len, bool close_after)
{
    http_head_buf h;
    h.out = out;
    h.n = 0;
    put_status_line(&h, status);
    bool has_body = status_has_body(status);
    const char *handler_length = NULL;
    for (const http_header *x = r->out.first; x; x = x->next) {
        if (r->head && has_body && name_is(x->name, "Content-Length")) {
            if (!handler_length) handler_length = x->value;   /* a proxied HEAD's */
            continue;
        }
        if (written_by_server(x->name, content_type != NULL, true) ||
            replaced_by_server(r->server, x->name))
            continue;
        http_head_field(&h, x->name, x->value);
    }
    if (content_type)
        http_head_field(&h, "Content-Type", content_type);
    http_head_field(&h, "X-Request-Id", r->id);
    if (r->server && r->server->answer_block_len)   /* its own headers, formatted once (http.c) */
        http_head_put(&h, r->server->answer_block, r->server->answer_block_len);
    if (has_body) {
        /* HEAD: the length the GET would have (the handler's, when it knows
         * it better: a proxied HEAD, whose body is empty here only). */
        if (handler_length) {
            http_head_field(&h, "Content-Length", handler_length);
        } else {
            char digits[24];
            char *p = decimal(digits, body_len, 1);
            HTTP_HEAD_LITERAL(&h, "Content-Length: ");
            http_head_put(&h, p, (size_t)(digits + sizeof digits - p));
            HTTP_HEAD_LITERAL(&h, "\r\n");
        }
    }
    size_t date_len;
    const char *date = date_line(&date_len);
    http_head_put(&h, date, date_len);
    if (close_after)
        HTTP_HEAD_LITERAL(&h, "Connection: close\r\n");
    else if (r->minor == 0)
        HTTP_HEAD_LITERAL(&h, "Connection: keep-alive\r\n");
    HTTP_HEAD_LITERAL(&h, "\r\n");
    http_head_end(&h);
}

/* True when the answer is held; false: send it now. */
static bool hold_answer(http_conn *c)
{
    if (!http_defer(http_send_held_answer, c))
        return false;
    c->held = mem_must(evbuffer_new());
    return true;
}

/* Sends the answer whose body (body_len bytes) is in the server's scratch
 * buffer; c NULL means the client is gone. */
void http_send_answer(http_req *r, http_conn *c, int status, const char *content_type,
                      size_t body_len)
{
    http_server *s = r->server;
    r->conn = NULL;   /* the connection is done with this request */
    bool write = false;
    if (c && s) {
        bool close_after = !r->keep_alive || s->draining;
        struct evbuffer *out = hold_answer(c) ? c->held : bufferevent_get_output(c->bev);
        write_head(r, out, status, content_type, body_len, close_after);
        if (!r->head && status_has_body(status))
            evbuffer_add_buffer(out, s->scratch);
        http_conn_answered(c, close_after);
        write = !c->held;
    }
    if (s)
        evbuffer_drain(s->scratch, evbuffer_get_length(s->scratch));
    req_answered(r, status, body_len, c == NULL);
    if (write)
        http_conn_write(c);    /* after the bookkeeping: it may serve the next request */
}

/* The contract's error body, written into out; returns its length. */
size_t http_write_error_body(struct evbuffer *out, int status, const char *message,
                             const char *path)
{
    size_t before = evbuffer_get_length(out);
    evbuffer_add_printf(out, "{\"status\":%d,\"error\":", status);
    add_json_string(out, http_reason(status));
    evbuffer_add(out, ",\"message\":", 11);
    add_json_string(out, message);
    evbuffer_add(out, ",\"path\":", 8);
    add_json_string(out, path);
    evbuffer_add(out, "}", 1);
    return evbuffer_get_length(out) - before;
}

static void answer_error(http_req *r, int status, const char *message)
{
    http_conn *c = http_req_client(r);
    size_t len = 0;
    if (c && r->server)
        len = http_write_error_body(r->server->scratch, status, message, r->path);
    http_send_answer(r, c, status, "application/json", len);
}

/* Dumps JSON straight into the output buffer (no intermediate string).
 * Returns its length, 0 if jansson refused the value. */
static size_t dump_json(struct evbuffer *out, const json_t *body)
{
    size_t want = 4096;
    for (int attempt = 0; attempt < 2; attempt++) {
        struct evbuffer_iovec v;
        if (evbuffer_reserve_space(out, (ev_ssize_t)want, &v, 1) < 1)
            mem_must(NULL);
        long fast = jtext_dump(body, false, v.iov_base, v.iov_len);
        size_t n = fast >= 0 ? (size_t)fast
                             : json_dumpb(body, v.iov_base, v.iov_len, JSON_COMPACT | JSON_ENCODE_ANY);
        if (n == 0)
            return 0;
        if (n <= v.iov_len) {
            v.iov_len = n;
            evbuffer_commit_space(out, &v, 1);
            return n;
        }
        want = n;   /* too big for the first guess: reserve exactly that */
    }
    return 0;
}

/* After a handler's reply (the client has its answer by now): release
 * the request at once, or when the handler returns (see dispatch). */
static void reply_done(http_req *r)
{
    if (!r->in_handler)
        http_req_release(r);
}

/* Records the handler's reply. False when nothing is to be sent: a second
 * reply (ignored), or a late one after the request timeout answered (the
 * request is released here). */
static bool reply_claim(http_req *r)
{
    if (r->replied) {
        log_error("msg=\"second reply to one request ignored\" req=%s route=%s", r->id,
                  r->route_pattern);
        return false;
    }
    r->replied = true;
    if (r->answered) {
        log_warn("msg=\"late reply dropped\" req=%s route=%s reason=\"already answered by the request timeout\"",
                 r->id, r->route_pattern);
        reply_done(r);
        return false;
    }
    return true;
}

/* ---- the http_reply_* functions ---- */

void http_set_header(http_req *r, const char *name, const char *value)
{
    if (r->answered || !name || !value)
        return;
    if (!http_field_valid(name, value)) {    /* a handler copying client input cannot split the answer */
        log_warn("msg=\"answer header dropped: not a valid field\" req=%s", r->id);
        return;
    }
    size_t nlen = strlen(name), vlen = strlen(value);
    http_header *h = http_req_alloc(r, sizeof *h + nlen + vlen + 2);
    char *text = (char *)(h + 1);
    memcpy(text, name, nlen + 1);
    memcpy(text + nlen + 1, value, vlen + 1);
    h->name = text;
    h->value = text + nlen + 1;
    http_header_append(&r->out, h);
}

void http_reply_json(http_req *r, int status, json_t *body)
{
    if (!reply_claim(r)) {
        json_decref(body);
        return;
    }
    http_conn *c = http_req_client(r);
    if (c && !body) {
        answer_error(r, 500, "the handler built no response body");
    } else {
        size_t len = c && r->server ? dump_json(r->server->scratch, body) : 0;
        if (c && r->server && len == 0)
            answer_error(r, 500, "the response body could not be encoded as JSON");
        else
            http_send_answer(r, c, status, "application/json", len);
    }
    json_decref(body);
    reply_done(r);
}

void http_reply_error(http_req *r, int status, const char *fmt, ...)
{
    if (!reply_claim(r))
        return;
    char message[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    answer_error(r, status, message);
    reply_done(r);
}

void http_reply_raw(http_req *r, int status, const char *content_type, const void *data,
                    size_t len)
{
    if (!reply_claim(r))
        return;
    http_conn *c = http_req_client(r);
    if (c && r->server && len)
        evbuffer_add(r->server->scratch, data, len);
    http_send_answer(r, c, status, content_type, len);
    reply_done(r);
}

void http_reply_empty(http_req *r, int status)
{
    if (!reply_claim(r))
        return;
    http_send_answer(r, http_req_client(r), status, NULL, 0);
    reply_done(r);
}

/* The server's own refusals (404, 405, 413, ...), before any handler. */
void http_refuse(http_req *r, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void http_refuse(http_req *r, int status, const char *fmt, ...)
{
    char message[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    r->replied = true;
    answer_error(r, status, message);
    http_req_release(r);
}

void http_on_request_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_req *r = arg;
    r->timer_armed = false;
    if (r->answered)
        return;
    long ms = r->server ? r->server->request_timeout_ms : 0;
    char message[160];
    snprintf(message, sizeof message,
             "the request was not answered within %ld ms; it may or may not have taken effect", ms);
    http_set_header(r, "Retry-After", "1");
    /* The handler still holds r: it is released when the handler replies. */
    answer_error(r, 503, message);
}
