/* testing_gate.h: a durability domain whose "disk" the test holds.
 *
 * gated_sync is a durable_sync_fn (durable.h) that blocks while the gate
 * is closed, so that "not before the sync" becomes observable: while the
 * test keeps the gate closed, nothing that waits for group commit (an
 * answer, a call, an ack) may happen; gate_set(true) lets the sync finish.
 * gate_syncs counts the syncs that went through (read under gate_mu or
 * once the sync thread is idle). Include after testing.h. */
#ifndef CARSHARE_TESTING_GATE_H
#define CARSHARE_TESTING_GATE_H

#include <pthread.h>
#include <stdbool.h>

static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static bool gate_open;
static int gate_syncs;

static inline void gate_set(bool open)
{
    pthread_mutex_lock(&gate_mu);
    gate_open = open;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

static inline int gated_sync(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&gate_mu);
    while (!gate_open) pthread_cond_wait(&gate_cv, &gate_mu);
    gate_syncs++;
    pthread_mutex_unlock(&gate_mu);
    return 0;
}

#endif
