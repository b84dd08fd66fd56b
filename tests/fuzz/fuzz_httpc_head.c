/* fuzz_httpc_head: the client's check of an answer's head
 * (httpc_parse_head, lib/httpc_conn.c) on any bytes:
 *  - it never reads past the head or crashes (ASan);
 *  - an accepted head has a status of 100..999, and names and values that
 *    hold no CR, LF or other control byte but tab (they are copied into
 *    the gateway's answers: nothing may split them);
 *  - an accepted head, written again from what was parsed, is accepted
 *    again with the same status, framing and fields (the parse loses
 *    nothing the proxy forwards). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/keyvalq_struct.h>

#include "httpc_private.h"

#define FIELDS_MAX 64

static void fail(const char *what, const uint8_t *data, size_t size)
{
    fprintf(stderr, "fuzz_httpc_head: %s on %zu bytes: %.*s\n", what, size,
            (int)(size > 200 ? 200 : size), (const char *)data);
    abort();
}

static bool clean(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
            return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The head as httpc_conn.c hands it over: up to and with its empty
     * line, NUL-terminated, no NUL inside. */
    const uint8_t *end = NULL;
    for (size_t i = 0; i + 4 <= size; i++)
        if (memcmp(data + i, "\r\n\r\n", 4) == 0) {
            end = data + i + 4;
            break;
        }
    if (!end)
        return 0;
    size_t len = (size_t)(end - data);
    if (memchr(data, '\0', len))
        return 0;
    char *head = malloc(len + 1);
    memcpy(head, data, len);
    head[len] = '\0';
    struct evkeyval kv[FIELDS_MAX];
    httpc_head h;
    if (!httpc_parse_head(head, &h, kv, FIELDS_MAX)) {
        free(head);
        return 0;
    }
    if (h.status < 100 || h.status > 999 || h.count > FIELDS_MAX)
        fail("accepted a status out of range", data, size);
    /* Written again, a field may grow by the ": " after its colon and the
     * status line by its reason phrase: room for both, per field. */
    size_t cap = len + 64 + 4 * (size_t)h.count;
    char *again = malloc(cap);
    int n = snprintf(again, cap, "HTTP/1.%d %03d R\r\n", h.minor, h.status);
    for (int i = 0; i < h.count; i++) {
        if (!*kv[i].key || !clean(kv[i].key) || !clean(kv[i].value))
            fail("accepted a field with a control byte", data, size);
        n += snprintf(again + n, cap - (size_t)n, "%s: %s\r\n", kv[i].key, kv[i].value);
    }
    n += snprintf(again + n, cap - (size_t)n, "\r\n");
    if ((size_t)n >= cap)
        fail("the fields grew when written again", data, size);
    struct evkeyval kv2[FIELDS_MAX];
    httpc_head h2;
    if (!httpc_parse_head(again, &h2, kv2, FIELDS_MAX))
        fail("what was accepted, written again, is refused", data, size);
    if (h2.status != h.status || h2.count != h.count || h2.length != h.length ||
        h2.chunked != h.chunked || h2.close != h.close)
        fail("written again, it reads differently", data, size);
    for (int i = 0; i < h.count; i++)
        if (strcmp(kv[i].key, kv2[i].key) != 0 || strcmp(kv[i].value, kv2[i].value) != 0)
            fail("a field changed when written again", data, size);
    free(again);
    free(head);
    return 0;
}
