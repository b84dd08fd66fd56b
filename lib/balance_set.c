/* balance_set.c: the instances of one upstream (balance.h): their clients,
 * their readiness probes, and sending a call to one of them.
 *
 * Instances. Each has its own httpc, all from the same options: its own
 * keep-alive pool, bulkhead and breaker, so one failing instance neither
 * takes the others' capacity nor opens their breaker. They live in slots
 * (set->inst, with their choice state side by side in set->st for
 * balance_pick); an instance whose address vanished (balance_dns.c) is
 * marked gone, gets no new call, and is freed from the `reap` event once
 * its outstanding calls finished -- on a later loop turn, never inside its
 * client's callback. Its slot is then filled by the last one.
 *
 * Probes. A bare evhttp connection rather than an httpc: a probe needs none
 * of the client's machinery (pool, breaker, retries: the next probe is the
 * retry), and the client logs a warning per failed call, which for a down
 * instance would be a line per probe. Each change of readiness is logged
 * once instead. Every probe asks on a fresh connection ("Connection:
 * close"): a new connection getting an answer is what readiness should
 * say, and no idle keep-alive connection's close can cross a probe. A set
 * of one fixed address is probed only when asked (o.probe): otherwise that
 * instance counts as ready, as before balancing existed.
 *
 * Sending. balance_choose/balance_done keep the counts around a call the
 * caller sends itself (the gateway rebuilds its request from the client's
 * for a retry); balance_send does the same around a copy of the request
 * (order's payment calls), one allocation per call. */
#include "balance.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <arpa/inet.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "config.h"
#include "log.h"
#include "metrics.h"
#include "service.h"

/* A readiness answer is a small JSON object; anything much larger is not
 * one, and must not be buffered. */
#define BALANCE_PROBE_MAX_HEADERS 8192
#define BALANCE_PROBE_MAX_BODY 65536

static balance_state *balance_st(balance_instance *in)
{
    return &in->set->st[in->index];
}

/* ---- options ---- */

void balance_opts_from_env(balance_opts *o, const char *prefix)
{
    char var[96];
    httpc_opts_from_env(&o->http, prefix);
    snprintf(var, sizeof var, "%s_PROBE_INTERVAL_MS", prefix);
    o->probe_interval_ms = (int)config_int(var, o->probe_interval_ms > 0 ? o->probe_interval_ms
                                                                          : 1000, 50, 600000);
    snprintf(var, sizeof var, "%s_EJECT_FAILURES", prefix);
    o->eject_failures = (unsigned)config_int(var, o->eject_failures ? o->eject_failures
                                                                    : BALANCE_EJECT_FAILURES,
                                             1, 1000);
    snprintf(var, sizeof var, "%s_EJECT_MS", prefix);
    o->eject_ms = (unsigned)config_int(var, o->eject_ms ? o->eject_ms : BALANCE_EJECT_MS, 0,
                                       3600000);
    o->resolve_interval_ms = (int)config_int("RESOLVE_INTERVAL_MS", o->resolve_interval_ms > 0
                                             ? o->resolve_interval_ms : 5000, 50, 3600000);
    o->hosts_file = config_str("RESOLVE_HOSTS_FILE", o->hosts_file);
}

static void balance_defaults(balance_opts *o)
{
    if (o->probe_interval_ms <= 0)
        o->probe_interval_ms = 1000;
    if (o->eject_failures == 0)
        o->eject_failures = BALANCE_EJECT_FAILURES;
    if (o->resolve_interval_ms <= 0)
        o->resolve_interval_ms = 5000;
}

/* ---- probes ---- */

static void balance_probe_schedule(balance_instance *in, int delay_ms)
{
    struct timeval tv = {delay_ms / 1000, (delay_ms % 1000) * 1000};
    in->probe_due_ms = service_now_ms() + (unsigned long long)delay_ms;
    evtimer_add(in->probe_timer, &tv);
}

/* The delay before the next probe: the pace's, but an ejected instance is
 * probed no later than when its ejection ends, so that it comes back then
 * if it is ready (with the ready pace of a long interval it would
 * otherwise wait that interval more). */
static int balance_probe_delay(balance_instance *in, int paced_ms)
{
    const balance_state *st = balance_st(in);
    unsigned long long now = service_now_ms();
    if (!st->ejected || st->ejected_until_ms <= now)
        return paced_ms;
    unsigned long long left = st->ejected_until_ms - now;
    return left < (unsigned long long)paced_ms ? (int)left : paced_ms;
}

/* Records one probe's verdict, logs a change of readiness, and schedules
 * the next probe. */
static void balance_probe_verdict(balance_instance *in, bool ready, const char *reason)
{
    balance_readiness before = in->readiness;
    const char *name = in->set->name, *url = in->url;
    in->probes++;
    if (ready) {
        if (before != BALANCE_READY)
            log_info("msg=\"upstream ready\" upstream=%s instance=%s failed_probes=%u", name,
                     url, in->failed_probes);
        in->readiness = BALANCE_READY;
        in->failed_probes = 0;
    } else {
        char quoted[128];
        log_quote(quoted, sizeof quoted, reason);
        /* At start, not being ready yet is the normal case, not a warning;
         * an instance that was ready and is not any more is one. */
        if (before == BALANCE_READY)
            log_warn("msg=\"upstream not ready\" upstream=%s instance=%s reason=%s", name, url,
                     quoted);
        else if (before == BALANCE_UNPROBED)
            log_info("msg=\"upstream not ready yet\" upstream=%s instance=%s reason=%s", name,
                     url, quoted);
        in->readiness = BALANCE_NOT_READY;
        in->failed_probes++;
    }
    if (balance_probed(balance_st(in), ready, service_now_ms()))
        log_info("msg=\"instance back after ejection\" upstream=%s instance=%s", name, url);
    balance_probe_schedule(in, balance_probe_delay(in, balance_pace_next(&in->pace, ready)));
}

static void balance_probe_error(enum evhttp_request_error error, void *arg)
{
    balance_instance *in = arg;
    in->probe_error = (int)error;
}

/* evhttp's completion: an answer (req with a status), a failed connect (req
 * without status), or a failure after connecting (req NULL, error set).
 * evhttp frees the request after we return. May run inside
 * evhttp_make_request, when the connect fails at once. */
static void balance_probe_done(struct evhttp_request *req, void *arg)
{
    balance_instance *in = arg;
    in->probe_in_flight = false;
    if (in->set->freeing || balance_st(in)->gone)
        return;
    int status = req ? evhttp_request_get_response_code(req) : 0;
    char reason[96];
    if (status > 0)
        snprintf(reason, sizeof reason, "status %d", status);
    else if (in->probe_error == EVREQ_HTTP_TIMEOUT)
        snprintf(reason, sizeof reason, "no answer within %d ms",
                 balance_probe_timeout_ms(in->pace.interval_ms));
    else if (req)
        snprintf(reason, sizeof reason, "could not connect");
    else
        snprintf(reason, sizeof reason, "the connection broke before a complete answer");
    balance_probe_verdict(in, status == 200, reason);
}

static void balance_probe_send(balance_instance *in)
{
    struct evhttp_request *req = evhttp_request_new(balance_probe_done, in);
    if (req == NULL) {
        balance_probe_verdict(in, false, "out of memory for a probe");
        return;
    }
    evhttp_request_set_error_cb(req, balance_probe_error);
    struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
    evhttp_add_header(headers, "Host", in->probe_host);
    evhttp_add_header(headers, "Connection", "close");
    in->probe_error = -1;
    /* Set before sending: the completion may run inside the call. */
    in->probe_in_flight = true;
    if (evhttp_make_request(in->probe, req, EVHTTP_REQ_GET, in->probe_uri) != 0) {
        /* No socket (or no memory): evhttp did not call us back. */
        in->probe_in_flight = false;
        balance_probe_verdict(in, false, "cannot open a socket for a probe");
    }
}

static void balance_on_probe_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    balance_instance *in = arg;
    if (!in->probe_in_flight && !in->set->freeing && !balance_st(in)->gone)
        balance_probe_send(in);
}

/* The probe's connection, Host header and URI from the instance's URL
 * (already accepted by httpc_new, which prefixes calls with its path the
 * same way). */
static bool balance_probe_open(balance_instance *in)
{
    struct evhttp_uri *uri = evhttp_uri_parse(in->url);
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
    balance_set *s = in->set;
    in->probe_host = strdup(header);
    in->probe = evhttp_connection_base_new(s->base, NULL, address, (unsigned short)port);
    in->probe_timer = evtimer_new(s->base, balance_on_probe_timer, in);
    if (!in->probe_uri || !in->probe_host || !in->probe || !in->probe_timer)
        return false;

    /* "localhost" may resolve to ::1 first while the services listen on
     * 127.0.0.1, and evhttp tries only the first address. */
    if (strcmp(address, "localhost") == 0)
        evhttp_connection_set_family(in->probe, AF_INET);
    evhttp_connection_set_retries(in->probe, 0);   /* the next probe is the retry */
    evhttp_connection_set_max_headers_size(in->probe, BALANCE_PROBE_MAX_HEADERS);
    evhttp_connection_set_max_body_size(in->probe, BALANCE_PROBE_MAX_BODY);
    int timeout_ms = balance_probe_timeout_ms(s->o.probe_interval_ms);
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    evhttp_connection_set_timeout_tv(in->probe, &tv);   /* connecting, too */
    balance_pace_init(&in->pace, s->o.probe_interval_ms);
    balance_probe_schedule(in, 0);
    return true;
}

static void balance_probe_close(balance_instance *in)
{
    /* Freeing the connection drops a probe in flight without calling
     * balance_probe_done. */
    if (in->probe)
        evhttp_connection_free(in->probe);
    if (in->probe_timer)
        event_free(in->probe_timer);
    in->probe = NULL;
    in->probe_timer = NULL;
    in->probe_in_flight = false;
}

/* After balance_record ejected an instance: logs it, and makes sure a
 * probe leaves by the end of the ejection.
 *
 * Coming back is the probe's call (balance_probed: only a ready verdict
 * after the ejection time). The probes keep their pace meanwhile, so the
 * instance's readiness (of which the gateway's /health/ready is made)
 * stays true to what it answers. Putting the next probe off to the end of
 * the ejection, as was done before, froze that verdict for eject_ms (5 s):
 * an instance ejected while its last probe said ready stayed "ready" that
 * long although nothing answered, and one found down stayed "not ready"
 * up to 5 s after it was back (the flaky failed_probes=1 of
 * e2e_pg/test_gateway: the ejection came 23 ms after the first failed
 * probe, and no other probe ran until payment was back). */
static void balance_ejected(balance_instance *in)
{
    balance_set *s = in->set;
    log_warn("msg=\"instance ejected\" upstream=%s instance=%s failures_in_a_row=%u "
             "for_ms=%u", s->name, in->url, s->o.eject_failures, s->o.eject_ms);
    if (in->probe_timer && !in->probe_in_flight &&
        in->probe_due_ms > balance_st(in)->ejected_until_ms) {
        evtimer_del(in->probe_timer);
        balance_probe_schedule(in, (int)s->o.eject_ms);
    }
}

/* ---- instances ---- */

static void balance_instance_free(balance_instance *in)
{
    if (in->client)
        httpc_free(in->client);
    balance_probe_close(in);
    free(in->probe_uri);
    free(in->probe_host);
    free(in->url);
    free(in);
}

static void balance_metric_labels(const balance_set *s, const balance_instance *in, char *buf,
                                  size_t size)
{
    snprintf(buf, size, "upstream=\"%s\",instance=\"%s\"", s->name, in->url);
}

/* Frees the slot's instance and moves the last one into the slot. */
static void balance_slot_free(balance_set *s, int i)
{
    balance_instance *in = s->inst[i];
    char labels[320];
    balance_metric_labels(s, in, labels, sizeof labels);
    metrics_gauge_set("carshare_upstream_instance_ready", labels, 0);
    metrics_gauge_set("carshare_upstream_instance_outstanding", labels, 0);
    log_info("msg=\"instance removed\" upstream=%s instance=%s", s->name, in->url);
    balance_instance_free(in);
    s->n--;
    if (i != s->n) {
        s->inst[i] = s->inst[s->n];
        s->st[i] = s->st[s->n];
        s->inst[i]->index = i;
    }
    s->inst[s->n] = NULL;
    memset(&s->st[s->n], 0, sizeof s->st[s->n]);
}

static void balance_on_reap(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    balance_set *s = arg;
    for (int i = s->n - 1; i >= 0; i--)
        if (s->st[i].gone && s->st[i].outstanding == 0)
            balance_slot_free(s, i);
}

static void balance_schedule_reap(balance_set *s)
{
    if (!s->freeing)
        event_active(s->reap, EV_TIMEOUT, 0);
}

int balance_live(const balance_set *s)
{
    int live = 0;
    for (int i = 0; i < s->n; i++)
        live += !s->st[i].gone;
    return live;
}

balance_instance *balance_add(balance_set *s, const char *url, int name)
{
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->inst[i]->url, url) == 0) {
            if (s->st[i].gone) {
                /* Back before its last calls finished: the same instance,
                 * probed again before new calls. */
                s->st[i].gone = false;
                s->st[i].ready = false;
                s->inst[i]->readiness = BALANCE_UNPROBED;
                free(s->inst[i]->probe_uri);
                free(s->inst[i]->probe_host);
                s->inst[i]->probe_uri = s->inst[i]->probe_host = NULL;
                if (s->probed && balance_probe_open(s->inst[i]))
                    log_info("msg=\"instance added\" upstream=%s instance=%s again=true",
                             s->name, url);
            }
            return s->inst[i];
        }
    if (s->n == BALANCE_MAX_SLOTS || balance_live(s) == BALANCE_MAX_INSTANCES) {
        log_warn("msg=\"instance not added: too many\" upstream=%s instance=%s max=%d", s->name,
                 url, BALANCE_MAX_INSTANCES);
        return NULL;
    }
    balance_instance *in = calloc(1, sizeof *in);
    if (in == NULL)
        return NULL;
    in->set = s;
    in->index = s->n;
    in->name = name;
    in->readiness = BALANCE_UNPROBED;
    in->probe_error = -1;
    in->url = strdup(url);
    s->inst[s->n] = in;
    memset(&s->st[s->n], 0, sizeof s->st[s->n]);
    s->n++;
    /* Without a probe an instance is taken as ready. */
    s->st[in->index].ready = !s->probed;
    in->client = in->url ? httpc_new(s->base, s->name, url, &s->o.http) : NULL;
    if (in->client == NULL || (s->probed && !balance_probe_open(in))) {
        balance_slot_free(s, in->index);
        return NULL;
    }
    if (s->auth)
        httpc_set_auth(in->client, s->auth, s->auth_arg);
    log_info("msg=\"instance added\" upstream=%s instance=%s probed=%s", s->name, url,
             s->probed ? "true" : "false");
    return in;
}

void balance_remove(balance_set *s, balance_instance *in)
{
    balance_state *st = balance_st(in);
    if (st->gone)
        return;
    st->gone = true;
    st->ready = false;
    balance_probe_close(in);
    log_info("msg=\"instance leaving\" upstream=%s instance=%s outstanding=%u", s->name, in->url,
             st->outstanding);
    balance_schedule_reap(s);
}

/* ---- the set ---- */

/* "http://name:port/path": whether the host is a name to resolve (not an
 * address). *host and *port are filled either way. */
static bool balance_url_host(const char *url, char *host, size_t size, int *port, bool *usable)
{
    struct evhttp_uri *uri = evhttp_uri_parse(url);
    const char *scheme = uri ? evhttp_uri_get_scheme(uri) : NULL;
    const char *h = uri ? evhttp_uri_get_host(uri) : NULL;
    /* Only plain http (httpc's rule): anything else is refused here,
     * before a name is ever resolved. */
    if (h == NULL || *h == '\0' || scheme == NULL || strcasecmp(scheme, "http") != 0) {
        if (uri)
            evhttp_uri_free(uri);
        host[0] = '\0';
        *usable = false;
        return false;
    }
    *usable = true;
    snprintf(host, size, "%s", h);
    *port = evhttp_uri_get_port(uri) > 0 ? evhttp_uri_get_port(uri) : 80;
    evhttp_uri_free(uri);
    unsigned char addr[16];
    size_t hlen = strlen(host);
    if (host[0] == '[' && hlen > 2 && host[hlen - 1] == ']')
        return false;   /* an IPv6 address */
    return inet_pton(AF_INET, host, addr) != 1 && inet_pton(AF_INET6, host, addr) != 1;
}

balance_set *balance_set_new(struct event_base *base, const char *name, const char *urls,
                             const balance_opts *o)
{
    balance_set *s = calloc(1, sizeof *s);
    char *list = urls ? strdup(urls) : NULL;
    if (s == NULL || list == NULL) {
        free(s);
        free(list);
        return NULL;
    }
    s->base = base;
    s->name = strdup(name);
    s->o = *o;
    balance_defaults(&s->o);
    s->reap = event_new(base, -1, 0, balance_on_reap, s);
    int count = 0, names = 0;
    for (const char *p = list; *p; p++)
        count += *p == ',';
    bool ok = s->name && s->reap;
    char *save = NULL;
    char *entries[BALANCE_MAX_INSTANCES + 1];
    int nentries = 0;
    for (char *url = strtok_r(list, ", ", &save); url && ok; url = strtok_r(NULL, ", ", &save)) {
        if (nentries == BALANCE_MAX_INSTANCES) {
            log_error("msg=\"too many instances\" upstream=%s max=%d", name,
                      BALANCE_MAX_INSTANCES);
            ok = false;
            break;
        }
        entries[nentries++] = url;
    }
    ok = ok && nentries > 0;
    /* Decide about probing before adding anything: several instances, or a
     * name (which may become several), are always probed. */
    char host[256];
    int port = 0;
    bool usable = true;
    for (int i = 0; ok && i < nentries; i++) {
        names += balance_url_host(entries[i], host, sizeof host, &port, &usable);
        if (!usable) {
            log_error("msg=\"unusable upstream URL: expected http://host:port\" upstream=%s "
                      "url=%s", name, entries[i]);
            ok = false;
        }
    }
    s->probed = o->probe || count > 0 || names > 0;
    for (int i = 0; ok && i < nentries; i++) {
        if (balance_url_host(entries[i], host, sizeof host, &port, &usable))
            ok = balance_dns_add_name(s, entries[i], host, port);
        else
            ok = balance_add(s, entries[i], -1) != NULL;
        if (!ok)
            log_error("msg=\"unusable upstream URL\" upstream=%s url=%s", name, entries[i]);
    }
    free(list);
    if (!ok) {
        balance_set_free(s);
        return NULL;
    }
    balance_dns_start(s);
    return s;
}

void balance_set_free(balance_set *s)
{
    if (s == NULL)
        return;
    s->freeing = true;
    balance_dns_free(s);
    /* Freeing a client completes its calls (their callbacks see
     * s->freeing in balance_done and leave the slots alone). */
    for (int i = 0; i < s->n; i++)
        if (s->inst[i]->client) {
            httpc *c = s->inst[i]->client;
            s->inst[i]->client = NULL;
            httpc_free(c);
        }
    for (int i = 0; i < s->n; i++)
        balance_instance_free(s->inst[i]);
    if (s->reap)
        event_free(s->reap);
    free(s->name);
    free(s);
}

void balance_set_auth(balance_set *s, httpc_auth_fn fn, void *arg)
{
    s->auth = fn;
    s->auth_arg = arg;
    for (int i = 0; i < s->n; i++)
        httpc_set_auth(s->inst[i]->client, fn, arg);
}

bool balance_ready(const balance_set *s)
{
    for (int i = 0; i < s->n; i++)
        if (!s->st[i].gone && s->inst[i]->readiness == BALANCE_READY)
            return true;
    return false;
}

/* ---- calls ---- */

balance_instance *balance_choose(balance_set *s, const balance_instance *exclude)
{
    /* One instance: no choice to make. */
    int i = s->n == 1 && !exclude && !s->st[0].gone
        ? 0 : balance_pick(s->st, s->n, &s->rr, exclude ? exclude->index : -1);
    if (i < 0)
        return NULL;
    s->st[i].outstanding++;
    s->st[i].chosen++;
    return s->inst[i];
}

bool balance_done(balance_set *s, balance_instance *in, httpc_result result, bool idempotent,
                  bool retried)
{
    if (s->freeing)
        return false;
    balance_state *st = balance_st(in);
    st->outstanding--;
    /* The clock only matters for an ejection: not read on the common path. */
    unsigned long long now = result == HTTPC_OK ? 0 : service_now_ms();
    if (!st->gone && balance_record(st, result, now, s->o.eject_failures, s->o.eject_ms))
        balance_ejected(in);
    if (st->gone && st->outstanding == 0)
        balance_schedule_reap(s);
    if (retried || !balance_retryable(result, idempotent))
        return false;
    /* Only when there is another instance to send it to (the count is
     * "sent again elsewhere"). */
    if (balance_live(s) - (st->gone ? 0 : 1) < 1)
        return false;
    st->retries++;
    return true;
}

httpc_result balance_refusal(const balance_set *s, unsigned long long *retry_ms)
{
    httpc_result worst = HTTPC_BUSY;
    unsigned long long shortest = 0;
    bool any = false;
    /* The usable instances first: the choice goes to one of them. */
    for (int pass = 0; pass < 2 && !any; pass++)
        for (int i = 0; i < s->n; i++) {
            const balance_state *st = &s->st[i];
            if (st->gone || (pass == 0 && (!st->ready || st->ejected)))
                continue;
            any = true;
            unsigned long long ms = 0;
            httpc_result r = httpc_refusal(s->inst[i]->client, &ms);
            if (r == HTTPC_OK) {
                *retry_ms = 0;
                return HTTPC_OK;
            }
            if (r == HTTPC_OPEN)
                worst = HTTPC_OPEN;
            if (shortest == 0 || ms < shortest)
                shortest = ms;
        }
    *retry_ms = any && shortest ? shortest : 1000;
    return worst;
}

/* One balance_send: the request copied (a retry sends it again after the
 * caller's copy is gone), and the first outcome kept for
 * balance_first_outcome_wins. */
typedef struct balance_call {
    balance_set *set;
    balance_instance *in;
    httpc_cb cb;
    void *arg;
    httpc_request req;
    struct evkeyvalq headers;
    bool has_headers;
    bool retried;
    httpc_result first;
    struct event *later;        /* "no instance" completes on the next turn */
    char *body;
    char strings[];             /* method, uri, request id, content type */
} balance_call;

static void balance_call_free(balance_call *c)
{
    if (c->has_headers)
        evhttp_clear_headers(&c->headers);
    if (c->later)
        event_free(c->later);
    if (c->body) {
        explicit_bzero(c->body, c->req.body_len);   /* may hold a card number */
        free(c->body);
    }
    free(c);
}

static void balance_call_finish(balance_call *c, const httpc_response *resp)
{
    httpc_response r = *resp;
    if (c->retried && balance_first_outcome_wins(c->first, resp->result)) {
        r = (httpc_response){.result = c->first, .body = "", .elapsed_ms = resp->elapsed_ms};
    }
    c->cb(&r, c->arg);
    balance_call_free(c);
}

static void balance_call_send(balance_call *c);

static void balance_call_done(const httpc_response *resp, void *arg)
{
    balance_call *c = arg;
    balance_set *s = c->set;
    if (balance_done(s, c->in, resp->result, c->req.idempotent, c->retried)) {
        balance_instance *next = balance_choose(s, c->in);
        if (next != NULL) {
            log_info("req=%s msg=\"call sent to another instance\" upstream=%s from=%s to=%s "
                     "result=%s", c->req.request_id ? c->req.request_id : "-", s->name,
                     c->in->url, next->url, httpc_result_name(resp->result));
            c->first = resp->result;
            c->retried = true;
            c->in = next;
            balance_call_send(c);
            return;
        }
    }
    balance_call_finish(c, resp);
}

static void balance_call_send(balance_call *c)
{
    httpc_request req = c->req;
    req.headers = c->has_headers ? &c->headers : NULL;
    httpc_send(c->in->client, &req, balance_call_done, c);
}

static void balance_no_instance(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    balance_call *c = arg;
    httpc_response r = {.result = HTTPC_BUSY, .body = "", .retry_after_ms = 1000};
    balance_call_finish(c, &r);
}

static char *balance_put(char **at, const char *text)
{
    if (text == NULL)
        return NULL;
    char *p = *at;
    size_t n = strlen(text) + 1;
    memcpy(p, text, n);
    *at += n;
    return p;
}

int balance_send(balance_set *s, const httpc_request *call, httpc_cb cb, void *arg)
{
    size_t need = strlen(call->method) + strlen(call->uri) + 2 +
                  (call->request_id ? strlen(call->request_id) + 1 : 0) +
                  (call->content_type ? strlen(call->content_type) + 1 : 0);
    balance_call *c = calloc(1, sizeof *c + need);
    char *body = call->body_len ? malloc(call->body_len) : NULL;
    if (c == NULL || (call->body_len && body == NULL)) {
        free(c);
        free(body);
        /* Out of memory: the call cannot be made; say so as httpc would
         * for a call it refused (never sent). */
        httpc_response r = {.result = HTTPC_BUSY, .body = "", .retry_after_ms = 1000};
        cb(&r, arg);
        return 0;
    }
    c->set = s;
    c->cb = cb;
    c->arg = arg;
    c->req = *call;
    char *at = c->strings;
    c->req.method = balance_put(&at, call->method);
    c->req.uri = balance_put(&at, call->uri);
    c->req.request_id = balance_put(&at, call->request_id);
    c->req.content_type = balance_put(&at, call->content_type);
    if (body)
        memcpy(body, call->body, call->body_len);
    c->body = body;
    c->req.body = body;
    TAILQ_INIT(&c->headers);
    if (call->headers) {
        c->has_headers = true;
        const struct evkeyval *kv;
        TAILQ_FOREACH(kv, call->headers, next)
            evhttp_add_header(&c->headers, kv->key, kv->value);
    }
    c->in = balance_choose(s, NULL);
    if (c->in == NULL) {
        /* Never inside this call: from the loop, as httpc does. */
        c->later = event_new(s->base, -1, 0, balance_no_instance, c);
        if (c->later) {
            event_active(c->later, EV_TIMEOUT, 0);
            return 0;
        }
        balance_no_instance(-1, 0, c);
        return 0;
    }
    balance_call_send(c);
    return 0;
}

int balance_json(balance_set *s, const char *method, const char *uri, const char *request_id,
                 const char *json_body, bool idempotent, httpc_cb cb, void *arg)
{
    httpc_request call = {
        .method = method,
        .uri = uri,
        .request_id = request_id,
        .body = json_body,
        .body_len = json_body ? strlen(json_body) : 0,
        .idempotent = idempotent,
    };
    return balance_send(s, &call, cb, arg);
}

/* ---- /metrics ---- */

static void balance_counter_growth(const char *name, const char *labels, unsigned long long now,
                                   unsigned long long *reported)
{
    /* Always add (even 0) so that the series exists from the first render. */
    metrics_counter_add(name, labels, (double)(now - *reported));
    *reported = now;
}

void balance_collect(balance_set *s)
{
    for (int i = 0; i < s->n; i++) {
        balance_instance *in = s->inst[i];
        const balance_state *st = &s->st[i];
        char labels[320];
        balance_metric_labels(s, in, labels, sizeof labels);
        metrics_gauge_set("carshare_upstream_instance_ready", labels,
                          st->ready && !st->ejected && !st->gone ? 1 : 0);
        metrics_gauge_set("carshare_upstream_instance_outstanding", labels, st->outstanding);
        balance_counter_growth("carshare_upstream_instance_chosen_total", labels, st->chosen,
                               &in->reported_chosen);
        balance_counter_growth("carshare_upstream_instance_ejections_total", labels,
                               st->ejections, &in->reported_ejections);
        balance_counter_growth("carshare_upstream_instance_retries_total", labels, st->retries,
                               &in->reported_retries);
    }
}
