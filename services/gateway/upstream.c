/* upstream.c: the services behind the gateway, and whether they can serve.
 *
 * Each upstream has two http_clients on the loop:
 *  - `client` carries the proxied calls: keep-alive pool, timeouts, breaker
 *    and bulkhead, all configured from GATEWAY_<NAME>_* (httpc.h lists the
 *    variables), so one slow service never takes the others' capacity;
 *  - `probe` asks GET /health/ready once per probe interval. It has its own
 *    one-connection pool and a breaker that never opens, so probing neither
 *    takes a proxied call's connection, nor spends the breaker's half-open
 *    trial, nor stops probing while the proxy's breaker is open.
 *
 * The gateway's /health/ready is served from the probes' cached verdicts
 * (service_ready_check), never by calling upstreams while a client waits.
 * Only the upstreams named in GATEWAY_READY_UPSTREAMS are probed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "log.h"
#include "metrics.h"

/* Defaults sized for a proxy (the library's defaults suit a service calling
 * one dependency): more connections, and a queue deep enough to ride out a
 * burst of a few hundred clients; beyond it requests are refused (503) at
 * once instead of piling up. */
#define GW_DEFAULT_POOL 32
#define GW_DEFAULT_QUEUE 1024

static void gw_env_prefix(char *buf, size_t size, const char *name)
{
    int n = snprintf(buf, size, "GATEWAY_");
    for (const char *p = name; *p && (size_t)n + 1 < size; p++)
        buf[n++] = (char)((*p >= 'a' && *p <= 'z') ? *p - 'a' + 'A' : *p);
    buf[n] = '\0';
}

bool gw_upstream_open(gw_upstream *up, gateway *gw, gw_upstream_id id, const char *base_url,
                      bool required, int probe_interval_ms)
{
    struct event_base *base = gw->svc->base;
    memset(up, 0, sizeof *up);
    up->id = id;
    up->name = gw_upstream_name(id);
    up->gw = gw;
    up->required = required;
    up->base_url = strdup(base_url);
    if (up->base_url == NULL)
        return false;

    char prefix[64];
    gw_env_prefix(prefix, sizeof prefix, up->name);
    /* httpc_opts_from_env keeps what is already set where the variable is
     * unset, so the gateway's defaults go in first; zero fields mean httpc's
     * own defaults (max_inflight = pool size). */
    http_client_opts o;
    memset(&o, 0, sizeof o);
    o.pool_size = GW_DEFAULT_POOL;
    o.max_queue = GW_DEFAULT_QUEUE;
    http_client_opts_from_env(&o, prefix);
    up->timeout_ms = o.timeout_ms > 0 ? o.timeout_ms : 5000;
    up->client = http_client_new(base, up->name, base_url, &o);
    if (up->client == NULL)
        return false;
    log_info("msg=\"upstream routed\" upstream=%s url=%s required_for_ready=%s", up->name,
             base_url, required ? "true" : "false");
    if (!required)
        return true;

    char probe_name[64];
    snprintf(probe_name, sizeof probe_name, "%s_probe", up->name);
    http_client_opts p;
    memset(&p, 0, sizeof p);
    p.connect_timeout_ms = probe_interval_ms < 1000 ? probe_interval_ms : 1000;
    p.timeout_ms = probe_interval_ms;
    p.pool_size = 1;
    p.max_inflight = 1;
    p.max_queue = 1;
    p.retries = -1;             /* none: the next probe is the retry */
    p.breaker.consecutive_failures = 1 << 30;
    p.breaker.min_calls = 1 << 30;
    up->probe = http_client_new(base, probe_name, base_url, &p);
    if (up->probe == NULL)
        return false;

    return true;
}

void gw_upstream_close(gw_upstream *up)
{
    if (up->client)
        http_client_free(up->client);
    if (up->probe)
        http_client_free(up->probe);
    up->client = up->probe = NULL;
    free(up->base_url);
    up->base_url = NULL;
}

static void gw_probe_done(const http_response *resp, void *arg)
{
    gw_upstream *up = arg;
    up->probe_in_flight = false;
    if (up->gw->stopping)
        return;
    bool ready = resp->result == HTTPC_OK && resp->status == 200;
    if (ready != up->ready || !up->probed) {
        char why[64];
        if (resp->result == HTTPC_OK)
            snprintf(why, sizeof why, "status %d", resp->status);
        else
            snprintf(why, sizeof why, "%s", httpc_result_name(resp->result));
        if (ready)
            log_info("msg=\"upstream ready\" upstream=%s", up->name);
        else
            log_warn("msg=\"upstream not ready\" upstream=%s reason=\"%s\"", up->name, why);
    }
    up->ready = ready;
    up->probed = true;
}

void gw_upstreams_probe(gateway *gw)
{
    for (int i = 0; i < GW_UPSTREAM_COUNT; i++) {
        gw_upstream *up = &gw->upstreams[i];
        /* Only upstreams the readiness waits for: probing the others would
         * only log a failure per interval for a service this deployment
         * does not run. */
        if (!up->required || up->probe == NULL || up->probe_in_flight)
            continue;
        up->probe_in_flight = true;
        http_call call = {
            .method = "GET",
            .uri = "/health/ready",
            .idempotent = false,
        };
        http_client_send(up->probe, &call, gw_probe_done, up);
    }
}

bool gw_upstream_is_ready(void *arg)
{
    const gw_upstream *up = arg;
    return up->ready;
}

/* Collector for /metrics: 1 when the last probe found the upstream ready. */
void gw_upstreams_collect(void *arg)
{
    gateway *gw = arg;
    for (int i = 0; i < GW_UPSTREAM_COUNT; i++) {
        if (!gw->upstreams[i].required)
            continue;
        char labels[64];
        snprintf(labels, sizeof labels, "upstream=\"%s\"", gw->upstreams[i].name);
        metrics_gauge_set("carshare_gateway_upstream_ready", labels,
                          gw->upstreams[i].ready ? 1 : 0);
    }
}
