/* test_store_pg.c: account's store and transactions on PostgreSQL
 * (tests/pg_run.py starts the server), the twin of test_domain.c's store
 * cases on SQLite (store_cases.h: the same checks on both), opened as the
 * service opens it (db_open with account_schema: migrations included).
 *
 * What only this backend has to prove: the throttle holds with several
 * database threads at once. Twelve sign-in attempts for one id, run as
 * units of work on the pool together, must give exactly five that go on
 * (recorded as failures) and seven throttled: the read of the id's failures
 * and the attempt's row are one SERIALIZABLE transaction, and a loser is
 * run again by lib/db.c. Without that, parallel guesses see the same four
 * failures and all go ahead. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "account.h"
#include "log.h"
#include "store_pg.h"
#include "testing.h"
#include "testing_store.h"
#include "store_cases.h"

enum { ATTEMPTS = 12 };

struct guess {
    signin_attempt at;
    signin_verdict verdict;
};

static void guess_work(store *st, void *arg)
{
    struct guess *g = arg;
    g->verdict = signin_start(st, &g->at);
}

static void test_parallel_guesses(struct event_base *base, db *d)
{
    struct guess g[ATTEMPTS];
    for (int i = 0; i < ATTEMPTS; i++)
        g[i] = (struct guess){.at = {.customer_id = "park", .now = 2000000}};
    race(base, d, g, ATTEMPTS, guess_work);
    int go = 0, throttled = 0;
    for (int i = 0; i < ATTEMPTS; i++) {
        go += g[i].verdict == SIGNIN_GO;
        throttled += g[i].verdict == SIGNIN_THROTTLED;
    }
    CHECK_INT(go, THROTTLE_MAX_FAILURES);
    CHECK_INT(throttled, ATTEMPTS - THROTTLE_MAX_FAILURES);
    long long times[2 * ATTEMPTS];
    CHECK_INT(failure_store_recent(db_store(d), "park", 0, times, 2 * ATTEMPTS),
              THROTTLE_MAX_FAILURES);
}

int main(void)
{
    const char *url = getenv("TEST_DATABASE_URL");
    if (!url) {
        fprintf(stderr, "TEST_DATABASE_URL is not set: run under tests/pg_run.py\n");
        return 1;
    }
    log_init("account/test_store_pg");
    setenv("LOG_LEVEL", "warn", 1);
    evthread_use_pthreads();
    struct event_base *base = event_base_new();
    setenv("ACCOUNT_DATABASE_URL", url, 1);
    /* Twelve attempts on one id conflict a lot on a starved machine: room
     * for the reruns (production's default is 10 per unit of work). */
    setenv("DB_RETRIES", "200", 1);
    db *d = db_open(base, "account", &account_schema);
    CHECK(d != NULL);
    if (d) {
        CHECK(db_is_pg(d));
        check_account_store(db_store(d));
        test_parallel_guesses(base, d);
        db_close(d);
    }
    event_base_free(base);
    return test_done("account/test_store_pg");
}
