"""test_gateway.py: the gateway, end to end, as the one public entry of carshare.

Two setups:
- the real services (payment, order, and delivery/customerpage when built) behind the real gateway:
  routing, query/body forwarding, X-Request-Id propagation into the services' logs, HAL links
  pointing at the gateway, readiness following the upstreams, 502 when an upstream is down, the
  breaker opening (fast 503 + Retry-After) and closing by itself, 504 when an upstream is frozen,
  and the web page (from a temporary WEB_DIR this test writes);
- the gateway in front of a recording upstream (a tiny Python HTTP server standing in for
  "order"), to see exactly what crosses the proxy: Host replaced, hop-by-hop headers dropped in
  both directions, X-Forwarded-* replaced by the gateway's own values, methods, HEAD, 204, binary bodies, the body limit, the web page
  reloaded when a file changes, and SIGTERM finishing an in-flight request then exiting 0.
"""
import atexit
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid

from harness import BIN, WEB, System, check, check_error, free_port, run, wait_for

INDEX_HTML = "<!doctype html><html lang=en><title>carshare test page</title><h1>carshare</h1></html>\n"
APP_JS = "document.title = 'carshare';\n"


def built(name):
    return os.path.exists(os.path.join(BIN, "carshare-" + name))


def make_web_dir():
    d = tempfile.mkdtemp(prefix="carshare-gw-web-")
    with open(os.path.join(d, "index.html"), "w") as f:
        f.write(INDEX_HTML)
    os.makedirs(os.path.join(d, "js"))
    with open(os.path.join(d, "js", "app.js"), "w") as f:
        f.write(APP_JS)
    with open(os.path.join(d, ".secret"), "w") as f:
        f.write("not for the web")
    atexit.register(shutil.rmtree, d, True)
    return d


def raw_request(port, request_bytes, timeout=10):
    """Sends bytes as they are (no client-side path normalisation); returns (status, headers, body)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(request_bytes)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep:
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v.strip())
                if len(rest) >= length:
                    break
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def parse_error(status, headers, body):
    try:
        parsed = json.loads(body.decode())
    except ValueError:
        parsed = body.decode("utf-8", "replace")
    return status, parsed, headers


# ---------------------------------------------------------------------------------------------
# Setup 1: the real services behind the gateway
# ---------------------------------------------------------------------------------------------

_real = {}


def real():
    """One System shared by the real-service tests (started on first use, closed at exit)."""
    if "sys" in _real:
        return _real["sys"]
    upstreams = [n for n in ("payment", "order", "delivery", "customerpage") if built(n)]
    check("order" in upstreams and "payment" in upstreams,
          "carshare-order and carshare-payment must be built in %s" % BIN)
    web = make_web_dir()
    gateway_env = {
        "WEB_DIR": web,
        # Reload only on SIGHUP here (the recording setup tests reload on change).
        "WEB_RELOAD_MS": "0",
        "GATEWAY_READY_UPSTREAMS": ",".join(u for u in upstreams),
        "GATEWAY_PROBE_INTERVAL_MS": "200",
        # payment: a breaker that opens after 3 failures and tries again after 1.5 s.
        "GATEWAY_PAYMENT_BREAKER_FAILURES": "3",
        "GATEWAY_PAYMENT_BREAKER_OPEN_MS": "1500",
        "GATEWAY_PAYMENT_RETRIES": "0",
        # order: a short total timeout, so a frozen order is a quick 504.
        "GATEWAY_ORDER_TIMEOUT_MS": "1500",
        "GATEWAY_ORDER_BREAKER_FAILURES": "100",
    }
    sys_ = System(upstreams + ["gateway"], service_env={"gateway": gateway_env})
    sys_.__enter__()
    sys_.web = web
    sys_.upstreams = upstreams
    _real["sys"] = sys_
    atexit.register(sys_.close)
    return sys_


def tracked(fn):
    """Marks the shared System as failed when a test fails, so its logs are printed at exit."""
    def wrapper():
        try:
            fn()
        except BaseException:
            if "sys" in _real:
                _real["sys"].failed = True
            if "sys" in _rec:
                _rec["sys"].failed = True
            raise
    wrapper.__name__ = fn.__name__
    return wrapper


def new_id(tag):
    return "gw-e2e-%s-%s" % (tag, uuid.uuid4().hex[:12])


@tracked
def test_routes_reach_their_upstream():
    s = real()
    paths = {"order": ["/orders", "/cars", "/orders/search/findByCustomerId?customerId=nobody"],
             "payment": ["/payments", "/paymentCancellations"],
             "delivery": ["/deliveries", "/cancellations"],
             "customerpage": ["/customerpages"]}
    for service, service_paths in paths.items():
        if service not in s.upstreams:
            continue
        for path in service_paths:
            rid = new_id(service)
            code, body, headers = s.call("GET", "gateway", path, headers={"X-Request-Id": rid})
            check(code == 200, "GET %s through the gateway: %d %r" % (path, code, body))
            check(isinstance(body, dict) and "_embedded" in body,
                  "GET %s: not a collection: %r" % (path, body))
            check(headers.get("x-request-id") == rid, "GET %s: X-Request-Id %r" % (path, headers))
            # The request reached that service (its log line carries our id), and no other.
            wait_for(lambda: rid in s.log(service), 5, "%s to log request %s" % (service, rid))
            for other in s.upstreams:
                if other != service:
                    check(rid not in s.log(other), "%s also saw %s (%s)" % (other, rid, path))


@tracked
def test_contract_answers_pass_through_unchanged():
    s = real()
    # Same fleet directly and through the gateway (links aside).
    code, direct, _ = s.call("GET", "order", "/cars")
    check(code == 200, "GET /cars on order: %d" % code)
    code, via, headers = s.call("GET", "gateway", "/cars")
    check(code == 200, "GET /cars via gateway: %d" % code)
    check(via["_embedded"] == direct["_embedded"] or
          [c["id"] for c in via["_embedded"]["cars"]] == [c["id"] for c in direct["_embedded"]["cars"]],
          "fleet differs through the gateway")
    check(headers.get("content-type", "").startswith("application/json"),
          "content type %r" % headers.get("content-type"))
    # An upstream's own error comes back as it is: status, shape, message.
    resp = s.call("GET", "gateway", "/orders/999999999")
    check_error(resp, 404)
    check(resp[1]["path"] == "/orders/999999999", "error path %r" % resp[1])


@tracked
def test_query_and_body_forwarded():
    s = real()
    code, body, _ = s.call("GET", "gateway", "/cars?page=0&size=2")
    check(code == 200, "GET /cars?size=2: %d %r" % (code, body))
    check(body["page"]["size"] == 2, "page size not forwarded: %r" % body["page"])
    check(len(body["_embedded"]["cars"]) <= 2, "more than 2 cars: %r" % body)
    # A bad body is refused by order with a message naming the field: the body got there.
    resp = s.call("POST", "gateway", "/orders", {"productId": "1001", "qty": "many"})
    check_error(resp, 400, "qty")
    # A rental through the gateway: the body reaches order, order pays, the answer comes back.
    customer = "gw-" + uuid.uuid4().hex[:8]
    code, order, headers = s.call("POST", "gateway", "/orders",
                                  {"productId": "1001", "qty": 1, "customerId": customer})
    check(code == 201, "POST /orders via gateway: %d %r" % (code, order))
    check(order.get("customerId") == customer, "customerId not forwarded: %r" % order)
    check(order.get("status") == "OrderApproved", "status %r" % order)
    check("location" in headers, "Location not copied back: %r" % headers)
    # Payment's body too.
    code, payments, _ = s.call("GET", "gateway",
                               "/payments/search/findByOrderId?orderId=%s" % order["id"])
    check(code == 200, "payment search via gateway: %d %r" % (code, payments))
    # The rental can be cancelled through the gateway (DELETE, 204, no body).
    code, body, _ = s.call("DELETE", "gateway", "/orders/%s" % order["id"])
    check(code == 204, "DELETE via gateway: %d %r" % (code, body))
    code, after, _ = s.call("GET", "gateway", "/orders/%s" % order["id"])
    check(code == 200 and after["status"] == "OrderCancelled", "after DELETE: %d %r" % (code, after))


@tracked
def test_hal_links_point_at_the_gateway():
    s = real()
    base = "http://127.0.0.1:%d/" % s.ports["gateway"]
    code, body, _ = s.call("GET", "gateway", "/cars")
    check(code == 200, "GET /cars: %d" % code)
    check(body["_links"]["self"]["href"].startswith(base),
          "collection self link %r does not point at the gateway %s" % (body["_links"], base))
    for car in body["_embedded"]["cars"]:
        check(car["_links"]["self"]["href"].startswith(base), "car link %r" % car["_links"])
    # Links come from the configured public base URL (the gateway's), not from the request:
    # straight to order too, and whatever Host or X-Forwarded-Host the client sends.
    spoof = {"Host": "evil.example", "X-Forwarded-Host": "evil.example",
             "X-Forwarded-Proto": "https"}
    for name in ("order", "gateway"):
        code, direct, _ = s.call("GET", name, "/cars", headers=spoof)
        check(code == 200, "GET /cars from %s: %d" % (name, code))
        check(direct["_links"]["self"]["href"].startswith(base),
              "%s's link %r ignores the public base URL %s" % (name, direct["_links"], base))


@tracked
def test_request_id_generated_and_propagated():
    s = real()
    code, _, headers = s.call("GET", "gateway", "/cars")
    check(code == 200, "GET /cars: %d" % code)
    rid = headers.get("x-request-id")
    check(rid, "no X-Request-Id generated: %r" % headers)
    wait_for(lambda: rid in s.log("order"), 5, "order to log the gateway's request id %s" % rid)
    check(rid in s.log("gateway"), "the gateway does not log its own request id")
    # Through order to payment as well: one id follows the rental.
    rid = new_id("rental")
    code, order, _ = s.call("POST", "gateway", "/orders", {"productId": "1002", "qty": 1},
                            headers={"X-Request-Id": rid})
    check(code == 201, "rental: %d %r" % (code, order))
    wait_for(lambda: rid in s.log("payment"), 5, "payment to log the rental's request id")


@tracked
def test_web_page_served():
    s = real()
    for path in ("/", "/index.html"):
        code, body, headers = s.call("GET", "gateway", path)
        check(code == 200, "GET %s: %d %r" % (path, code, body))
        check(body == INDEX_HTML, "GET %s: wrong body %r" % (path, body))
        check(headers.get("content-type", "").startswith("text/html"),
              "GET %s content type %r" % (path, headers.get("content-type")))
        check(headers.get("cache-control") == "no-cache", "cache-control %r" % headers)
        check(headers.get("etag"), "no ETag: %r" % headers)
    code, body, headers = s.call("GET", "gateway", "/js/app.js")
    check(code == 200 and body == APP_JS, "app.js: %d %r" % (code, body))
    check(headers.get("content-type", "").startswith("text/javascript"), "js type %r" % headers)
    check("max-age" in headers.get("cache-control", ""), "js cache-control %r" % headers)
    # Revalidation: the same ETag gets a 304 without a body.
    etag = s.call("GET", "gateway", "/")[2]["etag"]
    code, body, _ = s.call("GET", "gateway", "/", headers={"If-None-Match": etag})
    check(code == 304 and body is None, "If-None-Match: %d %r" % (code, body))
    code, body, _ = s.call("GET", "gateway", "/", headers={"If-None-Match": '"other"'})
    check(code == 200, "a different ETag must get the page: %d" % code)
    # HEAD: the length GET would send, no body.
    conn = http.client.HTTPConnection("127.0.0.1", s.ports["gateway"], timeout=5)
    conn.request("HEAD", "/")
    r = conn.getresponse()
    check(r.status == 200, "HEAD /: %d" % r.status)
    check(r.getheader("Content-Length") == str(len(INDEX_HTML.encode())),
          "HEAD / length %r" % r.getheader("Content-Length"))
    check(r.read() == b"", "HEAD / sent a body")
    conn.close()


@tracked
def test_web_unknown_file_and_refusals():
    s = real()
    check_error(s.call("GET", "gateway", "/no-such-file.js"), 404, "/no-such-file.js")
    check_error(s.call("GET", "gateway", "/js/"), 404)
    check_error(s.call("GET", "gateway", "/.secret"), 404)          # dotfiles are never served
    check_error(s.call("GET", "gateway", "/ordersX"), 404)          # not the order route
    resp = s.call("POST", "gateway", "/index.html", {"x": 1})
    check_error(resp, 405)
    check("GET" in resp[2].get("allow", ""), "405 without Allow: %r" % resp[2])
    # Traversal, plain and percent-encoded, on the web page and on a route: refused, never served.
    port = s.ports["gateway"]
    for target in ("/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
                   "/js/..%2f..%2f..%2fetc%2fpasswd", "/js/../index.html",
                   "/orders/../customerpages", "/./index.html"):
        status, headers, body = raw_request(
            port, ("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target).encode())
        check(b"root:" not in body, "%s leaked /etc/passwd" % target)
        check_error(parse_error(status, headers, body), 400, "..")


@tracked
def test_web_reload_on_sighup():
    s = real()
    path = os.path.join(s.web, "index.html")
    with open(path, "w") as f:
        f.write("<!doctype html><title>v2</title>\n")
    with open(os.path.join(s.web, "new.html"), "w") as f:
        f.write("<p>new</p>")
    s.procs["gateway"].signal(signal.SIGHUP)
    wait_for(lambda: s.call("GET", "gateway", "/")[1] == "<!doctype html><title>v2</title>\n", 5,
             "the page to be reloaded on SIGHUP")
    code, body, _ = s.call("GET", "gateway", "/new.html")
    check(code == 200 and body == "<p>new</p>", "new file after SIGHUP: %d %r" % (code, body))
    with open(path, "w") as f:
        f.write(INDEX_HTML)
    s.procs["gateway"].signal(signal.SIGHUP)
    wait_for(lambda: s.call("GET", "gateway", "/")[1] == INDEX_HTML, 5, "the page to be restored")


@tracked
def test_gateway_own_endpoints():
    s = real()
    code, _, _ = s.call("GET", "gateway", "/health/live")
    check(code == 200, "/health/live: %d" % code)
    code, _, _ = s.call("GET", "gateway", "/health/ready")
    check(code == 200, "/health/ready with every upstream up: %d" % code)
    code, text, _ = s.call("GET", "gateway", "/metrics")
    check(code == 200 and "carshare_gateway_upstream_ready" in text,
          "metrics lack upstream readiness: %r" % (text[:300] if isinstance(text, str) else text))
    check('carshare_gateway_upstream_ready{upstream="order"} 1' in text, "order not ready in metrics")


@tracked
def test_upstream_down_502_breaker_opens_and_recovers():
    s = real()
    check(s.call("GET", "gateway", "/payments")[0] == 200, "payment should answer first")
    log_start = len(s.log("gateway"))
    s.stop("payment")
    # Readiness follows the probes.
    wait_for(lambda: s.call("GET", "gateway", "/health/ready")[0] == 503, 5,
             "gateway /health/ready to turn 503 with payment down")
    code, body, _ = s.call("GET", "gateway", "/health/ready")
    check("payment" in json.dumps(body), "readiness does not name payment: %r" % body)
    # Other routes keep working.
    check(s.call("GET", "gateway", "/cars")[0] == 200, "order must not suffer from payment")
    # Down: 502 in the contract's shape, naming payment.
    resp = s.call("GET", "gateway", "/payments")
    check_error(resp, 502, "payment service is unavailable")
    check(resp[1]["path"] == "/payments", "error path %r" % resp[1])
    # After a few failures the breaker opens: 503, Retry-After, no connection attempted.
    codes = [502]
    resp = None
    for _ in range(10):
        resp = s.call("GET", "gateway", "/payments")
        codes.append(resp[0])
        if resp[0] == 503:
            break
    check(resp[0] == 503, "the breaker never opened: %r" % codes)
    check_error(resp, 503, "payment service")
    check("circuit breaker" in resp[1]["message"], "message %r" % resp[1]["message"])
    retry_after = resp[2].get("retry-after")
    check(retry_after and retry_after.isdigit() and int(retry_after) >= 1,
          "503 without a valid Retry-After: %r" % resp[2])
    check(set(codes[:-1]) == {502}, "before opening, every answer is a 502: %r" % codes)
    code, text, _ = s.call("GET", "gateway", "/metrics")
    check('carshare_gateway_upstream_failures_total{upstream="payment",result="connect"}' in text,
          "failures not counted in /metrics")
    check('carshare_gateway_upstream_failures_total{upstream="payment",result="open"}' in text,
          "breaker refusals not counted in /metrics")
    # Internal calls are not routed at all, breaker or not: 404 before any upstream is asked.
    check_error(s.call("POST", "gateway", "/paymentCancellations", {"orderId": 1}), 404, "not reachable")
    # payment returns: the breaker lets a trial through after its cool-down and closes.
    s.start("payment")
    wait_for(lambda: s.call("GET", "gateway", "/payments")[0] == 200, 15,
             "the breaker to close once payment is back")
    wait_for(lambda: s.call("GET", "gateway", "/health/ready")[0] == 200, 5,
             "gateway /health/ready to be 200 again")
    # Seconds of refused probes, yet one line each way (not one per probe).
    log = s.log("gateway")
    not_ready, ready = probe_log_lines(log[log_start:], "payment")
    check(len(not_ready) == 1 and "level=warn" in not_ready[0] and 'reason="' in not_ready[0],
          "not-ready lines %r" % not_ready)
    check(len(ready) == 1 and int(ready[0].split("failed_probes=")[1].split()[0]) > 1,
          "ready lines %r" % ready)
    check("payment_probe" not in log, "per-probe lines in the gateway's log")


@tracked
def test_frozen_upstream_504():
    s = real()
    check(s.call("GET", "gateway", "/cars")[0] == 200, "order should answer first")
    s.freeze("order")
    try:
        t0 = time.monotonic()
        resp = s.call("GET", "gateway", "/cars", timeout=30)
        elapsed = time.monotonic() - t0
        check_error(resp, 504, "order service")
        check("1500 ms" in resp[1]["message"], "message does not state the timeout: %r" % resp[1])
        # Bounded by the configured timeout (with its retries), not by the client or the
        # server's 30 s request limit.
        check(elapsed < 12, "504 took %.1fs" % elapsed)
        t0 = time.monotonic()
        resp = s.call("POST", "gateway", "/orders", {"productId": "1001", "qty": 1}, timeout=30)
        check_error(resp, 504, "order service")
        check(time.monotonic() - t0 < 12, "POST 504 took too long")
        # Other upstreams are unaffected meanwhile.
        check(s.call("GET", "gateway", "/payments")[0] == 200, "payment must not suffer")
    finally:
        s.thaw("order")
    wait_for(lambda: s.call("GET", "gateway", "/cars")[0] == 200, 15, "order to answer again")


# ---------------------------------------------------------------------------------------------
# Setup 2: the gateway in front of a recording upstream
# ---------------------------------------------------------------------------------------------

class Recorder:
    """A stand-in upstream that records what the gateway sends and answers what a test asks."""

    def __init__(self, listen=True):
        """listen=False binds the port but does not listen yet (connections are refused) until
        listen() is called: an upstream that starts after the gateway."""
        self.requests = []
        self.lock = threading.Lock()
        self.ready_status = 200     # what /health/ready answers
        self.probes = 0             # /health/ready requests seen
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                entry = {"method": self.command, "path": self.path,
                         "headers": [(k.lower(), v) for k, v in self.headers.items()],
                         "body": body}
                if self.path == "/health/ready":
                    with recorder.lock:
                        recorder.probes += 1
                    out = json.dumps({"status": "UP" if recorder.ready_status == 200 else "DOWN"})
                    self.send_response(recorder.ready_status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out.encode())
                    return
                with recorder.lock:
                    recorder.requests.append(entry)
                if self.path.startswith("/orders/slow"):
                    time.sleep(1.5)
                if self.path.startswith("/orders/nocontent"):
                    self.send_response(204)
                    self.send_header("X-Upstream", "recorder")
                    self.end_headers()
                    return
                out = json.dumps({"seen": self.path, "method": self.command}).encode()
                self.send_response(201 if self.command == "POST" else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.send_header("Location", "/orders/42")
                self.send_header("X-Upstream", "recorder")
                self.send_header("Keep-Alive", "timeout=5")
                self.send_header("X-Private", "hop secret")
                self.send_header("Connection", "X-Private")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler,
                                                      bind_and_activate=False)
        self.server.daemon_threads = True
        self.server.server_bind()
        self.port = self.server.server_address[1]
        self.listening = False
        if listen:
            self.listen()

    def listen(self):
        self.server.server_activate()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.listening = True

    def last(self, path_prefix):
        with self.lock:
            for r in reversed(self.requests):
                if r["path"].startswith(path_prefix):
                    return r
        raise AssertionError("the upstream never saw %s" % path_prefix)

    def close(self):
        if self.listening:
            self.server.shutdown()   # waits for serve_forever: only once it runs
        self.server.server_close()


_rec = {}


def recorded():
    if "sys" in _rec:
        return _rec["sys"]
    rec = Recorder()
    atexit.register(rec.close)
    web = make_web_dir()
    env = {"WEB_DIR": web, "WEB_RELOAD_MS": "200", "GATEWAY_READY_UPSTREAMS": "order",
           "GATEWAY_PROBE_INTERVAL_MS": "200", "HTTP_MAX_BODY": "4096",
           "ORDER_URL": "http://127.0.0.1:%d" % rec.port,
           # Nothing listens here: a down payment that must not matter for readiness.
           "PAYMENT_URL": "http://127.0.0.1:%d" % free_port()}
    sys_ = System(["gateway"], nats=False, service_env={"gateway": env})
    sys_.__enter__()
    sys_.rec = rec
    sys_.web = web
    _rec["sys"] = sys_
    atexit.register(sys_.close)
    return sys_


def header_values(entry, name):
    return [v for k, v in entry["headers"] if k == name]


@tracked
def test_forwarded_request_headers():
    s = recorded()
    rid = new_id("hdr")
    gw = "127.0.0.1:%d" % s.ports["gateway"]
    conn = http.client.HTTPConnection("127.0.0.1", s.ports["gateway"], timeout=10)
    body = json.dumps({"productId": "1001", "qty": 1}).encode()
    token = s.token("kim")   # the gateway checks it, then passes it on untouched
    conn.request("POST", "/orders/echo?x=1&y=a%20b", body=body, headers={
        "Content-Type": "application/json; charset=utf-8",
        "X-Request-Id": rid,
        "Authorization": "Bearer " + token,
        "Idempotency-Key": "key-1",
        "Accept": "application/hal+json",
        "X-Forwarded-For": "10.1.2.3",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "must not pass",
        "Keep-Alive": "timeout=100",
        "TE": "trailers",
        "Proxy-Authorization": "Basic secret",
        "Upgrade": "websocket",
    })
    r = conn.getresponse()
    answer = r.read()
    conn.close()
    check(r.status == 201, "POST through the gateway: %d %r" % (r.status, answer))
    seen = s.rec.last("/orders/echo")
    check(seen["method"] == "POST", "method %r" % seen["method"])
    check(seen["path"] == "/orders/echo?x=1&y=a%20b", "path and query not kept: %r" % seen["path"])
    check(seen["body"] == body, "body changed: %r" % seen["body"])
    hv = lambda name: header_values(seen, name)
    check(hv("host") == ["127.0.0.1:%d" % s.rec.port], "Host not the upstream's: %r" % hv("host"))
    check(hv("x-request-id") == [rid], "X-Request-Id %r" % hv("x-request-id"))
    check(hv("content-type") == ["application/json; charset=utf-8"], "type %r" % hv("content-type"))
    check(hv("content-length") == [str(len(body))], "length %r" % hv("content-length"))
    check(hv("authorization") == ["Bearer " + token], "Authorization %r" % hv("authorization"))
    check(hv("idempotency-key") == ["key-1"], "Idempotency-Key %r" % hv("idempotency-key"))
    check(hv("accept") == ["application/hal+json"], "Accept %r" % hv("accept"))
    # The gateway's own values replace whatever the client wrote under these names.
    xff = hv("x-forwarded-for")
    check(xff == ["127.0.0.1"], "X-Forwarded-For %r" % xff)
    check(hv("x-forwarded-host") == [gw], "X-Forwarded-Host %r (want %s)" % (hv("x-forwarded-host"), gw))
    check(hv("x-forwarded-proto") == ["http"], "X-Forwarded-Proto %r" % hv("x-forwarded-proto"))
    for hop in ("x-hop", "keep-alive", "te", "proxy-authorization", "upgrade", "transfer-encoding"):
        check(not hv(hop), "hop-by-hop %s reached the upstream: %r" % (hop, hv(hop)))
    for value in hv("connection"):
        check("x-hop" not in value.lower(), "the client's Connection reached the upstream: %r" % value)


@tracked
def test_answer_headers_copied_without_hop_by_hop():
    s = recorded()
    code, body, headers = s.call("GET", "gateway", "/orders/echo")
    check(code == 200 and body == {"seen": "/orders/echo", "method": "GET"}, "%d %r" % (code, body))
    check(headers.get("location") == "/orders/42", "Location not copied: %r" % headers)
    check(headers.get("x-upstream") == "recorder", "X-Upstream not copied: %r" % headers)
    check("x-private" not in headers, "a header named by Connection was copied: %r" % headers)
    check("keep-alive" not in headers or headers.get("keep-alive") != "timeout=5",
          "the upstream's Keep-Alive was copied: %r" % headers)
    check("BaseHTTP" not in headers.get("server", ""), "the upstream's Server leaked: %r" % headers)
    check(headers.get("content-type") == "application/json", "type %r" % headers)
    # No X-Forwarded-For from the client: the chain starts with the client's address.
    seen = s.rec.last("/orders/echo")
    check(header_values(seen, "x-forwarded-for")[0].startswith("127.0.0.1"), "xff %r" % seen)


@tracked
def test_methods_head_and_no_content():
    s = recorded()
    for method in ("PUT", "PATCH", "DELETE", "OPTIONS"):
        code, body, _ = s.call(method, "gateway", "/orders/echo/%s" % method.lower(), {"a": 1})
        check(code == 200, "%s: %d %r" % (method, code, body))
        seen = s.rec.last("/orders/echo/%s" % method.lower())
        check(seen["method"] == method, "%s arrived as %s" % (method, seen["method"]))
        check(seen["body"] == b'{"a": 1}', "%s body %r" % (method, seen["body"]))
    before = len(s.rec.requests)
    resp = s.call("TRACE", "gateway", "/orders/echo/trace")
    check_error(resp, 405, "TRACE")
    check("OPTIONS" in resp[2].get("allow", ""), "405 without Allow: %r" % resp[2])
    check(all(r["path"] != "/orders/echo/trace" for r in s.rec.requests[before:]),
          "TRACE was forwarded")
    conn = http.client.HTTPConnection("127.0.0.1", s.ports["gateway"], timeout=10)
    conn.request("HEAD", "/orders/echo", headers=s.auth())
    r = conn.getresponse()
    check(r.status == 200, "HEAD: %d" % r.status)
    want = str(len(json.dumps({"seen": "/orders/echo", "method": "HEAD"})))
    check(r.getheader("Content-Length") == want, "HEAD length %r, want %s" % (r.getheader("Content-Length"), want))
    check(r.read() == b"", "HEAD answered with a body")
    conn.close()
    check(s.rec.last("/orders/echo")["method"] == "HEAD", "HEAD forwarded as another method")
    code, body, headers = s.call("DELETE", "gateway", "/orders/nocontent")
    check(code == 204 and body is None, "204: %d %r" % (code, body))
    check(headers.get("x-upstream") == "recorder", "204 headers %r" % headers)


@tracked
def test_binary_body_and_body_limit():
    s = recorded()
    blob = bytes(range(256)) * 8   # 2048 bytes, NULs included
    # Labelled JSON (anything else is a 415 at the gateway): the proxy does not parse bodies.
    code, _, _ = s.call("POST", "gateway", "/orders/blob", raw=blob,
                        headers={"Content-Type": "application/json"})
    check(code == 201, "binary POST: %d" % code)
    seen = s.rec.last("/orders/blob")
    check(seen["body"] == blob, "binary body changed (%d bytes arrived)" % len(seen["body"]))
    before = len(s.rec.requests)
    resp = s.call("POST", "gateway", "/orders/big", raw=b"x" * 10000,
                  headers={"Content-Type": "application/json"})
    check_error(resp, 413)
    check(all(not r["path"].startswith("/orders/big") for r in s.rec.requests[before:]),
          "an oversized body was forwarded")


@tracked
def test_readiness_counts_only_required_upstreams():
    s = recorded()
    # payment is down but not required here; order (the recorder) is up.
    wait_for(lambda: s.call("GET", "gateway", "/health/ready")[0] == 200, 5, "gateway ready")
    check_error(s.call("GET", "gateway", "/payments"), 502, "payment")


def probe_log_lines(log, upstream):
    """The gateway's readiness lines for one upstream: (not ready, ready) lists."""
    lines = [l for l in log.splitlines() if "upstream=%s " % upstream in l]
    return ([l for l in lines if 'msg="upstream not ready' in l],
            [l for l in lines if 'msg="upstream ready"' in l])


@tracked
def test_readiness_changes_logged_once():
    s = recorded()
    wait_for(lambda: s.call("GET", "gateway", "/health/ready")[0] == 200, 5, "gateway ready")
    before = len(s.log("gateway"))
    s.rec.ready_status = 503
    try:
        wait_for(lambda: s.call("GET", "gateway", "/health/ready")[0] == 503, 10,
                 "gateway /health/ready to turn 503 with order not ready")
        # Several failed probes in a row...
        seen = s.rec.probes
        wait_for(lambda: s.rec.probes >= seen + 5, 10, "the gateway to keep probing order")
    finally:
        s.rec.ready_status = 200
    wait_for(lambda: s.call("GET", "gateway", "/health/ready")[0] == 200, 10,
             "gateway /health/ready to be 200 again")
    # ...and yet one line each way: the warning with its reason, then the way back.
    log = s.log("gateway")
    not_ready, ready = probe_log_lines(log[before:], "order")
    check(len(not_ready) == 1, "want one not-ready line, got %r" % not_ready)
    check("level=warn" in not_ready[0] and 'reason="status 503"' in not_ready[0],
          "not-ready line %r" % not_ready[0])
    check(len(ready) == 1, "want one ready line, got %r" % ready)
    failed = int(ready[0].split("failed_probes=")[1].split()[0])
    check(failed >= 5, "ready line counts %d failed probes: %r" % (failed, ready[0]))
    check("order_probe" not in log, "per-probe lines in the gateway's log")


def test_gateway_ready_soon_after_a_late_upstream():
    """The gateway starts before its upstream: with a 10-minute probe interval it still turns
    ready once the upstream does, because it probes fast while the upstream is not ready."""
    rec = Recorder(listen=False)
    env = {"GATEWAY_READY_UPSTREAMS": "order", "GATEWAY_PROBE_INTERVAL_MS": "600000",
           "ORDER_URL": "http://127.0.0.1:%d" % rec.port, "WEB_RELOAD_MS": "0"}
    s = System(["gateway"], nats=False, service_env={"gateway": env})
    try:
        s.start("gateway", wait_ready=False)
        wait_for(lambda: probe_log_lines(s.log("gateway"), "order")[0], 10,
                 "the first probe to find order down")
        check(s.call("GET", "gateway", "/health/ready")[0] == 503, "ready without its upstream")
        rec.listen()
        wait_for(lambda: s.call("GET", "gateway", "/health/ready")[0] == 200, 15,
                 "the gateway to see order come up (probing every 10 minutes would not)")
        log = s.log("gateway")
        not_ready, ready = probe_log_lines(log, "order")
        check(len(not_ready) == 1 and "level=info" in not_ready[0] and
              'reason="could not connect"' in not_ready[0], "not-ready lines %r" % not_ready)
        check(len(ready) == 1, "ready lines %r" % ready)
        warnings = [l for l in log.splitlines() if "level=warn" in l and "upstream=order" in l]
        check(not warnings, "warnings about order while it was starting: %r" % warnings)
    except BaseException:
        s.failed = s.closing_after_error = True
        raise
    finally:
        s.close()
        rec.close()


def gateway_metric(s, name, labels):
    """One series of the gateway's /metrics (0 when absent)."""
    _, text, _ = s.call("GET", "gateway", "/metrics")
    for line in text.splitlines():
        if line.startswith("%s{%s} " % (name, labels)):
            return float(line.rsplit(" ", 1)[1])
    return 0


def test_unsent_call_goes_to_another_instance():
    """A call that never reached its instance (could not connect) goes to another one, whatever
    its method: nothing was sent, so nothing can happen twice. The e2e_pg/test_pg_cluster case:
    both order instances not ready (their bus lost with a nats node) and run.py's empty third
    slot in ORDER_URL; with no instance ready the choice takes them all in turn, the empty slot
    too, whose POSTs and DELETEs were answered 502 "could not connect" (GETs were retried)."""
    empty = Recorder(listen=False)      # bound, not listening: connections are refused
    live = Recorder()
    live.ready_status = 503             # alive and answering, not ready
    env = {"GATEWAY_READY_UPSTREAMS": "order", "GATEWAY_PROBE_INTERVAL_MS": "200",
           "ORDER_URL": "http://127.0.0.1:%d,http://127.0.0.1:%d" % (empty.port, live.port),
           "WEB_RELOAD_MS": "0"}
    s = System(["gateway"], nats=False, service_env={"gateway": env})
    try:
        s.start("gateway", wait_ready=False)
        wait_for(lambda: len(probe_log_lines(s.log("gateway"), "order")[0]) == 2, 10,
                 "both instances probed not ready")
        calls = [("POST", "/orders/unsent-%d" % i, 201) for i in range(6)]
        calls += [("DELETE", "/orders/unsent-%d" % i, 200) for i in range(4)]
        calls += [("PATCH", "/orders/unsent-%d" % i, 200) for i in range(2)]
        for method, path, want in calls:
            code, body, _ = s.call(method, "gateway", path, {"productId": "1001", "qty": 1})
            check(code == want, "%s %s: %d %r" % (method, path, code, body))
        # Each reached the live instance exactly once.
        seen = [(r["method"], r["path"]) for r in live.requests]
        for method, path, _ in calls:
            check(seen.count((method, path)) == 1, "%s %s seen %d times by the upstream"
                  % (method, path, seen.count((method, path))))
        # The figures say what happened: the empty slot was chosen, failed to connect and each
        # of those calls was sent to the other; no client was answered a failure.
        dead = 'upstream="order",instance="http://127.0.0.1:%d"' % empty.port
        chosen = gateway_metric(s, "carshare_upstream_instance_chosen_total", dead)
        check(chosen >= 1, "the empty slot was never chosen: the test tests nothing")
        check(gateway_metric(s, "carshare_upstream_instance_retries_total", dead) == chosen,
              "not every call chosen for the empty slot was sent to the other")
        # Each of them failed on the empty slot: to connect, or refused by its breaker once
        # that opened (both never sent).
        failed = {r: gateway_metric(s, "carshare_upstream_requests_total",
                                    'upstream="order",result="%s",status="0"' % r)
                  for r in ("connect", "open")}
        check(failed["connect"] >= 1 and failed["connect"] + failed["open"] == chosen,
              "outcomes on the empty slot %r, chosen %d times" % (failed, chosen))
        check(gateway_metric(s, "carshare_gateway_upstream_failures_total",
                             'upstream="order",result="connect"') == 0,
              "a client was answered a connect failure")
    except BaseException:
        s.failed = s.closing_after_error = True
        raise
    finally:
        s.close()
        live.close()
        empty.close()


@tracked
def test_web_reload_on_change():
    s = recorded()
    check(s.call("GET", "gateway", "/")[1] == INDEX_HTML, "first page")
    path = os.path.join(s.web, "index.html")
    with open(path, "w") as f:
        f.write("<!doctype html><title>changed on disk</title>\n")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    wait_for(lambda: "changed on disk" in (s.call("GET", "gateway", "/")[1] or ""), 5,
             "the changed page to be served")
    os.remove(os.path.join(s.web, "js", "app.js"))
    wait_for(lambda: s.call("GET", "gateway", "/js/app.js")[0] == 404, 5, "a removed file to be gone")


def test_team_web_page_served():
    """The real page (web/ of the repository), once it exists: every file comes back byte for
    byte with its type, and / is the HTML page."""
    if not os.path.exists(os.path.join(WEB, "index.html")):
        print("     (no %s/index.html yet: skipped)" % WEB)
        return
    types = {".html": "text/html", ".css": "text/css", ".js": "text/javascript",
             ".svg": "image/svg+xml", ".json": "application/json", ".png": "image/png",
             ".ico": "image/x-icon", ".webmanifest": "application/manifest+json"}
    with System(["gateway"], nats=False,
                service_env={"gateway": {"WEB_DIR": WEB, "GATEWAY_READY_UPSTREAMS": "none"}}) as s:
        code, body, headers = s.call("GET", "gateway", "/")
        check(code == 200, "GET / with the team's page: %d" % code)
        check(headers.get("content-type", "").startswith("text/html"), "type %r" % headers)
        check("<html" in body.lower(), "/ is not an HTML page: %r" % body[:200])
        served = 0
        for root, dirs, files in os.walk(WEB):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue
                rel = os.path.relpath(os.path.join(root, name), WEB).replace(os.sep, "/")
                with open(os.path.join(root, name), "rb") as f:
                    want = f.read()
                conn = http.client.HTTPConnection("127.0.0.1", s.ports["gateway"], timeout=10)
                conn.request("GET", "/" + rel)
                r = conn.getresponse()
                got = r.read()
                conn.close()
                check(r.status == 200 and got == want, "/%s: %d, %d bytes (want %d)" % (
                    rel, r.status, len(got), len(want)))
                ext = os.path.splitext(name)[1].lower()
                if ext in types:
                    check((r.getheader("Content-Type") or "").startswith(types[ext]),
                          "/%s served as %r" % (rel, r.getheader("Content-Type")))
                served += 1
        check(served > 0, "no file served")


@tracked
def test_sigterm_finishes_inflight_request_and_exits_0():
    s = recorded()
    result = {}

    def slow_call():
        try:
            result["resp"] = s.call("GET", "gateway", "/orders/slow", timeout=20)
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    t = threading.Thread(target=slow_call)
    t.start()
    wait_for(lambda: any(r["path"] == "/orders/slow" for r in s.rec.requests), 5,
             "the slow request to reach the upstream")
    s.procs["gateway"].signal(signal.SIGTERM)
    t.join(20)
    check("resp" in result, "the in-flight request failed: %r" % result.get("error"))
    code, body, _ = result["resp"]
    check(code == 200 and body == {"seen": "/orders/slow", "method": "GET"},
          "in-flight request: %d %r" % (code, body))
    p = s.procs["gateway"].popen
    p.wait(10)
    check(p.returncode == 0, "gateway exited %r after SIGTERM" % p.returncode)


run(globals())
