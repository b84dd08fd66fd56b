/* balance.h: the instances of one upstream, and which one gets a call.
 *
 * An upstream (payment, behind order; every service, behind the gateway)
 * may run as several instances. A balance_set is one upstream's instances:
 * each has its own httpc (pool, bulkhead, breaker: httpc.h), its own
 * readiness probe, and its place in the choice. It is built from a
 * comma-separated URL list (PAYMENT_URL="http://10.0.0.1:8084,http://10.0.0.2:8084")
 * whose entries are addresses (one instance each) or host names, which are
 * resolved without blocking and again every RESOLVE_INTERVAL_MS
 * (balance_dns.c): every address a name resolves to is an instance, new
 * ones are probed before they are used, vanished ones get no new call and
 * are freed once their calls finished -- a Kubernetes headless Service.
 *
 * The rules (balance.c, pure, unit tested without sockets):
 *  - choice: among instances ready and not ejected, the fewest calls
 *    outstanding; ties in turn (round-robin from a cursor). None usable:
 *    the same among those not ejected (not ready, but answering), then
 *    among all (the call then fails as it would have with one instance).
 *  - readiness: each instance's own GET /health/ready probe, fast while it
 *    is not ready (25 ms doubling up to the interval), every interval once
 *    it is; an instance never probed (a set of one fixed address with
 *    probing off) counts as ready.
 *  - passive ejection: eject_failures transport failures in a row
 *    (connect, broken, timeout) take an instance out for eject_ms; it comes
 *    back only when a probe after that finds it ready. Its probes keep
 *    their pace meanwhile (its readiness stays what it answers), and one
 *    leaves by the end of the ejection.
 *  - retry: a call that was never sent (connect failed, breaker open,
 *    bulkhead full), whatever its method, and an idempotent one whose
 *    connection broke, go once more, to another instance; never after a
 *    timeout (the first may still be working on it).
 *
 * Two ways to send: balance_send (the set picks, sends, retries, and
 * reports one outcome: order's payment calls) and, for a proxy that keeps
 * its own request, balance_choose + balance_done around its own httpc_send
 * (the gateway). Everything runs on the loop thread of `base`. */
#ifndef CARSHARE_BALANCE_H
#define CARSHARE_BALANCE_H

#include <stdbool.h>
#include <stddef.h>

#include "httpc.h"

struct event_base;
struct event;
struct evhttp_connection;
struct evdns_base;

/* ---- the rules (balance.c) ---- */

#define BALANCE_EJECT_FAILURES 3
#define BALANCE_EJECT_MS 5000
#define BALANCE_PROBE_FAST_MS 25
/* A probe without an answer within this long (or the interval, if
 * shorter) failed: an instance that needs longer to say it is ready is of
 * no use to calls either. */
#define BALANCE_PROBE_TIMEOUT_MAX_MS 1000

/* One instance as the choice sees it. */
typedef struct balance_state {
    bool ready;                 /* the last probe's verdict */
    bool ejected;               /* passively, after failures in a row */
    bool gone;                  /* its address vanished: never chosen again */
    unsigned outstanding;       /* calls sent and not yet finished */
    unsigned failures;          /* transport failures in a row */
    unsigned long long ejected_until_ms;
    unsigned long long chosen, ejections, retries;  /* for /metrics */
} balance_state;

/* The instance for the next call (see the top), not `exclude` (-1: none),
 * never a gone one; *rr advances past the choice. -1 when there is none. */
int balance_pick(const balance_state *b, int n, unsigned *rr, int exclude);
/* A call's outcome. True when it ejected the instance (until now_ms +
 * eject_ms). OPEN and BUSY were refused before sending: no verdict. */
bool balance_record(balance_state *b, httpc_result result, unsigned long long now_ms,
                    unsigned fail_limit, unsigned eject_ms);
/* A probe's verdict. True when it took an ejected instance back. */
bool balance_probed(balance_state *b, bool ready, unsigned long long now_ms);
/* Whether a call that ended with `result` goes once more, to another
 * instance: never sent (any call), or broken (idempotent calls only);
 * never after a timeout. */
bool balance_retryable(httpc_result result, bool idempotent);
/* Which outcome of two attempts the caller is told: the second, unless it
 * was never sent (connect, breaker, bulkhead) while the first may have
 * been delivered (connection broken): then the first, so that a caller
 * acting on "never sent" (order voids a rental without asking payment)
 * never does so for a call that may have reached an instance. */
bool balance_first_outcome_wins(httpc_result first, httpc_result second);

/* Probe pacing: the delay before the next probe after one that found the
 * instance ready or not. */
typedef struct balance_pace {
    int interval_ms;
    int fast_ms;
} balance_pace;
void balance_pace_init(balance_pace *pace, int interval_ms);
int balance_pace_next(balance_pace *pace, bool ready);
int balance_probe_timeout_ms(int interval_ms);

/* ---- the set (balance_set.c, balance_dns.c) ---- */

#define BALANCE_MAX_INSTANCES 16    /* live ones; gone ones draining come on top */
#define BALANCE_MAX_SLOTS 32
#define BALANCE_MAX_NAMES 4         /* host names in one URL list */

typedef struct balance_set balance_set;

typedef enum {
    BALANCE_UNPROBED = 0,       /* no probe finished yet */
    BALANCE_READY,
    BALANCE_NOT_READY,
} balance_readiness;

/* Read-only outside balance_set.c (tests and /metrics look). */
typedef struct balance_instance {
    balance_set *set;
    int index;                  /* in set->inst and set->st */
    int name;                   /* the host name it was resolved from, or -1 */
    char *url;                  /* "http://127.0.0.1:8084" */
    httpc *client;
    /* The probe: a bare evhttp connection, "Connection: close" each time. */
    struct evhttp_connection *probe;
    struct event *probe_timer;
    char *probe_uri;            /* "<base path>/health/ready" */
    char *probe_host;           /* its Host header */
    balance_pace pace;
    balance_readiness readiness;
    bool probe_in_flight;
    int probe_error;            /* evhttp's reason for the probe in flight, or -1 */
    unsigned long probes;       /* finished */
    unsigned failed_probes;     /* in a row */
    unsigned long long probe_due_ms;    /* when the next probe leaves (service_now_ms) */
    unsigned long long reported_chosen, reported_ejections, reported_retries;
} balance_instance;

typedef struct balance_opts {
    httpc_opts http;            /* every instance's client */
    bool probe;                 /* probe even one fixed address (the gateway's
                                   required upstreams); several instances or a
                                   host name are always probed */
    int probe_interval_ms;      /* default 1000 */
    unsigned eject_failures;    /* default BALANCE_EJECT_FAILURES */
    unsigned eject_ms;          /* default BALANCE_EJECT_MS */
    int resolve_interval_ms;    /* default RESOLVE_INTERVAL_MS, else 5000 */
    const char *hosts_file;     /* default RESOLVE_HOSTS_FILE, else /etc/hosts */
} balance_opts;

/* <PREFIX>_PROBE_INTERVAL_MS, _EJECT_FAILURES, _EJECT_MS, and the client's
 * own variables (httpc_opts_from_env), over what `o` holds; then
 * RESOLVE_INTERVAL_MS and RESOLVE_HOSTS_FILE. */
void balance_opts_from_env(balance_opts *o, const char *prefix);

struct balance_set {
    struct event_base *base;
    char *name;                 /* "payment": logs and metrics */
    balance_opts o;
    bool probed;
    balance_instance *inst[BALANCE_MAX_SLOTS];
    balance_state st[BALANCE_MAX_SLOTS];    /* side by side, for balance_pick */
    int n;                      /* slots in use (live and gone) */
    unsigned rr;
    httpc_auth_fn auth;
    void *auth_arg;
    struct event *reap;         /* frees gone instances whose calls finished */
    bool freeing;
    /* Host names (balance_dns.c). */
    struct evdns_base *dns;
    struct event *resolve_timer;
    int nnames;
    struct balance_name {
        balance_set *set;
        char *host;             /* "payment.carshare.svc" */
        char *scheme_rest[2];   /* "http://" and ":8084/path", around the address */
        int port;
        struct evdns_getaddrinfo_request *req;
        unsigned long resolutions;  /* lookups finished, for tests and logs */
        unsigned failing;           /* failed lookups in a row */
    } names[BALANCE_MAX_NAMES];
    long long hosts_stamp[3];   /* the hosts file's inode, size, mtime when loaded */
};

/* NULL when a URL is unusable, there are too many, or memory ran out
 * (logged). `name` and `urls` are copied. The first probes and
 * resolutions start on the loop's next turn. */
balance_set *balance_set_new(struct event_base *base, const char *name, const char *urls,
                             const balance_opts *o);
/* Completes every call still out (HTTPC_BROKEN, through their callbacks,
 * inside this call). NULL is a no-op. */
void balance_set_free(balance_set *s);
/* Order's service token on every call of every instance, present and
 * future (httpc_set_auth). */
void balance_set_auth(balance_set *s, httpc_auth_fn fn, void *arg);

/* Picks, sends, and on a retryable failure (balance_retryable) sends
 * once more to another instance; cb gets one outcome (see
 * balance_first_outcome_wins), from the loop, never inside this call.
 * Everything `call` points to is copied. With no instance at all (a name
 * not resolved yet), HTTPC_BUSY: never sent. Returns 0. */
int balance_send(balance_set *s, const httpc_request *call, httpc_cb cb, void *arg);
/* balance_send with a JSON body, as httpc_json. */
int balance_json(balance_set *s, const char *method, const char *uri, const char *request_id,
                 const char *json_body, bool idempotent, httpc_cb cb, void *arg);
/* httpc_refusal over the set: HTTPC_OK when a call sent now would be
 * admitted by the instance it would go to; otherwise OPEN or BUSY and the
 * shortest wait (HTTPC_BUSY, 1 s, when there is no instance). */
httpc_result balance_refusal(const balance_set *s, unsigned long long *retry_ms);

/* For a proxy that sends itself: the instance for a call (not `exclude`),
 * counted as outstanding until balance_done; NULL when there is none. */
balance_instance *balance_choose(balance_set *s, const balance_instance *exclude);
/* The call sent to `in` ended with `result`. True when the caller should
 * send it once more, to balance_choose(s, in): not yet `retried`, a
 * retryable result (balance_retryable, with `idempotent`), and another live
 * instance exists (the instance's retry count grows).
 * `in` may be freed after this returns (a gone instance). */
bool balance_done(balance_set *s, balance_instance *in, httpc_result result, bool idempotent,
                  bool retried);

/* Ready when the last probe of at least one live instance found it so
 * (never, for a set that is not probed). */
bool balance_ready(const balance_set *s);
/* Live instances (not gone). */
int balance_live(const balance_set *s);
/* /metrics: carshare_upstream_instance_{ready,outstanding,chosen_total,
 * ejections_total,retries_total}{upstream=<name>,instance=<url>}. Call
 * from a metrics collector. */
void balance_collect(balance_set *s);

/* balance_set.c, for balance_dns.c: adds an instance at `url` (resolved
 * from names[name], or -1), probed before use; revives a gone one with the
 * same URL. Marks one gone. */
balance_instance *balance_add(balance_set *s, const char *url, int name);
void balance_remove(balance_set *s, balance_instance *in);
/* balance_dns.c: parses a host name entry; starts resolving (false: no
 * resolver, logged). */
bool balance_dns_add_name(balance_set *s, const char *url, const char *host, int port);
void balance_dns_start(balance_set *s);
void balance_dns_free(balance_set *s);

#endif
