/* bus.h: events on NATS JetStream, with a transactional outbox and an
 * idempotent consumer. The only module that talks to NATS (a Kafka adapter
 * would replace bus.c, not the services).
 *
 * Publishing. A service never publishes directly: inside the transaction
 * that changes its state it calls outbox_add(), which writes the event to
 * the `outbox` table. Committing makes the change and the event durable
 * together. A relay thread (own SQLite connection) reads the outbox in
 * order and publishes each row to subject carshare.<eventType> with
 * Nats-Msg-Id = eventId, deleting the row only after JetStream acknowledged
 * it; on error or timeout it retries the same message (same id, so the
 * server de-duplicates) with backoff, for ever, and carries on when
 * nats-server returns. It is woken at each commit (store_on_commit) and
 * also polls every BUS_POLL_MS (default 1000) in case of a missed wake-up.
 *
 * Consuming. Each service has one durable pull consumer named after it, on
 * the whole stream. A fetch thread pulls batches and hands each message to
 * the event loop; there, the bus opens a transaction, skips the event if
 * its eventId is already in `processed_events`, else calls the handler for
 * its eventType and records the eventId, commits, and only then acks. A
 * handler failure rolls back and the message is redelivered with backoff;
 * after BUS_MAX_DELIVER (default 5) deliveries it is written to the
 * `dead_letters` table, logged and counted, and acked so it does not block
 * the events behind it. Events with no handler are acked and ignored.
 *
 * Setup. At start (and at each reconnect) the stream `carshare` (subjects
 * carshare.>, file storage) and the service's durable consumer are created
 * or updated idempotently. NATS_URL (default nats://127.0.0.1:4222).
 * Nothing here blocks the event loop: every JetStream call runs on the
 * relay or fetch thread.
 *
 * Metrics: carshare_bus_connected, carshare_bus_outbox_backlog,
 * carshare_bus_published_total, carshare_bus_consumed_total{event},
 * carshare_bus_duplicates_total, carshare_bus_redeliveries_total,
 * carshare_bus_dead_letters_total, carshare_bus_consumer_lag.
 *
 * Envelope. Every event is a JSON object {"eventType", "timestamp"
 * (yyyyMMddHHmmss, UTC), "eventId" (UUID), ...payload}; the request id of
 * the change that caused it travels in the X-Request-Id message header and
 * is given to the handler, so logs follow a rental across services. */
#ifndef CARSHARE_BUS_H
#define CARSHARE_BUS_H

#include <stdbool.h>
#include <jansson.h>
#include "store.h"

struct event_base;
typedef struct bus bus;

/* Runs inside the bus's transaction on `st`: on the loop thread (SQLite),
 * or on the bus's consumer thread with a connection of its own
 * (PostgreSQL, see db.h), so it must touch nothing but st and its own
 * state. It may run more than once for one delivery, its writes rolled back
 * in between (another event of its transaction failed, or PostgreSQL
 * refused the transaction for a conflict), so only what it does to st
 * counts. May read and write st and call outbox_add. Returns 0 when applied, -1 to fail
 * (the transaction is rolled back; `err` may say why, for the logs and the
 * dead-letter table). On success `err` may say what the handler did, as
 * logfmt pairs ("orderId=7 outcome=shipped"): the bus writes them on its
 * one log line for the event, so handlers do not log events themselves. */
typedef int (*bus_handler)(store *st, const json_t *event, const char *request_id,
                           void *arg, char *err, size_t errlen);

/* `st` is the service's store (loop thread); the relay opens its own
 * connection to store_path(st). */
bus *bus_new(struct event_base *base, store *st, const char *service_name);

/* The same for a service's database (db.h), on either backend. On
 * PostgreSQL the relay and the consumer each have a connection of their
 * own, and the relay deletes what it published. */
struct db;
bus *bus_new_db(struct event_base *base, struct db *d, const char *service_name);

/* Consume events of this type (call before bus_start). */
void bus_on(bus *b, const char *event_type, bus_handler h, void *arg);

/* Starts the relay and, if any bus_on was called, the consumer. Returns 0;
 * connection happens in the background (the service starts without NATS). */
int bus_start(bus *b);

/* Stops the threads (waits for them) and closes the connection. Call it
 * before closing the bus's store (it unhooks store_on_commit). */
void bus_stop(bus *b);
void bus_free(bus *b);

bool bus_connected(void *b);  /* a service_check */

/* The dead letters (loop thread): each(dl) for those in [offset,
 * offset + limit), oldest first; a dead letter's strings are valid during
 * the callback (request_id may be NULL). Returns how many there are in
 * all, or -1 with err filled (a database error). The service layer serves
 * them (GET /admin/deadLetters, service.c). */
typedef struct bus_dead_letter {
    long long id;
    const char *event_id, *event_type, *subject;
    const char *payload;        /* the event as received: JSON text, or not */
    const char *request_id;
    long long deliveries;
    const char *error;
    long long stream_seq;
    const char *created_at;
} bus_dead_letter;

long long bus_dead_letters(bus *b, long offset, long limit,
                           void (*each)(const bus_dead_letter *dl, void *arg), void *arg,
                           char *err, size_t errlen);

/* The same query on a store of the bus's database (on PostgreSQL, the one a
 * database thread was given: see bus_db). */
long long bus_dead_letters_in(store *st, long offset, long limit,
                              void (*each)(const bus_dead_letter *dl, void *arg), void *arg,
                              char *err, size_t errlen);

/* The database of a bus made by bus_new_db on PostgreSQL, else NULL. */
struct db *bus_db(bus *b);

/* Inside the caller's open transaction on st: adds the envelope to a copy
 * of payload (borrowed) and stores it in the outbox. request_id may be NULL.
 * If event_id_out is not NULL it receives the eventId (37 bytes).
 * Returns 0, or -1 (logged) on a database error. */
int outbox_add(store *st, const char *event_type, const json_t *payload,
               const char *request_id, char *event_id_out);

/* Replay: delivers every event stored in the stream, from the first up to
 * the last one present when the replay starts, to h on the loop thread,
 * without processed_events bookkeeping (h runs in a transaction on st and
 * must be idempotent). done(arg, ok, count, why) runs on the loop at the
 * end; why is NULL when ok, else says what failed.
 * The replay is ok only if it saw the stream's whole history, every
 * sequence from 1 to that last one: once retention (BUS_STREAM_MAX_AGE_S,
 * BUS_STREAM_MAX_BYTES) has dropped the oldest events, or drops some while
 * the replay reads, it fails and says so, because a read model rebuilt
 * from part of the history would silently lose what the rest built.
 * For rebuilding a read model. Returns 0 if started. */
int bus_replay(bus *b, bus_handler h, void *arg,
               void (*done)(void *arg, bool ok, long count, const char *why));

/* The envelope timestamp (15 bytes with NUL). Event ids: uuid_v4 (uuid.h). */
void bus_timestamp(char out[15]);

#endif
