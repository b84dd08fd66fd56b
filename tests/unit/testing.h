/* testing.h: the few assertions a unit test needs. A failed CHECK prints
 * where and what, and counts; test_done() returns the exit code. */
#ifndef CARSHARE_TESTING_H
#define CARSHARE_TESTING_H

#include <stdio.h>
#include <string.h>

static int testing_failures;

#define CHECK(cond) do { if (!(cond)) { testing_failures++; \
    fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); } } while (0)
#define CHECK_INT(a, b) do { long long a_ = (long long)(a), b_ = (long long)(b); if (a_ != b_) { \
    testing_failures++; fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", \
    __FILE__, __LINE__, #a, a_, #b, b_); } } while (0)
#define CHECK_STR(a, b) do { const char *a_ = (a), *b_ = (b); if (!a_ || !b_ || strcmp(a_, b_)) { \
    testing_failures++; fprintf(stderr, "%s:%d: %s == \"%s\", expected \"%s\"\n", \
    __FILE__, __LINE__, #a, a_ ? a_ : "(null)", b_ ? b_ : "(null)"); } } while (0)

static inline int test_done(const char *name)
{
    if (testing_failures) fprintf(stderr, "%s: %d check(s) failed\n", name, testing_failures);
    else fprintf(stderr, "%s: ok\n", name);
    return testing_failures ? 1 : 0;
}

#endif
