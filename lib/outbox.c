/* outbox.c: the transactional outbox (outbox_add) and its relay thread,
 * which publishes the outbox to JetStream (see bus.h for the contract and
 * bus.c for the threads and the connection, which the relay owns).
 *
 * The relay drains the outbox through its own SQLite connection. A batch
 * of rows is pipelined with js_PublishMsgAsync, each carrying
 * Nats-Msg-Id = eventId, then awaited with js_PublishAsyncComplete; only
 * rows JetStream acknowledged are deleted. Anything else (timeout, error,
 * server gone) is simply retried later with the same id: a timeout does
 * not mean "not stored", and the server's duplicate window turns the retry
 * into a no-op if it was. The relay remembers the highest seq acknowledged
 * together with every row before it (rows commit in seq order: writes are
 * serialized) and reads only past it; a batch with a hole (some rows not
 * acknowledged) is published again whole, and the server's duplicate
 * window drops the rows it already holds.
 *
 * Published rows are deleted by the loop, not by the relay: a write from a
 * second connection made the loop wait for the write lock, and made SQLite
 * drop the loop connection's whole page cache at its next transaction (in
 * WAL mode a connection that sees another's commit starts cold). The relay
 * hands the loop its mark; the loop deletes up to it in one statement, at
 * most every TRIM_MS, so one small transaction covers many events. A
 * delete lost to a crash republishes the row, which the server (same
 * Nats-Msg-Id) or the consumers (same eventId) discard. Under group commit (durable.h) a batch
 * read from the outbox is published only after a sync that started after
 * the read: rows are visible once committed, durable only once synced.
 *
 * On PostgreSQL, several replicas share the outbox and one relay leads
 * (see "one relay per service" below).
 *
 * Environment: BUS_POLL_MS (1000), BUS_RELAY_POLL_MS (50), read by
 * bus_new. */
#include "bus.h"
#include "bus_private.h"
#include "durable.h"
#include "jtext.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include "db.h"
#include "log.h"
#include "metrics.h"
#include "store_pg.h"
#include "uuid.h"

#define TRIM_MS           50        /* published rows are deleted this late at most */
#define PUBLISH_WAIT_MS   5000

/* ---- the outbox (inside the service's transaction) ---- */

int outbox_add(store *st, const char *event_type, const json_t *payload,
               const char *request_id, char *event_id_out)
{
    if (!bus_valid_event_type(event_type) || !json_is_object(payload)) {
        log_error("msg=\"outbox_add: bad event\" event=%s", event_type ? event_type : "(null)");
        return -1;
    }
    if (!store_in_transaction(st)) {
        /* Outside a transaction the event could be committed without the
         * change it announces, or the other way round. */
        log_error("msg=\"outbox_add called outside a transaction\" event=%s", event_type);
        return -1;
    }

    char event_id[37], timestamp[15];
    uuid_v4(event_id);
    bus_timestamp(timestamp);

    json_t *env = json_pack("{s:s, s:s, s:s}", "eventType", event_type, "timestamp", timestamp,
                            "eventId", event_id);
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)payload, key, value) {
        if (strcmp(key, "eventType") && strcmp(key, "timestamp") && strcmp(key, "eventId"))
            json_object_set_new(env, key, json_deep_copy(value));
    }
    /* jtext writes what json_dumps would, without its ~20,000 instructions
     * per event (callgrind); an event it declines goes through jansson. */
    char buf[4096];
    char *text = jtext_dump(env, false, buf, sizeof buf) >= 0 ? buf : json_dumps(env, JSON_COMPACT);
    json_decref(env);
    if (!text) {
        log_error("msg=\"outbox_add: cannot encode event\" event=%s", event_type);
        return -1;
    }

    int rc = SQLITE_ERROR;
    char now[32];
    if (store_is_pg(st)) {
        const char *p[] = {event_id, event_type, text, request_id, log_utc_now(now, true)};
        rc = store_pg_command(st, "INSERT INTO outbox (event_id, event_type, payload, request_id,"
                                  " created_at) VALUES ($1, $2, $3, $4, $5)", 5, p,
                              "outbox insert") == 1 ? SQLITE_DONE : SQLITE_ERROR;
    }
    sqlite3_stmt *s = store_is_pg(st) ? NULL : store_prepare(st,
        "INSERT INTO outbox (event_id, event_type, payload, request_id, created_at)"
        " VALUES (?, ?, ?, ?, ?)");
    if (s) {
        sqlite3_bind_text(s, 5, log_utc_now(now, true), -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 1, event_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, event_type, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 3, text, -1, SQLITE_STATIC);
        if (request_id) sqlite3_bind_text(s, 4, request_id, -1, SQLITE_STATIC);
        rc = sqlite3_step(s);
        sqlite3_reset(s);
    }
    if (text != buf) free(text);
    if (rc != SQLITE_DONE) {
        char e[200];
        log_error("msg=\"outbox_add: insert failed\" event=%s error=%s", event_type,
                  log_quote(e, sizeof e, store_error(st)));
        return -1;
    }
    if (event_id_out) memcpy(event_id_out, event_id, 37);
    return 0;
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
        bus_request_setup(b);   /* the stream vanished (server restarted empty?) */
    natsMsg_Destroy(msg);
}

/* The relay thread's bookkeeping. */
struct relay_marks {
    long long published;        /* this row and every one before it are in JetStream */
    /* PostgreSQL: whether this relay holds its service's relay lock, and in
     * which session of its connection it took it. */
    bool leading;
    bool said;                  /* its role was logged since it last changed */
    unsigned long session;
};

/* ---- deleting published rows (loop thread) ---- */

/* Deletes the rows up to the relay's mark in one transaction. */
void outbox_trim_now(bus *b)
{
    if (b->db) return;      /* PostgreSQL: the relay deletes (delete_published_pg) */
    long long mark = atomic_load(&b->published_seq);
    if (mark <= b->trimmed_seq) return;
    bool began = store_begin(b->st) == SQLITE_OK;
    sqlite3_stmt *s = began ? store_prepare(b->st, "DELETE FROM outbox WHERE seq <= ?") : NULL;
    int rc = SQLITE_ERROR;
    if (s) {
        sqlite3_bind_int64(s, 1, mark);
        rc = sqlite3_step(s) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
        sqlite3_reset(s);
    }
    if (rc == SQLITE_OK && (rc = store_commit(b->st)) == SQLITE_OK) {
        b->trimmed_seq = mark;
        return;
    }
    /* Whatever failed after BEGIN (the statement, the step, the commit),
     * the write transaction must not stay open: the loop's next
     * transaction would fail to begin, and the WAL could not restart. */
    if (began) store_rollback(b->st);
    char e[256];
    log_error("msg=\"cannot delete published events from the outbox: will retry\" error=%s",
              log_quote(e, sizeof e, store_error(b->st)));
}

void outbox_on_trim(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    bus *b = arg;
    atomic_store(&b->trim_scheduled, false);
    outbox_trim_now(b);
}

/* Relay thread: rows up to seq are in JetStream; the loop deletes them
 * within TRIM_MS (later ones join the same delete). */
static void hand_over_mark(bus *b, long long seq)
{
    atomic_store(&b->published_seq, seq);
    if (!atomic_exchange(&b->trim_scheduled, true)) {
        static const struct timeval later = {0, TRIM_MS * 1000};
        event_add(b->trim, &later);
    }
}

/* Builds the message of one outbox row into msgs[n] and b->pending[n]
 * (pub_mu held). False when it cannot be built (the batch stops there). */
static bool add_pending(bus *b, natsMsg **msgs, int n, long long seq, const char *event_id,
                        const char *event_type, const char *payload, int payload_len,
                        const char *request_id)
{
    char subject[128];
    snprintf(subject, sizeof subject, SUBJECT_PREFIX "%s", event_type);
    natsMsg *m = NULL;
    if (natsMsg_Create(&m, subject, NULL, payload, payload_len) != NATS_OK ||
        natsMsgHeader_Set(m, "Nats-Msg-Id", event_id) != NATS_OK ||
        (request_id && natsMsgHeader_Set(m, "X-Request-Id", request_id) != NATS_OK)) {
        natsMsg_Destroy(m);
        return false;
    }
    b->pending[n].seq = seq;
    snprintf(b->pending[n].event_id, sizeof b->pending[n].event_id, "%s", event_id);
    b->pending[n].acked = false;
    msgs[n] = m;
    return true;
}

/* Ends the loading of a batch of n rows (pub_mu held). */
static void pending_loaded(bus *b, int n)
{
    b->npending = n;
    b->pending_hint = 0;
    b->last_pub_error[0] = '\0';
}

/* PostgreSQL: writers commit concurrently, so a row may become visible
 * after rows with a higher seq were published: a mark would skip it for
 * ever. So the relay reads whatever rows are there, oldest first, and
 * deletes the ones JetStream acknowledged itself (no single-writer page
 * cache to spare here, unlike SQLite). A row published but not deleted (a
 * failed delete, a crash) goes out again with its id: JetStream drops the
 * duplicate within its window, consumers de-duplicate beyond it. */
static int load_outbox_pg(bus *b, store *rs, natsMsg **msgs)
{
    char limit[24];
    const char *p[] = {store_pg_int(limit, RELAY_BATCH)};
    PGresult *r = store_pg_query(rs, "SELECT seq, event_id, event_type, payload, request_id"
                                     " FROM outbox ORDER BY seq LIMIT $1", 1, p, "outbox read");
    if (!r) return -1;
    int n = 0;
    pthread_mutex_lock(&b->pub_mu);
    for (int i = 0; i < PQntuples(r) && n < RELAY_BATCH; i++, n++)
        if (!add_pending(b, msgs, n, store_pg_get_int(r, i, 0), PQgetvalue(r, i, 1),
                         PQgetvalue(r, i, 2), PQgetvalue(r, i, 3), PQgetlength(r, i, 3),
                         PQgetisnull(r, i, 4) ? NULL : PQgetvalue(r, i, 4)))
            break;
    pending_loaded(b, n);
    pthread_mutex_unlock(&b->pub_mu);
    PQclear(r);
    return n;
}

/* ---- one relay per service on PostgreSQL ----
 *
 * Replicas of a service share one outbox. One relay publishes it at a time:
 * the one whose connection holds the service's session-level advisory lock
 * (pg_try_advisory_lock). The others stand by, trying the lock every
 * BUS_POLL_MS. A leader that dies, however, loses its connection and with
 * it the lock, so a standby takes over within BUS_POLL_MS and publishes the
 * rows the dead one had not deleted: the ones it published are dropped by
 * JetStream's duplicate window (same Nats-Msg-Id), or, past the window, by
 * the consumers' processed_events. A leader whose connection broke finds
 * its session changed (store_pg_session) and takes the lock again before
 * publishing anything it read on the new session.
 *
 * Why one leader rather than every replica taking batches with FOR UPDATE
 * SKIP LOCKED: a rental's events are written one after the other by
 * transactions of any replica, and with several relays the Refunded of
 * one batch could be published before the Paid of a batch another relay
 * still holds: order per rental would need the consumers to put it back.
 * One relay publishes in seq order, which for two events of one rental is
 * their commit order (the second was inserted after the first committed).
 * What one relay costs: nothing measurable in throughput (a batch of 256
 * rows is one read, 256 pipelined publishes and one delete, far more than
 * a service writes), and events committed on other replicas wait for the
 * leader's next look, every BUS_RELAY_POLL_MS (50), since only the
 * leader's own commits wake it. A frozen leader (SIGSTOP) keeps its lock:
 * its service's events wait in the outbox, durable, until it runs again or
 * is killed (an orchestrator kills a process whose /health/live hangs).
 * SQLite has one process per file (instance.h): its relay always leads. */

/* The lock's key: one per service, should several share a database. */
static long long relay_lock_key(const bus *b)
{
    uint32_t h = 2166136261u;
    for (const char *p = b->service; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
    return (0x63617273LL << 32) | h;       /* "cars" */
}

/* Whether this relay leads its service now; takes the lead when free. */
static bool relay_leads(bus *b, store *rs, struct relay_marks *m)
{
    if (m->leading && store_pg_session(rs) == m->session) return true;
    bool was = m->leading;
    store_clear_failure(rs);
    m->leading = store_pg_try_lock(rs, relay_lock_key(b));
    m->session = store_pg_session(rs);      /* after: the call may have reconnected */
    if (m->leading != was || !m->said) {
        if (m->leading) log_info("msg=\"outbox relay leads: this process publishes the service's events\"");
        else log_info("msg=\"outbox relay stands by: another replica's relay publishes\"");
        m->said = true;
        metrics_gauge_set("carshare_bus_relay_leader", "", m->leading ? 1 : 0);
    }
    return m->leading;
}

/* PostgreSQL: deletes the acknowledged rows of the batch (all of it). */
static void delete_published_pg(bus *b, store *rs, int n)
{
    char *list = malloc((size_t)n * 22 + 3);
    if (!list) return;      /* published again later: de-duplicated */
    size_t len = 0;
    list[len++] = '{';
    pthread_mutex_lock(&b->pub_mu);
    for (int i = 0; i < n; i++)
        len += (size_t)sprintf(list + len, "%s%lld", i ? "," : "", b->pending[i].seq);
    pthread_mutex_unlock(&b->pub_mu);
    list[len++] = '}';
    list[len] = '\0';
    const char *p[] = {list};
    store_pg_command(rs, "DELETE FROM outbox WHERE seq = ANY($1::bigint[])", 1, p, "outbox delete");
    free(list);
}

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
    int n = 0;
    pthread_mutex_lock(&b->pub_mu);
    for (; n < RELAY_BATCH && sqlite3_step(s) == SQLITE_ROW; n++)
        if (!add_pending(b, msgs, n, sqlite3_column_int64(s, 0),
                         (const char *)sqlite3_column_text(s, 1),
                         (const char *)sqlite3_column_text(s, 2),
                         (const char *)sqlite3_column_text(s, 3), sqlite3_column_bytes(s, 3),
                         (const char *)sqlite3_column_text(s, 4)))
            break;
    pending_loaded(b, n);
    pthread_mutex_unlock(&b->pub_mu);
    sqlite3_reset(s);
    return n;
}

/* Publishes one batch. Returns the number of rows published, or -1 when
 * something failed (the rest is retried later). */
static int relay_batch(bus *b, store *rs, jsCtx *js, struct relay_marks *marks)
{
    natsMsg *msgs[RELAY_BATCH];
    int n = b->db ? load_outbox_pg(b, rs, msgs) : load_outbox(b, rs, msgs, marks);
    if (n > 0 && b->db && store_pg_session(rs) != marks->session) {
        /* The read reconnected: the lock went with the old session, and
         * another relay may lead now. Take it again first. */
        for (int i = 0; i < n; i++) natsMsg_Destroy(msgs[i]);
        return 0;
    }
    if (n <= 0) return n;
    /* Under group commit these rows may be committed but not yet on disk:
     * an event must never be out for a change a power cut could undo. */
    durable_sync_wait();

    char e[256];
    natsStatus s = NATS_OK;
    for (int i = 0; i < n; i++) {
        if (s == NATS_OK) s = js_PublishMsgAsync(js, &msgs[i], NULL);
        natsMsg_Destroy(msgs[i]);   /* no-op once the library owns it */
    }
    if (s != NATS_OK) log_warn("msg=\"publish failed\" error=%s", bus_nats_error_text(s, 0, e, sizeof e));

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

    if (acked < n) return -1;   /* the whole batch goes again (see above) */
    if (b->db) {
        delete_published_pg(b, rs, n);
        metrics_counter_add("carshare_bus_published_total", "", acked);
        return n;
    }
    /* The whole batch, hence every row up to its last. */
    marks->published = last_seq;
    hand_over_mark(b, last_seq);
    metrics_counter_add("carshare_bus_published_total", "", acked);
    return n;
}

/* The rows not yet published (published ones may wait for their delete). */
static void update_backlog(store *rs, const struct relay_marks *marks)
{
    if (store_is_pg(rs)) {
        long long n = store_pg_one_int(rs, "SELECT count(*) FROM outbox", 0, NULL, "outbox count");
        if (n >= 0) metrics_gauge_set("carshare_bus_outbox_backlog", "", (double)n);
        return;
    }
    sqlite3_stmt *s = store_prepare(rs, "SELECT count(*) FROM outbox WHERE seq > ?");
    if (s) sqlite3_bind_int64(s, 1, marks->published);
    if (s && sqlite3_step(s) == SQLITE_ROW)
        metrics_gauge_set("carshare_bus_outbox_backlog", "", (double)sqlite3_column_int64(s, 0));
    if (s) sqlite3_reset(s);
}

void *outbox_relay_main(void *arg)
{
    bus *b = arg;
    store *rs = NULL;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    long backoff = 0;
    long delay = 0;         /* before the next round; 0 = at once */
    bool set_up = false;    /* stream and consumer exist since the last (re)connect */
    struct relay_marks marks = {0};

    for (;;) {
        /* A standby's wake-ups by its own commits would only ask for the
         * lock again: it looks every BUS_POLL_MS instead. */
        bool standby = b->db && !marks.leading;
        pthread_mutex_lock(&b->mu);
        struct timespec deadline = bus_deadline_in(delay);
        while (!b->stopping && !(b->wake_relay && !standby) && !b->need_setup &&
               !bus_deadline_passed(&deadline))
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
            if (!(rs = b->db ? db_connect(b->db) : store_open_path(b->db_path, NULL))) {
                delay = 1000;
                continue;
            }
            /* SQLite: the relay only reads (the loop deletes what it published). */
            if (!b->db) sqlite3_busy_timeout(store_db(rs), 5000);
        }
        if (!nc) {
            /* Blocks until connected (bus.c: jittered retries); NULL: stopping. */
            if (!(nc = bus_connect(b))) continue;
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
            if (!bus_setup_stream(b, js)) {
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

        if (b->db && !relay_leads(b, rs, &marks)) {
            delay = b->poll_ms;
            continue;
        }
        int published = relay_batch(b, rs, js, &marks);
        if (published < 0) {
            backoff = backoff ? (backoff * 2 > 5000 ? 5000 : backoff * 2) : 100;
            delay = backoff;
        } else {
            backoff = 0;
            /* PostgreSQL: other replicas' commits do not wake this relay. */
            long idle = b->db && b->relay_poll_ms < b->poll_ms ? b->relay_poll_ms : b->poll_ms;
            delay = published == RELAY_BATCH ? 0 : idle;
            if (published > 0) update_backlog(rs, &marks);
        }
    }

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
