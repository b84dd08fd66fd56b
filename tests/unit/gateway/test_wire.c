/* test_wire.c: the gateway's evbuffer_add_printf (wire.c) writes exactly the
 * bytes libevent's own formatting writes, for the three message-head
 * formats it copies itself and for any other format it hands on, and
 * evhttp really uses it (the symbol takes libevent's place). */
#include <dlfcn.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "gateway.h"
#include "testing.h"

/* libevent's formatting, which wire.c must reproduce. */
static int reference_printf(struct evbuffer *buf, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = evbuffer_add_vprintf(buf, fmt, ap);
    va_end(ap);
    return n;
}

static void check_same(struct evbuffer *ours, int n_ours, struct evbuffer *ref, int n_ref)
{
    CHECK_INT(n_ours, n_ref);
    size_t len = evbuffer_get_length(ours);
    CHECK_INT(len, evbuffer_get_length(ref));
    if (len == evbuffer_get_length(ref))
        CHECK(memcmp(evbuffer_pullup(ours, -1), evbuffer_pullup(ref, -1), len) == 0);
    evbuffer_drain(ours, evbuffer_get_length(ours));
    evbuffer_drain(ref, evbuffer_get_length(ref));
}

static void test_formats(void)
{
    struct evbuffer *ours = evbuffer_new(), *ref = evbuffer_new();
    int a, b;

    a = evbuffer_add_printf(ours, "%s: %s\r\n", "Content-Type", "application/json");
    b = reference_printf(ref, "%s: %s\r\n", "Content-Type", "application/json");
    check_same(ours, a, ref, b);
    a = evbuffer_add_printf(ours, "%s: %s\r\n", "X-Empty", "");
    b = reference_printf(ref, "%s: %s\r\n", "X-Empty", "");
    check_same(ours, a, ref, b);

    /* A header longer than the stack line goes through reserved space. */
    static char big[5000];
    memset(big, 'v', sizeof big - 1);
    a = evbuffer_add_printf(ours, "%s: %s\r\n", "X-Big", big);
    b = reference_printf(ref, "%s: %s\r\n", "X-Big", big);
    check_same(ours, a, ref, b);

    a = evbuffer_add_printf(ours, "%s %s HTTP/%d.%d\r\n", "GET", "/orders/1?x=%20", 1, 1);
    b = reference_printf(ref, "%s %s HTTP/%d.%d\r\n", "GET", "/orders/1?x=%20", 1, 1);
    check_same(ours, a, ref, b);
    a = evbuffer_add_printf(ours, "%s %s HTTP/%d.%d\r\n", "POST", big, 1, 0);
    b = reference_printf(ref, "%s %s HTTP/%d.%d\r\n", "POST", big, 1, 0);
    check_same(ours, a, ref, b);

    a = evbuffer_add_printf(ours, "HTTP/%d.%d %d %s\r\n", 1, 1, 200, "OK");
    b = reference_printf(ref, "HTTP/%d.%d %d %s\r\n", 1, 1, 200, "OK");
    check_same(ours, a, ref, b);
    a = evbuffer_add_printf(ours, "HTTP/%d.%d %d %s\r\n", 1, 0, 503, "Service Unavailable");
    b = reference_printf(ref, "HTTP/%d.%d %d %s\r\n", 1, 0, 503, "Service Unavailable");
    check_same(ours, a, ref, b);
    /* Codes outside 100..999 are printed like printf does. */
    a = evbuffer_add_printf(ours, "HTTP/%d.%d %d %s\r\n", 1, 1, 42, "Odd");
    b = reference_printf(ref, "HTTP/%d.%d %d %s\r\n", 1, 1, 42, "Odd");
    check_same(ours, a, ref, b);
    a = evbuffer_add_printf(ours, "HTTP/%d.%d %d %s\r\n", 1, 1, INT_MIN, "");
    b = reference_printf(ref, "HTTP/%d.%d %d %s\r\n", 1, 1, INT_MIN, "");
    check_same(ours, a, ref, b);

    /* NULL strings come out as glibc prints them (volatile: the compiler
     * would rightly warn about a NULL it can see). */
    const char *volatile no_method = NULL;
    a = evbuffer_add_printf(ours, "%s %s HTTP/%d.%d\r\n", no_method, "/", 1, 1);
    b = reference_printf(ref, "%s %s HTTP/%d.%d\r\n", "(null)", "/", 1, 1);
    check_same(ours, a, ref, b);

    /* Any other format is libevent's. */
    a = evbuffer_add_printf(ours, "{\"status\":%d,\"x\":%.3f,\"s\":\"%s\"}", 404, 1.5, "no");
    b = reference_printf(ref, "{\"status\":%d,\"x\":%.3f,\"s\":\"%s\"}", 404, 1.5, "no");
    check_same(ours, a, ref, b);
    a = evbuffer_add_printf(ours, "%x\r\n", 4096u);   /* evhttp's chunk size line */
    b = reference_printf(ref, "%x\r\n", 4096u);
    check_same(ours, a, ref, b);

    evbuffer_free(ours);
    evbuffer_free(ref);
}

/* libevent calls evbuffer_add_printf through its PLT, which the dynamic
 * linker resolves in the global scope: the program first. Had the program
 * not exported its definition, that lookup would find libevent's. */
static void test_interposed(void)
{
    void *global = dlsym(RTLD_DEFAULT, "evbuffer_add_printf");
    void *libevent = dlopen("libevent-2.1.so.7", RTLD_LAZY | RTLD_NOLOAD);
    void *theirs = libevent ? dlsym(libevent, "evbuffer_add_printf") : NULL;
    CHECK(global == (void *)evbuffer_add_printf);
    CHECK(theirs != NULL && theirs != global);
    if (libevent)
        dlclose(libevent);
}

int main(void)
{
    test_formats();
    test_interposed();
    return test_done("gateway/wire");
}
