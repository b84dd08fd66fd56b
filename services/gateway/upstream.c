/* upstream.c: the services behind the gateway, and whether they can serve.
 *
 * An upstream is a set of instances (lib/balance.h: a comma-separated URL
 * list; host names re-resolved so that instances can come and go), each
 * with its own httpc on the loop for the proxied calls: keep-alive pool,
 * timeouts, breaker and bulkhead, all configured from GATEWAY_<NAME>_*
 * (httpc.h lists the variables), so one slow service never takes the
 * others' capacity.
 *
 * Readiness. The gateway's /health/ready is served from cached verdicts
 * (service_ready_check), never by calling upstreams while a client waits.
 * Each instance of an upstream named in GATEWAY_READY_UPSTREAMS (and only
 * those, unless the upstream has several instances or a host name, whose
 * choice needs their readiness: probing the others would only report a
 * service this deployment does not run) is asked GET /health/ready on its
 * own timer (balance_set.c): every few tens of milliseconds while it is
 * not ready, every GATEWAY_PROBE_INTERVAL_MS once it is, so the gateway is
 * ready within a few tens of milliseconds of its last upstream. Each change
 * of an instance's readiness is logged once. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/event.h>
#include <event2/http.h>

#include "gateway.h"
#include "config.h"
#include "log.h"
#include "metrics.h"

/* Defaults sized for a proxy (the library's defaults suit a service calling
 * one dependency): more connections, and a queue deep enough to ride out a
 * burst of a few hundred clients; beyond it requests are refused (503) at
 * once instead of piling up. */
#define GW_DEFAULT_POOL 32
#define GW_DEFAULT_QUEUE 1024
/* A request waits at most this long for a connection to its upstream
 * before it is refused (503, never sent). Together with the timeout on the
 * wire (5 s, above order's own 3 s bound on a payment) it bounds how long a
 * customer can wait through the gateway. */
#define GW_DEFAULT_QUEUE_WAIT_MS 1000

static void gw_env_prefix(char *buf, size_t size, const char *name)
{
    int n = snprintf(buf, size, "GATEWAY_");
    for (const char *p = name; *p && (size_t)n + 1 < size; p++)
        buf[n++] = (char)((*p >= 'a' && *p <= 'z') ? *p - 'a' + 'A' : *p);
    buf[n] = '\0';
}

/* ---- upstreams ---- */

bool gw_upstream_open(gw_upstream *up, gateway *gw, gw_upstream_id id, const char *urls,
                      bool required, int probe_interval_ms)
{
    memset(up, 0, sizeof *up);
    up->id = id;
    up->name = gw_upstream_name(id);
    up->gw = gw;
    up->required = required;

    char prefix[64];
    gw_env_prefix(prefix, sizeof prefix, up->name);
    /* httpc_opts_from_env keeps what is already set where the variable is
     * unset, so the gateway's defaults go in first; zero fields mean httpc's
     * own defaults (max_inflight = pool size). Every instance gets the same
     * settings: its own pool, bulkhead and breaker of that size. */
    httpc_opts o;
    memset(&o, 0, sizeof o);
    o.pool_size = GW_DEFAULT_POOL;
    o.max_queue = GW_DEFAULT_QUEUE;
    o.max_queue_wait_ms = GW_DEFAULT_QUEUE_WAIT_MS;
    /* An upstream's fast 5xx is its own answer (order's 503 when payment
     * hangs), passed on as is: only transport failures and timeouts say
     * the upstream itself is failing and should close all its routes. */
    o.breaker_ignores_5xx = true;
    httpc_opts_from_env(&o, prefix);
    up->timeout_ms = o.timeout_ms > 0 ? o.timeout_ms : 5000;
    balance_opts bo = {
        .http = o,
        .probe = required,
        .probe_interval_ms = probe_interval_ms,
        .eject_failures = (unsigned)config_int("GATEWAY_EJECT_FAILURES", BALANCE_EJECT_FAILURES,
                                               1, 1000),
        .eject_ms = (unsigned)config_int("GATEWAY_EJECT_MS", BALANCE_EJECT_MS, 0, 3600000),
        .resolve_interval_ms = (int)config_int("RESOLVE_INTERVAL_MS", 5000, 50, 3600000),
        .hosts_file = config_str("RESOLVE_HOSTS_FILE", NULL),
    };
    up->set = balance_set_new(gw->svc->base, up->name, urls, &bo);
    if (up->set)
        log_info("msg=\"upstream routed\" upstream=%s url=%s required_for_ready=%s", up->name,
                 urls, up->required ? "true" : "false");
    return up->set != NULL;
}

void gw_upstream_close(gw_upstream *up)
{
    balance_set_free(up->set);
    up->set = NULL;
}

bool gw_upstream_is_ready(void *arg)
{
    const gw_upstream *up = arg;
    return up->set && balance_ready(up->set);
}

/* Collector for /metrics: 1 when the last probe found the upstream ready;
 * and each instance's figures (balance_collect). */
void gw_upstreams_collect(void *arg)
{
    gateway *gw = arg;
    for (int i = 0; i < GW_UPSTREAM_COUNT; i++) {
        gw_upstream *up = &gw->upstreams[i];
        if (up->set)
            balance_collect(up->set);
        if (!up->required)
            continue;
        char labels[64];
        snprintf(labels, sizeof labels, "upstream=\"%s\"", up->name);
        metrics_gauge_set("carshare_gateway_upstream_ready", labels,
                          gw_upstream_is_ready(up) ? 1 : 0);
    }
}
