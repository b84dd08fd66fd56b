/* jtext.h: JSON text, fast. What jansson writes and reads, for the plain
 * documents of our events and answers, at a fraction of the cost; anything
 * else is left to jansson. */
#ifndef CARSHARE_JTEXT_H
#define CARSHARE_JTEXT_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

/* What json_dumps(json, JSON_COMPACT | (sort_keys ? JSON_SORT_KEYS : 0))
 * writes, byte for byte, written into out (NUL-terminated) without
 * allocating. Returns its length, or -1 when it does not fit or json holds
 * what this does not write (a real, a string that is not valid UTF-8 or
 * holds a NUL, a key with a NUL, more than 64 keys or 32 levels, a top level
 * that is not an object or array): the caller then uses json_dumps.
 * Measured: json_dumps cost ~100 instructions per byte written. */
long jtext_dump(const json_t *json, bool sort_keys, char *out, size_t size);

/* What json_loadb(text, len, 0, NULL) returns (a new reference, or NULL
 * where json_loadb fails: not JSON, or not an object or array at the top),
 * the usual case read without jansson's lexer: measured, json_loadb cost ~150 instructions per
 * byte, ~35,000 for an event. The fast path takes printable ASCII strings
 * without escapes, integers of at most 18 digits, true, false, null, up to
 * 32 levels; any other text is handed to json_loadb, which then decides. */
json_t *jtext_load(const char *text, size_t len);

#endif
