/* fuzz_http_frame: the RFC 9112 framing check (lib/http_frame.c) on any
 * bytes, against itself:
 *  - the verdict does not depend on how the bytes are split into reads
 *    (the first input byte seeds the split);
 *  - what feed_copy keeps (the bytes without chunk extensions) is itself
 *    accepted, with the same number of complete requests: stripping the
 *    extensions never changes where one request ends and the next begins;
 *  - fed a message at a time (http_frame_feed_message, as the server reads),
 *    the verdict and the requests are the same, each message ends where the
 *    whole feed counted one more request, and the empty lines skipped
 *    before it (bounded) and its head fit in it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_frame.h"

static void differ(const char *what, const uint8_t *data, size_t size)
{
    fprintf(stderr, "fuzz_http_frame: %s on %zu bytes: %.*s\n", what, size,
            (int)(size > 200 ? 200 : size), (const char *)data);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned split = data[0] % 7 + 1;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;

    http_frame whole, pieces, again;
    http_frame_init(&whole, 512, 4096);
    http_frame_init(&pieces, 512, 4096);
    http_frame_init(&again, 512, 4096);

    char *kept = malloc(n ? n : 1);
    size_t nkept = 0;
    size_t used = http_frame_feed_copy(&whole, p, n, kept, &nkept);
    if ((used == n) != (whole.status == 0) || nkept > used)
        differ("consumed count and verdict disagree", data, size);

    size_t off = 0;
    while (off < n && pieces.status == 0) {
        size_t take = n - off < split ? n - off : split;
        off += http_frame_feed(&pieces, p + off, take);
        if (pieces.status == 0 && off % split && off < n)
            differ("a piece was not consumed whole", data, size);
    }
    if (pieces.status != whole.status || pieces.requests != whole.requests)
        differ("the verdict depends on the split", data, size);

    if (whole.status == 0) {
        if (http_frame_feed(&again, kept, nkept) != nkept || again.status != 0 ||
            again.requests != whole.requests)
            differ("the bytes without chunk extensions frame differently", data, size);
    }
    http_frame one;
    http_frame_init(&one, 512, 4096);
    size_t at = 0, message_start = 0;
    unsigned long ended_count = 0;
    while (at < n && one.status == 0) {
        size_t take = n - at < split ? n - at : split;
        bool ended = false;
        size_t used = http_frame_feed_message(&one, p + at, take, &ended);
        at += used;
        if (ended) {
            ended_count++;
            if (one.requests != ended_count ||
                one.last.lead_len + one.last.head_len > at - message_start ||
                one.last.head_len == 0 || one.last.lead_len > 2 * HTTP_FRAME_EMPTY_LINES_MAX)
                differ("a message ended where its head does not fit", data, size);
            message_start = at;
        } else if (one.status == 0 && used != take) {
            differ("a piece was not consumed whole and no message ended", data, size);
        }
    }
    if (one.status != whole.status || one.requests != whole.requests)
        differ("fed a message at a time, the verdict differs", data, size);
    free(kept);
    return 0;
}
