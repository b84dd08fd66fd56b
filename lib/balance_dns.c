/* balance_dns.c: host names in an upstream's URL list, resolved again and
 * again without blocking the loop, each address an instance (balance.h).
 *
 * Why re-resolve at all: libevent's resolver (evdns) answers a lookup once
 * and keeps nothing up to date by itself -- it reads /etc/resolv.conf and
 * the hosts file when the evdns_base is made, and evdns_base_load_hosts
 * adds entries without replacing the old ones (its header says so: clear
 * them first with evdns_base_clear_host_addresses). A name whose addresses
 * change while we run -- a Kubernetes headless Service gets one address
 * per ready pod, and pods come and go -- must therefore be asked again.
 * Every RESOLVE_INTERVAL_MS (5 s) each name is looked up with
 * evdns_getaddrinfo (asynchronous: UDP to the nameservers, answered on the
 * loop; a hosts-file entry answers at once, inside the call), and the
 * answer is applied:
 *  - an address not yet an instance becomes one, probed before use
 *    (balance_add: not ready until its /health/ready answers 200);
 *  - an instance whose address is no longer in the answer is gone
 *    (balance_remove): never chosen again, freed once its calls finished,
 *    so removing a replica drops nothing;
 *  - a failed lookup (timeout, no answer, NXDOMAIN) changes nothing: a
 *    resolver hiccup must not empty the set; instances that really died
 *    are ejected and probed out by the usual rules.
 *
 * The hosts file. RESOLVE_HOSTS_FILE (default: the system's /etc/hosts)
 * is loaded into the resolver, and loaded again -- after clearing the old
 * entries -- whenever its inode, size or modification time changed. That
 * is how `make run` and the tests add and remove replicas on one machine:
 * replicas listen on 127.0.0.x with the same port, and the script rewrites
 * the file (write a new file, rename it over the old: a reader never sees
 * half a file). Reading it is a small local file read on the loop, once
 * per change, as evdns itself does at start; the stat per interval costs
 * one system call.
 *
 * "localhost" is asked for IPv4 only (it may resolve to ::1 first while the
 * services listen on 127.0.0.1), other names for both families. */
#include "balance.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <arpa/inet.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>

#include "log.h"

#define BALANCE_DEFAULT_HOSTS "/etc/hosts"
#define BALANCE_MAX_ADDRESSES 32

typedef struct balance_name balance_name;

bool balance_dns_add_name(balance_set *s, const char *url, const char *host, int port)
{
    if (s->nnames == BALANCE_MAX_NAMES) {
        log_error("msg=\"too many host names\" upstream=%s max=%d", s->name, BALANCE_MAX_NAMES);
        return false;
    }
    const char *sep = strstr(url, "://");
    if (sep == NULL || strncasecmp(sep + 3, host, strlen(host)) != 0)
        return false;
    balance_name *nm = &s->names[s->nnames];
    size_t scheme_len = (size_t)(sep + 3 - url);
    nm->set = s;
    nm->port = port;
    nm->host = strdup(host);
    nm->scheme_rest[0] = strndup(url, scheme_len);
    nm->scheme_rest[1] = strdup(sep + 3 + strlen(host));
    s->nnames++;
    if (!nm->host || !nm->scheme_rest[0] || !nm->scheme_rest[1])
        return false;
    log_info("msg=\"upstream host name, resolved every %d ms\" upstream=%s host=%s hosts_file=%s",
             s->o.resolve_interval_ms, s->name, host,
             s->o.hosts_file ? s->o.hosts_file : BALANCE_DEFAULT_HOSTS);
    return true;
}

/* ---- the hosts file ---- */

static const char *balance_hosts_path(const balance_set *s)
{
    return s->o.hosts_file && *s->o.hosts_file ? s->o.hosts_file : BALANCE_DEFAULT_HOSTS;
}

/* Loads the hosts file again when it changed since the last load. */
static void balance_hosts_refresh(balance_set *s, bool force)
{
    const char *path = balance_hosts_path(s);
    struct stat sb;
    long long stamp[3] = {0, 0, 0};
    if (stat(path, &sb) == 0) {
        stamp[0] = (long long)sb.st_ino;
        stamp[1] = (long long)sb.st_size;
        stamp[2] = (long long)sb.st_mtim.tv_sec * 1000000000LL + sb.st_mtim.tv_nsec;
    }
    if (!force && memcmp(stamp, s->hosts_stamp, sizeof stamp) == 0)
        return;
    memcpy(s->hosts_stamp, stamp, sizeof stamp);
    evdns_base_clear_host_addresses(s->dns);
    if (evdns_base_load_hosts(s->dns, path) != 0)
        log_warn("msg=\"cannot read the hosts file\" upstream=%s path=%s", s->name, path);
}

/* ---- lookups ---- */

/* The instance URL for one address: scheme, address (IPv6 in brackets),
 * then the port and path of the configured URL. */
static bool balance_address_url(const balance_name *nm, const struct sockaddr *sa, char *buf,
                                size_t size)
{
    char addr[INET6_ADDRSTRLEN];
    const void *raw = sa->sa_family == AF_INET
        ? (const void *)&((const struct sockaddr_in *)sa)->sin_addr
        : (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
    if ((sa->sa_family != AF_INET && sa->sa_family != AF_INET6) ||
        evutil_inet_ntop(sa->sa_family, raw, addr, sizeof addr) == NULL)
        return false;
    bool v6 = sa->sa_family == AF_INET6;
    int n = snprintf(buf, size, "%s%s%s%s%s", nm->scheme_rest[0], v6 ? "[" : "", addr,
                     v6 ? "]" : "", nm->scheme_rest[1]);
    return n > 0 && (size_t)n < size;
}

static void balance_apply(balance_name *nm, struct evutil_addrinfo *res)
{
    balance_set *s = nm->set;
    int index = (int)(nm - s->names);
    static char urls[BALANCE_MAX_ADDRESSES][320];
    int n = 0;
    for (struct evutil_addrinfo *ai = res; ai && n < BALANCE_MAX_ADDRESSES; ai = ai->ai_next) {
        if (!balance_address_url(nm, ai->ai_addr, urls[n], sizeof urls[n]))
            continue;
        bool seen = false;
        for (int k = 0; k < n && !seen; k++)
            seen = strcmp(urls[k], urls[n]) == 0;
        n += !seen;
    }
    if (n == 0)
        return;
    /* Gone first, so that a full set has room for the new ones. */
    for (int i = s->n - 1; i >= 0; i--) {
        balance_instance *in = s->inst[i];
        if (in->name != index || s->st[i].gone)
            continue;
        bool listed = false;
        for (int k = 0; k < n && !listed; k++)
            listed = strcmp(urls[k], in->url) == 0;
        if (!listed)
            balance_remove(s, in);
    }
    for (int k = 0; k < n; k++)
        balance_add(s, urls[k], index);
}

static void balance_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    /* Cancelled while the set is being freed: touch nothing. */
    if (result == EVUTIL_EAI_CANCEL)
        return;
    balance_name *nm = arg;
    nm->req = NULL;
    if (result != 0) {
        if (nm->resolutions == 0 || nm->failing == 0)
            log_warn("msg=\"cannot resolve an upstream's host name: keeping its instances\" "
                     "upstream=%s host=%s reason=\"%s\"", nm->set->name, nm->host,
                     evutil_gai_strerror(result));
        nm->failing++;
    } else {
        if (nm->failing)
            log_info("msg=\"upstream host name resolved again\" upstream=%s host=%s "
                     "failed_lookups=%u", nm->set->name, nm->host, nm->failing);
        nm->failing = 0;
        balance_apply(nm, res);
    }
    nm->resolutions++;
    if (res)
        evutil_freeaddrinfo(res);
}

static void balance_lookup(balance_name *nm)
{
    struct evutil_addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = strcasecmp(nm->host, "localhost") == 0 ? AF_INET : AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    char port[8];
    snprintf(port, sizeof port, "%d", nm->port);
    /* May answer inside the call (a hosts entry), then returns NULL. */
    struct evdns_getaddrinfo_request *req =
        evdns_getaddrinfo(nm->set->dns, nm->host, port, &hints, balance_resolved, nm);
    if (req)
        nm->req = req;
}

static void balance_on_resolve_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    balance_set *s = arg;
    balance_hosts_refresh(s, false);
    for (int i = 0; i < s->nnames; i++)
        if (s->names[i].req == NULL)
            balance_lookup(&s->names[i]);
    struct timeval tv = {s->o.resolve_interval_ms / 1000, (s->o.resolve_interval_ms % 1000) * 1000};
    evtimer_add(s->resolve_timer, &tv);
}

void balance_dns_start(balance_set *s)
{
    if (s->nnames == 0)
        return;
    /* The nameservers of /etc/resolv.conf (and its search domains: a
     * Kubernetes pod's "payment" becomes payment.<namespace>.svc...). */
    s->dns = evdns_base_new(s->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    s->resolve_timer = evtimer_new(s->base, balance_on_resolve_timer, s);
    if (s->dns == NULL || s->resolve_timer == NULL) {
        log_error("msg=\"no asynchronous resolver: the upstream's host names stay unresolved\" "
                  "upstream=%s", s->name);
        return;
    }
    balance_hosts_refresh(s, true);
    struct timeval now = {0, 0};
    evtimer_add(s->resolve_timer, &now);
}

void balance_dns_free(balance_set *s)
{
    for (int i = 0; i < s->nnames; i++) {
        balance_name *nm = &s->names[i];
        if (nm->req) {
            struct evdns_getaddrinfo_request *req = nm->req;
            nm->req = NULL;
            evdns_getaddrinfo_cancel(req);
        }
        free(nm->host);
        free(nm->scheme_rest[0]);
        free(nm->scheme_rest[1]);
    }
    s->nnames = 0;
    if (s->resolve_timer)
        event_free(s->resolve_timer);
    s->resolve_timer = NULL;
    if (s->dns)
        evdns_base_free(s->dns, 0);
    s->dns = NULL;
}
