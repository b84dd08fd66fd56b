/* domain.c: the gateway's rules, as pure functions.
 *
 * Which service owns a path, which paths are refused outright, which headers
 * may cross the proxy in each direction, what a failed upstream call
 * answers, how often upstreams are probed, and how the web page's files are
 * named and typed. Nothing here does I/O or allocates, so every rule is unit
 * tested directly (tests/unit/gateway/) and the proxy's hot path pays only
 * for a few character comparisons per request. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "gateway.h"
#include "token.h"

/* ---- routes ---- */

#define ROUTE(prefix, upstream) { prefix, sizeof(prefix) - 1, upstream }

/* The contract's route table. Small and fixed: a linear scan is the fastest
 * lookup there is for seven entries. */
static const struct {
    const char *prefix;
    size_t len;
    gw_upstream_id upstream;
} gw_routes[] = {
    ROUTE("/orders", GW_ORDER),
    ROUTE("/cars", GW_ORDER),
    ROUTE("/deliveries", GW_DELIVERY),
    ROUTE("/cancellations", GW_DELIVERY),
    ROUTE("/customerpages", GW_CUSTOMERPAGE),
    ROUTE("/payments", GW_PAYMENT),
    ROUTE("/paymentCancellations", GW_PAYMENT),
    ROUTE("/accounts", GW_ACCOUNT),
    ROUTE("/sessions", GW_ACCOUNT),
};

static const char *const gw_upstream_names[GW_UPSTREAM_COUNT] = {
    [GW_ORDER] = "order",
    [GW_DELIVERY] = "delivery",
    [GW_CUSTOMERPAGE] = "customerpage",
    [GW_PAYMENT] = "payment",
    [GW_ACCOUNT] = "account",
};

const char *gw_upstream_name(gw_upstream_id id)
{
    return (unsigned)id < GW_UPSTREAM_COUNT ? gw_upstream_names[id] : "unknown";
}

bool gw_route_prefix_matches(const char *path, const char *prefix, size_t prefix_len)
{
    if (strncmp(path, prefix, prefix_len) != 0)
        return false;
    /* "/orders" owns "/orders/..." and "/orders?...", not "/ordersX". */
    char next = path[prefix_len];
    return next == '\0' || next == '/' || next == '?';
}

int gw_route_match(const char *path)
{
    if (path == NULL || path[0] != '/')
        return -1;
    for (size_t i = 0; i < sizeof gw_routes / sizeof gw_routes[0]; i++)
        if (gw_route_prefix_matches(path, gw_routes[i].prefix, gw_routes[i].len))
            return (int)gw_routes[i].upstream;
    return -1;
}

/* ---- access ---- */

#define GW_PEOPLE (TOKEN_ROLE_CUSTOMER | TOKEN_ROLE_STAFF)

static bool path_is(const char *path, const char *exact)
{
    size_t n = strlen(exact);
    return strncmp(path, exact, n) == 0 && (path[n] == '\0' || (path[n] == '/' && !path[n + 1]));
}

static bool under(const char *path, const char *prefix)
{
    return gw_route_prefix_matches(path, prefix, strlen(prefix));
}

int gw_access(const char *method, const char *path)
{
    bool read = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    bool post = strcmp(method, "POST") == 0;
    if (under(path, "/cars"))
        return read ? 0 : GW_PEOPLE;
    if (post && (path_is(path, "/accounts") || path_is(path, "/sessions")))
        return 0;
    if (under(path, "/payments") || under(path, "/paymentCancellations")
        || under(path, "/deliveries") || under(path, "/cancellations"))
        return read ? TOKEN_ROLE_STAFF : GW_HIDDEN;
    if (post && path_is(path, "/orders"))
        return TOKEN_ROLE_CUSTOMER;
    return GW_PEOPLE;
}

bool gw_method_forwarded(const char *method)
{
    static const char *const forwarded[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE",
                                            "OPTIONS"};
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
        if (strcmp(method, forwarded[i]) == 0)
            return true;
    return false;
}

/* ---- refused paths ---- */

const char *gw_path_refusal(const char *path)
{
    if (path == NULL || path[0] != '/')
        return "the path must start with '/'";
    /* Walk the segments: a "." or ".." segment (after percent-decoding, which
     * the server did) could escape the web root or reach another route of an
     * upstream than the one the prefix names, so it is refused everywhere. */
    const char *seg = path + 1;
    for (const char *p = path + 1;; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '/' || c == '\0') {
            size_t n = (size_t)(p - seg);
            if ((n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.'))
                return "the path must not contain '.' or '..' segments";
            if (c == '\0')
                return NULL;
            seg = p + 1;
        } else if (c == '\\') {
            return "the path must not contain a backslash";
        } else if (c < 0x20 || c == 0x7f) {
            return "the path must not contain control characters";
        }
    }
}

/* ---- headers ---- */

/* Steps through a comma-separated header list ("a, b,c"): sets
 * [*start, *end) to the next element without surrounding blanks and
 * returns true, or returns false at the end. *p is the cursor. */
static bool gw_next_element(const char **p, const char **start, const char **end)
{
    while (**p == ' ' || **p == '\t' || **p == ',')
        (*p)++;
    if (**p == '\0')
        return false;
    *start = *p;
    while (**p && **p != ',')
        (*p)++;
    *end = *p;
    while (*end > *start && ((*end)[-1] == ' ' || (*end)[-1] == '\t'))
        (*end)--;
    return true;
}

/* Whether the comma-separated token list `list` names `name`. */
static bool gw_token_listed(const char *list, const char *name)
{
    size_t name_len = strlen(name);
    const char *p = list, *start, *end;
    while (gw_next_element(&p, &start, &end))
        if ((size_t)(end - start) == name_len && strncasecmp(start, name, name_len) == 0)
            return true;
    return false;
}

static bool gw_is_named(const char *name, const char *what)
{
    return strcasecmp(name, what) == 0;
}

bool gw_header_is_hop_by_hop(const char *name, const char *connection)
{
    /* Dispatch on the first letter: most headers (Accept, Content-*,
     * User-Agent, X-*) are decided by one comparison or none. */
    switch (tolower((unsigned char)name[0])) {
    case 'c':
        if (gw_is_named(name, "Connection"))
            return true;
        break;
    case 'k':
        if (gw_is_named(name, "Keep-Alive"))
            return true;
        break;
    case 'p':
        if (strncasecmp(name, "Proxy-", 6) == 0)
            return true;
        break;
    case 't':
        if (gw_is_named(name, "Transfer-Encoding") || gw_is_named(name, "TE") ||
            gw_is_named(name, "Trailer"))
            return true;
        break;
    case 'u':
        if (gw_is_named(name, "Upgrade"))
            return true;
        break;
    default:
        break;
    }
    return connection != NULL && *connection && gw_token_listed(connection, name);
}

bool gw_request_header_forwarded(const char *name, const char *connection)
{
    switch (tolower((unsigned char)name[0])) {
    case 'h':
        if (gw_is_named(name, "Host"))
            return false;
        break;
    case 'c':
        if (gw_is_named(name, "Content-Length") || gw_is_named(name, "Content-Type"))
            return false;
        break;
    case 'e':
        /* evhttp answered any 100-continue already; the upstream gets the
         * whole body at once. */
        if (gw_is_named(name, "Expect"))
            return false;
        break;
    case 'x':
        if (gw_is_named(name, "X-Request-Id") || gw_is_named(name, "X-Forwarded-For") ||
            gw_is_named(name, "X-Forwarded-Host") || gw_is_named(name, "X-Forwarded-Proto"))
            return false;
        break;
    default:
        break;
    }
    return !gw_header_is_hop_by_hop(name, connection);
}

bool gw_response_header_copied(const char *name, const char *connection, bool head)
{
    switch (tolower((unsigned char)name[0])) {
    case 'c':
        if (gw_is_named(name, "Content-Type"))
            return false;
        if (gw_is_named(name, "Content-Length"))
            return head;
        break;
    case 'd':
        if (gw_is_named(name, "Date"))
            return false;
        break;
    case 's':
        if (gw_is_named(name, "Server"))
            return false;
        break;
    case 'x':
        if (gw_is_named(name, "X-Request-Id"))
            return false;
        break;
    default:
        break;
    }
    return !gw_header_is_hop_by_hop(name, connection);
}

/* ---- failed upstream calls ---- */

int gw_failure_status(httpc_result result)
{
    switch (result) {
    case HTTPC_OK:
        return 0;
    case HTTPC_TIMEOUT:
        return 504;
    case HTTPC_OPEN:
    case HTTPC_BUSY:
        return 503;
    case HTTPC_CONNECT:
    case HTTPC_BROKEN:
    default:
        return 502;
    }
}

unsigned long long gw_retry_after_s(unsigned long long retry_after_ms)
{
    unsigned long long s = (retry_after_ms + 999) / 1000;
    return s ? s : 1;
}

void gw_failure_message(char *buf, size_t size, const char *upstream, httpc_result result,
                        int timeout_ms, unsigned long long retry_after_ms)
{
    switch (result) {
    case HTTPC_CONNECT:
        snprintf(buf, size, "%s service is unavailable: the gateway could not connect to it",
                 upstream);
        break;
    case HTTPC_BROKEN:
        snprintf(buf, size,
                 "%s service is unavailable: the connection broke before a complete answer",
                 upstream);
        break;
    case HTTPC_TIMEOUT:
        snprintf(buf, size, "%s service is unavailable: it did not answer within %d ms",
                 upstream, timeout_ms);
        break;
    case HTTPC_OPEN:
        snprintf(buf, size,
                 "%s service is unavailable: its circuit breaker is open after repeated "
                 "failures; retry in %llu s", upstream, gw_retry_after_s(retry_after_ms));
        break;
    case HTTPC_BUSY:
        snprintf(buf, size,
                 "%s service is unavailable: too many requests are already waiting for it; "
                 "retry shortly", upstream);
        break;
    case HTTPC_OK:
    default:
        snprintf(buf, size, "%s service answered", upstream);
        break;
    }
}

/* ---- the web page ---- */

bool gw_web_key(const char *path, char *key, size_t size)
{
    size_t n = strlen(path);
    bool directory = n > 0 && path[n - 1] == '/';
    int w = snprintf(key, size, "%s%s", path, directory ? "index.html" : "");
    return w >= 0 && (size_t)w < size;
}

static const char *gw_extension(const char *file_name)
{
    const char *slash = strrchr(file_name, '/');
    const char *base = slash ? slash + 1 : file_name;
    const char *dot = strrchr(base, '.');
    return dot && dot != base ? dot + 1 : "";
}

const char *gw_content_type(const char *file_name)
{
    static const struct {
        const char *ext, *type;
    } types[] = {
        {"html", "text/html; charset=utf-8"},
        {"htm", "text/html; charset=utf-8"},
        {"css", "text/css; charset=utf-8"},
        {"js", "text/javascript; charset=utf-8"},
        {"mjs", "text/javascript; charset=utf-8"},
        {"json", "application/json"},
        {"map", "application/json"},
        {"webmanifest", "application/manifest+json"},
        {"txt", "text/plain; charset=utf-8"},
        {"svg", "image/svg+xml"},
        {"png", "image/png"},
        {"jpg", "image/jpeg"},
        {"jpeg", "image/jpeg"},
        {"gif", "image/gif"},
        {"webp", "image/webp"},
        {"ico", "image/x-icon"},
        {"woff2", "font/woff2"},
        {"woff", "font/woff"},
        {"xml", "application/xml"},
        {"wasm", "application/wasm"},
    };
    const char *ext = gw_extension(file_name);
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strcasecmp(ext, types[i].ext) == 0)
            return types[i].type;
    return "application/octet-stream";
}

const char *gw_cache_control(const char *file_name)
{
    const char *ext = gw_extension(file_name);
    if (strcasecmp(ext, "html") == 0 || strcasecmp(ext, "htm") == 0)
        return "no-cache";
    return "public, max-age=300";
}

/* An entity tag without its weakness prefix: W/"x" and "x" compare equal
 * for If-None-Match (weak comparison, RFC 9110 13.1.2). */
static void gw_etag_opaque(const char **start, const char **end)
{
    if (*end - *start >= 2 && (*start)[0] == 'W' && (*start)[1] == '/')
        *start += 2;
}

bool gw_etag_matches(const char *if_none_match, const char *etag)
{
    if (if_none_match == NULL || etag == NULL)
        return false;
    const char *want = etag, *want_end = etag + strlen(etag);
    gw_etag_opaque(&want, &want_end);
    size_t want_len = (size_t)(want_end - want);

    const char *p = if_none_match, *start, *end;
    while (gw_next_element(&p, &start, &end)) {
        if (end - start == 1 && *start == '*')
            return true;
        gw_etag_opaque(&start, &end);
        if ((size_t)(end - start) == want_len && want_len > 0 &&
            memcmp(start, want, want_len) == 0)
            return true;
    }
    return false;
}
