/* consumer.c: the idempotent consumer (fetch thread, hand-off to the loop,
 * applying with processed_events) and dead letters, with the query the
 * service layer lists them through (see bus.h for the contract, bus.c for
 * the threads and the connection, replay.c for replaying the stream).
 *
 * Hand-off. Workers append a batch to a queue guarded by `mu` and activate
 * a pre-created event (`inbox`, safe from any thread because service_new
 * made the loop thread-aware). The loop applies a slice of the batch per
 * turn, so HTTP requests interleave with a large backlog, and broadcasts
 * `cond` when a batch is complete. (On PostgreSQL the fetch thread applies
 * its batch itself, on a connection of its own.) A slice is one
 * transaction on the service's store (one fsync, not one per event): skip
 * an event if its eventId is in processed_events, else run the handler and
 * record the eventId, so effect and bookkeeping commit together. The slice
 * is applied in one pass; if an event of it fails, the pass is rolled back
 * and the slice applied again without that event, so that a poison event
 * is retried or set aside alone and its neighbours commit (apply_pass).
 * Acks are sent only after the commit is on disk (group commit: the batch
 * completes when durable_defer says so).
 *
 * Failures. A handler failure rolls back and the message is nak'ed with an
 * exponential delay; the BUS_MAX_DELIVER-th failed delivery (NumDelivered
 * from the message metadata) is written to dead_letters and acked. The
 * server-side consumer has no MaxDeliver of its own: if the process died
 * between failing and dead-lettering, the server must deliver again.
 *
 * Environment: BUS_MAX_DELIVER (5), BUS_RETRY_MS (200: first redelivery
 * delay, doubled at each delivery, at most 30 s), read by bus_new. */
#include "bus.h"
#include "bus_private.h"
#include "processed.h"
#include "store_pg.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <nats/nats.h>

#include "db.h"
#include "durable.h"
#include "jtext.h"
#include "log.h"
#include "metrics.h"

#define FETCH_BATCH       64        /* messages per pull */
#define FETCH_WAIT_MS     500       /* also bounds how long bus_stop waits */
/* A caught-up consumer does not wait FETCH_WAIT_MS for a batch to fill:
 * nats.c 3.4.1's Fetch of more than one message sends its pull request
 * with no_wait and the expiry, which nats-server 2.9 serves "one-shot":
 * it waits up to the expiry for a first message, then ends the request
 * (408) as soon as it has delivered what there is, and Fetch returns
 * with it. Measured on an idle system (300 rentals one after another,
 * nothing else running): 201 to Shipped on the customer page, through
 * delivery's and customerpage's consumers, p50 6.7 ms, p99 27.9 ms. */
#define APPLY_PER_TURN    64        /* messages applied per loop callback */

/* ---- small helpers ---- */

/* The Prometheus label for an event type chosen by whoever published:
 * only names that are safe inside a label value, else "other". */
static void event_label(const char *event_type, char *out, size_t len)
{
    bool safe = event_type && *event_type && strlen(event_type) <= 40;
    for (const char *p = event_type; safe && *p; p++)
        safe = isalnum((unsigned char)*p) || *p == '_';
    snprintf(out, len, "event=\"%s\"", safe ? event_type : "other");
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

/* ---- the hand-off to the loop ---- */

void consumer_unlink_batch(bus *b, struct batch *batch)
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

void consumer_enqueue_locked(bus *b, struct batch *batch)
{
    batch->link = NULL;
    if (b->queue_tail) b->queue_tail->link = batch;
    else b->queue = batch;
    b->queue_tail = batch;
}

/* Tells nats-server that the batch's messages are being worked on, so it
 * does not redeliver them after BUS_ACK_WAIT_MS. Called without b->mu:
 * nats.c only buffers the in-progress messages, and the batch's items are
 * the worker's (the loop only sets their settle fields, read after). */
static void mark_in_progress(struct batch *batch)
{
    if (batch->kind != BATCH_CONSUME) return;
    for (int i = 0; i < batch->n; i++) natsMsg_InProgress(batch->items[i].msg, NULL);
}

/* Worker side: hands batch to the loop and waits until it is applied, or
 * until stop, in which case the batch is taken back (batch->next tells how
 * far the loop got). While it waits, its messages are marked in progress
 * every BUS_PROGRESS_MS. Returns true when complete. */
bool consumer_run_on_loop(bus *b, struct batch *batch)
{
    pthread_mutex_lock(&b->mu);
    if (b->stopping) {
        pthread_mutex_unlock(&b->mu);
        return false;
    }
    consumer_enqueue_locked(b, batch);
    pthread_mutex_unlock(&b->mu);
    event_active(b->inbox, EV_READ, 0);

    pthread_mutex_lock(&b->mu);
    struct timespec progress = bus_deadline_in(BUS_PROGRESS_MS);
    while (!batch->complete && !b->stopping) {
        if (pthread_cond_timedwait(&b->cond, &b->mu, &progress) == ETIMEDOUT) {
            pthread_mutex_unlock(&b->mu);
            mark_in_progress(batch);
            pthread_mutex_lock(&b->mu);
            progress = bus_deadline_in(BUS_PROGRESS_MS);
        }
    }
    while (batch->busy) pthread_cond_wait(&b->cond, &b->mu);
    if (!batch->complete) consumer_unlink_batch(b, batch);
    bool complete = batch->complete;
    pthread_mutex_unlock(&b->mu);
    return complete;
}

static void apply_slice(bus *b, store *st, enum batch_kind kind, struct delivery *items, int k);

/* A batch's effects are on disk (group commit): its worker may ack. The
 * batch stayed `busy` meanwhile, so the worker waited even if stopping. */
static void complete_when_durable(void *arg)
{
    struct batch *batch = arg;
    bus *b = batch->owner;
    pthread_mutex_lock(&b->mu);
    assert(batch->busy && !batch->complete);   /* applied, waiting for the disk */
    batch->busy = false;
    batch->complete = true;
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->mu);
}

/* Loop side: applies a slice of up to APPLY_PER_TURN messages of the first
 * batch, in one transaction, then yields to the other events of the loop
 * and comes back for the rest. */
void consumer_on_inbox(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    bus *b = arg;
    pthread_mutex_lock(&b->mu);
    struct batch *batch = b->stopping ? NULL : b->queue;
    if (batch && batch->kind == BATCH_REPLAY_DONE) {
        consumer_unlink_batch(b, batch);
        pthread_mutex_unlock(&b->mu);
        free(batch);
        replay_finish(b);
        pthread_mutex_lock(&b->mu);
    } else if (batch) {
        int k = batch->n - batch->next;
        if (k > APPLY_PER_TURN) k = APPLY_PER_TURN;
        struct delivery *slice = &batch->items[batch->next];
        enum batch_kind kind = batch->kind;
        assert(!batch->busy && !batch->complete && batch->next <= batch->n);
        batch->busy = true;
        pthread_mutex_unlock(&b->mu);
        if (k > 0) apply_slice(b, b->st, kind, slice, k);
        pthread_mutex_lock(&b->mu);
        batch->next += k;
        if (batch->next == batch->n) {
            /* Off the queue now; complete (and so acked) once on disk. */
            consumer_unlink_batch(b, batch);
            batch->owner = b;
            pthread_mutex_unlock(&b->mu);
            bool deferred = durable_defer(complete_when_durable, batch);
            pthread_mutex_lock(&b->mu);
            if (!deferred) batch->complete = true;
            batch->busy = deferred;
        } else {
            batch->busy = false;
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
    r->event = jtext_load(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
    if (r->event && !json_is_object(r->event)) {
        json_decref(r->event);
        r->event = NULL;
    }
    if (r->event) {
        r->event_type = json_string_value(json_object_get(r->event, "eventType"));
        r->event_id = json_string_value(json_object_get(r->event, "eventId"));
    }
    if (!bus_valid_event_type(r->event_type)) {
        const char *from_subject = r->subject && strncmp(r->subject, SUBJECT_PREFIX,
                                                         strlen(SUBJECT_PREFIX)) == 0
                                       ? r->subject + strlen(SUBJECT_PREFIX) : NULL;
        r->event_type = bus_valid_event_type(from_subject) ? from_subject : "unknown";
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

/* Sets the event aside for an operator. True when it is safely stored. */
static bool dead_lettered(const struct received *r, const char *id, const char *error);
static bool dead_letter_pg(store *st, const char *id, natsMsg *msg, const struct received *r,
                           const char *error);

static bool dead_letter(store *st, natsMsg *msg, const struct received *r, const char *error)
{
    char fallback_id[48];
    const char *id = r->event_id;
    if (!id) {
        snprintf(fallback_id, sizeof fallback_id, "stream-seq-%llu", (unsigned long long)r->stream_seq);
        id = fallback_id;
    }
    if (store_is_pg(st)) return dead_letter_pg(st, id, msg, r, error);
    if (store_begin(st) != SQLITE_OK) return false;
    sqlite3_stmt *s = store_prepare(st,
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
        store_rollback(st);
        return false;
    }
    if (store_commit(st) != SQLITE_OK) return false;
    return dead_lettered(r, id, error);
}

/* The same row in PostgreSQL's dialect. */
static bool dead_letter_pg(store *st, const char *id, natsMsg *msg, const struct received *r,
                           const char *error)
{
    char deliveries[24], seq[24];
    /* Bound as text: the payload was read as text by the consumer already. */
    char *payload = strndup(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
    const char *p[] = {id, r->event_type, r->subject ? r->subject : "", payload ? payload : "",
                       r->request_id, store_pg_int(deliveries, (long long)r->deliveries), error,
                       store_pg_int(seq, (long long)r->stream_seq)};
    bool ok = store_begin(st) == SQLITE_OK &&
              store_pg_command(st, "INSERT INTO dead_letters (event_id, event_type, subject, payload,"
                                   " request_id, deliveries, error, stream_seq) VALUES ($1, $2, $3,"
                                   " $4, $5, $6, $7, $8) ON CONFLICT (event_id) DO NOTHING",
                               8, p, "dead letter insert") >= 0;
    free(payload);
    if (!ok) {
        store_rollback(st);
        return false;
    }
    return store_commit(st) == SQLITE_OK && dead_lettered(r, id, error);
}

/* Logs and counts a dead letter once stored. */
static bool dead_lettered(const struct received *r, const char *id, const char *error)
{
    char q[300];
    log_error("event=%s id=%s req=%s seq=%llu delivery=%llu result=dead_letter error=%s",
              r->event_type, id, r->request_id, (unsigned long long)r->stream_seq,
              (unsigned long long)r->deliveries, log_quote(q, sizeof q, error));
    metrics_counter_add("carshare_bus_dead_letters_total", "", 1);
    return true;
}

/* A failed delivery: retried later with a growing delay, or set aside. */
static void delivery_failed(bus *b, store *st, struct delivery *d, const struct received *r,
                            const char *error, bool storage)
{
    /* A database that cannot write now (full disk, I/O error, locked) is
     * not the event's fault: it is retried, never set aside, so that the
     * read models catch up by themselves when space returns. */
    if (!storage && (r->deliveries >= (uint64_t)b->max_deliver || !r->event || !r->event_id)) {
        /* A message that is not an event will never succeed: no retries. */
        if (dead_letter(st, d->msg, r, error)) {
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
    log_warn("event=%s id=%s req=%s seq=%llu delivery=%llu result=failed storage=%d retry_ms=%lld "
             "error=%s", r->event_type, r->event_id ? r->event_id : "-", r->request_id,
             (unsigned long long)r->stream_seq, (unsigned long long)r->deliveries, storage,
             (long long)delay, log_quote(q, sizeof q, error));
}

/* One message's fate within a slice. result is NULL while it failed. */
struct outcome {
    struct received r;
    const char *result;     /* "applied" (needs the commit), "duplicate", "ignored", "skipped" */
    char err[256];
    bool storage;           /* failed because the database cannot write now */
    bool left_out;          /* failed in an earlier pass: not applied again */
    bool claimed;           /* PostgreSQL: its eventId claimed in this pass */
    double ms;
};

/* Whether the store's last error is the database being unable to write
 * now rather than the event being wrong: SQLITE_FULL (disk full), I/O
 * errors, locks, read-only or missing files, memory. */
static bool storage_failing(store *st)
{
    /* PostgreSQL: unreachable, too slow, out of disk (53xxx) or shutting down. */
    if (store_is_pg(st)) return store_unavailable(st);
    switch (sqlite3_extended_errcode(store_db(st)) & 0xff) {
    case SQLITE_FULL: case SQLITE_IOERR: case SQLITE_BUSY: case SQLITE_LOCKED:
    case SQLITE_CANTOPEN: case SQLITE_READONLY: case SQLITE_NOMEM:
        return true;
    default:
        return false;
    }
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
static void consume_event(bus *b, store *st, struct outcome *o)
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
    /* PostgreSQL: claimed before any handler ran, with the pass's other
     * events (claim_pass). SQLite: looked up here, recorded below. */
    bool pg = store_is_pg(st);
    if (pg ? !o->claimed : processed_seen(st, r->event_id)) {
        o->result = "duplicate";
        return;
    }
    o->err[0] = '\0';
    if (h->fn(st, r->event, r->request_id, h->arg, o->err, sizeof o->err) != 0) {
        o->storage = storage_failing(st);
        if (!o->err[0]) fail(o, "the %s handler failed", r->event_type);
        o->result = NULL;
        return;
    }
    if (!pg && !processed_mark(st, r->event_id, r->event_type)) {
        fail(o, "cannot record the event as processed: %s", store_error(st));
        o->storage = storage_failing(st);
        return;
    }
    o->result = "applied";
}

/* Replays one event inside the slice's transaction. */
static void replay_event(bus *b, store *st, struct outcome *o)
{
    const struct received *r = &o->r;
    if (!r->event || !r->event_id) {
        /* Not an event (the consumer dead-lettered it): nothing to rebuild. */
        o->result = "skipped";
        return;
    }
    o->err[0] = '\0';
    if (b->replay.fn(st, r->event, r->request_id, b->replay.arg, o->err, sizeof o->err) != 0) {
        if (!o->err[0]) fail(o, "%s", "the replay handler failed");
        o->result = NULL;
        return;
    }
    o->result = "applied";
}

/* After the commit: ack, retry or dead-letter each message, and log it. */
static void settle_consumed(bus *b, store *st, struct delivery *d, struct outcome *o)
{
    const struct received *r = &o->r;
    if (r->deliveries > 1) metrics_counter_add("carshare_bus_redeliveries_total", "", 1);
    if (!o->result) {
        delivery_failed(b, st, d, r, o->err, o->storage);
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
    /* The one line per event handled (the handler adds what it did, in
     * err: see bus_handler), not one per ignored type: every service sees
     * every event. */
    if (strcmp(o->result, "ignored") != 0)
        log_info("msg=\"event handled\" event=%s eventId=%s req=%s seq=%llu delivery=%llu "
                 "result=%s ms=%.2f%s%s", r->event_type, r->event_id, r->request_id,
                 (unsigned long long)r->stream_seq, (unsigned long long)r->deliveries,
                 o->result, o->ms, o->err[0] ? " " : "", o->err);
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
        if (out[j].result && strcmp(out[j].result, "applied") == 0) {
            fail(&out[j], "%s", why);
            out[j].storage = true;      /* a commit that failed: the database, not the event */
        }
}

static void read_slice(struct delivery *items, int k, struct outcome *out)
{
    for (int i = 0; i < k; i++) {
        read_message(items[i].msg, &out[i].r);
        out[i].left_out = false;
    }
}

static void forget_slice(struct outcome *out, int k)
{
    for (int i = 0; i < k; i++) json_decref(out[i].r.event);
}

/* PostgreSQL: claims, in one statement (processed_claim_all), the eventIds
 * of the events of the pass that this service handles. */
static bool claim_pass(bus *b, store *st, struct outcome *out, int k)
{
    const char *ids[APPLY_PER_TURN], *types[APPLY_PER_TURN];
    bool claimed[APPLY_PER_TURN];
    int at[APPLY_PER_TURN], n = 0;
    for (int i = 0; i < k; i++)
        if (!out[i].left_out && out[i].r.event && out[i].r.event_id &&
            find_handler(b, out[i].r.event_type)) {
            ids[n] = out[i].r.event_id;
            types[n] = out[i].r.event_type;
            at[n++] = i;
        }
    if (processed_claim_all(st, n, ids, types, claimed) != 0) return false;
    for (int j = 0; j < n; j++) out[at[j]].claimed = claimed[j];
    return true;
}

/* Fails the events of the pass that have no outcome yet. */
static void fail_pass(struct outcome *out, int k, const char *why, bool storage)
{
    for (int i = 0; i < k; i++)
        if (!out[i].left_out) {
            fail(&out[i], "%s", why);
            out[i].storage = storage;
        }
}

/* One pass over the slice in one transaction: every event not left out,
 * one after the other. Returns false when an event failed after it touched
 * the store: the pass is rolled back, that event left out (its outcome
 * kept), and the caller makes another pass. True when the pass is over:
 * committed (or its commit failed: out[] says so), or rolled back for a
 * serialization conflict (store_should_retry: the caller reruns it). */
static bool apply_pass(bus *b, store *st, enum batch_kind kind, struct outcome *out, int k)
{
    char why[300];
    for (int i = 0; i < k; i++)
        if (!out[i].left_out) {
            out[i].result = NULL;
            out[i].err[0] = '\0';
            out[i].storage = false;
            out[i].claimed = false;
            out[i].ms = 0;
        }
    if (store_begin(st) != SQLITE_OK) {
        snprintf(why, sizeof why, "cannot begin a transaction: %s", store_error(st));
        fail_pass(out, k, why, true);
        return true;
    }
    if (kind == BATCH_CONSUME && store_is_pg(st) && !claim_pass(b, st, out, k)) {
        snprintf(why, sizeof why, "cannot record the events as processed: %s", store_error(st));
        fail_pass(out, k, why, storage_failing(st));
        store_rollback(st);
        return true;
    }
    for (int i = 0; i < k; i++) {
        struct outcome *o = &out[i];
        if (o->left_out) continue;
        double started = bus_now_seconds();
        if (kind == BATCH_CONSUME) consume_event(b, st, o);
        else replay_event(b, st, o);
        o->ms = (bus_now_seconds() - started) * 1000.0;
        if (store_should_retry(st)) {
            store_rollback(st);     /* lost a serialization conflict: the caller runs it again */
            return true;
        }
        bool aborted = !store_in_transaction(st);   /* SQLite: I/O error, disk full... */
        if (aborted && o->result) {
            snprintf(why, sizeof why, "the transaction was aborted: %s", store_error(st));
            fail(o, "%s", why);
        }
        if (aborted) o->storage = true;
        if (o->result) continue;
        o->left_out = true;
        /* Not an event: it failed before touching the store. */
        if (!aborted && (!o->r.event || !o->r.event_id)) continue;
        store_rollback(st);
        metrics_counter_add("carshare_bus_failed_event_rollbacks_total", "", 1);
        return false;
    }
    if (store_should_retry(st)) {
        store_rollback(st);
        return true;
    }
    if (store_commit(st) != SQLITE_OK) {
        snprintf(why, sizeof why, "commit failed: %s", store_error(st));
        lost_with_transaction(out, 0, k, why);
    }
    return true;
}

/* Applies the slice in one transaction, filling out[]. A failing event
 * would otherwise take its neighbours with it: the transaction is rolled
 * back and the others applied again without it. A savepoint around each
 * event (until stop 11) spared that rerun at two more round trips per event
 * on PostgreSQL, as many as a handler's own statements, and events rarely
 * fail: without them, and with one claim per slice, a backlog drains at
 * 3200-4400 events/s instead of 1800-3000 (delivery; customerpage
 * 4000-5300 instead of 2100-2900), for 0.59-0.67 ms of CPU per rental's
 * events instead of 0.88-0.97 (PostgreSQL's share 0.35-0.39 instead of
 * 0.52-0.58); on SQLite no change either way (docs/DESIGN.md). */
static void apply_slice_once(bus *b, store *st, enum batch_kind kind, struct delivery *items,
                             int k, struct outcome *out)
{
    read_slice(items, k, out);
    while (!apply_pass(b, st, kind, out, k)) {}
}

/* Applies items[0..k) in one transaction, rerun in place until PostgreSQL
 * takes it. PostgreSQL refuses one of two conflicting SERIALIZABLE
 * transactions (40001, or 40P01 for a deadlock): two replicas applying
 * events of one rental, the live consumer and a rebuild's replay writing
 * the shadow view, an HTTP command and an event on the same row. That is
 * not the events' fault and says nothing about the next attempt, so it is
 * never answered with a nak: a nak would spend one of the event's
 * BUS_MAX_DELIVER deliveries (enough conflicts in a row would dead-letter a
 * good event) and hand it to whichever replica comes next, behind the
 * rental's later events. PostgreSQL guarantees that of two conflicting
 * transactions one commits, so replicas make progress; after the first
 * conflict the slice is rerun one event per transaction, so that one busy
 * rental costs a rerun of its own event, not of 63 others. Only a stop ends
 * the reruns: the event is then left for a redelivery, as at any other
 * point of a stop. SQLite never asks for a rerun (one writer). */
static void apply_rerunning(bus *b, store *st, enum batch_kind kind, struct delivery *items, int k,
                            struct outcome *out)
{
    for (long attempt = 0;; attempt++) {
        store_clear_failure(st);
        apply_slice_once(b, st, kind, items, k, out);
        if (!store_should_retry(st)) return;
        metrics_counter_add("carshare_bus_conflict_reruns_total", "", 1);
        if (k > 1) {
            forget_slice(out, k);
            for (int i = 0; i < k; i++) apply_rerunning(b, st, kind, &items[i], 1, &out[i]);
            return;
        }
        if (bus_is_stopping(b)) {
            lost_with_transaction(out, 0, k, "stopping while rerunning after a conflict");
            return;
        }
        json_decref(out[0].r.event);
        store_pg_pause_before_rerun(attempt);
    }
}

static void apply_slice(bus *b, store *st, enum batch_kind kind, struct delivery *items, int k)
{
    struct outcome out[APPLY_PER_TURN];
    apply_rerunning(b, st, kind, items, k, out);
    for (int i = 0; i < k; i++) {
        if (kind == BATCH_CONSUME) settle_consumed(b, st, &items[i], &out[i]);
        else settle_replayed(b, &out[i]);
        json_decref(out[i].r.event);
    }
}

bool consumer_apply_batch(bus *b, store **st, struct batch *batch)
{
    if (!b->db) return consumer_run_on_loop(b, batch);
    if (!*st && !(*st = db_connect(b->db))) return false;
    for (int i = 0; i < batch->n; i += APPLY_PER_TURN) {
        if (bus_is_stopping(b)) return false;   /* the rest is nak'ed: redelivered */
        int k = batch->n - i < APPLY_PER_TURN ? batch->n - i : APPLY_PER_TURN;
        apply_slice(b, *st, batch->kind, &batch->items[i], k);
    }
    return true;
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
 * them again after BUS_ACK_WAIT_MS. */
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
natsConnection *consumer_wait_until_set_up(bus *b)
{
    pthread_mutex_lock(&b->mu);
    while (!b->stopping && b->setup_gen == 0) pthread_cond_wait(&b->cond, &b->mu);
    natsConnection *nc = b->stopping ? NULL : b->nc;
    pthread_mutex_unlock(&b->mu);
    return nc;
}

void *consumer_fetch_main(void *arg)
{
    bus *b = arg;
    natsConnection *nc = consumer_wait_until_set_up(b);
    jsCtx *js = NULL;
    natsSubscription *sub = NULL;
    store *st = NULL;       /* PostgreSQL: this thread's connection */
    int errors = 0;
    char e[256];

    if (nc && natsConnection_JetStream(&js, nc, NULL) != NATS_OK) js = NULL;
    while (js && !bus_is_stopping(b)) {
        if (!sub) {
            jsSubOptions so;
            jsSubOptions_Init(&so);
            so.Stream = STREAM_NAME;
            so.Consumer = b->durable;
            jsErrCode jerr = 0;
            char filter[128];
            natsStatus s = js_PullSubscribe(&sub, js, bus_filter_subject(b, filter, sizeof filter),
                                            b->durable, NULL, &so, &jerr);
            if (s != NATS_OK) {
                sub = NULL;
                if (errors++ % 20 == 0)
                    log_warn("msg=\"cannot bind to the consumer: retrying\" consumer=%s error=%s",
                             b->durable, bus_nats_error_text(s, jerr, e, sizeof e));
                if (errors % 5 == 0) bus_request_setup(b);
                bus_pause_unless_stopping(b, 500);
                continue;
            }
        }

        if (natsConnection_Status(nc) != NATS_CONN_STATUS_CONNECTED) {
            /* A pull request now would wait in the reconnect buffer and
             * be served with the backlog at the reconnect (see above). */
            bus_pause_unless_stopping(b, 100);
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
                         bus_nats_error_text(s, jerr, e, sizeof e));
            if (errors % 5 == 0) {
                /* Perhaps the consumer is gone: recreate it and rebind. */
                natsSubscription_Destroy(sub);
                sub = NULL;
                bus_request_setup(b);
            }
            bus_pause_unless_stopping(b, errors < 10 ? 100L * errors : 1000);
            continue;
        }
        errors = 0;

        jsMsgMetaData *meta = NULL;
        if (natsMsg_GetMetaData(&meta, p.items[p.n - 1].msg) == NATS_OK) {
            metrics_gauge_set("carshare_bus_consumer_lag", "", (double)meta->NumPending);
            jsMsgMetaData_Destroy(meta);
        }
        struct batch batch = {.kind = BATCH_CONSUME, .items = p.items, .n = p.n};
        consumer_apply_batch(b, &st, &batch);
        send_acks(p.items, p.n);        /* each message acked or nak'ed once */
        for (int i = 0; i < p.n; i++) natsMsg_Destroy(p.items[i].msg);
        free(p.items);
    }
    natsSubscription_Destroy(sub);
    jsCtx_Destroy(js);
    store_close(st);
    return NULL;
}

/* ---- the dead-letter query ---- */

static long long dead_letters_pg(store *st, long offset, long limit,
                                 void (*each)(const bus_dead_letter *dl, void *arg), void *arg,
                                 char *err, size_t errlen)
{
    long long total = store_pg_one_int(st, "SELECT count(*) FROM dead_letters", 0, NULL,
                                       "dead letter count");
    char l[24], o[24];
    const char *p[] = {store_pg_int(l, limit), store_pg_int(o, offset)};
    PGresult *r = total < 0 ? NULL
                  : store_pg_query(st, "SELECT id, event_id, event_type, subject, payload,"
                                       " request_id, deliveries, error, stream_seq, created_at"
                                       " FROM dead_letters ORDER BY id LIMIT $1 OFFSET $2", 2, p,
                                   "dead letter list");
    if (!r) {
        snprintf(err, errlen, "%s", store_error(st));
        return -1;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        bus_dead_letter dl = {
            .id = store_pg_get_int(r, i, 0),
            .event_id = PQgetvalue(r, i, 1),
            .event_type = PQgetvalue(r, i, 2),
            .subject = PQgetvalue(r, i, 3),
            .payload = PQgetvalue(r, i, 4),
            .request_id = PQgetisnull(r, i, 5) ? NULL : PQgetvalue(r, i, 5),
            .deliveries = store_pg_get_int(r, i, 6),
            .error = PQgetvalue(r, i, 7),
            .stream_seq = store_pg_get_int(r, i, 8),
            .created_at = PQgetvalue(r, i, 9),
        };
        each(&dl, arg);
    }
    PQclear(r);
    return total;
}

long long bus_dead_letters(bus *b, long offset, long limit,
                           void (*each)(const bus_dead_letter *dl, void *arg), void *arg,
                           char *err, size_t errlen)
{
    return bus_dead_letters_in(b->st, offset, limit, each, arg, err, errlen);
}

long long bus_dead_letters_in(store *st, long offset, long limit,
                              void (*each)(const bus_dead_letter *dl, void *arg), void *arg,
                              char *err, size_t errlen)
{
    if (store_is_pg(st)) return dead_letters_pg(st, offset, limit, each, arg, err, errlen);

    long long total = -1;
    sqlite3_stmt *s = store_prepare(st, "SELECT count(*) FROM dead_letters");
    if (s && sqlite3_step(s) == SQLITE_ROW) total = sqlite3_column_int64(s, 0);
    if (s) sqlite3_reset(s);
    s = store_prepare(st,
        "SELECT id, event_id, event_type, subject, payload, request_id, deliveries, error,"
        " stream_seq, created_at FROM dead_letters ORDER BY id LIMIT ? OFFSET ?");
    if (total < 0 || !s) {
        snprintf(err, errlen, "%s", store_error(st));
        return -1;
    }
    sqlite3_bind_int64(s, 1, limit);
    sqlite3_bind_int64(s, 2, offset);
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        bus_dead_letter dl = {
            .id = sqlite3_column_int64(s, 0),
            .event_id = (const char *)sqlite3_column_text(s, 1),
            .event_type = (const char *)sqlite3_column_text(s, 2),
            .subject = (const char *)sqlite3_column_text(s, 3),
            .payload = (const char *)sqlite3_column_text(s, 4),
            .request_id = (const char *)sqlite3_column_text(s, 5),
            .deliveries = sqlite3_column_int64(s, 6),
            .error = (const char *)sqlite3_column_text(s, 7),
            .stream_seq = sqlite3_column_int64(s, 8),
            .created_at = (const char *)sqlite3_column_text(s, 9),
        };
        each(&dl, arg);
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
        snprintf(err, errlen, "%s", store_error(st));
        return -1;
    }
    return total;
}

/* ---- upkeep: processed_events generations and the dead-letter bound ---- */

/* A chunk deleted: the next one soon, leaving the loop to the events in
 * between; else the next check after the interval. */
static void upkeep_again(bus *b, int more)
{
    long ms = more == 1 ? 10 : b->upkeep_ms;
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    evtimer_add(b->upkeep, &tv);
}

/* PostgreSQL: the step runs as a unit of work (db.h). */
struct upkeep_job {
    bus *b;
    int more;
};

static void upkeep_work(store *st, void *arg)
{
    struct upkeep_job *j = arg;
    j->more = processed_upkeep(st, (long long)time(NULL), j->b->processed_keep_s,
                               j->b->dead_letters_max);
}

static void upkeep_done(void *arg, db_status status)
{
    struct upkeep_job *j = arg;
    upkeep_again(j->b, status == DB_DONE ? j->more : -1);
    free(j);
}

void consumer_on_upkeep(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    bus *b = arg;
    if (!b->db) {
        upkeep_again(b, processed_upkeep(b->st, (long long)time(NULL), b->processed_keep_s,
                                         b->dead_letters_max));
        return;
    }
    struct upkeep_job *j = malloc(sizeof *j);
    if (j) *j = (struct upkeep_job){b, 0};
    if (!j || !db_run(b->db, upkeep_work, upkeep_done, j)) {
        free(j);
        upkeep_again(b, 0);
    }
}
