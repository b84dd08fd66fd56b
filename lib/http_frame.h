/* http_frame.h: HTTP/1.1 request framing by RFC 9112, checked on the bytes
 * as they arrive; the server's reader (lib/http_conn.c) also learns from it
 * where each request ends, and reads a request only once it passed whole.
 *
 * evhttp, which the server used to run on, was lenient where leniency is
 * a request-smuggling risk: it took
 * the first of two Content-Length headers, "Transfer-Encoding : chunked"
 * (a space before the colon), "identity, chunked" as no body, "+2" as a
 * length, HTTP/1.1 without Host, spaces inside the target; it answers
 * "HTTP/1.7" in kind and refused some requests with HTML pages. So every
 * byte a client sends goes through this state machine (lib/http_conn.c
 * feeds it from the connection's input buffer); a request is parsed only
 * once it passed. A refusal carries the status and a reason, and the
 * connection is answered in the contract's JSON shape and closed.
 *
 *   400  malformed request line, target (a byte outside RFC 3986, a % not
 *        before two hex digits, a path starting with "//") or header line; whitespace before
 *        a colon; obs-fold; bare CR or LF; NUL or another control byte;
 *        Content-Length duplicated, conflicting, signed or not digits;
 *        Transfer-Encoding other than exactly "chunked", or repeated, or
 *        with Content-Length, or in an HTTP/1.0 request; HTTP/1.1 without
 *        exactly one Host; an invalid chunk size or chunk framing (chunk
 *        extensions are accepted); a body with HEAD or TRACE (a proxy
 *        in front may read it as the next request); more than
 *        HTTP_FRAME_EMPTY_LINES_MAX empty lines (CRLF) before a request
 *        line, or a bare LF or CR there (fewer CRLFs are skipped, RFC 9112
 *        2.2; http_frame_message.lead_len counts them)
 *   413  a declared Content-Length, or the chunks so far, over the body
 *        limit: refused before the body is read
 *   417  an Expect other than 100-continue
 *   431  a request line and headers over the head limit
 *   501  an unknown method
 *   505  an HTTP major version other than 1
 *
 * Pure: no I/O, no allocation; each connection holds one http_frame. The
 * fuzz target tests/fuzz/fuzz_http_frame.c drives it on its own. */
#ifndef CARSHARE_HTTP_FRAME_H
#define CARSHARE_HTTP_FRAME_H

#include <stdbool.h>
#include <stddef.h>

#define HTTP_FRAME_VALUE_MAX 64     /* bytes kept of a header value we read */
/* Empty lines skipped before a request line: the one RFC 9112 2.2 asks
 * for, with room to spare, and few enough that a client sending only
 * CRLFs is refused at once. */
#define HTTP_FRAME_EMPTY_LINES_MAX 8

/* The message that just ended (http_frame_feed_message). */
typedef struct http_frame_message {
    size_t lead_len;                /* empty lines skipped before it (CRLFs) */
    size_t head_len;                /* request line, fields and the empty line */
    bool chunked;                   /* the body follows in chunks (to decode) */
    int minor;                      /* HTTP/1.<minor> */
    unsigned long long length;      /* body bytes: declared, or the chunks' data */
} http_frame_message;

typedef struct http_frame {
    /* limits, set by the caller */
    size_t max_head, max_body;

    /* verdict: 0 while the bytes are acceptable */
    int status;
    const char *why;

    /* machine state (http_frame.c) */
    int state;
    size_t head_len;                /* bytes of the current head so far */
    int empty_lines;                /* CRLFs skipped before its request line */
    size_t token_len;               /* method, name or value bytes so far */
    char method[16];
    char path[128];                 /* the target up to '?', cut: for the error's "path" */
    size_t path_len;
    size_t target_len;
    int pct;                        /* hex digits still due after a '%' in the target */
    char name[32];                  /* the header being read, lowercased (cut) */
    char value[HTTP_FRAME_VALUE_MAX + 1];
    size_t value_len;
    bool value_long;                /* more than HTTP_FRAME_VALUE_MAX bytes */
    int minor;                      /* HTTP/1.<minor> */
    int lengths, encodings, hosts;
    bool chunked, expect_continue;
    unsigned long long length;      /* Content-Length, or the chunk being read */
    unsigned long long body_seen;   /* chunked: data bytes so far */
    int digits;
    bool head_seen;                 /* the empty line after the fields passed */
    size_t message_head_len;        /* head_len at that point */
    unsigned long long length_declared;
    /* kept from one message to the next (new_message resets what is above) */
    http_frame_message last;
    bool ended;                     /* a message ended in the last feed */
    unsigned long requests;         /* complete requests so far */
} http_frame;

void http_frame_init(http_frame *f, size_t max_head, size_t max_body);

/* Feeds n more bytes of the connection. Returns how many were consumed:
 * n while f->status is 0, fewer when a byte was refused (f->status and
 * f->why then say why; nothing more is accepted). */
size_t http_frame_feed(http_frame *f, const char *p, size_t n);

/* The same, also copying the bytes to out (room for n) without the chunk
 * extensions (valid, and carrying nothing we use); *kept is how many were
 * copied. The server no longer needs it (it decodes chunks itself); the
 * fuzz target still checks that stripping them moves no request boundary. */
size_t http_frame_feed_copy(http_frame *f, const char *p, size_t n, char *out, size_t *kept);

/* The same, stopping right after the end of one message: *ended is then
 * true and f->last describes it (the bytes of that message are the ones
 * fed since the previous end: f->last.lead_len of skipped empty lines,
 * then the head and the body). The server's reader (http_conn.c) feeds
 * this way, so it knows where each pipelined request ends. */
size_t http_frame_feed_message(http_frame *f, const char *p, size_t n, bool *ended);

/* True once the current message's head has passed (its body, if any, is
 * what comes next): when an Expect: 100-continue is answered. */
bool http_frame_in_body(const http_frame *f);

/* How many of p[0..n) are field-value bytes (visible, obs-text, space,
 * tab), 16 at a time where SSE2 is there: for anyone checking a value. */
size_t http_field_run(const char *p, size_t n);

/* A header the server or the client writes: the name a token, the value
 * field bytes only (no CR, LF or other control but tab), so that a value
 * copied from input can never split the message. Others are left out. */
bool http_field_valid(const char *name, const char *value);

/* True between two requests (nothing of a next one received yet but
 * empty lines, which are skipped). */
bool http_frame_idle(const http_frame *f);

#endif
