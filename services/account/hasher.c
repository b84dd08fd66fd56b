/* hasher.c: Argon2id on worker threads, results handed back to the loop.
 *
 * One Argon2id hash or verification with libsodium's interactive limits
 * takes ~100 ms of one core and 64 MiB: done on the loop it would stall
 * every other request of the process for that long. So the loop queues a
 * job (hasher_submit), one of a few worker threads computes it, puts it on
 * the done list and wakes the loop (event_active on the inbox event, the
 * thread-safe way in libevent, as lib/consumer.c does), and the loop runs
 * the job's callback. The queue is bounded: a burst of sign-ins beyond it
 * is refused at once (503) instead of piling up seconds of work, and the
 * number of workers bounds the memory (64 MiB each).
 *
 * A job's password lives in sodium_malloc'ed memory (guarded, wiped on
 * free), never in a log. Jobs still queued at hasher_free are computed
 * before the threads stop: by then the HTTP server has drained, so nobody
 * waits for them, but their callbacks still run to free their state. */
#include "account.h"

#include <event2/event.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define HASHER_MAX_WORKERS 8

typedef struct hash_job {
    struct hash_job *next;
    char *password;                 /* sodium_malloc'ed */
    char hash[ACCOUNT_HASH_MAX];    /* to verify against; "" = make a hash */
    hash_cb cb;
    void *arg;
    hash_result res;
} hash_job;

struct hasher {
    struct event_base *base;
    struct event *inbox;
    pthread_t threads[HASHER_MAX_WORKERS];
    int workers;
    int max_queue, queued;
    pthread_mutex_t lock;
    pthread_cond_t work;
    hash_job *todo, *todo_tail;     /* FIFO */
    hash_job *done;
    bool stopping;
};

int hash_password_now(const char *password, char *out)
{
    return crypto_pwhash_str_alg(out, password, strlen(password),
                                 crypto_pwhash_OPSLIMIT_INTERACTIVE,
                                 crypto_pwhash_MEMLIMIT_INTERACTIVE,
                                 crypto_pwhash_ALG_ARGON2ID13);
}

static void job_run(hash_job *j)
{
    j->res.status = HASH_DONE;
    if (j->hash[0]) {
        j->res.match = crypto_pwhash_str_verify(j->hash, j->password, strlen(j->password)) == 0;
    } else if (hash_password_now(j->password, j->res.hash) != 0) {
        j->res.status = HASH_FAILED;
    }
}

static void *worker_main(void *arg)
{
    hasher *h = arg;
    pthread_mutex_lock(&h->lock);
    for (;;) {
        while (!h->todo && !h->stopping)
            pthread_cond_wait(&h->work, &h->lock);
        hash_job *j = h->todo;
        if (!j)
            break;   /* stopping, and nothing left */
        h->todo = j->next;
        if (!h->todo)
            h->todo_tail = NULL;
        pthread_mutex_unlock(&h->lock);
        job_run(j);
        pthread_mutex_lock(&h->lock);
        j->next = h->done;
        h->done = j;
        event_active(h->inbox, EV_READ, 0);
    }
    pthread_mutex_unlock(&h->lock);
    return NULL;
}

static void job_free(hash_job *j)
{
    sodium_free(j->password);
    sodium_memzero(&j->res, sizeof j->res);
    free(j);
}

/* On the loop: runs the callbacks of the finished jobs. */
static void on_done(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    hasher *h = arg;
    pthread_mutex_lock(&h->lock);
    hash_job *list = h->done;
    h->done = NULL;
    pthread_mutex_unlock(&h->lock);
    while (list) {
        hash_job *j = list;
        list = j->next;
        pthread_mutex_lock(&h->lock);
        h->queued--;
        pthread_mutex_unlock(&h->lock);
        j->cb(&j->res, j->arg);
        job_free(j);
    }
}

hasher *hasher_new(struct event_base *base, int workers, int max_queue)
{
    hasher *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->base = base;
    h->max_queue = max_queue;
    h->workers = workers < 1 ? 1 : workers > HASHER_MAX_WORKERS ? HASHER_MAX_WORKERS : workers;
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->work, NULL);
    h->inbox = event_new(base, -1, EV_READ, on_done, h);
    int started = 0;
    while (h->inbox && started < h->workers
           && pthread_create(&h->threads[started], NULL, worker_main, h) == 0)
        started++;
    h->workers = started;
    if (started == 0) {
        log_error("msg=\"cannot start the password hashing threads\"");
        hasher_free(h);
        return NULL;
    }
    return h;
}

void hasher_free(hasher *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->lock);
    h->stopping = true;
    pthread_cond_broadcast(&h->work);
    pthread_mutex_unlock(&h->lock);
    for (int i = 0; i < h->workers; i++)
        pthread_join(h->threads[i], NULL);
    if (h->inbox)
        on_done(-1, 0, h);   /* the last callbacks free their state */
    if (h->inbox)
        event_free(h->inbox);
    pthread_cond_destroy(&h->work);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

bool hasher_submit(hasher *h, const char *password, const char *hash, hash_cb cb, void *arg)
{
    size_t n = strlen(password);
    hash_job *j = calloc(1, sizeof *j);
    char *copy = j ? sodium_malloc(n + 1) : NULL;
    if (!copy) {
        free(j);
        return false;
    }
    memcpy(copy, password, n + 1);
    j->password = copy;
    if (hash)
        snprintf(j->hash, sizeof j->hash, "%s", hash);
    j->cb = cb;
    j->arg = arg;
    pthread_mutex_lock(&h->lock);
    bool full = h->queued >= h->max_queue || h->stopping;
    if (!full) {
        h->queued++;
        if (h->todo_tail)
            h->todo_tail->next = j;
        else
            h->todo = j;
        h->todo_tail = j;
        pthread_cond_signal(&h->work);
    }
    pthread_mutex_unlock(&h->lock);
    if (full)
        job_free(j);
    return !full;
}
