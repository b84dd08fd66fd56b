/* test_breaker.c: the circuit breaker walked through every transition with a
 * made-up clock (the breaker never reads time itself, so no sleeping). */
#include <string.h>

#include "breaker.h"
#include "testing.h"

static void test_defaults(void)
{
    breaker b;
    breaker_init(&b, "payment", NULL);
    CHECK_STR(b.name, "payment");
    CHECK_INT(b.state, BREAKER_CLOSED);
    CHECK_INT(b.cfg.consecutive_failures, 5);
    CHECK(b.cfg.failure_ratio > 0.49 && b.cfg.failure_ratio < 0.51);
    CHECK_INT(b.cfg.min_calls, 20);
    CHECK_INT(b.cfg.window_ms, 10000);
    CHECK_INT(b.cfg.open_ms, 5000);

    /* zero fields take defaults, set ones are kept */
    breaker_config cfg = { .consecutive_failures = 3, .open_ms = 700 };
    breaker_init(&b, "order", &cfg);
    CHECK_INT(b.cfg.consecutive_failures, 3);
    CHECK_INT(b.cfg.open_ms, 700);
    CHECK_INT(b.cfg.min_calls, 20);
    CHECK_INT(b.cfg.window_ms, 10000);

    CHECK_STR(breaker_state_name(BREAKER_CLOSED), "closed");
    CHECK_STR(breaker_state_name(BREAKER_OPEN), "open");
    CHECK_STR(breaker_state_name(BREAKER_HALF_OPEN), "half_open");
}

static void test_consecutive_failures_open(void)
{
    breaker_config cfg = { .consecutive_failures = 3, .min_calls = 1000, .open_ms = 1000 };
    breaker b;
    breaker_init(&b, "t", &cfg);
    unsigned long long t = 50000;

    CHECK(breaker_allow(&b, t));
    breaker_record(&b, false, t);
    breaker_record(&b, false, t + 1);
    CHECK_INT(b.state, BREAKER_CLOSED);
    CHECK_INT(breaker_retry_in_ms(&b, t + 1), 0);
    /* a success in between resets the run */
    breaker_record(&b, true, t + 2);
    breaker_record(&b, false, t + 3);
    breaker_record(&b, false, t + 4);
    CHECK_INT(b.state, BREAKER_CLOSED);
    breaker_record(&b, false, t + 5);
    CHECK_INT(b.state, BREAKER_OPEN);
    CHECK_INT(b.opened_at_ms, t + 5);

    /* open: refused, with the cool-down left */
    CHECK(!breaker_allow(&b, t + 6));
    CHECK_INT(breaker_retry_in_ms(&b, t + 5), 1000);
    CHECK_INT(breaker_retry_in_ms(&b, t + 405), 600);
    CHECK(!breaker_allow(&b, t + 5 + 999));
    CHECK_INT(b.state, BREAKER_OPEN);
}

static void test_half_open_single_trial(void)
{
    breaker_config cfg = { .consecutive_failures = 1, .min_calls = 1000, .open_ms = 2000 };
    breaker b;
    breaker_init(&b, "t", &cfg);
    unsigned long long t = 10;

    breaker_record(&b, false, t);
    CHECK_INT(b.state, BREAKER_OPEN);

    /* a late outcome of a call admitted before opening changes nothing */
    breaker_record(&b, true, t + 100);
    CHECK_INT(b.state, BREAKER_OPEN);
    CHECK_INT(breaker_retry_in_ms(&b, t + 100), 1900);

    /* cool-down over: exactly one trial passes */
    CHECK_INT(breaker_retry_in_ms(&b, t + 2000), 0);
    CHECK(breaker_allow(&b, t + 2000));
    CHECK_INT(b.state, BREAKER_HALF_OPEN);
    CHECK(b.trial_in_flight);
    CHECK(!breaker_allow(&b, t + 2001));
    CHECK(!breaker_allow(&b, t + 2500));
    CHECK(breaker_retry_in_ms(&b, t + 2001) > 0);
    CHECK(breaker_retry_in_ms(&b, t + 2001) <= 2000);

    /* the trial fails: open again for a full open_ms from now */
    breaker_record(&b, false, t + 2600);
    CHECK_INT(b.state, BREAKER_OPEN);
    CHECK_INT(b.opened_at_ms, t + 2600);
    CHECK(!breaker_allow(&b, t + 2600 + 1999));
    CHECK_INT(breaker_retry_in_ms(&b, t + 2600), 2000);

    /* next trial succeeds: closed, and calls flow again */
    CHECK(breaker_allow(&b, t + 4600));
    CHECK_INT(b.state, BREAKER_HALF_OPEN);
    breaker_record(&b, true, t + 4700);
    CHECK_INT(b.state, BREAKER_CLOSED);
    CHECK(!b.trial_in_flight);
    CHECK(breaker_allow(&b, t + 4701));
    CHECK(breaker_allow(&b, t + 4702));
    CHECK_INT(breaker_retry_in_ms(&b, t + 4702), 0);

    /* after closing, the failure count starts afresh (1 needed here) */
    breaker_record(&b, false, t + 4800);
    CHECK_INT(b.state, BREAKER_OPEN);
}

static void test_half_open_trial_released_by_record(void)
{
    /* While the trial is out nobody else passes; once it is recorded as a
     * success the breaker is closed and everyone passes. */
    breaker_config cfg = { .consecutive_failures = 2, .open_ms = 100 };
    breaker b;
    breaker_init(&b, "t", &cfg);
    breaker_record(&b, false, 1000);
    breaker_record(&b, false, 1001);
    CHECK_INT(b.state, BREAKER_OPEN);
    CHECK(breaker_allow(&b, 1101));
    int passed = 0;
    for (int i = 0; i < 10; i++)
        passed += breaker_allow(&b, 1102 + (unsigned long long)i);
    CHECK_INT(passed, 0);
    breaker_record(&b, true, 1200);
    passed = 0;
    for (int i = 0; i < 10; i++)
        passed += breaker_allow(&b, 1201 + (unsigned long long)i);
    CHECK_INT(passed, 10);
}

static void test_window_ratio(void)
{
    /* consecutive failures out of the way: only the ratio rule can open */
    breaker_config cfg = { .consecutive_failures = 1000, .failure_ratio = 0.5,
                           .min_calls = 10, .window_ms = 1000, .open_ms = 500 };
    breaker b;
    breaker_init(&b, "t", &cfg);
    unsigned long long t = 100000;

    /* 9 calls, 5 failing: ratio above 0.5 but fewer than min_calls */
    for (int i = 0; i < 9; i++)
        breaker_record(&b, i % 2 == 1, t + (unsigned long long)i);
    CHECK_INT(b.state, BREAKER_CLOSED);

    /* 9 calls with 4 failures, then a 10th failure: 5 of 10, 0.5 >= 0.5 */
    breaker_init(&b, "t", &cfg);
    for (int i = 0; i < 9; i++)
        breaker_record(&b, i % 2 == 0, t + (unsigned long long)i);
    CHECK_INT(b.state, BREAKER_CLOSED);
    breaker_record(&b, false, t + 9);
    CHECK_INT(b.state, BREAKER_OPEN);
    CHECK(!breaker_allow(&b, t + 10));

    /* below the ratio stays closed: 4 failures in 10 */
    breaker_init(&b, "t", &cfg);
    for (int i = 0; i < 10; i++)
        breaker_record(&b, i < 6, t + (unsigned long long)i);
    CHECK_INT(b.state, BREAKER_CLOSED);
    /* many more successes dilute further failures */
    for (int i = 0; i < 20; i++)
        breaker_record(&b, true, t + 20 + (unsigned long long)i);
    breaker_record(&b, false, t + 50);
    breaker_record(&b, false, t + 51);
    CHECK_INT(b.state, BREAKER_CLOSED);
}

static void test_window_slides(void)
{
    breaker_config cfg = { .consecutive_failures = 1000, .failure_ratio = 0.5,
                           .min_calls = 10, .window_ms = 1000, .open_ms = 500 };
    breaker b;
    breaker_init(&b, "t", &cfg);
    unsigned long long t = 200000;

    /* 9 failures long ago... */
    for (int i = 0; i < 9; i++)
        breaker_record(&b, false, t + (unsigned long long)i);
    CHECK_INT(b.state, BREAKER_CLOSED);
    /* ...have left the window 2 s later: 1 failure + 9 successes is 10% */
    unsigned long long later = t + 2000;
    breaker_record(&b, false, later);
    for (int i = 0; i < 9; i++)
        breaker_record(&b, true, later + 1 + (unsigned long long)i);
    CHECK_INT(b.state, BREAKER_CLOSED);

    /* while failures spread within the window do add up across buckets */
    breaker_init(&b, "t", &cfg);
    for (int i = 0; i < 10; i++)
        breaker_record(&b, i % 2 == 0, t + (unsigned long long)i * 95);  /* 0..855 ms */
    CHECK_INT(b.state, BREAKER_OPEN);
}

int main(void)
{
    test_defaults();
    test_consecutive_failures_open();
    test_half_open_single_trial();
    test_half_open_trial_released_by_record();
    test_window_ratio();
    test_window_slides();
    return test_done("test_breaker");
}
