/* fuzz_jtext: lib/jtext.c against jansson, on any bytes.
 *
 * jtext_load promises to return what json_loadb(text, len, 0) returns: both
 * fail, or both give equal values that dump to the same text. jtext_dump
 * promises json_dumps's bytes whenever it does not decline (-1). Both are
 * checked on every input, sorted and not; a difference aborts, which
 * libFuzzer reports as a crash with the input saved. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jtext.h"

static void differ(const char *what, const uint8_t *data, size_t size)
{
    fprintf(stderr, "fuzz_jtext: %s differs from jansson on %zu bytes: %.*s\n", what, size,
            (int)(size > 200 ? 200 : size), (const char *)data);
    abort();
}

static void check_dump(const json_t *doc, bool sorted, const uint8_t *data, size_t size)
{
    char out[4096];
    long n = jtext_dump(doc, sorted, out, sizeof out);
    if (n < 0)
        return;                 /* declined: the caller uses json_dumps */
    char *ref = json_dumps(doc, JSON_COMPACT | (sorted ? JSON_SORT_KEYS : 0));
    if (!ref || strlen(ref) != (size_t)n || memcmp(ref, out, (size_t)n) != 0)
        differ(sorted ? "jtext_dump (sorted)" : "jtext_dump", data, size);
    free(ref);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *ours = jtext_load((const char *)data, size);
    json_t *ref = json_loadb((const char *)data, size, 0, NULL);
    if (!ours != !ref)
        differ(ours ? "jtext_load (read, jansson failed)" : "jtext_load (failed, jansson read)",
               data, size);
    if (ours) {
        char *a = json_dumps(ours, JSON_COMPACT | JSON_ENCODE_ANY);
        char *b = json_dumps(ref, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!json_equal(ours, ref) || !a || !b || strcmp(a, b) != 0)
            differ("jtext_load's value", data, size);
        free(a);
        free(b);
        check_dump(ref, false, data, size);
        check_dump(ref, true, data, size);
    }
    json_decref(ours);
    json_decref(ref);
    return 0;
}
