/* jtext.c: JSON text without jansson's dumper and lexer (see jtext.h).
 *
 * jansson's dumper and lexer cost 100-150 instructions per byte, the
 * largest share of a rental's CPU in the services (measured with
 * callgrind). These two write and read the plain shapes of our events and
 * answers directly, byte for byte and value for value as jansson would,
 * and hand anything else back to jansson (the caller's fallback):
 * differential tests against jansson are in tests/unit/lib/test_jtext.c. */
#include "jtext.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* ---- writing (jtext_dump) ---- */

typedef struct jtext_out {
    char *out;
    size_t size, used;   /* used < size always: room for the NUL */
} jtext_out;

static bool text_put(jtext_out *t, const char *s, size_t n)
{
    if (n >= t->size - t->used)
        return false;
    memcpy(t->out + t->used, s, n);
    t->used += n;
    return true;
}

/* Length of the valid UTF-8 sequence at s (s[0] >= 0x80), 0 if invalid: the
 * sequences jansson's dumper accepts (no overlong form, no surrogate, at
 * most U+10FFFF). */
static size_t utf8_sequence(const unsigned char *s, const unsigned char *end)
{
    unsigned c = s[0];
    size_t n;
    unsigned cp, min;
    if (c >= 0xc2 && c <= 0xdf) { n = 2; cp = c & 0x1f; min = 0x80; }
    else if (c >= 0xe0 && c <= 0xef) { n = 3; cp = c & 0x0f; min = 0x800; }
    else if (c >= 0xf0 && c <= 0xf4) { n = 4; cp = c & 0x07; min = 0x10000; }
    else return 0;
    if ((size_t)(end - s) < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/* A string literal escaped as jansson's dumper does without flags: named
 * escapes, \u00XX (upper case) for other control characters, '/' and
 * non-ASCII as they are. */
static bool text_string(jtext_out *t, const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str, *end = s + len;
    if (!text_put(t, "\"", 1))
        return false;
    while (s < end) {
        const unsigned char *run = s;
        while (s < end && *s >= 0x20 && *s != '"' && *s != '\\') {
            if (*s < 0x80) {
                s++;
                continue;
            }
            size_t n = utf8_sequence(s, end);
            if (!n)
                return false;
            s += n;
        }
        if (s > run && !text_put(t, (const char *)run, (size_t)(s - run)))
            return false;
        if (s == end)
            break;
        char esc[8] = "\\";
        size_t n = 2;
        switch (*s) {
        case '"':  esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            if (*s == 0)
                return false;   /* jansson would write \u0000: leave it to json_dumps */
            snprintf(esc, sizeof esc, "\\u%04X", (unsigned)*s);
            n = 6;
        }
        if (!text_put(t, esc, n))
            return false;
        s++;
    }
    return text_put(t, "\"", 1);
}

#define TEXT_MAX_KEYS 64
#define TEXT_MAX_DEPTH 32

static bool text_value(jtext_out *t, const json_t *v, bool sort_keys, int depth);

static bool text_object(jtext_out *t, const json_t *obj, bool sort_keys, int depth)
{
    struct { const char *key; size_t len; const json_t *value; } member[TEXT_MAX_KEYS];
    size_t n = 0;
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)obj, key, value) {
        size_t len = json_object_iter_key_len(json_object_key_to_iter(key));
        if (n == TEXT_MAX_KEYS || strlen(key) != len)
            return false;
        /* Insertion sort by bytes, as jansson's qsort orders distinct keys. */
        size_t i = n++;
        while (sort_keys && i > 0 && strcmp(member[i - 1].key, key) > 0) {
            member[i] = member[i - 1];
            i--;
        }
        member[i].key = key;
        member[i].len = len;
        member[i].value = value;
    }
    if (!text_put(t, "{", 1))
        return false;
    for (size_t i = 0; i < n; i++) {
        if ((i > 0 && !text_put(t, ",", 1)) || !text_string(t, member[i].key, member[i].len)
            || !text_put(t, ":", 1) || !text_value(t, member[i].value, sort_keys, depth + 1))
            return false;
    }
    return text_put(t, "}", 1);
}

static bool text_value(jtext_out *t, const json_t *v, bool sort_keys, int depth)
{
    if (depth > TEXT_MAX_DEPTH)
        return false;
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return text_object(t, v, sort_keys, depth);
    case JSON_ARRAY: {
        if (!text_put(t, "[", 1))
            return false;
        size_t i;
        const json_t *item;
        json_array_foreach(v, i, item) {
            if ((i > 0 && !text_put(t, ",", 1)) || !text_value(t, item, sort_keys, depth + 1))
                return false;
        }
        return text_put(t, "]", 1);
    }
    case JSON_STRING:
        return text_string(t, json_string_value(v), json_string_length(v));
    case JSON_INTEGER: {   /* "%" JSON_INTEGER_FORMAT, without snprintf's ~700 */
        char digits[24];
        size_t n = sizeof digits;
        json_int_t i = json_integer_value(v);
        unsigned long long u = i < 0 ? 0ULL - (unsigned long long)i : (unsigned long long)i;
        do {
            digits[--n] = (char)('0' + u % 10);
            u /= 10;
        } while (u);
        if (i < 0)
            digits[--n] = '-';
        return text_put(t, digits + n, sizeof digits - n);
    }
    case JSON_TRUE:
        return text_put(t, "true", 4);
    case JSON_FALSE:
        return text_put(t, "false", 5);
    case JSON_NULL:
        return text_put(t, "null", 4);
    default:
        return false;   /* a real: jansson's own formatting */
    }
}

long jtext_dump(const json_t *json, bool sort_keys, char *out, size_t size)
{
    jtext_out t = {.out = out, .size = size, .used = 0};
    if (size == 0 || !(json_is_object(json) || json_is_array(json)) ||
        !text_value(&t, json, sort_keys, 0))
        return -1;
    out[t.used] = '\0';
    return (long)t.used;
}

/* ---- reading (jtext_load) ---- */

typedef struct jtext_in {
    const char *p, *end;
} jtext_in;

static void scan_space(jtext_in *sc)
{
    while (sc->p < sc->end && (*sc->p == ' ' || *sc->p == '\t' || *sc->p == '\n' ||
                               *sc->p == '\r'))
        sc->p++;
}

/* A string of printable ASCII without escapes: its bytes between the quotes. */
static bool scan_plain_string(jtext_in *sc, const char **text, size_t *len)
{
    if (sc->p == sc->end || *sc->p != '"')
        return false;
    const char *start = ++sc->p;
    while (sc->p < sc->end && *sc->p >= 0x20 && *sc->p <= 0x7e && *sc->p != '"' &&
           *sc->p != '\\')
        sc->p++;
    if (sc->p == sc->end || *sc->p != '"')
        return false;
    *text = start;
    *len = (size_t)(sc->p++ - start);
    return true;
}

static bool scan_word(jtext_in *sc, const char *word, size_t n)
{
    if ((size_t)(sc->end - sc->p) < n || memcmp(sc->p, word, n) != 0)
        return false;
    sc->p += n;
    /* "truex" is not true: jansson reads the whole word and rejects it. */
    return sc->p == sc->end || !((*sc->p >= 'a' && *sc->p <= 'z') ||
                                 (*sc->p >= 'A' && *sc->p <= 'Z') ||
                                 (*sc->p >= '0' && *sc->p <= '9'));
}

/* -?(0|[1-9][0-9]*), at most 18 digits, not followed by a fraction, an
 * exponent or another digit. */
static bool scan_integer(jtext_in *sc, json_int_t *out)
{
    const char *q = sc->p;
    bool negative = q < sc->end && *q == '-';
    q += negative;
    long long v = 0;
    int n = 0;
    while (q + n < sc->end && q[n] >= '0' && q[n] <= '9' && n < 18)
        v = v * 10 + (q[n++] - '0');
    if (n == 0 || (q[0] == '0' && n > 1))
        return false;
    if (q + n < sc->end && ((q[n] >= '0' && q[n] <= '9') || q[n] == '.' || q[n] == 'e' ||
                            q[n] == 'E'))
        return false;
    sc->p = q + n;
    *out = negative ? -v : v;
    return true;
}

static json_t *scan_value(jtext_in *sc, int depth);

static json_t *scan_container(jtext_in *sc, int depth)
{
    bool object = *sc->p == '{';
    char close = object ? '}' : ']';
    json_t *c = object ? json_object() : json_array();
    sc->p++;
    scan_space(sc);
    if (c && sc->p < sc->end && *sc->p == close) {
        sc->p++;
        return c;
    }
    while (c) {
        const char *key = NULL;
        size_t key_len = 0;
        if (object) {
            if (!scan_plain_string(sc, &key, &key_len))
                break;
            scan_space(sc);
            if (sc->p == sc->end || *sc->p != ':')
                break;
            sc->p++;
            scan_space(sc);
        }
        json_t *v = scan_value(sc, depth + 1);
        /* A later member of the same name replaces the earlier, as in jansson. */
        if (!v || (object ? json_object_setn_new_nocheck(c, key, key_len, v)
                          : json_array_append_new(c, v)) != 0)
            break;
        scan_space(sc);
        if (sc->p < sc->end && *sc->p == ',') {
            sc->p++;
            scan_space(sc);
            continue;
        }
        if (sc->p < sc->end && *sc->p == close) {
            sc->p++;
            return c;
        }
        break;
    }
    json_decref(c);
    return NULL;
}

static json_t *scan_value(jtext_in *sc, int depth)
{
    if (sc->p == sc->end || depth > 32)
        return NULL;
    const char *text;
    size_t len;
    json_int_t i;
    switch (*sc->p) {
    case '{': case '[':
        return scan_container(sc, depth);
    case '"':
        return scan_plain_string(sc, &text, &len) ? json_stringn_nocheck(text, len) : NULL;
    case 't':
        return scan_word(sc, "true", 4) ? json_true() : NULL;
    case 'f':
        return scan_word(sc, "false", 5) ? json_false() : NULL;
    case 'n':
        return scan_word(sc, "null", 4) ? json_null() : NULL;
    default:
        return scan_integer(sc, &i) ? json_integer(i) : NULL;
    }
}

json_t *jtext_load(const char *text, size_t len)
{
    jtext_in sc = {.p = text, .end = text + len};
    scan_space(&sc);
    json_t *v = sc.p < sc.end && (*sc.p == '{' || *sc.p == '[') ? scan_value(&sc, 0) : NULL;
    if (v) {
        scan_space(&sc);
        if (sc.p == sc.end)
            return v;
        json_decref(v);
    }
    return json_loadb(text, len, 0, NULL);
}
