/* replay.c: bus_replay, the whole stream once more through one handler
 * (customerpage's rebuild), on its own thread (bus.h).
 *
 * An ephemeral pull consumer (DeliverAll, AckAll, cleaned up by the
 * server if we die) reads from the first message up to the stream's last
 * sequence as it was at the start; events published meanwhile reach the
 * service through its durable consumer as usual. Batches go to the loop
 * through the consumer's hand-off (consumer.c) and are applied there in a
 * transaction each; the replay ends with a BATCH_REPLAY_DONE batch, so
 * `done` runs on the loop. */
#include "bus.h"
#include "bus_private.h"

#include <pthread.h>
#include <stdint.h>
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
        log_error("msg=\"replay: cannot read the stream\" error=%s", bus_nats_error_text(s, jerr, e, sizeof e));
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
        log_error("msg=\"replay: cannot create a consumer\" error=%s", bus_nats_error_text(s, jerr, e, sizeof e));
        jsCtx_Destroy(js);
        return;
    }

    store *st = NULL;       /* PostgreSQL: this thread's connection */
    int cap = REPLAY_BATCH;
    struct delivery *items = calloc((size_t)cap, sizeof *items);
    int timeouts = 0;
    while (items && !bus_is_stopping(b) && !b->replay.reached_end) {
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
