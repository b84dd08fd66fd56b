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
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sys/queue.h>

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


/* Eager write. evhttp only queues what it sends: the bufferevent enables
 * its write event, the loop's next turn reports the socket writable, the
 * bytes go out, and the write event is disabled again. That is an
 * epoll_ctl to add EPOLLOUT and one to remove it, plus a loop turn, for
 * every answer and every proxied request, although a loopback or LAN
 * socket almost always takes the whole message at once (nginx writes at
 * once too, and waits for EPOLLOUT only when the socket is full). So the
 * queued bytes are written here, right after evhttp queued them; when all
 * went out, bufferevent_trigger runs evhttp's write callback (its "message
 * written" step: read the next request, or the answer) in the same turn,
 * so the write event is enabled and disabled within one turn and
 * libevent's changelist sends nothing to epoll. What a full socket does
 * not take stays queued and the write event finishes it as before; an
 * error is left to that write event too, which reports it through
 * evhttp's usual path. bufferevent_trigger holds a reference, so evhttp
 * may free the connection in its callback (Connection: close).
 * Measured on the gateway (GET proxied to a bare evhttp upstream), per
 * request: epoll_ctl 5.9 -> 3.4, and 92k -> 85k instructions (callgrind). */
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
    if (written < 0 || evbuffer_get_length(out) > 0)
        return;   /* error or a full socket: the write event takes over */
    bufferevent_trigger(bev, EV_WRITE, 0);
}

/* The Date header. evhttp formats one for every answer that has none
 * (gmtime and snprintf: 3.4k of the gateway's 85k instructions per proxied
 * request, measured with callgrind); its text changes once a second, so it
 * is formatted then and reused. Fixed English names, as RFC 9110 wants,
 * whatever the locale. (evhttp dated only HTTP/1.1 answers; an HTTP/1.0
 * client now gets a Date too, as RFC 9110 asks of a server with a clock.) */
static void add_date(struct evhttp_request *ev)
{
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    static _Thread_local time_t cached_second = -1;
    static _Thread_local char text[40];
    if (!ev)
        return;
    time_t now = time(NULL);
    if (now != cached_second) {
        struct tm tm;
        gmtime_r(&now, &tm);
        snprintf(text, sizeof text, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday % 7],
                 tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                 tm.tm_sec);
        cached_second = now;
    }
    evhttp_add_header(evhttp_request_get_output_headers(ev), "Date", text);
}


/* An answer handed to evhttp is only queued; the drain must not end (and
 * the service free the server) before it is on the wire. evhttp reports
 * the end of the write through the request's on-complete callback, or,
 * when the write fails, frees the connection without it: the close
 * callback covers that case. Once written, the connection waits for its
 * next request, which must arrive in time. */
static void on_answer_flushed(struct evhttp_request *ev, void *arg)
{
    (void)ev;
    http_conn *c = arg;
    http_server *s = c->server;
    if (c->unflushed) {
        c->unflushed = false;
        s->unflushed--;
    }
    event_add(c->deadline, s->read_deadline_tv);
    http_drain_check(s);
}

static void track_flush(http_server *s, http_conn *c, struct evhttp_request *ev)
{
    if (!c || !evhttp_request_get_connection(ev))
        return;
    s->unflushed++;
    c->unflushed = true;
    evhttp_request_set_on_complete_cb(ev, on_answer_flushed, c);
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
    double seconds = (double)(http_now_ns() - r->t0_ns) / 1e9;
    char quoted_path[512], quoted_route[256];
    log_line(status >= 500 ? "warn" : "info",
             "msg=request req=%s method=%s path=%s route=%s status=%d dur_ms=%.3f bytes=%zu peer=%s%s",
             r->id, r->method, log_quote(quoted_path, sizeof quoted_path, r->path),
             log_quote(quoted_route, sizeof quoted_route, r->route_pattern), status,
             seconds * 1000.0, bytes, r->peer,
             client_gone ? " client=gone" : "");

    char labels[512];
    metrics_counter_add(METRIC_REQUESTS, metrics_route_labels(labels, sizeof labels,
                        r->route_label, r->method, true, status), 1);
    metrics_histogram_observe(METRIC_DURATION, metrics_route_labels(labels, sizeof labels,
                              r->route_label, r->method, false, 0), seconds);

    http_server *s = r->server;
    if (s) {
        s->inflight--;
        http_drain_check(s);
    }
}

/* Group commit (http_defer): while a commit is not on disk, answers wait
 * for the sync, complete (headers and body in ev) and counted as
 * unflushed, so a drain waits for them too. At most one per connection
 * (evhttp reads a connection's next request only after its answer), so
 * the connection keeps it. If the connection closes meanwhile, libevent
 * frees the request and the wait is cancelled (on_connection_closed). */
void http_send_held_answer(void *arg)
{
    http_conn *c = arg;
    struct evhttp_request *ev = c->held;
    c->held = NULL;
    evhttp_send_reply(ev, c->held_status, http_reason(c->held_status), NULL);
    if (!c->server->make_bev)   /* TLS: only the bufferevent may write its socket */
        http_write_now(c->bev);     /* may free c (Connection: close) */
}

/* True when the answer is held; false: send it now. */
static bool hold_answer(http_conn *c, struct evhttp_request *ev, int status)
{
    if (!c || !http_defer(http_send_held_answer, c))
        return false;
    c->held = ev;
    c->held_status = status;
    return true;
}

/* The server's own headers (the gateway's security headers), replacing any
 * of the same name the handler or an upstream set. */
static void add_answer_headers(http_server *s, struct evkeyvalq *h)
{
    const struct evkeyval *kv;
    TAILQ_FOREACH(kv, &s->answer_headers, next) {
        evhttp_remove_header(h, kv->key);
        evhttp_add_header(h, kv->key, kv->value);
    }
}

/* Sends the answer whose body (body_len bytes) is already in ev's output
 * buffer; ev NULL means the client is gone. */
void http_send_answer(http_req *r, struct evhttp_request *ev, int status,
                        const char *content_type, size_t body_len)
{
    struct bufferevent *bev = NULL;   /* to write to at once (http_write_now) */
    if (ev) {
        struct evkeyvalq *h = evhttp_request_get_output_headers(ev);
        if (content_type) {
            evhttp_remove_header(h, "Content-Type");
            evhttp_add_header(h, "Content-Type", content_type);
        }
        evhttp_add_header(h, "X-Request-Id", r->id);
        if (r->server)
            add_answer_headers(r->server, h);
        if (r->head) {
            /* The body was measured and dropped: say how long it is, as the
             * GET would, since evhttp adds no Content-Length to HEAD. A
             * length the handler set (a proxied HEAD) is the right one. */
            struct evbuffer *out = evhttp_request_get_output_buffer(ev);
            evbuffer_drain(out, evbuffer_get_length(out));
            if (status_has_body(status) && !evhttp_find_header(h, "Content-Length")) {
                char len[24];
                snprintf(len, sizeof len, "%zu", body_len);
                evhttp_add_header(h, "Content-Length", len);
            }
        }
        if (r->server) {
            if (r->server->draining) {
                evhttp_remove_header(h, "Connection");
                evhttp_add_header(h, "Connection", "close");
            }
            track_flush(r->server, r->conn, ev);
        }
        add_date(ev);
        http_conn *c = r->conn;
        r->conn = NULL;   /* the connection is done with this request */
        if (!hold_answer(r->server ? c : NULL, ev, status)) {
            evhttp_send_reply(ev, status, http_reason(status), NULL);
            bev = c && c->evcon && !r->server->make_bev ? c->bev : NULL;
        }
        r->ev = NULL;
    }
    req_answered(r, status, body_len, ev == NULL);
    http_write_now(bev);    /* after the bookkeeping: it may serve the next request */
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
    struct evhttp_request *ev = http_req_client(r);
    size_t len = 0;
    if (ev)
        len = http_write_error_body(evhttp_request_get_output_buffer(ev), status, message, r->path);
    http_send_answer(r, ev, status, "application/json", len);
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
    if (r->ev && !r->answered)
        evhttp_add_header(evhttp_request_get_output_headers(r->ev), name, value);
}

void http_reply_json(http_req *r, int status, json_t *body)
{
    if (!reply_claim(r)) {
        json_decref(body);
        return;
    }
    struct evhttp_request *ev = http_req_client(r);
    if (ev && !body) {
        answer_error(r, 500, "the handler built no response body");
    } else {
        size_t len = ev ? dump_json(evhttp_request_get_output_buffer(ev), body) : 0;
        if (ev && len == 0)
            answer_error(r, 500, "the response body could not be encoded as JSON");
        else
            http_send_answer(r, ev, status, "application/json", len);
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
    struct evhttp_request *ev = http_req_client(r);
    if (ev && len)
        evbuffer_add(evhttp_request_get_output_buffer(ev), data, len);
    http_send_answer(r, ev, status, content_type, len);
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
