/* gateway.h: what the gateway's files share.
 *
 * The gateway is the one public entry of carshare. Every request that is not
 * one of its own (/health/live, /health/ready, /metrics) reaches one fallback
 * handler (api.c), which either proxies it to the service owning the path
 * (proxy.c, one httpc per instance of an upstream from upstream.c, the
 * instance chosen by balance.c) or serves a file of the web page from
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

/* How often an upstream's readiness is probed. While the upstream is not
 * ready (at start, when it is still starting; after it failed) probes follow
 * each other fast -- GW_PROBE_FAST_MS, doubling after each failed probe up
 * to the interval -- so that the gateway is ready within a few tens of
 * milliseconds of its upstreams. Once ready, it is probed every interval,
 * and the first failed probe starts the fast pace again. */
#define GW_PROBE_FAST_MS 25
/* A probe that got no answer within this long fails (the interval, at most
 * GW_PROBE_TIMEOUT_MAX_MS: an upstream that needs longer to say it is ready
 * is of no use to the proxy's calls either). */
#define GW_PROBE_TIMEOUT_MAX_MS 1000

typedef struct gw_probe_pace {
    int interval_ms;            /* GATEWAY_PROBE_INTERVAL_MS */
    int fast_ms;                /* the next delay while not ready */
} gw_probe_pace;

void gw_probe_pace_init(gw_probe_pace *pace, int interval_ms);
/* The delay before the next probe, given the verdict of the one that just
 * finished. */
int gw_probe_pace_next(gw_probe_pace *pace, bool ready);
int gw_probe_timeout_ms(int interval_ms);

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

/* ---- balance.c: choosing among an upstream's instances, no I/O ---- */

/* An upstream may run as several instances (ORDER_URL="http://a,http://b").
 * With one instance the proxy never calls these: the hot path stays what it
 * was. With several, each request goes to the ready, not ejected instance
 * with the fewest requests outstanding (ties in turn, round-robin), an
 * instance failing GW_EJECT_FAILURES calls in a row on the transport is
 * ejected for GATEWAY_EJECT_MS and comes back only when a probe after that
 * finds it ready, and a GET/HEAD that could not be delivered to one
 * instance is sent once more, to another. */
#define GW_MAX_INSTANCES 16
#define GW_EJECT_FAILURES 3     /* GATEWAY_EJECT_FAILURES */
#define GW_EJECT_MS 5000        /* GATEWAY_EJECT_MS */

typedef struct gw_balance {
    bool ready;                 /* the last probe's verdict */
    bool ejected;               /* passively, after failures in a row */
    unsigned outstanding;       /* calls sent and not yet answered */
    unsigned failures;          /* transport failures in a row */
    unsigned long long ejected_until_ms;
    /* For /metrics (upstream.c reports the growth since the last render). */
    unsigned long long chosen, ejections, retries;
} gw_balance;

/* The instance for the next call: among those ready and not ejected (and
 * not `exclude`, -1 for none) the fewest outstanding, ties broken in turn
 * from *rr (advanced past the choice). When none is usable, the same among
 * every instance but `exclude` (the call then fails as it would have with
 * one instance, with the contract's 502/504). -1 when there is no other. */
int gw_balance_pick(const gw_balance *b, int n, unsigned *rr, int exclude);
/* A call's outcome. True when it ejected the instance (now_ms + eject_ms). */
bool gw_balance_record(gw_balance *b, httpc_result result, unsigned long long now_ms,
                       unsigned fail_limit, unsigned eject_ms);
/* A probe's verdict. True when it took an ejected instance back. */
bool gw_balance_probed(gw_balance *b, bool ready, unsigned long long now_ms);
/* Whether a call that ended with `result` on one instance is sent again to
 * another: only GET/HEAD, and only when it was never delivered or the
 * connection broke (not after a timeout: the first instance may still be
 * working on it, and waiting twice is worse than a 504). */
bool gw_balance_retryable(httpc_result result, bool idempotent);

/* ---- upstream.c: the services behind the gateway ---- */

typedef struct gateway gateway;
typedef struct gw_upstream gw_upstream;

/* What the probes say about an upstream. Each change is logged once. */
typedef enum {
    GW_UNPROBED = 0,            /* no probe finished yet: not ready */
    GW_READY,
    GW_NOT_READY,
} gw_readiness;

/* One instance of an upstream: its own client (pool, breaker, bulkhead) and
 * its own readiness probe. */
typedef struct gw_instance {
    gw_upstream *up;
    int index;
    char *base_url;             /* one element of ORDER_URL */
    httpc *client;              /* the proxied calls */

    /* Readiness probing (see upstream.c): for every instance of a required
     * upstream, and of any upstream with several instances. */
    struct evhttp_connection *probe;
    struct event *probe_timer;  /* the next probe */
    char *probe_uri;            /* "<base path>/health/ready" */
    char *probe_host;           /* the Host header: "127.0.0.1:8081" */
    gw_probe_pace pace;
    gw_readiness readiness;
    bool probe_in_flight;
    int probe_error;            /* evhttp's reason for the probe in flight, or -1 */
    unsigned long probes;       /* probes finished, for tests and logs */
    unsigned failed_probes;     /* in a row, since the instance was last ready */

    gw_balance *bal;            /* up->bal[index]; only used with several instances */
    unsigned long long reported_chosen, reported_ejections, reported_retries;
} gw_instance;

struct gw_upstream {
    gw_upstream_id id;
    const char *name;           /* "order" */
    int timeout_ms;             /* the clients' total timeout, for messages */
    bool required;              /* counts for the gateway's readiness */
    gateway *gw;
    gw_instance inst[GW_MAX_INSTANCES];
    int n;                      /* instances in use, 1.. */
    gw_balance bal[GW_MAX_INSTANCES];   /* side by side for gw_balance_pick */
    unsigned rr;                /* round-robin cursor for ties */
    unsigned eject_failures, eject_ms;
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

/* Sets up a client per instance of the upstream (`urls`: one base URL, or
 * several separated by commas) and, for a required upstream or one with
 * several instances, starts probing each: the first probes leave on the
 * loop's next turn. False when a URL is unusable, there are more than
 * GW_MAX_INSTANCES, or memory ran out. */
bool gw_upstream_open(gw_upstream *up, gateway *gw, gw_upstream_id id, const char *urls,
                      bool required, int probe_interval_ms);
void gw_upstream_close(gw_upstream *up);
/* After gw_balance_record ejected an instance: logs it and moves its next
 * probe to the end of the ejection. */
void gw_instance_ejected(gw_instance *in);
/* service_check for one upstream: ready when the last probe of at least one
 * of its instances found it ready. */
bool gw_upstream_is_ready(void *upstream);
/* metrics_collector: carshare_gateway_upstream_ready{upstream=...} and, for
 * an upstream with several instances, carshare_gateway_instance_*{upstream=,
 * instance=<its URL>}: ready, outstanding, chosen_total, ejections_total,
 * retries_total. */
void gw_upstreams_collect(void *gateway);

/* ---- api.c: the one handler behind every non-own path ---- */
void gateway_register(gateway *gw);

/* ---- openapi.c ---- */

/* GET /openapi.yaml: docs/openapi.yaml, compiled in. */
void gw_openapi_register(http_server *s);

/* ---- proxy.c ---- */
void gw_proxy(gw_upstream *up, http_req *req);

#endif
