/* breaker.h: a circuit breaker, pure logic, driven by the caller's clock.
 *
 * CLOSED: calls pass; the breaker opens after `consecutive_failures` failures
 * in a row, or when at least `min_calls` calls in the last `window_ms` have a
 * failure ratio >= `failure_ratio`.
 * OPEN: calls are refused (fail fast) until `open_ms` has passed, then
 * HALF_OPEN: one trial call at a time passes; its success closes the
 * breaker, its failure opens it again for another `open_ms`.
 * Every state change is logged (log.h) and exported as the gauge
 * carshare_breaker_state{upstream="name"} (0 closed, 1 open, 2 half-open),
 * plus the counter carshare_breaker_rejected_total{upstream="name"}. */
#ifndef CARSHARE_BREAKER_H
#define CARSHARE_BREAKER_H

#include <stdbool.h>

typedef enum { BREAKER_CLOSED = 0, BREAKER_OPEN = 1, BREAKER_HALF_OPEN = 2 } breaker_state;

typedef struct breaker_config {
    int consecutive_failures;   /* default 5 */
    double failure_ratio;       /* default 0.5 */
    int min_calls;              /* default 20 */
    int window_ms;              /* default 10000 */
    int open_ms;                /* default 5000 */
} breaker_config;

typedef struct breaker {
    char name[64];
    breaker_config cfg;
    breaker_state state;
    unsigned long long opened_at_ms;
    bool trial_in_flight;
    int consecutive;
    /* sliding window: counts per 1/10th of window_ms */
    unsigned long long bucket_start_ms[10];
    int bucket_calls[10], bucket_failures[10];
} breaker;

/* cfg NULL = defaults; zero fields also take defaults. */
void breaker_init(breaker *b, const char *name, const breaker_config *cfg);

/* Whether a call may go now. In HALF_OPEN, a true answer reserves the single
 * trial: the caller must then call breaker_record for it. */
bool breaker_allow(breaker *b, unsigned long long now_ms);
void breaker_record(breaker *b, bool success, unsigned long long now_ms);

/* Milliseconds until an OPEN breaker lets a trial through (for Retry-After). */
unsigned long long breaker_retry_in_ms(const breaker *b, unsigned long long now_ms);
const char *breaker_state_name(breaker_state s);

#endif
