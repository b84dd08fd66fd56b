/* test_routing.c: the gateway's rules (domain.c): which upstream owns a
 * path, which paths are refused, which headers cross the proxy, what a
 * failed call answers, how fast upstreams are probed, and how web files are
 * named, typed and revalidated. */
#include <stdio.h>
#include <string.h>

#include "gateway.h"
#include "testing.h"

static void test_routes(void)
{
    /* Every route of the contract, in each of its forms. */
    CHECK_INT(gw_route_match("/orders"), GW_ORDER);
    CHECK_INT(gw_route_match("/orders/"), GW_ORDER);
    CHECK_INT(gw_route_match("/orders/7"), GW_ORDER);
    CHECK_INT(gw_route_match("/orders?page=0"), GW_ORDER);
    CHECK_INT(gw_route_match("/orders/search/findByCustomerId"), GW_ORDER);
    CHECK_INT(gw_route_match("/cars"), GW_ORDER);
    CHECK_INT(gw_route_match("/cars/1001"), GW_ORDER);
    CHECK_INT(gw_route_match("/deliveries"), GW_DELIVERY);
    CHECK_INT(gw_route_match("/deliveries/3"), GW_DELIVERY);
    CHECK_INT(gw_route_match("/cancellations"), GW_DELIVERY);
    CHECK_INT(gw_route_match("/customerpages/search/findByOrderId"), GW_CUSTOMERPAGE);
    CHECK_INT(gw_route_match("/customerpages"), GW_CUSTOMERPAGE);
    CHECK_INT(gw_route_match("/payments"), GW_PAYMENT);
    CHECK_INT(gw_route_match("/payments/search/findByOrderId"), GW_PAYMENT);
    CHECK_INT(gw_route_match("/paymentCancellations"), GW_PAYMENT);
    CHECK_INT(gw_route_match("/paymentCancellations/2"), GW_PAYMENT);

    /* A prefix is a whole segment: "/ordersX" is the web page's. */
    CHECK_INT(gw_route_match("/ordersX"), -1);
    CHECK_INT(gw_route_match("/orders.html"), -1);
    CHECK_INT(gw_route_match("/carsharing"), -1);
    CHECK_INT(gw_route_match("/paymentsCancellations"), -1);
    CHECK_INT(gw_route_match("/paymentCancellationsX"), -1);
    /* "/payments" must not swallow "/paymentCancellations" nor the reverse. */
    CHECK_INT(gw_route_match("/paymentCancellations"), GW_PAYMENT);
    /* Case matters, as in the contract (Spring's paths). */
    CHECK_INT(gw_route_match("/Orders"), -1);
    CHECK_INT(gw_route_match("/paymentcancellations"), -1);
    /* The web page and the gateway's own paths. */
    CHECK_INT(gw_route_match("/"), -1);
    CHECK_INT(gw_route_match("/index.html"), -1);
    CHECK_INT(gw_route_match("/app.js"), -1);
    CHECK_INT(gw_route_match("/health/ready"), -1);
    CHECK_INT(gw_route_match(""), -1);
    CHECK_INT(gw_route_match("orders"), -1);
    CHECK_INT(gw_route_match(NULL), -1);
    /* A nested occurrence does not count: only the first segment routes. */
    CHECK_INT(gw_route_match("/web/orders"), -1);

    CHECK(gw_route_prefix_matches("/x/y", "/x", 2));
    CHECK(!gw_route_prefix_matches("/xy", "/x", 2));
    CHECK(!gw_route_prefix_matches("/", "/x", 2));

    const char *methods[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        CHECK(gw_method_forwarded(methods[i]));
        CHECK(strstr(GW_FORWARDED_METHODS, methods[i]) != NULL);
    }
    CHECK(!gw_method_forwarded("TRACE"));
    CHECK(!gw_method_forwarded("CONNECT"));
    CHECK(!gw_method_forwarded("get"));
    CHECK(!gw_method_forwarded(""));

    CHECK_STR(gw_upstream_name(GW_ORDER), "order");
    CHECK_STR(gw_upstream_name(GW_DELIVERY), "delivery");
    CHECK_STR(gw_upstream_name(GW_CUSTOMERPAGE), "customerpage");
    CHECK_STR(gw_upstream_name(GW_PAYMENT), "payment");
}

static void test_refused_paths(void)
{
    CHECK(gw_path_refusal("/") == NULL);
    CHECK(gw_path_refusal("/index.html") == NULL);
    CHECK(gw_path_refusal("/orders/7") == NULL);
    CHECK(gw_path_refusal("/css/site.v2.css") == NULL);
    CHECK(gw_path_refusal("/a..b") == NULL);          /* dots inside a name are fine */
    CHECK(gw_path_refusal("/...") == NULL);           /* not a dot segment */
    CHECK(gw_path_refusal("/.well-known/x") == NULL); /* not a dot segment either */
    CHECK(gw_path_refusal("/a//b") == NULL);

    CHECK(gw_path_refusal("/..") != NULL);
    CHECK(gw_path_refusal("/../etc/passwd") != NULL);
    CHECK(gw_path_refusal("/css/../../etc/passwd") != NULL);
    CHECK(gw_path_refusal("/orders/../payments") != NULL);
    CHECK(gw_path_refusal("/customerpages/../admin/rebuild") != NULL);
    CHECK(gw_path_refusal("/a/..") != NULL);
    CHECK(gw_path_refusal("/a/../") != NULL);
    CHECK(gw_path_refusal("/./index.html") != NULL);
    CHECK(gw_path_refusal("/a/.") != NULL);
    CHECK(gw_path_refusal("/..\\windows") != NULL);
    CHECK(gw_path_refusal("/a\\b") != NULL);
    CHECK(gw_path_refusal("/a\nb") != NULL);
    CHECK(gw_path_refusal("/a\x7f") != NULL);
    CHECK(gw_path_refusal("") != NULL);
    CHECK(gw_path_refusal("index.html") != NULL);
    CHECK(gw_path_refusal(NULL) != NULL);
    const char *why = gw_path_refusal("/../x");
    CHECK(why && strstr(why, ".."));
}

static void test_hop_by_hop(void)
{
    const char *hop[] = {"Connection", "connection", "Keep-Alive", "Transfer-Encoding", "TE",
                         "te", "Trailer", "Upgrade", "Proxy-Authorization",
                         "Proxy-Authenticate", "Proxy-Connection", "proxy-foo"};
    for (size_t i = 0; i < sizeof hop / sizeof hop[0]; i++) {
        if (!gw_header_is_hop_by_hop(hop[i], NULL))
            fprintf(stderr, "not hop-by-hop: %s\n", hop[i]);
        CHECK(gw_header_is_hop_by_hop(hop[i], NULL));
        CHECK(!gw_request_header_forwarded(hop[i], NULL));
        CHECK(!gw_response_header_copied(hop[i], NULL, false));
    }
    const char *end_to_end[] = {"Accept", "Authorization", "Cookie", "User-Agent",
                                "Idempotency-Key", "If-None-Match", "Accept-Encoding",
                                "Cache-Control", "Teapot", "Upgrade-Insecure-Requests",
                                "Keep-Alive-Extra", "Proxy"};
    for (size_t i = 0; i < sizeof end_to_end / sizeof end_to_end[0]; i++) {
        if (gw_header_is_hop_by_hop(end_to_end[i], NULL))
            fprintf(stderr, "wrongly hop-by-hop: %s\n", end_to_end[i]);
        CHECK(!gw_header_is_hop_by_hop(end_to_end[i], NULL));
        CHECK(gw_request_header_forwarded(end_to_end[i], NULL));
    }

    /* Headers named by Connection are hop-by-hop too, in any case/spacing. */
    const char *conn = "keep-alive, X-Secret ,x-other";
    CHECK(gw_header_is_hop_by_hop("X-Secret", conn));
    CHECK(gw_header_is_hop_by_hop("x-secret", conn));
    CHECK(gw_header_is_hop_by_hop("X-Other", conn));
    CHECK(!gw_header_is_hop_by_hop("X-Secretive", conn));
    CHECK(!gw_header_is_hop_by_hop("X-Secre", conn));
    CHECK(!gw_request_header_forwarded("X-Secret", conn));
    CHECK(!gw_response_header_copied("X-Other", conn, false));
    CHECK(gw_request_header_forwarded("Accept", conn));
    CHECK(!gw_header_is_hop_by_hop("Accept", ""));

    /* The proxy sets these itself on the forwarded request. */
    const char *set_by_proxy[] = {"Host", "host", "Content-Length", "Content-Type", "Expect",
                                  "X-Request-Id", "x-request-id", "X-Forwarded-For",
                                  "X-Forwarded-Host", "X-Forwarded-Proto"};
    for (size_t i = 0; i < sizeof set_by_proxy / sizeof set_by_proxy[0]; i++)
        CHECK(!gw_request_header_forwarded(set_by_proxy[i], NULL));

    /* Answers: Location, Retry-After, ETag... go back; framing and the
     * gateway's own headers do not. */
    CHECK(gw_response_header_copied("Location", NULL, false));
    CHECK(gw_response_header_copied("Retry-After", NULL, false));
    CHECK(gw_response_header_copied("ETag", NULL, false));
    CHECK(gw_response_header_copied("Cache-Control", NULL, false));
    CHECK(gw_response_header_copied("Allow", NULL, false));
    CHECK(!gw_response_header_copied("Content-Type", NULL, false));
    CHECK(!gw_response_header_copied("Content-Length", NULL, false));
    CHECK(gw_response_header_copied("Content-Length", NULL, true));   /* HEAD */
    CHECK(!gw_response_header_copied("Date", NULL, false));
    CHECK(!gw_response_header_copied("Server", NULL, false));
    CHECK(!gw_response_header_copied("X-Request-Id", NULL, false));
    CHECK(!gw_response_header_copied("Transfer-Encoding", NULL, true));
}

static void test_failures(void)
{
    CHECK_INT(gw_failure_status(HTTPC_OK), 0);
    CHECK_INT(gw_failure_status(HTTPC_CONNECT), 502);
    CHECK_INT(gw_failure_status(HTTPC_BROKEN), 502);
    CHECK_INT(gw_failure_status(HTTPC_TIMEOUT), 504);
    CHECK_INT(gw_failure_status(HTTPC_OPEN), 503);
    CHECK_INT(gw_failure_status(HTTPC_BUSY), 503);

    CHECK_INT(gw_retry_after_s(0), 1);
    CHECK_INT(gw_retry_after_s(1), 1);
    CHECK_INT(gw_retry_after_s(1000), 1);
    CHECK_INT(gw_retry_after_s(1001), 2);
    CHECK_INT(gw_retry_after_s(4500), 5);

    char msg[256];
    gw_failure_message(msg, sizeof msg, "order", HTTPC_CONNECT, 5000, 0);
    CHECK(strstr(msg, "order service is unavailable") == msg);
    gw_failure_message(msg, sizeof msg, "payment", HTTPC_TIMEOUT, 1500, 0);
    CHECK(strstr(msg, "payment service") == msg);
    CHECK(strstr(msg, "1500 ms") != NULL);
    gw_failure_message(msg, sizeof msg, "delivery", HTTPC_OPEN, 5000, 2500);
    CHECK(strstr(msg, "delivery service") == msg);
    CHECK(strstr(msg, "circuit breaker") != NULL);
    CHECK(strstr(msg, "retry in 3 s") != NULL);
    gw_failure_message(msg, sizeof msg, "customerpage", HTTPC_BUSY, 5000, 0);
    CHECK(strstr(msg, "customerpage service") == msg);
    gw_failure_message(msg, sizeof msg, "order", HTTPC_BROKEN, 5000, 0);
    CHECK(strstr(msg, "order service is unavailable") == msg);
    /* A small buffer truncates, never overflows. */
    char tiny[8];
    gw_failure_message(tiny, sizeof tiny, "order", HTTPC_CONNECT, 5000, 0);
    CHECK_INT(strlen(tiny), 7);
}

static void test_web_rules(void)
{
    char key[64];
    CHECK(gw_web_key("/", key, sizeof key));
    CHECK_STR(key, "/index.html");
    CHECK(gw_web_key("/help/", key, sizeof key));
    CHECK_STR(key, "/help/index.html");
    CHECK(gw_web_key("/app.js", key, sizeof key));
    CHECK_STR(key, "/app.js");
    char small[8];
    CHECK(!gw_web_key("/", small, sizeof small));          /* "/index.html" needs 12 */
    CHECK(!gw_web_key("/abcdefgh", small, sizeof small));

    CHECK_STR(gw_content_type("/index.html"), "text/html; charset=utf-8");
    CHECK_STR(gw_content_type("/INDEX.HTM"), "text/html; charset=utf-8");
    CHECK_STR(gw_content_type("/css/site.css"), "text/css; charset=utf-8");
    CHECK_STR(gw_content_type("/app.js"), "text/javascript; charset=utf-8");
    CHECK_STR(gw_content_type("/data.json"), "application/json");
    CHECK_STR(gw_content_type("/logo.svg"), "image/svg+xml");
    CHECK_STR(gw_content_type("/favicon.ico"), "image/x-icon");
    CHECK_STR(gw_content_type("/img/car.png"), "image/png");
    CHECK_STR(gw_content_type("/manifest.webmanifest"), "application/manifest+json");
    CHECK_STR(gw_content_type("/README"), "application/octet-stream");
    CHECK_STR(gw_content_type("/dir.d/README"), "application/octet-stream");
    CHECK_STR(gw_content_type("/archive.tar.gz"), "application/octet-stream");

    CHECK_STR(gw_cache_control("/index.html"), "no-cache");
    CHECK_STR(gw_cache_control("/app.js"), "public, max-age=300");

    const char *etag = "\"00ff00ff00ff00ff\"";
    CHECK(gw_etag_matches("\"00ff00ff00ff00ff\"", etag));
    CHECK(gw_etag_matches("W/\"00ff00ff00ff00ff\"", etag));
    CHECK(gw_etag_matches("\"aaaa\", \"00ff00ff00ff00ff\"", etag));
    CHECK(gw_etag_matches("*", etag));
    CHECK(!gw_etag_matches("\"aaaa\"", etag));
    CHECK(!gw_etag_matches("\"00ff00ff00ff00f\"", etag));
    CHECK(!gw_etag_matches("", etag));
    CHECK(!gw_etag_matches(NULL, etag));
    CHECK(!gw_etag_matches(" , ,", etag));
}

int main(void)
{
    test_routes();
    test_refused_paths();
    test_hop_by_hop();
    test_failures();
    test_web_rules();
    return test_done("gateway/routing");
}
