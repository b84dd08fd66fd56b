/* test_durable.c: group commit (lib/durable.c and its users).
 *
 * The sync function is a gate the test opens and closes (testing_gate.h),
 * so "not before the sync" is observable: while the gate is closed, a deferred callback
 * must not run, an HTTP answer must not reach the client, an outgoing
 * call must not reach the upstream, and a thread in durable_sync_wait
 * must not return. Then a real store in group commit: commits become
 * visible at once, durable after the sync thread's run, and the WAL is
 * checkpointed off the loop (it stops growing). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <jansson.h>

#include "durable.h"
#include "http.h"
#include "httpc.h"
#include "metrics.h"
#include "store.h"
#include "testing.h"
#include "testing_http.h"
#include "testing_gate.h"

static struct event_base *base;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Runs the loop for `seconds`, or until *flag is set (flag may be NULL). */
static void run_loop_until(double seconds, atomic_int *flag, int want)
{
    double end = now_s() + seconds;
    while (now_s() < end && !(flag && atomic_load(flag) >= want)) {
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL);
    }
}

static void run_loop(double seconds, atomic_int *flag)
{
    run_loop_until(seconds, flag, 1);
}

/* ---- the domain alone ---- */

static char order[16];
static atomic_int released;

static void note(void *arg)
{
    size_t n = strlen(order);
    order[n] = *(const char *)arg;
    order[n + 1] = '\0';
    atomic_fetch_add(&released, 1);
}

static atomic_int waited;

static void *waiter_thread(void *arg)
{
    (void)arg;
    durable_sync_wait();
    atomic_store(&waited, 1);
    return NULL;
}

static void test_domain(void)
{
    gate_set(false);
    CHECK_INT(durable_start(base, gated_sync, NULL), 0);
    CHECK_INT(durable_start(base, gated_sync, NULL), -1);   /* one per process */
    CHECK(!durable_pending());
    CHECK(!durable_defer(note, "x"));                       /* nothing pending: go on */

    durable_committed();
    CHECK(durable_pending());
    CHECK(durable_defer(note, "A"));
    CHECK(durable_defer(note, "B"));
    durable_committed();
    CHECK(durable_defer(note, "C"));
    CHECK(durable_defer(note, "D"));
    durable_cancel(note, "D");
    run_loop(0.2, NULL);
    CHECK_STR(order, "");                                  /* the disk has not answered */

    atomic_store(&released, 0);
    gate_set(true);
    run_loop_until(5, &released, 3);
    CHECK_STR(order, "ABC");                               /* in order; D was cancelled */
    CHECK(!durable_pending());
    /* The operator sees the syncs and the waits (three waiters released). */
    struct evbuffer *text = evbuffer_new();
    metrics_render(text);
    evbuffer_add(text, "", 1);
    const char *m = (const char *)evbuffer_pullup(text, -1);
    CHECK(strstr(m, "carshare_durable_sync_seconds_count ") != NULL);
    CHECK(strstr(m, "carshare_durable_wait_seconds_count 3") != NULL);
    evbuffer_free(text);

    /* Another thread waits until the commits it could see are synced: at
     * once when they are, ... */
    pthread_t t;
    pthread_create(&t, NULL, waiter_thread, NULL);
    pthread_join(t, NULL);
    CHECK_INT(atomic_load(&waited), 1);
    /* ... else for the sync, even of a commit still under way. */
    gate_set(false);
    atomic_store(&waited, 0);
    durable_committing();
    pthread_create(&t, NULL, waiter_thread, NULL);
    run_loop(0.1, NULL);
    durable_committed();
    run_loop(0.2, NULL);
    CHECK_INT(atomic_load(&waited), 0);
    gate_set(true);
    pthread_join(t, NULL);
    CHECK_INT(atomic_load(&waited), 1);

    /* Stopping makes the last commits durable and runs their waiters. */
    order[0] = '\0';
    gate_set(false);
    int before = gate_syncs;
    durable_committed();
    CHECK(durable_defer(note, "E"));
    gate_set(true);
    durable_stop();
    CHECK_STR(order, "E");
    CHECK(gate_syncs > before);
    CHECK(!durable_pending());
    durable_committed();                                   /* no domain: no-ops */
    CHECK(!durable_pending());
}

/* ---- HTTP answers and calls wait for the disk ---- */

static atomic_int upstream_hits, commits_routed;

static void on_commit_route(http_req *r, void *arg)
{
    (void)arg;
    atomic_fetch_add(&commits_routed, 1);
    durable_committed();
    http_reply_json(r, 201, json_pack("{s:s}", "status", "committed"));
}

static void on_upstream_route(http_req *r, void *arg)
{
    (void)arg;
    atomic_fetch_add(&upstream_hits, 1);
    http_reply_json(r, 200, json_pack("{s:s}", "status", "seen"));
}

struct raw_client {
    int port;
    char answer[512];
    atomic_int done;
};

/* A plain blocking client: one request, the first bytes of the answer. */
static void *raw_client_main(void *arg)
{
    struct raw_client *rc = arg;
    int fd = loopback_connect(rc->port);
    if (fd >= 0) {
        const char *req = "POST /commit HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n";
        if (write(fd, req, strlen(req)) == (ssize_t)strlen(req)) {
            ssize_t n = read(fd, rc->answer, sizeof rc->answer - 1);
            if (n > 0) rc->answer[n] = '\0';
        }
        close(fd);
    }
    atomic_store(&rc->done, 1);
    return NULL;
}

static atomic_int call_done;
static int call_status;

static void on_call_done(const httpc_response *resp, void *arg)
{
    (void)arg;
    call_status = resp->status;
    atomic_store(&call_done, 1);
}

static void test_http(void)
{
    http_server *s = http_server_new(base);
    http_server_route(s, "POST", "/commit", on_commit_route, NULL);
    http_server_route(s, "GET", "/upstream", on_upstream_route, NULL);
    int port = http_server_listen(s, "127.0.0.1", 0);
    CHECK(port > 0);
    gate_set(false);
    CHECK_INT(durable_start(base, gated_sync, NULL), 0);

    /* The answer to a request that committed waits for the sync. */
    struct raw_client rc = {.port = port};
    pthread_t t;
    pthread_create(&t, NULL, raw_client_main, &rc);
    /* Until the request was handled (no fixed time: under load the
     * client may take longer than any guess to connect), then a moment
     * more in which an answer sent too early would arrive. */
    run_loop_until(10, &commits_routed, 1);
    run_loop(0.2, NULL);
    CHECK_INT(atomic_load(&commits_routed), 1);
    CHECK_INT(atomic_load(&rc.done), 0);
    CHECK(durable_pending());
    gate_set(true);
    run_loop(5, &rc.done);
    pthread_join(t, NULL);
    CHECK(strncmp(rc.answer, "HTTP/1.1 201", 12) == 0);

    /* A server freed while an answer is held (its connections go with
     * it): the wait is cancelled with the connection, so the sync finds
     * nothing freed to send (the sanitizer build catches a use of the freed
     * connection), and the client sees the connection close unanswered. */
    http_server *doomed = http_server_new(base);
    http_server_route(doomed, "POST", "/commit", on_commit_route, NULL);
    struct raw_client cut = {.port = http_server_listen(doomed, "127.0.0.1", 0)};
    gate_set(false);
    pthread_create(&t, NULL, raw_client_main, &cut);
    run_loop_until(10, &commits_routed, 2);     /* its answer is held (see above) */
    run_loop(0.2, NULL);
    CHECK_INT(atomic_load(&commits_routed), 2);
    CHECK_INT(atomic_load(&cut.done), 0);
    http_server_free(doomed);
    gate_set(true);
    durable_flush();
    run_loop(5, &cut.done);
    pthread_join(t, NULL);
    CHECK_STR(cut.answer, "");

    /* A call made after a commit leaves only once the commit is synced. */
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    httpc *c = httpc_new(base, "self", url, NULL);
    gate_set(false);
    durable_committed();
    httpc_json(c, "GET", "/upstream", NULL, NULL, true, on_call_done, NULL);
    run_loop(0.3, NULL);
    CHECK_INT(atomic_load(&upstream_hits), 0);
    CHECK_INT(atomic_load(&call_done), 0);
    gate_set(true);
    run_loop(5, &call_done);
    CHECK_INT(atomic_load(&upstream_hits), 1);
    CHECK_INT(call_status, 200);

    /* A client freed while its call waits ends the call once, unsent. */
    gate_set(false);
    durable_committed();
    atomic_store(&call_done, 0);
    call_status = -1;
    httpc_json(c, "GET", "/upstream", NULL, NULL, true, on_call_done, NULL);
    httpc_free(c);
    CHECK_INT(atomic_load(&call_done), 1);
    CHECK_INT(call_status, 0);
    gate_set(true);
    durable_stop();
    CHECK_INT(atomic_load(&upstream_hits), 1);
    http_server_free(s);
}

/* ---- a real store ---- */

static long long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

/* The syncs the domain has made so far (its histogram's count). */
static long syncs_so_far(void)
{
    struct evbuffer *text = evbuffer_new();
    metrics_render(text);
    evbuffer_add(text, "", 1);
    const char *m = strstr((const char *)evbuffer_pullup(text, -1),
                           "carshare_durable_sync_seconds_count ");
    long n = m ? atol(m + strlen("carshare_durable_sync_seconds_count ")) : -1;
    evbuffer_free(text);
    return n;
}

static void test_store(const char *dir)
{
    char path[512], wal[520];
    snprintf(path, sizeof path, "%s/group.db", dir);
    snprintf(wal, sizeof wal, "%s-wal", path);
    static const char *const migrations[] = {
        "CREATE TABLE rentals (id INTEGER PRIMARY KEY, customer TEXT NOT NULL)", NULL};
    store *st = store_open_path(path, migrations);
    CHECK(st != NULL);
    if (!st) return;
    CHECK_INT(store_group_commit(st, base), 0);

    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(store_exec(st, "INSERT INTO rentals (customer) VALUES ('kim')"), SQLITE_OK);
    CHECK_INT(store_commit(st), SQLITE_OK);
    CHECK(durable_pending());
    for (double end = now_s() + 5; durable_pending() && now_s() < end;)
        run_loop(0.01, NULL);
    CHECK(!durable_pending());

    /* Another connection sees the row (it is committed, not just synced). */
    store *other = store_open_path(path, NULL);
    sqlite3_stmt *q = store_prepare(other, "SELECT count(*) FROM rentals");
    CHECK_INT(store_one_int(other, q, "count"), 1);
    store_close(other);

    /* 6000 commits back to back, of two frames or more each, would leave a
     * WAL of ~50 MB: the sync thread's checkpoints, finished by the loop
     * between two commits, let it restart instead, under a writer that
     * never pauses. A restart shows as a stretch of 500 commits during
     * which the WAL file did not grow (they were written over its start).
     * How much the WAL holds before its first restart depends on how fast
     * the disk syncs (a fixed bound of 12 MB failed with fdatasync taking
     * 150 ms, as on a loaded machine): so the restart is required once
     * the sync thread has synced, and checkpointed, a few times during the
     * run, however long that took. */
    long syncs_before = syncs_so_far();
    long long last_size = -1;
    bool restarted = false;
    for (int i = 1; i <= 6000; i++) {
        store_begin(st);
        store_exec(st, "INSERT INTO rentals (customer) VALUES ('lee')");
        store_commit(st);
        if (i % 500 == 0) {
            long long size = file_size(wal);
            if (size == last_size) restarted = true;
            last_size = size;
        }
    }
    long syncs = syncs_so_far() - syncs_before;
    durable_flush();
    CHECK(file_size(wal) > 0);
    if (syncs >= 4)
        CHECK(restarted);
    else
        fprintf(stderr, "test_durable: only %ld syncs during the 6000 commits (a slow disk): "
                        "the WAL restart was not checked\n", syncs);
    store_close(st);    /* stops the domain */
    CHECK(!durable_pending());

    st = store_open_path(path, NULL);
    q = store_prepare(st, "SELECT count(*) FROM rentals");
    CHECK_INT(store_one_int(st, q, "count"), 6001);
    store_close(st);
}

int main(void)
{
    evthread_use_pthreads();
    base = event_base_new();
    evthread_make_base_notifiable(base);
    char dir[256];
    if (!temp_dir_make(dir, sizeof dir, "durable")) return 1;
    /* What service_start_bus hands HTTP (http.h): durable.h's deferral. */
    static const http_deferral group_commit = { durable_defer, durable_cancel };
    http_set_deferral(&group_commit);

    test_domain();
    test_http();
    test_store(dir);

    event_base_free(base);
    temp_dir_remove(dir);
    return test_done("test_durable");
}
