/* test_balance_set.c: an upstream's instances coming and going (lib/balance_set.c,
 * lib/balance_dns.c), against real HTTP servers on two loopback addresses, one event loop.
 *
 * A set built from a host name resolved through a hosts file (RESOLVE_HOSTS_FILE's way):
 *  - the name's one address becomes an instance, probed ready, and takes calls;
 *  - an address added to the file becomes a second instance, probed ready before use;
 *  - an address removed from the file while a call to it is outstanding: the instance is gone
 *    (never chosen again) but stays until that call finished, which completes normally; then it
 *    is freed;
 *  - a call sent with no instance at all completes HTTPC_BUSY (never sent), from the loop.
 * Counts only, no timing: the loop runs until a condition holds, with a safety limit. */
#include "testing.h"
#include "testing_http.h"

#include "balance.h"
#include "http.h"

#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct event_base *base;
static http_req *stashed;
static char hosts[64];

static void h_ping(http_req *r, void *arg)
{
    http_reply_json(r, 200, json_pack("{s:s}", "at", (const char *)arg));
}

static void h_slow(http_req *r, void *arg)
{
    (void)arg;
    stashed = r;
}

static void on_limit(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    *(bool *)arg = true;
}

static bool run_until(bool (*cond)(void *), void *arg)
{
    bool expired = false;
    struct event *limit = evtimer_new(base, on_limit, &expired);
    struct timeval tv = {10, 0};
    evtimer_add(limit, &tv);
    while (!cond(arg) && !expired)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(limit);
    return cond(arg);
}

static void write_hosts(const char *lines)
{
    char tmp[80];
    snprintf(tmp, sizeof tmp, "%s.new", hosts);
    FILE *f = fopen(tmp, "w");
    fputs(lines, f);
    fclose(f);
    rename(tmp, hosts);
}

static bool is_done(void *arg)
{
    return ((call_outcome *)arg)->done;
}

static int wanted_live;
static bool live_and_ready(void *arg)
{
    balance_set *s = arg;
    int ready = 0;
    for (int i = 0; i < s->n; i++)
        ready += !s->st[i].gone && s->inst[i]->readiness == BALANCE_READY;
    return balance_live(s) == wanted_live && ready == wanted_live;
}

static bool has_stash(void *arg)
{
    (void)arg;
    return stashed != NULL;
}

static bool second_gone(void *arg)
{
    balance_instance *in = arg;
    return in->set->st[in->index].gone;
}

static bool one_slot(void *arg)
{
    return ((balance_set *)arg)->n == 1;
}

/* A proxy's own call (balance_choose + httpc_send + balance_done). */
typedef struct {
    balance_set *set;
    balance_instance *in;
    call_outcome out;
} own_call;

static void own_done(const httpc_response *resp, void *arg)
{
    own_call *c = arg;
    balance_done(c->set, c->in, resp->result, true, false);
    call_recorded(resp, &c->out);
}

int main(void)
{
    evthread_use_pthreads();
    base = event_base_new();
    snprintf(hosts, sizeof hosts, "/tmp/carshare-unit-hosts-%ld", (long)getpid());

    int port = 0;
    http_server *a = http_server_new(base), *b = http_server_new(base);
    http_server_route(a, "GET", "/ping", h_ping, "a");
    http_server_route(b, "GET", "/ping", h_ping, "b");
    http_server_route(b, "GET", "/slow", h_slow, NULL);
    http_server_route(a, "GET", "/health/ready", h_ping, "a");
    http_server_route(b, "GET", "/health/ready", h_ping, "b");
    struct evconnlistener *la = http_listener_open(base, "127.0.0.1", 0, false, &port);
    CHECK(la != NULL && http_server_listen_on(a, la, "127.0.0.1") == port);
    CHECK(http_server_listen(b, "127.0.0.2", port) == port);

    char url[64];
    snprintf(url, sizeof url, "http://svc.carshare.test:%d", port);
    write_hosts("127.0.0.1 svc.carshare.test\n");
    balance_opts o = {.http = {.timeout_ms = 5000, .retries = -1}, .probe_interval_ms = 50,
                      .resolve_interval_ms = 50, .hosts_file = hosts};
    balance_set *s = balance_set_new(base, "svc", url, &o);
    CHECK(s != NULL);

    /* Before the first lookup: no instance, the call is never sent. */
    call_outcome first = {0};
    balance_json(s, "GET", "/ping", "req-1", NULL, true, call_recorded, &first);
    CHECK(!first.done);
    CHECK(run_until(is_done, &first));
    CHECK_INT(first.result, HTTPC_BUSY);

    wanted_live = 1;
    CHECK(run_until(live_and_ready, s));
    call_outcome one = {0};
    balance_json(s, "GET", "/ping", "req-2", NULL, true, call_recorded, &one);
    CHECK(run_until(is_done, &one));
    CHECK_INT(one.status, 200);
    CHECK(strstr(one.body, "\"a\"") != NULL);

    /* Added: probed ready, then chosen. */
    write_hosts("127.0.0.1 svc.carshare.test\n127.0.0.2 svc.carshare.test\n");
    wanted_live = 2;
    CHECK(run_until(live_and_ready, s));
    balance_instance *ia = s->inst[0];
    own_call slow = {.set = s};
    slow.in = balance_choose(s, ia);
    CHECK(slow.in != NULL && strstr(slow.in->url, "127.0.0.2") != NULL);
    httpc_json(slow.in->client, "GET", "/slow", "req-3", NULL, true, own_done, &slow);
    CHECK(run_until(has_stash, NULL));

    /* Removed while its call is out: gone, kept until the call is over. */
    write_hosts("127.0.0.1 svc.carshare.test\n");
    CHECK(run_until(second_gone, slow.in));
    CHECK_INT(s->n, 2);
    CHECK_INT(balance_live(s), 1);
    for (int k = 0; k < 4; k++) {
        balance_instance *chosen = balance_choose(s, NULL);
        CHECK(chosen == ia);
        balance_done(s, chosen, HTTPC_OK, true, false);
    }
    http_reply_json(stashed, 200, json_pack("{s:s}", "at", "slow"));
    CHECK(run_until(is_done, &slow.out));
    CHECK_INT(slow.out.status, 200);
    CHECK(run_until(one_slot, s));
    CHECK(s->inst[0] == ia);

    /* One instance left: a failed call has nowhere else to go, and is not
     * counted as sent elsewhere. */
    balance_instance *only = balance_choose(s, NULL);
    CHECK(only == ia);
    CHECK(!balance_done(s, only, HTTPC_CONNECT, true, false));
    CHECK_INT(s->st[0].retries, 0);
    CHECK(balance_choose(s, ia) == NULL);

    balance_set_free(s);
    http_server_free(a);
    http_server_free(b);
    unlink(hosts);
    event_base_free(base);
    return test_done("lib/balance_set");
}
