/* test_service_db.c: a service wired by service_start_db (a bus and a
 * database) or service_use_db (a database alone: account) on SQLite holds
 * every HTTP answer until the commits before it are on disk.
 *
 * The bug this guards against (fixed in fe9e254): service_start_db set up
 * group commit -- commits no longer fsync, a sync thread does -- but did
 * not hand HTTP the deferral that makes answers wait for that thread, so
 * payment, delivery and customerpage answered 201 for commits a power cut
 * could still lose. Nothing else showed it: every test passed.
 *
 * How "not before the sync" is made observable: the test starts the
 * process's durability domain itself (durable.h: one per process) with a
 * sync function that is a gate it opens and closes (testing_gate.h), and
 * runs the service with STORE_GROUP_COMMIT=0 so that the store leaves the
 * domain to the test. A route commits a real transaction in a unit of work (db_run) and
 * marks it pending as store_commit does under group commit, then answers.
 * While the gate is closed the answer must not reach the client; once it
 * opens, the answer arrives (201). Without the deferral the answer comes
 * at once and the first check fails. Each wiring runs in a child process
 * of its own (the deferral and the domain are per process). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bus.h"
#include "db.h"
#include "durable.h"
#include "http.h"
#include "service.h"
#include "testing.h"
#include "testing_http.h"
#include "testing_gate.h"
#include "token.h"

static service *svc;
static db *database;

/* ---- the route: a real commit, then the answer ---- */

static void commit_work(store *st, void *arg)
{
    int *rc = arg;
    *rc = -1;
    if (store_begin(st) != SQLITE_OK) return;
    if (store_exec(st, "INSERT INTO rentals (customer) VALUES ('kim')") != SQLITE_OK) {
        store_rollback(st);
        return;
    }
    durable_committing();           /* what store_commit does under group commit */
    int c = store_commit(st);
    durable_committed();
    *rc = c == SQLITE_OK ? 0 : -1;
}

static void commit_done(void *arg, db_status status)
{
    (void)arg;
    (void)status;
}

static void on_commit(http_req *r, void *arg)
{
    (void)arg;
    int rc;
    CHECK(db_run(database, commit_work, commit_done, &rc));   /* SQLite: at once */
    if (rc == 0)
        http_reply_json(r, 201, json_pack("{s:s}", "status", "committed"));
    else
        http_reply_error(r, 500, "the commit failed");
}

/* ---- the client ---- */

static int connect_service(void)
{
    while (__atomic_load_n(&svc->port, __ATOMIC_ACQUIRE) == 0)
        usleep(1000);
    return loopback_connect(svc->port);
}

/* Whether bytes arrive on fd within ms. */
static bool answered_within(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, ms) > 0;
}

static void *client_main(void *arg)
{
    (void)arg;
    int fd = connect_service();
    CHECK(fd >= 0);
    if (fd >= 0) {
        const char *req = "POST /commit HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n"
                          "Connection: close\r\n\r\n";
        CHECK(write(fd, req, strlen(req)) == (ssize_t)strlen(req));
        /* The commit is not on disk: no answer may leave. */
        CHECK(!answered_within(fd, 500));
        gate_set(true);
        /* Synced: the answer follows (generous: a loaded machine). */
        CHECK(answered_within(fd, 30000));
        char answer[256] = "";
        ssize_t n = read(fd, answer, sizeof answer - 1);
        if (n > 0) answer[n] = '\0';
        CHECK(strncmp(answer, "HTTP/1.1 201", 12) == 0);
        close(fd);
    }
    kill(getpid(), SIGTERM);
    return NULL;
}

/* ---- one wiring per process ---- */

static const char *const migrations[] = {
    "CREATE TABLE rentals (id INTEGER PRIMARY KEY, customer TEXT NOT NULL);", NULL};

static int run_service(bool with_bus)
{
    svc = service_new("holdtest", 0);
    gate_set(false);
    CHECK_INT(durable_start(svc->base, gated_sync, NULL), 0);
    static const db_schema schema = {migrations, NULL};
    database = db_open(svc->base, "holdtest", &schema);
    CHECK(database != NULL);
    if (!database) return 1;
    CHECK(!db_is_pg(database));
    http_server_route_for(svc->http, "POST", "/commit", HTTP_OPEN, on_commit, NULL);
    if (with_bus) {
        bus *b = bus_new(svc->base, db_store(database), "holdtest");
        CHECK(b != NULL);
        if (!b) return 1;
        CHECK_INT(service_start_db(svc, database, b), 0);
    } else {
        service_use_db(svc, database);
    }
    pthread_t client;
    pthread_create(&client, NULL, client_main, NULL);
    CHECK_INT(service_run(svc), 0);
    pthread_join(client, NULL);
    gate_set(true);
    durable_stop();
    return testing_failures;
}

static void in_child(const char *what, bool with_bus)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0)
        _exit(run_service(with_bus) == 0 ? 0 : 1);
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "%s: answers did not wait for group commit (status %d)\n", what, status);
        testing_failures++;
    }
}

int main(void)
{
    char dir[128];
    if (!temp_dir_make(dir, sizeof dir, "service-db")) return 1;
    /* A service verifies tokens: it needs a public key to start. */
    char path[300], err[256];
    snprintf(path, sizeof path, "%s/account.key", dir);
    token_key *key = token_init() == 0 ? token_key_load_or_create(path, err, sizeof err) : NULL;
    if (!key) {
        fprintf(stderr, "test key: %s\n", err);
        return 1;
    }
    token_key_free(key);
    snprintf(path, sizeof path, "%s/account.pub", dir);
    setenv("TOKEN_PUBLIC_KEYS", path, 1);
    setenv("PORT", "0", 1);
    setenv("DATA_DIR", dir, 1);
    setenv("LOG_LEVEL", "warn", 1);
    setenv("STORE_GROUP_COMMIT", "0", 1);          /* the domain is the test's */
    setenv("NATS_URL", "nats://127.0.0.1:1", 1);   /* nothing there: the bus keeps trying */
    unsetenv("DATABASE_URL");
    unsetenv("HOLDTEST_DATABASE_URL");
    in_child("service_start_db", true);
    in_child("service_use_db", false);
    temp_dir_remove(dir);
    return test_done("test_service_db");
}
