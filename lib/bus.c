/* bus.c: events on NATS JetStream with a transactional outbox and an
 * idempotent consumer (see bus.h, whose top comment is the specification).
 *
 * Threads. The event loop never makes a NATS call that can block. Three
 * kinds of worker do:
 *  - the relay thread owns the connection's life: it connects (in the
 *    background, retrying for ever), creates or updates the stream and the
 *    durable consumer after every (re)connection, and drains the outbox
 *    through its own SQLite connection. A batch of rows is pipelined with
 *    js_PublishMsgAsync, each carrying Nats-Msg-Id = eventId, then awaited
 *    with js_PublishAsyncComplete; only rows JetStream acknowledged are
 *    deleted. Anything else (timeout, error, server gone) is simply retried
 *    later with the same id: a timeout does not mean "not stored", and the
 *    server's duplicate window turns the retry into a no-op if it was.
 *    The relay remembers the highest seq acknowledged together with every
 *    row before it (rows commit in seq order: writes are serialized),
 *    reads only past it, and deletes up to it in one range statement,
 *    RELAY_DELETE_MS after the publish at most. A delete lost to a crash
 *    republishes the row, which the server (same Nats-Msg-Id) or the
 *    consumers (same eventId) discard.
 *  - the fetch thread pulls batches from the service's durable consumer and
 *    hands them to the loop, waits until the loop has applied them, then
 *    acks or naks each message.
 *  - a replay thread, while bus_replay runs, reads the whole stream through
 *    an ephemeral consumer and hands it to the loop the same way.
 *
 * Hand-off. Workers append a batch to a queue guarded by `mu` and activate
 * a pre-created event (`inbox`, safe from any thread because service_new
 * made the loop thread-aware). The loop applies a slice of the batch per
 * turn, so HTTP requests interleave with a large backlog, and broadcasts
 * `cond` when a batch is complete. A slice is one transaction on the
 * service's store (one fsync, not one per event) and each event in it a
 * savepoint: skip it if its eventId is in processed_events, else run the
 * handler and record the eventId, so effect and bookkeeping commit
 * together, and a failing handler undoes only its own writes. Acks are
 * sent only after the commit.
 *
 * Failures. A handler failure rolls back and the message is nak'ed with an
 * exponential delay; the BUS_MAX_DELIVER-th failed delivery (NumDelivered
 * from the message metadata) is written to dead_letters and acked. The
 * server-side consumer has no MaxDeliver of its own: if the process died
 * between failing and dead-lettering, the server must deliver again.
 *
 * Shutdown. bus_stop raises `stopping`; a worker waiting for the loop takes
 * its batch back (naks what was not applied, so another replica gets it at
 * once), and threads are joined before the connection is closed. The
 * connection callbacks point at the bus, so bus_stop waits for the closed
 * callback, the last one nats.c delivers, before the bus can be freed.
 *
 * Environment: NATS_URL (nats://127.0.0.1:4222), BUS_POLL_MS (1000),
 * BUS_MAX_DELIVER (5), BUS_RETRY_MS (200: first redelivery delay, doubled
 * at each delivery, at most 30 s). */
#include "bus.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <nats/nats.h>

#include "config.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "rep.h"

#define STREAM_NAME       "carshare"
#define SUBJECT_PREFIX    "carshare."
#define STREAM_SUBJECTS   "carshare.>"
#define RELAY_BATCH       256       /* outbox rows published per round trip */
/* How late published rows may be deleted. Deferring them (100 ms) cut the
 * relay's writes, yet measured ~20% fewer rentals/s: the relay's frequent
 * commits were where most WAL auto-checkpoints ran; deferred, the loop's
 * commits run them instead, blocking requests (two fsyncs and the page
 * copy). So: at once, the round after the publish. */
#define RELAY_DELETE_MS   0
#define FETCH_BATCH       64        /* messages per pull */
#define FETCH_WAIT_MS     500       /* also bounds how long bus_stop waits */
#define REPLAY_BATCH      256
#define APPLY_PER_TURN    64        /* messages applied per loop callback */
#define PUBLISH_WAIT_MS   5000
#define ACK_WAIT_S        30
#define MAX_ACK_PENDING   1000
#define DUPLICATE_WINDOW_S 120
#define MAX_RETRY_DELAY_MS 30000
#define NS_PER_S          1000000000LL

struct handler {
    char *event_type;
    bus_handler fn;
    void *arg;
};

/* What the fetch thread must answer for one message. */
enum settle { SETTLE_NONE, SETTLE_ACK, SETTLE_NAK };

struct delivery {
    natsMsg *msg;
    enum settle settle;
    int64_t nak_delay_ms;
};

enum batch_kind { BATCH_CONSUME, BATCH_REPLAY, BATCH_REPLAY_DONE };

/* A unit of work handed to the loop. CONSUME and REPLAY batches live on
 * their worker's stack and are unlinked by the loop when complete (or by
 * the worker when stopping); a REPLAY_DONE batch is heap-allocated and
 * freed by whoever takes it off the queue. */
struct batch {
    enum batch_kind kind;
    struct delivery *items;
    int n;
    int next;           /* first item not applied yet */
    bool busy;          /* the loop is applying a slice outside the lock */
    bool complete;
    struct batch *link;
};

struct replay {
    bus_handler fn;
    void *arg;
    void (*done)(void *arg, bool ok, long count);
    pthread_t thread;
    bool joinable;      /* thread started and not joined yet */
    bool active;        /* started and done() not called yet */
    bool reached_end;   /* set by the thread: every event up to the last was handed over */
    long count;         /* events applied (loop thread) */
    long failures;      /* events whose handler failed (loop thread) */
};

/* The relay's view of the batch being published; the ack callback (a nats.c
 * thread) marks rows under pub_mu. */
struct pending_row {
    long long seq;
    char event_id[40];
    bool acked;
};

struct bus {
    struct event_base *base;
    store *st;
    char *service;
    char *durable;      /* consumer name: the service name without . * > or spaces */
    char *db_path;
    char *url;
    long poll_ms, max_deliver, retry_ms;

    struct handler *handlers;
    size_t nhandlers;

    pthread_t relay_thread, fetch_thread;
    bool relay_started, fetch_started, started, stopped;

    pthread_mutex_t mu;         /* guards everything below up to the queue */
    pthread_cond_t cond;        /* broadcast on any change of those fields */
    bool stopping;
    bool wake_relay;            /* a commit happened, or setup is wanted */
    bool need_setup;            /* (re)connected: create stream and consumer */
    bool closed;                /* the connection's closed callback ran */
    unsigned setup_gen;         /* number of successful setups */
    natsConnection *nc;         /* set once by the relay, closed by bus_stop */
    struct batch *queue, *queue_tail;
    struct replay replay;

    atomic_bool ready;          /* connected and set up: the readiness check */
    struct event *inbox;

    pthread_mutex_t pub_mu;
    struct pending_row *pending;
    int npending;
    int pending_hint;
    char last_pub_error[160];
};

/* ---- small helpers ---- */

static bool deadline_passed(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > deadline->tv_sec ||
           (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec);
}

static struct timespec deadline_in(long ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* Sleeps up to ms unless stopping; returns false when stopping. */
static bool pause_unless_stopping(bus *b, long ms)
{
    struct timespec deadline = deadline_in(ms);
    pthread_mutex_lock(&b->mu);
    while (!b->stopping && !deadline_passed(&deadline))
        pthread_cond_timedwait(&b->cond, &b->mu, &deadline);
    bool go_on = !b->stopping;
    pthread_mutex_unlock(&b->mu);
    return go_on;
}

static bool is_stopping(bus *b)
{
    pthread_mutex_lock(&b->mu);
    bool s = b->stopping;
    pthread_mutex_unlock(&b->mu);
    return s;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static const char *nats_error_text(natsStatus s, jsErrCode jerr, char *buf, size_t len)
{
    const char *detail = nats_GetLastError(NULL);
    snprintf(buf, len, "%s (status %d, js %d)%s%s", natsStatus_GetText(s), (int)s, (int)jerr,
             detail && *detail ? ": " : "", detail ? detail : "");
    return buf;
}

/* The Prometheus label for an event type chosen by whoever published:
 * only names that are safe inside a label value, else "other". */
static void event_label(const char *event_type, char *out, size_t len)
{
    bool safe = event_type && *event_type && strlen(event_type) <= 40;
    for (const char *p = event_type; safe && *p; p++)
        safe = isalnum((unsigned char)*p) || *p == '_';
    snprintf(out, len, "event=\"%s\"", safe ? event_type : "other");
}

static bool valid_event_type(const char *t)
{
    if (!t || !*t || strlen(t) > 64) return false;
    for (; *t; t++)
        if (!isalnum((unsigned char)*t) && *t != '_' && *t != '-') return false;
    return true;
}

/* An id that can be written unquoted in a log line: eventIds are UUIDs and
 * request ids tokens; anything else that arrives is not trusted as one. */
static bool plain_id(const char *s)
{
    if (!s || !*s || strlen(s) > 64) return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("-_.:", *s)) return false;
    return true;
}

/* ---- envelope ---- */

void bus_uuid(char out[37])
{
    unsigned char r[16];
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t n = getrandom(r + got, sizeof r - got, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
    }
    if (got < sizeof r) {
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        if (fd < 0 || read(fd, r, sizeof r) != (ssize_t)sizeof r) {
            /* No entropy source at all: unique but predictable ids are
             * still correct ids (they only de-duplicate), so say so loudly
             * and go on. */
            static atomic_ulong counter;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            unsigned long c = atomic_fetch_add(&counter, 1);
            unsigned long long parts[2] = {(unsigned long long)ts.tv_sec * NS_PER_S + ts.tv_nsec,
                                           ((unsigned long long)getpid() << 32) ^ c};
            memcpy(r, parts, sizeof r);
            log_error("msg=\"no entropy source for UUIDs: using time and counter\"");
        }
        if (fd >= 0) close(fd);
    }
    r[6] = (unsigned char)((r[6] & 0x0F) | 0x40);   /* version 4 */
    r[8] = (unsigned char)((r[8] & 0x3F) | 0x80);   /* RFC 4122 variant */
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12],
             r[13], r[14], r[15]);
}

void bus_timestamp(char out[15])
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(out, 15, "%Y%m%d%H%M%S", &tm);
}

int outbox_add(store *st, const char *event_type, const json_t *payload,
               const char *request_id, char *event_id_out)
{
    if (!valid_event_type(event_type) || !json_is_object(payload)) {
        log_error("msg=\"outbox_add: bad event\" event=%s", event_type ? event_type : "(null)");
        return -1;
    }
    if (sqlite3_get_autocommit(store_db(st))) {
        /* Outside a transaction the event could be committed without the
         * change it announces, or the other way round. */
        log_error("msg=\"outbox_add called outside a transaction\" event=%s", event_type);
        return -1;
    }

    char event_id[37], timestamp[15];
    bus_uuid(event_id);
    bus_timestamp(timestamp);

    json_t *env = json_pack("{s:s, s:s, s:s}", "eventType", event_type, "timestamp", timestamp,
                            "eventId", event_id);
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)payload, key, value) {
        if (strcmp(key, "eventType") && strcmp(key, "timestamp") && strcmp(key, "eventId"))
            json_object_set_new(env, key, json_deep_copy(value));
    }
    char *text = json_dumps(env, JSON_COMPACT);
    json_decref(env);
    if (!text) {
        log_error("msg=\"outbox_add: cannot encode event\" event=%s", event_type);
        return -1;
    }

    int rc = SQLITE_ERROR;
    sqlite3_stmt *s = store_prepare(st,
        "INSERT INTO outbox (event_id, event_type, payload, request_id) VALUES (?, ?, ?, ?)");
    if (s) {
        sqlite3_bind_text(s, 1, event_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, event_type, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 3, text, -1, SQLITE_STATIC);
        if (request_id) sqlite3_bind_text(s, 4, request_id, -1, SQLITE_STATIC);
        rc = sqlite3_step(s);
        sqlite3_reset(s);
    }
    free(text);
    if (rc != SQLITE_DONE) {
        char e[200];
        log_error("msg=\"outbox_add: insert failed\" event=%s error=%s", event_type,
                  log_quote(e, sizeof e, store_error(st)));
        return -1;
    }
    if (event_id_out) memcpy(event_id_out, event_id, 37);
    return 0;
}

/* ---- the hand-off to the loop ---- */

static void unlink_batch(bus *b, struct batch *batch)
{
    struct batch **p = &b->queue, *prev = NULL;
    while (*p && *p != batch) {
        prev = *p;
        p = &(*p)->link;
    }
    if (!*p) return;
    *p = batch->link;
    if (b->queue_tail == batch) b->queue_tail = prev;
    batch->link = NULL;
}

static void enqueue_locked(bus *b, struct batch *batch)
{
    batch->link = NULL;
    if (b->queue_tail) b->queue_tail->link = batch;
    else b->queue = batch;
    b->queue_tail = batch;
}

/* Worker side: hands batch to the loop and waits until it is applied, or
 * until stop, in which case the batch is taken back (batch->next tells how
 * far the loop got). Returns true when complete. */
static bool run_on_loop(bus *b, struct batch *batch)
{
    pthread_mutex_lock(&b->mu);
    if (b->stopping) {
        pthread_mutex_unlock(&b->mu);
        return false;
    }
    enqueue_locked(b, batch);
    pthread_mutex_unlock(&b->mu);
    event_active(b->inbox, EV_READ, 0);

    pthread_mutex_lock(&b->mu);
    while (!batch->complete && !b->stopping) pthread_cond_wait(&b->cond, &b->mu);
    while (batch->busy) pthread_cond_wait(&b->cond, &b->mu);
    if (!batch->complete) unlink_batch(b, batch);
    bool complete = batch->complete;
    pthread_mutex_unlock(&b->mu);
    return complete;
}

static void apply_slice(bus *b, enum batch_kind kind, struct delivery *items, int k);
static void finish_replay(bus *b);

/* Loop side: applies a slice of up to APPLY_PER_TURN messages of the first
 * batch, in one transaction, then yields to the other events of the loop
 * and comes back for the rest. */
static void on_inbox(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    bus *b = arg;
    pthread_mutex_lock(&b->mu);
    struct batch *batch = b->stopping ? NULL : b->queue;
    if (batch && batch->kind == BATCH_REPLAY_DONE) {
        unlink_batch(b, batch);
        pthread_mutex_unlock(&b->mu);
        free(batch);
        finish_replay(b);
        pthread_mutex_lock(&b->mu);
    } else if (batch) {
        int k = batch->n - batch->next;
        if (k > APPLY_PER_TURN) k = APPLY_PER_TURN;
        struct delivery *slice = &batch->items[batch->next];
        enum batch_kind kind = batch->kind;
        batch->busy = true;
        pthread_mutex_unlock(&b->mu);
        if (k > 0) apply_slice(b, kind, slice, k);
        pthread_mutex_lock(&b->mu);
        batch->busy = false;
        batch->next += k;
        if (batch->next == batch->n) {
            unlink_batch(b, batch);
            batch->complete = true;
        }
        pthread_cond_broadcast(&b->cond);
    }
    bool more = b->queue && !b->stopping;
    pthread_mutex_unlock(&b->mu);
    /* Come back on the next turn of the loop, not this one: an event
     * activated from its own callback runs again in the same pass, which
     * would starve HTTP requests while a backlog drains. A zero timeout
     * goes through the timer heap, so the loop polls sockets first. */
    static const struct timeval next_turn = {0, 0};
    if (more) event_add(b->inbox, &next_turn);
}

/* ---- applying events (loop thread) ---- */

static const struct handler *find_handler(const bus *b, const char *event_type)
{
    for (size_t i = 0; i < b->nhandlers; i++)
        if (strcmp(b->handlers[i].event_type, event_type) == 0) return &b->handlers[i];
    return NULL;
}

/* What the loop knows about one received message. */
struct received {
    json_t *event;              /* owned; NULL if the data is not a JSON object */
    const char *event_type;
    const char *event_id;
    const char *subject;
    const char *request_id;     /* header, else the eventId, else "-" */
    uint64_t deliveries;
    uint64_t stream_seq;
};

static void read_message(natsMsg *msg, struct received *r)
{
    memset(r, 0, sizeof *r);
    r->subject = natsMsg_GetSubject(msg);
    r->event = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, NULL);
    if (r->event && !json_is_object(r->event)) {
        json_decref(r->event);
        r->event = NULL;
    }
    if (r->event) {
        r->event_type = json_string_value(json_object_get(r->event, "eventType"));
        r->event_id = json_string_value(json_object_get(r->event, "eventId"));
    }
    if (!valid_event_type(r->event_type)) {
        const char *from_subject = r->subject && strncmp(r->subject, SUBJECT_PREFIX,
                                                         strlen(SUBJECT_PREFIX)) == 0
                                       ? r->subject + strlen(SUBJECT_PREFIX) : NULL;
        r->event_type = valid_event_type(from_subject) ? from_subject : "unknown";
    }
    if (!plain_id(r->event_id)) r->event_id = NULL;     /* dead-lettered as not an event */
    if (natsMsgHeader_Get(msg, "X-Request-Id", &r->request_id) != NATS_OK || !plain_id(r->request_id))
        r->request_id = r->event_id ? r->event_id : "-";

    jsMsgMetaData *meta = NULL;
    if (natsMsg_GetMetaData(&meta, msg) == NATS_OK) {
        r->deliveries = meta->NumDelivered;
        r->stream_seq = meta->Sequence.Stream;
        jsMsgMetaData_Destroy(meta);
    }
}

static bool already_processed(store *st, const char *event_id)
{
    sqlite3_stmt *s = store_prepare(st, "SELECT 1 FROM processed_events WHERE event_id = ?");
    if (!s) return false;
    sqlite3_bind_text(s, 1, event_id, -1, SQLITE_STATIC);
    bool found = sqlite3_step(s) == SQLITE_ROW;
    sqlite3_reset(s);
    return found;
}

static bool mark_processed(store *st, const char *event_id, const char *event_type)
{
    sqlite3_stmt *s = store_prepare(st,
        "INSERT INTO processed_events (event_id, event_type) VALUES (?, ?)");
    if (!s) return false;
    sqlite3_bind_text(s, 1, event_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, event_type, -1, SQLITE_STATIC);
    bool ok = sqlite3_step(s) == SQLITE_DONE;
    sqlite3_reset(s);
    return ok;
}

/* Sets the event aside for an operator. True when it is safely stored. */
static bool dead_letter(bus *b, natsMsg *msg, const struct received *r, const char *error)
{
    char fallback_id[48];
    const char *id = r->event_id;
    if (!id) {
        snprintf(fallback_id, sizeof fallback_id, "stream-seq-%llu", (unsigned long long)r->stream_seq);
        id = fallback_id;
    }
    if (store_begin(b->st) != SQLITE_OK) return false;
    sqlite3_stmt *s = store_prepare(b->st,
        "INSERT OR IGNORE INTO dead_letters (event_id, event_type, subject, payload, request_id,"
        " deliveries, error, stream_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
    bool ok = false;
    if (s) {
        sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, r->event_type, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 3, r->subject ? r->subject : "", -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 4, natsMsg_GetData(msg), natsMsg_GetDataLength(msg), SQLITE_STATIC);
        sqlite3_bind_text(s, 5, r->request_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 6, (sqlite3_int64)r->deliveries);
        sqlite3_bind_text(s, 7, error, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 8, (sqlite3_int64)r->stream_seq);
        ok = sqlite3_step(s) == SQLITE_DONE;
        sqlite3_reset(s);
    }
    if (!ok) {
        store_rollback(b->st);
        return false;
    }
    if (store_commit(b->st) != SQLITE_OK) return false;
    char q[300];
    log_error("event=%s id=%s req=%s seq=%llu delivery=%llu result=dead_letter error=%s",
              r->event_type, id, r->request_id, (unsigned long long)r->stream_seq,
              (unsigned long long)r->deliveries, log_quote(q, sizeof q, error));
    metrics_counter_add("carshare_bus_dead_letters_total", "", 1);
    return true;
}

/* A failed delivery: retried later with a growing delay, or set aside. */
static void delivery_failed(bus *b, struct delivery *d, const struct received *r, const char *error)
{
    if (r->deliveries >= (uint64_t)b->max_deliver || !r->event || !r->event_id) {
        /* A message that is not an event will never succeed: no retries. */
        if (dead_letter(b, d->msg, r, error)) {
            d->settle = SETTLE_ACK;
            return;
        }
    }
    int64_t delay = b->retry_ms;
    for (uint64_t i = 1; i < r->deliveries && delay < MAX_RETRY_DELAY_MS; i++) delay *= 2;
    if (delay > MAX_RETRY_DELAY_MS) delay = MAX_RETRY_DELAY_MS;
    d->settle = SETTLE_NAK;
    d->nak_delay_ms = delay;
    char q[300];
    log_warn("event=%s id=%s req=%s seq=%llu delivery=%llu result=failed retry_ms=%lld error=%s",
             r->event_type, r->event_id ? r->event_id : "-", r->request_id,
             (unsigned long long)r->stream_seq, (unsigned long long)r->deliveries,
             (long long)delay, log_quote(q, sizeof q, error));
}

/* One message's fate within a slice. result is NULL while it failed. */
struct outcome {
    struct received r;
    const char *result;     /* "applied" (needs the commit), "duplicate", "ignored", "skipped" */
    char err[256];
    double ms;
};

/* Each event runs inside a savepoint of the slice's transaction: a failing
 * handler undoes only its own writes, and the slice still costs one commit
 * (one fsync) instead of one per event. */
static bool savepoint(store *st, const char *sql)
{
    sqlite3_stmt *s = store_prepare(st, sql);
    bool ok = s && sqlite3_step(s) == SQLITE_DONE;
    if (s) sqlite3_reset(s);
    return ok;
}

static void undo_event(store *st)
{
    savepoint(st, "ROLLBACK TO bus_event");
    savepoint(st, "RELEASE bus_event");
}

static void fail(struct outcome *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct outcome *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    o->result = NULL;
    vsnprintf(o->err, sizeof o->err, fmt, ap);
    va_end(ap);
}

/* Consumes one event inside the slice's transaction. */
static void consume_event(bus *b, struct outcome *o)
{
    const struct received *r = &o->r;
    if (!r->event || !r->event_id) {
        fail(o, "%s", "the message is not a JSON object with an eventId");
        return;
    }
    const struct handler *h = find_handler(b, r->event_type);
    if (!h) {                   /* not for this service */
        o->result = "ignored";
        return;
    }
    if (already_processed(b->st, r->event_id)) {
        o->result = "duplicate";
        return;
    }
    if (!savepoint(b->st, "SAVEPOINT bus_event")) {
        fail(o, "cannot open a savepoint: %s", store_error(b->st));
        return;
    }
    o->err[0] = '\0';
    if (h->fn(b->st, r->event, r->request_id, h->arg, o->err, sizeof o->err) != 0) {
        undo_event(b->st);
        if (!o->err[0]) fail(o, "the %s handler failed", r->event_type);
        o->result = NULL;
        return;
    }
    if (!mark_processed(b->st, r->event_id, r->event_type)) {
        fail(o, "cannot record the event as processed: %s", store_error(b->st));
        undo_event(b->st);
        return;
    }
    savepoint(b->st, "RELEASE bus_event");
    o->result = "applied";
}

/* Replays one event inside the slice's transaction. */
static void replay_event(bus *b, struct outcome *o)
{
    const struct received *r = &o->r;
    if (!r->event || !r->event_id) {
        /* Not an event (the consumer dead-lettered it): nothing to rebuild. */
        o->result = "skipped";
        return;
    }
    if (!savepoint(b->st, "SAVEPOINT bus_event")) {
        fail(o, "cannot open a savepoint: %s", store_error(b->st));
        return;
    }
    o->err[0] = '\0';
    if (b->replay.fn(b->st, r->event, r->request_id, b->replay.arg, o->err, sizeof o->err) != 0) {
        undo_event(b->st);
        if (!o->err[0]) fail(o, "%s", "the replay handler failed");
        o->result = NULL;
        return;
    }
    savepoint(b->st, "RELEASE bus_event");
    o->result = "applied";
}

/* After the commit: ack, retry or dead-letter each message, and log it. */
static void settle_consumed(bus *b, struct delivery *d, struct outcome *o)
{
    const struct received *r = &o->r;
    if (r->deliveries > 1) metrics_counter_add("carshare_bus_redeliveries_total", "", 1);
    if (!o->result) {
        delivery_failed(b, d, r, o->err);
        return;
    }
    d->settle = SETTLE_ACK;
    if (strcmp(o->result, "duplicate") == 0) {
        metrics_counter_add("carshare_bus_duplicates_total", "", 1);
    } else if (strcmp(o->result, "applied") == 0) {
        /* Only types this service handles: whoever can publish cannot
         * make the registry grow with made-up event types. */
        char label[80];
        event_label(r->event_type, label, sizeof label);
        metrics_counter_add("carshare_bus_consumed_total", label, 1);
    }
    if (strcmp(o->result, "ignored") != 0)     /* every service sees every event */
        log_info("event=%s id=%s req=%s seq=%llu delivery=%llu result=%s ms=%.2f", r->event_type,
                 r->event_id, r->request_id, (unsigned long long)r->stream_seq,
                 (unsigned long long)r->deliveries, o->result, o->ms);
}

static void settle_replayed(bus *b, struct outcome *o)
{
    if (o->result) {
        if (strcmp(o->result, "applied") == 0) b->replay.count++;
        return;
    }
    char q[300];
    b->replay.failures++;
    log_warn("event=%s id=%s seq=%llu result=replay_failed error=%s", o->r.event_type,
             o->r.event_id ? o->r.event_id : "-", (unsigned long long)o->r.stream_seq,
             log_quote(q, sizeof q, o->err));
}

/* Marks the applied events of out[from..to) as failed: their writes are gone. */
static void lost_with_transaction(struct outcome *out, int from, int to, const char *why)
{
    for (int j = from; j < to; j++)
        if (out[j].result && strcmp(out[j].result, "applied") == 0) fail(&out[j], "%s", why);
}

static void apply_slice(bus *b, enum batch_kind kind, struct delivery *items, int k)
{
    struct outcome out[APPLY_PER_TURN];
    char why[300];
    sqlite3 *db = store_db(b->st);
    bool in_txn = store_begin(b->st) == SQLITE_OK;
    int txn_start = 0;      /* first event whose writes ride on the open transaction */

    for (int i = 0; i < k; i++) {
        struct outcome *o = &out[i];
        read_message(items[i].msg, &o->r);
        o->result = NULL;
        o->err[0] = '\0';
        o->ms = 0;
        if (!in_txn) {
            fail(o, "cannot begin a transaction: %s", store_error(b->st));
            continue;
        }
        double started = now_seconds();
        if (kind == BATCH_CONSUME) consume_event(b, o);
        else replay_event(b, o);
        o->ms = (now_seconds() - started) * 1000.0;
        if (sqlite3_get_autocommit(db)) {
            /* SQLite aborted the whole transaction (I/O error, disk
             * full...): the earlier events of the slice lost their writes. */
            snprintf(why, sizeof why, "the transaction was aborted: %s", store_error(b->st));
            lost_with_transaction(out, txn_start, i + 1, why);
            in_txn = store_begin(b->st) == SQLITE_OK;
            txn_start = i + 1;
        }
    }
    if (in_txn && store_commit(b->st) != SQLITE_OK) {
        snprintf(why, sizeof why, "commit failed: %s", store_error(b->st));
        lost_with_transaction(out, txn_start, k, why);
    }

    for (int i = 0; i < k; i++) {
        if (kind == BATCH_CONSUME) settle_consumed(b, &items[i], &out[i]);
        else settle_replayed(b, &out[i]);
        json_decref(out[i].r.event);
    }
}

/* ---- connection (callbacks run on nats.c threads) ---- */

static void request_setup(bus *b)
{
    pthread_mutex_lock(&b->mu);
    b->need_setup = true;
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->mu);
}

static void on_connected(natsConnection *nc, void *arg)
{
    (void)nc;
    log_info("msg=\"bus connected\"");
    request_setup(arg);
}

static void on_reconnected(natsConnection *nc, void *arg)
{
    (void)nc;
    log_info("msg=\"bus reconnected\"");
    request_setup(arg);
}

static void on_disconnected(natsConnection *nc, void *arg)
{
    (void)nc;
    bus *b = arg;
    atomic_store(&b->ready, false);
    metrics_gauge_set("carshare_bus_connected", "", 0);
    if (!is_stopping(b)) log_warn("msg=\"bus disconnected: retrying\" url=%s", b->url);
}

static void on_closed(natsConnection *nc, void *arg)
{
    (void)nc;
    bus *b = arg;
    pthread_mutex_lock(&b->mu);
    b->closed = true;
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->mu);
}

/* Starts connecting; returns the connection (maybe not connected yet). */
static natsConnection *connect_bus(bus *b)
{
    natsOptions *o = NULL;
    natsConnection *nc = NULL;
    natsStatus s = natsOptions_Create(&o);
    if (s == NATS_OK) s = natsOptions_SetURL(o, b->url);
    if (s == NATS_OK) s = natsOptions_SetName(o, b->service);
    if (s == NATS_OK) s = natsOptions_SetRetryOnFailedConnect(o, true, on_connected, b);
    if (s == NATS_OK) s = natsOptions_SetMaxReconnect(o, -1);
    if (s == NATS_OK) s = natsOptions_SetReconnectWait(o, 250);
    if (s == NATS_OK) s = natsOptions_SetTimeout(o, 2000);
    if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(o, on_disconnected, b);
    if (s == NATS_OK) s = natsOptions_SetReconnectedCB(o, on_reconnected, b);
    if (s == NATS_OK) s = natsOptions_SetClosedCB(o, on_closed, b);
    if (s == NATS_OK) s = natsConnection_Connect(&nc, o);
    natsOptions_Destroy(o);
    if (s == NATS_OK) {
        /* Connected at once: the relay sets up next, as after any first connect. */
        log_info("msg=\"bus connected\" url=%s", b->url);
    } else if (s == NATS_NOT_YET_CONNECTED) {
        log_warn("msg=\"nats-server not reachable yet: will keep trying\" url=%s", b->url);
    } else {
        char e[256];
        log_error("msg=\"cannot create the bus connection\" url=%s error=%s", b->url,
                  nats_error_text(s, 0, e, sizeof e));
        natsConnection_Destroy(nc);
        return NULL;
    }
    return nc;
}

/* Creates or updates the stream and the service's durable consumer. */
static bool setup_stream(bus *b, jsCtx *js)
{
    char e[256];
    const char *subjects[] = {STREAM_SUBJECTS};
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    sc.Name = STREAM_NAME;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_FileStorage;
    sc.Duplicates = DUPLICATE_WINDOW_S * NS_PER_S;

    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_AddStream(&si, js, &sc, NULL, &jerr);
    if (s != NATS_OK && jerr == JSStreamNameExistErr) {
        s = js_UpdateStream(&si, js, &sc, NULL, &jerr);
        if (s != NATS_OK) {
            /* Someone configured it differently (e.g. memory storage):
             * use it as it is rather than refuse to work. */
            log_warn("msg=\"stream exists with another configuration: kept\" error=%s",
                     nats_error_text(s, jerr, e, sizeof e));
            s = js_GetStreamInfo(&si, js, STREAM_NAME, NULL, &jerr);
        }
    }
    jsStreamInfo_Destroy(si);
    if (s != NATS_OK) {
        log_error("msg=\"cannot create the stream\" stream=%s error=%s", STREAM_NAME,
                  nats_error_text(s, jerr, e, sizeof e));
        return false;
    }
    if (b->nhandlers == 0) return true;

    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = b->durable;
    cc.DeliverPolicy = js_DeliverAll;
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = ACK_WAIT_S * NS_PER_S;
    cc.FilterSubject = STREAM_SUBJECTS;
    cc.MaxAckPending = MAX_ACK_PENDING;

    jsConsumerInfo *ci = NULL;
    jerr = 0;
    s = js_AddConsumer(&ci, js, STREAM_NAME, &cc, NULL, &jerr);
    if (s != NATS_OK && (jerr == JSConsumerNameExistErr || jerr == JSConsumerExistingActiveErr)) {
        s = js_UpdateConsumer(&ci, js, STREAM_NAME, &cc, NULL, &jerr);
        if (s != NATS_OK) {
            log_warn("msg=\"consumer exists with another configuration: kept\" consumer=%s error=%s",
                     b->durable, nats_error_text(s, jerr, e, sizeof e));
            s = js_GetConsumerInfo(&ci, js, STREAM_NAME, b->durable, NULL, &jerr);
        }
    }
    jsConsumerInfo_Destroy(ci);
    if (s != NATS_OK) {
        log_error("msg=\"cannot create the consumer\" consumer=%s error=%s", b->durable,
                  nats_error_text(s, jerr, e, sizeof e));
        return false;
    }
    return true;
}

/* ---- relay (relay thread) ---- */

static void on_publish_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js;
    bus *b = closure;
    const char *id = NULL;
    natsMsgHeader_Get(msg, "Nats-Msg-Id", &id);
    pthread_mutex_lock(&b->pub_mu);
    if (pa && id) {
        /* Acks come back in order: start where the last one matched. */
        for (int k = 0; k < b->npending; k++) {
            int i = (b->pending_hint + k) % b->npending;
            if (strcmp(b->pending[i].event_id, id) == 0) {
                b->pending[i].acked = true;
                b->pending_hint = (i + 1) % b->npending;
                break;
            }
        }
    } else if (pae) {
        snprintf(b->last_pub_error, sizeof b->last_pub_error, "%s (status %d, js %d)",
                 pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err), (int)pae->Err,
                 (int)pae->ErrCode);
    }
    pthread_mutex_unlock(&b->pub_mu);
    if (pae && (pae->Err == NATS_NO_RESPONDERS || pae->ErrCode == JSStreamNotFoundErr))
        request_setup(b);   /* the stream vanished (server restarted empty?) */
    natsMsg_Destroy(msg);
}

/* The relay thread's bookkeeping of rows published but not yet deleted. */
struct relay_marks {
    long long published;        /* this row and every one before it are in JetStream */
    long long deleted;          /* rows up to here are deleted */
    double published_at;        /* when published first got ahead of deleted */
};

/* Loads up to RELAY_BATCH outbox rows past the published mark into
 * b->pending and builds their messages in msgs. Returns the count, or -1
 * on a database error. */
static int load_outbox(bus *b, store *rs, natsMsg **msgs, const struct relay_marks *marks)
{
    sqlite3_stmt *s = store_prepare(rs,
        "SELECT seq, event_id, event_type, payload, request_id FROM outbox WHERE seq > ? "
        "ORDER BY seq LIMIT ?");
    if (!s) return -1;
    sqlite3_bind_int64(s, 1, marks->published);
    sqlite3_bind_int(s, 2, RELAY_BATCH);
    int n = 0, rc;
    pthread_mutex_lock(&b->pub_mu);
    while (n < RELAY_BATCH && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *event_id = (const char *)sqlite3_column_text(s, 1);
        const char *event_type = (const char *)sqlite3_column_text(s, 2);
        const char *payload = (const char *)sqlite3_column_text(s, 3);
        const char *request_id = (const char *)sqlite3_column_text(s, 4);
        char subject[128];
        snprintf(subject, sizeof subject, SUBJECT_PREFIX "%s", event_type);
        natsMsg *m = NULL;
        if (natsMsg_Create(&m, subject, NULL, payload, sqlite3_column_bytes(s, 3)) != NATS_OK ||
            natsMsgHeader_Set(m, "Nats-Msg-Id", event_id) != NATS_OK ||
            (request_id && natsMsgHeader_Set(m, "X-Request-Id", request_id) != NATS_OK)) {
            natsMsg_Destroy(m);
            break;
        }
        b->pending[n].seq = sqlite3_column_int64(s, 0);
        snprintf(b->pending[n].event_id, sizeof b->pending[n].event_id, "%s", event_id);
        b->pending[n].acked = false;
        msgs[n++] = m;
    }
    b->npending = n;
    b->pending_hint = 0;
    b->last_pub_error[0] = '\0';
    pthread_mutex_unlock(&b->pub_mu);
    sqlite3_reset(s);
    return n;
}

static bool delete_published(bus *b, store *rs)
{
    if (store_begin(rs) != SQLITE_OK) return false;
    sqlite3_stmt *s = store_prepare(rs, "DELETE FROM outbox WHERE seq = ?");
    bool ok = s != NULL;
    pthread_mutex_lock(&b->pub_mu);
    for (int i = 0; ok && i < b->npending; i++) {
        if (!b->pending[i].acked) continue;
        sqlite3_reset(s);
        sqlite3_bind_int64(s, 1, b->pending[i].seq);
        ok = sqlite3_step(s) == SQLITE_DONE;
    }
    pthread_mutex_unlock(&b->pub_mu);
    if (s) sqlite3_reset(s);
    if (!ok) {
        store_rollback(rs);
        return false;
    }
    return store_commit(rs) == SQLITE_OK;
}

/* Deletes every row up to the published mark, in one short transaction. */
static bool delete_through_mark(store *rs, struct relay_marks *marks)
{
    if (store_begin(rs) != SQLITE_OK) return false;
    sqlite3_stmt *s = store_prepare(rs, "DELETE FROM outbox WHERE seq <= ?");
    bool ok = s != NULL;
    if (ok) {
        sqlite3_bind_int64(s, 1, marks->published);
        ok = sqlite3_step(s) == SQLITE_DONE;
        sqlite3_reset(s);
    }
    if (!ok || store_commit(rs) != SQLITE_OK) {
        char e[256];
        store_rollback(rs);
        log_error("msg=\"cannot delete published events from the outbox\" error=%s",
                  log_quote(e, sizeof e, store_error(rs)));
        marks->published_at = now_seconds() + 1.0;     /* try again in a while */
        return false;
    }
    marks->deleted = marks->published;
    return true;
}

/* Milliseconds until the published rows are due for deletion (0: now), or
 * -1 when there are none. */
static long delete_due_in(const struct relay_marks *marks)
{
    if (marks->published <= marks->deleted) return -1;
    double left = marks->published_at + RELAY_DELETE_MS / 1000.0 - now_seconds();
    return left <= 0 ? 0 : (long)(left * 1000.0) + 1;
}

/* Publishes one batch. Returns the number of rows published, or -1 when
 * something failed (the rest is retried later). */
static int relay_batch(bus *b, store *rs, jsCtx *js, struct relay_marks *marks)
{
    natsMsg *msgs[RELAY_BATCH];
    int n = load_outbox(b, rs, msgs, marks);
    if (n <= 0) return n;

    char e[256];
    natsStatus s = NATS_OK;
    for (int i = 0; i < n; i++) {
        if (s == NATS_OK) s = js_PublishMsgAsync(js, &msgs[i], NULL);
        natsMsg_Destroy(msgs[i]);   /* no-op once the library owns it */
    }
    if (s != NATS_OK) log_warn("msg=\"publish failed\" error=%s", nats_error_text(s, 0, e, sizeof e));

    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = PUBLISH_WAIT_MS;
    if (js_PublishAsyncComplete(js, &po) != NATS_OK) {
        /* Take the unanswered messages back: they are retried from the
         * outbox with the same ids. */
        natsMsgList unanswered = {0};
        if (js_PublishAsyncGetPendingList(&unanswered, js) == NATS_OK) natsMsgList_Destroy(&unanswered);
    }

    int acked = 0;
    pthread_mutex_lock(&b->pub_mu);
    for (int i = 0; i < b->npending; i++) acked += b->pending[i].acked;
    if (acked < n)
        log_warn("msg=\"events not acknowledged by JetStream: will retry\" published=%d unconfirmed=%d "
                 "error=%s", acked, n - acked,
                 log_quote(e, sizeof e, b->last_pub_error[0] ? b->last_pub_error : "timeout"));
    long long last_seq = n > 0 ? b->pending[n - 1].seq : 0;
    pthread_mutex_unlock(&b->pub_mu);

    if (acked == n) {
        /* The whole batch, hence every row up to its last: delete later. */
        if (marks->published <= marks->deleted) marks->published_at = now_seconds();
        marks->published = last_seq;
        metrics_counter_add("carshare_bus_published_total", "", acked);
    } else if (acked > 0) {
        /* Holes: the acknowledged rows go now, the others are read again. */
        if (!delete_published(b, rs)) {
            /* Published but still in the outbox: they go again, and the
             * duplicate window (or the consumers) absorb it. */
            log_error("msg=\"cannot delete published events from the outbox\" error=%s",
                      log_quote(e, sizeof e, store_error(rs)));
            return -1;
        }
        metrics_counter_add("carshare_bus_published_total", "", acked);
    }
    return acked == n ? n : -1;
}

/* The rows not yet published (published ones may wait for their delete). */
static void update_backlog(store *rs, const struct relay_marks *marks)
{
    sqlite3_stmt *s = store_prepare(rs, "SELECT count(*) FROM outbox WHERE seq > ?");
    if (s) sqlite3_bind_int64(s, 1, marks->published);
    if (s && sqlite3_step(s) == SQLITE_ROW)
        metrics_gauge_set("carshare_bus_outbox_backlog", "", (double)sqlite3_column_int64(s, 0));
    if (s) sqlite3_reset(s);
}

static void *relay_main(void *arg)
{
    bus *b = arg;
    store *rs = NULL;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    long backoff = 0;
    long delay = 0;         /* before the next round; 0 = at once */
    bool set_up = false;    /* stream and consumer exist since the last (re)connect */
    struct relay_marks marks = {0, 0, 0};

    for (;;) {
        long due = delete_due_in(&marks);
        pthread_mutex_lock(&b->mu);
        struct timespec deadline = deadline_in(due >= 0 && due < delay ? due : delay);
        while (!b->stopping && !b->wake_relay && !b->need_setup && !deadline_passed(&deadline))
            pthread_cond_timedwait(&b->cond, &b->mu, &deadline);
        if (b->stopping) {
            pthread_mutex_unlock(&b->mu);
            break;
        }
        b->wake_relay = false;
        if (b->need_setup) set_up = false;
        b->need_setup = false;
        pthread_mutex_unlock(&b->mu);

        if (!rs) {
            if (!(rs = store_open_path(b->db_path, NULL))) {
                delay = 1000;
                continue;
            }
            /* The relay only deletes what JetStream already holds: a
             * delete lost in a crash republishes an event that the server
             * (same Nats-Msg-Id) or the consumers (same eventId) discard.
             * So its commits need no fsync, and it holds the write lock,
             * which the loop's BEGIN IMMEDIATE waits for, only briefly.
             * NORMAL, not OFF: in WAL mode both skip the fsync at commit,
             * but a checkpoint run by this connection (auto-checkpoint
             * at its commit) must still fsync the database file before
             * the WAL is reused, or a power loss would lose the loop's
             * acknowledged commits that the checkpoint copied. */
            store_exec(rs, "PRAGMA synchronous=NORMAL");
            /* The relay yields: SQLite's own backoff (1, 2, 5 ... ms)
             * rather than the store's fast polling, so that when both wait
             * for the write lock the loop, on which requests wait, gets
             * it first, and the relay's deletes gather into fewer, larger
             * transactions. */
            sqlite3_busy_timeout(store_db(rs), 5000);
        }
        /* Whatever NATS is doing: rows published before an outage do not
         * wait for it to end. */
        if (delete_due_in(&marks) == 0) delete_through_mark(rs, &marks);
        if (!nc) {
            if (!(nc = connect_bus(b))) {
                delay = 1000;
                continue;
            }
            pthread_mutex_lock(&b->mu);
            b->nc = nc;
            pthread_cond_broadcast(&b->cond);
            pthread_mutex_unlock(&b->mu);
        }
        if (!js) {
            jsOptions jo;
            jsOptions_Init(&jo);
            jo.Wait = PUBLISH_WAIT_MS;
            jo.PublishAsync.AckHandler = on_publish_ack;
            jo.PublishAsync.AckHandlerClosure = b;
            if (natsConnection_JetStream(&js, nc, &jo) != NATS_OK) {
                js = NULL;
                delay = 1000;
                continue;
            }
        }

        update_backlog(rs, &marks);
        if (natsConnection_Status(nc) != NATS_CONN_STATUS_CONNECTED) {
            delay = b->poll_ms;     /* on_reconnected wakes us */
            continue;
        }
        if (!set_up) {
            if (!setup_stream(b, js)) {
                backoff = backoff ? (backoff * 2 > 5000 ? 5000 : backoff * 2) : 250;
                delay = backoff;
                continue;
            }
            set_up = true;
            backoff = 0;
            atomic_store(&b->ready, true);
            metrics_gauge_set("carshare_bus_connected", "", 1);
            pthread_mutex_lock(&b->mu);
            b->setup_gen++;
            pthread_cond_broadcast(&b->cond);
            pthread_mutex_unlock(&b->mu);
            log_info("msg=\"bus ready\" stream=%s consumer=%s", STREAM_NAME,
                     b->nhandlers ? b->durable : "-");
        }

        int published = relay_batch(b, rs, js, &marks);
        if (published < 0) {
            backoff = backoff ? (backoff * 2 > 5000 ? 5000 : backoff * 2) : 100;
            delay = backoff;
        } else {
            backoff = 0;
            delay = published == RELAY_BATCH ? 0 : b->poll_ms;
            if (published > 0) update_backlog(rs, &marks);
        }
    }

    if (rs && marks.published > marks.deleted) delete_through_mark(rs, &marks);

    if (js) {
        /* Nothing is left in flight, but let late acks land before the
         * context goes. */
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = 100;
        if (js_PublishAsyncComplete(js, &po) != NATS_OK) {
            natsMsgList unanswered = {0};
            if (js_PublishAsyncGetPendingList(&unanswered, js) == NATS_OK) natsMsgList_Destroy(&unanswered);
        }
        jsCtx_Destroy(js);
    }
    store_close(rs);
    return NULL;
}

/* ---- consumer (fetch thread) ----
 *
 * nats.c 3.4.1's Fetch goes wrong when messages already wait in the
 * subscription as it starts: messages delivered for the pull requests of
 * earlier fetches, typically requests made while nats-server was away,
 * kept in the reconnect buffer and sent at the reconnect (the server then
 * serves all of them at once). Having taken c of those, it asks the server
 * for batch - c more but waits until it holds exactly batch - c, so with
 * c >= batch / 2 it keeps everything that arrives until the timeout:
 * hundreds of messages for a batch of 64, past its own array and ours.
 * Hence: no fetch while disconnected (no pull request is buffered), what
 * already waits is taken by Fetch(1), which returns at once without asking
 * the server when a message is there, and nothing here assumes that Fetch
 * returned at most the batch. */

/* The messages of one pull, owned here until settled. */
struct pull {
    struct delivery *items;
    int n, cap;
};

/* Moves the messages of list into p and destroys list. On a failed
 * allocation the messages are dropped unacknowledged: the server delivers
 * them again after ACK_WAIT_S. */
static void keep_messages(struct pull *p, natsMsgList *list)
{
    if (list->Count > p->cap - p->n) {
        int cap = p->n + (list->Count > FETCH_BATCH ? list->Count : FETCH_BATCH);
        struct delivery *items = realloc(p->items, (size_t)cap * sizeof *items);
        if (!items) {
            log_error("msg=\"out of memory: %d messages left for redelivery\"", list->Count);
            natsMsgList_Destroy(list);
            return;
        }
        p->items = items;
        p->cap = cap;
    }
    for (int i = 0; i < list->Count; i++) {
        p->items[p->n++] = (struct delivery){.msg = list->Msgs[i], .settle = SETTLE_NONE};
        list->Msgs[i] = NULL;       /* ours now: natsMsgList_Destroy skips it */
    }
    natsMsgList_Destroy(list);
}

static int waiting_messages(natsSubscription *sub)
{
    int n = 0;
    return natsSubscription_GetPending(sub, &n, NULL) == NATS_OK ? n : 0;
}

/* Pulls the next messages into p: a batch from the server when nothing
 * waits in the subscription, else what waits, one message per Fetch. The
 * status is the last Fetch's, or NATS_OK when p holds messages. */
static natsStatus pull_messages(natsSubscription *sub, struct pull *p, jsErrCode *jerr)
{
    natsStatus s;
    int batch = waiting_messages(sub) > 0 ? 1 : FETCH_BATCH;
    do {
        natsMsgList list = {0};
        s = natsSubscription_Fetch(&list, sub, batch, FETCH_WAIT_MS, jerr);
        if (list.Count == 0) {
            natsMsgList_Destroy(&list);
            break;
        }
        if (list.Count > batch)     /* should no longer happen: say so if it does */
            log_warn("msg=\"fetch returned more messages than asked\" asked=%d got=%d", batch,
                     list.Count);
        keep_messages(p, &list);
    } while (batch == 1 && p->n < FETCH_BATCH && waiting_messages(sub) > 0);
    return p->n > 0 ? NATS_OK : s;
}

static void send_acks(struct delivery *items, int n)
{
    for (int i = 0; i < n; i++) {
        switch (items[i].settle) {
        case SETTLE_ACK: natsMsg_Ack(items[i].msg, NULL); break;
        case SETTLE_NAK: natsMsg_NakWithDelay(items[i].msg, items[i].nak_delay_ms, NULL); break;
        case SETTLE_NONE: natsMsg_Nak(items[i].msg, NULL); break;   /* not applied: stopping */
        }
    }
}

/* Blocks until the relay has set the stream up once; false when stopping. */
static natsConnection *wait_until_set_up(bus *b)
{
    pthread_mutex_lock(&b->mu);
    while (!b->stopping && b->setup_gen == 0) pthread_cond_wait(&b->cond, &b->mu);
    natsConnection *nc = b->stopping ? NULL : b->nc;
    pthread_mutex_unlock(&b->mu);
    return nc;
}

static void *fetch_main(void *arg)
{
    bus *b = arg;
    natsConnection *nc = wait_until_set_up(b);
    jsCtx *js = NULL;
    natsSubscription *sub = NULL;
    int errors = 0;
    char e[256];

    if (nc && natsConnection_JetStream(&js, nc, NULL) != NATS_OK) js = NULL;
    while (js && !is_stopping(b)) {
        if (!sub) {
            jsSubOptions so;
            jsSubOptions_Init(&so);
            so.Stream = STREAM_NAME;
            so.Consumer = b->durable;
            jsErrCode jerr = 0;
            natsStatus s = js_PullSubscribe(&sub, js, STREAM_SUBJECTS, b->durable, NULL, &so, &jerr);
            if (s != NATS_OK) {
                sub = NULL;
                if (errors++ % 20 == 0)
                    log_warn("msg=\"cannot bind to the consumer: retrying\" consumer=%s error=%s",
                             b->durable, nats_error_text(s, jerr, e, sizeof e));
                if (errors % 5 == 0) request_setup(b);
                pause_unless_stopping(b, 500);
                continue;
            }
        }

        if (natsConnection_Status(nc) != NATS_CONN_STATUS_CONNECTED) {
            /* A pull request now would wait in the reconnect buffer and
             * be served with the backlog at the reconnect (see above). */
            pause_unless_stopping(b, 100);
            continue;
        }
        struct pull p = {0};
        jsErrCode jerr = 0;
        natsStatus s = pull_messages(sub, &p, &jerr);
        if (p.n == 0) {
            free(p.items);
            if (s == NATS_TIMEOUT) {        /* nothing waiting */
                errors = 0;
                metrics_gauge_set("carshare_bus_consumer_lag", "", 0);
                continue;
            }
            if (errors++ % 20 == 0)
                log_warn("msg=\"fetch failed: retrying\" consumer=%s error=%s", b->durable,
                         nats_error_text(s, jerr, e, sizeof e));
            if (errors % 5 == 0) {
                /* Perhaps the consumer is gone: recreate it and rebind. */
                natsSubscription_Destroy(sub);
                sub = NULL;
                request_setup(b);
            }
            pause_unless_stopping(b, errors < 10 ? 100L * errors : 1000);
            continue;
        }
        errors = 0;

        jsMsgMetaData *meta = NULL;
        if (natsMsg_GetMetaData(&meta, p.items[p.n - 1].msg) == NATS_OK) {
            metrics_gauge_set("carshare_bus_consumer_lag", "", (double)meta->NumPending);
            jsMsgMetaData_Destroy(meta);
        }
        struct batch batch = {.kind = BATCH_CONSUME, .items = p.items, .n = p.n};
        run_on_loop(b, &batch);
        send_acks(p.items, p.n);        /* each message acked or nak'ed once */
        for (int i = 0; i < p.n; i++) natsMsg_Destroy(p.items[i].msg);
        free(p.items);
    }
    natsSubscription_Destroy(sub);
    jsCtx_Destroy(js);
    return NULL;
}

/* ---- replay (replay thread) ---- */

static void finish_replay(bus *b)
{
    struct replay *r = &b->replay;
    if (!r->active) return;
    r->active = false;
    bool ok = r->reached_end && r->failures == 0;
    log_info("msg=\"replay finished\" ok=%d events=%ld failures=%ld", ok, r->count, r->failures);
    if (r->done) r->done(r->arg, ok, r->count);
}

/* Reads the stream up to its last sequence at start; sets reached_end. */
static void replay_stream(bus *b, natsConnection *nc)
{
    char e[256];
    jsCtx *js = NULL;
    jsStreamInfo *si = NULL;
    natsSubscription *sub = NULL;
    jsErrCode jerr = 0;
    if (natsConnection_JetStream(&js, nc, NULL) != NATS_OK) return;

    natsStatus s = js_GetStreamInfo(&si, js, STREAM_NAME, NULL, &jerr);
    if (s != NATS_OK) {
        log_error("msg=\"replay: cannot read the stream\" error=%s", nats_error_text(s, jerr, e, sizeof e));
        jsCtx_Destroy(js);
        return;
    }
    uint64_t last = si->State.LastSeq, msgs = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    if (msgs == 0) {
        b->replay.reached_end = true;
        jsCtx_Destroy(js);
        return;
    }

    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = STREAM_NAME;
    so.Config.DeliverPolicy = js_DeliverAll;
    so.Config.AckPolicy = js_AckAll;
    so.Config.InactiveThreshold = 60 * NS_PER_S;   /* cleaned up if we die */
    s = js_PullSubscribe(&sub, js, STREAM_SUBJECTS, NULL, NULL, &so, &jerr);
    if (s != NATS_OK) {
        log_error("msg=\"replay: cannot create a consumer\" error=%s", nats_error_text(s, jerr, e, sizeof e));
        jsCtx_Destroy(js);
        return;
    }

    int cap = REPLAY_BATCH;
    struct delivery *items = calloc((size_t)cap, sizeof *items);
    int timeouts = 0;
    while (items && !is_stopping(b) && !b->replay.reached_end) {
        natsMsgList list = {0};
        s = natsSubscription_Fetch(&list, sub, REPLAY_BATCH, 1000, &jerr);
        if (list.Count == 0) {
            natsMsgList_Destroy(&list);
            /* Messages up to `last` were deleted meanwhile (limits), or
             * the server is gone: give up after a while. */
            if (++timeouts >= 10) {
                log_error("msg=\"replay: the stream stopped answering\" error=%s",
                          nats_error_text(s, jerr, e, sizeof e));
                break;
            }
            continue;
        }
        timeouts = 0;
        if (list.Count > cap) {     /* Fetch may return more than asked (see the consumer) */
            struct delivery *more = realloc(items, (size_t)list.Count * sizeof *items);
            if (!more) {
                natsMsgList_Destroy(&list);
                break;
            }
            items = more;
            cap = list.Count;
        }
        int n = 0;
        for (int i = 0; i < list.Count && !b->replay.reached_end; i++) {
            jsMsgMetaData *meta = NULL;
            uint64_t seq = 0, pending = 1;
            if (natsMsg_GetMetaData(&meta, list.Msgs[i]) == NATS_OK) {
                seq = meta->Sequence.Stream;
                pending = meta->NumPending;
                jsMsgMetaData_Destroy(meta);
            }
            if (seq > last) {
                b->replay.reached_end = true;
                break;
            }
            items[n++] = (struct delivery){.msg = list.Msgs[i]};
            if (seq >= last || pending == 0) b->replay.reached_end = true;
        }
        struct batch batch = {.kind = BATCH_REPLAY, .items = items, .n = n};
        bool complete = n == 0 || run_on_loop(b, &batch);
        if (n > 0) natsMsg_Ack(items[n - 1].msg, NULL);
        natsMsgList_Destroy(&list);
        if (!complete) {
            b->replay.reached_end = false;
            break;
        }
    }
    free(items);
    natsSubscription_Unsubscribe(sub);   /* deletes the ephemeral consumer */
    natsSubscription_Destroy(sub);
    jsCtx_Destroy(js);
}

static void *replay_main(void *arg)
{
    bus *b = arg;
    natsConnection *nc = wait_until_set_up(b);
    if (nc) replay_stream(b, nc);

    struct batch *done = calloc(1, sizeof *done);
    pthread_mutex_lock(&b->mu);
    if (done && !b->stopping) {
        done->kind = BATCH_REPLAY_DONE;
        enqueue_locked(b, done);
        done = NULL;
    }
    pthread_mutex_unlock(&b->mu);
    free(done);     /* stopping: bus_stop reports the result */
    event_active(b->inbox, EV_READ, 0);
    return NULL;
}

int bus_replay(bus *b, bus_handler h, void *arg, void (*done)(void *arg, bool ok, long count))
{
    if (!b->started || b->stopped || b->replay.active) return -1;
    if (b->replay.joinable) {   /* the previous replay's thread has finished */
        pthread_join(b->replay.thread, NULL);
        b->replay.joinable = false;
    }
    b->replay = (struct replay){.fn = h, .arg = arg, .done = done, .active = true};
    if (pthread_create(&b->replay.thread, NULL, replay_main, b) != 0) {
        b->replay.active = false;
        log_error("msg=\"cannot start the replay thread\"");
        return -1;
    }
    b->replay.joinable = true;
    log_info("msg=\"replay started\"");
    return 0;
}

/* ---- life cycle ---- */

static void wake_relay(void *arg)
{
    bus *b = arg;
    pthread_mutex_lock(&b->mu);
    b->wake_relay = true;
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->mu);
}

/* A durable name may not contain '.', '*', '>' or white space. */
static char *durable_name(const char *service)
{
    char *d = strdup(service);
    for (char *p = d; p && *p; p++)
        if (*p == '.' || *p == '*' || *p == '>' || isspace((unsigned char)*p)) *p = '_';
    return d;
}

bus *bus_new(struct event_base *base, store *st, const char *service_name)
{
    bus *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->base = base;
    b->st = st;
    b->service = strdup(service_name);
    b->durable = durable_name(service_name);
    b->db_path = strdup(store_path(st));
    b->url = strdup(config_str("NATS_URL", "nats://127.0.0.1:4222"));
    b->poll_ms = config_int("BUS_POLL_MS", 1000, 10, 600000);
    b->max_deliver = config_int("BUS_MAX_DELIVER", 5, 1, 1000);
    b->retry_ms = config_int("BUS_RETRY_MS", 200, 1, MAX_RETRY_DELAY_MS);
    b->pending = calloc(RELAY_BATCH, sizeof *b->pending);
    b->inbox = event_new(base, -1, 0, on_inbox, b);

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&b->mu, NULL);
    pthread_mutex_init(&b->pub_mu, NULL);

    if (!b->service || !b->durable || !b->db_path || !b->url || !b->pending || !b->inbox) {
        log_error("msg=\"out of memory creating the bus\"");
        bus_free(b);
        return NULL;
    }
    store_on_commit(st, wake_relay, b);
    metrics_gauge_set("carshare_bus_connected", "", 0);
    return b;
}

void bus_on(bus *b, const char *event_type, bus_handler h, void *arg)
{
    struct handler *grown = realloc(b->handlers, (b->nhandlers + 1) * sizeof *grown);
    char *type = strdup(event_type);
    if (!grown || !type) {
        free(type);
        if (grown) b->handlers = grown;
        log_error("msg=\"out of memory registering a handler\" event=%s", event_type);
        return;
    }
    b->handlers = grown;
    b->handlers[b->nhandlers++] = (struct handler){.event_type = type, .fn = h, .arg = arg};
}

int bus_start(bus *b)
{
    if (b->stopped) return -1;
    if (b->started) return 0;
    if (pthread_create(&b->relay_thread, NULL, relay_main, b) != 0) {
        log_error("msg=\"cannot start the outbox relay thread\"");
        return -1;
    }
    b->relay_started = b->started = true;
    if (b->nhandlers) {
        if (pthread_create(&b->fetch_thread, NULL, fetch_main, b) != 0) {
            log_error("msg=\"cannot start the consumer thread\"");
            return -1;
        }
        b->fetch_started = true;
    }
    log_info("msg=\"bus started\" url=%s consumer=%s handlers=%zu", b->url,
             b->nhandlers ? b->durable : "-", b->nhandlers);
    return 0;
}

void bus_stop(bus *b)
{
    if (!b || b->stopped) return;
    b->stopped = true;
    store_on_commit(b->st, NULL, NULL);     /* the store may outlive the bus */
    if (!b->started) return;

    pthread_mutex_lock(&b->mu);
    b->stopping = true;
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->mu);

    /* Consumers first: they ack through the connection the relay made. */
    if (b->fetch_started) pthread_join(b->fetch_thread, NULL);
    if (b->replay.joinable) pthread_join(b->replay.thread, NULL);
    b->replay.joinable = false;
    if (b->relay_started) pthread_join(b->relay_thread, NULL);
    b->fetch_started = b->relay_started = false;

    /* Only finished replays can be left on the queue now. */
    pthread_mutex_lock(&b->mu);
    while (b->queue) {
        struct batch *batch = b->queue;
        unlink_batch(b, batch);
        if (batch->kind == BATCH_REPLAY_DONE) free(batch);
    }
    pthread_mutex_unlock(&b->mu);
    finish_replay(b);

    if (b->nc) {
        natsConnection_Close(b->nc);
        struct timespec deadline = deadline_in(5000);
        pthread_mutex_lock(&b->mu);
        while (!b->closed && !deadline_passed(&deadline))
            pthread_cond_timedwait(&b->cond, &b->mu, &deadline);
        bool closed = b->closed;
        pthread_mutex_unlock(&b->mu);
        if (!closed) log_warn("msg=\"bus connection did not report closing in time\"");
        natsConnection_Destroy(b->nc);
        b->nc = NULL;
    }
    atomic_store(&b->ready, false);
    metrics_gauge_set("carshare_bus_connected", "", 0);
    log_info("msg=\"bus stopped\"");
}

void bus_free(bus *b)
{
    if (!b) return;
    bus_stop(b);
    if (b->inbox) event_free(b->inbox);
    for (size_t i = 0; i < b->nhandlers; i++) free(b->handlers[i].event_type);
    free(b->handlers);
    free(b->pending);
    free(b->service);
    free(b->durable);
    free(b->db_path);
    free(b->url);
    pthread_mutex_destroy(&b->mu);
    pthread_mutex_destroy(&b->pub_mu);
    pthread_cond_destroy(&b->cond);
    free(b);
}

bool bus_connected(void *arg)
{
    bus *b = arg;
    return b && atomic_load(&b->ready);
}

/* ---- GET /admin/deadLetters ---- */

static json_t *dead_letter_item(sqlite3_stmt *s)
{
    const char *payload = (const char *)sqlite3_column_text(s, 4);
    json_t *event = payload ? json_loads(payload, 0, NULL) : NULL;
    if (!event) event = json_string(payload ? payload : "");
    json_t *item = json_pack("{s:I, s:s, s:s, s:s, s:o, s:s?, s:I, s:s, s:I, s:s}",
                             "id", (json_int_t)sqlite3_column_int64(s, 0),
                             "eventId", (const char *)sqlite3_column_text(s, 1),
                             "eventType", (const char *)sqlite3_column_text(s, 2),
                             "subject", (const char *)sqlite3_column_text(s, 3),
                             "event", event,
                             "requestId", (const char *)sqlite3_column_text(s, 5),
                             "deliveries", (json_int_t)sqlite3_column_int64(s, 6),
                             "error", (const char *)sqlite3_column_text(s, 7),
                             "streamSequence", (json_int_t)sqlite3_column_int64(s, 8),
                             "createdAt", (const char *)sqlite3_column_text(s, 9));
    return item;
}

static void dead_letters_route(http_req *req, void *arg)
{
    bus *b = arg;
    long page, size;
    if (!rep_page_query(req, &page, &size))
        return;
    long long total = -1;
    sqlite3_stmt *s = store_prepare(b->st, "SELECT count(*) FROM dead_letters");
    if (s && sqlite3_step(s) == SQLITE_ROW) total = sqlite3_column_int64(s, 0);
    if (s) sqlite3_reset(s);
    s = store_prepare(b->st,
        "SELECT id, event_id, event_type, subject, payload, request_id, deliveries, error,"
        " stream_seq, created_at FROM dead_letters ORDER BY id LIMIT ? OFFSET ?");
    if (total < 0 || !s) {
        http_reply_error(req, 500, "cannot read the dead letters: %s", store_error(b->st));
        return;
    }
    sqlite3_bind_int64(s, 1, size);
    sqlite3_bind_int64(s, 2, (sqlite3_int64)page * size);
    json_t *items = json_array();
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) json_array_append_new(items, dead_letter_item(s));
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
        json_decref(items);
        http_reply_error(req, 500, "cannot read the dead letters: %s", store_error(b->st));
        return;
    }
    rep_reply_collection(req, "deadLetters", items, page, size, total);
}

void bus_register_routes(bus *b, http_server *s)
{
    http_server_route(s, "GET", "/admin/deadLetters", dead_letters_route, b);
}
