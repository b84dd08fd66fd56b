/* test_httpc_resolve.c: the HTTP client (lib/httpc.c) never resolves an
 * upstream's host name with the blocking getaddrinfo(3) on the event loop.
 *
 * With evhttp's defaults, a connection to http://payment:8084 (the way
 * services name each other in Kubernetes) calls getaddrinfo inside
 * evhttp_make_request, on the loop thread: a slow DNS server stalls every
 * request of the process. This test defines getaddrinfo itself (forwarding
 * to the C library) to see every call, and checks that a call to
 * http://localhost:<port> is answered while getaddrinfo was never asked
 * about "localhost"; and that an address (127.0.0.1) needs no lookup. */
#include "testing.h"
#include "testing_http.h"

#include "http.h"
#include "httpc.h"

#include <event2/event.h>
#include <event2/thread.h>

#include <dlfcn.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int localhost_lookups;

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    static int (*real)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
    if (!real)
        *(void **)&real = dlsym(RTLD_NEXT, "getaddrinfo");
    if (node && strcmp(node, "localhost") == 0)
        __atomic_add_fetch(&localhost_lookups, 1, __ATOMIC_RELAXED);
    return real(node, service, hints, res);
}

static struct event_base *base;

static void h_ping(http_req *r, void *arg)
{
    (void)arg;
    http_reply_json(r, 200, json_pack("{s:s}", "pong", "yes"));
}

static call_outcome ping(const char *base_url)
{
    call_outcome o = {.stop = base};
    httpc_opts opts = {.timeout_ms = 3000, .retries = -1};
    httpc *c = httpc_new(base, "resolve", base_url, &opts);
    CHECK(c != NULL);
    if (!c)
        return o;
    httpc_json(c, "GET", "/ping", "req-resolve", NULL, true, call_recorded, &o);
    struct timeval limit = {5, 0};
    event_base_loopexit(base, &limit);
    event_base_dispatch(base);
    httpc_free(c);
    return o;
}

int main(void)
{
    evthread_use_pthreads();
    base = event_base_new();
    http_server *s = http_server_new(base);
    http_server_route(s, "GET", "/ping", h_ping, NULL);
    int port = http_server_listen(s, "127.0.0.1", 0);
    CHECK(port > 0);

    char url[64];
    snprintf(url, sizeof url, "http://localhost:%d", port);
    localhost_lookups = 0;
    call_outcome o = ping(url);
    CHECK(o.done);
    CHECK_INT(o.result, HTTPC_OK);
    CHECK_INT(o.status, 200);
    CHECK(strstr(o.body, "pong") != NULL);
    CHECK_INT(localhost_lookups, 0);

    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    o = ping(url);
    CHECK_INT(o.status, 200);
    CHECK_INT(localhost_lookups, 0);

    http_server_free(s);
    event_base_free(base);
    return test_done("test_httpc_resolve");
}
