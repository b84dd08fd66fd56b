/* fuzz_http_order: the HTTP layer (lib/http.c: parsing, limits, router)
 * and order's API behind it (rental input validation: productId, qty,
 * customerId, cardNumber, Idempotency-Key), from raw bytes on a socket.
 *
 * One order service runs in this process for the whole run: its real
 * routes on a loopback port, its database on /dev/shm, its payment client
 * pointed at a closed port (a valid rental gets the 503 fallback quickly;
 * the breaker opens soon after). Each input is written to a new
 * connection, which is then half-closed; everything the server answers is
 * read until it closes the connection. The server listens on a Unix
 * stream socket, not TCP (fz_listener says why); past accept() the server
 * cannot tell the difference.
 *
 * Checked beyond "no crash, no sanitizer report, no leak": every answer
 * starts with HTTP/1.1 and a three-digit status, none is an HTML page
 * (lib/http_frame.h: every refusal is JSON), and the
 * server never stays silent past the read timeout on a request it has
 * fully received (it closes the connection or answers).
 *
 * Identity: every process needs a public key to verify tokens with
 * (lib/auth.c), so the target makes a key pair on /dev/shm at start and
 * points TOKEN_PUBLIC_KEYS at it. An input may carry "@TOKEN@" (a
 * customer's token, kim) or "@STAFF@" (staff's): they are replaced by
 * tokens signed with that key before the input is sent, so that the
 * fuzzer reaches order's handlers behind the check (the seeds *_signed_in,
 * staff_*), besides the check's own refusals (401/403) and the open
 * routes (GET /cars...). */
#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "balance.h"
#include "db.h"
#include "http.h"
#include "httpc.h"
#include "order.h"
#include "service.h"
#include "store.h"
#include "token.h"

static bool fz_ready;
static struct sockaddr_un fz_addr;     /* the server's, in the abstract namespace */
static socklen_t fz_addr_len;
static char fz_path[128];
static char fz_key[128], fz_pub[160];
static char fz_customer[TOKEN_MAX_LEN], fz_staff[TOKEN_MAX_LEN];   /* valid all run */

static void fz_remove_files(void)
{
    char p[160];
    const char *suffix[] = { "", "-wal", "-shm" };
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s%s", fz_path, suffix[i]);
        unlink(p);
    }
    if (fz_key[0])
        unlink(fz_key);
    if (fz_pub[0])
        unlink(fz_pub);
}

/* The key pair whose public half verifies tokens (see the note above). */
static void fz_token_keys(void)
{
    char err[256];
    snprintf(fz_key, sizeof fz_key, "/dev/shm/carshare-fuzz-http-%ld.key", (long)getpid());
    token_key *k = token_init() == 0 ? token_key_load_or_create(fz_key, err, sizeof err) : NULL;
    char *pub = k ? token_public_path(fz_key) : NULL;
    long long now = (long long)time(NULL);
    if (pub && (token_sign(k, "kim", TOKEN_ROLE_CUSTOMER, now, 86400, fz_customer,
                           sizeof fz_customer) < 0
                || token_sign(k, "ops", TOKEN_ROLE_STAFF, now, 86400, fz_staff,
                              sizeof fz_staff) < 0)) {
        free(pub);
        pub = NULL;
    }
    if (!pub) {
        fprintf(stderr, "fuzz_http_order: cannot make a token key pair\n");
        exit(1);
    }
    snprintf(fz_pub, sizeof fz_pub, "%s", pub);
    free(pub);
    token_key_free(k);
    setenv("TOKEN_PUBLIC_KEYS", fz_pub, 1);
    setenv("TOKEN_SERVICE_KEYS", fz_pub, 1);
}

/* The input with @TOKEN@ and @STAFF@ replaced by valid tokens, in out;
 * its length. */
static size_t fz_with_tokens(const uint8_t *data, size_t size, uint8_t *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < size && n < cap;) {
        const char *tok = NULL;
        if (size - i >= 7 && memcmp(data + i, "@TOKEN@", 7) == 0)
            tok = fz_customer;
        else if (size - i >= 7 && memcmp(data + i, "@STAFF@", 7) == 0)
            tok = fz_staff;
        if (!tok) {
            out[n++] = data[i++];
            continue;
        }
        size_t len = strlen(tok);
        if (n + len > cap)
            break;
        memcpy(out + n, tok, len);
        n += len;
        i += 7;
    }
    return n;
}

static void *fz_loop(void *arg)
{
    event_base_dispatch(arg);
    return NULL;
}

/* The server's listening socket: a Unix stream socket in the abstract
 * namespace (no file), handed to the server as any listener is
 * (http_server_listen_on). Over loopback TCP, at ~10,000 connections a
 * second, every closed connection kept a netfilter conntrack entry for
 * TIME_WAIT's 120 s (this machine has netfilter for podman); the table
 * (262,144 entries) filled within a minute and the kernel dropped new
 * SYNs, this target's (a connect() stuck in retransmits past libFuzzer's
 * 10 s timeout, on inputs that run in 13 ms alone) and every other
 * loopback client's on the machine (dmesg: "nf_conntrack: table full,
 * dropping packet"; a unit test beside it failed to connect). */
static struct evconnlistener *fz_listener(struct event_base *base)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    fz_addr.sun_family = AF_UNIX;
    int n = snprintf(fz_addr.sun_path + 1, sizeof fz_addr.sun_path - 1, "carshare-fuzz-http-%ld",
                     (long)getpid());
    fz_addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
    if (fd < 0 || bind(fd, (struct sockaddr *)&fz_addr, fz_addr_len) != 0 || listen(fd, 1024) != 0) {
        perror("fuzz_http_order: listening");
        exit(1);
    }
    /* Backlog 0: libevent does not call listen() again. */
    return evconnlistener_new(base, NULL, NULL, LEV_OPT_CLOSE_ON_FREE, 0, fd);
}

static void fz_setup(void)
{
    setenv("HTTP_IDLE_TIMEOUT_S", "2", 1);
    snprintf(fz_path, sizeof fz_path, "/dev/shm/carshare-fuzz-http-%ld.db", (long)getpid());
    fz_remove_files();
    atexit(fz_remove_files);
    fz_token_keys();
    service *svc = service_new("order", 0);
    store *st = order_store_open_path(fz_path);
    db *d = st ? db_of_store(svc->base, st) : NULL;
    balance_opts opts = { .http = { .timeout_ms = 500, .connect_timeout_ms = 200 } };
    balance_set *payment = balance_set_new(svc->base, "payment", "http://127.0.0.1:1", &opts);
    reconciler *rec = d && payment ? reconciler_new(svc->base, d, payment, 3600000) : NULL;
    lease_keeper *leases = d ? lease_keeper_new(svc->base, d) : NULL;
    if (!rec || !leases) {
        fprintf(stderr, "fuzz_http_order: cannot set up order\n");
        exit(1);
    }
    order_api_config cfg = { .payment = payment, .reconciler = rec, .leases = leases };
    order_api_register(svc, d, &cfg);
    struct evconnlistener *listener = fz_listener(svc->base);
    pthread_t loop;
    if (!listener)
        exit(1);
    http_server_listen_on(svc->http, listener, "fuzz");   /* -1: no port to tell */
    if (pthread_create(&loop, NULL, fz_loop, svc->base) != 0)
        exit(1);
    fz_ready = true;
}

/* A new connection to the server (fz_listener). */
static int fz_connect(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = { .tv_sec = 5 };
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
        connect(fd, (struct sockaddr *)&fz_addr, fz_addr_len) != 0) {
        perror("fuzz_http_order: connect");
        abort();
    }
    return fd;
}

static void fz_check_answers(const char *buf, size_t n)
{
    /* The first answer's status line (pipelined ones follow it): always
     * the server's own HTTP/1.1 and a three-digit status; and no answer
     * is a library's HTML page. */
    if (n == 0)
        return;
    if (n < 12 || memcmp(buf, "HTTP/1.1 ", 9) != 0 || buf[9] < '1' || buf[9] > '5' ||
        buf[10] < '0' || buf[10] > '9' || buf[11] < '0' || buf[11] > '9') {
        fprintf(stderr, "fuzz_http_order: not an HTTP/1.1 answer: %.*s\n", (int)(n > 80 ? 80 : n), buf);
        abort();
    }
    if (memmem(buf, n, "Content-Type: text/html", 23)) {
        fprintf(stderr, "fuzz_http_order: an HTML answer: %.*s\n", (int)(n > 300 ? 300 : n), buf);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!fz_ready)
        fz_setup();
    static uint8_t with_tokens[1 << 17];
    if (memmem(data, size, "@TOKEN@", 7) || memmem(data, size, "@STAFF@", 7)) {
        size = fz_with_tokens(data, size, with_tokens, sizeof with_tokens);
        data = with_tokens;
    }
    int fd = fz_connect();
    size_t off = 0;
    while (off < size) {
        ssize_t w = send(fd, data + off, size - off, MSG_NOSIGNAL);
        if (w <= 0)
            break;              /* the server closed early (a refusal): fine */
        off += (size_t)w;
    }
    shutdown(fd, SHUT_WR);
    static char buf[1 << 16];
    size_t n = 0;
    for (;;) {
        ssize_t r = recv(fd, buf + n, sizeof buf - n, 0);
        if (r > 0 && (n += (size_t)r) < sizeof buf)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            fprintf(stderr, "fuzz_http_order: no answer and no close within 5 s\n");
            abort();
        }
        break;
    }
    close(fd);
    fz_check_answers(buf, n);
    return 0;
}
