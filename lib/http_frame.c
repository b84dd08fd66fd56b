/* http_frame.c: the RFC 9112 framing check (http_frame.h says what is
 * refused and why). One state per position in the grammar; a body of known
 * length, or a chunk's data, is skipped in one step, so the cost is a few
 * instructions per head byte and nothing per body byte.
 *
 * Grammar (RFC 9112), as checked here:
 *   request-line = method SP request-target SP HTTP-version CRLF
 *   field-line   = field-name ":" OWS field-value OWS CRLF   (no obs-fold)
 *   chunk        = chunk-size [ BWS ";" chunk-ext ] CRLF chunk-data CRLF
 *   last-chunk   = 1*"0" [ chunk-ext ] CRLF, then trailer fields, CRLF
 *
 * Empty lines before a request line (RFC 9112 2.2: a server SHOULD ignore
 * at least one; some clients send a CRLF after a POST body) are skipped,
 * up to HTTP_FRAME_EMPTY_LINES_MAX of them: a client that sends nothing
 * else is refused rather than served for ever (they count against the
 * head limit and the connection's read deadline runs meanwhile, too).
 * They must be CRLF: 2.2 also lets a recipient take a bare LF as a line
 * end, but nowhere else in a request does this parser, since a proxy in
 * front that reads line ends differently is how requests are smuggled, so
 * a bare LF (or a bare CR) there is refused like anywhere else. */
#include "http_frame.h"

#include <stddef.h>
#include <string.h>
#include <strings.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

enum {
    S_START, S_START_LF, S_METHOD, S_TARGET_FIRST, S_TARGET, S_VERSION, S_MAJOR, S_DOT, S_MINOR,
    S_LINE_CR, S_LINE_LF, S_FIELD_START, S_NAME, S_OWS, S_VALUE, S_VALUE_LF, S_HEAD_END_LF,
    S_BODY, S_CHUNK_SIZE, S_CHUNK_BWS, S_CHUNK_EXT, S_CHUNK_SIZE_LF, S_CHUNK_DATA,
    S_CHUNK_DATA_CR, S_CHUNK_DATA_LF, S_TRAILER_START, S_TRAILER_NAME, S_TRAILER_VALUE,
    S_TRAILER_LF, S_TRAILER_END_LF, S_REFUSED
};

#define CHUNK_EXT_MAX 4096
#define LENGTH_DIGITS_MAX 18    /* below 2^63: no overflow */
#define CHUNK_DIGITS_MAX 15     /* below 2^60 */

/* Byte classes, one table lookup each (generated from the rules below):
 *   C_TCHAR   tchar (RFC 9110 5.6.2): the bytes of a method or a field name;
 *   C_TARGET  a request target's bytes (RFC 3986: unreserved, sub-delims,
 *             ":", "@", "/", "?", and "%" before two hex digits, checked
 *             apart). evhttp refused a target outside this with HTML;
 *   C_FIELD   a field value's bytes: visible, obs-text, space and tab. */
enum { C_TCHAR = 1, C_TARGET = 2, C_FIELD = 4 };
static const unsigned char byte_class[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    4, 7, 4, 5, 7, 7, 7, 7, 6, 6, 7, 7, 6, 7, 7, 6,
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 4, 6, 4, 6,
    6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 4, 4, 4, 5, 7,
    5, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 4, 5, 4, 7, 0,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
};

static bool is_tchar(unsigned char c) { return byte_class[c] & C_TCHAR; }
static bool is_target_byte(unsigned char c) { return byte_class[c] & C_TARGET; }
static bool is_field_byte(unsigned char c) { return byte_class[c] & C_FIELD; }

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void refuse(http_frame *f, int status, const char *why)
{
    f->status = status;
    f->why = why;
    f->state = S_REFUSED;
}

static void new_message(http_frame *f)
{
    size_t max_head = f->max_head, max_body = f->max_body;
    unsigned long requests = f->requests;
    http_frame_message last = f->last;
    bool ended = f->ended;
    memset(f, 0, offsetof(http_frame, last));
    f->max_head = max_head;
    f->max_body = max_body;
    f->requests = requests;
    f->last = last;
    f->ended = ended;
    f->state = S_START;
}

void http_frame_init(http_frame *f, size_t max_head, size_t max_body)
{
    memset(f, 0, sizeof *f);
    f->max_head = max_head;
    f->max_body = max_body;
    new_message(f);
}

bool http_frame_idle(const http_frame *f)
{
    return f->state == S_START || f->state == S_START_LF;
}

/* What the reader of a whole message needs (http_frame_feed_message),
 * kept past the reset for the next one. */
static void message_done(http_frame *f)
{
    f->requests++;
    if (!f->head_seen)
        f->message_head_len = f->head_len;
    size_t lead = 2 * (size_t)f->empty_lines;
    f->last = (http_frame_message){ .lead_len = lead, .head_len = f->message_head_len - lead,
                                    .chunked = f->chunked,
                                    .minor = f->minor, .length = f->chunked ? f->body_seen
                                                                            : f->length_declared };
    f->ended = true;
    new_message(f);
}

static bool method_known(const char *m)
{
    static const char *const known[] = { "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS",
                                         "TRACE", "CONNECT", "PATCH" };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(m, known[i]) == 0) return true;
    return false;
}

/* The three forms of RFC 9112 3.2 a server takes: origin ("/path?q"),
 * absolute ("http://host/path") and, for OPTIONS, asterisk ("*"). The
 * path buffer holds the target's start. */
static bool target_form_known(const http_frame *f)
{
    if (f->path[0] == '/')
        /* "//x" is an origin-form path to RFC 9112 but a network-path
         * reference to RFC 3986, and evhttp reads it so: "//host:port/p"
         * becomes the authority host:port and the path /p (another route
         * than the bytes name), or an HTML 400 when the "port" is not one
         * (fuzz_http_order found it). No route starts with an empty
         * segment: refused. */
        return f->path[1] != '/';
    if (f->path[0] == '*')
        return f->target_len == 1 && strcmp(f->method, "OPTIONS") == 0;
    return strncasecmp(f->path, "http://", 7) == 0 || strncasecmp(f->path, "https://", 8) == 0;
}

/* The value just read, without trailing whitespace (leading OWS was
 * skipped), is one of the fields framing depends on. */
static void field_done(http_frame *f)
{
    while (f->value_len && (f->value[f->value_len - 1] == ' ' || f->value[f->value_len - 1] == '\t'))
        f->value_len--;
    f->value[f->value_len] = '\0';
    const char *v = f->value;
    if (strcmp(f->name, "content-length") == 0) {
        if (++f->lengths > 1)
            return refuse(f, 400, "more than one Content-Length");
        size_t n = strspn(v, "0123456789");
        if (n == 0 || v[n] != '\0' || f->value_long)
            return refuse(f, f->value_long && n == f->value_len ? 413 : 400,
                          "Content-Length must be digits only");
        if (n > LENGTH_DIGITS_MAX)
            return refuse(f, 413, "the declared body is larger than the limit");
        unsigned long long len = 0;
        for (size_t i = 0; i < n; i++) len = len * 10 + (unsigned)(v[i] - '0');
        f->length = len;
    } else if (strcmp(f->name, "transfer-encoding") == 0) {
        if (++f->encodings > 1)
            return refuse(f, 400, "more than one Transfer-Encoding");
        if (f->value_long || strcasecmp(v, "chunked") != 0)
            return refuse(f, 400, "Transfer-Encoding must be exactly chunked");
        f->chunked = true;
    } else if (strcmp(f->name, "host") == 0) {
        f->hosts++;
        if (strpbrk(v, " \t"))
            return refuse(f, 400, "a Host with whitespace");
    } else if (strcmp(f->name, "expect") == 0) {
        if (f->value_long || strcasecmp(v, "100-continue") != 0)
            return refuse(f, 417, "the only expectation supported is 100-continue");
        f->expect_continue = true;
    }
}

/* The empty line after the fields: how the body is framed. */
static void head_done(http_frame *f)
{
    f->head_seen = true;
    f->message_head_len = f->head_len;
    f->length_declared = f->length;
    if (f->minor >= 1 && f->hosts != 1)
        return refuse(f, 400, f->hosts ? "more than one Host" : "an HTTP/1.1 request needs Host");
    if (f->hosts > 1)
        return refuse(f, 400, "more than one Host");
    if (f->lengths && f->encodings)
        return refuse(f, 400, "both Content-Length and Transfer-Encoding");
    if (f->encodings && f->minor == 0)
        return refuse(f, 400, "Transfer-Encoding in an HTTP/1.0 request");
    /* evhttp (Debian's 2.1.12) reads no body for HEAD and TRACE: one sent
     * with them would be read as the next request, so none is accepted. */
    bool no_body = strcmp(f->method, "HEAD") == 0 || strcmp(f->method, "TRACE") == 0;
    if (no_body && (f->encodings || (f->lengths && f->length > 0)))
        return refuse(f, 400, "this method takes no request body");
    if (f->chunked) {
        f->state = S_CHUNK_SIZE;
        f->length = 0;
        f->digits = 0;
        return;
    }
    if (f->lengths && f->length > f->max_body)
        return refuse(f, 413, "the declared body is larger than the limit");
    if (f->lengths && f->length > 0) {
        f->state = S_BODY;
        return;
    }
    message_done(f);
}

/* The request line and the field lines, one byte. */
static void head_byte(http_frame *f, unsigned char c)
{
    if (++f->head_len > f->max_head)
        return refuse(f, 431, "the request line and headers are larger than the limit");
    switch (f->state) {
    case S_START:
        if (c == '\r') { f->state = S_START_LF; return; }
        if (c == '\n') return refuse(f, 400, "a LF without CR");
        if (!is_tchar(c)) return refuse(f, 400, "malformed request line");
        f->state = S_METHOD;
        /* fall through */
    case S_METHOD:
        if (c == ' ') {
            f->method[f->token_len] = '\0';
            if (!method_known(f->method)) return refuse(f, 501, "unknown method");
            f->state = S_TARGET_FIRST;
            return;
        }
        if (!is_tchar(c)) return refuse(f, 400, "malformed method");
        if (f->token_len + 1 >= sizeof f->method) return refuse(f, 501, "unknown method");
        f->method[f->token_len++] = (char)c;
        return;
    case S_START_LF:
        if (c != '\n') return refuse(f, 400, "a CR without LF");
        if (++f->empty_lines > HTTP_FRAME_EMPTY_LINES_MAX)
            return refuse(f, 400, "too many empty lines before the request line");
        f->state = S_START;
        return;
    case S_TARGET_FIRST:
        if (c != '/' && c != '*' && (c | 0x20) != 'h')
            return refuse(f, 400, "malformed request target");
        f->path_len = 0;
        f->target_len = 0;
        f->state = S_TARGET;
        /* fall through */
    case S_TARGET:
        if (c == ' ' && !f->pct) {
            if (!target_form_known(f)) return refuse(f, 400, "malformed request target");
            f->state = S_VERSION;
            f->token_len = 0;
            return;
        }
        f->target_len++;
        if (f->pct) {
            if (hex_value(c) < 0) return refuse(f, 400, "a % not followed by two hex digits");
            f->pct--;
        } else if (!is_target_byte(c)) {
            return refuse(f, 400, "a byte not allowed in the request target");
        } else if (c == '%') {
            f->pct = 2;
        }
        if (c == '?') f->path_len = sizeof f->path;     /* the path ends here */
        if (f->path_len + 1 < sizeof f->path) {
            f->path[f->path_len++] = (char)c;
            f->path[f->path_len] = '\0';
        }
        return;
    case S_VERSION:
        if (c != (unsigned char)"HTTP/"[f->token_len]) return refuse(f, 400, "malformed HTTP version");
        if (++f->token_len == 5) f->state = S_MAJOR;
        return;
    case S_MAJOR:
        if (c < '0' || c > '9') return refuse(f, 400, "malformed HTTP version");
        if (c != '1') return refuse(f, 505, "only HTTP/1.x is supported");
        f->state = S_DOT;
        return;
    case S_DOT:
        if (c != '.') return refuse(f, c >= '0' && c <= '9' ? 505 : 400, "malformed HTTP version");
        f->state = S_MINOR;
        return;
    case S_MINOR:
        if (c < '0' || c > '9') return refuse(f, 400, "malformed HTTP version");
        f->minor = c - '0';
        f->state = S_LINE_CR;
        return;
    case S_LINE_CR:
        if (c != '\r') return refuse(f, 400, "malformed request line");
        f->state = S_LINE_LF;
        return;
    case S_LINE_LF:
    case S_VALUE_LF:
        if (c != '\n') return refuse(f, 400, "a CR without LF");
        if (f->state == S_VALUE_LF) {
            field_done(f);
            if (f->status) return;
        }
        f->state = S_FIELD_START;
        return;
    case S_FIELD_START:
        if (c == '\r') { f->state = S_HEAD_END_LF; return; }
        if (c == ' ' || c == '\t') return refuse(f, 400, "obsolete line folding");
        if (!is_tchar(c)) return refuse(f, 400, "malformed header field");
        f->state = S_NAME;
        f->token_len = 0;
        f->value_len = 0;
        f->value_long = false;
        /* fall through */
    case S_NAME:
        if (c == ':') {
            f->name[f->token_len < sizeof f->name ? f->token_len : sizeof f->name - 1] = '\0';
            f->state = S_OWS;
            return;
        }
        if (c == ' ' || c == '\t') return refuse(f, 400, "whitespace before a header's colon");
        if (!is_tchar(c)) return refuse(f, 400, "malformed header name");
        if (f->token_len + 1 < sizeof f->name)
            f->name[f->token_len] = (char)(c | ((c >= 'A' && c <= 'Z') ? 0x20 : 0));
        else
            f->name[0] = '~';   /* too long to be one we read: matches none */
        f->token_len++;
        return;
    case S_OWS:
        if (c == ' ' || c == '\t') return;
        f->state = S_VALUE;
        /* fall through */
    case S_VALUE:
        if (c == '\r') { f->state = S_VALUE_LF; return; }
        if (c == '\n') return refuse(f, 400, "a LF without CR");
        if (!is_field_byte(c)) return refuse(f, 400, "a control byte in a header value");
        if (f->value_len < HTTP_FRAME_VALUE_MAX) f->value[f->value_len++] = (char)c;
        else f->value_long = true;
        return;
    case S_HEAD_END_LF:
        if (c != '\n') return refuse(f, 400, "a CR without LF");
        head_done(f);
        return;
    default:
        return refuse(f, 400, "malformed request");
    }
}

/* Chunk sizes, extensions and trailers, one byte. */
static void chunk_byte(http_frame *f, unsigned char c)
{
    switch (f->state) {
    case S_CHUNK_SIZE: {
        int v = hex_value(c);
        if (v >= 0) {
            if (++f->digits > CHUNK_DIGITS_MAX) return refuse(f, 413, "a chunk larger than the limit");
            f->length = f->length * 16 + (unsigned)v;
            return;
        }
        if (f->digits == 0) return refuse(f, 400, "malformed chunk size");
        if (c == ';') { f->state = S_CHUNK_EXT; f->token_len = 0; return; }
        if (c == ' ' || c == '\t') { f->state = S_CHUNK_BWS; return; }
        if (c == '\r') { f->state = S_CHUNK_SIZE_LF; return; }
        return refuse(f, 400, "malformed chunk size");
    }
    case S_CHUNK_BWS:
        if (c == ' ' || c == '\t') return;
        if (c == ';') { f->state = S_CHUNK_EXT; f->token_len = 0; return; }
        return refuse(f, 400, "malformed chunk size");
    case S_CHUNK_EXT:
        if (c == '\r') { f->state = S_CHUNK_SIZE_LF; return; }
        if (!is_field_byte(c)) return refuse(f, 400, "a control byte in a chunk extension");
        if (++f->token_len > CHUNK_EXT_MAX) return refuse(f, 400, "a chunk extension too long");
        return;
    case S_CHUNK_SIZE_LF:
        if (c != '\n') return refuse(f, 400, "a CR without LF");
        if (f->length == 0) {
            f->state = S_TRAILER_START;
            f->head_len = 0;
            return;
        }
        f->body_seen += f->length;
        if (f->body_seen > f->max_body) return refuse(f, 413, "the body is larger than the limit");
        f->state = S_CHUNK_DATA;
        return;
    case S_CHUNK_DATA_CR:
        if (c != '\r') return refuse(f, 400, "chunk data longer than its size");
        f->state = S_CHUNK_DATA_LF;
        return;
    case S_CHUNK_DATA_LF:
        if (c != '\n') return refuse(f, 400, "a CR without LF");
        f->state = S_CHUNK_SIZE;
        f->length = 0;
        f->digits = 0;
        return;
    default:
        break;
    }
    /* Trailer fields: checked like header fields, counted against the
     * head limit, and otherwise ignored (evhttp drops them too). */
    if (++f->head_len > f->max_head) return refuse(f, 431, "trailers larger than the limit");
    switch (f->state) {
    case S_TRAILER_START:
        if (c == '\r') { f->state = S_TRAILER_END_LF; return; }
        if (!is_tchar(c)) return refuse(f, 400, "malformed trailer field");
        f->state = S_TRAILER_NAME;
        return;
    case S_TRAILER_NAME:
        if (c == ':') { f->state = S_TRAILER_VALUE; return; }
        if (!is_tchar(c)) return refuse(f, 400, "malformed trailer field");
        return;
    case S_TRAILER_VALUE:
        if (c == '\r') { f->state = S_TRAILER_LF; return; }
        if (!is_field_byte(c)) return refuse(f, 400, "a control byte in a trailer field");
        return;
    case S_TRAILER_LF:
        if (c != '\n') return refuse(f, 400, "a CR without LF");
        f->state = S_TRAILER_START;
        return;
    case S_TRAILER_END_LF:
        if (c != '\n') return refuse(f, 400, "a CR without LF");
        message_done(f);
        return;
    default:
        return refuse(f, 400, "malformed request");
    }
}

/* How many of p[0..n) are field-value bytes (visible, obs-text, space,
 * tab): the run a value's tight loop skips. A header value is most of a
 * request's head (a bearer token is hundreds of bytes), so it is scanned
 * 16 bytes at a time where SSE2 is there (every x86-64). */
bool http_field_valid(const char *name, const char *value)
{
    if (!*name)
        return false;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (!is_tchar(*p))
            return false;
    size_t len = strlen(value);
    return http_field_run(value, len) == len;
}

size_t http_field_run(const char *p, size_t n)
{
    size_t i = 0;
#ifdef __SSE2__
    const __m128i space = _mm_set1_epi8(0x20), tab = _mm_set1_epi8(0x09),
                  del = _mm_set1_epi8(0x7f);
    for (; i + 16 <= n; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
        __m128i visible = _mm_cmpeq_epi8(_mm_max_epu8(v, space), v);   /* v >= 0x20 */
        __m128i ok = _mm_andnot_si128(_mm_cmpeq_epi8(v, del),
                                      _mm_or_si128(visible, _mm_cmpeq_epi8(v, tab)));
        unsigned mask = (unsigned)_mm_movemask_epi8(ok);
        if (mask != 0xffffu)
            return i + (size_t)__builtin_ctz(~mask);
    }
#endif
    while (i < n && is_field_byte((unsigned char)p[i]))
        i++;
    return i;
}

/* Both feeds: out may be NULL (nothing copied). */
static size_t feed(http_frame *f, const char *p, size_t n, char *out, size_t *kept, bool one)
{
    size_t i = 0, k = 0;
    f->ended = false;
    while (i < n && f->state != S_REFUSED && !(one && f->ended)) {
        if (f->state == S_BODY || f->state == S_CHUNK_DATA) {
            /* Body bytes are not looked at: skip them in one step. */
            size_t take = n - i < f->length ? n - i : (size_t)f->length;
            if (out) memcpy(out + k, p + i, take);
            k += take;
            f->length -= take;
            i += take;
            if (f->length == 0) {
                if (f->state == S_BODY) message_done(f);
                else f->state = S_CHUNK_DATA_CR;
            }
            continue;
        }
        if (f->state == S_VALUE && !out) {
            /* The common bytes of a header value, in a tight loop: only
             * the few headers framing depends on are kept (field_done). */
            size_t start = i;
            bool keep = f->name[0] == 'c' || f->name[0] == 't' || f->name[0] == 'h' ||
                        f->name[0] == 'e';
            i += http_field_run(p + i, n - i);     /* stops at the CR, or at a byte refused below */
            if (keep) {
                size_t run = i - start, room = HTTP_FRAME_VALUE_MAX - f->value_len;
                memcpy(f->value + f->value_len, p + start, run < room ? run : room);
                f->value_len += run < room ? run : room;
                if (run > room) f->value_long = true;
            }
            f->head_len += i - start;
            if (f->head_len > f->max_head) {
                refuse(f, 431, "the request line and headers are larger than the limit");
                break;
            }
            if (i == n) break;
        }
        if (f->state == S_NAME && !out) {
            /* A field name's bytes, lowercased into f->name as far as it
             * holds them (head_byte's rule), in a tight loop. */
            size_t start = i;
            while (i < n && is_tchar((unsigned char)p[i])) {
                unsigned char c = (unsigned char)p[i];
                if (f->token_len + 1 < sizeof f->name)
                    f->name[f->token_len] = (char)(c | ((c >= 'A' && c <= 'Z') ? 0x20 : 0));
                else
                    f->name[0] = '~';
                f->token_len++;
                i++;
            }
            f->head_len += i - start;
            if (f->head_len > f->max_head) {
                refuse(f, 431, "the request line and headers are larger than the limit");
                break;
            }
            if (i == n) break;
        } else if (f->state == S_TARGET && !out && f->pct == 0) {
            /* A target's plain bytes (not '%', '?' or the end), in a tight
             * loop; the path part is kept for the error's "path". */
            size_t start = i;
            while (i < n && is_target_byte((unsigned char)p[i]) && p[i] != '%' && p[i] != '?') {
                if (f->path_len + 1 < sizeof f->path)
                    f->path[f->path_len++] = p[i];
                i++;
            }
            if (f->path_len < sizeof f->path)
                f->path[f->path_len] = '\0';
            f->target_len += i - start;
            f->head_len += i - start;
            if (f->head_len > f->max_head) {
                refuse(f, 431, "the request line and headers are larger than the limit");
                break;
            }
            if (i == n) break;
        }
        unsigned char c = (unsigned char)p[i];
        if (f->state >= S_CHUNK_SIZE) chunk_byte(f, c);
        else head_byte(f, c);
        if (f->state == S_REFUSED) break;
        /* A byte that leaves the machine in an extension is part of one. */
        if (f->state != S_CHUNK_EXT && f->state != S_CHUNK_BWS) {
            if (out) out[k] = (char)c;
            k++;
        }
        i++;
    }
    if (kept) *kept = k;
    return i;
}

size_t http_frame_feed(http_frame *f, const char *p, size_t n)
{
    return feed(f, p, n, NULL, NULL, false);
}

size_t http_frame_feed_message(http_frame *f, const char *p, size_t n, bool *ended)
{
    size_t used = feed(f, p, n, NULL, NULL, true);
    *ended = f->ended && f->status == 0;
    return used;
}

bool http_frame_in_body(const http_frame *f)
{
    return f->head_seen && f->state != S_REFUSED;
}

size_t http_frame_feed_copy(http_frame *f, const char *p, size_t n, char *out, size_t *kept)
{
    return feed(f, p, n, out, kept, false);
}
