/* calendar.c: the company's calendar: dates, day numbers, "today".
 *
 * A rental is booked by calendar day in the company's time zone
 * (TIME_ZONE, default Asia/Seoul). Inside order a day is a DAY NUMBER:
 * days since 1970-01-01 (the proleptic Gregorian calendar; 1970-01-01 is
 * day 0). Day numbers make a period a half-open integer range [from, to),
 * its length a subtraction, and a day's bookings a row keyed by an integer
 * (store.c); they are written as YYYY-MM-DD only at the edges (the API and
 * the events).
 *
 * Date arithmetic is pure (cal_from_civil, cal_to_civil: H. Hinnant's
 * days-from-civil algorithm, exact for every Gregorian date, no table).
 * Only two things need the zone: which day an instant falls on
 * (cal_day_of), and nothing else, because bookings and returns are by day.
 * The C library answers it with localtime_r, which reads the process's TZ:
 * cal_zone_init sets TZ once, at start, before any thread exists, and it
 * is never changed afterwards (setenv/tzset are not thread-safe, so a
 * per-call switch of TZ would be a bug; a process serves one company, one
 * zone). The zone's rules come from the tzdata package
 * (/usr/share/zoneinfo, or $TZDIR). glibc silently falls back to UTC for a
 * zone it cannot find, which would shift every day boundary by hours for
 * Seoul, so cal_zone_init checks that the file exists and refuses to
 * start otherwise. Log lines and event timestamps stay in UTC (gmtime_r).
 *
 * The test clock (ORDER_TEST_CLOCK_OFFSET_S, test only): cal_now() is the
 * real time plus a fixed forward offset set at start. It moves "now" and
 * nothing else: every rule (no past start, 90 days ahead, bookings,
 * returns) runs unchanged against the shifted time, which is how the
 * end-to-end tests see a rental come back at the end of its period
 * without waiting for days. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "order.h"

static long long test_offset_s;

long cal_from_civil(long y, unsigned m, unsigned d)
{
    y -= m <= 2;
    long era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);                     /* [0, 399] */
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1; /* [0, 365] */
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;          /* [0, 146096] */
    return era * 146097 + (long)doe - 719468;
}

void cal_to_civil(long day, long *y, unsigned *m, unsigned *d)
{
    day += 719468;
    long era = (day >= 0 ? day : day - 146096) / 146097;
    unsigned doe = (unsigned)(day - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (long)yoe + era * 400 + (*m <= 2);
}

static unsigned days_in_month(long y, unsigned m)
{
    static const unsigned char days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : days[m - 1];
}

bool cal_parse(const char *text, long *day)
{
    /* Exactly YYYY-MM-DD: no sign, no spaces, no time part, a day that
     * exists ("2026-02-30" is refused, not normalized to March 2). */
    if (!text || strlen(text) != 10 || text[4] != '-' || text[7] != '-')
        return false;
    for (int i = 0; i < 10; i++)
        if (i != 4 && i != 7 && !isdigit((unsigned char)text[i]))
            return false;
    long y = strtol(text, NULL, 10);
    unsigned m = (unsigned)((text[5] - '0') * 10 + (text[6] - '0'));
    unsigned d = (unsigned)((text[8] - '0') * 10 + (text[9] - '0'));
    if (y < CAL_MIN_YEAR || m < 1 || m > 12 || d < 1 || d > days_in_month(y, m))
        return false;
    *day = cal_from_civil(y, m, d);
    return true;
}

char *cal_format(long day, char out[CAL_DATE_SIZE])
{
    long y;
    unsigned m, d;
    cal_to_civil(day, &y, &m, &d);
    if (y < 0 || y > 9999)
        y = y < 0 ? 0 : 9999;   /* never reached from a parsed date; keeps 10 chars */
    snprintf(out, CAL_DATE_SIZE, "%04ld-%02u-%02u", y, m % 100, d % 100);
    return out;
}

/* A zone name as tzdata spells them ("Asia/Seoul", "Etc/GMT+9", "UTC"):
 * no absolute path, no "..", no POSIX TZ rule strings. */
static bool zone_name_ok(const char *zone)
{
    size_t n = strlen(zone);
    if (n == 0 || n > 64 || zone[0] == '/' || strstr(zone, ".."))
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)zone[i];
        if (!isalnum(c) && c != '/' && c != '_' && c != '-' && c != '+')
            return false;
    }
    return true;
}

int cal_zone_init(const char *zone, char *err, size_t errlen)
{
    if (!zone_name_ok(zone)) {
        snprintf(err, errlen, "TIME_ZONE \"%.64s\" is not a time zone name such as Asia/Seoul",
                 zone);
        return -1;
    }
    const char *dir = getenv("TZDIR");
    char path[512];
    struct stat sb;
    snprintf(path, sizeof path, "%s/%s", dir && *dir ? dir : "/usr/share/zoneinfo", zone);
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        snprintf(err, errlen, "TIME_ZONE %s: no zone file %s (is the tzdata package "
                 "installed?)", zone, path);
        return -1;
    }
    /* Once, before any thread: see the note at the top. */
    if (setenv("TZ", zone, 1) != 0) {
        snprintf(err, errlen, "cannot set TZ");
        return -1;
    }
    tzset();
    return 0;
}

void cal_set_test_offset(long long seconds)
{
    test_offset_s = seconds;
}

time_t cal_now(void)
{
    return time(NULL) + (time_t)test_offset_s;
}

long cal_day_of(time_t t)
{
    struct tm tm;
    if (!localtime_r(&t, &tm))
        return cal_from_civil(1970, 1, 1);
    return cal_from_civil((long)tm.tm_year + 1900, (unsigned)tm.tm_mon + 1, (unsigned)tm.tm_mday);
}

long cal_today(void)
{
    return cal_day_of(cal_now());
}

char *cal_instant_text(time_t t, char out[CAL_INSTANT_SIZE])
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, CAL_INSTANT_SIZE, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return out;
}
