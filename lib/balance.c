/* balance.c: which instance of an upstream gets a call, as pure functions
 * (balance.h; moved here from the gateway so that order's payment client
 * follows the same rules).
 *
 * Least outstanding calls, because the caller sees every call it sends and
 * a slow instance piles up calls while a fast one empties: counting them
 * steers new calls away from the slow one without any timing. Ties (the
 * common case at low load, every count 0) go round-robin from a cursor, so
 * that sequential calls alternate instead of all landing on the first.
 *
 * Two ways out of the rotation: the probe's verdict (balance_set.c: a
 * frozen or stopped instance stops answering /health/ready), and passive
 * ejection after a few transport failures in a row, which reacts between
 * two probes. An ejected instance stays out for the ejection time and then
 * until a probe finds it ready: coming back is the probe's call, never a
 * customer request's. Answers of any status count as success here: an
 * upstream's 5xx is its own deliberate answer. A gone instance (its address
 * vanished from DNS) is never chosen, not even as a last resort: it is
 * only finishing its calls.
 *
 * Nothing here does I/O; tests/unit/lib/test_balance.c checks the rules. */
#include "balance.h"

/* How choosy a pick is. When no instance is usable, one that is merely not
 * ready (starting, or its bus is down: it still accepts connections and
 * answers 503 at worst) is tried before one ejected for transport failures
 * (it refused or dropped connections a moment ago, and a dead address can
 * cost the whole connect timeout). Seen with replicas that share one nats
 * node: its loss made every instance not ready at once, and a third of the
 * calls went to an empty rollout slot that refused them. */
typedef enum { PICK_USABLE, PICK_NOT_EJECTED, PICK_ANY } pick_tier;

static bool balance_fits(const balance_state *b, pick_tier tier)
{
    switch (tier) {
    case PICK_USABLE: return b->ready && !b->ejected;
    case PICK_NOT_EJECTED: return !b->ejected;
    default: return true;
    }
}

static int balance_pick_among(const balance_state *b, int n, unsigned *rr, int exclude,
                              pick_tier tier)
{
    int best = -1;
    unsigned start = *rr % (unsigned)n;
    for (int k = 0; k < n; k++) {
        int i = (int)((start + (unsigned)k) % (unsigned)n);
        if (i == exclude || b[i].gone || !balance_fits(&b[i], tier))
            continue;
        /* Strictly fewer: the first in turn wins a tie. */
        if (best < 0 || b[i].outstanding < b[best].outstanding)
            best = i;
    }
    if (best >= 0)
        *rr = (unsigned)best + 1;
    return best;
}

int balance_pick(const balance_state *b, int n, unsigned *rr, int exclude)
{
    if (n <= 0)
        return -1;
    int i = -1;
    for (pick_tier tier = PICK_USABLE; i < 0 && tier <= PICK_ANY; tier++)
        i = balance_pick_among(b, n, rr, exclude, tier);
    return i;
}

static bool balance_transport_failure(httpc_result result)
{
    return result == HTTPC_CONNECT || result == HTTPC_BROKEN || result == HTTPC_TIMEOUT;
}

bool balance_record(balance_state *b, httpc_result result, unsigned long long now_ms,
                    unsigned fail_limit, unsigned eject_ms)
{
    if (result == HTTPC_OK) {
        b->failures = 0;
        return false;
    }
    /* OPEN and BUSY were refused by our own client, never sent: they say
     * nothing new about the instance. */
    if (!balance_transport_failure(result))
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

bool balance_probed(balance_state *b, bool ready, unsigned long long now_ms)
{
    b->ready = ready;
    if (!b->ejected || !ready || now_ms < b->ejected_until_ms)
        return false;
    b->ejected = false;
    b->failures = 0;
    return true;
}

/* A call that never left (could not connect, refused by the instance's
 * breaker or bulkhead) goes to another instance whatever its method:
 * nothing reached the first, so nothing can happen twice. httpc retries
 * only idempotent calls itself, so for the others these results mean that
 * no attempt was written at all. A broken connection may have delivered
 * the request: only an idempotent call goes again after it. */
bool balance_retryable(httpc_result result, bool idempotent)
{
    if (result == HTTPC_CONNECT || result == HTTPC_OPEN || result == HTTPC_BUSY)
        return true;
    return idempotent && result == HTTPC_BROKEN;
}

bool balance_first_outcome_wins(httpc_result first, httpc_result second)
{
    bool second_unsent = second == HTTPC_CONNECT || second == HTTPC_OPEN || second == HTTPC_BUSY;
    return first == HTTPC_BROKEN && second_unsent;
}

/* ---- probe pacing ----
 *
 * While an instance is not ready (at start, while it is still starting;
 * after it failed) probes follow each other fast -- BALANCE_PROBE_FAST_MS,
 * doubling after each failed probe up to the interval -- so that a caller
 * uses it within a few tens of milliseconds of its start. Once ready, it is
 * probed every interval, and the first failed probe starts the fast pace
 * again. */

void balance_pace_init(balance_pace *pace, int interval_ms)
{
    pace->interval_ms = interval_ms > 0 ? interval_ms : 1;
    pace->fast_ms = BALANCE_PROBE_FAST_MS;
}

int balance_pace_next(balance_pace *pace, bool ready)
{
    if (ready) {
        pace->fast_ms = BALANCE_PROBE_FAST_MS;
        return pace->interval_ms;
    }
    int delay = pace->fast_ms < pace->interval_ms ? pace->fast_ms : pace->interval_ms;
    /* Doubling backs off from an instance that stays down for long, so a
     * missing one costs one probe per interval, not forty a second. */
    pace->fast_ms = delay > pace->interval_ms / 2 ? pace->interval_ms : delay * 2;
    return delay;
}

int balance_probe_timeout_ms(int interval_ms)
{
    return interval_ms < BALANCE_PROBE_TIMEOUT_MAX_MS ? interval_ms : BALANCE_PROBE_TIMEOUT_MAX_MS;
}
