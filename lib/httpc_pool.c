/* httpc_pool.c: the HTTP client's connection pool (httpc_private.h).
 *
 * A client owns a fixed array of slots, one connection each (httpc_conn.c; the
 * bulkhead: max_inflight slots, see httpc.c); the first min(pool_size,
 * max_inflight) keep their connection alive between calls, the others
 * send "Connection: close". Idle slots wait on two LIFO stacks, so the
 * warmest connection is reused first and the ones at the bottom age out.
 * A connection is freed whole to end an attempt (never cancelled and
 * kept: no half-read answer may reach the slot's next call), and an idle
 * one is freed on the next loop turn, since we may be inside one of its
 * callbacks. Also here: the client's construction from a base URL (an
 * asynchronous resolver for names, none for addresses) and its options. */
#include "httpc_private.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>

#include "config.h"
#include "log.h"
#include "metrics.h"

/* ---- metrics ---- */

void httpc_export_inflight(httpc *c)
{
    metrics_series_set(c->m_inflight, (double)c->inflight);
}

/* ---- slots ---- */

httpc_slot *httpc_slot_acquire(httpc *c)
{
    if (c->n_idle_keep > 0)
        return &c->slots[c->idle_keep[--c->n_idle_keep]];
    if (c->n_idle_extra > 0)
        return &c->slots[c->idle_extra[--c->n_idle_extra]];
    return NULL;
}

/* A request is written whole and then waits for its answer: Nagle would
 * hold its last segment until the server's delayed ACK (40 ms). Set once
 * the socket exists: at once for a numeric host, after the name lookup
 * otherwise (the connect check, or the next call on the connection). */
void httpc_slot_set_nodelay(const httpc_slot *slot)
{
    int fd = httpc_slot_fd(slot);
    int nodelay = 1;
    if (fd >= 0)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, sizeof nodelay);
}

/* True when an idle connection still looks usable: no EOF, no stray bytes. */
bool httpc_idle_socket_alive(int fd)
{
    char byte;
    ssize_t n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    return false;   /* 0: the server closed it; >0: bytes nobody asked for */
}

bool httpc_socket_connected(int fd)
{
    struct sockaddr_storage peer;
    socklen_t len = sizeof peer;
    return fd >= 0 && getpeername(fd, (struct sockaddr *)&peer, &len) == 0;
}

static void opts_resolve(httpc_opts *o, const httpc_opts *in)
{
    httpc_opts d = in ? *in : (httpc_opts){ 0 };
    if (d.connect_timeout_ms <= 0) d.connect_timeout_ms = 1000;
    if (d.timeout_ms <= 0) d.timeout_ms = 5000;
    if (d.timeout_ms > 86400000) d.timeout_ms = 86400000;
    if (d.pool_size <= 0) d.pool_size = 16;
    if (d.max_inflight <= 0) d.max_inflight = d.pool_size;
    if (d.max_queue == 0) d.max_queue = 4 * d.pool_size;
    if (d.max_queue < 0) d.max_queue = 0;
    if (d.retries == 0) d.retries = 2;
    if (d.retries < 0) d.retries = 0;
    if (d.backoff_ms <= 0) d.backoff_ms = 50;
    if (d.max_queue_wait_ms <= 0) d.max_queue_wait_ms = d.timeout_ms;
    if (d.max_queue_wait_ms > 86400000) d.max_queue_wait_ms = 86400000;
    *o = d;
}

/* Splits http://host:port/prefix. Returns false, with a log line, if the
 * URL is not a plain http URL with a host. */
static bool client_parse_url(httpc *c, const char *base_url)
{
    struct evhttp_uri *uri = base_url ? evhttp_uri_parse(base_url) : NULL;
    const char *scheme = uri ? evhttp_uri_get_scheme(uri) : NULL;
    const char *host = uri ? evhttp_uri_get_host(uri) : NULL;
    if (!uri || !scheme || strcasecmp(scheme, "http") != 0 || !host || !*host) {
        log_error("upstream=%s url=%s msg=\"not a usable base URL: expected http://host:port\"",
                  c->name, base_url ? base_url : "(null)");
        if (uri)
            evhttp_uri_free(uri);
        return false;
    }
    c->port = evhttp_uri_get_port(uri) > 0 ? evhttp_uri_get_port(uri) : 80;

    size_t hlen = strlen(host);
    bool bracketed = host[0] == '[' && hlen > 2 && host[hlen - 1] == ']';
    c->host = bracketed ? strndup(host + 1, hlen - 2) : strdup(host);

    char header[300];
    if (c->port == 80)
        snprintf(header, sizeof header, "%s", host);
    else
        snprintf(header, sizeof header, "%s:%d", host, c->port);
    c->host_header = strdup(header);
    c->host_header_len = strlen(header);

    const char *path = evhttp_uri_get_path(uri);
    size_t plen = path ? strlen(path) : 0;
    while (plen > 0 && path[plen - 1] == '/')
        plen--;
    c->prefix = strndup(path ? path : "", plen);
    c->prefix_len = plen;
    evhttp_uri_free(uri);

    /* "localhost" may resolve to ::1 first while our services listen on
     * 127.0.0.1; evhttp tries only the first address. */
    c->family = strcmp(c->host ? c->host : "", "localhost") == 0 ? AF_INET : AF_UNSPEC;
    return c->host && c->host_header && c->prefix;
}

/* Without a DNS base, evhttp resolves a host name with the blocking
 * getaddrinfo(3), on the loop, at every new connection: with names such as
 * http://payment:8084 (Kubernetes) a slow or absent DNS server would stall
 * every request of the process. libevent's own resolver is asynchronous
 * (it reads /etc/resolv.conf and /etc/hosts once, here). An address needs
 * no resolver at all. */
static void client_resolver(httpc *c)
{
    unsigned char addr[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, c->host, addr) == 1 || inet_pton(AF_INET6, c->host, addr) == 1)
        return;
    c->dns = evdns_base_new(c->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    if (!c->dns)
        log_warn("upstream=%s host=%s msg=\"no asynchronous resolver: names are resolved "
                 "with getaddrinfo on the loop\"", c->name, c->host);
}

/* The pool's part of httpc_free, once no call is left: frees the
 * client itself. */
void httpc_pool_free(httpc *c)
{
    for (int i = 0; c->slots && i < c->nslots; i++) {
        httpc_slot_kill(&c->slots[i]);
        httpc_slot_free_buffers(&c->slots[i]);
    }
    /* No lookup is left: freeing a connection cancels its own. */
    if (c->dns)
        evdns_base_free(c->dns, 0);
    free(c->slots);
    free(c->idle_keep);
    free(c->idle_extra);
    free(c->host);
    free(c->host_header);
    free(c->prefix);
    free(c);
}

httpc *httpc_new(struct event_base *base, const char *name,
                             const char *base_url, const httpc_opts *opts)
{
    httpc *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->base = base;
    snprintf(c->name, sizeof c->name, "%s", name ? name : "upstream");
    snprintf(c->labels, sizeof c->labels, "upstream=\"%s\"", c->name);
    c->outcome_status = -1;
    c->m_inflight = metrics_gauge_series("carshare_upstream_inflight", c->labels);
    c->m_duration = metrics_histogram_series("carshare_upstream_duration_seconds", c->labels);
    opts_resolve(&c->opts, opts);
    if (!client_parse_url(c, base_url)) {
        httpc_pool_free(c);
        return NULL;
    }
    client_resolver(c);
    breaker_init(&c->breaker, c->name, &c->opts.breaker);
    c->opts.breaker = c->breaker.cfg;

    c->nslots = c->opts.max_inflight;
    c->nkeep = c->opts.pool_size < c->nslots ? c->opts.pool_size : c->nslots;
    c->slots = calloc((size_t)c->nslots, sizeof *c->slots);
    c->idle_keep = calloc((size_t)c->nslots, sizeof *c->idle_keep);
    c->idle_extra = calloc((size_t)c->nslots, sizeof *c->idle_extra);
    if (!c->slots || !c->idle_keep || !c->idle_extra) {
        httpc_pool_free(c);
        return NULL;
    }
    /* pushed in reverse so that slot 0 is used first */
    for (int i = c->nslots - 1; i >= 0; i--) {
        httpc_slot *s = &c->slots[i];
        s->client = c;
        s->keep_alive = i < c->nkeep;
        if (s->keep_alive)
            c->idle_keep[c->n_idle_keep++] = i;
        else
            c->idle_extra[c->n_idle_extra++] = i;
    }
    c->rng = (uint64_t)httpc_now_ms() * 0x9E3779B97F4A7C15ULL ^ (uint64_t)(uintptr_t)c;
    if (!c->rng)
        c->rng = 1;

    /* A write to a connection the upstream has closed raises SIGPIPE, whose
     * default action would kill the whole process; the error is handled as
     * a broken connection instead. Leave any handler the program set. */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);

    httpc_export_inflight(c);
    log_info("upstream=%s url=%s pool=%d max_inflight=%d max_queue=%d timeout_ms=%d "
             "connect_timeout_ms=%d retries=%d msg=\"http client ready\"",
             c->name, base_url, c->nkeep, c->nslots, c->opts.max_queue, c->opts.timeout_ms,
             c->opts.connect_timeout_ms, c->opts.retries);
    return c;
}

void httpc_opts_from_env(httpc_opts *o, const char *prefix)
{
    char name[128];
#define OPT_INT(suffix, field, min, max)                                        \
    do {                                                                        \
        snprintf(name, sizeof name, "%s_" suffix, prefix);                      \
        o->field = (int)config_int(name, o->field, min, max);                   \
    } while (0)

    OPT_INT("CONNECT_TIMEOUT_MS", connect_timeout_ms, 0, 600000);
    OPT_INT("TIMEOUT_MS", timeout_ms, 0, 3600000);
    OPT_INT("POOL_SIZE", pool_size, 0, 4096);
    OPT_INT("MAX_INFLIGHT", max_inflight, 0, 4096);
    OPT_INT("BACKOFF_MS", backoff_ms, 0, 60000);
    OPT_INT("MAX_QUEUE_WAIT_MS", max_queue_wait_ms, 0, 3600000);
    OPT_INT("BREAKER_FAILURES", breaker.consecutive_failures, 0, 1000000);
    OPT_INT("BREAKER_MIN_CALLS", breaker.min_calls, 0, 1000000);
    OPT_INT("BREAKER_WINDOW_MS", breaker.window_ms, 0, 86400000);
    OPT_INT("BREAKER_OPEN_MS", breaker.open_ms, 0, 86400000);

    /* Here 0 means "none", not "default": these are set on purpose. */
    snprintf(name, sizeof name, "%s_RETRIES", prefix);
    long v = config_int(name, o->retries < 0 ? 0 : o->retries, 0, 100);
    if (config_str(name, NULL))
        o->retries = v == 0 ? -1 : (int)v;
    snprintf(name, sizeof name, "%s_MAX_QUEUE", prefix);
    v = config_int(name, o->max_queue < 0 ? 0 : o->max_queue, 0, 1000000);
    if (config_str(name, NULL))
        o->max_queue = v == 0 ? -1 : (int)v;

    snprintf(name, sizeof name, "%s_BREAKER_RATIO_PCT", prefix);
    long pct = config_int(name, (long)(o->breaker.failure_ratio * 100.0 + 0.5), 0, 100);
    o->breaker.failure_ratio = (double)pct / 100.0;
#undef OPT_INT
}
