/* test_domain.c: account's rules (ids, passwords, throttling), password
 * hashing with Argon2id on the worker threads (results back on the loop),
 * and the store behind sign-in (accounts, failed attempts). */
#include <event2/event.h>
#include <event2/thread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "account.h"
#include "testing.h"
#include "testing_store.h"
#include "store_cases.h"

static void test_ids(void)
{
    CHECK(account_id_refusal("kim") == NULL);
    CHECK(account_id_refusal("kim.minji_01-x") == NULL);
    CHECK(account_id_refusal("ki") != NULL);                 /* too short */
    CHECK(account_id_refusal("Kim") != NULL);                /* upper case */
    CHECK(account_id_refusal("kim minji") != NULL);
    CHECK(account_id_refusal("kim:1") != NULL);
    CHECK(account_id_refusal("") != NULL);
    CHECK(account_id_refusal(NULL) != NULL);
    char long_id[80];
    memset(long_id, 'a', 65);
    long_id[65] = '\0';
    CHECK(account_id_refusal(long_id) != NULL);
    long_id[64] = '\0';
    CHECK(account_id_refusal(long_id) == NULL);
}

static void test_passwords(void)
{
    CHECK(account_password_refusal("correct horse battery", "kim") == NULL);
    CHECK(strstr(account_password_refusal("short", "kim"), "10 characters") != NULL);
    CHECK(strstr(account_password_refusal("password123", "kim"), "commonly used") != NULL);
    CHECK(strstr(account_password_refusal("PassWord123", "kim"), "commonly used") != NULL);
    CHECK(strstr(account_password_refusal("1234567890", "kim"), "commonly used") != NULL);
    CHECK(strstr(account_password_refusal("kim.minji.1", "kim.minji.1"), "customerId") != NULL);
    char huge[300];
    memset(huge, 'x', 257);
    huge[257] = '\0';
    CHECK(account_password_refusal(huge, "kim") != NULL);
    CHECK(account_password_refusal(NULL, "kim") != NULL);
    /* The list is sorted and every entry would pass the length rule (it is
     * there because length alone does not stop it). */
    for (size_t i = 0; i < account_common_password_count; i++) {
        CHECK(strlen(account_common_passwords[i]) >= ACCOUNT_PASSWORD_MIN);
        if (i > 0)
            CHECK(strcmp(account_common_passwords[i - 1], account_common_passwords[i]) < 0);
    }
}

static void test_throttle(void)
{
    long long now = 1000000;
    long long four[] = {now - 100, now - 50, now - 20, now - 10};
    CHECK_INT(throttle_retry_after(four, 4, now), 0);
    long long five[] = {now - 100, now - 50, now - 20, now - 10, now - 1};
    /* The oldest of the five leaves the window in 900 - 100 s. */
    CHECK_INT(throttle_retry_after(five, 5, now), THROTTLE_WINDOW_S - 100);
    /* Failures older than 15 minutes no longer count. */
    long long old[] = {now - 2000, now - 950, now - 20, now - 10, now - 1};
    CHECK_INT(throttle_retry_after(old, 5, now), 0);
    /* More than five (parallel attempts): the 5th newest decides. */
    long long seven[] = {now - 300, now - 200, now - 100, now - 50, now - 20, now - 10, now - 1};
    CHECK_INT(throttle_retry_after(seven, 7, now), THROTTLE_WINDOW_S - 100);
    /* At the edge: never less than one second. */
    long long edge[] = {now - THROTTLE_WINDOW_S + 1, now, now, now, now};
    CHECK_INT(throttle_retry_after(edge, 5, now), 1);
    CHECK_INT(throttle_retry_after(NULL, 0, now), 0);
}

/* ---- hashing on the workers ---- */

typedef struct outcome {
    int calls;
    hash_result res;
    struct event_base *base;
} outcome;

static void on_result(const hash_result *res, void *arg)
{
    outcome *o = arg;
    o->calls++;
    o->res = *res;
    event_base_loopbreak(o->base);
}

static void never(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

/* Runs the loop until a callback breaks it (a service's loop has its
 * listener; this one needs a timer to keep waiting). */
static void wait_on_loop(struct event_base *base)
{
    struct event *keep = evtimer_new(base, never, NULL);
    struct timeval minute = {60, 0};
    evtimer_add(keep, &minute);
    event_base_dispatch(base);
    event_free(keep);
}

static hash_result run_job(struct event_base *base, hasher *h, const char *password,
                           const char *hash)
{
    outcome o = {.base = base};
    CHECK(hasher_submit(h, password, hash, on_result, &o));
    wait_on_loop(base);
    CHECK_INT(o.calls, 1);
    return o.res;
}

static void test_hasher(void)
{
    evthread_use_pthreads();
    struct event_base *base = event_base_new();
    hasher *h = hasher_new(base, 2, 4);
    CHECK(h != NULL);
    hash_result made = run_job(base, h, "correct horse battery", NULL);
    CHECK_INT(made.status, HASH_DONE);
    CHECK(strncmp(made.hash, "$argon2id$", 10) == 0);
    CHECK(strstr(made.hash, "correct") == NULL);
    char hash[ACCOUNT_HASH_MAX];
    snprintf(hash, sizeof hash, "%s", made.hash);
    CHECK(run_job(base, h, "correct horse battery", hash).match);
    CHECK(!run_job(base, h, "correct horse batterY", hash).match);
    CHECK(!run_job(base, h, "", hash).match);
    /* The same password hashes differently each time (its own salt). */
    hash_result again = run_job(base, h, "correct horse battery", NULL);
    CHECK(strcmp(again.hash, hash) != 0);
    /* The start-up path agrees with the workers. */
    char now_hash[ACCOUNT_HASH_MAX];
    CHECK_INT(hash_password_now("another long secret", now_hash), 0);
    CHECK(run_job(base, h, "another long secret", now_hash).match);
    hasher_free(h);

    /* A full queue refuses at once (the caller answers 503). */
    h = hasher_new(base, 1, 1);
    outcome first = {.base = base}, second = {.base = base};
    CHECK(hasher_submit(h, "one long password", NULL, on_result, &first));
    CHECK(!hasher_submit(h, "two long password", NULL, on_result, &second));
    wait_on_loop(base);
    CHECK_INT(first.calls, 1);
    CHECK_INT(second.calls, 0);
    hasher_free(h);
    event_base_free(base);
}

/* ---- the store (store_cases.h; test_store_pg.c: the same on PostgreSQL) ---- */

static void test_store(void)
{
    char dir[64], path[128];
    if (!temp_dir_make(dir, sizeof dir, "account"))
        return;
    snprintf(path, sizeof path, "%s/account.db", dir);
    store *st = account_store_open_path(path);
    CHECK(st != NULL);
    if (!st)
        return;
    check_account_store(st);
    store_close(st);
    temp_dir_remove(dir);
}

int main(void)
{
    setenv("LOG_LEVEL", "warn", 1);
    if (sodium_init() < 0)
        return 1;
    test_ids();
    test_passwords();
    test_throttle();
    test_hasher();
    test_store();
    return test_done("account/test_domain");
}
