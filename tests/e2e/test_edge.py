#!/usr/bin/env python3
"""End-to-end: what the gateway owes browsers and the network (services/gateway/edge.c), and the
415 every process answers.

  - security headers (CSP with frame-ancestors 'none', nosniff, Referrer-Policy) on the web
    page, on proxied API answers and on the gateway's own errors;
  - a POST or DELETE whose body is not labelled application/json is a 415 in the contract's
    shape, through the gateway and straight to each service's port, and changes nothing (no
    rental made, no cancellation recorded);
  - links never take a client-chosen host: the Location of a rental made with a spoofed Host is
    the public base URL's;
  - HTTPS: with a certificate this test makes (openssl CLI), the gateway serves the page and the
    API over TLS, with Strict-Transport-Security; plain HTTP on that port gets no answer; a key
    that does not match its certificate, or one of the two settings alone, stops the gateway
    at start with exit code 2.
"""
import http.client
import os
import shutil
import ssl
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BIN, System, check, check_error, free_port, run, wait_for  # noqa: E402

SERVICES = ["payment", "order", "delivery", "customerpage", "gateway"]


def security_headers_present(headers, what):
    csp = headers.get("content-security-policy", "")
    check("frame-ancestors 'none'" in csp, "%s: CSP %r" % (what, csp))
    check("script-src 'self'" in csp and "default-src 'self'" in csp, "%s: CSP %r" % (what, csp))
    check(headers.get("x-content-type-options") == "nosniff", "%s: nosniff %r" % (what, headers))
    check(headers.get("referrer-policy") == "no-referrer", "%s: Referrer-Policy %r" % (what, headers))


def test_security_headers_everywhere():
    with System(SERVICES) as s:
        for path in ("/", "/app.js", "/cars", "/no/such/page", "/health/ready"):
            code, _, headers = s.call("GET", "gateway", path)
            check(code in (200, 401, 404), "GET %s: %d" % (path, code))
            security_headers_present(headers, "GET " + path)
        resp = s.call("POST", "gateway", "/orders", raw="x", headers={"Content-Type": "text/plain"})
        security_headers_present(resp[2], "a 415 of the gateway")
        # The web page's CSP needs no inline code: its scripts and styles are files.
        code, page, _ = s.call("GET", "gateway", "/")
        check(code == 200 and "<script src=" in page and "<script>" not in page,
              "the page has inline script")


def json_untyped(port, method, path, body, content_type):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {} if content_type is None else {"Content-Type": content_type}
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    import json
    return r.status, json.loads(data) if data else None, {k.lower(): v for k, v in r.getheaders()}


def test_body_must_be_labelled_json_in_every_process():
    body = b'{"productId": "1001", "qty": 1, "orderId": 1, "customerId": "kim"}'
    with System(SERVICES) as s:
        code, cars, _ = s.call("GET", "order", "/cars")
        before = [c["available"] for c in cars["_embedded"]["cars"]]
        for name, path in [("gateway", "/orders"), ("order", "/orders"), ("payment", "/payments"),
                           ("payment", "/paymentCancellations"), ("delivery", "/cancellations"),
                           ("customerpage", "/admin/rebuild")]:
            for ctype in (None, "text/plain", "application/x-www-form-urlencoded",
                          "multipart/form-data; boundary=x"):
                resp = json_untyped(s.ports[name], "POST", path, body, ctype)
                check_error(resp, 415, "application/json")
                check(resp[1]["path"] == path, "path %r" % resp[1])
        resp = json_untyped(s.ports["gateway"], "DELETE", "/orders/1", body, "text/plain")
        check_error(resp, 415, "application/json")
        code, cars, _ = s.call("GET", "order", "/cars")
        check([c["available"] for c in cars["_embedded"]["cars"]] == before,
              "a refused body changed the fleet")
        for name, path in [("delivery", "/cancellations"), ("payment", "/paymentCancellations")]:
            code, listing, _ = s.call("GET", name, path)
            if code == 200:
                total = listing.get("page", {}).get("totalElements", 0)
                check(total == 0, "a refused body was recorded at %s%s" % (name, path))
        # Labelled JSON gets past the check (then answered by the service's own rules).
        resp = json_untyped(s.ports["gateway"], "POST", "/orders", b"{}",
                            "application/json; charset=utf-8")
        check(resp[0] != 415, "application/json; charset=utf-8 refused")


def make_certificate(d, name="gw"):
    cert, key = os.path.join(d, name + ".crt"), os.path.join(d, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def https_get(port, path, cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    conn.request("GET", path)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data, {k.lower(): v for k, v in r.getheaders()}


def test_gateway_serves_https():
    d = tempfile.mkdtemp(prefix="carshare-tls-")
    try:
        cert, key = make_certificate(d)
        env = {"GATEWAY_TLS_CERT": cert, "GATEWAY_TLS_KEY": key}
        s = System(["payment", "order", "gateway"], service_env={"gateway": env})
        s.extra_env["PUBLIC_BASE_URL"] = "https://127.0.0.1:%d" % s.ports["gateway"]
        # The harness probes readiness over plain HTTP: wait for the port instead.
        original = s.wait_ready
        s.wait_ready = lambda name, timeout=15: (original(name, timeout) if name != "gateway"
                                                 else wait_for(lambda: https_get(
                                                     s.ports["gateway"], "/health/ready",
                                                     cert)[0] == 200, timeout, "gateway (HTTPS)"))
        with s:
            port = s.ports["gateway"]
            code, page, headers = https_get(port, "/", cert)
            check(code == 200 and b"<html" in page.lower(), "page over HTTPS: %d" % code)
            check(headers.get("strict-transport-security", "").startswith("max-age="),
                  "no HSTS over HTTPS: %r" % headers)
            security_headers_present(headers, "HTTPS page")
            code, cars, _ = https_get(port, "/cars", cert)
            check(code == 200 and b"https://127.0.0.1:%d/cars" % port in cars,
                  "links over HTTPS do not say https: %r" % cars[:300])
            # Plain HTTP to the HTTPS port: no HTTP answer (the TLS handshake fails).
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health/live")
                status = conn.getresponse().status
            except (http.client.HTTPException, OSError):
                status = None
            check(status is None, "plain HTTP answered %r on the HTTPS port" % status)
            # A client that does not trust the certificate is refused by its own TLS check.
            try:
                https_get(port, "/", None)
                trusted = True
            except ssl.SSLError:
                trusted = False
            check(not trusted, "an unknown certificate was accepted by a verifying client")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def gateway_exit_code(env):
    """The gateway started alone with `env` (and a data directory holding the token keys, which
    every process needs): its exit code and output."""
    data = tempfile.mkdtemp(prefix="carshare-edge-data-")
    try:
        subprocess.run([os.path.join(BIN, "carshare-account"), "keygen", os.path.join(data, "keys", "account.key")],
                       check=True, stdout=subprocess.DEVNULL)
        full = dict(os.environ, HOST="127.0.0.1", PORT=str(free_port()), DATA_DIR=data, **env)
        p = subprocess.run([os.path.join(BIN, "carshare-gateway")], env=full, timeout=30,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return p.returncode, p.stdout.decode("utf-8", "replace")
    finally:
        shutil.rmtree(data, ignore_errors=True)


def test_tls_misconfiguration_stops_the_gateway():
    d = tempfile.mkdtemp(prefix="carshare-tls-")
    try:
        cert, key = make_certificate(d, "a")
        _, other_key = make_certificate(d, "b")
        for env, word in [({"GATEWAY_TLS_CERT": cert}, "GATEWAY_TLS_KEY"),
                          ({"GATEWAY_TLS_KEY": key}, "GATEWAY_TLS_CERT"),
                          ({"GATEWAY_TLS_CERT": cert, "GATEWAY_TLS_KEY": other_key}, "match"),
                          ({"GATEWAY_TLS_CERT": os.path.join(d, "none.crt"),
                            "GATEWAY_TLS_KEY": key}, "certificate")]:
            code, out = gateway_exit_code(env)
            check(code == 2, "gateway with %r exited %s: %s" % (env, code, out))
            check(word in out, "the reason does not mention %s: %s" % (word, out))
        code, out = gateway_exit_code({"PUBLIC_BASE_URL": "javascript:alert(1)"})
        check(code == 2 and "PUBLIC_BASE_URL" in out, "a bad PUBLIC_BASE_URL: %s %s" % (code, out))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_location_ignores_a_spoofed_host():
    with System(SERVICES) as s:
        gw = "http://127.0.0.1:%d/" % s.ports["gateway"]
        code, body, headers = s.call("GET", "gateway", "/cars",
                                     headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"})
        check(code == 200 and body["_links"]["self"]["href"].startswith(gw), "links %r" % body)
        check("evil.example" not in str(body), "a client-chosen host reached an answer")


if __name__ == "__main__":
    run(globals())
