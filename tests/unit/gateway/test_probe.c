/* test_probe.c: the gateway's readiness probes (upstream.c, lib/balance_set.c), against a real
 * HTTP server on loopback, in one thread and one event loop.
 *
 * What is asserted are counts, never durations:
 *  - an upstream nobody listens on yet is probed again and again, even with
 *    the longest interval (600 s): the gateway does not wait an interval to
 *    see it come up, and turns ready once it answers 200;
 *  - however many probes fail in a row, each change of readiness is logged
 *    exactly once: "not ready yet" at start, "not ready" (a warning) when a
 *    ready upstream fails, "ready" when it is back, naming how many probes
 *    failed in between; no other line is logged per probe;
 *  - an instance ejected by failed calls (balance.h) is still probed at the
 *    probes' pace, so its readiness follows what it answers during the
 *    ejection (with a 10-minute ejection, the probes must go on at the
 *    200 ms pace); it comes back only once the ejection is over, and with
 *    a 10-minute probe interval one probe still leaves when a short
 *    ejection ends.
 *
 * The log goes to stderr, so stderr is redirected to a temporary file for
 * the test and lines are counted there; on failure the file is copied to the
 * real stderr (it holds the failed checks too). The loop runs until a
 * condition holds, with a generous safety limit that only keeps a broken
 * gateway from hanging the test. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#include "gateway.h"
#include "testing.h"

#define SAFETY_LIMIT_MS 20000

/* ---- the stand-in upstream ---- */

static struct event_base *base;
static struct evhttp *upstream_http;
static int upstream_fd = -1;        /* bound; listening once the upstream is "up" */
static int upstream_port;
static int upstream_status = 200;   /* what /health/ready answers */
static unsigned long upstream_probes;

static void on_upstream_request(struct evhttp_request *req, void *arg)
{
    (void)arg;
    if (strcmp(evhttp_request_get_uri(req), "/health/ready") == 0)
        upstream_probes++;
    struct evbuffer *out = evbuffer_new();
    evbuffer_add_printf(out, "{\"status\":\"%s\"}", upstream_status == 200 ? "UP" : "DOWN");
    evhttp_send_reply(req, upstream_status, upstream_status == 200 ? "OK" : "Unavailable", out);
    evbuffer_free(out);
}

/* A socket bound to a free loopback port but not listening: connecting to
 * it is refused, and nobody else can take the port meanwhile. */
static bool upstream_bind(void)
{
    upstream_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    if (upstream_fd < 0 || bind(upstream_fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        getsockname(upstream_fd, (struct sockaddr *)&sa, &len) != 0) {
        perror("binding the stand-in upstream");
        return false;
    }
    upstream_port = ntohs(sa.sin_port);
    upstream_http = evhttp_new(base);
    evhttp_set_gencb(upstream_http, on_upstream_request, NULL);
    return upstream_http != NULL;
}

static bool upstream_listen(void)
{
    evutil_make_socket_nonblocking(upstream_fd);
    if (listen(upstream_fd, 16) != 0 || evhttp_accept_socket(upstream_http, upstream_fd) != 0) {
        perror("listening on the stand-in upstream");
        return false;
    }
    return true;
}

/* ---- the loop ---- */

static void on_safety_limit(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    *(bool *)arg = true;
}

/* Runs the loop until cond(arg) holds. False when the safety limit came
 * first. */
static bool run_until(bool (*cond)(const void *), const void *arg)
{
    bool expired = false;
    struct event *limit = evtimer_new(base, on_safety_limit, &expired);
    struct timeval tv = {SAFETY_LIMIT_MS / 1000, 0};
    evtimer_add(limit, &tv);
    while (!cond(arg) && !expired)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(limit);
    return cond(arg);
}

static bool is_ready(const void *up)
{
    return gw_upstream_is_ready((void *)up);
}

static bool is_not_ready(const void *up)
{
    return ((const gw_upstream *)up)->set->inst[0]->readiness == BALANCE_NOT_READY;
}

static unsigned long probes_wanted;

static bool probed_enough(const void *up)
{
    return ((const gw_upstream *)up)->set->inst[0]->probes >= probes_wanted;
}

/* ---- the captured log ---- */

static char log_path[64];
static int real_stderr = -1;

static bool log_capture(void)
{
    snprintf(log_path, sizeof log_path, "/tmp/carshare-unit-probe-XXXXXX");
    int fd = mkstemp(log_path);
    if (fd < 0) {
        perror("mkstemp");
        return false;
    }
    fflush(stderr);
    real_stderr = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
    return true;
}

static void log_restore(bool show)
{
    fflush(stderr);
    dup2(real_stderr, STDERR_FILENO);
    close(real_stderr);
    FILE *f = fopen(log_path, "r");
    char line[1024];
    while (show && f && fgets(line, sizeof line, f))
        fputs(line, stderr);
    if (f)
        fclose(f);
    unlink(log_path);
}

/* Lines of the captured log containing every one of the given strings
 * (a NULL-terminated list). */
static int log_count(const char *first, ...)
{
    FILE *f = fopen(log_path, "r");
    if (f == NULL)
        return -1;
    int n = 0;
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        bool all = true;
        va_list ap;
        va_start(ap, first);
        for (const char *s = first; s && all; s = va_arg(ap, const char *))
            all = strstr(line, s) != NULL;
        va_end(ap);
        n += all;
    }
    fclose(f);
    return n;
}

/* ---- the tests ---- */

static void test_probes_until_the_upstream_starts(gateway *gw)
{
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", upstream_port);
    gw_upstream *up = &gw->upstreams[GW_ORDER];
    /* The longest interval: with it, only fast probing can see the upstream
     * come up before the safety limit. */
    CHECK(gw_upstream_open(up, gw, GW_ORDER, url, true, 600000));
    CHECK(up->set->inst[0]->probe != NULL);
    CHECK_STR(up->set->inst[0]->probe_uri, "/health/ready");
    CHECK_INT(up->set->inst[0]->readiness, BALANCE_UNPROBED);
    CHECK(!gw_upstream_is_ready(up));

    /* Nobody listens yet: several probes, all refused. */
    probes_wanted = 4;
    CHECK(run_until(probed_enough, up));
    CHECK_INT(up->set->inst[0]->readiness, BALANCE_NOT_READY);
    CHECK(up->set->inst[0]->failed_probes >= 4);
    CHECK_INT(log_count("msg=\"upstream not ready yet\"", "upstream=order ",
                        "reason=\"could not connect\"", NULL), 1);
    CHECK_INT(log_count("level=warn", NULL), 0);

    /* It listens but is not ready: still one line. */
    upstream_status = 503;
    CHECK(upstream_listen());
    probes_wanted = up->set->inst[0]->probes + 1;
    CHECK(run_until(probed_enough, up));
    CHECK_INT(upstream_probes, 1);
    CHECK(!gw_upstream_is_ready(up));

    /* Ready: the gateway sees it without waiting for the interval. */
    upstream_status = 200;
    unsigned failed = up->set->inst[0]->failed_probes;
    CHECK(run_until(is_ready, up));
    CHECK_INT(up->set->inst[0]->failed_probes, 0);
    char failed_field[48];
    snprintf(failed_field, sizeof failed_field, "failed_probes=%u", failed);
    CHECK_INT(log_count("msg=\"upstream ready\"", "upstream=order ", failed_field, NULL), 1);
    CHECK_INT(log_count("upstream=order ", "not ready", NULL), 1);
    CHECK_INT(log_count("level=warn", NULL), 0);
    CHECK_INT(log_count("order_probe", NULL), 0);
    gw_upstream_close(up);
}

static void test_each_change_logged_once(gateway *gw)
{
    char url[64];
    /* A base path prefixes the probe, as it does the proxied calls. */
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", upstream_port);
    gw_upstream *up = &gw->upstreams[GW_PAYMENT];
    CHECK(gw_upstream_open(up, gw, GW_PAYMENT, url, true, 200));
    CHECK_STR(up->set->inst[0]->probe_uri, "/health/ready");
    CHECK(run_until(is_ready, up));
    CHECK_INT(log_count("msg=\"upstream ready\"", "upstream=payment ", "failed_probes=0", NULL), 1);

    /* Ready -> not ready: one warning, however many probes then fail. */
    upstream_status = 503;
    CHECK(run_until(is_not_ready, up));
    probes_wanted = up->set->inst[0]->probes + 4;
    CHECK(run_until(probed_enough, up));
    CHECK(!gw_upstream_is_ready(up));
    CHECK(up->set->inst[0]->failed_probes >= 5);
    CHECK_INT(log_count("level=warn", "msg=\"upstream not ready\"", "upstream=payment ",
                        "reason=\"status 503\"", NULL), 1);
    CHECK_INT(log_count("upstream=payment ", "not ready", NULL), 1);

    /* And back: one line. */
    upstream_status = 200;
    CHECK(run_until(is_ready, up));
    CHECK_INT(log_count("msg=\"upstream ready\"", "upstream=payment ", NULL), 2);

    /* Ready and staying so: no line per probe. */
    probes_wanted = up->set->inst[0]->probes + 3;
    CHECK(run_until(probed_enough, up));
    CHECK_INT(log_count("msg=\"upstream ready\"", "upstream=payment ", NULL), 2);
    CHECK_INT(log_count("upstream=payment ", "not ready", NULL), 1);
    CHECK_INT(log_count("level=warn", NULL), 1);
    gw_upstream_close(up);
    CHECK(up->set == NULL);
}

static bool is_ejected(const void *up)
{
    const balance_set *s = ((const gw_upstream *)up)->set;
    return s->st[0].ejected;
}

static bool not_ejected(const void *up)
{
    return !is_ejected(up);
}

/* Failed calls in a row, as the proxy reports them, until the instance is
 * ejected. */
static void eject(gw_upstream *up)
{
    for (unsigned i = 0; i < up->set->o.eject_failures; i++) {
        balance_instance *in = balance_choose(up->set, NULL);
        balance_done(up->set, in, HTTPC_CONNECT, false, false);
    }
}

static void test_ejected_instance_still_probed(gateway *gw)
{
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", upstream_port);
    gw_upstream *up = &gw->upstreams[GW_CUSTOMERPAGE];

    /* Ejected for 10 minutes, probed every 200 ms: the probes go on. */
    setenv("GATEWAY_EJECT_MS", "600000", 1);
    CHECK(gw_upstream_open(up, gw, GW_CUSTOMERPAGE, url, true, 200));
    CHECK(run_until(is_ready, up));
    eject(up);
    CHECK(is_ejected(up));
    upstream_status = 503;
    probes_wanted = up->set->inst[0]->probes + 3;
    CHECK(run_until(probed_enough, up));
    CHECK(!gw_upstream_is_ready(up));
    CHECK_INT(log_count("level=warn", "msg=\"upstream not ready\"", "upstream=customerpage ",
                        NULL), 1);
    /* Back and answering: ready again, but still out until the ejection ends. */
    upstream_status = 200;
    CHECK(run_until(is_ready, up));
    CHECK(is_ejected(up));
    CHECK_INT(log_count("msg=\"instance back after ejection\"", NULL), 0);
    gw_upstream_close(up);

    /* A 10-minute interval and a 300 ms ejection: a probe leaves when the
     * ejection ends, and takes the instance back. */
    setenv("GATEWAY_EJECT_MS", "300", 1);
    CHECK(gw_upstream_open(up, gw, GW_CUSTOMERPAGE, url, true, 600000));
    CHECK(run_until(is_ready, up));
    eject(up);
    CHECK(is_ejected(up));
    CHECK(run_until(not_ejected, up));
    CHECK_INT(log_count("msg=\"instance back after ejection\"", NULL), 1);
    gw_upstream_close(up);
    unsetenv("GATEWAY_EJECT_MS");
}

static void test_unrequired_upstream_not_probed(gateway *gw)
{
    gw_upstream *up = &gw->upstreams[GW_DELIVERY];
    CHECK(gw_upstream_open(up, gw, GW_DELIVERY, "http://127.0.0.1:9", false, 50));
    CHECK(up->set->inst[0]->probe == NULL && up->set->inst[0]->probe_timer == NULL);
    CHECK(!gw_upstream_is_ready(up));
    gw_upstream_close(up);
    /* A URL the client refuses fails the open. */
    CHECK(!gw_upstream_open(up, gw, GW_DELIVERY, "ftp://example", true, 50));
    gw_upstream_close(up);
}

int main(void)
{
    base = event_base_new();
    service svc = {.name = "gateway", .base = base, .host = "127.0.0.1"};
    gateway gw = {.svc = &svc, .probe_interval_ms = 50};
    if (base == NULL || !upstream_bind() || !log_capture())
        return 1;

    test_probes_until_the_upstream_starts(&gw);
    test_each_change_logged_once(&gw);
    test_ejected_instance_still_probed(&gw);
    test_unrequired_upstream_not_probed(&gw);

    log_restore(testing_failures > 0);
    evhttp_free(upstream_http);
    close(upstream_fd);   /* evhttp_accept_socket does not take it */
    event_base_free(base);
    return test_done("gateway/probe");
}
