/* bus.c: events on NATS JetStream with a transactional outbox and an
 * idempotent consumer (see bus.h, whose top comment is the specification).
 * This file holds the bus object, its connection to NATS, the stream and
 * consumer setup, start and stop, and the envelope (UUIDs, timestamps);
 * the outbox and its relay are in outbox.c, consuming, dead letters and
 * replay in consumer.c; bus_private.h is what the three share.
 *
 * Threads. The event loop never makes a NATS call that can block. Three
 * kinds of worker do:
 *  - the relay thread (outbox.c) owns the connection's life: it connects
 *    (bus_connect: retrying with a jittered pause of at most a second
 *    until nats-server answers; see "Connecting" below), creates or
 *    updates the stream and the durable consumer after every
 *    (re)connection (bus_setup_stream), and drains the outbox through its
 *    own SQLite connection.
 *  - the fetch thread (consumer.c) pulls batches from the service's
 *    durable consumer and hands them to the loop, waits until the loop has
 *    applied them, then acks or naks each message.
 *  - a replay thread (consumer.c), while bus_replay runs, reads the whole
 *    stream through an ephemeral consumer and hands it to the loop the
 *    same way.
 *
 * Shutdown. bus_stop raises `stopping`; a worker waiting for the loop takes
 * its batch back (naks what was not applied, so another replica gets it at
 * once), and threads are joined before the connection is closed. The
 * connection callbacks point at the bus, so bus_stop waits for the closed
 * callback, the last one nats.c delivers, before the bus can be freed.
 *
 * Credentials. The bus is not open to whoever reaches it: nats-server
 * knows one user per service (scripts/natsauth.py writes its
 * configuration) that may publish only that service's event types and use
 * only the JetStream API calls of its own consumer. NATS_USER and
 * NATS_PASSWORD (or NATS_PASSWORD_FILE, a file holding it, for mounted
 * secrets) name it; without NATS_USER the connection is anonymous, which a
 * nats-server with users refuses. Replies come to _INBOX.<user>.…, so a
 * user's subscribe permission covers its own replies and nobody else's.
 *
 * Environment: NATS_URL (nats://127.0.0.1:4222; a comma-separated list for
 * a cluster: see set_servers), BUS_POLL_MS (1000),
 * BUS_MAX_DELIVER (5), BUS_RETRY_MS (200: first redelivery delay, doubled
 * at each delivery, at most 30 s), BUS_PROCESSED_KEEP_S (604800),
 * BUS_DEAD_LETTERS_MAX (10000) and BUS_UPKEEP_MS (60000: how often they are
 * applied; processed.h), BUS_STREAM_REPLICAS (1), BUS_STREAM_MAX_AGE_S
 * (604800) and BUS_STREAM_MAX_BYTES (1 GiB): the stream's retention;
 * BUS_STREAM_DUPLICATE_WINDOW_S (30): its de-duplication window;
 * BUS_STREAM_OWNER (0): 1 makes this bus bring an existing stream's
 * limits to these (only a bus user that may update the stream).
 *
 * Retention. Without limits the stream grows for ever (the soak took
 * nats-server's storage from 9 to 134 MB in 4 minutes). The stream keeps
 * events for BUS_STREAM_MAX_AGE_S and at most BUS_STREAM_MAX_BYTES, the
 * oldest dropped first (limits retention, discard old). The limits hold
 * whether or not consumers have read an event, so they must outlast the
 * longest time a consumer may lag: 7 days is the window processed.h already
 * assumes no outage outlives unnoticed, and with the age limit no longer
 * than BUS_PROCESSED_KEEP_S every event the stream can still deliver again
 * is also still in processed_events. 1 GiB is about a million rentals
 * (~1.1 kB of events each, measured by the soak) or ~35 minutes at the
 * soak's maximum rate, and bounds the disk when the rate is far above the
 * product's. The only reader of old history is customerpage's rebuild;
 * bus_replay refuses a history whose start was cut (replay.c,
 * docs/DESIGN.md "Retention"). The limits are part of the stream's
 * configuration: whoever creates the stream sets them, and the stream's
 * owner (BUS_STREAM_OWNER) brings an existing stream to them
 * (bus_setup_stream: "Reconciling").
 *
 * Duplicate window. nats-server remembers every Nats-Msg-Id it stored for
 * the stream's duplicate window, in memory: ~0.5 kB an id in 2.9 (its map
 * entry, entries its array keeps until compacted at a third used, and the
 * Go heap's headroom). At the soak's ~1200 events/s the 2-minute default
 * held nats-server at 61-109 MB RSS, 30 s at 39-61 MB (docs/DESIGN.md
 * "The duplicate window"). The window only has
 * to cover the relay's own retries of an id: while nats-server answers, a
 * retry follows the previous attempt within PUBLISH_WAIT_MS plus a
 * back-off of at most 5 s (outbox.c); a restarted relay, or a standby
 * taking the lead on PostgreSQL, republishes the last rows within
 * seconds. 30 s covers those three times over; a copy published later
 * (after an outage longer than the window) is stored twice and each
 * consumer drops the second by its eventId (processed.h), as it must for
 * anything beyond any window. */
#include "bus.h"
#include "bus_private.h"
#include "durable.h"

#include <ctype.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <nats/nats.h>

#include "config.h"
#include "db.h"
#include "log.h"
#include "metrics.h"

#define MAX_ACK_PENDING   1000

/* ---- small helpers ---- */

bool bus_deadline_passed(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > deadline->tv_sec ||
           (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec);
}

struct timespec bus_deadline_in(long ms)
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

bool bus_pause_unless_stopping(bus *b, long ms)
{
    struct timespec deadline = bus_deadline_in(ms);
    pthread_mutex_lock(&b->mu);
    while (!b->stopping && !bus_deadline_passed(&deadline))
        pthread_cond_timedwait(&b->cond, &b->mu, &deadline);
    bool go_on = !b->stopping;
    pthread_mutex_unlock(&b->mu);
    return go_on;
}

bool bus_is_stopping(bus *b)
{
    pthread_mutex_lock(&b->mu);
    bool s = b->stopping;
    pthread_mutex_unlock(&b->mu);
    return s;
}

double bus_now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

const char *bus_nats_error_text(natsStatus s, jsErrCode jerr, char *buf, size_t len)
{
    const char *detail = nats_GetLastError(NULL);
    snprintf(buf, len, "%s (status %d, js %d)%s%s", natsStatus_GetText(s), (int)s, (int)jerr,
             detail && *detail ? ": " : "", detail ? detail : "");
    return buf;
}

bool bus_valid_event_type(const char *t)
{
    if (!t || !*t || strlen(t) > 64) return false;
    for (; *t; t++)
        if (!isalnum((unsigned char)*t) && *t != '_' && *t != '-') return false;
    return true;
}

/* ---- envelope ---- */

void bus_timestamp(char out[15])
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(out, 15, "%Y%m%d%H%M%S", &tm);
}

/* ---- connection (callbacks run on nats.c threads) ---- */

void bus_request_setup(bus *b)
{
    pthread_mutex_lock(&b->mu);
    b->need_setup = true;
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->mu);
}

static void on_reconnected(natsConnection *nc, void *arg)
{
    (void)nc;
    log_info("msg=\"bus reconnected\"");
    bus_request_setup(arg);
}

static void on_disconnected(natsConnection *nc, void *arg)
{
    (void)nc;
    bus *b = arg;
    atomic_store(&b->ready, false);
    metrics_gauge_set("carshare_bus_connected", "", 0);
    if (!bus_is_stopping(b)) log_warn("msg=\"bus disconnected: retrying\" url=%s", b->url);
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

/* NATS_URL may name a cluster: "nats://a:4222,nats://b:4222,nats://c:4222".
 * nats.c takes a list only as an array (natsOptions_SetURL takes one URL),
 * so the list is cut at its commas into `list` (at most BUS_MAX_SERVERS;
 * blanks around an entry dropped). The client connects to any of them and
 * moves to another when its server goes away; the servers also tell it of
 * the cluster's other members. */
#define BUS_MAX_SERVERS 16
static natsStatus set_servers(natsOptions *o, const char *url)
{
    char copy[2048];
    if (snprintf(copy, sizeof copy, "%s", url) >= (int)sizeof copy)
        return NATS_INVALID_ARG;
    const char *list[BUS_MAX_SERVERS];
    int n = 0;
    for (char *save = NULL, *item = strtok_r(copy, ",", &save); item;
         item = strtok_r(NULL, ",", &save)) {
        while (isspace((unsigned char)*item)) item++;
        char *end = item + strlen(item);
        while (end > item && isspace((unsigned char)end[-1])) *--end = '\0';
        if (!*item) continue;
        if (n == BUS_MAX_SERVERS) return NATS_INVALID_ARG;
        list[n++] = item;
    }
    if (n == 0) return NATS_INVALID_ARG;
    if (n == 1) return natsOptions_SetURL(o, list[0]);
    return natsOptions_SetServers(o, list, n);   /* copies the strings */
}

/* Connecting. The relay makes the first connection itself, one
 * synchronous attempt at a time (it is a worker thread: it may block), and
 * pauses between attempts for a jittered time that doubles from
 * CONNECT_PAUSE_FIRST_MS up to CONNECT_PAUSE_MAX_MS: a service started
 * before nats-server, or while it is too loaded to answer, is connected
 * within about a second of the server answering, and replicas started
 * together do not retry in step. Until then the bus is not ready
 * (/health/ready: 503). Once connected, nats.c reconnects by itself for
 * ever (MaxReconnect -1, every RECONNECT_WAIT_MS plus its default jitter
 * of up to 100 ms).
 *
 * nats.c's own retry of a failed first connect
 * (natsOptions_SetRetryOnFailedConnect) is not used: in nats.c before
 * 3.12 (Debian ships 3.4.1), a first attempt whose TCP connect succeeds
 * but whose handshake does not (the server accepts but does not send INFO
 * and PONG within the timeout: overloaded, or stopped) clears the
 * connection's current server, and the reconnect thread it then starts
 * finds "no server" and closes the connection for good (nats.c commit
 * 77843e72, "Reconnecting after _processConnInit error on first
 * connection"). The relay kept that closed connection, so the service
 * was never ready: e2e tests under load failed waiting for it, and
 * test_events' frozen-server case reproduces it. */
#define CONNECT_TIMEOUT_MS     2000    /* TCP connect and the INFO/CONNECT/PONG handshake */
#define CONNECT_PAUSE_FIRST_MS 50
#define CONNECT_PAUSE_MAX_MS   1000
#define RECONNECT_WAIT_MS      250
#define CONNECT_LOG_EVERY      30      /* attempts: about every 30 s once at the cap */

long bus_connect_pause_ms(int attempt, unsigned *seed)
{
    long ms = CONNECT_PAUSE_FIRST_MS;
    for (int i = 0; i < attempt && ms < CONNECT_PAUSE_MAX_MS; i++) ms *= 2;
    if (ms > CONNECT_PAUSE_MAX_MS) ms = CONNECT_PAUSE_MAX_MS;
    return ms / 2 + (long)(rand_r(seed) % (unsigned)(ms / 2 + 1));     /* [ms/2, ms] */
}

/* One attempt. NATS_OK: *out is connected. */
static natsStatus connect_once(bus *b, natsConnection **out)
{
    natsOptions *o = NULL;
    natsStatus s = natsOptions_Create(&o);
    if (s == NATS_OK) s = set_servers(o, b->url);
    if (s == NATS_OK) s = natsOptions_SetName(o, b->service);
    if (s == NATS_OK && b->user) s = natsOptions_SetUserInfo(o, b->user, b->password);
    if (s == NATS_OK && b->inbox_prefix) s = natsOptions_SetCustomInboxPrefix(o, b->inbox_prefix);
    if (s == NATS_OK) s = natsOptions_SetMaxReconnect(o, -1);
    if (s == NATS_OK) s = natsOptions_SetReconnectWait(o, RECONNECT_WAIT_MS);
    if (s == NATS_OK) s = natsOptions_SetTimeout(o, CONNECT_TIMEOUT_MS);
    if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(o, on_disconnected, b);
    if (s == NATS_OK) s = natsOptions_SetReconnectedCB(o, on_reconnected, b);
    if (s == NATS_OK) s = natsOptions_SetClosedCB(o, on_closed, b);
    if (s == NATS_OK) s = natsConnection_Connect(out, o);
    natsOptions_Destroy(o);
    if (s != NATS_OK) {
        natsConnection_Destroy(*out);      /* a failed connect may still hand one back */
        *out = NULL;
    }
    return s;
}

/* Connects, retrying until connected; NULL only when the bus is stopping. */
natsConnection *bus_connect(bus *b)
{
    /* Per thread and per process: replicas must not draw the same pauses. */
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    unsigned seed = ((unsigned)getpid() * 2654435761u) ^ (unsigned)now.tv_nsec;
    double start = bus_now_seconds();
    char e[256];
    for (int attempt = 0;; attempt++) {
        if (bus_is_stopping(b)) return NULL;
        natsConnection *nc = NULL;
        natsStatus s = connect_once(b, &nc);
        if (s == NATS_OK) {
            log_info("msg=\"bus connected\" url=%s attempts=%d waited_ms=%.0f", b->url,
                     attempt + 1, (bus_now_seconds() - start) * 1000);
            return nc;
        }
        if (attempt % CONNECT_LOG_EVERY == 0)
            log_warn("msg=\"cannot reach nats-server yet: retrying\" url=%s attempts=%d error=%s",
                     b->url, attempt + 1, bus_nats_error_text(s, 0, e, sizeof e));
        if (!bus_pause_unless_stopping(b, bus_connect_pause_ms(attempt, &seed))) return NULL;
    }
}

/* The subjects a service's consumer asks for. A service that handles one
 * event type gets only that type from the server: payment consumes only
 * OrderCancelled and order only Shipped, and both used to fetch, skip and
 * ack the Ordered, Paid and Shipped of every rental (nats-server 2.9 takes
 * one filter per consumer: services that handle several types take the
 * whole stream). */
const char *bus_filter_subject(const bus *b, char *buf, size_t len)
{
    if (b->nhandlers != 1) return STREAM_SUBJECTS;
    snprintf(buf, len, SUBJECT_PREFIX "%s", b->handlers[0].event_type);
    return buf;
}

static void consumer_config(const bus *b, jsConsumerConfig *cc, const char *filter)
{
    jsConsumerConfig_Init(cc);
    cc->Durable = b->durable;
    cc->DeliverPolicy = js_DeliverAll;
    cc->AckPolicy = js_AckExplicit;
    cc->AckWait = BUS_ACK_WAIT_MS * 1000000LL;
    cc->FilterSubject = filter;
    cc->MaxAckPending = MAX_ACK_PENDING;
}

static bool setup_consumer(bus *b, jsCtx *js)
{
    char e[256], filter[128];
    jsConsumerConfig cc;
    consumer_config(b, &cc, bus_filter_subject(b, filter, sizeof filter));

    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_AddConsumer(&ci, js, STREAM_NAME, &cc, NULL, &jerr);
    if (s != NATS_OK && (jerr == JSConsumerNameExistErr || jerr == JSConsumerExistingActiveErr)) {
        /* nats-server keeps the consumer's position across an update,
         * a new filter included (test_bus checks it). */
        s = js_UpdateConsumer(&ci, js, STREAM_NAME, &cc, NULL, &jerr);
        if (s != NATS_OK) {
            log_warn("msg=\"consumer exists with another configuration: kept\" consumer=%s error=%s",
                     b->durable, bus_nats_error_text(s, jerr, e, sizeof e));
            s = js_GetConsumerInfo(&ci, js, STREAM_NAME, b->durable, NULL, &jerr);
        }
    }
    jsConsumerInfo_Destroy(ci);
    if (s != NATS_OK) {
        log_error("msg=\"cannot create the consumer\" consumer=%s error=%s", b->durable,
                  bus_nats_error_text(s, jerr, e, sizeof e));
        return false;
    }
    return true;
}

/* The stream as this service would create it. */
static void stream_config(const bus *b, jsStreamConfig *sc, const char **subjects)
{
    jsStreamConfig_Init(sc);
    sc->Name = STREAM_NAME;
    subjects[0] = STREAM_SUBJECTS;
    sc->Subjects = subjects;
    sc->SubjectsLen = 1;
    sc->Storage = js_FileStorage;
    sc->Retention = js_LimitsPolicy;
    sc->Discard = js_DiscardOld;         /* never refuse a publish: drop the oldest */
    sc->MaxAge = (int64_t)b->stream_max_age_s * NS_PER_S;
    sc->MaxBytes = (int64_t)b->stream_max_bytes;
    /* nats-server refuses a duplicate window longer than the age limit. */
    sc->Duplicates = (int64_t)(b->stream_max_age_s < b->stream_dup_window_s
                                   ? b->stream_max_age_s : b->stream_dup_window_s) * NS_PER_S;
    /* Every service asks for the same count (one ConfigMap), so the first
     * one creates the stream and the others' creates are the same config. */
    sc->Replicas = (int)b->stream_replicas;
}

/* Appends " name=have->want" to `out` when the two differ; true if so. */
static bool field_differs(char *out, size_t len, const char *name, int64_t have, int64_t want)
{
    if (have == want) return false;
    size_t used = strlen(out);
    if (used < len)
        snprintf(out + used, len - used, "%s%s=%lld->%lld", used ? " " : "", name,
                 (long long)have, (long long)want);
    return true;
}

/* The fields this bus owns (bus_setup_stream says which): true and their
 * changes in `what` when the stream's differ from ours. */
static bool owned_fields_differ(const jsStreamConfig *have, const jsStreamConfig *want,
                                char *what, size_t len)
{
    what[0] = '\0';
    bool d = field_differs(what, len, "max_age_s", have->MaxAge / NS_PER_S, want->MaxAge / NS_PER_S);
    d |= field_differs(what, len, "max_bytes", have->MaxBytes, want->MaxBytes);
    d |= field_differs(what, len, "duplicate_window_s", have->Duplicates / NS_PER_S,
                       want->Duplicates / NS_PER_S);
    d |= field_differs(what, len, "discard", have->Discard, want->Discard);
    d |= field_differs(what, len, "replicas", have->Replicas, want->Replicas);
    return d;
}

/* Brings an existing stream's owned fields to ours (see bus_setup_stream).
 * Never fails the setup: whatever nats-server says, the stream as it is
 * still serves, and a refusal is logged for the operator. */
static void reconcile_stream(bus *b, jsCtx *js, const jsStreamConfig *want, const jsStreamInfo *si)
{
    char e[256], what[256];
    const jsStreamConfig *have = si->Config;
    if (have->Storage != want->Storage || have->Retention != want->Retention)
        log_warn("msg=\"stream has another storage or retention than ours: kept (nats-server "
                 "cannot change them)\" stream=%s storage=%d retention=%d",
                 STREAM_NAME, (int)have->Storage, (int)have->Retention);
    if (!owned_fields_differ(have, want, what, sizeof what)) return;
    if (!b->stream_owner) {
        log_warn("msg=\"stream configuration differs from ours: kept (not the stream's owner: "
                 "BUS_STREAM_OWNER)\" stream=%s differs=\"%s\"", STREAM_NAME, what);
        return;
    }
    /* The stream's own configuration with our fields: whatever else an
     * operator set (placement, description, other subjects) stays. */
    jsStreamConfig update = *have;
    update.MaxAge = want->MaxAge;
    update.MaxBytes = want->MaxBytes;
    update.Duplicates = want->Duplicates;
    update.Discard = want->Discard;
    update.Replicas = want->Replicas;
    jsStreamInfo *out = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_UpdateStream(&out, js, &update, NULL, &jerr);
    jsStreamInfo_Destroy(out);
    if (s == NATS_OK)
        log_info("msg=\"stream configuration updated\" stream=%s changed=\"%s\"", STREAM_NAME, what);
    else    /* a timeout may still have applied it: the next setup looks again */
        log_warn("msg=\"stream configuration update refused: kept as it is\" stream=%s "
                 "differs=\"%s\" error=%s", STREAM_NAME, what,
                 bus_nats_error_text(s, jerr, e, sizeof e));
}

/* Creates the stream, or reconciles it, and the service's durable
 * consumer.
 *
 * Reconciling. Creating is idempotent (the same configuration again is a
 * success), but a stream that already exists with another configuration
 * keeps it: a deployment upgraded to new limits (the 30 s duplicate window
 * instead of 2 minutes, other BUS_STREAM_* values) would never get them.
 * So when the create finds the stream configured otherwise, the fields this
 * bus owns (max age, max bytes, duplicate window, discard policy,
 * replicas) are brought to ours with a stream update, starting from the
 * stream's own configuration so that nothing else an operator set is
 * lost. Storage type and retention policy are ours too, but nats-server
 * cannot change them: a difference is logged and the stream kept. The
 * update is idempotent (replicas starting together send the same one;
 * one that finds the stream already updated creates it as a no-op), and
 * a refused or timed-out update is logged and the setup goes on: the
 * stream as it is still serves. A change of replicas is applied by a
 * JetStream cluster in the background; a single nats-server refuses more
 * than 1.
 *
 * Only the stream's owner updates (BUS_STREAM_OWNER=1, order's bus user,
 * the one scripts/natsauth.py lets update the stream): an update could
 * also shrink the limits or add a republish rule, so the other services'
 * users may not, and their buses only log the difference. This runs on
 * the relay thread, never on the loop. */
bool bus_setup_stream(bus *b, jsCtx *js)
{
    char e[256];
    const char *subjects[1];
    jsStreamConfig sc;
    stream_config(b, &sc, subjects);

    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_AddStream(&si, js, &sc, NULL, &jerr);
    /* The stream exists with another configuration; or maybe exists:
     * nats-server (2.9, Debian's) reserves MaxBytes for a create before it
     * sees that the stream exists, so the second service's identical
     * create fails once MaxBytes is over half of max_file_store (dev and
     * compose: 1 GiB of 1.5). An existing stream is a success; if there is
     * none, the storage error stands. */
    if (s != NATS_OK && (jerr == JSStreamNameExistErr || jerr == JSStorageResourcesExceededErr)) {
        jsStreamInfo_Destroy(si);
        si = NULL;
        jsErrCode create_err = jerr;
        s = js_GetStreamInfo(&si, js, STREAM_NAME, NULL, &jerr);
        if (s == NATS_OK)
            reconcile_stream(b, js, &sc, si);
        else
            jerr = create_err;
    }
    jsStreamInfo_Destroy(si);
    if (s != NATS_OK) {
        log_error("msg=\"cannot create the stream\" stream=%s error=%s", STREAM_NAME,
                  bus_nats_error_text(s, jerr, e, sizeof e));
        return false;
    }
    if (b->nhandlers == 0) return true;
    return setup_consumer(b, js);
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

/* The password: NATS_PASSWORD, else the first line of NATS_PASSWORD_FILE
 * (a mounted secret keeps it out of the environment). A file that cannot
 * be read is a fatal configuration error, like any malformed setting. */
static char *read_password(void)
{
    const char *pw = config_str("NATS_PASSWORD", NULL);
    if (pw) return strdup(pw);
    const char *path = config_str("NATS_PASSWORD_FILE", NULL);
    if (!path) return strdup("");
    FILE *f = fopen(path, "r");
    char line[512] = "";
    if (!f || !fgets(line, sizeof line, f)) {
        fprintf(stderr, "configuration error: NATS_PASSWORD_FILE=%s cannot be read\n", path);
        exit(2);
    }
    fclose(f);
    line[strcspn(line, "\r\n")] = '\0';
    return strdup(line);
}

/* Credentials from the environment (see the top of this file). */
static bool read_credentials(bus *b)
{
    const char *user = config_str("NATS_USER", NULL);
    if (!user) return true;
    char prefix[160];
    snprintf(prefix, sizeof prefix, "_INBOX.%s", user);
    b->user = strdup(user);
    b->password = read_password();
    b->inbox_prefix = strdup(prefix);
    return b->user && b->password && b->inbox_prefix;
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
    bool creds = read_credentials(b);
    b->poll_ms = config_int("BUS_POLL_MS", 1000, 10, 600000);
    b->relay_poll_ms = config_int("BUS_RELAY_POLL_MS", 50, 10, 600000);
    b->max_deliver = config_int("BUS_MAX_DELIVER", 5, 1, 1000);
    b->retry_ms = config_int("BUS_RETRY_MS", 200, 1, MAX_RETRY_DELAY_MS);
    b->stream_replicas = config_int("BUS_STREAM_REPLICAS", 1, 1, 5);
    b->stream_max_age_s = config_int("BUS_STREAM_MAX_AGE_S", 7 * 24 * 3600, 1, 10L * 365 * 24 * 3600);
    b->stream_max_bytes = config_int("BUS_STREAM_MAX_BYTES", 1L << 30, 4096, 1L << 50);
    b->stream_dup_window_s = config_int("BUS_STREAM_DUPLICATE_WINDOW_S", 30, 1, 7L * 24 * 3600);
    b->stream_owner = config_int("BUS_STREAM_OWNER", 0, 0, 1) == 1;
    b->pending = calloc(RELAY_BATCH, sizeof *b->pending);
    b->inbox = event_new(base, -1, 0, consumer_on_inbox, b);
    b->trim = evtimer_new(base, outbox_on_trim, b);
    b->upkeep = evtimer_new(base, consumer_on_upkeep, b);
    b->processed_keep_s = config_int("BUS_PROCESSED_KEEP_S", 7 * 24 * 3600, 1, 10L * 365 * 24 * 3600);
    b->dead_letters_max = config_int("BUS_DEAD_LETTERS_MAX", 10000, 1, 100000000);
    b->upkeep_ms = config_int("BUS_UPKEEP_MS", 60000, 10, 3600000);

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&b->mu, NULL);
    pthread_mutex_init(&b->pub_mu, NULL);

    if (!b->service || !b->durable || !b->db_path || !b->url || !creds || !b->pending ||
        !b->inbox || !b->trim || !b->upkeep) {
        log_error("msg=\"out of memory creating the bus\"");
        bus_free(b);
        return NULL;
    }
    store_on_commit(st, wake_relay, b);
    metrics_gauge_set("carshare_bus_connected", "", 0);
    return b;
}

bus *bus_new_db(struct event_base *base, db *d, const char *service_name)
{
    bus *b = bus_new(base, db_store(d), service_name);
    if (b && db_is_pg(d)) {
        /* Commits happen on the database threads' connections. */
        store_on_commit(b->st, NULL, NULL);
        b->db = d;
        db_on_commit(d, wake_relay, b);
    }
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
    if (pthread_create(&b->relay_thread, NULL, outbox_relay_main, b) != 0) {
        log_error("msg=\"cannot start the outbox relay thread\"");
        return -1;
    }
    b->relay_started = b->started = true;
    if (b->nhandlers) {
        if (pthread_create(&b->fetch_thread, NULL, consumer_fetch_main, b) != 0) {
            log_error("msg=\"cannot start the consumer thread\"");
            return -1;
        }
        b->fetch_started = true;
    }
    consumer_on_upkeep(-1, 0, b);    /* a first step now: a restart after a long stop catches up */
    log_info("msg=\"bus started\" url=%s consumer=%s handlers=%zu", b->url,
             b->nhandlers ? b->durable : "-", b->nhandlers);
    return 0;
}

void bus_stop(bus *b)
{
    if (!b || b->stopped) return;
    b->stopped = true;
    store_on_commit(b->st, NULL, NULL);     /* the store may outlive the bus */
    if (b->db) db_on_commit(b->db, NULL, NULL);
    if (!b->started) return;
    /* A worker may wait for its batch to be on disk, which the loop (this
     * thread, about to join it) would otherwise never release. */
    durable_flush();

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
    event_del(b->trim);
    event_del(b->upkeep);
    outbox_trim_now(b);

    /* Only finished replays can be left on the queue now. */
    pthread_mutex_lock(&b->mu);
    while (b->queue) {
        struct batch *batch = b->queue;
        consumer_unlink_batch(b, batch);
        if (batch->kind == BATCH_REPLAY_DONE) free(batch);
    }
    pthread_mutex_unlock(&b->mu);
    replay_finish(b);

    if (b->nc) {
        natsConnection_Close(b->nc);
        struct timespec deadline = bus_deadline_in(5000);
        pthread_mutex_lock(&b->mu);
        while (!b->closed && !bus_deadline_passed(&deadline))
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
    if (b->trim) event_free(b->trim);
    if (b->upkeep) event_free(b->upkeep);
    for (size_t i = 0; i < b->nhandlers; i++) free(b->handlers[i].event_type);
    free(b->handlers);
    free(b->pending);
    free(b->service);
    free(b->durable);
    free(b->db_path);
    free(b->url);
    free(b->user);
    if (b->password) explicit_bzero(b->password, strlen(b->password));
    free(b->password);
    free(b->inbox_prefix);
    pthread_mutex_destroy(&b->mu);
    pthread_mutex_destroy(&b->pub_mu);
    pthread_cond_destroy(&b->cond);
    free(b);
}

struct db *bus_db(bus *b) { return b->db; }

bool bus_connected(void *arg)
{
    bus *b = arg;
    return b && atomic_load(&b->ready);
}
