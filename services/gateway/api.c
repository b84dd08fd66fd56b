/* api.c: the gateway's one handler, behind every path that is not its own.
 *
 * /health/live, /health/ready and /metrics are the service skeleton's
 * routes; every other request lands here (the server's fallback), is
 * checked once for a refused path, then goes either to the upstream owning
 * its prefix (proxy.c) or to the web page (web.c). Refusing ".." here, before
 * the split, means neither the web root nor an upstream's other routes can
 * be reached by a crafted path.
 *
 * Before proxying, the gateway checks the caller itself (gw_access, the
 * contract's table; lib/auth.c for the token): internal calls are 404,
 * a missing or bad token 401, a role the table refuses 403 -- the same
 * answers the service would give, without the trip. The token travels on
 * to the service in its Authorization header, and the service checks it
 * again: the gateway adds no identity header, and none from a client is
 * believed anywhere. */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>
#include <event2/http.h>

#include "auth.h"
#include "gateway.h"

static void gw_serve_web(gw_web *web, http_req *req)
{
    const char *method = http_req_method(req);
    const char *path = http_req_path(req);
    bool head = strcmp(method, "HEAD") == 0;
    if (!head && strcmp(method, "GET") != 0) {
        http_set_header(req, "Allow", "GET, HEAD");
        http_reply_error(req, 405, "method %s is not allowed on the web page %s: use GET",
                         method, path);
        return;
    }
    char key[1024];
    const gw_web_file *f = gw_web_key(path, key, sizeof key) ? gw_web_find(web, key) : NULL;
    if (f == NULL) {
        http_reply_error(req, 404, "no page or file %s here", path);
        return;
    }
    http_set_header(req, "Cache-Control", f->cache_control);
    http_set_header(req, "ETag", f->etag);
    if (gw_etag_matches(http_req_header(req, "If-None-Match"), f->etag)) {
        http_reply_empty(req, 304);
        return;
    }
    /* For HEAD the server measures the body, sends its length and drops it. */
    http_reply_raw(req, 200, f->content_type, f->data, f->len);
}

static void gw_dispatch(http_req *req, void *arg)
{
    gateway *gw = arg;
    const char *path = http_req_path(req);
    const char *refusal = gw_path_refusal(path);
    if (refusal != NULL) {
        http_reply_error(req, 400, "%s", refusal);
        return;
    }
    int upstream = gw_route_match(path);
    if (upstream < 0) {
        gw_serve_web(gw->web, req);
        return;
    }
    const char *method = http_req_method(req);
    if (!gw_method_forwarded(method)) {
        http_set_header(req, "Allow", GW_FORWARDED_METHODS);
        http_reply_error(req, 405, "method %s is not forwarded by the gateway; allowed: %s",
                         method, GW_FORWARDED_METHODS);
        return;
    }
    int access = gw_access(method, path);
    if (access == GW_HIDDEN) {
        http_reply_error(req, 404, "no route for %s %s: it is not reachable from outside",
                         method, path);
        return;
    }
    if (access != 0 && !auth_check(service_auth(gw->svc), req, (unsigned)access))
        return;
    gw_proxy(&gw->upstreams[upstream], req);
}

void gateway_register(gateway *gw)
{
    http_server_fallback(gw->svc->http, "/**", gw_dispatch, gw);
    gw_openapi_register(gw->svc->http);
}
