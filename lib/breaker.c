/* breaker.c: the circuit breaker of breaker.h.
 *
 * The breaker is pure bookkeeping: it never reads a clock and never starts a
 * timer. Every decision takes the caller's `now_ms` (a monotonic clock), so
 * the logic is deterministic and a unit test can walk it through every state
 * with made-up times.
 *
 * Failures are judged two ways while CLOSED:
 *  - a run of `consecutive_failures` failures in a row opens at once: this
 *    catches a dead upstream quickly even at a low call rate;
 *  - a failure ratio over a sliding window of `window_ms`, once the window
 *    holds at least `min_calls` calls: this catches an upstream that fails
 *    often but not always, which a consecutive count would never see.
 * The window is 10 buckets of window_ms/10 each, so it slides in steps of a
 * tenth of the window and costs a fixed 10-element sum per record, with no
 * allocation and no per-call history.
 *
 * OPEN refuses everything until open_ms has passed since it opened. The
 * first breaker_allow after that moves to HALF_OPEN and reserves the single
 * trial call; everybody else is refused while the trial is out. Whatever is
 * recorded next decides: success closes, failure opens for another open_ms.
 *
 * Outcomes recorded while OPEN belong to calls admitted before the breaker
 * opened; they are ignored, since the decision to open is already made and
 * a late success must not cut the cool-down short.
 *
 * Every state change is one log line and one update of the gauge
 * carshare_breaker_state{upstream="name"}; each refused call counts in
 * carshare_breaker_rejected_total{upstream="name"}. */
#include "breaker.h"

#include <stdio.h>
#include <string.h>

#include "log.h"
#include "metrics.h"

#define BREAKER_BUCKETS 10

/* A refusal while the half-open trial is out has no known end: this is the
 * hint given to callers (for Retry-After), capped by open_ms. */
#define BREAKER_TRIAL_HINT_MS 1000ULL

static const breaker_config breaker_defaults = {
    .consecutive_failures = 5,
    .failure_ratio = 0.5,
    .min_calls = 20,
    .window_ms = 10000,
    .open_ms = 5000,
};

const char *breaker_state_name(breaker_state s)
{
    switch (s) {
    case BREAKER_CLOSED: return "closed";
    case BREAKER_OPEN: return "open";
    case BREAKER_HALF_OPEN: return "half_open";
    }
    return "unknown";
}

static void breaker_labels(const breaker *b, char *buf, size_t size)
{
    snprintf(buf, size, "upstream=\"%s\"", b->name);
}

static void breaker_export_state(const breaker *b)
{
    char labels[96];
    breaker_labels(b, labels, sizeof labels);
    metrics_gauge_set("carshare_breaker_state", labels, (double)b->state);
}

static void breaker_count_rejection(const breaker *b)
{
    char labels[96];
    breaker_labels(b, labels, sizeof labels);
    metrics_counter_add("carshare_breaker_rejected_total", labels, 1);
}

static unsigned long long bucket_width_ms(const breaker *b)
{
    unsigned long long w = (unsigned long long)b->cfg.window_ms / BREAKER_BUCKETS;
    return w ? w : 1;
}

static void window_clear(breaker *b)
{
    for (int i = 0; i < BREAKER_BUCKETS; i++) {
        b->bucket_start_ms[i] = 0;
        b->bucket_calls[i] = 0;
        b->bucket_failures[i] = 0;
    }
}

/* The bucket covering now_ms, emptied first if it last held an older period. */
static int window_bucket(breaker *b, unsigned long long now_ms)
{
    unsigned long long width = bucket_width_ms(b);
    unsigned long long start = now_ms - now_ms % width;
    int i = (int)((now_ms / width) % BREAKER_BUCKETS);
    if (b->bucket_start_ms[i] != start || b->bucket_calls[i] == 0) {
        b->bucket_start_ms[i] = start;
        b->bucket_calls[i] = 0;
        b->bucket_failures[i] = 0;
    }
    return i;
}

/* Calls and failures in the buckets that still overlap the window. */
static void window_sum(const breaker *b, unsigned long long now_ms, int *calls, int *failures)
{
    unsigned long long span = bucket_width_ms(b) * BREAKER_BUCKETS;
    *calls = 0;
    *failures = 0;
    for (int i = 0; i < BREAKER_BUCKETS; i++) {
        if (b->bucket_calls[i] == 0 || now_ms - b->bucket_start_ms[i] >= span)
            continue;
        *calls += b->bucket_calls[i];
        *failures += b->bucket_failures[i];
    }
}

static void breaker_move(breaker *b, breaker_state to, unsigned long long now_ms,
                         const char *why)
{
    breaker_state from = b->state;
    b->state = to;
    b->trial_in_flight = false;
    if (to == BREAKER_OPEN)
        b->opened_at_ms = now_ms;
    if (to != BREAKER_HALF_OPEN) {
        /* A fresh start for the next closed period: old failures were
         * already acted upon. */
        b->consecutive = 0;
        window_clear(b);
    }
    if (to == BREAKER_OPEN)
        log_warn("breaker=%s state=%s from=%s reason=\"%s\" open_ms=%d", b->name,
                 breaker_state_name(to), breaker_state_name(from), why, b->cfg.open_ms);
    else
        log_info("breaker=%s state=%s from=%s reason=\"%s\"", b->name,
                 breaker_state_name(to), breaker_state_name(from), why);
    breaker_export_state(b);
}

void breaker_init(breaker *b, const char *name, const breaker_config *cfg)
{
    memset(b, 0, sizeof *b);
    snprintf(b->name, sizeof b->name, "%s", name ? name : "upstream");
    b->cfg = breaker_defaults;
    if (cfg) {
        if (cfg->consecutive_failures > 0) b->cfg.consecutive_failures = cfg->consecutive_failures;
        if (cfg->failure_ratio > 0 && cfg->failure_ratio <= 1) b->cfg.failure_ratio = cfg->failure_ratio;
        if (cfg->min_calls > 0) b->cfg.min_calls = cfg->min_calls;
        if (cfg->window_ms > 0) b->cfg.window_ms = cfg->window_ms;
        if (cfg->open_ms > 0) b->cfg.open_ms = cfg->open_ms;
    }
    b->state = BREAKER_CLOSED;
    breaker_export_state(b);
}

static bool cool_down_over(const breaker *b, unsigned long long now_ms)
{
    return now_ms >= b->opened_at_ms + (unsigned long long)b->cfg.open_ms;
}

bool breaker_allow(breaker *b, unsigned long long now_ms)
{
    switch (b->state) {
    case BREAKER_CLOSED:
        return true;
    case BREAKER_OPEN:
        if (!cool_down_over(b, now_ms))
            break;
        breaker_move(b, BREAKER_HALF_OPEN, now_ms, "cool-down over, letting one trial call through");
        b->trial_in_flight = true;
        return true;
    case BREAKER_HALF_OPEN:
        if (b->trial_in_flight)
            break;
        b->trial_in_flight = true;
        return true;
    }
    breaker_count_rejection(b);
    return false;
}

static void record_closed(breaker *b, bool success, unsigned long long now_ms)
{
    int i = window_bucket(b, now_ms);
    b->bucket_calls[i]++;
    if (success) {
        b->consecutive = 0;
        return;
    }
    b->bucket_failures[i]++;
    b->consecutive++;

    if (b->consecutive >= b->cfg.consecutive_failures) {
        char why[96];
        snprintf(why, sizeof why, "%d consecutive failures", b->consecutive);
        breaker_move(b, BREAKER_OPEN, now_ms, why);
        return;
    }
    int calls, failures;
    window_sum(b, now_ms, &calls, &failures);
    if (calls >= b->cfg.min_calls && (double)failures >= b->cfg.failure_ratio * calls) {
        char why[128];
        snprintf(why, sizeof why, "%d of the last %d calls failed within %d ms",
                 failures, calls, b->cfg.window_ms);
        breaker_move(b, BREAKER_OPEN, now_ms, why);
    }
}

void breaker_record(breaker *b, bool success, unsigned long long now_ms)
{
    switch (b->state) {
    case BREAKER_CLOSED:
        record_closed(b, success, now_ms);
        break;
    case BREAKER_OPEN:
        break;   /* a straggler admitted before the breaker opened */
    case BREAKER_HALF_OPEN:
        if (success)
            breaker_move(b, BREAKER_CLOSED, now_ms, "trial call succeeded");
        else
            breaker_move(b, BREAKER_OPEN, now_ms, "trial call failed");
        break;
    }
}

unsigned long long breaker_retry_in_ms(const breaker *b, unsigned long long now_ms)
{
    unsigned long long open_ms = (unsigned long long)b->cfg.open_ms;
    switch (b->state) {
    case BREAKER_CLOSED:
        return 0;
    case BREAKER_OPEN:
        return cool_down_over(b, now_ms) ? 0 : b->opened_at_ms + open_ms - now_ms;
    case BREAKER_HALF_OPEN:
        if (!b->trial_in_flight)
            return 0;
        return open_ms < BREAKER_TRIAL_HINT_MS ? open_ms : BREAKER_TRIAL_HINT_MS;
    }
    return 0;
}
