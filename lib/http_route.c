/* http_route.c: the route trie of the HTTP server (http_private.h).
 *
 * Patterns are stored in a segment trie: one node per path segment,
 * literal children first, plus at most one {param} child. A path is
 * matched segment by segment, preferring literals and backtracking to the
 * {param} child, so "/orders/search/findByCustomerId" and "/orders/{id}"
 * coexist. Each node holds one handler slot per method; a node with
 * handlers but not for this method is a 405 (with Allow), no node at all
 * is the fallback handler or a 404 (http.c decides; this file only finds).
 * HEAD runs the GET handler; OPTIONS answers 204 with Allow. Matching
 * costs one arena copy of each decoded segment and no malloc. */
#include "http_private.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "mem.h"

static char *label_escape(const char *s)
{
    size_t len = strlen(s);
    char *out = mem_must(malloc(2 * len + 1));
    size_t o = 0;
    for (const char *p = s; *p; p++) {
        if (*p == '\\' || *p == '"') { out[o++] = '\\'; out[o++] = *p; }
        else if (*p == '\n') { out[o++] = '\\'; out[o++] = 'n'; }
        else out[o++] = *p;
    }
    out[o] = '\0';
    return out;
}

static int slot_of_name(const char *method)
{
    for (int i = 0; i < ROUTE_SLOTS; i++)
        if (!strcmp(slot_names[i], method))
            return i;
    return -1;
}

static int slot_of_cmd(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET:
    case EVHTTP_REQ_HEAD:   return SLOT_GET;
    case EVHTTP_REQ_POST:   return SLOT_POST;
    case EVHTTP_REQ_PUT:    return SLOT_PUT;
    case EVHTTP_REQ_PATCH:  return SLOT_PATCH;
    case EVHTTP_REQ_DELETE: return SLOT_DELETE;
    default:                return -1;
    }
}

const char *http_method_name(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET:     return "GET";
    case EVHTTP_REQ_POST:    return "POST";
    case EVHTTP_REQ_HEAD:    return "HEAD";
    case EVHTTP_REQ_PUT:     return "PUT";
    case EVHTTP_REQ_DELETE:  return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_TRACE:   return "TRACE";
    case EVHTTP_REQ_CONNECT: return "CONNECT";
    case EVHTTP_REQ_PATCH:   return "PATCH";
    default:                 return "UNKNOWN";
    }
}

static void route_table_misuse(const char *what, const char *method, const char *pattern)
{
    log_error("msg=\"invalid route registration\" reason=\"%s\" method=%s pattern=%s", what,
              method ? method : "(null)", pattern ? pattern : "(null)");
    abort();   /* a programming error: fail at start, loudly */
}

static node *node_literal_child(node *n, const char *seg, size_t len, bool create)
{
    for (size_t i = 0; i < n->nchildren; i++)
        if (n->children[i]->literal_len == len && !memcmp(n->children[i]->literal, seg, len))
            return n->children[i];
    if (!create)
        return NULL;
    node *c = mem_must(calloc(1, sizeof *c));
    c->literal = mem_must(strndup(seg, len));
    c->literal_len = len;
    n->children = mem_must(realloc(n->children, (n->nchildren + 1) * sizeof *n->children));
    n->children[n->nchildren++] = c;
    return c;
}

static void node_update_allow(node *n)
{
    static const char *const order[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"};
    static const int slot_for[] = {SLOT_GET, SLOT_GET, SLOT_POST, SLOT_PUT, SLOT_PATCH, SLOT_DELETE};
    size_t o = 0;
    n->allow[0] = '\0';
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
        if (!n->routes[slot_for[i]])
            continue;
        o += (size_t)snprintf(n->allow + o, sizeof n->allow - o, "%s, ", order[i]);
    }
    snprintf(n->allow + o, sizeof n->allow - o, "OPTIONS");
}

void http_route_free(node *n)
{
    if (!n) return;
    for (size_t i = 0; i < n->nchildren; i++)
        http_route_free(n->children[i]);
    free(n->children);
    http_route_free(n->param_child);
    for (int i = 0; i < ROUTE_SLOTS; i++) {
        route *rt = n->routes[i];
        if (!rt) continue;
        for (int p = 0; p < rt->nparams; p++)
            free(rt->param_names[p]);
        free(rt->pattern);
        free(rt->label);
        free(rt);
    }
    free(n->literal);
    free(n);
}

void http_server_route(http_server *s, const char *method, const char *pattern,
                       http_handler handler, void *arg)
{
    http_server_route_for(s, method, pattern, HTTP_ROUTE_DEFAULT_ROLES, handler, arg);
}

void http_server_guard(http_server *s, http_guard guard, void *arg)
{
    s->guard = guard;
    s->guard_arg = arg;
}

void http_server_route_for(http_server *s, const char *method, const char *pattern,
                           unsigned roles, http_handler handler, void *arg)
{
    int slot = method ? slot_of_name(method) : -1;
    if (slot < 0)
        route_table_misuse("unknown method", method, pattern);
    if (!pattern || pattern[0] != '/' || !handler)
        route_table_misuse("a pattern starts with / and needs a handler", method, pattern);

    route *rt = mem_must(calloc(1, sizeof *rt));
    node *n = s->root;
    int depth = 0;
    const char *p = pattern;
    while (*p) {
        while (*p == '/') p++;
        if (!*p) break;
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (++depth > MAX_SEGMENTS)
            route_table_misuse("too many segments", method, pattern);
        if (len > 2 && p[0] == '{' && p[len - 1] == '}') {
            if (rt->nparams == MAX_PARAMS)
                route_table_misuse("too many {params}", method, pattern);
            if (memchr(p + 1, '{', len - 2) || memchr(p + 1, '}', len - 2))
                route_table_misuse("malformed {param}", method, pattern);
            rt->param_names[rt->nparams++] = mem_must(strndup(p + 1, len - 2));
            if (!n->param_child)
                n->param_child = mem_must(calloc(1, sizeof *n->param_child));
            n = n->param_child;
        } else {
            if (memchr(p, '{', len) || memchr(p, '}', len))
                route_table_misuse("malformed {param}", method, pattern);
            n = node_literal_child(n, p, len, true);
        }
        p += len;
    }
    if (n->routes[slot])
        route_table_misuse("registered twice", method, pattern);
    rt->handler = handler;
    rt->arg = arg;
    rt->roles = roles;
    rt->pattern = mem_must(strdup(pattern));
    rt->label = label_escape(pattern);
    n->routes[slot] = rt;
    n->has_routes = true;
    node_update_allow(n);
}

void http_server_fallback(http_server *s, const char *fallback_label,
                          http_handler handler, void *arg)
{
    free(s->fallback_label);
    free(s->fallback_metric_label);
    s->fallback = handler;
    s->fallback_arg = arg;
    s->fallback_label = mem_must(strdup(fallback_label ? fallback_label : "fallback"));
    s->fallback_metric_label = label_escape(s->fallback_label);
}

/* The node with handlers that matches segs[i..], literals first; captured
 * receives the {param} values along the matching path. */
static const node *match_node(const node *n, const segments *segs, int i,
                              const char **captured, int ncaptured)
{
    if (i == segs->count)
        return n->has_routes ? n : NULL;
    for (size_t c = 0; c < n->nchildren; c++) {
        const node *child = n->children[c];
        if (child->literal_len == segs->len[i] && !memcmp(child->literal, segs->text[i], segs->len[i])) {
            const node *found = match_node(child, segs, i + 1, captured, ncaptured);
            if (found)
                return found;
            break;
        }
    }
    if (n->param_child && ncaptured < MAX_PARAMS) {
        captured[ncaptured] = segs->text[i];
        return match_node(n->param_child, segs, i + 1, captured, ncaptured + 1);
    }
    return NULL;
}

/* Splits the raw path on '/' (empty segments ignored, so a trailing slash
 * does not matter) and decodes each segment, so "%2F" inside a {param}
 * stays a slash in its value instead of splitting it. */
static void split_path(http_req *r, const char *raw, segments *segs)
{
    segs->count = 0;
    segs->too_deep = false;
    const char *p = raw;
    while (*p) {
        while (*p == '/') p++;
        if (!*p) break;
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (segs->count == MAX_SEGMENTS) {
            segs->too_deep = true;
            return;
        }
        char *decoded = http_req_alloc(r, len + 1);
        segs->len[segs->count] = http_percent_decode(decoded, p, len, false);
        segs->text[segs->count] = decoded;
        segs->count++;
        p += len;
    }
}

/* Matches the path and names the request after what it matched, so that
 * even refusals (413, 405) are counted under their route. */
void http_route_resolve(http_server *s, http_req *r, const char *raw_path, destination *d)
{
    segments segs;
    split_path(r, raw_path, &segs);
    d->node = segs.too_deep ? NULL : match_node(s->root, &segs, 0, d->captured, 0);
    d->route = NULL;
    if (!d->node) {
        if (s->fallback) {
            r->route_pattern = s->fallback_label;
            r->route_label = s->fallback_metric_label;
        }
        return;
    }
    int slot = slot_of_cmd(r->cmd);
    d->route = slot >= 0 ? d->node->routes[slot] : NULL;
    /* Without a handler for this method, any route of the node names it. */
    const route *named = d->route;
    for (int i = 0; i < ROUTE_SLOTS && !named; i++)
        named = d->node->routes[i];
    r->route_pattern = named->pattern;
    r->route_label = named->label;
}
