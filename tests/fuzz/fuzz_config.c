/* fuzz_config: the rule every numeric setting goes through (config.h).
 *
 * The input is a range (two 8-byte integers) and a value (the rest, up to
 * a NUL, as an environment variable would hold it). config_parse_int is
 * compared with a reference written here from the documented grammar
 * (optional sign, then decimal digits, nothing else, in [min, max]): both
 * accept with the same number or both refuse, and a refusal says why. An
 * operator's typo must never become a silently different number. */
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

/* The grammar, digit by digit, with overflow checked on the way. */
static bool reference(const char *v, long min, long max, long *out)
{
    bool negative = *v == '-';
    if (*v == '+' || *v == '-')
        v++;
    if (*v == '\0')
        return false;
    unsigned long long magnitude = 0;
    for (; *v; v++) {
        if (*v < '0' || *v > '9')
            return false;
        unsigned digit = (unsigned)(*v - '0');
        if (magnitude > ((unsigned long long)LONG_MAX + 1 - digit) / 10)
            return false;       /* magnitude * 10 + digit would pass LONG_MAX + 1 */
        magnitude = magnitude * 10 + digit;
    }
    if (!negative && magnitude > (unsigned long long)LONG_MAX)
        return false;
    long n = negative ? (long)(0 - magnitude) : (long)magnitude;
    if (n < min || n > max)
        return false;
    *out = n;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 16)
        return 0;
    long a, b;
    memcpy(&a, data, sizeof a);
    memcpy(&b, data + 8, sizeof b);
    long min = a < b ? a : b, max = a < b ? b : a;
    char value[256];
    size_t len = size - 16 < sizeof value - 1 ? size - 16 : sizeof value - 1;
    memcpy(value, data + 16, len);
    value[len] = '\0';

    long got = 0, want = 0;
    char why[128] = "";
    bool accepted = config_parse_int(value, min, max, &got, why, sizeof why);
    bool expected = reference(value, min, max, &want);
    if (accepted != expected || (accepted && got != want) || (!accepted && !why[0])) {
        fprintf(stderr, "fuzz_config: \"%s\" in [%ld, %ld]: parsed %s %ld, expected %s %ld\n",
                value, min, max, accepted ? "yes" : "no", got, expected ? "yes" : "no", want);
        abort();
    }
    return 0;
}
