/* testing.h: the few assertions a unit test needs. A failed CHECK prints
 * where and what, and counts; test_done() returns the exit code. Also the
 * temporary directory most tests keep their database files in.
 *
 * Everything here is static (inline for functions): each test is one
 * translation unit, and a helper it does not use costs nothing. */
#ifndef CARSHARE_TESTING_H
#define CARSHARE_TESTING_H

#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
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

/* Creates a fresh directory /tmp/carshare-unit-<name>-XXXXXX and writes
 * its path into dir (of `size` bytes). False, with the reason printed, on
 * failure. */
static inline bool temp_dir_make(char *dir, size_t size, const char *name)
{
    snprintf(dir, size, "/tmp/carshare-unit-%s-XXXXXX", name);
    if (mkdtemp(dir))
        return true;
    perror("mkdtemp");
    return false;
}

static inline int temp_dir_remove_entry(const char *path, const struct stat *st, int type,
                                        struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    return remove(path);
}

/* Removes dir and everything in it (without a shell); says so when it
 * cannot. */
static inline void temp_dir_remove(const char *dir)
{
    if (nftw(dir, temp_dir_remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

#endif
