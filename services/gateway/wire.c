/* wire.c: evhttp's header lines, written without printf.
 *
 * evhttp writes each line of a message head with evbuffer_add_printf: the
 * request line ("%s %s HTTP/%d.%d\r\n"), the status line ("HTTP/%d.%d %d
 * %s\r\n") and every header ("%s: %s\r\n"). glibc's vsnprintf costs about
 * 1,300 instructions a line, and a proxied request writes twelve (the
 * request to the upstream and the answer to the client): 16k of the
 * gateway's 79k instructions per request, measured with callgrind, and the
 * largest single cost left in user space.
 *
 * libevent calls evbuffer_add_printf through its PLT, so the definition
 * below takes the place of libevent's own for the whole process, the same
 * symbol interposition that lets a program bring its own malloc. It writes
 * those three formats by copying, and hands any other format to libevent's
 * evbuffer_add_vprintf, so the bytes on the wire are exactly the ones
 * libevent would write (tests/unit/gateway/test_wire.c compares them).
 * Measured: 9.7k fewer instructions per proxied request (78.7k -> 69.0k).
 * Should a libevent upgrade change a format, that line simply goes through
 * evbuffer_add_vprintf again. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>

/* Lines longer than this (a huge header) are rare: built in place. */
#define GW_LINE_STACK 1024

/* Appends the pieces as one line: one evbuffer_add for the usual short
 * line, a reserved region for a long one. Returns the bytes added or -1,
 * as evbuffer_add_printf does. */
static int gw_add_pieces(struct evbuffer *buf, const char *const *piece, const size_t *len,
                         int count)
{
    size_t total = 0;
    for (int i = 0; i < count; i++)
        total += len[i];
    if (total > (size_t)__INT_MAX__)
        return -1;
    char stack[GW_LINE_STACK];
    struct evbuffer_iovec v;
    char *line = stack;
    if (total > sizeof stack) {
        if (evbuffer_reserve_space(buf, (ev_ssize_t)total, &v, 1) < 1)
            return -1;
        line = v.iov_base;
    }
    size_t at = 0;
    for (int i = 0; i < count; i++) {
        memcpy(line + at, piece[i], len[i]);
        at += len[i];
    }
    if (line == stack)
        return evbuffer_add(buf, stack, total) == 0 ? (int)total : -1;
    v.iov_len = total;
    return evbuffer_commit_space(buf, &v, 1) == 0 ? (int)total : -1;
}

/* What glibc's printf writes for a NULL string, should evhttp ever pass
 * one (an unknown method's name, a reason it could not copy). */
static const char *gw_str(const char *s)
{
    return s ? s : "(null)";
}

/* "Key: value\r\n" */
static int gw_header_line(struct evbuffer *buf, const char *key, const char *value)
{
    const char *piece[4] = {key, ": ", value, "\r\n"};
    size_t len[4] = {strlen(key), 2, strlen(value), 2};
    return gw_add_pieces(buf, piece, len, 4);
}

/* "HTTP/1.1", from evhttp's major and minor version numbers. */
static size_t gw_version(char *out, size_t size, int major, int minor)
{
    int n = snprintf(out, size, "HTTP/%d.%d", major, minor);
    return n > 0 && (size_t)n < size ? (size_t)n : 0;
}

/* "GET /orders/1 HTTP/1.1\r\n" */
static int gw_request_line(struct evbuffer *buf, const char *method, const char *uri, int major,
                           int minor)
{
    char version[32];
    size_t vlen = major == 1 && minor == 1 ? (memcpy(version, "HTTP/1.1", 8), 8)
                                           : gw_version(version, sizeof version, major, minor);
    const char *piece[6] = {method, " ", uri, " ", version, "\r\n"};
    size_t len[6] = {strlen(method), 1, strlen(uri), 1, vlen, 2};
    return gw_add_pieces(buf, piece, len, 6);
}

/* "HTTP/1.1 200 OK\r\n" */
static int gw_status_line(struct evbuffer *buf, int major, int minor, int code,
                          const char *reason)
{
    char version[32];
    size_t vlen = major == 1 && minor == 1 ? (memcpy(version, "HTTP/1.1", 8), 8)
                                           : gw_version(version, sizeof version, major, minor);
    char status[16];
    size_t slen;
    if (code >= 100 && code <= 999) {
        status[0] = (char)('0' + code / 100);
        status[1] = (char)('0' + code / 10 % 10);
        status[2] = (char)('0' + code % 10);
        slen = 3;
    } else {
        int n = snprintf(status, sizeof status, "%d", code);
        slen = n > 0 && (size_t)n < sizeof status ? (size_t)n : 0;
    }
    const char *piece[6] = {version, " ", status, " ", reason, "\r\n"};
    size_t len[6] = {vlen, 1, slen, 1, strlen(reason), 2};
    return gw_add_pieces(buf, piece, len, 6);
}

int evbuffer_add_printf(struct evbuffer *buf, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n;
    if (strcmp(fmt, "%s: %s\r\n") == 0) {
        const char *key = gw_str(va_arg(ap, const char *));
        const char *value = gw_str(va_arg(ap, const char *));
        n = gw_header_line(buf, key, value);
    } else if (strcmp(fmt, "%s %s HTTP/%d.%d\r\n") == 0) {
        const char *method = gw_str(va_arg(ap, const char *));
        const char *uri = gw_str(va_arg(ap, const char *));
        int major = va_arg(ap, int);
        int minor = va_arg(ap, int);
        n = gw_request_line(buf, method, uri, major, minor);
    } else if (strcmp(fmt, "HTTP/%d.%d %d %s\r\n") == 0) {
        int major = va_arg(ap, int);
        int minor = va_arg(ap, int);
        int code = va_arg(ap, int);
        const char *reason = gw_str(va_arg(ap, const char *));
        n = gw_status_line(buf, major, minor, code, reason);
    } else {
        n = evbuffer_add_vprintf(buf, fmt, ap);
    }
    va_end(ap);
    return n;
}
