/* test_balance.c: choosing among an upstream's instances (balance.c), with
 * no sockets: least outstanding with round-robin ties, readiness and
 * ejection keeping an instance out, coming back only through a probe after
 * the ejection time, and which failed calls go to another instance. */
#include <string.h>

#include "gateway.h"
#include "testing.h"

static void ready_all(gw_balance *b, int n)
{
    memset(b, 0, (size_t)n * sizeof *b);
    for (int i = 0; i < n; i++)
        b[i].ready = true;
}

static void test_round_robin_ties(void)
{
    gw_balance b[3];
    ready_all(b, 3);
    unsigned rr = 0;
    /* Nothing outstanding: every instance in turn, again and again. */
    int seen[3] = {0};
    for (int k = 0; k < 30; k++) {
        int i = gw_balance_pick(b, 3, &rr, -1);
        CHECK_INT(i, k % 3);
        seen[i]++;
    }
    CHECK_INT(seen[0], 10);
    CHECK_INT(seen[1], 10);
    CHECK_INT(seen[2], 10);
}

static void test_least_outstanding(void)
{
    gw_balance b[3];
    ready_all(b, 3);
    unsigned rr = 0;
    b[0].outstanding = 4;
    b[1].outstanding = 1;
    b[2].outstanding = 2;
    CHECK_INT(gw_balance_pick(b, 3, &rr, -1), 1);
    /* A slow instance keeps its calls: new ones go to the others. */
    b[1].outstanding = 3;
    CHECK_INT(gw_balance_pick(b, 3, &rr, -1), 2);
    /* Ties among the least loaded only, in turn. */
    b[0].outstanding = 5;
    b[1].outstanding = 2;
    b[2].outstanding = 2;
    rr = 0;
    CHECK_INT(gw_balance_pick(b, 3, &rr, -1), 1);
    CHECK_INT(gw_balance_pick(b, 3, &rr, -1), 2);
    CHECK_INT(gw_balance_pick(b, 3, &rr, -1), 1);
}

static void test_not_ready_and_ejected_skipped(void)
{
    gw_balance b[3];
    ready_all(b, 3);
    unsigned rr = 0;
    b[0].ready = false;
    b[2].ejected = true;
    for (int k = 0; k < 5; k++)
        CHECK_INT(gw_balance_pick(b, 3, &rr, -1), 1);
    /* Excluding the one usable instance (a retry away from it): the others
     * are still tried rather than nothing -- the call fails as it would
     * have anyway. */
    int other = gw_balance_pick(b, 3, &rr, 1);
    CHECK(other == 0 || other == 2);
    /* None usable: the least outstanding of all (today's single-instance
     * behaviour: try, and answer 502/504 if it fails). */
    b[1].ready = false;
    b[0].outstanding = 3;
    b[2].outstanding = 1;
    CHECK_INT(gw_balance_pick(b, 3, &rr, -1), 1);
    b[1].outstanding = 7;
    CHECK_INT(gw_balance_pick(b, 3, &rr, -1), 2);
    /* One instance, excluded: there is no other. */
    CHECK_INT(gw_balance_pick(b, 1, &rr, 0), -1);
    CHECK_INT(gw_balance_pick(b, 0, &rr, -1), -1);
}

static void test_ejection(void)
{
    gw_balance b;
    memset(&b, 0, sizeof b);
    b.ready = true;
    /* Failures in a row eject at the limit, not before; a success between
     * them starts the count again. */
    CHECK(!gw_balance_record(&b, HTTPC_CONNECT, 1000, 3, 5000));
    CHECK(!gw_balance_record(&b, HTTPC_TIMEOUT, 1000, 3, 5000));
    CHECK(!gw_balance_record(&b, HTTPC_OK, 1000, 3, 5000));
    CHECK(!gw_balance_record(&b, HTTPC_BROKEN, 1000, 3, 5000));
    CHECK(!gw_balance_record(&b, HTTPC_CONNECT, 1000, 3, 5000));
    /* Refused in the gateway (breaker, bulkhead): never sent, no verdict. */
    CHECK(!gw_balance_record(&b, HTTPC_OPEN, 1000, 3, 5000));
    CHECK(!gw_balance_record(&b, HTTPC_BUSY, 1000, 3, 5000));
    CHECK(!b.ejected);
    CHECK(gw_balance_record(&b, HTTPC_CONNECT, 2000, 3, 5000));
    CHECK(b.ejected);
    CHECK_INT(b.ejections, 1);
    CHECK_INT(b.ejected_until_ms, 7000);
    /* Calls already out that fail too do not eject it twice. */
    for (int k = 0; k < 5; k++)
        CHECK(!gw_balance_record(&b, HTTPC_CONNECT, 2500, 3, 5000));
    CHECK_INT(b.ejections, 1);

    /* Back only through a probe, and only after the ejection time. */
    CHECK(!gw_balance_probed(&b, true, 6999));
    CHECK(b.ejected);
    CHECK(!gw_balance_probed(&b, false, 8000));
    CHECK(b.ejected && !b.ready);
    CHECK(gw_balance_probed(&b, true, 9000));
    CHECK(!b.ejected && b.ready);
    CHECK_INT(b.failures, 0);
    /* A probe on an instance that is not ejected only records readiness. */
    CHECK(!gw_balance_probed(&b, false, 9100));
    CHECK(!b.ready && !b.ejected);
}

static void test_ejected_instance_not_chosen(void)
{
    gw_balance b[2];
    ready_all(b, 2);
    unsigned rr = 0;
    for (int k = 0; k < 3; k++)
        gw_balance_record(&b[0], HTTPC_CONNECT, 100, 3, 1000);
    for (int k = 0; k < 6; k++)
        CHECK_INT(gw_balance_pick(b, 2, &rr, -1), 1);
    gw_balance_probed(&b[0], true, 1100);
    int seen0 = 0;
    for (int k = 0; k < 6; k++)
        seen0 += gw_balance_pick(b, 2, &rr, -1) == 0;
    CHECK_INT(seen0, 3);
}

static void test_retryable(void)
{
    /* GET/HEAD only: a POST that failed to connect is not sent twice by the
     * gateway, Idempotency-Key or not (the client decides). */
    CHECK(gw_balance_retryable(HTTPC_CONNECT, true));
    CHECK(gw_balance_retryable(HTTPC_BROKEN, true));
    CHECK(gw_balance_retryable(HTTPC_OPEN, true));
    CHECK(gw_balance_retryable(HTTPC_BUSY, true));
    CHECK(!gw_balance_retryable(HTTPC_TIMEOUT, true));
    CHECK(!gw_balance_retryable(HTTPC_OK, true));
    CHECK(!gw_balance_retryable(HTTPC_CONNECT, false));
    CHECK(!gw_balance_retryable(HTTPC_BUSY, false));
}

int main(void)
{
    test_round_robin_ties();
    test_least_outstanding();
    test_not_ready_and_ejected_skipped();
    test_ejection();
    test_ejected_instance_not_chosen();
    test_retryable();
    return test_done("gateway/balance");
}
