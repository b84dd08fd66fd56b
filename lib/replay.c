/* replay.c: bus_replay, the whole stream once more through one handler
 * (customerpage's rebuild), on its own thread (bus.h).
 *
 * An ephemeral pull consumer (DeliverAll, AckAll, cleaned up by the
 * server if we die) reads from the first message up to the stream's last
 * sequence as it was at the start; events published meanwhile reach the
 * service through its durable consumer as usual. Batches go to the loop
 * through the consumer's hand-off (consumer.c) and are applied there in a
 * transaction each; the replay ends with a BATCH_REPLAY_DONE batch, so
 * `done` runs on the loop.
 *
 * Completeness. A replay stands for the whole history only if it saw every
 * sequence from 1 to `last`: the stream's subjects are all read, and the
 * bus never deletes single messages, so the sequences it holds are
 * contiguous and the only gap is the start retention cut (bus.c). A stream
 * whose first sequence is past 1, that is empty after holding events, or
 * that drops events while the replay reads (a gap in the sequences
 * delivered) fails the replay with a reason, before anything is swapped:
 * a read model rebuilt from part of the history would lose every row the
 * missing part built, and the live one, kept, is still correct. */
#include "bus.h"
#include "bus_private.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <event2/event.h>
#include <nats/nats.h>

#include "log.h"

#define REPLAY_BATCH      256

void replay_finish(bus *b)
{
    struct replay *r = &b->replay;
    if (!r->active) return;
    r->active = false;
    bool ok = r->reached_end && r->failures == 0 && !r->why[0];
    const char *why = ok ? NULL
                    : r->why[0] ? r->why
                    : r->failures ? "events failed to apply"
                    : "the stream could not be read to its end";
    log_info("msg=\"replay finished\" ok=%d events=%ld failures=%ld", ok, r->count, r->failures);
    if (r->done) r->done(r->arg, ok, r->count, why);
}

/* The stream's history as its info shows it before the replay starts:
 * false (with r->why set) when its start is gone. */
static bool history_whole(struct replay *r, uint64_t first, uint64_t last, uint64_t msgs)
{
    if (msgs == 0 && last == 0) return true;            /* never held an event */
    if (msgs > 0 && first <= 1) return true;
    snprintf(r->why, sizeof r->why,
             "the stream no longer holds its history: events 1 to %llu were dropped by its "
             "retention limits (BUS_STREAM_MAX_AGE_S, BUS_STREAM_MAX_BYTES); the view is kept",
             (unsigned long long)(msgs ? first - 1 : last));
    return false;
}

/* A delivered sequence past the next one expected: retention dropped the
 * events between while the replay read. */
static void history_gap(struct replay *r, uint64_t expected, uint64_t seq)
{
    snprintf(r->why, sizeof r->why,
             "events %llu to %llu were dropped from the stream by its retention limits while "
             "the rebuild read it; the view is kept",
             (unsigned long long)expected, (unsigned long long)(seq - 1));
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
        log_error("msg=\"replay: cannot read the stream\" error=%s", bus_nats_error_text(s, jerr, e, sizeof e));
        jsCtx_Destroy(js);
        return;
    }
    uint64_t first = si->State.FirstSeq, last = si->State.LastSeq, msgs = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    if (!history_whole(&b->replay, first, last, msgs)) {
        log_error("msg=\"replay refused\" why=\"%s\"", b->replay.why);
        jsCtx_Destroy(js);
        return;
    }
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
        log_error("msg=\"replay: cannot create a consumer\" error=%s", bus_nats_error_text(s, jerr, e, sizeof e));
        jsCtx_Destroy(js);
        return;
    }

    store *st = NULL;       /* PostgreSQL: this thread's connection */
    int cap = REPLAY_BATCH;
    struct delivery *items = calloc((size_t)cap, sizeof *items);
    int timeouts = 0;
    uint64_t expected = 1;      /* the next sequence of a whole history */
    while (items && !bus_is_stopping(b) && !b->replay.reached_end && !b->replay.why[0]) {
        natsMsgList list = {0};
        s = natsSubscription_Fetch(&list, sub, REPLAY_BATCH, 1000, &jerr);
        if (list.Count == 0) {
            natsMsgList_Destroy(&list);
            /* Messages up to `last` were deleted meanwhile (limits), or
             * the server is gone: give up after a while. */
            if (++timeouts >= 10) {
                log_error("msg=\"replay: the stream stopped answering\" error=%s",
                          bus_nats_error_text(s, jerr, e, sizeof e));
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
            if (seq != 0) {     /* 0: no metadata (never seen from nats-server) */
                if (seq < expected) continue;       /* a redelivery: already handed over */
                if (seq > expected) {
                    history_gap(&b->replay, expected, seq);
                    log_error("msg=\"replay refused\" why=\"%s\"", b->replay.why);
                    break;
                }
                expected = seq + 1;
            }
            items[n++] = (struct delivery){.msg = list.Msgs[i]};
            if (seq >= last || pending == 0) b->replay.reached_end = true;
        }
        struct batch batch = {.kind = BATCH_REPLAY, .items = items, .n = n};
        bool complete = n == 0 || consumer_apply_batch(b, &st, &batch);
        if (n > 0) natsMsg_Ack(items[n - 1].msg, NULL);
        natsMsgList_Destroy(&list);
        if (!complete) {
            b->replay.reached_end = false;
            break;
        }
    }
    free(items);
    store_close(st);
    natsSubscription_Unsubscribe(sub);   /* deletes the ephemeral consumer */
    natsSubscription_Destroy(sub);
    jsCtx_Destroy(js);
}

static void *replay_main(void *arg)
{
    bus *b = arg;
    natsConnection *nc = consumer_wait_until_set_up(b);
    if (nc) replay_stream(b, nc);

    struct batch *done = calloc(1, sizeof *done);
    pthread_mutex_lock(&b->mu);
    if (done && !b->stopping) {
        done->kind = BATCH_REPLAY_DONE;
        consumer_enqueue_locked(b, done);
        done = NULL;
    }
    pthread_mutex_unlock(&b->mu);
    free(done);     /* stopping: bus_stop reports the result */
    event_active(b->inbox, EV_READ, 0);
    return NULL;
}

int bus_replay(bus *b, bus_handler h, void *arg,
               void (*done)(void *arg, bool ok, long count, const char *why))
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
