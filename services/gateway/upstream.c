/* upstream.c: the services behind the gateway, and whether they can serve.
 *
 * An upstream is one or several instances (a comma-separated URL list;
 * balance.c chooses among them), each with its own readiness probe and its
 * own httpc on the loop for the proxied calls:
 * keep-alive pool, timeouts, breaker and bulkhead, all configured from
 * GATEWAY_<NAME>_* (httpc.h lists the variables), so one slow service never
 * takes the others' capacity.
 *
 * Readiness. The gateway's /health/ready is served from cached verdicts
 * (service_ready_check), never by calling upstreams while a client waits.
 * Each instance of an upstream named in GATEWAY_READY_UPSTREAMS (and only
 * those, unless the upstream has several instances, whose choice needs
 * their readiness: probing the others would only report a service this
 * deployment does not run) is asked GET /health/ready on its own timer, at the pace of
 * gw_probe_pace_next: every few tens of milliseconds while it is not ready,
 * every GATEWAY_PROBE_INTERVAL_MS once it is. At start the services and the
 * gateway come up together and the first probes find nobody listening; the
 * fast pace makes the gateway ready within a few tens of milliseconds of its
 * last upstream instead of a whole interval later, and the same holds for a
 * recovery. Each upstream paces itself: a ready one is not probed faster
 * because another one is down.
 *
 * The probe is a bare evhttp connection rather than an httpc. It needs
 * none of the client's machinery (pool, breaker, retries: the next probe is
 * the retry), and the client logs a warning per failed call, which for a
 * down upstream would be a line per probe. Instead each change of an
 * upstream's readiness is logged once: not ready (with the reason of the
 * first failed probe), and ready again (with the number of probes that
 * failed in between). Every probe asks on a fresh connection ("Connection:
 * close"): a new connection getting an answer is what readiness should tell
 * for the proxy, and there is no idle keep-alive connection whose close,
 * crossing a probe, would make a ready upstream look down for a moment. A
 * loopback connect per upstream per interval costs nothing measurable. */
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

/* A readiness answer is a small JSON object; anything much larger is not
 * one, and must not make the gateway buffer it. */
#define GW_PROBE_MAX_HEADERS 8192
#define GW_PROBE_MAX_BODY 65536

static void gw_env_prefix(char *buf, size_t size, const char *name)
{
    int n = snprintf(buf, size, "GATEWAY_");
    for (const char *p = name; *p && (size_t)n + 1 < size; p++)
        buf[n++] = (char)((*p >= 'a' && *p <= 'z') ? *p - 'a' + 'A' : *p);
    buf[n] = '\0';
}

/* ---- probes ---- */

static void gw_probe_schedule(gw_instance *in, int delay_ms)
{
    struct timeval tv = {delay_ms / 1000, (delay_ms % 1000) * 1000};
    evtimer_add(in->probe_timer, &tv);
}

/* Records one probe's verdict, logs a change of readiness, and schedules
 * the next probe. */
static void gw_probe_verdict(gw_instance *in, bool ready, const char *reason)
{
    gw_readiness before = in->readiness;
    const char *name = in->up->name, *url = in->base_url;
    in->probes++;
    if (ready) {
        if (before != GW_READY)
            log_info("msg=\"upstream ready\" upstream=%s instance=%s failed_probes=%u", name,
                     url, in->failed_probes);
        in->readiness = GW_READY;
        in->failed_probes = 0;
    } else {
        char quoted[128];
        log_quote(quoted, sizeof quoted, reason);
        /* At start, not being ready yet is the normal case, not a warning;
         * an upstream that was ready and is not any more is one. */
        if (before == GW_READY)
            log_warn("msg=\"upstream not ready\" upstream=%s instance=%s reason=%s", name, url,
                     quoted);
        else if (before == GW_UNPROBED)
            log_info("msg=\"upstream not ready yet\" upstream=%s instance=%s reason=%s", name,
                     url, quoted);
        in->readiness = GW_NOT_READY;
        in->failed_probes++;
    }
    if (gw_balance_probed(in->bal, ready, service_now_ms()))
        log_info("msg=\"instance back after ejection\" upstream=%s instance=%s", name, url);
    gw_probe_schedule(in, gw_probe_pace_next(&in->pace, ready));
}

static void gw_probe_error(enum evhttp_request_error error, void *arg)
{
    gw_instance *in = arg;
    in->probe_error = (int)error;
}

/* evhttp's completion: an answer (req with a status), a failed connect (req
 * without status), or a failure after connecting (req NULL, error set).
 * evhttp frees the request after we return. May run inside
 * evhttp_make_request, when the connect fails at once. */
static void gw_probe_done(struct evhttp_request *req, void *arg)
{
    gw_instance *in = arg;
    in->probe_in_flight = false;
    if (in->up->gw->stopping)
        return;
    int status = req ? evhttp_request_get_response_code(req) : 0;
    char reason[96];
    if (status > 0)
        snprintf(reason, sizeof reason, "status %d", status);
    else if (in->probe_error == EVREQ_HTTP_TIMEOUT)
        snprintf(reason, sizeof reason, "no answer within %d ms",
                 gw_probe_timeout_ms(in->pace.interval_ms));
    else if (req)
        snprintf(reason, sizeof reason, "could not connect");
    else
        snprintf(reason, sizeof reason, "the connection broke before a complete answer");
    gw_probe_verdict(in, status == 200, reason);
}

static void gw_probe_send(gw_instance *in)
{
    struct evhttp_request *req = evhttp_request_new(gw_probe_done, in);
    if (req == NULL) {
        gw_probe_verdict(in, false, "out of memory for a probe");
        return;
    }
    evhttp_request_set_error_cb(req, gw_probe_error);
    struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
    evhttp_add_header(headers, "Host", in->probe_host);
    evhttp_add_header(headers, "Connection", "close");
    in->probe_error = -1;
    /* Set before sending: the completion may run inside the call. */
    in->probe_in_flight = true;
    if (evhttp_make_request(in->probe, req, EVHTTP_REQ_GET, in->probe_uri) != 0) {
        /* No socket (or no memory): evhttp did not call us back. */
        in->probe_in_flight = false;
        gw_probe_verdict(in, false, "cannot open a socket for a probe");
    }
}

static void gw_on_probe_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gw_instance *in = arg;
    if (!in->probe_in_flight && !in->up->gw->stopping)
        gw_probe_send(in);
}

/* The probe's connection, Host header and URI from the base URL (already
 * accepted by httpc_new, which prefixes calls with its path the same
 * way). */
static bool gw_probe_open(gw_instance *in, struct event_base *base, const char *base_url,
                          int interval_ms)
{
    struct evhttp_uri *uri = evhttp_uri_parse(base_url);
    const char *host = uri ? evhttp_uri_get_host(uri) : NULL;
    if (host == NULL || *host == '\0') {
        if (uri)
            evhttp_uri_free(uri);
        return false;
    }
    int port = evhttp_uri_get_port(uri) > 0 ? evhttp_uri_get_port(uri) : 80;

    /* The Host header keeps an IPv6 address's brackets; the socket not. */
    char header[300], address[256];
    if (port == 80)
        snprintf(header, sizeof header, "%s", host);
    else
        snprintf(header, sizeof header, "%s:%d", host, port);
    size_t hlen = strlen(host);
    if (host[0] == '[' && hlen > 2 && host[hlen - 1] == ']')
        snprintf(address, sizeof address, "%.*s", (int)(hlen - 2), host + 1);
    else
        snprintf(address, sizeof address, "%s", host);

    const char *path = evhttp_uri_get_path(uri);
    size_t plen = path ? strlen(path) : 0;
    while (plen > 0 && path[plen - 1] == '/')
        plen--;
    static const char ready_path[] = "/health/ready";
    in->probe_uri = malloc(plen + sizeof ready_path);
    if (in->probe_uri) {
        memcpy(in->probe_uri, path, plen);
        memcpy(in->probe_uri + plen, ready_path, sizeof ready_path);
    }
    evhttp_uri_free(uri);
    in->probe_host = strdup(header);
    in->probe = evhttp_connection_base_new(base, NULL, address, (unsigned short)port);
    in->probe_timer = evtimer_new(base, gw_on_probe_timer, in);
    if (!in->probe_uri || !in->probe_host || !in->probe || !in->probe_timer)
        return false;

    /* "localhost" may resolve to ::1 first while the services listen on
     * 127.0.0.1, and evhttp tries only the first address. */
    if (strcmp(address, "localhost") == 0)
        evhttp_connection_set_family(in->probe, AF_INET);
    evhttp_connection_set_retries(in->probe, 0);   /* the next probe is the retry */
    evhttp_connection_set_max_headers_size(in->probe, GW_PROBE_MAX_HEADERS);
    evhttp_connection_set_max_body_size(in->probe, GW_PROBE_MAX_BODY);
    int timeout_ms = gw_probe_timeout_ms(interval_ms);
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    evhttp_connection_set_timeout_tv(in->probe, &tv);   /* connecting, too */
    gw_probe_pace_init(&in->pace, interval_ms);
    gw_probe_schedule(in, 0);
    return true;
}

/* ---- upstreams ---- */

void gw_instance_ejected(gw_instance *in)
{
    gw_upstream *up = in->up;
    log_warn("msg=\"instance ejected\" upstream=%s instance=%s failures_in_a_row=%u "
             "for_ms=%u", up->name, in->base_url, up->eject_failures, up->eject_ms);
    /* Coming back is the probe's call: the next one leaves when the
     * ejection time is over (the fast pace follows while it is not ready). */
    if (in->probe_timer && !in->probe_in_flight) {
        evtimer_del(in->probe_timer);
        gw_probe_pace_init(&in->pace, in->pace.interval_ms);
        gw_probe_schedule(in, (int)up->eject_ms);
    }
}

static bool gw_instance_open(gw_instance *in, gw_upstream *up, int index, const char *base_url,
                             const httpc_opts *o, bool probed, int probe_interval_ms)
{
    struct event_base *base = up->gw->svc->base;
    in->up = up;
    in->index = index;
    in->bal = &up->bal[index];
    in->readiness = GW_UNPROBED;
    in->probe_error = -1;
    /* Without a probe an instance is taken as ready: one unprobed URL is
     * always used, as before balancing existed. */
    in->bal->ready = !probed;
    in->base_url = strdup(base_url);
    if (in->base_url == NULL)
        return false;
    in->client = httpc_new(base, up->name, base_url, o);
    if (in->client == NULL)
        return false;
    log_info("msg=\"upstream routed\" upstream=%s url=%s required_for_ready=%s", up->name,
             base_url, up->required ? "true" : "false");
    return !probed || gw_probe_open(in, base, base_url, probe_interval_ms);
}

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
    up->eject_failures = (unsigned)config_int("GATEWAY_EJECT_FAILURES", GW_EJECT_FAILURES, 1, 1000);
    up->eject_ms = (unsigned)config_int("GATEWAY_EJECT_MS", GW_EJECT_MS, 0, 3600000);

    char *list = strdup(urls);
    if (list == NULL)
        return false;
    int count = 0;
    for (const char *p = list; *p; p++)
        count += *p == ',';
    bool probed = required || count > 0;
    bool ok = true;
    char *save = NULL;
    for (char *url = strtok_r(list, ", ", &save); url && ok; url = strtok_r(NULL, ", ", &save)) {
        if (up->n == GW_MAX_INSTANCES) {
            ok = false;
            break;
        }
        ok = gw_instance_open(&up->inst[up->n], up, up->n, url, &o, probed, probe_interval_ms);
        up->n++;
    }
    free(list);
    return ok && up->n > 0;
}

static void gw_instance_close(gw_instance *in)
{
    if (in->client)
        httpc_free(in->client);
    in->client = NULL;
    /* Freeing the connection drops a probe in flight without calling
     * gw_probe_done. */
    if (in->probe)
        evhttp_connection_free(in->probe);
    if (in->probe_timer)
        event_free(in->probe_timer);
    in->probe = NULL;
    in->probe_timer = NULL;
    in->probe_in_flight = false;
    free(in->probe_uri);
    free(in->probe_host);
    free(in->base_url);
    in->probe_uri = in->probe_host = in->base_url = NULL;
}

void gw_upstream_close(gw_upstream *up)
{
    /* A failed open leaves the instance it stopped at half set up. */
    for (int i = 0; i < up->n && i < GW_MAX_INSTANCES; i++)
        gw_instance_close(&up->inst[i]);
}

bool gw_upstream_is_ready(void *arg)
{
    const gw_upstream *up = arg;
    for (int i = 0; i < up->n; i++)
        if (up->inst[i].readiness == GW_READY)
            return true;
    return false;
}

static void gw_counter_growth(const char *name, const char *labels, unsigned long long now,
                              unsigned long long *reported)
{
    /* Always add (even 0) so that the series exists from the first render. */
    metrics_counter_add(name, labels, (double)(now - *reported));
    *reported = now;
}

static void gw_instances_collect(gw_upstream *up)
{
    for (int i = 0; i < up->n; i++) {
        gw_instance *in = &up->inst[i];
        char labels[320];
        snprintf(labels, sizeof labels, "upstream=\"%s\",instance=\"%s\"", up->name,
                 in->base_url);
        metrics_gauge_set("carshare_gateway_instance_ready", labels,
                          in->bal->ready && !in->bal->ejected ? 1 : 0);
        metrics_gauge_set("carshare_gateway_instance_outstanding", labels, in->bal->outstanding);
        gw_counter_growth("carshare_gateway_instance_chosen_total", labels, in->bal->chosen,
                          &in->reported_chosen);
        gw_counter_growth("carshare_gateway_instance_ejections_total", labels,
                          in->bal->ejections, &in->reported_ejections);
        gw_counter_growth("carshare_gateway_instance_retries_total", labels, in->bal->retries,
                          &in->reported_retries);
    }
}

/* Collector for /metrics: 1 when the last probe found the upstream ready;
 * per instance when there are several. */
void gw_upstreams_collect(void *arg)
{
    gateway *gw = arg;
    for (int i = 0; i < GW_UPSTREAM_COUNT; i++) {
        gw_upstream *up = &gw->upstreams[i];
        if (up->n > 1)
            gw_instances_collect(up);
        if (!up->required)
            continue;
        char labels[64];
        snprintf(labels, sizeof labels, "upstream=\"%s\"", up->name);
        metrics_gauge_set("carshare_gateway_upstream_ready", labels,
                          gw_upstream_is_ready(up) ? 1 : 0);
    }
}
