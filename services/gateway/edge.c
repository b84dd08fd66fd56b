/* edge.c: what the gateway owes browsers and the network in front of it.
 *
 * The gateway is the one public entry, so the protections that only make
 * sense at the edge live here, set once at start:
 *
 *  - Security headers on every answer (the web page's files, proxied API
 *    answers and the gateway's own errors alike): a Content-Security-Policy
 *    that fits the page (its own scripts, styles and API only; no inline
 *    code; no framing: frame-ancestors 'none', plus X-Frame-Options for old
 *    browsers), X-Content-Type-Options: nosniff (a JSON answer is never run
 *    as a script), Referrer-Policy: no-referrer (order ids in URLs stay
 *    here), and Strict-Transport-Security when serving HTTPS.
 *
 *  - Optional TLS. With GATEWAY_TLS_CERT (PEM chain) and GATEWAY_TLS_KEY
 *    (PEM private key) the gateway serves HTTPS only, through libevent's
 *    OpenSSL bufferevents (one SSL per connection, made by the HTTP
 *    server's connection factory); TLS 1.2 at least. One set without the
 *    other, or files that cannot be loaded or do not match, stop the
 *    process at start (exit 2) with the reason: an operator who asked for
 *    HTTPS must not get plain HTTP. The services behind the gateway stay
 *    on loopback HTTP.
 *
 *  - The forwarded headers' values (proxy.c): X-Forwarded-Host is the host
 *    of the public base URL and X-Forwarded-Proto the scheme the gateway
 *    serves, whatever the client sent. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "config.h"
#include "http_frame.h"
#include "gateway.h"
#include "log.h"

/* Matches the page's own <meta> policy (web/index.html), plus what only a
 * header can say (frame-ancestors). */
#define GW_CSP "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; " \
               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "    \
               "frame-ancestors 'none'"

static void gw_tls_fatal(const char *what, const char *path)
{
    unsigned long e = ERR_get_error();
    char reason[256] = "";
    if (e)
        ERR_error_string_n(e, reason, sizeof reason);
    fprintf(stderr, "gateway: TLS: %s %s%s%s\n", what, path ? path : "", *reason ? ": " : "",
            reason);
    exit(2);
}

static SSL_CTX *gw_tls_context(const char *cert, const char *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        gw_tls_fatal("cannot create a context", NULL);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
        gw_tls_fatal("cannot load the certificate GATEWAY_TLS_CERT=", cert);
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
        gw_tls_fatal("cannot load the private key GATEWAY_TLS_KEY=", key);
    if (SSL_CTX_check_private_key(ctx) != 1)
        gw_tls_fatal("the private key does not match the certificate", cert);
    return ctx;
}

/* The HTTP server's connection factory: a TLS server bufferevent whose
 * socket evhttp sets. It owns its SSL (BEV_OPT_CLOSE_ON_FREE frees both). */
static struct bufferevent *gw_tls_connection(struct event_base *base, void *arg)
{
    SSL *ssl = SSL_new(arg);
    if (!ssl)
        return NULL;
    struct bufferevent *bev = bufferevent_openssl_socket_new(base, -1, ssl,
                                                             BUFFEREVENT_SSL_ACCEPTING,
                                                             BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        SSL_free(ssl);
        return NULL;
    }
    /* Browsers often close without close_notify: that is the end of the
     * connection, not an error to report. */
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

/* "host[:port]" of the public base URL, for X-Forwarded-Host. */
static void gw_public_host(gateway *gw, const char *url)
{
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    size_t n = strcspn(p, "/");
    snprintf(gw->public_host, sizeof gw->public_host, "%.*s", (int)n, p);
    /* The proxy vouches for it as a header value (proxy.c): the URL was
     * checked (visible ASCII only), so this cannot fail; said, not assumed. */
    if (!http_field_valid("X-Forwarded-Host", gw->public_host)) {
        fprintf(stderr, "gateway: the public base URL's host is not a valid header value: %s\n",
                gw->public_host);
        exit(2);
    }
}

void gw_edge_setup(gateway *gw)
{
    service *svc = gw->svc;
    const char *cert = config_str("GATEWAY_TLS_CERT", NULL);
    const char *key = config_str("GATEWAY_TLS_KEY", NULL);
    if ((cert == NULL) != (key == NULL)) {
        fprintf(stderr, "gateway: GATEWAY_TLS_CERT and GATEWAY_TLS_KEY go together (only %s "
                        "is set)\n", cert ? "GATEWAY_TLS_CERT" : "GATEWAY_TLS_KEY");
        exit(2);
    }
    gw->scheme = "http";
    if (cert) {
        gw->tls = gw_tls_context(cert, key);
        http_server_set_connection_factory(svc->http, gw_tls_connection, gw->tls);
        gw->scheme = "https";
        http_server_add_answer_header(svc->http, "Strict-Transport-Security", "max-age=31536000");
        log_info("msg=\"serving HTTPS\" cert=%s", cert);
    }
    gw_public_host(gw, service_set_public_base_url(svc, gw->scheme));

    http_server_add_answer_header(svc->http, "Content-Security-Policy", GW_CSP);
    http_server_add_answer_header(svc->http, "X-Content-Type-Options", "nosniff");
    http_server_add_answer_header(svc->http, "Referrer-Policy", "no-referrer");
    http_server_add_answer_header(svc->http, "X-Frame-Options", "DENY");
}

void gw_edge_free(gateway *gw)
{
    if (gw->tls)
        SSL_CTX_free(gw->tls);   /* connections still open hold their own reference */
    gw->tls = NULL;
}
