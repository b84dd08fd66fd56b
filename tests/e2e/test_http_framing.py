"""End-to-end: HTTP/1.1 framing by RFC 9112, on raw sockets (lib/http_frame.h).

Every framing case an attacker (or a proxy in front) could use to smuggle a request gets 400 in
the contract's JSON shape and the connection closed; a major version other than 1 gets 505; a
declared body over the limit gets 413 before it is sent; answers always carry HTTP/1.1; no HTML
from libevent reaches a client. Then the resource bounds: RSS under many slow large bodies, the
connection cap (HTTP_MAX_CONNECTIONS), and accepting paused, not spinning, when descriptors run
out (EMFILE).
"""
import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import System, check, run, wait_for  # noqa: E402

H = "Host: x\r\n"
JSON = "Content-Type: application/json\r\n"


def exchange(port, data, read_timeout=5.0, send_after=None):
    """Sends data, reads until the server closes (or read_timeout). Returns (answers, closed):
    answers is a list of (status line, headers dict, body bytes)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=read_timeout)
    s.sendall(data.encode("latin-1") if isinstance(data, str) else data)
    if send_after:
        time.sleep(0.2)
        try:
            s.sendall(send_after)
        except OSError:
            pass
    buf, closed = b"", False
    deadline = time.monotonic() + read_timeout
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        buf += chunk
    s.close()
    return parse(buf), closed


def parse(buf):
    answers = []
    while buf:
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError("incomplete answer: %r" % buf[:200])
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        answers.append((lines[0], headers, rest[:n]))
        buf = rest[n:]
    return answers


def refused(port, data, status, contains=None, **kw):
    t0 = time.monotonic()
    answers, closed = exchange(port, data, **kw)
    if time.monotonic() - t0 > 1:
        print("slow refusal (%.1fs): %r" % (time.monotonic() - t0, data[:60]))
    check(answers, "no answer to %r" % data)
    line, headers, body = answers[-1]
    check(line.startswith("HTTP/1.1 %d " % status), "expected HTTP/1.1 %d for %r, got %r: %r"
          % (status, data, line, body))
    check(headers.get("content-type", "").startswith("application/json"),
          "not JSON for %r: %r %r" % (data, headers, body))
    doc = json.loads(body)
    check(doc["status"] == status and doc["message"] and "path" in doc and "error" in doc,
          "not the contract's shape: %r" % doc)
    if contains:
        check(contains.lower() in doc["message"].lower(), "%r does not say %r" % (doc, contains))
    check(closed, "connection left open after %d for %r" % (status, data))
    return doc


def ok(port, data, status=200):
    answers, _ = exchange(port, data, read_timeout=2.0)
    check(answers and answers[0][0].startswith("HTTP/1.1 %d " % status),
          "expected HTTP/1.1 %d for %r, got %r" % (status, data, answers))
    return answers


CASES = [
    ("two different Content-Length",
     "POST /orders HTTP/1.1\r\n" + H + JSON + "Content-Length: 3\r\nContent-Length: 4\r\n\r\n{}xx", 400),
    ("the same Content-Length twice",
     "POST /orders HTTP/1.1\r\n" + H + JSON + "Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}", 400),
    ("signed Content-Length", "POST /orders HTTP/1.1\r\n" + H + JSON + "Content-Length: +2\r\n\r\n{}", 400),
    ("negative Content-Length", "POST /orders HTTP/1.1\r\n" + H + JSON + "Content-Length: -1\r\n\r\n", 400),
    ("hex Content-Length", "POST /orders HTTP/1.1\r\n" + H + JSON + "Content-Length: 0x2\r\n\r\n{}", 400),
    ("Content-Length with a space inside",
     "POST /orders HTTP/1.1\r\n" + H + JSON + "Content-Length: 1 2\r\n\r\n", 400),
    ("whitespace before the colon",
     "POST /orders HTTP/1.1\r\n" + H + JSON + "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding identity, chunked",
     "POST /orders HTTP/1.1\r\n" + H + JSON + "Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding chunked not last",
     "POST /orders HTTP/1.1\r\n" + H + JSON + "Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding twice",
     "POST /orders HTTP/1.1\r\n" + H + JSON + "Transfer-Encoding: chunked\r\n"
     "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("Content-Length and Transfer-Encoding",
     "POST /orders HTTP/1.1\r\n" + H + JSON + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding in HTTP/1.0",
     "POST /orders HTTP/1.0\r\n" + JSON + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("HTTP/1.1 without Host", "GET /cars HTTP/1.1\r\n\r\n", 400),
    ("two Hosts", "GET /cars HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("a space inside the target", "GET /ca rs HTTP/1.1\r\n" + H + "\r\n", 400),
    ("a target starting with // (evhttp: an authority)", "GET //0@x:y HTTP/1.1\r\n" + H + "\r\n",
     400),
    ("obs-fold", "GET /cars HTTP/1.1\r\n" + H + "X-A: b\r\n c\r\n\r\n", 400),
    ("bare LF line ends", "GET /cars HTTP/1.1\nHost: x\n\n", 400),
    ("a bare LF before the request line", "\nGET /cars HTTP/1.1\r\n" + H + "\r\n", 400),
    ("a bare CR before the request line", "\rGET /cars HTTP/1.1\r\n" + H + "\r\n", 400),
    ("a line of spaces before the request line", "\r\n  \r\nGET /cars HTTP/1.1\r\n" + H + "\r\n", 400),
    ("only empty lines, more than 8", "\r\n" * 9, 400),
    ("bare CR in a value", "GET /cars HTTP/1.1\r\n" + H + "X-A: a\rb\r\n\r\n", 400),
    ("NUL in a value", "GET /cars HTTP/1.1\r\n" + H + "X-A: a\x00b\r\n\r\n", 400),
    ("NUL in the target", "GET /cars\x00 HTTP/1.1\r\n" + H + "\r\n", 400),
    ("invalid chunk size",
     "POST /orders HTTP/1.1\r\n" + H + JSON + "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400),
    ("chunk longer than its size",
     "POST /orders HTTP/1.1\r\n" + H + JSON + "Transfer-Encoding: chunked\r\n\r\n1\r\n{}\r\n0\r\n\r\n", 400),
    ("a malformed version", "GET /cars HTTP/1.1x\r\n" + H + "\r\n", 400),
    ("HTTP/2.0", "GET /cars HTTP/2.0\r\n" + H + "\r\n", 505),
    ("HTTP/0.9 style version", "GET /cars HTTP/0.9\r\n" + H + "\r\n", 505),
    ("an unknown method", "BREW /cars HTTP/1.1\r\n" + H + "\r\n", 501),
    ("an expectation other than 100-continue",
     "POST /orders HTTP/1.1\r\n" + H + JSON + "Expect: teapot\r\nContent-Length: 2\r\n\r\n", 417),
    ("a declared body over the limit", "POST /orders HTTP/1.1\r\n" + H + JSON + "Content-Length: 1048577\r\n\r\n", 413),
    ("100-continue for a body over the limit",
     "POST /orders HTTP/1.1\r\n" + H + JSON + "Expect: 100-continue\r\nContent-Length: 9999999\r\n\r\n", 413),
    ("a chunked body over the limit",
     "POST /orders HTTP/1.1\r\n" + H + JSON + "Transfer-Encoding: chunked\r\n\r\n100000\r\n", 413),
    ("headers over the limit", "GET /cars HTTP/1.1\r\n" + H + "X-Big: " + "a" * 20000 + "\r\n\r\n", 431),
    ("a URL over the limit", "GET /cars?" + "a" * 20000 + " HTTP/1.1\r\n" + H + "\r\n", 431),
]


def test_framing_cases_are_refused_in_json_and_closed():
    with System(["order", "gateway"]) as s:
        for name in ("order", "gateway"):
            port = s.ports[name]
            for what, data, status in CASES:
                try:
                    refused(port, data, status)
                except AssertionError as e:
                    raise AssertionError("%s, %s: %s" % (name, what, e))
            # The process is fine afterwards.
            ok(port, "GET /cars HTTP/1.1\r\n" + H + "Connection: close\r\n\r\n")


def test_empty_lines_before_a_request_line_are_skipped():
    """RFC 9112 2.2: a server SHOULD ignore at least one empty line (CRLF) before a request line;
    up to 8 are skipped, before the first request and between keep-alive ones (the CRLF some
    clients send after a POST body)."""
    with System(["order", "gateway"]) as s:
        for name in ("order", "gateway"):
            port = s.ports[name]
            ok(port, "\r\nGET /cars HTTP/1.1\r\n" + H + "Connection: close\r\n\r\n")
            body = '{"productId":"nope","qty":1}'
            post = ("POST /orders HTTP/1.1\r\n" + H + JSON + "Authorization: Bearer %s\r\n"
                    "Content-Length: %d\r\n\r\n%s\r\n" % (s.token("kim"), len(body), body))
            answers, closed = exchange(port, "\r\n" * 8 + post + "\r\n" * 7 +
                                       "GET /cars HTTP/1.1\r\n" + H + "Connection: close\r\n\r\n",
                                       read_timeout=3.0)
            check([a[0].split(" ")[1] for a in answers] == ["404", "200"] and closed,
                  "%s: empty lines around keep-alive requests: %r" % (name, answers))
            check(json.loads(answers[0][2])["status"] == 404, "%s: %r" % (name, answers[0]))


def test_413_comes_before_the_body_is_sent():
    with System(["order"]) as s:
        # Only the head is sent: the answer arrives without waiting for 1 MiB.
        refused(s.ports["order"], "POST /orders HTTP/1.1\r\n" + H + JSON + "Content-Length: 1048576\r\n\r\n",
                413, "limit", read_timeout=3.0)


def test_answers_are_http11_whatever_the_minor_version():
    with System(["order"]) as s:
        port = s.ports["order"]
        ok(port, "GET /cars HTTP/1.7\r\n" + H + "Connection: close\r\n\r\n")
        answers, closed = exchange(port, "GET /cars HTTP/1.0\r\n\r\n", read_timeout=3.0)
        check(answers[0][0].startswith("HTTP/1.1 200"), "HTTP/1.0 answered with %r" % answers[0][0])
        check(closed, "an HTTP/1.0 request without keep-alive left the connection open")
        # Chunk extensions are valid and accepted.
        body = b'{"productId":"nope","qty":1}'
        auth = ("Authorization: Bearer %s\r\n" % s.token("kim")).encode()
        chunked = (b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth +
                   b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                   + b"%x;name=value\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        answers, _ = exchange(port, chunked, read_timeout=3.0)
        check(answers and answers[0][0].startswith("HTTP/1.1 404"), "chunked with extension: %r" % answers)


def test_expect_100_continue_for_an_acceptable_body():
    with System(["order"]) as s:
        body = b'{"productId":"nope","qty":1}'
        head = ("POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Authorization: Bearer %s\r\nExpect: 100-continue\r\nConnection: close\r\n"
                "Content-Length: %d\r\n\r\n" % (s.token("kim"), len(body)))
        answers, _ = exchange(s.ports["order"], head, read_timeout=3.0, send_after=body)
        check([a[0].split(" ")[1] for a in answers] == ["100", "404"], "answers: %r" % answers)


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def bodies_under_the_limit(port, n):
    """n connections each sending 60000 bytes of a 65000-byte body, and no more: each holds one
    request the server keeps reading."""
    socks = []
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port))
        c.sendall(("POST /orders HTTP/1.1\r\n" + H + JSON + "Content-Length: 65000\r\n\r\n").encode()
                  + b"y" * 60000)
        socks.append(c)
    return socks


def test_rss_stays_flat_under_slow_large_bodies():
    """100 connections each declaring a 1 MiB body and sending it slowly: each is refused at
    once (413) instead of being buffered; then 100 connections each sending a body just under
    the limit slowly: at most one request each is buffered. RSS stays within a few MB."""
    with System(["order"]) as s:
        port, pid = s.ports["order"], s.procs["order"].pid
        before = rss_kb(pid)
        socks = []
        for _ in range(100):
            c = socket.create_connection(("127.0.0.1", port))
            c.sendall(("POST /orders HTTP/1.1\r\n" + H + JSON + "Content-Length: 1048576\r\n\r\n").encode())
            socks.append(c)
        for c in socks:
            try:
                c.sendall(b"x" * 4096)
            except OSError:
                pass
        big = rss_kb(pid)
        for c in socks:
            c.close()
        socks = bodies_under_the_limit(port, 100)
        time.sleep(0.5)
        slow = rss_kb(pid)
        for c in socks:
            c.close()
        print("rss_kb before=%d after_1MiB_bodies=%d after_slow_64k_bodies=%d" % (before, big, slow))
        check(big - before < 8 * 1024, "RSS grew %d kB under 100 declared 1 MiB bodies" % (big - before))
        check(slow - before < 16 * 1024, "RSS grew %d kB under 100 slow 64 kB bodies" % (slow - before))


def sanitized(pid):
    """Whether the process runs under AddressSanitizer (its runtime is in the binary or mapped)."""
    with open("/proc/%d/exe" % pid, "rb") as f:
        if b"AddressSanitizer" in f.read():
            return True
    with open("/proc/%d/maps" % pid) as f:
        return "libasan" in f.read()


def test_memory_of_a_burst_of_slow_bodies_is_given_back():
    """400 connections each holding a body just under the limit (about 24 MB, bounded by one
    request each) leave that memory free once they are gone, not resident: glibc keeps freed heap
    below a block still in use, so the process trims it (lib/service.c, every 2 s)."""
    with System(["order"]) as s:
        port, pid = s.ports["order"], s.procs["order"].pid
        before = rss_kb(pid)
        socks = bodies_under_the_limit(port, 400)
        wait_for(lambda: rss_kb(pid) - before > 16 * 1024, 10, "the bodies to be read")
        held = rss_kb(pid)
        for c in socks:
            c.close()
        if sanitized(pid):
            print("AddressSanitizer build: its allocator keeps freed memory (quarantine); "
                  "RSS not checked after the burst")
            return
        wait_for(lambda: rss_kb(pid) - before < 6 * 1024, 15,
                 "RSS back near %d kB (it was %d kB with the bodies)" % (before, held))


def metric(s, name, port_name="order"):
    code, text, _ = s.call("GET", port_name, "/metrics")
    for line in (text if isinstance(text, str) else "").splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_connection_cap_refuses_new_connections_fast():
    with System(["order"], service_env={"order": {"HTTP_MAX_CONNECTIONS": "20"}}) as s:
        port = s.ports["order"]
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        time.sleep(0.3)   # adopted (metrics would count a refusal otherwise)
        for c in held[:1]:
            c.close()
        held = held[1:]
        # One slot free: the next connection is served (here: /metrics itself)...
        extra = []
        for _ in range(5):
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            extra.append(c)
        answers = []
        for c in extra:
            buf = b""
            c.settimeout(2)
            try:
                while True:
                    chunk = c.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
            except socket.timeout:
                pass
            answers.append(buf)
        refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        # 4 over the cap (5 when the server had not yet seen the first close: it is async).
        check(len(refused) in (4, 5) and all(a == b"" for a in answers if a not in refused),
              "expected 4 of 5 refused over the cap, the other held: %r" % answers)
        for a in refused:
            body = json.loads(a.split(b"\r\n\r\n", 1)[1])
            check(body["status"] == 503 and "connections" in body["message"], "refusal %r" % body)
        for c in held + extra:
            c.close()
        wait_for(lambda: metric(s, "carshare_http_connections_refused_total") >= len(refused), 10,
                 "the refusals counted")
        ok(port, "GET /cars HTTP/1.1\r\n" + H + "Connection: close\r\n\r\n")


def test_out_of_descriptors_pauses_accepting_then_recovers():
    with System(["order"]) as s:
        port, pid = s.ports["order"], s.procs["order"].pid
        open_fds = len(os.listdir("/proc/%d/fd" % pid))
        limit = open_fds + 10
        soft = subprocess.check_output(["prlimit", "--pid", str(pid), "--nofile", "--raw",
                                        "--noheadings", "--output=SOFT"]).decode().strip()
        subprocess.check_call(["prlimit", "--pid", str(pid), "--nofile=%d:" % limit])
        held = []
        for _ in range(15):     # more than the descriptors left: accept() fails with EMFILE
            held.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(0.5)
        for c in held:
            c.close()
        subprocess.check_call(["prlimit", "--pid", str(pid), "--nofile=%s:" % soft])
        # Served again once descriptors are back (the backlog's connections first).
        wait_for(lambda: ok(port, "GET /cars HTTP/1.1\r\n" + H + "Connection: close\r\n\r\n"), 10,
                 "order serving again")
        check(metric(s, "carshare_http_accept_paused_total") >= 1, "accepting never paused")
        check("accepting paused" in s.log("order"), "no log line for the pause")


run(globals())
