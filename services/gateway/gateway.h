/* gateway.h: what the gateway's files share.
 *
 * The gateway is the one public entry of carshare. Every request that is not
 * one of its own (/health/live, /health/ready, /metrics) reaches one fallback
 * handler (api.c), which either proxies it to the service owning the path
 * (proxy.c, one httpc per instance of an upstream, the instance chosen by
 * lib/balance.h) or serves a file of the web page from
 * memory (web.c). The rules deciding all of this -- which
 * path goes where, which paths are refused, which headers cross the proxy,
 * what a failed upstream call answers -- are pure functions in domain.c, so
 * that they can be unit tested without sockets.
 *
 * Ownership: one gateway owns its upstreams (and their clients) and its web
 * file cache; everything lives on the service's event loop thread. */
#ifndef CARSHARE_GATEWAY_H
#define CARSHARE_GATEWAY_H

#include <stdbool.h>
#include <stddef.h>

#include "balance.h"
#include "httpc.h"
#include "service.h"

struct event;
struct evhttp_connection;

/* ---- domain.c: the rules, no I/O ---- */

/* The services behind the gateway, in the order of the contract's table. */
typedef enum {
    GW_ORDER = 0,
    GW_DELIVERY,
    GW_CUSTOMERPAGE,
    GW_PAYMENT,
    GW_ACCOUNT,
    GW_UPSTREAM_COUNT
} gw_upstream_id;

/* The upstream owning `path` ("/orders/7" -> GW_ORDER), or -1 when the path
 * belongs to the web page. A route "/orders/..." matches "/orders", "/orders/",
 * "/orders/7" and "/orders?x", but not "/ordersX". */
int gw_route_match(const char *path);
/* Whether `path` is `prefix` or lies under it, in the sense above. */
bool gw_route_prefix_matches(const char *path, const char *prefix, size_t prefix_len);
/* Who may make a call through the gateway (the contract's access table):
 *   GW_HIDDEN  never routed: the internal calls (POST /payments, POST
 *              /paymentCancellations, POST /cancellations -- every method
 *              but GET and HEAD on the read-only-from-outside prefixes
 *              /payments, /paymentCancellations, /deliveries, /cancellations):
 *              404, as for a path the gateway does not know, whatever the
 *              token -- "never reachable from outside";
 *   0          open, no token: GET/HEAD /cars..., POST /accounts, POST /sessions;
 *   role bits  a valid token of one of these roles (token.h), else 401/403.
 * Each service checks again, with ownership; the gateway refuses early
 * what the table refuses outright, with the same words. A service token
 * never passes: no route here admits the service role. */
#define GW_HIDDEN (-1)
int gw_access(const char *method, const char *path);

/* Methods passed on to the services; others (TRACE, CONNECT) are refused
 * with 405 and this list in Allow. */
#define GW_FORWARDED_METHODS "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
bool gw_method_forwarded(const char *method);
/* "order", "delivery", ... */
const char *gw_upstream_name(gw_upstream_id id);

/* NULL when the decoded request path may be served or forwarded; otherwise
 * why it is refused (a "." or ".." segment, a backslash, a control byte, not
 * starting with "/"), ready for a 400. */
const char *gw_path_refusal(const char *path);

/* Hop-by-hop headers (RFC 9110 7.6.1): Connection, Keep-Alive,
 * Transfer-Encoding, TE, Trailer, Upgrade, Proxy-*, and any header named
 * in the message's own Connection header (`connection`, may be NULL). */
bool gw_header_is_hop_by_hop(const char *name, const char *connection);
/* Whether a client's request header is passed on to the upstream as is.
 * Besides hop-by-hop headers, the proxy sets Host, Content-Length,
 * Content-Type, Expect, X-Request-Id and X-Forwarded-* itself. */
bool gw_request_header_forwarded(const char *name, const char *connection);
/* Whether an upstream's answer header is copied to the client. Content-Type
 * travels separately; Content-Length is recomputed (except for HEAD, whose
 * body is empty here but not upstream); Date and Server are the gateway's
 * (as nginx does); X-Request-Id is set by the gateway's own server. */
bool gw_response_header_copied(const char *name, const char *connection, bool head);

/* What a transport failure answers: 502 (connect, broken), 503 (breaker
 * open, bulkhead full), 504 (timeout). 0 for HTTPC_OK. */
int gw_failure_status(httpc_result result);
/* The error message naming the upstream: "order service is unavailable: ...". */
void gw_failure_message(char *buf, size_t size, const char *upstream, httpc_result result,
                        int timeout_ms, unsigned long long retry_after_ms);
/* Seconds for Retry-After: the cool-down rounded up, at least 1. */
unsigned long long gw_retry_after_s(unsigned long long retry_after_ms);

/* The cache key of the file answering a web path: "/" -> "/index.html",
 * "/help/" -> "/help/index.html", other paths unchanged. False when it does
 * not fit in `size`. */
bool gw_web_key(const char *path, char *key, size_t size);
/* Content-Type by file extension (text/html; charset=utf-8, ...). */
const char *gw_content_type(const char *file_name);
/* HTML pages are revalidated on every use (they name the other files);
 * other files may be reused for a few minutes. */
const char *gw_cache_control(const char *file_name);
/* Whether an If-None-Match header value (a list, or "*") matches etag. */
bool gw_etag_matches(const char *if_none_match, const char *etag);

/* ---- web.c: the web page, cached in memory ---- */

typedef struct gw_web gw_web;

typedef struct gw_web_file {
    char *key;                  /* "/index.html": path under the web root */
    unsigned char *data;
    size_t len;
    const char *content_type;
    const char *cache_control;
    char etag[24];              /* "\"<16 hex digits>\"": a hash of the content */
} gw_web_file;

/* Loads every regular file under dir (dotfiles and symlinks skipped). A
 * missing dir is not an error: the page is then empty (every file is a 404)
 * until it appears. reload_ms > 0 rescans the tree that often on `base` and
 * reloads when a file changed (size, mtime, added, removed); base may be NULL
 * (no timer: tests call gw_web_rescan). */
gw_web *gw_web_new(struct event_base *base, const char *dir, int reload_ms);
void gw_web_free(gw_web *w);
/* The file for a key (from gw_web_key), or NULL. Valid until the next reload. */
const gw_web_file *gw_web_find(const gw_web *w, const char *key);
/* Reloads when something changed (force: always). Returns the number of
 * files loaded after the call. */
size_t gw_web_rescan(gw_web *w, bool force);
size_t gw_web_count(const gw_web *w);
const char *gw_web_dir(const gw_web *w);

/* ---- upstream.c: the services behind the gateway ---- */

typedef struct gateway gateway;
typedef struct gw_upstream gw_upstream;

/* An upstream: one or several instances (a comma-separated *_URL; a host
 * name there is resolved again and again, every address an instance),
 * balanced by lib/balance.h: each instance has its own client (pool,
 * breaker, bulkhead) and, for a required upstream or one with several
 * instances, its own readiness probe. */
struct gw_upstream {
    gw_upstream_id id;
    const char *name;           /* "order" */
    int timeout_ms;             /* the clients' total timeout, for messages */
    bool required;              /* counts for the gateway's readiness */
    gateway *gw;
    balance_set *set;
};

struct gateway {
    service *svc;
    gw_upstream upstreams[GW_UPSTREAM_COUNT];
    gw_web *web;
    struct event *sighup;
    int probe_interval_ms;
    bool stopping;
    struct ssl_ctx_st *tls;     /* NULL: plain HTTP (edge.c) */
    const char *scheme;         /* "http" or "https": X-Forwarded-Proto */
    char public_host[256];      /* the public base URL's host[:port]: X-Forwarded-Host */
};

/* ---- edge.c: security headers, TLS, the public address ---- */

/* Reads GATEWAY_TLS_CERT/KEY (exit 2 when unusable), sets the server's
 * security headers and the public base URL. Before listening. */
void gw_edge_setup(gateway *gw);
void gw_edge_free(gateway *gw);

/* Sets up the upstream's instance set from `urls` (one base URL, or
 * several separated by commas; addresses or host names), probing each
 * instance of a required upstream or of one with several instances: the
 * first probes leave on the loop's next turn. False when a URL is
 * unusable, there are more than BALANCE_MAX_INSTANCES, or memory ran out. */
bool gw_upstream_open(gw_upstream *up, gateway *gw, gw_upstream_id id, const char *urls,
                      bool required, int probe_interval_ms);
void gw_upstream_close(gw_upstream *up);
/* service_check for one upstream: ready when the last probe of at least one
 * of its instances found it ready. */
bool gw_upstream_is_ready(void *upstream);
/* metrics_collector: carshare_gateway_upstream_ready{upstream=...} and
 * every instance's carshare_upstream_instance_* (balance.h). */
void gw_upstreams_collect(void *gateway);

/* ---- api.c: the one handler behind every non-own path ---- */
void gateway_register(gateway *gw);

/* ---- openapi.c ---- */

/* GET /openapi.yaml: docs/openapi.yaml, compiled in. */
void gw_openapi_register(http_server *s);

/* ---- proxy.c ---- */
void gw_proxy(gw_upstream *up, http_req *req);

#endif
