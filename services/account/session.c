/* session.c: account's transactions, each the whole body of one unit of
 * work (api.c runs them through lib/db_job.h: at once on the loop on
 * SQLite, on a database thread on PostgreSQL, where a serialization
 * conflict runs the unit again from the start). No sockets, no HTTP; the
 * rules they apply are domain.c's.
 *
 * Why transactions rather than single statements:
 *  - On SQLite, group commit (lib/durable.h) holds an answer back until
 *    the COMMITs before it are on disk; it learns of a commit through
 *    store_commit. An autocommit INSERT (synchronous=NORMAL) is written to
 *    the WAL but nobody waits for its fsync, so "201, account created"
 *    could be answered for an account a power cut then loses.
 *  - On PostgreSQL, several threads sign in at once. The throttle (read an
 *    id's recent failures, then record this attempt as one) must decide
 *    as if attempts came one after another, or two parallel guesses could
 *    both see four failures and both go ahead: one SERIALIZABLE
 *    transaction does that (the loser of a conflict is run again and then
 *    sees the winner's row). */
#include "account.h"

#include "log.h"

int account_create(store *st, account *a)
{
    if (store_begin(st) != SQLITE_OK)
        return -1;
    int rc = account_store_insert(st, a);
    if (rc <= 0) {
        store_rollback(st);
        return rc;
    }
    if (store_commit(st) != SQLITE_OK) {
        store_rollback(st);
        return -1;
    }
    return 1;
}

/* The throttle's decision and the attempt's row, in the open transaction. */
static signin_verdict throttle_and_record(store *st, signin_attempt *at)
{
    long long times[2 * THROTTLE_MAX_FAILURES];
    int n = failure_store_recent(st, at->customer_id, at->now - THROTTLE_WINDOW_S, times,
                                 (int)(sizeof times / sizeof times[0]));
    if (n < 0)
        return SIGNIN_FAILED;
    at->retry_after = throttle_retry_after(times, n, at->now);
    if (at->retry_after > 0)
        return SIGNIN_THROTTLED;
    if (failure_store_add(st, at->customer_id, at->now, &at->attempt) != 0)
        return SIGNIN_FAILED;
    /* An id that cannot exist is simply unknown: the same work follows. */
    int found = account_id_refusal(at->customer_id) ? 0
                : account_store_get(st, at->customer_id, &at->account);
    if (found < 0)
        return SIGNIN_FAILED;
    at->found = found > 0;
    return SIGNIN_GO;
}

signin_verdict signin_start(store *st, signin_attempt *at)
{
    at->found = false;
    at->retry_after = 0;
    at->attempt = 0;
    if (store_begin(st) != SQLITE_OK)
        return SIGNIN_FAILED;
    signin_verdict v = throttle_and_record(st, at);
    if (v != SIGNIN_GO) {
        store_rollback(st);     /* a refusal records nothing */
        return v;
    }
    /* Committed before the password is checked: a guess counts at once. */
    if (store_commit(st) != SQLITE_OK) {
        store_rollback(st);
        return SIGNIN_FAILED;
    }
    return SIGNIN_GO;
}

int signin_forgive(store *st, long long attempt)
{
    if (store_begin(st) != SQLITE_OK)
        return -1;
    if (failure_store_forgive(st, attempt) != 0 || store_commit(st) != SQLITE_OK) {
        store_rollback(st);
        return -1;
    }
    return 0;
}
