/* durable.h: group commit. Nothing leaves the process before the commits
 * it follows are on disk, and one fsync serves every commit made meanwhile.
 *
 * A service's loop commits without waiting for the disk (its store runs
 * with synchronous=NORMAL: COMMIT writes the WAL, which a process crash
 * cannot lose, but does not fsync it, which a power cut could). A sync
 * thread fsyncs the WAL as soon as a commit asks for it; commits made
 * while that fsync runs are covered by the next one. Until then, whatever
 * would tell the outside world about a commit waits:
 *
 *   - an HTTP answer (lib/http.c holds every answer while a sync is due:
 *     even a read may show data that is not on disk yet),
 *   - an outgoing HTTP call (lib/httpc.c: order's reservation must be on
 *     disk before payment is asked to charge for it),
 *   - the acks of applied events (lib/consumer.c),
 *   - the relay's publishes of outbox rows (lib/outbox.c waits for a sync
 *     that started after it read them: durable_sync_wait).
 *
 * Measured before it was built: order's loop spent about a third of its
 * time in fdatasync (2.2 per rental), and rentals/s went from ~590 to
 * ~950 with no fsync at all; group commit gets most of that back without
 * giving up durability.
 *
 * One durability domain per process (a service has one database): the
 * functions below need no handle; the service layer hands durable_defer
 * and durable_cancel to HTTP as its deferral (http.h), so HTTP knows
 * nothing of stores or of this file. With no domain started (the gateway, tests),
 * nothing is ever pending and every function is a no-op. The files to
 * sync are the caller's business: durable_start takes a sync function,
 * run on the sync thread (store.c fdatasyncs its WAL there). Except where
 * said, call these on the loop thread. */
#ifndef CARSHARE_DURABLE_H
#define CARSHARE_DURABLE_H

#include <stdbool.h>

struct event_base;

/* Makes the files durable (fdatasync) on the sync thread. Returns 0, or -1
 * when the data may not be on disk: the process then aborts, as nothing
 * acknowledged can be trusted after a failed fsync (the kernel may have
 * dropped the dirty pages; a restart reads what the disk really holds). */
typedef int (*durable_sync_fn)(void *arg);

/* Starts the domain: a sync thread, and an event on `base` (which must be
 * thread-aware) to release the waiters. Returns 0, or -1 (logged) when
 * one is already started or the thread cannot start. */
int durable_start(struct event_base *base, durable_sync_fn sync, void *arg);

/* Around every COMMIT on the loop: durable_committing() just before it,
 * durable_committed() after it, whether it succeeded or not. The commit is
 * pending until the next sync. */
void durable_committing(void);
void durable_committed(void);

/* True while some commit is not known to be on disk. */
bool durable_pending(void);

/* When a commit is pending: fn(arg) will run on the loop once everything
 * committed so far is on disk; returns true. Returns false and does
 * nothing when nothing is pending (the caller goes on at once). Waiters
 * run in the order they were deferred. */
bool durable_defer(void (*fn)(void *arg), void *arg);

/* Forgets the waiters fn(arg) (their owner is going away). */
void durable_cancel(void (*fn)(void *arg), void *arg);

/* Any thread: blocks until every commit visible to the caller (begun
 * before the call) is on disk. Returns at once when no domain is started
 * or when the syncs already cover them. */
void durable_sync_wait(void);

/* Loop thread: waits until every commit so far is on disk (the sync thread
 * syncs at once), then runs every waiter. */
void durable_flush(void);

/* Flushes, stops the sync thread and frees the domain. */
void durable_stop(void);

#endif
