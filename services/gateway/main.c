/* main.c: the gateway process -- configuration and wiring.
 *
 * The one public entry of carshare (port 8088): routes the contract's paths
 * to the services and serves the customer's web page from everything else.
 *
 * Environment (besides HOST, PORT, and the server limits of http.h):
 *   ORDER_URL          order service, owns /orders/... and /cars/...
 *                      (default http://127.0.0.1:8081)
 *   DELIVERY_URL       delivery service, /deliveries/... and /cancellations/...
 *                      (default http://127.0.0.1:8082)
 *   CUSTOMERPAGE_URL   customerpage service, /customerpages/...
 *                      (default http://127.0.0.1:8083)
 *   PAYMENT_URL        payment service, /payments/... and /paymentCancellations/...
 *                      (default http://127.0.0.1:8084)
 *   ACCOUNT_URL        account service, /accounts/... and /sessions/...
 *                      (default http://127.0.0.1:8085)
 *   Each *_URL may list several instances, comma separated: balance.c.
 *   GATEWAY_EJECT_FAILURES, GATEWAY_EJECT_MS  passive ejection of one of
 *                      several instances (3 failures in a row, 5000 ms)
 *   TOKEN_PUBLIC_KEYS  the keys tokens are checked with (lib/auth.h)
 *   GATEWAY_<NAME>_*   per upstream (NAME = ORDER, DELIVERY, CUSTOMERPAGE,
 *                      PAYMENT, ACCOUNT), the http client settings of httpc.h:
 *                      _CONNECT_TIMEOUT_MS (1000), _TIMEOUT_MS (5000),
 *                      _POOL_SIZE (32 here), _MAX_INFLIGHT (= pool size),
 *                      _MAX_QUEUE (1024 here), _MAX_QUEUE_WAIT_MS (1000
 *                      here: longest wait for a connection, then 503, never
 *                      sent), _RETRIES (2, GET/HEAD only),
 *                      _BACKOFF_MS (50), _BREAKER_FAILURES (5),
 *                      _BREAKER_RATIO_PCT (50), _BREAKER_MIN_CALLS (20),
 *                      _BREAKER_WINDOW_MS (10000), _BREAKER_OPEN_MS (5000)
 *   GATEWAY_READY_UPSTREAMS  comma-separated upstreams that must be ready for
 *                      the gateway's /health/ready to be 200 (default: all
 *                      five, "order,delivery,customerpage,payment,account"; "none"
 *                      makes readiness independent of the upstreams)
 *   GATEWAY_PROBE_INTERVAL_MS  how often each ready upstream's /health/ready
 *                      is polled (default 1000, 50..600000); one that is not
 *                      ready is polled after 25 ms, then 50, 100, ... up to
 *                      this interval, so the gateway is ready right after its
 *                      upstreams are
 *   WEB_DIR            the web page's files (default ./web, relative to the
 *                      working directory); missing = every page is a 404
 *   WEB_RELOAD_MS      how often WEB_DIR is checked for changed files
 *                      (default 1000; 0 = only on SIGHUP, which always
 *                      reloads)
 *   GATEWAY_TLS_CERT, GATEWAY_TLS_KEY  PEM files: serve HTTPS (edge.c)
 *   PUBLIC_BASE_URL    links' base (default: this gateway's own address)
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "config.h"
#include "gateway.h"
#include "log.h"
#include "metrics.h"

static const struct {
    gw_upstream_id id;
    const char *url_var;
    const char *default_url;
} gw_upstream_config[GW_UPSTREAM_COUNT] = {
    {GW_ORDER, "ORDER_URL", "http://127.0.0.1:8081"},
    {GW_DELIVERY, "DELIVERY_URL", "http://127.0.0.1:8082"},
    {GW_CUSTOMERPAGE, "CUSTOMERPAGE_URL", "http://127.0.0.1:8083"},
    {GW_PAYMENT, "PAYMENT_URL", "http://127.0.0.1:8084"},
    {GW_ACCOUNT, "ACCOUNT_URL", "http://127.0.0.1:8085"},
};

/* Whether GATEWAY_READY_UPSTREAMS names `name`. Exits on an unknown name:
 * a typo must not silently make the gateway ready too early. */
static bool gw_ready_list_names(const char *list, const char *name)
{
    bool found = false;
    char copy[256];
    snprintf(copy, sizeof copy, "%s", list);
    char *save = NULL;
    for (char *tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
        bool known = strcmp(tok, "none") == 0;
        for (int i = 0; i < GW_UPSTREAM_COUNT; i++)
            known = known || strcmp(tok, gw_upstream_name((gw_upstream_id)i)) == 0;
        if (!known) {
            fprintf(stderr, "gateway: GATEWAY_READY_UPSTREAMS names an unknown upstream "
                            "\"%s\" (known: order, delivery, customerpage, payment, account, none)\n", tok);
            exit(2);
        }
        if (strcmp(tok, name) == 0)
            found = true;
    }
    return found;
}

static void gw_on_sighup(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gateway *gw = arg;
    log_info("msg=\"SIGHUP: reloading the web page\" dir=%s", gw_web_dir(gw->web));
    gw_web_rescan(gw->web, true);
}

static gateway *gateway_new(service *svc)
{
    gateway *gw = calloc(1, sizeof *gw);
    if (gw == NULL)
        return NULL;
    gw->svc = svc;
    gw_edge_setup(gw);
    gw->probe_interval_ms = (int)config_int("GATEWAY_PROBE_INTERVAL_MS", 1000, 50, 600000);
    const char *ready_list = config_str("GATEWAY_READY_UPSTREAMS",
                                        "order,delivery,customerpage,payment,account");
    for (int i = 0; i < GW_UPSTREAM_COUNT; i++) {
        const char *url = config_str(gw_upstream_config[i].url_var,
                                     gw_upstream_config[i].default_url);
        gw_upstream_id id = gw_upstream_config[i].id;
        bool required = gw_ready_list_names(ready_list, gw_upstream_name(id));
        if (!gw_upstream_open(&gw->upstreams[id], gw, id, url, required, gw->probe_interval_ms)) {
            fprintf(stderr, "gateway: cannot set up the %s upstream at %s\n",
                    gw_upstream_name(id), url);
            exit(2);
        }
    }

    int reload_ms = (int)config_int("WEB_RELOAD_MS", 1000, 0, 3600000);
    gw->web = gw_web_new(svc->base, config_str("WEB_DIR", "web"), reload_ms);
    if (gw->web == NULL) {
        fprintf(stderr, "gateway: out of memory loading the web page\n");
        exit(2);
    }

    gw->sighup = evsignal_new(svc->base, SIGHUP, gw_on_sighup, gw);
    event_add(gw->sighup, NULL);
    return gw;
}

/* service_on_stop hook: runs after the server has answered every request
 * in flight, so no proxied call is pending any more. */
static void gateway_stop(void *arg)
{
    gateway *gw = arg;
    gw->stopping = true;
    event_free(gw->sighup);
    for (int i = 0; i < GW_UPSTREAM_COUNT; i++)
        gw_upstream_close(&gw->upstreams[i]);
    gw_web_free(gw->web);
    gw_edge_free(gw);
    free(gw);
}

int main(void)
{
    /* A proxied request moves two connections through read, write and idle
     * phases, and evhttp enables and disables their events at each: about
     * ten epoll_ctl calls per request. libevent's changelist batches the
     * changes of one loop turn into one call per descriptor, which halves
     * them (measured: 10 -> 5.6 per request; http_write_now then took the
     * write events out of most turns: 3.5). Safe here: nothing dup()s a
     * socket. Set before service_new creates the event base; an operator's
     * own setting wins. */
    setenv("EVENT_EPOLL_USE_CHANGELIST", "1", 0);
    service *svc = service_new("gateway", 8088);
    gateway *gw = gateway_new(svc);
    if (gw == NULL) {
        fprintf(stderr, "gateway: out of memory\n");
        return 2;
    }
    gateway_register(gw);
    for (int i = 0; i < GW_UPSTREAM_COUNT; i++)
        if (gw->upstreams[i].required)
            service_ready_check(svc, gw->upstreams[i].name, gw_upstream_is_ready,
                                &gw->upstreams[i]);
    metrics_add_collector(gw_upstreams_collect, gw);
    service_on_stop(svc, gateway_stop, gw);
    return service_run(svc);
}
