/* bus_private.h: what bus.c, outbox.c and consumer.c share, and nothing
 * else includes: the bus object, the batches handed to the loop, and the
 * functions one file calls in another. bus.h stays the public interface.
 *
 * Locking: `mu` guards the fields of struct bus from `stopping` to the
 * queue and `cond` is broadcast on any change of them; `pub_mu` guards the
 * relay's pending rows, which the publish-ack callback (a nats.c thread)
 * marks. */
#ifndef CARSHARE_BUS_PRIVATE_H
#define CARSHARE_BUS_PRIVATE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <event2/event.h>
#include <nats/nats.h>

#include "bus.h"

#define STREAM_NAME       "carshare"
#define SUBJECT_PREFIX    "carshare."
#define STREAM_SUBJECTS   "carshare.>"
#define RELAY_BATCH       256       /* outbox rows published per round trip */
#define MAX_RETRY_DELAY_MS 30000
#define NS_PER_S          1000000000LL
/* How long nats-server waits for a delivered message's ack before giving
 * it to the consumer again. Short, so that the messages a killed process
 * had fetched are handled again within seconds (was 30 s); a batch that
 * takes longer on the loop is kept with in-progress acks every
 * BUS_PROGRESS_MS (consumer.c), so a slow batch is not redelivered. */
#define BUS_ACK_WAIT_MS   4000
#define BUS_PROGRESS_MS   1000

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
    bus *owner;         /* for the durability callback */
};

struct replay {
    bus_handler fn;
    void *arg;
    void (*done)(void *arg, bool ok, long count, const char *why);
    pthread_t thread;
    bool joinable;      /* thread started and not joined yet */
    bool active;        /* started and done() not called yet */
    bool reached_end;   /* set by the thread: every event up to the last was handed over */
    long count;         /* events applied (loop thread) */
    long failures;      /* events whose handler failed (loop thread) */
    char why[200];      /* set by the thread when the stream's history is incomplete */
};

/* The relay's view of the batch being published; the ack callback (a nats.c
 * thread) marks rows under pub_mu. */
struct pending_row {
    long long seq;
    char event_id[40];
    bool acked;
};

struct db;

struct bus {
    struct event_base *base;
    store *st;          /* SQLite: the loop's store */
    struct db *db;      /* PostgreSQL: the service's database (db.h), else NULL */
    char *service;
    char *durable;      /* consumer name: the service name without . * > or spaces */
    char *db_path;
    char *url;
    char *user, *password;  /* NATS_USER / NATS_PASSWORD(_FILE); NULL: anonymous */
    char *inbox_prefix;     /* _INBOX.<user>: the only replies this user may receive */
    long poll_ms, max_deliver, retry_ms;
    long relay_poll_ms;     /* PostgreSQL: the leading relay's look for other replicas' rows */
    long stream_replicas;           /* BUS_STREAM_REPLICAS: copies a JetStream cluster keeps */
    long stream_max_age_s;          /* BUS_STREAM_MAX_AGE_S: retention by age (bus.c says why) */
    long stream_max_bytes;          /* BUS_STREAM_MAX_BYTES: retention by size */
    long stream_dup_window_s;       /* BUS_STREAM_DUPLICATE_WINDOW_S: nats-server's de-dup memory */
    bool stream_owner;              /* BUS_STREAM_OWNER: brings an existing stream to ours */

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

    /* Deleting published outbox rows, on the loop (outbox.c). */
    struct event *trim;
    atomic_llong published_seq; /* relay: rows up to here are in JetStream */
    atomic_bool trim_scheduled; /* trim is pending on the loop */
    long long trimmed_seq;      /* loop: rows up to here are deleted */

    /* processed_events generations and the dead-letter bound (processed.h),
     * on a loop timer (consumer.c). */
    struct event *upkeep;
    long long processed_keep_s, dead_letters_max;
    long upkeep_ms;

    pthread_mutex_t pub_mu;
    struct pending_row *pending;
    int npending;
    int pending_hint;
    char last_pub_error[160];
};

/* bus.c: small helpers shared by the three files. */
bool bus_deadline_passed(const struct timespec *deadline);
struct timespec bus_deadline_in(long ms);
bool bus_is_stopping(bus *b);
/* Sleeps up to ms unless stopping; returns false when stopping. */
bool bus_pause_unless_stopping(bus *b, long ms);
double bus_now_seconds(void);
const char *bus_nats_error_text(natsStatus s, jsErrCode jerr, char *buf, size_t len);
bool bus_valid_event_type(const char *t);

/* bus.c: the connection (run by the relay thread). bus_connect retries
 * until connected, pausing bus_connect_pause_ms(attempt) between attempts
 * (jittered with seed, at most a second); NULL only when stopping. */
void bus_request_setup(bus *b);
natsConnection *bus_connect(bus *b);
long bus_connect_pause_ms(int attempt, unsigned *seed);
bool bus_setup_stream(bus *b, jsCtx *js);
/* outbox.c: the loop's deletion of published rows (the trim event's
 * callback), and the same at once (bus_stop, after the relay stopped). */
void outbox_on_trim(evutil_socket_t fd, short what, void *arg);
void outbox_trim_now(bus *b);
/* The subject filter of the service's consumer, in buf or a constant. */
const char *bus_filter_subject(const bus *b, char *buf, size_t len);

/* outbox.c: the relay thread. */
void *outbox_relay_main(void *arg);

/* consumer.c: the fetch thread, the loop side of the hand-off. */
void *consumer_fetch_main(void *arg);
void consumer_on_inbox(evutil_socket_t fd, short what, void *arg);
void consumer_unlink_batch(bus *b, struct batch *batch);
/* The upkeep timer: processed_events generations, the dead-letter bound. */
void consumer_on_upkeep(evutil_socket_t fd, short what, void *arg);
/* Hands a batch to the loop and waits until it is applied; false when
 * stopping. */
bool consumer_run_on_loop(bus *b, struct batch *batch);
/* Applies a batch where the bus's database wants it: SQLite on the loop
 * (consumer_run_on_loop), PostgreSQL on the calling worker with its own
 * connection (*st, opened on first use; the caller closes it). */
bool consumer_apply_batch(bus *b, store **st, struct batch *batch);
void consumer_enqueue_locked(bus *b, struct batch *batch);
/* Waits for the connection and its setup; NULL when stopping. */
natsConnection *consumer_wait_until_set_up(bus *b);

/* replay.c: reports the end of a replay (loop thread). */
void replay_finish(bus *b);

#endif
