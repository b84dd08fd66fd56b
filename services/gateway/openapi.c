/* openapi.c: GET /openapi.yaml, the API's description (docs/openapi.yaml).
 *
 * The document is compiled in (CMakeLists.txt turns it into openapi_doc.h
 * at configure time), so the gateway serves the one it was built with,
 * from any image, with no file to find at run time. A route of its own:
 * the fallback (the web page and the upstreams) never sees the path. */
#include "gateway.h"

#include "openapi_doc.h"

static void gw_openapi_get(http_req *req, void *arg)
{
    (void)arg;
    http_reply_raw(req, 200, "application/yaml", openapi_doc, sizeof openapi_doc);
}

void gw_openapi_register(http_server *s)
{
    http_server_route(s, "GET", "/openapi.yaml", gw_openapi_get, NULL);
}
