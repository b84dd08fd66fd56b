/* test_http_frame: the RFC 9112 framing check on its own (lib/http_frame.c):
 * requests that must pass, pipelined, split anywhere; chunk extensions
 * stripped exactly; and one refusal of each kind with its status. The
 * end-to-end cases (JSON answers, connections closed) are in
 * tests/e2e/test_http_framing.py. */
#include "testing.h"
#include "http_frame.h"

static http_frame run(const char *text, size_t max_body)
{
    http_frame f;
    http_frame_init(&f, 1024, max_body);
    http_frame_feed(&f, text, strlen(text));
    return f;
}

static void passes(const char *text, unsigned long requests)
{
    http_frame f = run(text, 100);
    if (f.status) fprintf(stderr, "refused (%d %s): %s\n", f.status, f.why, text);
    CHECK_INT(f.status, 0);
    CHECK_INT(f.requests, requests);
    /* Byte by byte: the same. */
    http_frame g;
    http_frame_init(&g, 1024, 100);
    for (size_t i = 0; text[i]; i++) CHECK_INT(http_frame_feed(&g, text + i, 1), 1);
    CHECK_INT(g.requests, requests);
}

static void refused(const char *text, int status)
{
    http_frame f = run(text, 100);
    if (f.status != status) fprintf(stderr, "expected %d, got %d: %s\n", status, f.status, text);
    CHECK_INT(f.status, status);
    CHECK(status == 0 || (f.why && *f.why));
}

/* A message at a time, as the server reads: where each ends, its head. */
static void messages(void)
{
    const char *two = "POST /o HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
                      "GET / HTTP/1.0\r\n\r\n";
    http_frame f;
    http_frame_init(&f, 1024, 100);
    bool ended = false;
    size_t n = strlen(two);
    size_t used = http_frame_feed_message(&f, two, n, &ended);
    CHECK(ended);
    CHECK_INT(used, strlen("POST /o HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"));
    CHECK_INT(f.last.head_len, used - 2);
    CHECK_INT(f.last.length, 2);
    CHECK_INT(f.last.minor, 1);
    CHECK(!f.last.chunked);
    size_t rest = http_frame_feed_message(&f, two + used, n - used, &ended);
    CHECK(ended);
    CHECK_INT(rest, n - used);
    CHECK_INT(f.last.head_len, n - used);
    CHECK_INT(f.last.minor, 0);
    CHECK_INT(f.requests, 2);

    /* Chunked: the data's length; 100-continue is due once the head passed. */
    const char *chunked = "POST /o HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                          "Transfer-Encoding: chunked\r\n\r\n";
    http_frame_init(&f, 1024, 100);
    CHECK_INT(http_frame_feed_message(&f, chunked, strlen(chunked), &ended), strlen(chunked));
    CHECK(!ended);
    CHECK(http_frame_in_body(&f));
    CHECK(f.expect_continue);
    const char *data = "2;x=y\r\n{}\r\n1\r\n \r\n0\r\n\r\n";
    CHECK_INT(http_frame_feed_message(&f, data, strlen(data), &ended), strlen(data));
    CHECK(ended);
    CHECK(f.last.chunked);
    CHECK_INT(f.last.length, 3);
    CHECK_INT(f.last.head_len, strlen(chunked));
    CHECK(!http_frame_in_body(&f));
}

/* Empty lines before a request: counted apart from its head, so the
 * reader skips them; the frame is idle until the request line starts. */
static void lead_lines(void)
{
    const char *text = "\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n\r\n";
    http_frame f;
    http_frame_init(&f, 1024, 100);
    CHECK(http_frame_idle(&f));
    bool ended = false;
    CHECK_INT(http_frame_feed_message(&f, text, 4, &ended), 4);
    CHECK(!ended);
    CHECK(http_frame_idle(&f));
    size_t n = strlen(text) - 4;
    CHECK_INT(http_frame_feed_message(&f, text + 4, n, &ended), n - 2);
    CHECK(ended);
    CHECK_INT(f.last.lead_len, 4);
    CHECK_INT(f.last.head_len, n - 2);
    CHECK_INT(http_frame_feed_message(&f, text + 4 + n - 2, 1, &ended), 1);
    CHECK(http_frame_idle(&f));     /* a CR of the next empty line */
    CHECK_INT(http_frame_feed_message(&f, "\n", 1, &ended), 1);
    CHECK(!ended);
    CHECK(http_frame_idle(&f));
    CHECK_INT(http_frame_feed_message(&f, "G", 1, &ended), 1);
    CHECK(!http_frame_idle(&f));
    CHECK_INT(f.status, 0);

    /* The empty lines count against the head limit too. */
    http_frame_init(&f, 20, 100);
    const char *near = "\r\n\r\n\r\nGET / HTTP/1.1\r\n";
    http_frame_feed(&f, near, strlen(near));
    CHECK_INT(f.status, 431);
}

int main(void)
{
    messages();
    lead_lines();
    passes("GET /cars HTTP/1.1\r\nHost: x\r\n\r\n", 1);
    passes("GET /cars?a=%20b HTTP/1.0\r\n\r\n", 1);
    passes("POST /o HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
           "GET / HTTP/1.1\r\nhost:y\r\nX-Empty:\r\n\r\n", 2);
    passes("POST /o HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n"
           "2;a=b\r\n{}\r\n0\r\nTrailer: t\r\n\r\n", 1);
    passes("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 1);
    /* Empty lines before a request line are skipped (RFC 9112 2.2), up to
     * HTTP_FRAME_EMPTY_LINES_MAX, before the first one and between two. */
    passes("\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 1);
    passes("\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 1);
    passes("POST /o HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}\r\n"
           "GET / HTTP/1.1\r\nHost: x\r\n\r\n\r\n", 2);
    passes("\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"
           "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 2);   /* per request */
    passes("GET http://x/cars HTTP/1.1\r\nHost: x\r\n\r\n", 1);
    passes("POST /o HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 100\r\n\r\n", 0);

    /* Chunk extensions are taken out, nothing else. */
    const char *ext = "POST /o HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "2 ;a=\"b;c\"\r\n{}\r\n0;z\r\n\r\n";
    char out[256];
    size_t kept = 0;
    http_frame f;
    http_frame_init(&f, 1024, 100);
    CHECK_INT(http_frame_feed_copy(&f, ext, strlen(ext), out, &kept), strlen(ext));
    out[kept] = '\0';
    CHECK_STR(out, "POST /o HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   "2\r\n{}\r\n0\r\n\r\n");

    refused("POST /o HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400);
    refused("POST /o HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\n", 400);
    refused("POST /o HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n", 400);
    refused("POST /o HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n\r\n", 400);
    refused("POST /o HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
    refused("GET / HTTP/1.1\r\n\r\n", 400);
    refused("GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400);
    refused("GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400);
    refused("GET //x:1/cars HTTP/1.1\r\nHost: x\r\n\r\n", 400);    /* an authority to evhttp */
    refused("GET / HTTP/1.1\r\nHost: x\r\nA: b\r\n c\r\n\r\n", 400);
    refused("GET / HTTP/1.1\nHost: x\n\n", 400);
    refused("GET / HTTP/1.1\r\nHost: x\r\nA: b\rc\r\n\r\n", 400);
    refused("GET / HTTP/1.1\r\nHost: x\r\nA: \x01\r\n\r\n", 400);
    refused("HEAD / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n", 400);
    refused("\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 400);           /* bare LF, as elsewhere */
    refused("\r\n\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 400);
    refused("\rGET / HTTP/1.1\r\nHost: x\r\n\r\n", 400);           /* bare CR */
    refused("\r\n \r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 400);    /* not empty */
    refused("\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n", 400);           /* 9: too many */
    refused("POST /o HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nx\r\n", 400);
    refused("POST /o HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", 400);
    refused("GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505);
    refused("GET / HTTP/11.1\r\nHost: x\r\n\r\n", 505);
    refused("BREW / HTTP/1.1\r\nHost: x\r\n\r\n", 501);
    refused("POST /o HTTP/1.1\r\nHost: x\r\nExpect: tea\r\n\r\n", 417);
    refused("POST /o HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n", 413);
    refused("POST /o HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", 413);
    refused("POST /o HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n", 413);
    char big[2048];
    snprintf(big, sizeof big, "GET / HTTP/1.1\r\nHost: x\r\nX: %01100d\r\n\r\n", 0);
    refused(big, 431);
    return test_done("test_http_frame");
}
