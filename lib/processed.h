/* processed.h: the idempotent consumer's memory (the events it applied) and
 * the bounds on what the bus keeps in a service's database.
 *
 * Applied event ids are kept in two generations, processed_events (current)
 * and processed_events_previous. A lookup probes both; a new id goes into
 * the current one. Once the current generation is `keep_s` old, the
 * previous one is emptied (in chunks, so no step holds the loop long) and
 * the two swap names: the empty one becomes current. An id is therefore
 * kept at least keep_s and at most about 2 * keep_s, without an index on
 * processed_at (which would cost a page write per event) and without ever
 * scanning the table.
 *
 * Why a window is safe, and why 7 days (BUS_PROCESSED_KEEP_S, 604800):
 * an applied event comes back only
 *  - as a JetStream redelivery of a message whose ack was lost (a crash
 *    between commit and ack): at the consumer's next fetch, i.e. within
 *    AckWait while the process runs, or at its restart after an outage;
 *  - as a second stream copy published by the relay after the stream's
 *    duplicate window (30 s, bus.c: its ack was lost and it was published
 *    again later than that: an outage, a slow restart): as soon as
 *    nats-server is back;
 *  - from a consumer an operator re-created from the start of the stream.
 * The first two arrive within the outage that caused them; seven days is
 * longer than any outage a service would be left in unnoticed. Beyond the
 * window, and in the third case, the handlers are idempotent on their own
 * (each policy.c; the fuzz targets check it): forgetting an id costs a
 * redundant check, never a second effect.
 *
 * Dead letters: at most BUS_DEAD_LETTERS_MAX (10000) rows are kept, the
 * oldest dropped first (logged and counted in
 * carshare_bus_dead_letters_dropped_total); the events stay in the stream,
 * at the stream_seq each row names. */
#ifndef CARSHARE_PROCESSED_H
#define CARSHARE_PROCESSED_H

#include <stdbool.h>
#include "store.h"

/* Inside the caller's transaction. */
bool processed_seen(store *st, const char *event_id);
bool processed_mark(store *st, const char *event_id, const char *event_type);

/* PostgreSQL: records the eventId before its handler runs, in one
 * statement: 1 when this transaction now holds it (apply the event), 0 when
 * it was applied already (a duplicate), -1 on error. Why first: replicas
 * share the durable consumer, so two of them may hold the same event at
 * once (a redelivery after BUS_ACK_WAIT_MS while the first is still at
 * work); the second one's insert waits on the first's uncommitted row and
 * then finds it (or, under SERIALIZABLE, is refused with 40001 and rerun,
 * finding it then). An INSERT ... ON CONFLICT reads the index with a dirty
 * snapshot and so takes no SSI predicate lock, unlike the SELECT of
 * processed_seen: two replicas applying different events do not conflict
 * over processed_events's index pages. */
int processed_claim(store *st, const char *event_id, const char *event_type);

/* PostgreSQL: processed_claim for the n events of a slice in one statement
 * (one round trip instead of n). claimed[i] becomes true when this
 * transaction now holds ids[i] (apply the event), false when it was applied
 * already or is an id met earlier in the same list (a duplicate: the first
 * occurrence is the one claimed). Returns 0, or -1 on error. */
int processed_claim_all(store *st, int n, const char *const *ids, const char *const *types,
                        bool *claimed);

/* One bounded step of upkeep in its own transaction, at time now_s (Unix
 * seconds): drops dead letters beyond dead_letters_max, and rotates the
 * generations when the current one is keep_s old. Returns 1 when more work
 * is due at once (call again soon), 0 when done, -1 on a database error
 * (logged). */
int processed_upkeep(store *st, long long now_s, long long keep_s, long long dead_letters_max);

#endif
