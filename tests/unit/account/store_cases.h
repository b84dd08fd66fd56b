/* store_cases.h: account's store and transactions, the same checks on
 * either backend (test_domain.c runs them on SQLite, test_store_pg.c on
 * PostgreSQL): an id taken once, accounts read back whole, failed sign-ins
 * kept per id and in time order, forgiven and pruned, and signin_start's
 * throttle (five failures within the window, then Retry-After until the
 * oldest leaves it) with nothing recorded for a refused attempt. Ids are
 * prefixed so that one database can take the cases more than once.
 * Include after testing.h. */
#ifndef CARSHARE_ACCOUNT_STORE_CASES_H
#define CARSHARE_ACCOUNT_STORE_CASES_H

#include <stdio.h>
#include "account.h"

static inline account test_account(const char *id, const char *name)
{
    account a = {.role = TOKEN_ROLE_CUSTOMER};
    snprintf(a.customer_id, sizeof a.customer_id, "%s", id);
    snprintf(a.name, sizeof a.name, "%s", name);
    snprintf(a.password_hash, sizeof a.password_hash, "$argon2id$v=19$fake");
    return a;
}

static inline void check_accounts(store *st)
{
    account a = test_account("kim", "Kim Minji");
    CHECK_INT(account_store_insert(st, &a), 1);
    CHECK_INT(account_store_insert(st, &a), 0);   /* taken */
    account got;
    CHECK_INT(account_store_get(st, "kim", &got), 1);
    CHECK_STR(got.customer_id, "kim");
    CHECK_STR(got.name, "Kim Minji");
    CHECK_INT(got.role, TOKEN_ROLE_CUSTOMER);
    CHECK_STR(got.password_hash, a.password_hash);
    CHECK_STR(got.created_at, a.created_at);
    CHECK(got.created_at[0] != '\0');
    CHECK_INT(account_store_get(st, "lee", &got), 0);

    /* The transaction: created once, then taken; staff keeps its role. */
    account s = test_account("ops.lead", "Staff");
    s.role = TOKEN_ROLE_STAFF;
    CHECK_INT(account_create(st, &s), 1);
    CHECK_INT(account_create(st, &s), 0);
    CHECK_INT(account_store_get(st, "ops.lead", &got), 1);
    CHECK_INT(got.role, TOKEN_ROLE_STAFF);
    CHECK(!store_in_transaction(st));
}

static inline void check_failures(store *st)
{
    long long id1, id2, id3, times[8];
    CHECK_INT(failure_store_add(st, "kim", 100, &id1), 0);
    CHECK_INT(failure_store_add(st, "kim", 200, &id2), 0);
    CHECK_INT(failure_store_add(st, "lee", 150, &id3), 0);
    CHECK(id1 < id2 && id2 < id3);
    CHECK_INT(failure_store_recent(st, "kim", 50, times, 8), 2);
    CHECK_INT(times[0], 100);
    CHECK_INT(times[1], 200);
    CHECK_INT(failure_store_recent(st, "kim", 50, times, 1), 1);   /* at most max */
    CHECK_INT(failure_store_recent(st, "kim", 150, times, 8), 1);
    CHECK_INT(failure_store_forgive(st, id2), 0);
    CHECK_INT(failure_store_recent(st, "kim", 0, times, 8), 1);
    CHECK_INT(failure_store_prune(st, 160), 0);
    CHECK_INT(failure_store_recent(st, "kim", 0, times, 8), 0);
    CHECK_INT(failure_store_recent(st, "lee", 0, times, 8), 0);
}

static inline signin_verdict attempt_at(store *st, const char *id, long long now,
                                        signin_attempt *at)
{
    *at = (signin_attempt){.now = now};
    snprintf(at->customer_id, sizeof at->customer_id, "%s", id);
    return signin_start(st, at);
}

static inline void check_signin(store *st)
{
    const long long t0 = 1000000;
    signin_attempt at;
    long long times[16];
    /* A real account is found (its hash comes back for the check); an
     * unknown id and one no account can have are just not found. */
    CHECK_INT(attempt_at(st, "kim", t0, &at), SIGNIN_GO);
    CHECK(at.found);
    CHECK_STR(at.account.name, "Kim Minji");
    CHECK(at.attempt > 0);
    CHECK_INT(signin_forgive(st, at.attempt), 0);
    CHECK_INT(failure_store_recent(st, "kim", 0, times, 16), 0);
    CHECK_INT(attempt_at(st, "nobody", t0, &at), SIGNIN_GO);
    CHECK(!at.found);
    CHECK_INT(attempt_at(st, "Not An Id", t0, &at), SIGNIN_GO);
    CHECK(!at.found);

    /* Five failures within the window, then refused until the oldest is
     * THROTTLE_WINDOW_S old; a refusal records nothing. */
    for (int i = 0; i < THROTTLE_MAX_FAILURES; i++)
        CHECK_INT(attempt_at(st, "kim", t0 + 10 * i, &at), SIGNIN_GO);
    CHECK_INT(attempt_at(st, "kim", t0 + 60, &at), SIGNIN_THROTTLED);
    CHECK_INT(at.retry_after, THROTTLE_WINDOW_S - 60);
    CHECK_INT(failure_store_recent(st, "kim", 0, times, 16), THROTTLE_MAX_FAILURES);
    CHECK_INT(attempt_at(st, "kim", t0 + THROTTLE_WINDOW_S, &at), SIGNIN_GO);
    CHECK(!store_in_transaction(st));
}

static inline void check_account_store(store *st)
{
    check_accounts(st);
    check_failures(st);
    check_signin(st);
}

#endif
