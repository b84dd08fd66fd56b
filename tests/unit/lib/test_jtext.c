/* test_jtext.c: jtext writes and reads exactly what jansson does.
 *
 * Differential: random documents (strings with escapes, control
 * characters, multi-byte and broken UTF-8, NULs; extreme integers; reals;
 * duplicate-free objects; nesting) are written by jtext_dump and by
 * json_dumps, with and without sorted keys and into buffers too small:
 * jtext either writes the same bytes or declines (-1), and declines only
 * for what it documents. Texts mutated from real events and bodies are
 * read by jtext_load and json_loadb: both fail, or both give equal values
 * that dump to the same text. The generator is seeded: runs repeat. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jtext.h"
#include "testing.h"

static uint64_t rng_state = 88172645463325252ULL;

static unsigned rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (unsigned)rng_state;
}

/* ---- writing ---- */

static const char *const pieces[] = {
    "a", "Z", "\"", "\\", "/", "\b", "\f", "\n", "\r", "\t", "\x01", "\x1f", "\x7f", "é", "€",
    "😀", " ", "0",
    /* broken UTF-8: a lone lead, a surrogate, past U+10FFFF, overlong, 0xff */
    "\xc3\x28", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe0\x80\xaf", "\xff",
};
#define GOOD_PIECES 18
#define ALL_PIECES (sizeof pieces / sizeof pieces[0])

static size_t random_text(char *buf, bool broken)
{
    size_t n = rnd() % 12, len = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p = pieces[rnd() % (broken ? ALL_PIECES : GOOD_PIECES)];
        strcpy(buf + len, p);
        len += strlen(p);
    }
    return len;
}

static json_t *random_value(int depth, bool broken)
{
    char buf[256];
    size_t len;
    switch (depth > 4 ? rnd() % 6 + 2 : rnd() % 8) {
    case 0: {
        json_t *o = json_object();
        for (int i = 0, n = (int)(rnd() % 6); i < n; i++) {
            len = random_text(buf, false);
            json_object_setn_new_nocheck(o, buf, len, random_value(depth + 1, broken));
            if (rnd() % 20 == 0) json_object_setn_new_nocheck(o, "k\0x", 3, json_null());
        }
        return o;
    }
    case 1: {
        json_t *a = json_array();
        for (int i = 0, n = (int)(rnd() % 5); i < n; i++)
            json_array_append_new(a, random_value(depth + 1, broken));
        return a;
    }
    case 2:
    case 3:
        len = random_text(buf, broken);
        if (rnd() % 15 == 0) buf[len++] = '\0';
        return json_stringn_nocheck(buf, len);
    case 4: {
        if (rnd() % 50 == 0) return json_integer(rnd() % 2 ? INT64_MIN : INT64_MAX);
        long long v = (long long)(((unsigned long long)rnd() << 32) | rnd());
        if (rnd() % 2) v %= 1000;
        return json_integer(rnd() % 3 == 0 ? -v : v);
    }
    case 5:
        return json_boolean(rnd() % 2);
    case 6:
        return json_null();
    default:
        return rnd() % 10 == 0 ? json_real(1.5) : json_integer(rnd() % 7);
    }
}

static void check_dumps(int rounds)
{
    long same = 0, declined = 0;
    char out[8192];
    for (int i = 0; i < rounds; i++) {
        json_t *doc = random_value(0, i % 3 == 0);
        if (!json_is_object(doc) && !json_is_array(doc)) {
            json_t *wrap = json_array();
            json_array_append_new(wrap, doc);
            doc = wrap;
        }
        for (int sorted = 0; sorted < 2; sorted++) {
            char *ref = json_dumps(doc, JSON_COMPACT | (sorted ? JSON_SORT_KEYS : 0));
            size_t size = rnd() % 3 == 0 ? rnd() % 64 + 1 : sizeof out;
            long n = jtext_dump(doc, sorted, out, size);
            if (n >= 0) {
                CHECK(ref != NULL && strcmp(ref, out) == 0 && (size_t)n == strlen(out));
                if (ref && strcmp(ref, out) != 0 && testing_failures < 5)
                    fprintf(stderr, "jansson: %s\njtext:   %s\n", ref, out);
                same++;
            } else {
                /* Declined: only when it would not fit, or holds what jtext
                 * leaves to jansson (a real, a NUL, broken UTF-8 that
                 * jansson refuses, so ref is NULL). */
                bool documented = !ref || strlen(ref) + 1 > size || strstr(ref, "\\u0000") ||
                                  strstr(ref, "1.5") || strlen(ref) > 4000;
                CHECK(documented);
                if (!documented && testing_failures < 5) fprintf(stderr, "declined: %s\n", ref);
                declined++;
            }
            free(ref);
        }
        json_decref(doc);
    }
    CHECK(same > rounds / 2);
    fprintf(stderr, "dumps: %ld same, %ld declined\n", same, declined);
}

/* ---- reading ---- */

static const char *const seeds[] = {
    ("{\"eventType\":\"Ordered\",\"timestamp\":\"20261125210000\",\"eventId\":"
     "\"5b1c6a0e-1f2e-4c3d-9a8b-7c6d5e4f3a2b\",\"id\":42,\"productId\":\"1001\",\"qty\":1,"
     "\"customerId\":\"bench-3\",\"amount\":50000,\"status\":\"OrderApproved\"}"),
    ("{\"productId\": \"1001\", \"qty\": 1, \"customerId\": \"bench-3\", \"cardNumber\": "
     "\"4111111111111111\"}"),
    " [1,-2,0,-0,true,false,null,{\"a\":[]},{},[[]]] ",
    "{\"a\":1,\"a\":2,\"b\":{\"a\":3,\"a\":[4]}}",
    "{\"x\":999999999999999999,\"y\":-999999999999999999,\"z\":9223372036854775808}",
    "{\"x\":1.5e3,\"s\":\"\\u00e9\\n\"}",
    "{\"k\":\"\xc3\xa9\"}",
    "[\"a\"]x",
    "{}",
    "[]",
};

static const char alphabet[] = "{}[]:,\"\\0123456789-.eE \t\r\ntnrufalsx\x01\x7f\x80\xc3\xa9";

static void check_same_value(const char *text, size_t len)
{
    json_t *ours = jtext_load(text, len), *ref = json_loadb(text, len, 0, NULL);
    CHECK(!ours == !ref);
    if (ours && ref) {
        char *a = json_dumps(ours, JSON_COMPACT | JSON_ENCODE_ANY);
        char *b = json_dumps(ref, JSON_COMPACT | JSON_ENCODE_ANY);
        CHECK(json_equal(ours, ref) && strcmp(a, b) == 0);
        free(a);
        free(b);
    }
    if (!ours != !ref && testing_failures < 5)
        fprintf(stderr, "jtext %s, jansson %s: %.*s\n", ours ? "read" : "failed",
                ref ? "read" : "failed", (int)len, text);
    json_decref(ours);
    json_decref(ref);
}

static void check_loads(int rounds)
{
    char buf[1100];
    for (int i = 0; i < rounds; i++) {
        const char *seed = seeds[rnd() % (sizeof seeds / sizeof seeds[0])];
        size_t len = strlen(seed);
        memcpy(buf, seed, len + 1);
        for (int e = 0, edits = (int)(rnd() % 4); e < edits; e++) {
            size_t at = rnd() % (len + 1);
            char c = alphabet[rnd() % (sizeof alphabet - 1)];
            switch (rnd() % 3) {
            case 0:
                if (len < 1000) {
                    memmove(buf + at + 1, buf + at, len - at + 1);
                    buf[at] = c;
                    len++;
                }
                break;
            case 1:
                if (at < len) {
                    memmove(buf + at, buf + at + 1, len - at);
                    len--;
                }
                break;
            default:
                if (at < len) buf[at] = c;
            }
        }
        if (rnd() % 50 == 0 && len > 2) buf[rnd() % len] = '\0';   /* a NUL inside */
        check_same_value(buf, len);
    }
    /* Nesting deeper than jtext's own limit goes to jansson, which decides. */
    for (int depth = 1; depth < 3000; depth += 97) {
        char *t = malloc(2 * (size_t)depth + 1);
        for (int k = 0; k < depth; k++) {
            t[k] = '[';
            t[2 * depth - 1 - k] = ']';
        }
        t[2 * depth] = '\0';
        check_same_value(t, 2 * (size_t)depth);
        free(t);
    }
}

int main(void)
{
    check_dumps(20000);
    check_loads(200000);
    return test_done("test_jtext");
}
