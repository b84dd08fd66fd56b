/* test_httpc_head: the client's check of an answer's head
 * (httpc_parse_head, lib/httpc_conn.c): answers that pass, with their
 * fields and framing, and one refusal of each kind. The whole client, on
 * sockets, is tests/unit/lib/test_httpc.c. */
#include "testing.h"

#include <event2/keyvalq_struct.h>

#include "httpc_private.h"

static httpc_head head;
static struct evkeyval kv[8];

static bool parse(const char *text)
{
    static char buf[1024];
    snprintf(buf, sizeof buf, "%s", text);
    return httpc_parse_head(buf, &head, kv, 8);
}

int main(void)
{
    CHECK(parse("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n"));
    CHECK_INT(head.status, 200);
    CHECK_INT(head.minor, 1);
    CHECK_INT(head.length, 12);
    CHECK_INT(head.count, 2);
    CHECK_STR(kv[0].key, "Content-Type");
    CHECK_STR(kv[0].value, "application/json");

    CHECK(parse("HTTP/1.0 204 \r\nX-A:  b c \t\r\nConnection: Keep-Alive\r\n\r\n"));
    CHECK_INT(head.status, 204);
    CHECK_INT(head.minor, 0);
    CHECK_STR(kv[0].value, "b c");
    CHECK(head.keep_alive);
    CHECK_INT(head.length, -1);

    CHECK(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"));
    CHECK(head.chunked);
    CHECK(head.close);
    CHECK(parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"));
    CHECK(parse("HTTP/1.1 404\r\n\r\n"));

    CHECK(!parse("HTTP/2.0 200 OK\r\n\r\n"));
    CHECK(!parse("HTTP/1.1 20 OK\r\n\r\n"));
    CHECK(!parse("HTTP/1.1 099 OK\r\n\r\n"));
    CHECK(!parse("HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\n"));        /* bare LF */
    CHECK(!parse("HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\n"));     /* space before colon */
    CHECK(!parse("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n"));             /* obs-fold */
    CHECK(!parse("HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n"));                /* bare CR */
    CHECK(!parse("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"));
    CHECK(!parse("HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n"));
    CHECK(!parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"));
    CHECK(!parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n"));
    CHECK(!parse("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\n"
                 "H: 8\r\nI: 9\r\n\r\n"));                               /* more fields than room */
    return test_done("test_httpc_head");
}
