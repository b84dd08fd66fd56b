/* test_calendar.c: day arithmetic, the company's time zone, and the
 * period rules of a rental (issue 12).
 *
 * Day numbers round-trip for every day of four centuries and agree with
 * timegm(); month and year ends and leap days are where they belong;
 * strict YYYY-MM-DD refuses dates that do not exist and other spellings;
 * the day of an instant is Seoul's (UTC+9, 15:00 UTC is already tomorrow
 * there); the period rules refuse each bad period with its own message;
 * the test clock moves "today" forward. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "order.h"
#include "testing.h"

static long day_of(const char *text)
{
    long d = -1;
    CHECK(cal_parse(text, &d));
    return d;
}

static void test_round_trip(void)
{
    /* 1970..2369: every day, against the C library's own UTC calendar. */
    for (long d = 0; d < 146097; d++) {
        long y;
        unsigned m, dd;
        cal_to_civil(d, &y, &m, &dd);
        if (cal_from_civil(y, m, dd) != d) {
            CHECK_INT(cal_from_civil(y, m, dd), d);
            break;
        }
        if (d % 97 == 0) {
            struct tm tm = {.tm_year = (int)y - 1900, .tm_mon = (int)m - 1, .tm_mday = (int)dd};
            CHECK_INT(timegm(&tm) / 86400, d);
        }
    }
    CHECK_INT(cal_from_civil(1970, 1, 1), 0);
    CHECK_INT(day_of("2026-12-13"), 20800);
}

static void test_month_and_year_ends(void)
{
    char out[CAL_DATE_SIZE];
    CHECK_STR(cal_format(day_of("2026-12-31") + 1, out), "2027-01-01");
    CHECK_STR(cal_format(day_of("2027-01-01") - 1, out), "2026-12-31");
    CHECK_STR(cal_format(day_of("2026-01-31") + 1, out), "2026-02-01");
    CHECK_STR(cal_format(day_of("2026-02-28") + 1, out), "2026-03-01");   /* not a leap year */
    CHECK_STR(cal_format(day_of("2028-02-28") + 1, out), "2028-02-29");   /* leap year */
    CHECK_STR(cal_format(day_of("2028-02-29") + 1, out), "2028-03-01");
    CHECK_STR(cal_format(day_of("2100-02-28") + 1, out), "2100-03-01");   /* century: no */
    CHECK_STR(cal_format(day_of("2000-02-28") + 1, out), "2000-02-29");   /* 400: yes */
    CHECK_STR(cal_format(day_of("2026-04-30") + 1, out), "2026-05-01");
    CHECK_INT(day_of("2027-01-01") - day_of("2026-01-01"), 365);
    CHECK_INT(day_of("2029-01-01") - day_of("2028-01-01"), 366);
    /* A 30-day period across a year end. */
    CHECK_STR(cal_format(day_of("2026-12-20") + 30, out), "2027-01-19");
}

static void test_parse_strict(void)
{
    long d;
    static const char *const bad[] = {
        "2026-02-30", "2026-02-29", "2026-13-01", "2026-00-10", "2026-04-31", "2026-12-32",
        "2026-12-00", "1969-12-31", "2026-1-05", "2026/12/10", "20261210", "2026-12-10T00:00",
        " 2026-12-10", "2026-12-10 ", "+026-12-10", "2026-12-1a", "", "today", "12-10-2026",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (cal_parse(bad[i], &d)) {
            fprintf(stderr, "accepted %s\n", bad[i]);
            CHECK(!"a bad date was accepted");
        }
    }
    CHECK(!cal_parse(NULL, &d));
    CHECK(cal_parse("2028-02-29", &d));
    CHECK(cal_parse("9999-12-31", &d));
}

static void test_time_zone(void)
{
    char err[300];
    CHECK_INT(cal_zone_init("Asia/Seoul", err, sizeof err), 0);
    /* 2026-12-31 14:59:59 UTC is 23:59:59 in Seoul; a second later it is
     * 2027-01-01 there while UTC is still on the 31st. */
    struct tm tm = {.tm_year = 126, .tm_mon = 11, .tm_mday = 31, .tm_hour = 14, .tm_min = 59,
                    .tm_sec = 59};
    time_t t = timegm(&tm);
    char out[CAL_DATE_SIZE];
    CHECK_STR(cal_format(cal_day_of(t), out), "2026-12-31");
    CHECK_STR(cal_format(cal_day_of(t + 1), out), "2027-01-01");
    /* 2026-12-10 23:30 UTC is the 11th in Seoul. */
    tm = (struct tm){.tm_year = 126, .tm_mon = 11, .tm_mday = 10, .tm_hour = 23, .tm_min = 30};
    CHECK_STR(cal_format(cal_day_of(timegm(&tm)), out), "2026-12-11");

    /* A zone with summer time: New York's day boundary moves with it. */
    CHECK_INT(cal_zone_init("America/New_York", err, sizeof err), 0);
    tm = (struct tm){.tm_year = 126, .tm_mon = 6, .tm_mday = 2, .tm_hour = 3, .tm_min = 59};
    CHECK_STR(cal_format(cal_day_of(timegm(&tm)), out), "2026-07-01");   /* 23:59 EDT */
    tm = (struct tm){.tm_year = 126, .tm_mon = 0, .tm_mday = 2, .tm_hour = 4, .tm_min = 59};
    CHECK_STR(cal_format(cal_day_of(timegm(&tm)), out), "2026-01-01");   /* 23:59 EST */

    /* Names that are not zones, and zones tzdata does not have. */
    CHECK_INT(cal_zone_init("Mars/Olympus", err, sizeof err), -1);
    CHECK(strstr(err, "tzdata") != NULL);
    CHECK_INT(cal_zone_init("../../etc/passwd", err, sizeof err), -1);
    CHECK_INT(cal_zone_init("/etc/localtime", err, sizeof err), -1);
    CHECK_INT(cal_zone_init("KST-9", err, sizeof err), -1);   /* a POSIX rule: no file */
    CHECK_INT(cal_zone_init("", err, sizeof err), -1);
    CHECK_INT(cal_zone_init("Asia/Seoul", err, sizeof err), 0);
}

static void test_test_clock(void)
{
    /* Bounded by two readings of the real clock, so a second boundary
     * between them cannot fail the test. */
    long long off = 3 * 86400 + 5;
    time_t before = time(NULL);
    cal_set_test_offset(off);
    time_t now = cal_now();
    long today = cal_today();
    time_t after = time(NULL);
    cal_set_test_offset(0);
    CHECK(now >= before + off && now <= after + off);
    CHECK(today >= cal_day_of(before + off) && today <= cal_day_of(after + off));
    CHECK(cal_now() <= time(NULL));
}

static void expect_refused(const char *from, const char *to, long today, const char *words)
{
    long f = -7, t = -7;
    char err[300] = "";
    CHECK(!rental_period(from, to, today, &f, &t, err, sizeof err));
    if (!strstr(err, words)) {
        fprintf(stderr, "period %s..%s: message \"%s\" lacks \"%s\"\n", from ? from : "-",
                to ? to : "-", err, words);
        CHECK(!"message");
    }
}

static void test_period_rules(void)
{
    long today = day_of("2026-12-13"), f, t;
    char err[300];
    CHECK(rental_period(NULL, NULL, today, &f, &t, err, sizeof err));
    CHECK_INT(f, today);
    CHECK_INT(t, today + 1);
    CHECK(rental_period("2026-12-20", NULL, today, &f, &t, err, sizeof err));
    CHECK_INT(t - f, 1);
    CHECK(rental_period(NULL, "2026-12-16", today, &f, &t, err, sizeof err));
    CHECK_INT(f, today);
    CHECK_INT(t - f, 3);
    CHECK(rental_period("2026-12-13", "2027-01-12", today, &f, &t, err, sizeof err));
    CHECK_INT(t - f, 30);
    CHECK(rental_period("2027-03-13", "2027-03-14", today, &f, &t, err, sizeof err));   /* +90 */

    expect_refused("2026-12-12", "2026-12-14", today, "past");
    expect_refused("2027-03-14", "2027-03-15", today, "90 days");
    expect_refused("2026-12-15", "2026-12-15", today, "after");
    expect_refused("2026-12-15", "2026-12-14", today, "after");
    expect_refused("2026-12-13", "2027-01-13", today, "30 days");
    expect_refused("2026-02-30", "2026-03-02", today, "from must be a date");
    expect_refused("2026-12-14", "2026-12-32", today, "to must be a date");
    expect_refused("14.12.2026", NULL, today, "YYYY-MM-DD");
    expect_refused(NULL, "2026-12-13", today, "after");
}

static void test_release_from(void)
{
    long from = 100;
    CHECK_INT(rental_release_from(from, 100), 101);   /* returned on its first day */
    CHECK_INT(rental_release_from(from, 104), 105);   /* mid-period: from tomorrow */
    CHECK_INT(rental_release_from(from, 95), 100);    /* before it started: all of it */
}

int main(void)
{
    test_round_trip();
    test_month_and_year_ends();
    test_parse_strict();
    test_time_zone();
    test_test_clock();
    test_period_rules();
    test_release_from();
    return test_done("order/test_calendar");
}
