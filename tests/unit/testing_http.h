/* testing_http.h: a service's HTTP handlers tested in process.
 *
 * server_open() gives a service skeleton (the `service` its *_api_register
 * takes) whose HTTP server listens on an ephemeral loopback port; the test
 * registers the routes, runs the loop on a thread (loop_start, loop_stop)
 * and talks to it with call(), a tiny blocking HTTP/1.1 client
 * (Connection: close) that keeps the status, the Location header and the
 * body parsed as JSON. check_error() checks the contract's error shape.
 * And the other side: call_recorded, the done callback of an httpc call
 * (lib/httpc.h) that keeps how it ended in a call_outcome. loopback_connect
 * is the blocking TCP connect to a test server that call() and the tests'
 * own raw clients share.
 *
 * The server checks tokens as every process does (lib/auth.c's guard), with
 * a key pair made for the test: call() sends the token of the caller set by
 * call_as(role, subject) -- staff "ops" after server_open -- and
 * call_as(0, NULL) sends none.
 *
 * One server per test: the port and the loop are kept here. Include after
 * testing.h. */
#ifndef CARSHARE_TESTING_HTTP_H
#define CARSHARE_TESTING_HTTP_H

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "auth.h"
#include "http.h"
#include "httpc.h"
#include "service.h"
#include "token.h"

static int server_port;
static token_key *test_key;
static auth *test_auth;
static char test_key_dir[128];
static char test_bearer[TOKEN_MAX_LEN];    /* the token call() sends; "" none */

/* From now on call() is made by `subject` with `role` (0: no token). */
static inline void call_as(unsigned role, const char *subject)
{
    test_bearer[0] = '\0';
    if (role && token_sign(test_key, subject, (token_role)role, (long long)time(NULL), 600,
                           test_bearer, sizeof test_bearer) < 0)
        fprintf(stderr, "cannot sign a test token for %s\n", subject);
}

/* A key pair for the test, trusted for every role, and the guard. */
static inline bool test_auth_open(http_server *h)
{
    char path[192], err[256];
    snprintf(test_key_dir, sizeof test_key_dir, "/tmp/carshare-unit-keys-XXXXXX");
    if (token_init() != 0 || !mkdtemp(test_key_dir))
        return false;
    snprintf(path, sizeof path, "%s/test.key", test_key_dir);
    test_key = token_key_load_or_create(path, err, sizeof err);
    token_verifier *v = test_key ? token_verifier_new() : NULL;
    if (!v || token_verifier_add(v, token_key_public(test_key), TOKEN_ROLES_ALL) != 0) {
        fprintf(stderr, "test keys: %s\n", test_key ? "out of memory" : err);
        return false;
    }
    test_auth = auth_new(v);
    http_server_guard(h, auth_guard, test_auth);
    call_as(TOKEN_ROLE_STAFF, "ops");
    return true;
}

static inline void test_auth_close(void)
{
    char path[192];
    snprintf(path, sizeof path, "%s/test.key", test_key_dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/test.pub", test_key_dir);
    unlink(path);
    rmdir(test_key_dir);
    auth_free(test_auth);
    token_key_free(test_key);
    test_auth = NULL;
    test_key = NULL;
}
static struct event_base *server_base;
static pthread_t server_loop_thread;

/* ---- the server ---- */

/* Fills svc as service_new would, with an event loop usable from two
 * threads and an HTTP server listening on 127.0.0.1, port 0. False, with
 * the reason printed, when it cannot listen. */
static inline bool server_open(service *svc, const char *name)
{
    evthread_use_pthreads();
    *svc = (service){ .name = name, .host = "127.0.0.1" };
    svc->base = server_base = event_base_new();
    svc->http = svc->base ? http_server_new(svc->base) : NULL;
    svc->port = server_port = svc->http ? http_server_listen(svc->http, svc->host, 0) : -1;
    if (svc->port > 0 && test_auth_open(svc->http))
        return true;
    fprintf(stderr, "cannot set up the %s test server\n", name);
    return false;
}

static inline void server_close(service *svc)
{
    http_server_free(svc->http);
    event_base_free(svc->base);
    test_auth_close();
}

static inline void *server_loop(void *arg)
{
    (void)arg;
    event_base_dispatch(server_base);
    return NULL;
}

/* Runs the server's loop on its own thread until loop_stop(). */
static inline void loop_start(void)
{
    pthread_create(&server_loop_thread, NULL, server_loop, NULL);
}

static inline void loop_stop(void)
{
    event_base_loopbreak(server_base);
    pthread_join(server_loop_thread, NULL);
}

/* ---- the client ---- */

/* A blocking TCP connection to 127.0.0.1:port, or -1 with errno set. */
static inline int loopback_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

typedef struct reply {
    int status;
    char location[256];
    json_t *body;     /* parsed JSON or NULL; the caller decrefs */
} reply;

static inline reply call(const char *method, const char *path, const char *body)
{
    reply r = { 0 };
    int fd = loopback_connect(server_port);
    if (fd < 0) {
        fprintf(stderr, "cannot connect to the test server\n");
        return r;
    }
    char req[8192], authorization[TOKEN_MAX_LEN + 32] = "";
    if (test_bearer[0])
        snprintf(authorization, sizeof authorization, "Authorization: Bearer %s\r\n", test_bearer);
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n%s"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     method, path, authorization, body ? strlen(body) : 0, body ? body : "");
    if (write(fd, req, (size_t)n) != n) fprintf(stderr, "short write\n");
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    ssize_t got;
    while (len + 1 < cap && (got = read(fd, buf + len, cap - len - 1)) > 0) len += (size_t)got;
    buf[len] = '\0';
    close(fd);
    sscanf(buf, "HTTP/1.%*d %d", &r.status);
    for (char *line = strstr(buf, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        if (strncmp(line, "\r\n\r\n", 4) == 0) break;
        if (strncasecmp(line + 2, "Location:", 9) == 0)
            sscanf(line + 11, " %255[^\r\n]", r.location);
    }
    char *payload = strstr(buf, "\r\n\r\n");
    if (payload) r.body = json_loads(payload + 4, JSON_DISABLE_EOF_CHECK, NULL);
    free(buf);
    return r;
}

static inline const char *text(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static inline long long num(const json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

/* The items of a HAL collection answer. */
static inline json_t *embedded(const reply *r, const char *name)
{
    return json_object_get(json_object_get(r->body, "_embedded"), name);
}

/* The contract's error shape, status and a message that names `about`
 * (NULL: any message). Frees the body. A failure also names the line of
 * the test that checked the answer. */
#define check_error(r, status, about) check_error_at(__FILE__, __LINE__, (r), (status), (about))

static inline void check_error_at(const char *file, int line, reply r, int status,
                                  const char *about)
{
    int failures_before = testing_failures;
    CHECK_INT(r.status, status);
    CHECK_INT(num(r.body, "status"), status);
    CHECK(text(r.body, "error") != NULL);
    CHECK(text(r.body, "path") != NULL);
    const char *msg = text(r.body, "message");
    CHECK(msg && *msg);
    if (about && (!msg || !strstr(msg, about))) {
        fprintf(stderr, "message \"%s\" does not mention \"%s\"\n", msg ? msg : "", about);
        CHECK(!"the error message names what was wrong");
    }
    if (testing_failures > failures_before)
        fprintf(stderr, "%s:%d: (the error answer checked here)\n", file, line);
    json_decref(r.body);
}

/* How an httpc call ended, as call_recorded keeps it. */
typedef struct {
    bool done;
    httpc_result result;
    int status;
    char body[64];
    struct event_base *stop;    /* if set, its loop is broken out of at the end */
} call_outcome;

/* An httpc done callback; arg is the call_outcome. */
static inline void call_recorded(const httpc_response *resp, void *arg)
{
    call_outcome *o = arg;
    o->done = true;
    o->result = resp->result;
    o->status = resp->status;
    snprintf(o->body, sizeof o->body, "%s", resp->body);
    if (o->stop)
        event_base_loopbreak(o->stop);
}

#endif
