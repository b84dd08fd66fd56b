/* fuzz_http_order: the HTTP layer (lib/http.c: parsing, limits, router)
 * and order's API behind it (rental input validation: productId, qty,
 * customerId, cardNumber, Idempotency-Key), from raw bytes on a socket.
 *
 * One order service runs in this process for the whole run: its real
 * routes on a loopback port, its database on /dev/shm, its payment client
 * pointed at a closed port (a valid rental gets the 503 fallback quickly;
 * the breaker opens soon after). Each input is written to a new
 * connection, which is then half-closed; everything the server answers is
 * read until it closes the connection.
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
#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

static int fz_port;
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
    fz_port = http_server_listen(svc->http, "127.0.0.1", 0);
    pthread_t loop;
    if (fz_port <= 0 || pthread_create(&loop, NULL, fz_loop, svc->base) != 0)
        exit(1);
}

/* A new connection from a source address cycling through 127.0.0.0/8:
 * tens of thousands of connections a second leave their 4-tuples in
 * TIME_WAIT, and one source address has only ~28,000 ephemeral ports.
 *
 * connect() is bounded (SO_SNDTIMEO) and a slow one is given up for the
 * next source address: twice in long runs (267k and ~2M execs) a blocking
 * connect() sat in SYN retransmits for over 10 s and libFuzzer reported a
 * timeout on an input that runs in 13 ms alone. The server cannot cause
 * that: the client is sequential, so at most one connection waits in the
 * 1024-deep backlog, and a server that stopped accepting would fail the
 * 5 s answer check below on the connection before. What a stuck server
 * would do is still caught there. */
static int fz_connect(void)
{
    static unsigned next_source;
    for (int attempt = 0; attempt < 100; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
            break;
        struct sockaddr_in src = { .sin_family = AF_INET };
        next_source = next_source % 250 + 1;
        src.sin_addr.s_addr = htonl(INADDR_LOOPBACK + 1 + next_source);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)fz_port) };
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        struct timeval tv = { .tv_sec = 5 }, connect_tv = { .tv_sec = 2 };
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &connect_tv, sizeof connect_tv);
        if (bind(fd, (struct sockaddr *)&src, sizeof src) == 0 &&
            connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
            return fd;
        close(fd);
        usleep(1000);
    }
    perror("fuzz_http_order: connect");
    abort();
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
    if (!fz_port)
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
