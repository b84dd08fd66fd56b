/* hello.c: the machine's ceiling for the benchmark.
 *
 * A bare libevent evhttp server, single-threaded like every carshare
 * service, that answers every GET and POST with the same small JSON object
 * and nothing else: no routing, no logging, no metrics, no JSON parsing. What
 * `make bench` measures against it is the cost of the HTTP stack and the
 * kernel's loopback on this machine, so that the rental rate can be given as
 * a ratio taken within one run, which survives a noisy shared machine.
 *
 * Environment: HOST (default 127.0.0.1), PORT (default 8090; 0 = any free
 * port, printed on stdout as "hello: listening on HOST:PORT").
 * SIGTERM or SIGINT stop it with exit code 0. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

/* About the size of a small carshare answer, so the bytes moved compare. */
static const char hello_body[] =
    "{\"id\": 1, \"status\": \"OrderApproved\", \"message\": \"hello\"}";

/* Every GET and POST, whatever the path (evhttp itself refuses other
 * methods with 501, see main). */
static void hello_answer(struct evhttp_request *req, void *arg)
{
    (void)arg;
    struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
    evhttp_add_header(headers, "Content-Type", "application/json");
    struct evbuffer *out = evbuffer_new();
    if (out == NULL) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    evbuffer_add_reference(out, hello_body, sizeof hello_body - 1, NULL, NULL);
    evhttp_send_reply(req, 200, "OK", out);
    evbuffer_free(out);
}

static void hello_stop(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopexit((struct event_base *)arg, NULL);
}

/* PORT from the environment; exits(2) on a malformed value rather than
 * silently listening somewhere the caller did not ask for. */
static int hello_port(void)
{
    const char *text = getenv("PORT");
    if (text == NULL || *text == '\0')
        return 8090;
    char *end;
    errno = 0;
    long port = strtol(text, &end, 10);
    if (errno != 0 || *end != '\0' || port < 0 || port > 65535) {
        fprintf(stderr, "hello: PORT must be an integer in [0, 65535], got '%s'\n", text);
        exit(2);
    }
    return (int)port;
}

int main(void)
{
    const char *host = getenv("HOST");
    if (host == NULL || *host == '\0')
        host = "127.0.0.1";
    int port = hello_port();

    signal(SIGPIPE, SIG_IGN);
    struct event_base *base = event_base_new();
    struct evhttp *http = base ? evhttp_new(base) : NULL;
    if (http == NULL) {
        fprintf(stderr, "hello: cannot create the event loop\n");
        return 1;
    }
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
    evhttp_set_gencb(http, hello_answer, NULL);

    struct evhttp_bound_socket *sock = evhttp_bind_socket_with_handle(http, host, (ev_uint16_t)port);
    if (sock == NULL) {
        fprintf(stderr, "hello: cannot listen on %s:%d: %s\n", host, port, strerror(errno));
        return 1;
    }
    struct sockaddr_storage addr;
    ev_socklen_t addr_len = sizeof addr;
    if (getsockname(evhttp_bound_socket_get_fd(sock), (struct sockaddr *)&addr, &addr_len) == 0) {
        if (addr.ss_family == AF_INET)
            port = ntohs(((struct sockaddr_in *)&addr)->sin_port);
        else if (addr.ss_family == AF_INET6)
            port = ntohs(((struct sockaddr_in6 *)&addr)->sin6_port);
    }
    printf("hello: listening on %s:%d\n", host, port);
    fflush(stdout);

    struct event *on_term = evsignal_new(base, SIGTERM, hello_stop, base);
    struct event *on_int = evsignal_new(base, SIGINT, hello_stop, base);
    event_add(on_term, NULL);
    event_add(on_int, NULL);

    event_base_dispatch(base);

    event_free(on_term);
    event_free(on_int);
    evhttp_free(http);
    event_base_free(base);
    return 0;
}
