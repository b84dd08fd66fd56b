/* service.c: the skeleton of every carshare process.
 *
 * Owns the event loop, the HTTP server and its three operational routes
 * (/health/live, /health/ready, /metrics), and the shutdown sequence:
 *
 *   SIGTERM/SIGINT -> readiness turns 503 -> for DRAIN_MS the process still
 *   serves, every answer with "Connection: close" -> listener closed, idle
 *   connections closed -> requests in flight answered (http_server_drain)
 *   -> on_stop hooks, in order -> loop exits -> service_run returns 0.
 *
 * Why a drain period: a balancer (the gateway, order's payment client, a
 * Kubernetes Service) learns that an instance is going away from its next
 * readiness probe, and until then still sends it requests. So the process
 * keeps serving long enough for that probe to come: by default twice the
 * longer of the balancers' probe intervals (GATEWAY_PROBE_INTERVAL_MS and
 * order's PAYMENT_PROBE_INTERVAL_MS, 1000 each, read here from the same
 * environment), so one probe may be late or lost. DRAIN_MS=0
 * closes the listener at once: for a process nobody balances over.
 *
 * Signals are taken through libevent (evsignal), so the sequence runs on
 * the loop thread like everything else. The first signal also swaps the
 * handlers for a plain one that _exit(1)s: a second signal must work even
 * when the loop is stuck, which a loop-driven handler could not do.
 *
 * A service with a store and a bus hands both over with service_start_bus,
 * so that every such service stops them alike: after the drain and the
 * service's own hooks, the bus first (its threads use the store), then the
 * store.
 *
 * The public port may be handed from one release to the next
 * (HTTP_HANDOVER_SOCKET: service_listen, lib/http_handover.c), so that a
 * redeploy on one host refuses and resets no connection.
 *
 * One service per process: the signal handler and the process gauges are
 * process-wide anyway, and the static pointer keeps the service reachable
 * (for LeakSanitizer) after service_run, which does not free what other
 * modules may still reference (the event base). */
#include "service.h"
#include "auth.h"
#include "config.h"
#include "db.h"
#include "store_pg.h"
#include "durable.h"
#include "instance.h"
#include "log.h"
#include "mem.h"
#include "rep.h"
#include "metrics.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    char *what;
    service_check fn;
    void *arg;
} ready_check;

typedef struct {
    void (*fn)(void *arg);
    void *arg;
} stop_hook;

typedef struct {
    service pub;                /* first: service_new hands out &pub */
    ready_check *checks;
    size_t nchecks;
    stop_hook *hooks;
    size_t nhooks;
    bool hooks_ran;
    bool stopping;
    long drain_ms;              /* DRAIN_MS: how long a stopping process still serves */
    char *public_base_url;
    auth *auth;                 /* the token check of every guarded route */
    struct event *sigterm_event, *sigint_event;
    unsigned long long started_ms;
    http_handover *handover;    /* HTTP_HANDOVER_SOCKET: the port offered to a new release */
    struct event *listen_timer; /* a new release: takes the port over once ready */
    struct event *trim_timer;   /* gives freed heap back (heap_trim_tick) */
    unsigned long long trim_mark; /* resident bytes after the last trim */
    unsigned long long listen_wait_from;
    bool listen_failed;
} service_impl;

static service_impl *the_service;
static char second_signal_line[160];
static size_t second_signal_line_len;

unsigned long long service_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000ULL + (unsigned long long)ts.tv_nsec / 1000000ULL;
}

/* ---- operational routes ---- */

static void health_live(http_req *r, void *arg)
{
    (void)arg;
    http_reply_json(r, 200, json_pack("{s:s}", "status", "UP"));
}

static void health_ready(http_req *r, void *arg)
{
    service_impl *svc = arg;
    json_t *checks = json_object();
    char failing[512] = "";
    size_t used = 0;
    bool ready = true;
    if (svc->stopping) {
        ready = false;
        json_object_set_new(checks, "shutdown", json_string("DOWN"));
        used += (size_t)snprintf(failing, sizeof failing, "shutting down");
    }
    for (size_t i = 0; i < svc->nchecks; i++) {
        bool up = svc->checks[i].fn(svc->checks[i].arg);
        json_object_set_new(checks, svc->checks[i].what, json_string(up ? "UP" : "DOWN"));
        if (!up) {
            ready = false;
            if (used < sizeof failing)
                used += (size_t)snprintf(failing + used, sizeof failing - used, "%s%s",
                                         used ? ", " : "", svc->checks[i].what);
        }
    }
    json_t *body = json_pack("{s:s,s:o}", "status", ready ? "UP" : "DOWN", "checks", checks);
    if (!ready && body) {
        char message[600];
        snprintf(message, sizeof message, "not ready: %s", failing);
        json_object_set_new(body, "message", json_string(message));
    }
    http_reply_json(r, ready ? 200 : 503, body);
}

static void metrics_page(http_req *r, void *arg)
{
    (void)arg;
    struct evbuffer *text = mem_must(evbuffer_new());
    metrics_render(text);
    size_t len = evbuffer_get_length(text);
    const void *data = len ? (const void *)evbuffer_pullup(text, -1) : (const void *)"";
    http_reply_raw(r, 200, "text/plain; version=0.0.4; charset=utf-8", data, len);
    evbuffer_free(text);
}

/* The process's resident bytes (/proc/self/statm), or 0. */
static unsigned long long resident_bytes(void)
{
    char buf[128];
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    unsigned long long size_pages = 0, resident_pages = 0;
    if (sscanf(buf, "%llu %llu", &size_pages, &resident_pages) != 2)
        return 0;
    long page = sysconf(_SC_PAGESIZE);
    return resident_pages * (unsigned long long)(page > 0 ? page : 4096);
}

/* Resident memory, read on demand when /metrics is rendered. */
static void collect_process(void *arg)
{
    (void)arg;
    unsigned long long resident = resident_bytes();
    if (!resident)
        return;
    metrics_gauge_set("carshare_process_resident_bytes", "", (double)resident);
    /* What the resident memory is made of (make bench prints it per
     * process): SQLite's own allocations (page caches, schema, statements)
     * and the C heap, in use and free but still held by malloc's arenas
     * (one per thread that allocates). mallinfo2 walks the arenas: fine
     * once per scrape. */
    metrics_gauge_set("carshare_sqlite_memory_bytes", "", (double)sqlite3_memory_used());
    struct mallinfo2 mi = mallinfo2();
    metrics_gauge_set("carshare_heap_bytes", "state=\"in_use\"", (double)(mi.uordblks + mi.hblkhd));
    metrics_gauge_set("carshare_heap_bytes", "state=\"free\"", (double)mi.fordblks);
}

/* ---- giving freed heap back ----
 *
 * A burst of connections that each hold a request being read (500 slow
 * bodies just under HTTP_MAX_BODY are 32 MB, bounded by the read
 * high-water mark) leaves that memory free but still resident once they
 * are gone: glibc gives back only the free top of the heap, and any block
 * allocated during the burst and still in use pins everything below it
 * (tests/bench/body_attack.py: the gateway stayed at 43 MB after 500 such
 * connections, 34 MB of it free heap). So every HEAP_TRIM_INTERVAL_S, when
 * the process is HEAP_TRIM_SLACK above its resident size after the last
 * trim and at least that much of the heap is free, malloc_trim(0) returns
 * the free pages (MADV_DONTNEED on the free chunks: a few milliseconds for
 * tens of MB, on the loop, at most once per 4 MB grown). Growth that is in
 * use (caches) costs a read of statm and mallinfo2 per tick, no trim. */
#define HEAP_TRIM_INTERVAL_S 2
#define HEAP_TRIM_SLACK (4ULL << 20)

static void heap_trim_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    service_impl *svc = arg;
    unsigned long long resident = resident_bytes();
    if (resident < svc->trim_mark)
        svc->trim_mark = resident;
    if (resident < svc->trim_mark + HEAP_TRIM_SLACK)
        return;
    if (mallinfo2().fordblks < HEAP_TRIM_SLACK)
        return;
    malloc_trim(0);
    svc->trim_mark = resident_bytes();
    log_info("msg=\"free heap given back\" resident_mb_before=%.1f resident_mb=%.1f",
             (double)resident / 1048576.0, (double)svc->trim_mark / 1048576.0);
}

static void heap_trim_start(service_impl *svc)
{
    svc->trim_mark = resident_bytes();
    svc->trim_timer = mem_must(event_new(svc->pub.base, -1, EV_PERSIST, heap_trim_tick, svc));
    struct timeval every = {HEAP_TRIM_INTERVAL_S, 0};
    evtimer_add(svc->trim_timer, &every);
}

/* ---- shutdown ---- */

static void run_stop_hooks(service_impl *svc)
{
    if (svc->hooks_ran)
        return;
    svc->hooks_ran = true;
    for (size_t i = 0; i < svc->nhooks; i++)
        svc->hooks[i].fn(svc->hooks[i].arg);
}

static void on_drained(void *arg)
{
    service_impl *svc = arg;
    log_info("msg=\"requests drained, stopping\"");
    run_stop_hooks(svc);
    event_base_loopbreak(svc->pub.base);
}

/* Async-signal-safe: a prepared line and _exit. */
static void exit_at_once(int sig)
{
    (void)sig;
    ssize_t ignored = write(STDERR_FILENO, second_signal_line, second_signal_line_len);
    (void)ignored;
    _exit(1);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    service_impl *svc = arg;
    if (svc->stopping)
        return;
    svc->stopping = true;
    log_info("msg=stopping signal=%s inflight=%d drain_ms=%ld",
             sig == SIGTERM ? "SIGTERM" : "SIGINT", http_server_inflight(svc->pub.http),
             svc->drain_ms);

    /* From now on a second signal ends the process without the loop. */
    event_del(svc->sigterm_event);
    event_del(svc->sigint_event);
    second_signal_line_len = (size_t)snprintf(second_signal_line, sizeof second_signal_line,
        "level=error svc=%s msg=\"second signal during shutdown, exiting at once\"\n",
        svc->pub.name);
    if (second_signal_line_len >= sizeof second_signal_line)
        second_signal_line_len = sizeof second_signal_line - 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = exit_at_once;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    /* Before the drain closes the listening socket: no new process may be
     * handed a descriptor that is about to go. */
    http_handover_stop(svc->handover);
    svc->handover = NULL;
    http_server_drain(svc->pub.http, svc->drain_ms, on_drained, svc);
}

/* An epoll loop with libevent's changelist: evhttp enables and disables a
 * connection's events at every read/write phase, and the changelist folds
 * the changes of one loop turn into one epoll_ctl per descriptor (the
 * gateway measured 10 -> 5.6 calls per proxied request). Safe because no
 * module dup()s a socket it hands to libevent (the known limitation). */
static struct event_base *new_event_base(void)
{
    struct event_config *cfg = event_config_new();
    if (!cfg)
        return NULL;
    event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    struct event_base *base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    return base;
}

/* ---- public ---- */

service *service_new(const char *name, int default_port)
{
    log_init(name);
    /* Whatever a carshare process creates (databases and their WAL, keys,
     * secrets) is its owner's only: files 0600, directories 0700. */
    umask(077);
    /* A client that hangs up must not kill the process on the next write. */
    signal(SIGPIPE, SIG_IGN);
    /* Before any event_base: bus threads hand work to the loop. */
    if (evthread_use_pthreads() != 0) {
        log_error("msg=\"cannot enable libevent threading\"");
        exit(1);
    }

    service_impl *svc = mem_must(calloc(1, sizeof *svc));
    svc->started_ms = service_now_ms();
    svc->pub.name = mem_must(strdup(name));
    svc->pub.host = config_str("HOST", "127.0.0.1");
    svc->pub.port = (int)config_int("PORT", default_port, 0, 65535);
    long probe_ms = config_int("GATEWAY_PROBE_INTERVAL_MS", 1000, 50, 600000);
    long payment_probe_ms = config_int("PAYMENT_PROBE_INTERVAL_MS", 1000, 50, 600000);
    if (payment_probe_ms > probe_ms) probe_ms = payment_probe_ms;
    svc->drain_ms = config_int("DRAIN_MS", 2 * probe_ms, 0, 600000);
    svc->pub.base = new_event_base();
    if (!svc->pub.base) {
        log_error("msg=\"cannot create the event loop\"");
        exit(1);
    }
    svc->pub.http = http_server_new(svc->pub.base);
    if (!svc->pub.http)
        exit(1);
    service_set_public_base_url(&svc->pub, "http");
    svc->auth = auth_from_env();
    http_server_guard(svc->pub.http, auth_guard, svc->auth);
    http_server_route_for(svc->pub.http, "GET", "/health/live", HTTP_OPEN, health_live, svc);
    http_server_route_for(svc->pub.http, "GET", "/health/ready", HTTP_OPEN, health_ready, svc);
    /* Staff only: the figures tell an outsider too much (load, backlog). */
    http_server_route_for(svc->pub.http, "GET", "/metrics", TOKEN_ROLE_STAFF, metrics_page, svc);
    metrics_add_collector(collect_process, NULL);
    /* An info series, as Prometheus does for build facts: the instance is
     * a label of one constant series, not of every series (a scrape's own
     * target labels tell the replicas apart; this says which INSTANCE_ID
     * the logs of that target carry). Both values are label-safe. */
    char labels[160];
    snprintf(labels, sizeof labels, "service=\"%s\",instance=\"%s\"", name, instance_id());
    metrics_gauge_set("carshare_instance_info", labels, 1);
    the_service = svc;
    return &svc->pub;
}

const char *service_set_public_base_url(service *pub, const char *scheme)
{
    service_impl *svc = (service_impl *)pub;
    const char *configured = config_str("PUBLIC_BASE_URL", NULL);
    char url[300];
    if (configured) {
        snprintf(url, sizeof url, "%s", configured);
    } else {
        const char *host = pub->host;
        if (!strcmp(host, "0.0.0.0") || !strcmp(host, "::") || !*host)
            host = "localhost";
        bool v6 = strchr(host, ':') != NULL;
        int port = !strcmp(pub->name, "gateway") ? pub->port : 8088;
        snprintf(url, sizeof url, "%s://%s%s%s:%d", scheme, v6 ? "[" : "", host, v6 ? "]" : "",
                 port);
    }
    if (http_server_set_public_base_url(pub->http, url) != 0) {
        fprintf(stderr, "configuration error: PUBLIC_BASE_URL=%s is not an http:// or https:// "
                        "URL without query or fragment\n", url);
        exit(2);
    }
    free(svc->public_base_url);
    svc->public_base_url = mem_must(strdup(url));
    return svc->public_base_url;
}

auth *service_auth(service *pub)
{
    return ((service_impl *)pub)->auth;
}

void service_ready_check(service *pub, const char *what, service_check fn, void *arg)
{
    service_impl *svc = (service_impl *)pub;
    svc->checks = mem_must(realloc(svc->checks, (svc->nchecks + 1) * sizeof *svc->checks));
    svc->checks[svc->nchecks++] = (ready_check){mem_must(strdup(what)), fn, arg};
}

void service_on_stop(service *pub, void (*fn)(void *arg), void *arg)
{
    service_impl *svc = (service_impl *)pub;
    svc->hooks = mem_must(realloc(svc->hooks, (svc->nhooks + 1) * sizeof *svc->hooks));
    svc->hooks[svc->nhooks++] = (stop_hook){fn, arg};
}

/* ---- a service's store and bus ---- */

static void stop_bus(void *b)
{
    /* Before the store closes: the bus's threads use it until stopped. */
    bus_stop(b);
    bus_free(b);
}

static void close_store(void *st)
{
    store_close(st);
}

/* ---- GET /admin/deadLetters ---- */

static void add_dead_letter(const bus_dead_letter *dl, void *arg)
{
    const char *payload = dl->payload;
    json_t *event = payload ? json_loads(payload, 0, NULL) : NULL;
    if (!event) event = json_string(payload ? payload : "");
    json_t *item = json_pack("{s:I, s:s, s:s, s:s, s:o, s:s?, s:I, s:s, s:I, s:s}",
                             "id", (json_int_t)dl->id, "eventId", dl->event_id,
                             "eventType", dl->event_type, "subject", dl->subject,
                             "event", event, "requestId", dl->request_id,
                             "deliveries", (json_int_t)dl->deliveries, "error", dl->error,
                             "streamSequence", (json_int_t)dl->stream_seq,
                             "createdAt", dl->created_at);
    json_array_append_new(arg, item);
}

/* PostgreSQL: the query is a unit of work (db.h), answered on the loop. */
typedef struct dead_letter_page {
    http_req *req;
    long page, size;
    long long total;
    json_t *items;
    char err[256];
} dead_letter_page;

static void dead_letters_work(store *st, void *arg)
{
    dead_letter_page *p = arg;
    json_decref(p->items);      /* a unit of work may run again */
    p->items = json_array();
    p->total = bus_dead_letters_in(st, p->page * p->size, p->size, add_dead_letter, p->items,
                                   p->err, sizeof p->err);
}

static void dead_letters_done(void *arg, db_status status)
{
    dead_letter_page *p = arg;
    if (status == DB_UNAVAILABLE) {
        json_decref(p->items);
        rep_reply_db_unavailable(p->req, "the database");
    } else if (p->total < 0) {
        json_decref(p->items);
        http_reply_error(p->req, 500, "cannot read the dead letters: %s", p->err);
    } else {
        rep_reply_collection(p->req, "deadLetters", p->items, p->page, p->size, p->total);
    }
    free(p);
}

static void dead_letters(http_req *req, void *arg)
{
    long page, size;
    if (!rep_page_query(req, &page, &size))
        return;
    if (bus_db(arg)) {
        dead_letter_page *p = calloc(1, sizeof *p);
        if (p) *p = (dead_letter_page){.req = req, .page = page, .size = size};
        if (!p || !db_run(bus_db(arg), dead_letters_work, dead_letters_done, p)) {
            free(p);
            rep_reply_db_unavailable(req, "the database");
        }
        return;
    }
    char err[256];
    json_t *items = json_array();
    long long total = bus_dead_letters(arg, page * size, size, add_dead_letter, items, err,
                                       sizeof err);
    if (total < 0) {
        json_decref(items);
        http_reply_error(req, 500, "cannot read the dead letters: %s", err);
        return;
    }
    rep_reply_collection(req, "deadLetters", items, page, size, total);
}

void service_dead_letters_route(http_server *s, bus *b)
{
    http_server_route(s, "GET", "/admin/deadLetters", dead_letters, b);
}

/* HTTP answers and calls wait for group commit (http.h): durable.h's. */
static const http_deferral group_commit = { durable_defer, durable_cancel };

/* What service_start_bus and service_start_db share once group commit is
 * set up: HTTP's deferral (answers and calls wait for it: http.h), the bus,
 * the dead letters route, the readiness checks and the stop hooks. Takes
 * the bus and the database (close_fn frees it) on failure too. */
static int start_bus_and_db(service *svc, bus *b, service_check ready, void *db,
                            void (*close_fn)(void *))
{
    http_set_deferral(&group_commit);   /* nothing waits while no commit is pending */
    if (bus_start(b) != 0) {
        log_error("msg=\"cannot start the event bus\"");
        bus_free(b);
        close_fn(db);
        return -1;
    }
    service_dead_letters_route(svc->http, b);
    service_ready_check(svc, "store_ready", ready, db);
    service_ready_check(svc, "bus_connected", bus_connected, b);
    service_on_stop(svc, stop_bus, b);
    service_on_stop(svc, close_fn, db);
    return 0;
}

int service_start_bus(service *svc, store *st, bus *b)
{
    /* STORE_GROUP_COMMIT=0 (for measurements) syncs at every commit. */
    if (config_int("STORE_GROUP_COMMIT", 1, 0, 1) &&
        store_group_commit(st, svc->base) != 0)
        log_warn("msg=\"group commit unavailable: every commit syncs on its own\"");
    return start_bus_and_db(svc, b, store_ready, st, close_store);
}

static void close_db(void *d)
{
    db_close(d);
}

static void abandon_connects(void *arg)
{
    (void)arg;
    store_pg_abandon_connects();
}

/* What a service on a database (db.h) needs before its bus, if any: group
 * commit on SQLite (PostgreSQL's COMMIT waits for its own WAL flush), and
 * HTTP's deferral, so that answers and calls wait for it (http.h). */
static void prepare_db(service *svc, db *d)
{
    if (!db_is_pg(d) && config_int("STORE_GROUP_COMMIT", 1, 0, 1) &&
        store_group_commit(db_store(d), svc->base) != 0)
        log_warn("msg=\"group commit unavailable: every commit syncs on its own\"");
    http_set_deferral(&group_commit);   /* answers and calls wait for group commit (http.h) */
}

int service_start_db(service *svc, db *d, bus *b)
{
    prepare_db(svc, d);
    if (bus_start(b) != 0) {
        log_error("msg=\"cannot start the event bus\"");
        bus_free(b);
        db_close(d);
        return -1;
    }
    service_dead_letters_route(svc->http, b);
    service_ready_check(svc, "store_ready", db_ready, d);
    /* First at stop: the bus's and the database's threads must not sit in
     * a connect while they are joined. */
    if (db_is_pg(d)) service_on_stop(svc, abandon_connects, NULL);
    service_ready_check(svc, "bus_connected", bus_connected, b);
    service_on_stop(svc, stop_bus, b);
    service_on_stop(svc, close_db, d);
    return 0;
}

void service_use_db(service *svc, db *d)
{
    prepare_db(svc, d);
    service_ready_check(svc, "store_ready", db_ready, d);
    if (db_is_pg(d)) service_on_stop(svc, abandon_connects, NULL);
    service_on_stop(svc, close_db, d);
}

/* The public port: with HTTP_HANDOVER_SOCKET, taken over from the running
 * release if one answers there (http_handover.c), else bound with
 * SO_REUSEPORT (so a new release can start beside a wedged one), and
 * offered to the next release; otherwise bound as usual. */
static int service_listen(service_impl *svc)
{
    service *pub = &svc->pub;
    const char *path = config_str("HTTP_HANDOVER_SOCKET", NULL);
    if (path == NULL || *path == '\0')
        return http_server_listen(pub->http, pub->host, pub->port);
    struct evconnlistener *l = http_handover_take(pub->base, path, pub->port);
    if (l == NULL)
        l = http_listener_open(pub->base, pub->host, pub->port, true, NULL);
    int port = l ? http_server_listen_on(pub->http, l, pub->host) : -1;
    if (port > 0)
        svc->handover = http_handover_offer(pub->base, path, (int)evconnlistener_get_fd(l));
    return port;
}

static int start_listening(service_impl *svc)
{
    int port = service_listen(svc);
    if (port < 0)
        return -1;
    svc->pub.port = port;
    log_info("msg=listening host=%s port=%d", svc->pub.host, port);
    return port;
}

static bool all_ready(const service_impl *svc)
{
    for (size_t i = 0; i < svc->nchecks; i++)
        if (!svc->checks[i].fn(svc->checks[i].arg))
            return false;
    return true;
}

/* A new release whose port a running process offers (HTTP_HANDOVER_SOCKET)
 * takes it over only once it is ready: from the moment it holds the socket
 * it gets connections, and a gateway whose probes have not yet found any
 * instance of an upstream ready could only guess (an empty slot of
 * `make run CLUSTER=1`, a pod not resolved yet). Until then the running
 * process serves everything. After HANDOVER_READY_WAIT_MS it takes the
 * port anyway, saying so. http_handover_take waits (2 s at most) for the
 * running process's answer on this loop: nothing else is served yet. */
#define HANDOVER_READY_POLL_MS 25
#define HANDOVER_READY_WAIT_MS 60000

static void listen_when_ready(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    service_impl *svc = arg;
    if (svc->stopping)
        return;     /* stopped before it ever served: nothing to take over */
    bool ready = all_ready(svc);
    if (!ready && service_now_ms() - svc->listen_wait_from < HANDOVER_READY_WAIT_MS) {
        struct timeval poll = {0, HANDOVER_READY_POLL_MS * 1000};
        evtimer_add(svc->listen_timer, &poll);
        return;
    }
    if (!ready)
        log_warn("msg=\"not ready after %d s: taking the port over anyway\"",
                 HANDOVER_READY_WAIT_MS / 1000);
    if (start_listening(svc) < 0) {
        svc->listen_failed = true;
        event_base_loopbreak(svc->pub.base);
    }
}

/* Whether HTTP_HANDOVER_SOCKET names a socket a running release offers
 * (it removes the path when it stops; one left by a killed process is
 * found out when taking fails, and the port is then bound as usual). */
static bool port_offered(void)
{
    const char *path = config_str("HTTP_HANDOVER_SOCKET", NULL);
    struct stat st;
    return path && *path && stat(path, &st) == 0 && S_ISSOCK(st.st_mode);
}

int service_run(service *pub)
{
    service_impl *svc = (service_impl *)pub;
    if (port_offered()) {
        log_info("msg=\"a running release offers the port: taking it over once ready\"");
        svc->listen_wait_from = service_now_ms();
        svc->listen_timer = mem_must(evtimer_new(pub->base, listen_when_ready, svc));
        struct timeval now = {0, 0};
        evtimer_add(svc->listen_timer, &now);
    } else if (start_listening(svc) < 0) {
        run_stop_hooks(svc);
        return 1;
    }
    heap_trim_start(svc);
    svc->sigterm_event = mem_must(evsignal_new(pub->base, SIGTERM, on_signal, svc));
    svc->sigint_event = mem_must(evsignal_new(pub->base, SIGINT, on_signal, svc));
    event_add(svc->sigterm_event, NULL);
    event_add(svc->sigint_event, NULL);

    int rc = event_base_dispatch(pub->base);
    if (rc < 0)
        log_error("msg=\"event loop failed\"");
    if (svc->listen_failed)
        rc = -1;
    if (svc->listen_timer)
        event_free(svc->listen_timer);
    svc->listen_timer = NULL;
    if (svc->trim_timer)
        event_free(svc->trim_timer);
    svc->trim_timer = NULL;
    /* Normally the hooks ran after the drain; not if something else
     * stopped the loop. */
    run_stop_hooks(svc);

    http_handover_stop(svc->handover);
    svc->handover = NULL;
    event_free(svc->sigterm_event);
    event_free(svc->sigint_event);
    svc->sigterm_event = svc->sigint_event = NULL;
    http_server_free(pub->http);
    pub->http = NULL;
    auth_free(svc->auth);
    svc->auth = NULL;
    log_info("msg=stopped uptime_s=%.1f", (double)(service_now_ms() - svc->started_ms) / 1000.0);
    return rc < 0 ? 1 : 0;
}
