/* balance.c: which instance of an upstream gets a call, as pure functions.
 *
 * Least outstanding requests, because the gateway sees every call it sends
 * and a slow instance piles up calls while a fast one empties: counting
 * them steers new calls away from the slow one without any timing. Ties
 * (the common case at low load, every count 0) go round-robin from a cursor
 * so that sequential calls alternate instead of all landing on the first.
 *
 * Two ways out of the rotation: the probe's verdict (upstream.c: a frozen or
 * stopped instance stops answering /health/ready), and passive ejection,
 * after GW_EJECT_FAILURES calls in a row failed on the transport (connect
 * refused, connection broken, timeout), which reacts between two probes.
 * An ejected instance stays out for the ejection time and then until a
 * probe finds it ready: coming back is the probe's call, never a customer
 * request's. Answers of any status count as success here: an upstream's
 * 5xx is its own deliberate answer (as for the breaker, upstream.c).
 *
 * Nothing here does I/O; tests/unit/gateway/test_balance.c checks the
 * rules. */
#include "gateway.h"

static int gw_pick_among(const gw_balance *b, int n, unsigned *rr, int exclude, bool usable_only)
{
    int best = -1;
    unsigned start = *rr % (unsigned)n;
    for (int k = 0; k < n; k++) {
        int i = (int)((start + (unsigned)k) % (unsigned)n);
        if (i == exclude)
            continue;
        if (usable_only && (!b[i].ready || b[i].ejected))
            continue;
        /* Strictly fewer: the first in turn wins a tie. */
        if (best < 0 || b[i].outstanding < b[best].outstanding)
            best = i;
    }
    if (best >= 0)
        *rr = (unsigned)best + 1;
    return best;
}

int gw_balance_pick(const gw_balance *b, int n, unsigned *rr, int exclude)
{
    if (n <= 0)
        return -1;
    int i = gw_pick_among(b, n, rr, exclude, true);
    return i >= 0 ? i : gw_pick_among(b, n, rr, exclude, false);
}

static bool gw_transport_failure(httpc_result result)
{
    return result == HTTPC_CONNECT || result == HTTPC_BROKEN || result == HTTPC_TIMEOUT;
}

bool gw_balance_record(gw_balance *b, httpc_result result, unsigned long long now_ms,
                       unsigned fail_limit, unsigned eject_ms)
{
    if (result == HTTPC_OK) {
        b->failures = 0;
        return false;
    }
    /* OPEN and BUSY were refused in the gateway, never sent: they say
     * nothing new about the instance. */
    if (!gw_transport_failure(result))
        return false;
    b->failures++;
    if (b->ejected || b->failures < fail_limit)
        return false;
    b->ejected = true;
    b->ejected_until_ms = now_ms + eject_ms;
    b->failures = 0;
    b->ejections++;
    return true;
}

bool gw_balance_probed(gw_balance *b, bool ready, unsigned long long now_ms)
{
    b->ready = ready;
    if (!b->ejected || !ready || now_ms < b->ejected_until_ms)
        return false;
    b->ejected = false;
    b->failures = 0;
    return true;
}

bool gw_balance_retryable(httpc_result result, bool idempotent)
{
    if (!idempotent)
        return false;
    return result == HTTPC_CONNECT || result == HTTPC_BROKEN || result == HTTPC_OPEN ||
           result == HTTPC_BUSY;
}
