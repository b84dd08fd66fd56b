/* rep.c: the contract's representations (see rep.h).
 *
 * Input is read leniently where the contract says so (numbers may come as
 * numeric strings, because `http POST :8081/orders qty=1` sends "1") and
 * strictly everywhere else: a value is either exactly what the field needs
 * or a 400 whose message names the field and says what is wrong. Nothing is
 * coerced silently: 1.5 is not 1, true is not 1, " 1" is not 1.
 *
 * Output builds the Spring Data REST (HAL) shapes the seed's clients know:
 * items carry _links.self, collections carry _embedded.<name>, _links and a
 * page block, errors are {status, error, message, path}.
 *
 * The request-level helpers (query parameters, collection and 201 answers)
 * are here because every service's handlers read and answer the same way:
 * one place keeps the messages and the self links alike everywhere.
 */
#include "rep.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

/* ---- input: integers ---- */

/* The range message, readable whichever bounds are real limits. */
static void range_error(const char *field, long long min, long long max, char *err, size_t errlen)
{
    if (min == LLONG_MIN && max == LLONG_MAX)
        snprintf(err, errlen, "%s is out of range", field);
    else if (max == LLONG_MAX)
        snprintf(err, errlen, "%s must be at least %lld", field, min);
    else if (min == LLONG_MIN)
        snprintf(err, errlen, "%s must be at most %lld", field, max);
    else
        snprintf(err, errlen, "%s must be between %lld and %lld", field, min, max);
}

/* Decimal digits with an optional leading '-', nothing else. Returns 1 and
 * sets *out, 0 if not of that form, -1 if of that form but beyond long long. */
static int parse_decimal(const char *s, long long *out)
{
    const char *p = s[0] == '-' ? s + 1 : s;
    if (!*p) return 0;
    for (const char *q = p; *q; q++)
        if (*q < '0' || *q > '9') return 0;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno == ERANGE) return -1;
    *out = v;
    return 1;
}

int rep_int(const json_t *obj, const char *field, bool required,
            long long min, long long max, long long *out, char *err, size_t errlen)
{
    const json_t *v = json_is_object(obj) ? json_object_get(obj, field) : NULL;
    if (!v || json_is_null(v)) {
        if (!required) return 0;
        snprintf(err, errlen, "%s is required", field);
        return -1;
    }

    long long value;
    if (json_is_integer(v)) {
        value = json_integer_value(v);
    } else if (json_is_real(v)) {
        /* 2.0 is an integer written as a real; 2.5 is not. Beyond 2^53 a
         * double no longer holds every integer, so the value is refused
         * rather than silently rounded. */
        double d = json_real_value(v);
        if (!isfinite(d) || d != trunc(d)) {
            snprintf(err, errlen, "%s must be an integer", field);
            return -1;
        }
        if (fabs(d) > 9007199254740992.0) {
            range_error(field, min, max, err, errlen);
            return -1;
        }
        value = (long long)d;
    } else if (json_is_string(v)) {
        int r = parse_decimal(json_string_value(v), &value);
        if (r == 0 || strlen(json_string_value(v)) != json_string_length(v)) {
            snprintf(err, errlen, "%s must be an integer", field);
            return -1;
        }
        if (r < 0) {
            range_error(field, min, max, err, errlen);
            return -1;
        }
    } else {
        snprintf(err, errlen, "%s must be an integer", field);
        return -1;
    }

    if (value < min || value > max) {
        range_error(field, min, max, err, errlen);
        return -1;
    }
    *out = value;
    return 1;
}

/* ---- input: strings ---- */

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* True when s[0..len) is well-formed UTF-8 without control characters
 * (C0, DEL, C1): what may be stored and echoed back in JSON and logs. */
static bool printable_utf8(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        unsigned cp;
        size_t n;
        if (c < 0x80) { cp = c; n = 1; }
        else if ((c & 0xE0) == 0xC0) { cp = c & 0x1F; n = 2; }
        else if ((c & 0xF0) == 0xE0) { cp = c & 0x0F; n = 3; }
        else if ((c & 0xF8) == 0xF0) { cp = c & 0x07; n = 4; }
        else return false;
        if (i + n > len) return false;
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        static const unsigned min_for_length[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_for_length[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;   /* overlong, out of range, or a surrogate */
        if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)) return false;
        i += n;
    }
    return true;
}

/* Writes a JSON number as decimal text: 1001 and 1001.0 both give "1001". */
static bool number_text(const json_t *v, char *buf, size_t buflen)
{
    int n;
    if (json_is_integer(v)) {
        n = snprintf(buf, buflen, "%lld", (long long)json_integer_value(v));
    } else {
        double d = json_real_value(v);
        if (!isfinite(d)) return false;
        if (d == trunc(d) && fabs(d) <= 9007199254740992.0)
            n = snprintf(buf, buflen, "%lld", (long long)d);
        else
            n = snprintf(buf, buflen, "%.17g", d);
    }
    return n > 0 && (size_t)n < buflen;
}

int rep_str(const json_t *obj, const char *field, bool required, size_t max_len,
            const char **out, char *buf, size_t buflen, char *err, size_t errlen)
{
    const json_t *v = json_is_object(obj) ? json_object_get(obj, field) : NULL;
    if (!v || json_is_null(v)) {
        if (!required) return 0;
        snprintf(err, errlen, "%s is required", field);
        return -1;
    }

    if (json_is_number(v)) {
        if (!number_text(v, buf, buflen) || strlen(buf) > max_len) {
            snprintf(err, errlen, "%s must be at most %zu characters long", field, max_len);
            return -1;
        }
        *out = buf;
        return 1;
    }
    if (!json_is_string(v)) {
        snprintf(err, errlen, "%s must be a string", field);
        return -1;
    }

    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    size_t start = 0, end = len;
    while (start < end && is_space(s[start])) start++;
    while (end > start && is_space(s[end - 1])) end--;
    size_t n = end - start;

    if (n == 0) {
        snprintf(err, errlen, "%s must not be empty", field);
        return -1;
    }
    if (n > max_len) {
        snprintf(err, errlen, "%s must be at most %zu characters long", field, max_len);
        return -1;
    }
    if (!printable_utf8((const unsigned char *)s + start, n)) {
        snprintf(err, errlen, "%s must be printable text (UTF-8, no control characters)", field);
        return -1;
    }
    if (start == 0 && end == len) {
        *out = s;
        return 1;
    }
    if (n >= buflen) {
        snprintf(err, errlen, "%s is too long", field);
        return -1;
    }
    memcpy(buf, s + start, n);
    buf[n] = '\0';
    *out = buf;
    return 1;
}

/* ---- input: ids in paths ---- */

bool rep_path_id(const char *text, long long *out)
{
    long long v;
    if (!text || text[0] < '0' || text[0] > '9' || parse_decimal(text, &v) != 1 || v <= 0)
        return false;
    *out = v;
    return true;
}

/* ---- page parameters ---- */

/* A non-negative decimal not above max; false otherwise. */
static bool parse_bounded(const char *s, long max, long *out)
{
    long long v;
    if (parse_decimal(s, &v) != 1 || s[0] == '-' || v > max) return false;
    *out = (long)v;
    return true;
}

bool rep_page_params(const char *page_s, const char *size_s, long *page, long *size,
                     char *err, size_t errlen)
{
    /* The page bound keeps page * size (the SQL offset) far from overflow. */
    const long max_page = 1000000000L;
    *page = 0;
    *size = 20;
    if (page_s && *page_s && !parse_bounded(page_s, max_page, page)) {
        snprintf(err, errlen, "page must be an integer between 0 and %ld", max_page);
        return false;
    }
    if (size_s && *size_s && (!parse_bounded(size_s, 1000, size) || *size < 1)) {
        snprintf(err, errlen, "size must be an integer between 1 and 1000");
        return false;
    }
    return true;
}

/* ---- input from a request ---- */

bool rep_query_int(http_req *r, const char *name, long long min, long long max,
                   long long *out)
{
    const char *v = http_req_query(r, name);
    if (!v) {
        http_reply_error(r, 400, "query parameter %s is required", name);
        return false;
    }
    /* Read as the JSON string it would be in a body, so that the rules and
     * the messages are rep_int's. json_pack refuses text that is not UTF-8. */
    char err[160];
    json_t *holder = json_pack("{s:s}", name, v);
    int rc = holder ? rep_int(holder, name, true, min, max, out, err, sizeof err) : -1;
    json_decref(holder);
    if (rc == 1)
        return true;
    if (holder)
        http_reply_error(r, 400, "%s", err);
    else
        http_reply_error(r, 400, "%s must be an integer", name);
    return false;
}

bool rep_page_query(http_req *r, long *page, long *size)
{
    char err[160];
    if (rep_page_params(http_req_query(r, "page"), http_req_query(r, "size"), page, size, err,
                        sizeof err))
        return true;
    http_reply_error(r, 400, "%s", err);
    return false;
}

/* ---- output ---- */

static json_t *self_link(const char *href)
{
    return json_pack("{s:{s:s}}", "self", "href", href);
}

json_t *rep_item(json_t *item, const char *base_url, const char *collection, const char *id)
{
    char href[1024];
    snprintf(href, sizeof href, "%s/%s/%s", base_url ? base_url : "", collection, id);
    json_object_set_new(item, "_links", self_link(href));
    return item;
}

json_t *rep_collection(const char *collection, json_t *items, const char *self_url,
                       long page, long size, long long total)
{
    long long pages = size > 0 ? (total + size - 1) / size : 0;
    json_t *embedded = json_object();
    json_object_set_new(embedded, collection, items ? items : json_array());
    return json_pack("{s:o, s:o, s:{s:I, s:I, s:I, s:I}}",
                     "_embedded", embedded,
                     "_links", self_link(self_url ? self_url : ""),
                     "page", "size", (json_int_t)size, "totalElements", (json_int_t)total,
                     "totalPages", (json_int_t)pages, "number", (json_int_t)page);
}

json_t *rep_error(int status, const char *message, const char *path)
{
    const char *reason = http_reason(status);
    return json_pack("{s:i, s:s, s:s, s:s}", "status", status, "error", reason ? reason : "Error",
                     "message", message ? message : "", "path", path ? path : "");
}

/* ---- answers ---- */

void rep_reply_collection(http_req *r, const char *collection, json_t *items,
                          long page, long size, long long total)
{
    /* Allocated: a query may be longer than any fixed buffer would allow. */
    const char *base = http_req_base_url(r), *uri = http_req_uri(r);
    size_t n = strlen(base) + strlen(uri) + 1;
    char *self = malloc(n);
    if (self)
        snprintf(self, n, "%s%s", base, uri);
    http_reply_json(r, 200, rep_collection(collection, items, self, page, size, total));
    free(self);
}

void rep_reply_found(http_req *r, int found, json_t *item, const char *what, const char *id)
{
    if (found < 0)
        http_reply_error(r, 500, "could not read %s %s", what, id);
    else if (!found)
        http_reply_error(r, 404, "%s %s not found", what, id);
    else
        http_reply_json(r, 200, item);
}

void rep_reply_created(http_req *r, json_t *item)
{
    const char *href = json_string_value(
        json_object_get(json_object_get(json_object_get(item, "_links"), "self"), "href"));
    if (href)
        http_set_header(r, "Location", href);
    http_reply_json(r, 201, item);
}

void rep_reply_db_unavailable(http_req *r, const char *what)
{
    http_set_header(r, "Retry-After", "1");
    http_reply_error(r, 503, "%s is unavailable: try again shortly", what);
}
