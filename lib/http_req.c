/* http_req.c: a request's memory and its read side (http_private.h).
 *
 * An http_req comes from a per-server free list and carries an arena for
 * everything derived from the request (decoded path, segments, query
 * pairs, a copy of the body, the request id), so a typical request costs
 * no malloc of ours; bigger requests spill into malloc'ed blocks freed
 * with the request. What a handler may read after going asynchronous is
 * copied there, because libevent may free its evhttp_request before the
 * handler answers (http_answer.c). The accessors below (http_req_*) are
 * what handlers see of a request; the query is parsed and the base URL
 * computed on first use. */
#include "http_private.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "jtext.h"
#include "mem.h"
#include "uuid.h"

/* ---- the arena ---- */

void *http_req_alloc(http_req *r, size_t n)
{
    size_t start = (r->arena_used + (_Alignof(max_align_t) - 1)) & ~(size_t)(_Alignof(max_align_t) - 1);
    if (start <= sizeof r->arena && n <= sizeof r->arena - start) {
        r->arena_used = start + n;
        return r->arena + start;
    }
    spill *sp = mem_must(malloc(sizeof *sp + n));
    sp->next = r->spills;
    r->spills = sp;
    return sp->data;
}

char *http_req_strndup(http_req *r, const char *s, size_t n)
{
    char *copy = http_req_alloc(r, n + 1);
    memcpy(copy, s, n);
    copy[n] = '\0';
    return copy;
}

char *http_req_strdup(http_req *r, const char *s)
{
    return http_req_strndup(r, s, strlen(s));
}

static int hex_value(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes %XX escapes (and '+' as a space when plus_is_space) of in[0..len)
 * into out, which has room for len + 1 bytes. Malformed escapes and %00 are
 * kept as they are (a NUL would silently cut the string). */
size_t http_percent_decode(char *out, const char *in, size_t len, bool plus_is_space)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        if (c == '%' && i + 2 < len) {
            int hi = hex_value((unsigned char)in[i + 1]);
            int lo = hex_value((unsigned char)in[i + 2]);
            if (hi >= 0 && lo >= 0 && (hi | lo) != 0) {
                out[o++] = (char)(hi * 16 + lo);
                i += 2;
                continue;
            }
        } else if (c == '+' && plus_is_space) {
            c = ' ';
        }
        out[o++] = c;
    }
    out[o] = '\0';
    return o;
}


/* ------------------------------------------------------------------ */
/* Request ids                                                         */

/* A client's X-Request-Id is kept when it is a plain token: it goes into
 * log lines and headers of other services unquoted. */
static bool request_id_acceptable(const char *id)
{
    size_t n = 0;
    for (const char *p = id; *p; p++, n++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_' || c == '.' || c == ':';
        if (!ok || n >= REQUEST_ID_MAX)
            return false;
    }
    return n > 0;
}

/* ---- pool and lifetime ---- */

http_req *http_req_acquire(http_server *s)
{
    http_req *r = s->pool;
    if (r) {
        s->pool = r->next;
        s->pool_count--;
    } else {
        r = mem_must(malloc(sizeof *r));
        r->timer = mem_must(evtimer_new(s->base, http_on_request_timeout, r));
    }
    struct event *timer = r->timer;
    memset(r, 0, offsetof(http_req, arena));
    r->timer = timer;
    r->server = s;
    r->next = s->live;
    if (s->live) s->live->prev = r;
    s->live = r;
    return r;
}

void http_req_destroy(http_req *r)
{
    event_free(r->timer);
    free(r);
}

void http_req_release(http_req *r)
{
    if (r->timer_armed) {
        event_del(r->timer);
        r->timer_armed = false;
    }
    while (r->spills) {
        spill *next = r->spills->next;
        free(r->spills);
        r->spills = next;
    }
    http_server *s = r->server;
    if (!s) {
        http_req_destroy(r);
        return;
    }
    if (r->prev) r->prev->next = r->next;
    else s->live = r->next;
    if (r->next) r->next->prev = r->prev;
    if (s->pool_count < REQ_POOL_MAX) {
        r->next = s->pool;
        s->pool = r;
        s->pool_count++;
    } else {
        http_req_destroy(r);
    }
}

void http_header_append(http_header_list *l, http_header *h)
{
    h->next = NULL;
    if (!l->first) l->tail = &l->first;
    *l->tail = h;
    l->tail = &h->next;
    l->count++;
}

static const struct {
    const char *name;
    enum evhttp_cmd_type cmd;
} methods[] = {
    {"GET", EVHTTP_REQ_GET}, {"POST", EVHTTP_REQ_POST}, {"HEAD", EVHTTP_REQ_HEAD},
    {"PUT", EVHTTP_REQ_PUT}, {"DELETE", EVHTTP_REQ_DELETE}, {"OPTIONS", EVHTTP_REQ_OPTIONS},
    {"TRACE", EVHTTP_REQ_TRACE}, {"CONNECT", EVHTTP_REQ_CONNECT}, {"PATCH", EVHTTP_REQ_PATCH},
};

static void set_method(http_req *r, const char *name)
{
    r->cmd = EVHTTP_REQ_GET;
    r->method = "GET";
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (strcmp(methods[i].name, name) == 0) {
            r->cmd = methods[i].cmd;
            r->method = methods[i].name;
            return;
        }
}

/* Whether a Connection header's list holds the token (case-insensitive). */
static bool connection_has(const char *list, const char *token)
{
    size_t tlen = strlen(token);
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        const char *start = p;
        while (*p && *p != ',' && *p != ' ' && *p != '\t') p++;
        if ((size_t)(p - start) == tlen && strncasecmp(start, token, tlen) == 0)
            return true;
    }
    return false;
}

/* The head (already checked by http_frame: one request line, field lines
 * "name:" OWS value OWS CRLF, the empty line) split in place: each name
 * and value is NUL-terminated where its ':' or trailing whitespace was. */
static char *split_head(http_req *r, char *head, char **method, char **target)
{
    *method = head;
    char *p = strchr(head, ' ');
    *p++ = '\0';
    *target = p;
    p = strchr(p, ' ');
    *p++ = '\0';
    p = strchr(p, '\n') + 1;        /* past the version: http_frame read it */
    while (*p != '\r') {
        char *name = p;
        char *colon = strchr(p, ':');
        char *value = colon + 1;
        while (*value == ' ' || *value == '\t') value++;
        char *cr = strchr(value, '\r');
        char *end = cr;
        while (end > value && (end[-1] == ' ' || end[-1] == '\t')) end--;
        *colon = '\0';
        *end = '\0';
        http_header *h = http_req_alloc(r, sizeof *h);
        h->name = name;
        h->value = value;
        http_header_append(&r->in, h);
        p = cr + 2;
    }
    return p + 2;
}

/* The chunked body of the message (the `len` bytes after its head, all of
 * them checked by http_frame) decoded into out; returns the data length. */
static size_t dechunk(const char *in, size_t len, char *out)
{
    size_t i = 0, o = 0;
    while (i < len) {
        size_t size = 0;
        while (i < len && isxdigit((unsigned char)in[i])) {
            int c = in[i++];
            size = size * 16 + (size_t)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
        }
        while (i < len && in[i] != '\n') i++;   /* extensions, CRLF */
        i++;
        if (size == 0)
            break;                               /* trailers are dropped */
        memcpy(out + o, in + i, size);
        o += size;
        i += size + 2;
    }
    return o;
}

static void read_body(http_req *r, struct evbuffer *input, const http_frame_message *m,
                      size_t message_len)
{
    size_t len = (size_t)m->length;
    if (len == 0)
        return;
    char *body = http_req_alloc(r, len + 1);
    struct evbuffer_ptr at;
    evbuffer_ptr_set(input, &at, m->head_len, EVBUFFER_PTR_SET);
    if (m->chunked) {
        size_t raw_len = message_len - m->head_len;
        char *raw = mem_must(malloc(raw_len));
        evbuffer_copyout_from(input, &at, raw, raw_len);
        len = dechunk(raw, raw_len, body);
        free(raw);
    } else {
        evbuffer_copyout_from(input, &at, body, len);
    }
    body[len] = '\0';
    r->body = body;
    r->body_len = len;
}

/* Path and query of the target: an origin form ("/a?b") as it is; an
 * absolute form ("http://host/a?b") without its scheme and authority. */
static void split_target(http_req *r, const char *target, const char **raw_path)
{
    const char *p = target;
    if (*p != '/' && *p != '*') {
        p = strstr(p, "://");
        p = p ? p + 3 : target;
        p += strcspn(p, "/?");
    }
    const char *q = strchr(p, '?');
    size_t plen = q ? (size_t)(q - p) : strlen(p);
    char *path = plen ? http_req_strndup(r, p, plen) : http_req_strdup(r, "/");
    *raw_path = path;
    char *decoded = http_req_alloc(r, strlen(path) + 1);
    http_percent_decode(decoded, path, strlen(path), false);
    r->path = decoded;
    r->query_raw = q ? q + 1 : NULL;
}

/* Fills what a handler may read from the whole request at the start of
 * input (message_len bytes), copied into the arena. */
void http_req_parse(http_req *r, http_conn *c, struct evbuffer *input,
                    const http_frame_message *m, const char **raw_path)
{
    r->conn = c;
    r->t0_ns = http_now_ns();
    r->minor = m->minor;
    r->route_pattern = UNMATCHED_ROUTE;
    r->route_label = UNMATCHED_ROUTE;
    r->in.first = NULL;
    r->in.tail = &r->in.first;
    r->out.first = NULL;
    r->out.tail = &r->out.first;

    char *head = http_req_alloc(r, m->head_len + 1);
    evbuffer_copyout(input, head, m->head_len);
    head[m->head_len] = '\0';
    char *method, *target;
    split_head(r, head, &method, &target);
    set_method(r, method);
    r->head = r->cmd == EVHTTP_REQ_HEAD;
    r->uri = target;
    split_target(r, target, raw_path);
    read_body(r, input, m, c->fed);

    const char *id = http_req_header(r, "X-Request-Id");
    if (id && request_id_acceptable(id)) {
        r->id = id;
    } else {
        char *fresh = http_req_alloc(r, 37);
        uuid_v4(fresh);
        r->id = fresh;
    }
    r->peer = http_req_strdup(r, c->peer);
    const char *conn = http_req_header(r, "Connection");
    r->keep_alive = m->minor >= 1 ? !(conn && connection_has(conn, "close"))
                                   : conn && connection_has(conn, "keep-alive");
}


/* A request outliving its server keeps copies of what pointed into the
 * route table, and waits for its handler's reply alone. */
void http_req_orphan(http_req *r)
{
    r->server = NULL;
    if (r->timer_armed) {
        event_del(r->timer);
        r->timer_armed = false;
    }
    r->route_pattern = http_req_strdup(r, r->route_pattern);
    r->route_label = http_req_strdup(r, r->route_label);
    for (int i = 0; i < r->nparams; i++)
        r->param_names[i] = http_req_strdup(r, r->param_names[i]);
}

/* ------------------------------------------------------------------ */
/* The request, read side                                              */

const char *http_req_method(const http_req *r) { return r->method; }
const char *http_req_path(const http_req *r) { return r->path; }
const char *http_req_uri(const http_req *r) { return r->uri; }
const char *http_req_route(const http_req *r) { return r->route_pattern; }
const char *http_req_id(const http_req *r) { return r->id; }
const char *http_req_peer(const http_req *r) { return r->peer; }
const http_header *http_req_headers(const http_req *r) { return r->in.first; }

const char *http_req_param(const http_req *r, const char *name)
{
    for (int i = 0; i < r->nparams; i++)
        if (!strcmp(r->param_names[i], name))
            return r->param_values[i];
    return NULL;
}

/* Splits and decodes the query on first use ('+' is a space there). */
static void parse_query(http_req *r)
{
    r->query_parsed = true;
    if (!r->query_raw || !*r->query_raw)
        return;
    size_t len = strlen(r->query_raw);
    char *copy = http_req_strndup(r, r->query_raw, len);
    int max_pairs = 1;
    for (const char *p = copy; *p; p++)
        if (*p == '&') max_pairs++;
    r->query = http_req_alloc(r, (size_t)max_pairs * sizeof *r->query);
    char *p = copy;
    while (p) {
        char *amp = strchr(p, '&');
        if (amp) *amp = '\0';
        if (*p) {
            char *eq = strchr(p, '=');
            char *value = eq ? eq + 1 : p + strlen(p);
            if (eq) *eq = '\0';
            /* Decoding never lengthens a string: decode in place. */
            http_percent_decode(p, p, strlen(p), true);
            http_percent_decode(value, value, strlen(value), true);
            r->query[r->nquery].name = p;
            r->query[r->nquery].value = value;
            r->nquery++;
        }
        p = amp ? amp + 1 : NULL;
    }
}

const char *http_req_query(const http_req *cr, const char *name)
{
    http_req *r = (http_req *)cr;   /* parsed lazily: the cache is ours */
    if (!r->query_parsed)
        parse_query(r);
    for (int i = 0; i < r->nquery; i++)
        if (!strcmp(r->query[i].name, name))
            return r->query[i].value;
    return NULL;
}

const char *http_req_header(const http_req *r, const char *name)
{
    int first = name[0] | 0x20;
    for (const http_header *h = r->in.first; h; h = h->next)
        if ((h->name[0] | 0x20) == first && strcasecmp(h->name, name) == 0)
            return h->value;
    return NULL;
}

const char *http_req_body(const http_req *r, size_t *len)
{
    if (len)
        *len = r->body_len;
    return r->body ? r->body : "";
}

void http_req_set_caller(http_req *r, unsigned role, const char *subject)
{
    r->caller_role = role;
    /* Copied as snprintf("%s") would, cut to the buffer, without its
     * ~570 instructions (once per authenticated request). */
    size_t n = subject ? strnlen(subject, sizeof r->caller - 1) : 0;
    if (n)
        memcpy(r->caller, subject, n);
    r->caller[n] = '\0';
}

unsigned http_req_caller_role(const http_req *r) { return r->caller_role; }
const char *http_req_caller(const http_req *r) { return r->caller; }

bool http_req_alive(const http_req *r)
{
    if (r->answered || !r->conn || r->conn->closing || r->conn->peer_closed)
        return false;
    int fd = r->conn->fd;
    /* The connection may not have read the client's leaving yet (it reads
     * on the loop's next turn): peek at the socket. */
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0)
        return false;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        return false;
    return true;
}

/* Links never come from the request: a client-chosen Host or
 * X-Forwarded-Host would put its own address into answers that caches,
 * logs and other customers' pages may keep. */
const char *http_req_base_url(const http_req *cr)
{
    http_req *r = (http_req *)cr;   /* computed lazily: the cache is ours */
    if (r->base_url)
        return r->base_url;
    if (r->server && r->server->public_base_url)   /* copied: a request may outlive its server */
        return r->base_url = http_req_strdup(r, r->server->public_base_url);
    char buf[300];
    const char *listen = r->server ? r->server->listen_host : "";
    if (!*listen || !strcmp(listen, "0.0.0.0") || !strcmp(listen, "::"))
        listen = "localhost";
    snprintf(buf, sizeof buf, "http://%s:%d", listen, r->server ? r->server->listen_port : 0);
    r->base_url = http_req_strdup(r, buf);
    return r->base_url;
}

json_t *http_req_json(http_req *r)
{
    size_t len;
    const char *body = http_req_body(r, &len);
    if (len == 0) {
        http_reply_error(r, 400, "the request body is empty; a JSON object is expected");
        return NULL;
    }
    json_error_t error;
    json_t *json = jtext_load(body, len);   /* json_loadb's value, faster */
    if (!json)
        json = json_loadb(body, len, 0, &error);    /* for the error's place */
    if (!json) {
        http_reply_error(r, 400, "the request body is not valid JSON: %s (line %d, column %d)",
                         error.text, error.line, error.column);
        return NULL;
    }
    if (!json_is_object(json)) {
        static const char *const kinds[] = {"an object", "an array", "a string", "a number",
                                            "a number", "true", "false", "null"};
        int t = (int)json_typeof(json);
        json_decref(json);
        http_reply_error(r, 400, "the request body must be a JSON object, not %s",
                         t >= 0 && t < 8 ? kinds[t] : "this");
        return NULL;
    }
    return json;
}
