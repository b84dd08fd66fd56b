/* test_balance.c: choosing among an upstream's instances (lib/balance.c), with
 * no sockets: least outstanding with round-robin ties, readiness and
 * ejection keeping an instance out, coming back only through a probe after
 * the ejection time, and which failed calls go to another instance. */
#include <string.h>

#include "balance.h"
#include "testing.h"

static void ready_all(balance_state *b, int n)
{
    memset(b, 0, (size_t)n * sizeof *b);
    for (int i = 0; i < n; i++)
        b[i].ready = true;
}

static void test_round_robin_ties(void)
{
    balance_state b[3];
    ready_all(b, 3);
    unsigned rr = 0;
    /* Nothing outstanding: every instance in turn, again and again. */
    int seen[3] = {0};
    for (int k = 0; k < 30; k++) {
        int i = balance_pick(b, 3, &rr, -1);
        CHECK_INT(i, k % 3);
        seen[i]++;
    }
    CHECK_INT(seen[0], 10);
    CHECK_INT(seen[1], 10);
    CHECK_INT(seen[2], 10);
}

static void test_least_outstanding(void)
{
    balance_state b[3];
    ready_all(b, 3);
    unsigned rr = 0;
    b[0].outstanding = 4;
    b[1].outstanding = 1;
    b[2].outstanding = 2;
    CHECK_INT(balance_pick(b, 3, &rr, -1), 1);
    /* A slow instance keeps its calls: new ones go to the others. */
    b[1].outstanding = 3;
    CHECK_INT(balance_pick(b, 3, &rr, -1), 2);
    /* Ties among the least loaded only, in turn. */
    b[0].outstanding = 5;
    b[1].outstanding = 2;
    b[2].outstanding = 2;
    rr = 0;
    CHECK_INT(balance_pick(b, 3, &rr, -1), 1);
    CHECK_INT(balance_pick(b, 3, &rr, -1), 2);
    CHECK_INT(balance_pick(b, 3, &rr, -1), 1);
}

static void test_not_ready_and_ejected_skipped(void)
{
    balance_state b[3];
    ready_all(b, 3);
    unsigned rr = 0;
    b[0].ready = false;
    b[2].ejected = true;
    for (int k = 0; k < 5; k++)
        CHECK_INT(balance_pick(b, 3, &rr, -1), 1);
    /* Excluding the one usable instance (a retry away from it): the others
     * are still tried rather than nothing -- the call fails as it would
     * have anyway. */
    int other = balance_pick(b, 3, &rr, 1);
    CHECK(other == 0 || other == 2);
    /* None usable: the least outstanding of those not ejected, even with
     * an ejected one less busy (it refused connections a moment ago). */
    b[1].ready = false;
    b[0].outstanding = 3;
    b[2].outstanding = 1;
    CHECK_INT(balance_pick(b, 3, &rr, -1), 1);
    b[1].outstanding = 7;
    CHECK_INT(balance_pick(b, 3, &rr, -1), 0);
    CHECK_INT(balance_pick(b, 3, &rr, 0), 1);
    /* All ejected: the least outstanding of all (the single-instance
     * behaviour: try, and answer 502/504 if it fails). */
    b[0].ejected = b[1].ejected = true;
    CHECK_INT(balance_pick(b, 3, &rr, -1), 2);
    CHECK_INT(balance_pick(b, 3, &rr, 2), 0);
    /* One instance, excluded: there is no other. */
    CHECK_INT(balance_pick(b, 1, &rr, 0), -1);
    CHECK_INT(balance_pick(b, 0, &rr, -1), -1);
}

static void test_ejection(void)
{
    balance_state b;
    memset(&b, 0, sizeof b);
    b.ready = true;
    /* Failures in a row eject at the limit, not before; a success between
     * them starts the count again. */
    CHECK(!balance_record(&b, HTTPC_CONNECT, 1000, 3, 5000));
    CHECK(!balance_record(&b, HTTPC_TIMEOUT, 1000, 3, 5000));
    CHECK(!balance_record(&b, HTTPC_OK, 1000, 3, 5000));
    CHECK(!balance_record(&b, HTTPC_BROKEN, 1000, 3, 5000));
    CHECK(!balance_record(&b, HTTPC_CONNECT, 1000, 3, 5000));
    /* Refused in the gateway (breaker, bulkhead): never sent, no verdict. */
    CHECK(!balance_record(&b, HTTPC_OPEN, 1000, 3, 5000));
    CHECK(!balance_record(&b, HTTPC_BUSY, 1000, 3, 5000));
    CHECK(!b.ejected);
    CHECK(balance_record(&b, HTTPC_CONNECT, 2000, 3, 5000));
    CHECK(b.ejected);
    CHECK_INT(b.ejections, 1);
    CHECK_INT(b.ejected_until_ms, 7000);
    /* Calls already out that fail too do not eject it twice. */
    for (int k = 0; k < 5; k++)
        CHECK(!balance_record(&b, HTTPC_CONNECT, 2500, 3, 5000));
    CHECK_INT(b.ejections, 1);

    /* Back only through a probe, and only after the ejection time. */
    CHECK(!balance_probed(&b, true, 6999));
    CHECK(b.ejected);
    CHECK(!balance_probed(&b, false, 8000));
    CHECK(b.ejected && !b.ready);
    CHECK(balance_probed(&b, true, 9000));
    CHECK(!b.ejected && b.ready);
    CHECK_INT(b.failures, 0);
    /* A probe on an instance that is not ejected only records readiness. */
    CHECK(!balance_probed(&b, false, 9100));
    CHECK(!b.ready && !b.ejected);
}

static void test_ejected_instance_not_chosen(void)
{
    balance_state b[2];
    ready_all(b, 2);
    unsigned rr = 0;
    for (int k = 0; k < 3; k++)
        balance_record(&b[0], HTTPC_CONNECT, 100, 3, 1000);
    for (int k = 0; k < 6; k++)
        CHECK_INT(balance_pick(b, 2, &rr, -1), 1);
    balance_probed(&b[0], true, 1100);
    int seen0 = 0;
    for (int k = 0; k < 6; k++)
        seen0 += balance_pick(b, 2, &rr, -1) == 0;
    CHECK_INT(seen0, 3);
}

static void test_retryable(void)
{
    /* Never sent (could not connect, breaker open, bulkhead full): any
     * method goes to another instance, a POST too -- nothing reached the
     * first. A broken connection may have delivered the request: only an
     * idempotent call goes again. A timeout never (still being worked on). */
    CHECK(balance_retryable(HTTPC_CONNECT, true));
    CHECK(balance_retryable(HTTPC_BROKEN, true));
    CHECK(balance_retryable(HTTPC_OPEN, true));
    CHECK(balance_retryable(HTTPC_BUSY, true));
    CHECK(!balance_retryable(HTTPC_TIMEOUT, true));
    CHECK(!balance_retryable(HTTPC_OK, true));
    CHECK(balance_retryable(HTTPC_CONNECT, false));
    CHECK(balance_retryable(HTTPC_OPEN, false));
    CHECK(balance_retryable(HTTPC_BUSY, false));
    CHECK(!balance_retryable(HTTPC_BROKEN, false));
    CHECK(!balance_retryable(HTTPC_TIMEOUT, false));
    CHECK(!balance_retryable(HTTPC_OK, false));
}

static void test_gone_never_chosen(void)
{
    balance_state b[2];
    ready_all(b, 2);
    unsigned rr = 0;
    b[1].gone = true;
    for (int k = 0; k < 4; k++)
        CHECK_INT(balance_pick(b, 2, &rr, -1), 0);
    /* Not even as the last resort, nor for a retry away from the other. */
    b[0].ready = false;
    CHECK_INT(balance_pick(b, 2, &rr, -1), 0);
    CHECK_INT(balance_pick(b, 2, &rr, 0), -1);
}

static void test_first_outcome_wins(void)
{
    /* A broken first attempt may have been delivered: a second one that
     * was never sent must not make the caller believe nothing was. */
    CHECK(balance_first_outcome_wins(HTTPC_BROKEN, HTTPC_BUSY));
    CHECK(balance_first_outcome_wins(HTTPC_BROKEN, HTTPC_OPEN));
    CHECK(balance_first_outcome_wins(HTTPC_BROKEN, HTTPC_CONNECT));
    CHECK(!balance_first_outcome_wins(HTTPC_BROKEN, HTTPC_OK));
    CHECK(!balance_first_outcome_wins(HTTPC_BROKEN, HTTPC_TIMEOUT));
    CHECK(!balance_first_outcome_wins(HTTPC_CONNECT, HTTPC_BUSY));
    CHECK(!balance_first_outcome_wins(HTTPC_BUSY, HTTPC_BUSY));
    CHECK(!balance_first_outcome_wins(HTTPC_OPEN, HTTPC_CONNECT));
}

static void test_probe_pace(void)
{
    balance_pace pace;
    balance_pace_init(&pace, 1000);
    /* Not ready: fast, doubling, then capped at the interval. */
    const int expected[] = {25, 50, 100, 200, 400, 800, 1000, 1000};
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++)
        CHECK_INT(balance_pace_next(&pace, false), expected[i]);
    /* Ready: the interval, as long as it stays ready. */
    CHECK_INT(balance_pace_next(&pace, true), 1000);
    CHECK_INT(balance_pace_next(&pace, true), 1000);
    /* Not ready again: the fast pace starts over. */
    CHECK_INT(balance_pace_next(&pace, false), 25);
    CHECK_INT(balance_pace_next(&pace, false), 50);
    CHECK_INT(balance_pace_next(&pace, true), 1000);
    CHECK_INT(balance_pace_next(&pace, false), 25);

    /* An interval below the fast delay caps it too; the doubling never
     * overflows on the longest interval. */
    balance_pace_init(&pace, 20);
    CHECK_INT(balance_pace_next(&pace, false), 20);
    CHECK_INT(balance_pace_next(&pace, false), 20);
    balance_pace_init(&pace, 600000);
    int delay = 0;
    for (int i = 0; i < 100; i++) {
        delay = balance_pace_next(&pace, false);
        CHECK(delay >= BALANCE_PROBE_FAST_MS && delay <= 600000);
    }
    CHECK_INT(delay, 600000);

    CHECK_INT(balance_probe_timeout_ms(200), 200);
    CHECK_INT(balance_probe_timeout_ms(1000), 1000);
    CHECK_INT(balance_probe_timeout_ms(600000), BALANCE_PROBE_TIMEOUT_MAX_MS);
}

int main(void)
{
    test_round_robin_ties();
    test_least_outstanding();
    test_not_ready_and_ejected_skipped();
    test_ejection();
    test_ejected_instance_not_chosen();
    test_retryable();
    test_gone_never_chosen();
    test_first_outcome_wins();
    test_probe_pace();
    return test_done("lib/balance");
}
