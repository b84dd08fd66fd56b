/* test_bus.c: the bus against a real nats-server (started here on a free
 * port with its own storage directory, stopped by PID).
 *
 * Two services in one process share one event loop, as two processes would
 * share a stream: "sender" only publishes (outbox + relay), "receiver"
 * consumes RentalMade (and publishes RentalSeen from its handler) and
 * always fails on Poison. Checked, in order:
 *  - an empty stream replays at once with count 0;
 *  - committed events are published and applied exactly once, with their
 *    request id, and the outbox empties;
 *  - the same event published twice (same Nats-Msg-Id: server de-dup; a
 *    new Nats-Msg-Id: consumer de-dup) is applied once;
 *  - a rolled back transaction publishes nothing;
 *  - events committed while nats-server is down are kept, then published
 *    when it is back, and consumed;
 *  - a failing handler ends in dead_letters after BUS_MAX_DELIVER
 *    deliveries, and the event behind it is still applied; a message that
 *    is not an event is dead-lettered at once;
 *  - a consumer restarted on the same store resumes without re-applying;
 *  - bus_replay delivers every event of the stream;
 *  - GET /admin/deadLetters lists the dead letter; the metrics count;
 *  - nats-server coming back empty (storage lost): stream and consumer are
 *    created again and events flow again;
 *  - nats-server coming back while a backlog arrives: the pull requests
 *    made during the outage do not make a fetch overrun its batch, and
 *    each event is applied once;
 *  - retention: the stream is created with BUS_STREAM_MAX_BYTES,
 *    BUS_STREAM_MAX_AGE_S and BUS_STREAM_DUPLICATE_WINDOW_S (30 s by
 *    default) and stays within them, and a replay refuses a
 *    history whose start they dropped (by size; by age, all of it);
 *  - reconciling: a stream left with older limits gets ours from the
 *    stream's owner (BUS_STREAM_OWNER) only, keeping a storage that
 *    cannot change; an update nats-server refuses leaves the bus ready.
 * Waiting uses generous deadlines only to fail instead of hanging. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>
#include <nats/nats.h>

#include "bus.h"
#include "service.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "store.h"
#include "testing.h"
#include "testing_http.h"
#include "uuid.h"

#define WAIT_MS 30000

static struct event_base *base;
static char dir[64], nats_dir[128], nats_url[64];
static int nats_port;
static pid_t nats_pid = -1;

/* ---- nats-server ---- */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        perror("free_port");
        exit(1);
    }
    close(fd);
    return ntohs(a.sin_port);
}

static bool port_open(int port)
{
    int fd = loopback_connect(port);
    if (fd >= 0) close(fd);
    return fd >= 0;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void start_nats(void)
{
    char port[16], log_path[160];
    snprintf(port, sizeof port, "%d", nats_port);
    snprintf(log_path, sizeof log_path, "%s/nats-server.log", dir);
    nats_pid = fork();
    if (nats_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);       /* no orphan server if the test crashes */
        int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl("/usr/sbin/nats-server", "nats-server", "-js", "-a", "127.0.0.1", "-p", port,
              "-sd", nats_dir, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 400 && !port_open(nats_port); i++) sleep_ms(25);
    if (!port_open(nats_port)) {
        fprintf(stderr, "nats-server did not start (see %s)\n", log_path);
        exit(1);
    }
}

static void stop_nats(void)
{
    if (nats_pid <= 0) return;
    kill(nats_pid, SIGTERM);
    waitpid(nats_pid, NULL, 0);
    nats_pid = -1;
}

/* ---- running the loop until something holds ---- */

struct waiter {
    bool (*pred)(void *);
    void *arg;
    struct timespec deadline;
    bool met;
};

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct waiter *w = arg;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (w->pred && w->pred(w->arg)) w->met = true;
    if (w->met || now.tv_sec > w->deadline.tv_sec ||
        (now.tv_sec == w->deadline.tv_sec && now.tv_nsec >= w->deadline.tv_nsec))
        event_base_loopbreak(base);
}

/* Runs the loop until pred(arg) (checked on the loop thread), or ms pass. */
static bool run_until(bool (*pred)(void *), void *arg, long ms, const char *what)
{
    struct waiter w = {.pred = pred, .arg = arg};
    clock_gettime(CLOCK_MONOTONIC, &w.deadline);
    w.deadline.tv_sec += ms / 1000;
    w.deadline.tv_nsec += (ms % 1000) * 1000000L;
    if (w.deadline.tv_nsec >= 1000000000L) {
        w.deadline.tv_sec++;
        w.deadline.tv_nsec -= 1000000000L;
    }
    struct event *tick = event_new(base, -1, EV_PERSIST, on_tick, &w);
    struct timeval every = {0, 20000};
    event_add(tick, &every);
    event_base_dispatch(base);
    event_free(tick);
    if (!w.met && what) fprintf(stderr, "timed out waiting for: %s\n", what);
    return w.met;
}

/* ---- the two services ---- */

static store *sender_db, *receiver_db;

static const char *const sender_schema[] = {
    "CREATE TABLE rental (id INTEGER PRIMARY KEY, note TEXT NOT NULL);",
    NULL
};
static const char *const receiver_schema[] = {
    "CREATE TABLE applied (event_id TEXT NOT NULL, n INTEGER NOT NULL, request_id TEXT);",
    NULL
};

static int rental_calls, poison_calls;

static int on_rental(store *st, const json_t *event, const char *request_id, void *arg,
                     char *err, size_t errlen)
{
    (void)arg;
    rental_calls++;
    const char *id = json_string_value(json_object_get(event, "eventId"));
    sqlite3_stmt *s = store_prepare(st, "INSERT INTO applied (event_id, n, request_id) VALUES (?, ?, ?)");
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, json_integer_value(json_object_get(event, "id")));
    sqlite3_bind_text(s, 3, request_id, -1, SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_DONE) {
        snprintf(err, errlen, "insert failed: %s", store_error(st));
        sqlite3_reset(s);
        return -1;
    }
    sqlite3_reset(s);
    /* A handler may publish, in the same transaction. */
    json_t *seen = json_pack("{s:s}", "rentalEventId", id);
    int rc = outbox_add(st, "RentalSeen", seen, request_id, NULL);
    json_decref(seen);
    return rc;
}

static int on_poison(store *st, const json_t *event, const char *request_id, void *arg,
                     char *err, size_t errlen)
{
    (void)event;
    (void)request_id;
    (void)arg;
    poison_calls++;
    /* Its writes must vanish with the rollback. */
    store_exec(st, "INSERT INTO applied (event_id, n) VALUES ('poison-effect', -1)");
    snprintf(err, errlen, "poison pill");
    return -1;
}

static long long count(store *st, const char *sql, const char *arg)
{
    sqlite3_stmt *s = store_prepare(st, sql);
    if (!s) return -1;
    if (arg) sqlite3_bind_text(s, 1, arg, -1, SQLITE_STATIC);
    long long v = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : -1;
    sqlite3_reset(s);
    return v;
}

/* Commits a rental and its event; returns the eventId in id_out. */
static void commit_rental(int n, const char *request_id, char id_out[37])
{
    CHECK_INT(store_begin(sender_db), SQLITE_OK);
    sqlite3_stmt *s = store_prepare(sender_db, "INSERT INTO rental (id, note) VALUES (?, 'x')");
    sqlite3_bind_int(s, 1, n);
    CHECK_INT(sqlite3_step(s), SQLITE_DONE);
    sqlite3_reset(s);
    json_t *payload = json_pack("{s:i, s:s, s:i}", "id", n, "productId", "1001", "qty", 1);
    CHECK_INT(outbox_add(sender_db, "RentalMade", payload, request_id, id_out), 0);
    json_decref(payload);
    CHECK_INT(store_commit(sender_db), SQLITE_OK);
}

static void commit_poison(char id_out[37])
{
    CHECK_INT(store_begin(sender_db), SQLITE_OK);
    json_t *payload = json_pack("{s:i}", "id", -1);
    CHECK_INT(outbox_add(sender_db, "Poison", payload, "req-poison", id_out), 0);
    json_decref(payload);
    CHECK_INT(store_commit(sender_db), SQLITE_OK);
}

static long long applied_count(const char *event_id)
{
    return count(receiver_db, "SELECT count(*) FROM applied WHERE event_id = ?", event_id);
}

/* ---- predicates (loop thread) ---- */

static bool both_connected(void *arg)
{
    bus **b = arg;
    return bus_connected(b[0]) && bus_connected(b[1]);
}

static bool is_disconnected(void *arg) { return !bus_connected(arg); }

static bool applied(void *arg) { return applied_count(arg) >= 1; }

static bool outbox_empty(void *arg) { return count(arg, "SELECT count(*) FROM outbox", NULL) == 0; }

static bool dead_lettered(void *arg)
{
    return count(receiver_db, "SELECT count(*) FROM dead_letters WHERE event_id = ?", arg) == 1;
}

static bool junk_dead_lettered(void *arg)
{
    (void)arg;
    return count(receiver_db, "SELECT count(*) FROM dead_letters WHERE payload = 'this is not JSON'",
                 NULL) == 1;
}

struct replay_result {
    bool finished, ok;
    long count;
    int seen_rentals, seen_other;
    json_t *ids;    /* eventId -> times seen */
    char why[256];  /* the failure's reason */
};

static bool replay_finished(void *arg) { return ((struct replay_result *)arg)->finished; }

static int on_replayed(store *st, const json_t *event, const char *request_id, void *arg,
                       char *err, size_t errlen)
{
    (void)st;
    (void)request_id;
    (void)err;
    (void)errlen;
    struct replay_result *r = arg;
    const char *type = json_string_value(json_object_get(event, "eventType"));
    const char *id = json_string_value(json_object_get(event, "eventId"));
    if (type && strcmp(type, "RentalMade") == 0) r->seen_rentals++;
    else r->seen_other++;
    if (id) {
        json_int_t seen = json_integer_value(json_object_get(r->ids, id));
        json_object_set_new(r->ids, id, json_integer(seen + 1));
    }
    return 0;
}

static void on_replay_done(void *arg, bool ok, long n, const char *why)
{
    struct replay_result *r = arg;
    r->finished = true;
    r->ok = ok;
    r->count = n;
    snprintf(r->why, sizeof r->why, "%s", why ? why : "");
}

/* ---- direct access to the stream, as a second publisher would have ---- */

static void publish_raw(const char *subject, const char *data, const char *msg_id)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    CHECK_INT(natsConnection_ConnectTo(&nc, nats_url), NATS_OK);
    CHECK_INT(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    jsPubAck *pa = NULL;
    CHECK_INT(js_Publish(&pa, js, subject, data, (int)strlen(data), &po, NULL), NATS_OK);
    jsPubAck_Destroy(pa);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

static long long stream_messages(void)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsStreamInfo *si = NULL;
    long long n = -1;
    if (natsConnection_ConnectTo(&nc, nats_url) == NATS_OK &&
        natsConnection_JetStream(&js, nc, NULL) == NATS_OK &&
        js_GetStreamInfo(&si, js, "carshare", NULL, NULL) == NATS_OK)
        n = (long long)si->State.Msgs;
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return n;
}

/* The stream as nats-server reports it: its state and its limits. */
struct stream_view {
    unsigned long long first, msgs, bytes;
    long long max_bytes, max_age_s, duplicates_s;
    int discard, storage, replicas;
};

static struct stream_view stream_view_get(void)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsStreamInfo *si = NULL;
    struct stream_view v = {.max_bytes = -2};
    if (natsConnection_ConnectTo(&nc, nats_url) == NATS_OK &&
        natsConnection_JetStream(&js, nc, NULL) == NATS_OK &&
        js_GetStreamInfo(&si, js, "carshare", NULL, NULL) == NATS_OK)
        v = (struct stream_view){si->State.FirstSeq, si->State.Msgs, si->State.Bytes,
                                 si->Config->MaxBytes, si->Config->MaxAge / 1000000000LL,
                                 si->Config->Duplicates / 1000000000LL,
                                 (int)si->Config->Discard, (int)si->Config->Storage,
                                 (int)si->Config->Replicas};
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return v;
}

static bool stream_emptied(void *arg)
{
    (void)arg;
    return stream_view_get().msgs == 0;
}

/* What a consumer killed by SIGKILL right after a fetch leaves: its
 * messages delivered and neither acked nor nak'ed. */
static void fetch_and_die(void)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsSubscription *sub = NULL;
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = "carshare";
    so.Consumer = "receiver";
    natsMsgList list = {0};
    CHECK_INT(natsConnection_ConnectTo(&nc, nats_url), NATS_OK);
    CHECK_INT(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    CHECK_INT(js_PullSubscribe(&sub, js, "carshare.>", "receiver", NULL, &so, NULL), NATS_OK);
    CHECK_INT(natsSubscription_Fetch(&list, sub, 10, 5000, NULL), NATS_OK);
    CHECK(list.Count >= 1);
    natsMsgList_Destroy(&list);
    natsSubscription_Destroy(sub);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

static bus *new_receiver(void)
{
    bus *b = bus_new(base, receiver_db, "receiver");
    bus_on(b, "RentalMade", on_rental, NULL);
    bus_on(b, "Poison", on_poison, NULL);
    return b;
}

/* ---- HTTP and metrics, as an operator sees them ---- */

struct http_result {
    bool done;
    int status;
    json_t *body;
};

static void on_http_done(struct evhttp_request *req, void *arg)
{
    struct http_result *r = arg;
    r->done = true;
    if (!req) return;
    r->status = evhttp_request_get_response_code(req);
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    r->body = json_loadb((const char *)evbuffer_pullup(in, -1), n, 0, NULL);
}

static bool http_done(void *arg) { return ((struct http_result *)arg)->done; }

static struct http_result http_get(int port, const char *uri)
{
    struct http_result r = {0};
    struct evhttp_connection *c = evhttp_connection_base_new(base, NULL, "127.0.0.1", (ev_uint16_t)port);
    struct evhttp_request *req = evhttp_request_new(on_http_done, &r);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Host", "127.0.0.1");
    evhttp_make_request(c, req, EVHTTP_REQ_GET, uri);
    CHECK(run_until(http_done, &r, WAIT_MS, uri));
    evhttp_connection_free(c);
    return r;
}

/* The value of a series in /metrics (name with its {labels}), or -1. */
static double metric_value(const char *name)
{
    struct evbuffer *out = evbuffer_new();
    metrics_render(out);
    size_t n = evbuffer_get_length(out);
    char *text = malloc(n + 1);
    evbuffer_remove(out, text, n);
    text[n] = '\0';
    evbuffer_free(out);
    double v = -1;
    char prefix[128];
    snprintf(prefix, sizeof prefix, "\n%s ", name);
    const char *p = strstr(text, prefix);
    if (p) v = strtod(p + strlen(prefix), NULL);
    free(text);
    return v;
}

static void check_dead_letter_route(bus *b, const char *poison_id)
{
    http_server *srv = http_server_new(base);
    service_dead_letters_route(srv, b);
    int port = http_server_listen(srv, "127.0.0.1", 0);
    CHECK(port > 0);

    struct http_result r = http_get(port, "/admin/deadLetters");
    CHECK_INT(r.status, 200);
    json_t *list = json_object_get(json_object_get(r.body, "_embedded"), "deadLetters");
    CHECK_INT(json_array_size(list), 1);
    json_t *item = json_array_get(list, 0);
    CHECK_STR(json_string_value(json_object_get(item, "eventId")), poison_id);
    CHECK_STR(json_string_value(json_object_get(item, "eventType")), "Poison");
    CHECK_STR(json_string_value(json_object_get(item, "error")), "poison pill");
    CHECK_STR(json_string_value(json_object_get(item, "requestId")), "req-poison");
    CHECK_INT(json_integer_value(json_object_get(item, "deliveries")), 3);
    CHECK_INT(json_integer_value(json_object_get(json_object_get(item, "event"), "id")), -1);
    CHECK_INT(json_integer_value(json_object_get(json_object_get(r.body, "page"), "totalElements")), 1);
    json_decref(r.body);

    r = http_get(port, "/admin/deadLetters?page=1&size=1");
    CHECK_INT(r.status, 200);
    CHECK_INT(json_array_size(json_object_get(json_object_get(r.body, "_embedded"), "deadLetters")), 0);
    json_decref(r.body);

    r = http_get(port, "/admin/deadLetters?size=0");
    CHECK_INT(r.status, 400);
    CHECK_STR(json_string_value(json_object_get(r.body, "message")),
              "size must be an integer between 1 and 1000");
    json_decref(r.body);
    http_server_free(srv);
}

/* ---- a backlog waiting when nats-server returns ---- */

#define BACKLOG 600

static bool backlog_applied(void *arg)
{
    return count(receiver_db, "SELECT count(*) FROM applied WHERE request_id = 'req-backlog'",
                 NULL) >= *(long long *)arg;
}

/* Publishes n RentalMade events (ids out[0..n)) through a connection of
 * its own, pipelined, as another service would while this one catches up. */
static void publish_backlog(int n, int first, char (*out)[37])
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    CHECK_INT(natsConnection_ConnectTo(&nc, nats_url), NATS_OK);
    CHECK_INT(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    for (int i = 0; i < n; i++) {
        char ts[15], data[256];
        uuid_v4(out[i]);
        bus_timestamp(ts);
        snprintf(data, sizeof data,
                 "{\"eventType\":\"RentalMade\",\"timestamp\":\"%s\",\"eventId\":\"%s\",\"id\":%d}",
                 ts, out[i], first + i);
        natsMsg *m = NULL;
        CHECK_INT(natsMsg_Create(&m, "carshare.RentalMade", NULL, data, (int)strlen(data)), NATS_OK);
        natsMsgHeader_Set(m, "X-Request-Id", "req-backlog");
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MsgId = out[i];
        CHECK_INT(js_PublishMsgAsync(js, &m, &po), NATS_OK);
        natsMsg_Destroy(m);     /* NULL when the library took it */
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = 10000;
    CHECK_INT(js_PublishAsyncComplete(js, &po), NATS_OK);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

/* nats-server goes away while the receiver is fetching, and comes back;
 * then events arrive in two waves, as another service publishes them. The
 * pull requests the consumer made during the outage (before the fix) were
 * sent at the reconnect and served too, into the same subscription: the
 * first wave (not a multiple of 64) left 36 messages waiting there when the
 * next Fetch started, and nats.c 3.4.1's Fetch then kept everything the
 * second wave brought, several hundred messages for a batch of 64,
 * overrunning its arrays and ours. Every event must be applied exactly
 * once, and the process must live. What the server serves to those requests
 * depends on timing, so the outage is repeated with waves of other sizes. */
static void check_backlog_after_outage(bus *receiver, int wave, int first_id)
{
    char (*ids)[37] = calloc(BACKLOG, sizeof *ids);
    int calls_before = rental_calls;
    long long backlog_before = count(receiver_db,
        "SELECT count(*) FROM applied WHERE request_id = 'req-backlog'", NULL);

    stop_nats();
    CHECK(run_until(is_disconnected, receiver, WAIT_MS, "receiver notices nats-server is gone"));
    run_until(NULL, NULL, 3000, NULL);          /* the receiver keeps trying to fetch */
    start_nats();
    CHECK(run_until(bus_connected, receiver, WAIT_MS, "receiver reconnected"));
    publish_backlog(wave, first_id, ids);
    run_until(NULL, NULL, 150, NULL);           /* a batch of 64 is applied meanwhile */
    publish_backlog(BACKLOG - wave, first_id + wave, ids + wave);
    long long target = backlog_before + BACKLOG;
    CHECK(run_until(backlog_applied, &target, WAIT_MS, "the backlog applied"));
    run_until(NULL, NULL, 300, NULL);           /* nothing more arrives */
    int once = 0;
    for (int i = 0; i < BACKLOG; i++) once += applied_count(ids[i]) == 1;
    CHECK_INT(once, BACKLOG);
    CHECK_INT(rental_calls - calls_before, BACKLOG);
    CHECK_INT(count(receiver_db, "SELECT count(*) FROM applied WHERE request_id = 'req-backlog'",
                    NULL), target);
    free(ids);
}

/* ---- a consumer of one event type ---- */

static store *single_db;

static bool single_applied(void *arg)
{
    return count(single_db, "SELECT count(*) FROM applied WHERE event_id = ?", arg) >= 1;
}

static char *consumer_filter(const char *durable)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsConsumerInfo *ci = NULL;
    char *filter = NULL;
    if (natsConnection_ConnectTo(&nc, nats_url) == NATS_OK &&
        natsConnection_JetStream(&js, nc, NULL) == NATS_OK &&
        js_GetConsumerInfo(&ci, js, "carshare", durable, NULL, NULL) == NATS_OK)
        filter = strdup(ci->Config->FilterSubject ? ci->Config->FilterSubject : "");
    jsConsumerInfo_Destroy(ci);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return filter;
}

/* A service that handles one type asks the server for that type only. Its
 * durable consumer, made by an earlier version for the whole stream, gets
 * the filter and keeps its place: nothing is lost, nothing applied twice. */
static void check_filtered_consumer(void)
{
    char path[128], before[37], during[37];
    snprintf(path, sizeof path, "%s/single.db", dir);
    single_db = store_open_path(path, receiver_schema);
    bus *wide = bus_new(base, single_db, "single");
    bus_on(wide, "RentalMade", on_rental, NULL);
    bus_on(wide, "Poison", on_poison, NULL);
    CHECK_INT(bus_start(wide), 0);
    commit_rental(500, "req-single-1", before);
    CHECK(run_until(single_applied, before, WAIT_MS, "event applied by the two-type consumer"));
    char *filter = consumer_filter("single");
    CHECK_STR(filter, "carshare.>");
    free(filter);
    bus_free(wide);

    commit_rental(501, "req-single-2", during);
    bus *narrow = bus_new(base, single_db, "single");
    bus_on(narrow, "RentalMade", on_rental, NULL);
    CHECK_INT(bus_start(narrow), 0);
    CHECK(run_until(single_applied, during, WAIT_MS, "event applied by the recreated consumer"));
    filter = consumer_filter("single");
    CHECK_STR(filter, "carshare.RentalMade");
    free(filter);
    CHECK_INT(count(single_db, "SELECT count(*) FROM applied WHERE event_id = ?", before), 1);
    bus_free(narrow);
    store_close(single_db);
}

/* Replays the stream through b and returns the result (ids freed). */
static struct replay_result replay_now(bus *b, const char *what)
{
    struct replay_result r = {.ids = json_object()};
    CHECK_INT(bus_replay(b, on_replayed, &r, on_replay_done), 0);
    CHECK(run_until(replay_finished, &r, WAIT_MS, what));
    json_decref(r.ids);
    r.ids = NULL;
    return r;
}

/* A publisher on a fresh nats-server, with the retention limits of the
 * environment as it is now. */
static bus *retention_sender(const char *storage)
{
    stop_nats();
    snprintf(nats_dir, sizeof nats_dir, "%s/%s", dir, storage);
    start_nats();
    bus *b = bus_new(base, sender_db, "sender");
    CHECK_INT(bus_start(b), 0);
    bus *one[2] = {b, b};
    CHECK(run_until(both_connected, one, WAIT_MS, "the retention sender connected"));
    return b;
}

static void commit_rentals(int first, int n)
{
    char id[37];
    for (int i = 0; i < n; i++) commit_rental(first + i, "req-retention", id);
    CHECK(run_until(outbox_empty, sender_db, WAIT_MS, "retention events relayed"));
}

/* Retention: the stream is created with its limits (the duplicate window
 * fitted under a short age), keeps within them, and a replay refuses a
 * history whose start was dropped, by size and by age. */
static void check_retention(void)
{
    setenv("BUS_STREAM_MAX_BYTES", "8192", 1);
    bus *b = retention_sender("jetstream-retention-bytes");
    struct stream_view v = stream_view_get();
    CHECK_INT(v.max_bytes, 8192);
    CHECK_INT(v.max_age_s, 7 * 24 * 3600);      /* the default */
    CHECK_INT(v.duplicates_s, 30);              /* the default (bus.c says why) */

    commit_rentals(60000, 5);                   /* well under the limit: whole */
    struct replay_result whole = replay_now(b, "replay of a whole history");
    CHECK(whole.ok);
    CHECK_INT(whole.count, 5);

    commit_rentals(60100, 80);                  /* ~200 bytes each: over the limit */
    v = stream_view_get();
    CHECK(v.bytes <= 8192);
    CHECK(v.first > 1);
    CHECK(v.msgs < 85);
    struct replay_result cut = replay_now(b, "replay of a cut history");
    CHECK(!cut.ok);
    CHECK(strstr(cut.why, "retention") != NULL);
    CHECK(strstr(cut.why, "events 1 to ") != NULL);
    bus_free(b);
    unsetenv("BUS_STREAM_MAX_BYTES");

    /* The duplicate window as configured. */
    setenv("BUS_STREAM_DUPLICATE_WINDOW_S", "45", 1);
    b = retention_sender("jetstream-retention-window");
    CHECK_INT(stream_view_get().duplicates_s, 45);
    bus_free(b);
    unsetenv("BUS_STREAM_DUPLICATE_WINDOW_S");

    /* An age shorter than the duplicate window: nats-server would
     * refuse the stream unless the window is fitted under it. */
    setenv("BUS_STREAM_MAX_AGE_S", "1", 1);
    b = retention_sender("jetstream-retention-age");
    v = stream_view_get();
    CHECK_INT(v.max_age_s, 1);
    CHECK_INT(v.duplicates_s, 1);
    commit_rentals(60300, 3);
    CHECK(run_until(stream_emptied, NULL, WAIT_MS, "events aged out of the stream"));
    struct replay_result gone = replay_now(b, "replay of an aged-out history");
    CHECK(!gone.ok);
    CHECK(strstr(gone.why, "events 1 to 3 ") != NULL);
    CHECK_INT(gone.count, 0);
    bus_free(b);
    unsetenv("BUS_STREAM_MAX_AGE_S");
}

/* The stream as a deployment before the current limits left it: a
 * 2-minute duplicate window, 1 MiB, no age limit, discard new; on
 * `storage`. */
static void create_old_stream(jsStorageType storage)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    const char *subjects[] = {"carshare.>"};
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    sc.Name = "carshare";
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = storage;
    sc.Discard = js_DiscardNew;
    sc.MaxBytes = 1 << 20;
    sc.Duplicates = 120 * 1000000000LL;
    jsStreamInfo *si = NULL;
    CHECK_INT(natsConnection_ConnectTo(&nc, nats_url), NATS_OK);
    CHECK_INT(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    CHECK_INT(js_AddStream(&si, js, &sc, NULL, NULL), NATS_OK);
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

static bool stream_is_old(struct stream_view v)
{
    return v.duplicates_s == 120 && v.max_bytes == 1 << 20 && v.max_age_s == 0 &&
           v.discard == js_DiscardNew;
}

static bool stream_is_ours(struct stream_view v)
{
    return v.duplicates_s == 30 && v.max_bytes == 1L << 30 && v.max_age_s == 7 * 24 * 3600 &&
           v.discard == js_DiscardOld && v.replicas == 1;
}

/* Reconciling: an existing stream with old limits gets ours from the
 * stream's owner only (another bus leaves it and is ready all the same);
 * a storage it cannot change stays, the rest is still updated; an update
 * nats-server refuses (more bytes than its storage has) leaves the stream
 * as it is and the bus ready. */
static void check_reconcile(void)
{
    stop_nats();
    snprintf(nats_dir, sizeof nats_dir, "%s/%s", dir, "jetstream-reconcile-old");
    start_nats();
    create_old_stream(js_FileStorage);
    bus *b = bus_new(base, sender_db, "sender");          /* not the owner (the default) */
    CHECK_INT(bus_start(b), 0);
    CHECK(run_until(bus_connected, b, WAIT_MS, "a bus that does not own the stream ready"));
    CHECK(stream_is_old(stream_view_get()));
    bus_free(b);

    setenv("BUS_STREAM_OWNER", "1", 1);
    setenv("BUS_STREAM_MAX_BYTES", "1125899906842624", 1);     /* 1 PiB: more than the disk */
    b = bus_new(base, sender_db, "sender");
    CHECK_INT(bus_start(b), 0);
    CHECK(run_until(bus_connected, b, WAIT_MS, "the owner ready after a refused update"));
    CHECK(stream_is_old(stream_view_get()));
    bus_free(b);
    unsetenv("BUS_STREAM_MAX_BYTES");

    b = bus_new(base, sender_db, "sender");
    CHECK_INT(bus_start(b), 0);
    CHECK(run_until(bus_connected, b, WAIT_MS, "the owner ready"));
    CHECK(stream_is_ours(stream_view_get()));
    bus *again = bus_new(base, sender_db, "sender");  /* the same again: nothing to do */
    CHECK_INT(bus_start(again), 0);
    CHECK(run_until(bus_connected, again, WAIT_MS, "a second owner ready"));
    CHECK(stream_is_ours(stream_view_get()));
    commit_rentals(60500, 3);
    CHECK_INT(stream_view_get().msgs, 3);
    bus_free(again);
    bus_free(b);

    stop_nats();
    snprintf(nats_dir, sizeof nats_dir, "%s/%s", dir, "jetstream-reconcile-memory");
    start_nats();
    create_old_stream(js_MemoryStorage);
    b = bus_new(base, sender_db, "sender");
    CHECK_INT(bus_start(b), 0);
    CHECK(run_until(bus_connected, b, WAIT_MS, "the owner ready on a memory stream"));
    struct stream_view v = stream_view_get();
    CHECK(stream_is_ours(v));
    CHECK_INT(v.storage, js_MemoryStorage);
    bus_free(b);
    unsetenv("BUS_STREAM_OWNER");
}

static void cleanup(void)
{
    stop_nats();
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    log_init("test_bus");
    if (!temp_dir_make(dir, sizeof dir, "bus"))
        return 1;
    snprintf(nats_dir, sizeof nats_dir, "%s/jetstream", dir);
    nats_port = free_port();
    snprintf(nats_url, sizeof nats_url, "nats://127.0.0.1:%d", nats_port);
    setenv("NATS_URL", nats_url, 1);
    setenv("BUS_POLL_MS", "200", 1);
    setenv("BUS_MAX_DELIVER", "3", 1);
    setenv("BUS_RETRY_MS", "50", 1);
    atexit(cleanup);

    evthread_use_pthreads();     /* service_new does this in the services */
    base = event_base_new();
    char path[160];
    snprintf(path, sizeof path, "%s/sender.db", dir);
    sender_db = store_open_path(path, sender_schema);
    snprintf(path, sizeof path, "%s/receiver.db", dir);
    receiver_db = store_open_path(path, receiver_schema);
    if (!base || !sender_db || !receiver_db) {
        fprintf(stderr, "setup failed\n");
        return 1;
    }

    /* A service starts and serves without nats-server... */
    bus *sender = bus_new(base, sender_db, "sender");
    bus *receiver = new_receiver();
    CHECK(sender && receiver);
    CHECK_INT(bus_start(sender), 0);
    CHECK_INT(bus_start(receiver), 0);
    CHECK(!bus_connected(sender));
    run_until(NULL, NULL, 300, NULL);
    CHECK(!bus_connected(sender));

    /* ...and connects when it comes. */
    start_nats();
    bus *both[2] = {sender, receiver};
    CHECK(run_until(both_connected, both, WAIT_MS, "both buses connected"));

    /* Replay of an empty stream ends at once, with nothing. */
    struct replay_result empty = {.ids = json_object()};
    CHECK_INT(bus_replay(receiver, on_replayed, &empty, on_replay_done), 0);
    CHECK(run_until(replay_finished, &empty, WAIT_MS, "empty replay"));
    CHECK(empty.ok);
    CHECK_INT(empty.count, 0);
    json_decref(empty.ids);

    /* Committed events: published, consumed once each, outbox emptied. */
    char ids[16][37];
    int rentals = 0;
    for (int i = 0; i < 5; i++) {
        char req[32];
        snprintf(req, sizeof req, "req-%d", i);
        commit_rental(i + 1, req, ids[rentals++]);
    }
    CHECK(run_until(applied, ids[4], WAIT_MS, "first five events applied"));
    CHECK(run_until(outbox_empty, sender_db, WAIT_MS, "sender outbox drained"));
    for (int i = 0; i < 5; i++) {
        CHECK_INT(applied_count(ids[i]), 1);
        char req[32];
        snprintf(req, sizeof req, "req-%d", i);
        CHECK_INT(count(receiver_db, "SELECT count(*) FROM applied WHERE request_id = ?", req), 1);
    }
    CHECK_INT(rental_calls, 5);

    /* Published twice. Same Nats-Msg-Id (the relay retrying after a lost
     * ack): the server drops it. Another Nats-Msg-Id (beyond the duplicate
     * window): the consumer skips it. */
    CHECK_INT(store_begin(sender_db), SQLITE_OK);
    sqlite3_stmt *s = store_prepare(sender_db,
        "INSERT INTO outbox (event_id, event_type, payload) VALUES (?, 'RentalMade', ?)");
    char payload[256];
    snprintf(payload, sizeof payload,
             "{\"eventType\":\"RentalMade\",\"timestamp\":\"20260101000000\",\"eventId\":\"%s\",\"id\":1}",
             ids[0]);
    sqlite3_bind_text(s, 1, ids[0], -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, payload, -1, SQLITE_STATIC);
    CHECK_INT(sqlite3_step(s), SQLITE_DONE);
    sqlite3_reset(s);
    CHECK_INT(store_commit(sender_db), SQLITE_OK);
    CHECK(run_until(outbox_empty, sender_db, WAIT_MS, "re-published event relayed"));
    publish_raw("carshare.RentalMade", payload, "another-message-id");

    /* A rolled back transaction publishes nothing. */
    char rolled_back[37];
    CHECK_INT(store_begin(sender_db), SQLITE_OK);
    json_t *ghost = json_pack("{s:i}", "id", 999);
    CHECK_INT(outbox_add(sender_db, "RentalMade", ghost, "req-ghost", rolled_back), 0);
    json_decref(ghost);
    store_rollback(sender_db);
    CHECK_INT(count(sender_db, "SELECT count(*) FROM outbox", NULL), 0);

    /* outbox_add outside a transaction is refused. */
    json_t *loose = json_pack("{s:i}", "id", 1000);
    CHECK_INT(outbox_add(sender_db, "RentalMade", loose, NULL, NULL), -1);
    CHECK_INT(outbox_add(sender_db, "Bad.Type", loose, NULL, NULL), -1);
    json_decref(loose);
    CHECK_INT(count(sender_db, "SELECT count(*) FROM outbox", NULL), 0);

    /* The consumer works through the stream in order: once this marker is
     * applied, the duplicate and anything before it have been seen. */
    commit_rental(6, "req-marker", ids[rentals++]);
    CHECK(run_until(applied, ids[5], WAIT_MS, "marker after duplicates"));
    CHECK_INT(applied_count(ids[0]), 1);
    CHECK_INT(rental_calls, 6);                 /* the handler never saw a duplicate */
    CHECK_INT(applied_count(rolled_back), 0);
    CHECK_INT(count(receiver_db, "SELECT count(*) FROM applied WHERE n = 999", NULL), 0);
    CHECK_INT(count(receiver_db, "SELECT count(*) FROM processed_events WHERE event_id = ?", ids[0]), 1);

    /* nats-server goes away: commits are kept, and published when it is back. */
    stop_nats();
    CHECK(run_until(is_disconnected, sender, WAIT_MS, "sender notices nats-server is gone"));
    for (int i = 0; i < 3; i++) commit_rental(100 + i, "req-outage", ids[rentals++]);
    run_until(NULL, NULL, 600, NULL);           /* the relay tries, and must keep them */
    CHECK_INT(count(sender_db, "SELECT count(*) FROM outbox", NULL), 3);
    CHECK(!bus_connected(sender));
    start_nats();
    CHECK(run_until(both_connected, both, WAIT_MS, "reconnected after restart"));
    CHECK(run_until(applied, ids[rentals - 1], WAIT_MS, "events from the outage applied"));
    CHECK(run_until(outbox_empty, sender_db, WAIT_MS, "outage outbox drained"));
    for (int i = rentals - 3; i < rentals; i++) CHECK_INT(applied_count(ids[i]), 1);

    /* A handler that always fails: dead letter after BUS_MAX_DELIVER (3)
     * deliveries, and the event behind it is not blocked. */
    char poison[37];
    commit_poison(poison);
    commit_rental(200, "req-after-poison", ids[rentals++]);
    CHECK(run_until(applied, ids[rentals - 1], WAIT_MS, "event behind the poison applied"));
    CHECK(run_until(dead_lettered, poison, WAIT_MS, "poison dead-lettered"));
    CHECK_INT(poison_calls, 3);
    CHECK_INT(count(receiver_db, "SELECT deliveries FROM dead_letters WHERE event_id = ?", poison), 3);
    CHECK_INT(count(receiver_db, "SELECT count(*) FROM dead_letters WHERE event_id = ? AND "
                    "error = 'poison pill' AND event_type = 'Poison' AND request_id = 'req-poison'",
                    poison), 1);
    CHECK_INT(count(receiver_db, "SELECT count(*) FROM processed_events WHERE event_id = ?", poison), 0);
    CHECK_INT(count(receiver_db, "SELECT count(*) FROM applied WHERE event_id = 'poison-effect'", NULL), 0);
    run_until(NULL, NULL, 400, NULL);           /* it is not delivered again */
    CHECK_INT(poison_calls, 3);
    check_dead_letter_route(receiver, poison);
    CHECK_INT(metric_value("carshare_bus_dead_letters_total"), 1);
    CHECK_INT(metric_value("carshare_bus_duplicates_total"), 1);
    CHECK_INT(metric_value("carshare_bus_redeliveries_total"), 2);
    CHECK_INT(metric_value("carshare_bus_connected"), 1);

    /* A message that is not an event is set aside at once: no retries. */
    publish_raw("carshare.RentalMade", "this is not JSON", "junk-1");
    CHECK(run_until(junk_dead_lettered, NULL, WAIT_MS, "junk message dead-lettered"));
    CHECK_INT(count(receiver_db, "SELECT deliveries FROM dead_letters WHERE payload = 'this is not JSON'",
                    NULL), 1);
    CHECK_INT(count(receiver_db, "SELECT count(*) FROM dead_letters WHERE payload = 'this is not JSON'"
                    " AND error = 'the message is not a JSON object with an eventId'"
                    " AND event_id = 'stream-seq-' || stream_seq", NULL), 1);

    /* The receiver restarts on the same store: it resumes from its durable
     * consumer and re-applies nothing. */
    bus_free(receiver);
    commit_rental(300, "req-while-receiver-down", ids[rentals++]);
    receiver = new_receiver();
    both[1] = receiver;
    CHECK_INT(bus_start(receiver), 0);
    CHECK(run_until(applied, ids[rentals - 1], WAIT_MS, "event sent while the receiver was down"));

    /* A consumer killed after fetching (kill -9: no ack, no nak): its
     * messages are handled again within seconds (BUS_ACK_WAIT_MS, 4 s),
     * not after the 30 s AckWait it had before. */
    bus_free(receiver);
    commit_rental(301, "req-fetched-by-the-dead", ids[rentals++]);
    CHECK(run_until(outbox_empty, sender_db, WAIT_MS, "event for the dead consumer relayed"));
    fetch_and_die();
    receiver = new_receiver();
    both[1] = receiver;
    CHECK_INT(bus_start(receiver), 0);
    CHECK(run_until(applied, ids[rentals - 1], 15000, "event a killed consumer had fetched"));
    for (int i = 0; i < rentals; i++) CHECK_INT(applied_count(ids[i]), 1);
    CHECK_INT(rental_calls, rentals);
    CHECK_INT(count(receiver_db, "SELECT count(*) FROM applied", NULL), rentals);

    /* The receiver's own events (RentalSeen, from its handler) were relayed. */
    CHECK(run_until(outbox_empty, receiver_db, WAIT_MS, "receiver outbox drained"));

    /* consumed_total counts the events applied, by type: RentalMade once
     * each; not the RentalSeen, Poison and junk messages the receiver
     * skipped, failed or set aside. */
    CHECK_INT(metric_value("carshare_bus_consumed_total{event=\"RentalMade\"}"), rentals);
    CHECK_INT(metric_value("carshare_bus_consumed_total{event=\"RentalSeen\"}"), -1);
    CHECK_INT(metric_value("carshare_bus_consumed_total{event=\"Poison\"}"), -1);

    /* Replay: every event in the stream, each once, in one pass. */
    long long in_stream = stream_messages();
    struct replay_result all = {.ids = json_object()};
    CHECK_INT(bus_replay(receiver, on_replayed, &all, on_replay_done), 0);
    CHECK_INT(bus_replay(receiver, on_replayed, &all, on_replay_done), -1);   /* one at a time */
    CHECK(run_until(replay_finished, &all, WAIT_MS, "full replay"));
    CHECK(all.ok);
    CHECK_INT(all.count, in_stream - 1);        /* all but the junk message */
    /* rentals + the raw duplicate, rentals RentalSeen, the poison, the junk. */
    CHECK_INT(in_stream, 2 * rentals + 3);
    CHECK_INT(all.seen_rentals, rentals + 1);
    CHECK_INT(all.seen_other, rentals + 1);
    for (int i = 0; i < rentals; i++)
        CHECK_INT(json_integer_value(json_object_get(all.ids, ids[i])), i == 0 ? 2 : 1);
    CHECK(json_object_get(all.ids, rolled_back) == NULL);
    json_decref(all.ids);

    /* nats-server comes back without its storage: the stream and the
     * consumer are created again, and events flow again. */
    stop_nats();
    snprintf(nats_dir, sizeof nats_dir, "%s/jetstream-fresh", dir);
    start_nats();
    CHECK(run_until(both_connected, both, WAIT_MS, "reconnected to an empty nats-server"));
    commit_rental(400, "req-fresh", ids[rentals++]);
    CHECK(run_until(applied, ids[rentals - 1], WAIT_MS, "event after storage loss applied"));
    CHECK(run_until(outbox_empty, sender_db, WAIT_MS, "outbox drained after storage loss"));

    for (int round = 0; round < 3; round++)
        check_backlog_after_outage(receiver, 100 + 20 * round, 20000 + 1000 * round);

    check_filtered_consumer();

    bus_free(receiver);
    bus_free(sender);
    check_retention();
    check_reconcile();
    store_close(receiver_db);
    store_close(sender_db);
    event_base_free(base);
    stop_nats();
    nats_CloseAndWait(5000);

    if (testing_failures == 0) temp_dir_remove(dir);   /* kept for a look when it failed */
    return test_done("test_bus");
}
