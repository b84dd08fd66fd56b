"""harness.py: start the real carshare binaries on free loopback ports and talk to them.

Every end-to-end test builds a System: a temporary data directory, a real nats-server (JetStream,
file storage) when asked, and the real service binaries from $CARSHARE_BIN, each on a free port,
wired to each other by environment variables exactly as `make run` wires them. Processes are
stopped by PID (SIGTERM, then SIGKILL after a grace period), never by name.

    with System(["payment", "order", "gateway"]) as sys:
        status, body, headers = sys.call("POST", "gateway", "/orders", {"productId": "1001", "qty": 1})

A test file defines test_* functions and ends with `run(globals())`, which runs them in order,
prints one line per test and a closing 'N passed, N failed' line, and exits non-zero on failure.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
import http.client

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
import natsauth  # noqa: E402  (scripts/natsauth.py: the bus's users, as make run writes them)

BIN = os.environ.get("CARSHARE_BIN", os.path.join(os.path.dirname(__file__), "..", "..", "build", "bin"))
WEB = os.environ.get("CARSHARE_WEB", os.path.join(os.path.dirname(__file__), "..", "..", "web"))
NATS = shutil.which("nats-server") or "/usr/sbin/nats-server"

SERVICES = ["payment", "order", "delivery", "customerpage", "gateway"]
URL_VARS = {"order": "ORDER_URL", "payment": "PAYMENT_URL", "delivery": "DELIVERY_URL",
            "customerpage": "CUSTOMERPAGE_URL"}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Proc:
    def __init__(self, name, argv, env, log_path):
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.popen = None
        self.crashed_on_purpose = False   # set by kill(): its exit code is not a failure

    def start(self):
        self.crashed_on_purpose = False
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
        log.close()

    @property
    def pid(self):
        return self.popen.pid if self.popen else None

    def running(self):
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig):
        if self.running():
            os.kill(self.popen.pid, sig)

    def stop(self, timeout=10):
        """SIGTERM, wait, SIGKILL if needed. Returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, signal.SIGCONT)
                os.kill(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        return self.popen.returncode

    def kill(self):
        """SIGKILL: a crash."""
        self.crashed_on_purpose = True
        if self.running():
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


class System:
    def __init__(self, services=SERVICES, nats=None, env=None, service_env=None, keep=False):
        """services: which carshare services to run. nats: run a nats-server (default: when any
        service but payment-only/order-only needs events -- always True unless False is given).
        env: extra environment for every service; service_env: {name: {VAR: value}}."""
        self.dir = tempfile.mkdtemp(prefix="carshare-e2e-")
        self.services = list(services)
        self.want_nats = True if nats is None else nats
        self.ports = {name: free_port() for name in self.services}
        self.nats_port = free_port()
        self.nats_passwords = natsauth.new_passwords()
        self.procs = {}
        self.extra_env = dict(env or {})
        self.service_env = service_env or {}
        self.keep = keep or os.environ.get("CARSHARE_KEEP") == "1"
        self.failed = False
        self.closing_after_error = False

    # ---- lifecycle ----
    def __enter__(self):
        try:
            if self.want_nats:
                self.start_nats()
            for name in self.services:
                self.start(name)
        except BaseException:
            self.failed = self.closing_after_error = True
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.failed = True
        self.closing_after_error = exc_type is not None
        self.close()
        return False

    def nats_url(self):
        return "nats://127.0.0.1:%d" % self.nats_port

    def start_nats(self):
        """nats-server with JetStream and the users and permissions make run gives it."""
        store = os.path.join(self.dir, "nats")
        os.makedirs(store, exist_ok=True)
        conf = natsauth.write_config(os.path.join(self.dir, "secrets", "nats.conf"), "127.0.0.1",
                                     self.nats_port, store, self.nats_passwords)
        p = Proc("nats", [NATS, "-c", conf], dict(os.environ), os.path.join(self.dir, "nats.log"))
        p.start()
        self.procs["nats"] = p
        wait_for(lambda: port_open(self.nats_port), 10, "nats-server to listen")

    def stop_nats(self):
        self.procs["nats"].stop()

    def nats_client(self, user="admin"):
        """A raw NATS connection as `user` (admin: every right; None: no credentials)."""
        return Nats(self.nats_port, user, self.nats_passwords.get(user))

    def env_for(self, name):
        env = dict(os.environ)
        env.update({
            "HOST": "127.0.0.1",
            "PORT": str(self.ports[name]),
            "DATA_DIR": os.path.join(self.dir, "data"),
            "NATS_URL": self.nats_url(),
            "WEB_DIR": WEB,
            "LOG_LEVEL": "info",
        })
        for svc, var in URL_VARS.items():
            port = self.ports.get(svc) or free_port()   # an unused port: "down"
            self.ports.setdefault(svc, port)
            env[var] = "http://127.0.0.1:%d" % port
        # The gateway is ready when the upstreams this System runs are ready (a test that wants
        # the gateway to wait for a service it stopped says so in service_env).
        # Links name the gateway, as under make run (PUBLIC_BASE_URL); "gateway" gets a port
        # even when this System does not run one.
        env["PUBLIC_BASE_URL"] = "http://127.0.0.1:%d" % self.ports.setdefault("gateway", free_port())
        upstreams = [s for s in self.services if s != "gateway"]
        env["GATEWAY_READY_UPSTREAMS"] = ",".join(upstreams) or "none"
        env.update(natsauth.service_env(name, self.nats_passwords))
        env.update(self.extra_env)
        env.update(self.service_env.get(name, {}))
        return env

    def start(self, name, wait_ready=True):
        os.makedirs(os.path.join(self.dir, "data"), exist_ok=True)
        p = Proc(name, [os.path.join(BIN, "carshare-" + name)], self.env_for(name),
                 os.path.join(self.dir, name + ".log"))
        p.start()
        self.procs[name] = p
        if wait_ready:
            self.wait_ready(name)
        return p

    def wait_ready(self, name, timeout=15):
        def ready():
            if not self.procs[name].running():
                raise AssertionError("%s exited with %s; log:\n%s" % (
                    name, self.procs[name].popen.returncode, self.log(name)[-3000:]))
            try:
                return self.call("GET", name, "/health/ready", timeout=2)[0] == 200
            except OSError:
                return False
        wait_for(ready, timeout, name + " to be ready")

    def stop(self, name, timeout=10):
        return self.procs[name].stop(timeout)

    def kill(self, name):
        self.procs[name].kill()

    def freeze(self, name):
        self.procs[name].signal(signal.SIGSTOP)

    def thaw(self, name):
        self.procs[name].signal(signal.SIGCONT)

    def log(self, name):
        try:
            with open(os.path.join(self.dir, name + ".log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def close(self):
        """Stops everything (SIGTERM). A service that did not exit 0 on SIGTERM (a crash, a
        sanitizer report, a hang) fails the test, unless the test killed it on purpose."""
        codes, bad = {}, []
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            codes[name] = proc.stop()
            if name != "nats" and not proc.crashed_on_purpose and codes[name] not in (0, None):
                bad.append("%s exited with %s" % (name, codes[name]))
        if bad:
            self.failed = True
        if self.failed or self.keep:
            print("e2e: logs kept in %s" % self.dir, file=sys.stderr)
            for name in self.procs:
                tail = self.log(name)[-2000:]
                print("---- %s.log (tail) ----\n%s" % (name, tail), file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        if bad and not self.closing_after_error:
            raise AssertionError("; ".join(bad))
        return codes

    # ---- HTTP ----
    def url(self, name, path=""):
        return "http://127.0.0.1:%d%s" % (self.ports[name], path)

    def call(self, method, name, path, body=None, headers=None, timeout=10, raw=None):
        """One request. Returns (status, parsed JSON or text or None, headers dict lowercased)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.ports[name], timeout=timeout)
        hdrs = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None and not any(k.lower() == "content-type" for k in hdrs):
            hdrs["Content-Type"] = "application/json"   # pass headers to send another
        if isinstance(data, str):
            data = data.encode()
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            payload = resp.read()
            rh = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        text = payload.decode("utf-8", "replace")
        parsed = None
        if payload:
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = text
        return resp.status, parsed, rh


class Nats:
    """A minimal NATS client (text protocol), enough to publish, request and see refusals."""

    def __init__(self, port, user=None, password=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.line()   # INFO
        connect = {"verbose": False, "pedantic": False, "headers": True}
        if user:
            connect.update(user=user, **{"pass": password})
        inbox = "_INBOX.%s.e2e" % (user or "anon")
        self.inbox = inbox
        self.sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\n"
                          + b"SUB " + inbox.encode() + b" 1\r\nPING\r\n")

    def close(self):
        self.sock.close()

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise OSError("nats-server closed the connection")
        self.buf += data

    def line(self):
        while b"\r\n" not in self.buf:
            self.fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def payload(self, n):
        while len(self.buf) < n + 2:
            self.fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def send(self, subject, body, headers=None, reply=None):
        reply = (reply + " ") if reply else ""
        if headers:
            hdr = ("NATS/1.0\r\n" + "".join("%s: %s\r\n" % kv for kv in headers.items())
                   + "\r\n").encode()
            self.sock.sendall(b"HPUB %s %s%d %d\r\n" % (subject.encode(), reply.encode(), len(hdr),
                                                         len(hdr) + len(body)) + hdr + body + b"\r\n")
        else:
            self.sock.sendall(b"PUB %s %s%d\r\n" % (subject.encode(), reply.encode(), len(body))
                              + body + b"\r\n")

    def request(self, subject, body, headers=None):
        """Publishes body (bytes) with a reply inbox and returns the parsed JSON answer; a refusal
        by nats-server (-ERR) raises NatsRefused."""
        self.send(subject, body, headers, self.inbox)
        while True:
            line = self.line()
            if line == "PING":
                self.sock.sendall(b"PONG\r\n")
            elif line.startswith("MSG "):
                return json.loads(self.payload(int(line.split()[-1])))
            elif line.startswith("HMSG "):
                parts = line.split()
                data = self.payload(int(parts[-1]))
                return json.loads(data[int(parts[-2]):] or b"{}")
            elif line.startswith("-ERR"):
                raise NatsRefused(line)


class NatsRefused(AssertionError):
    """nats-server answered -ERR (authorization or permissions violation)."""


def port_open(port):
    s = socket.socket()
    s.settimeout(0.5)
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_for(predicate, timeout, what):
    """Polls predicate until true; raises AssertionError naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (OSError, http.client.HTTPException) as e:
            last = e
        time.sleep(0.05)
    raise AssertionError("timed out after %ss waiting for %s (last: %r)" % (timeout, what, last))


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def check_error(resp, status, contains=None):
    """Asserts the contract's error shape: {"status", "error", "message", "path"}."""
    code, body, _ = resp
    check(code == status, "expected %d, got %d: %r" % (status, code, body))
    check(isinstance(body, dict), "error body is not a JSON object: %r" % (body,))
    for key in ("status", "error", "message", "path"):
        check(key in body, "error body lacks %r: %r" % (key, body))
    check(body["status"] == status, "body status %r != %d" % (body["status"], status))
    check(body["message"], "empty message")
    if contains:
        check(contains.lower() in body["message"].lower(),
              "message %r does not mention %r" % (body["message"], contains))


def run(namespace):
    tests = [(n, f) for n, f in namespace.items() if n.startswith("test_") and callable(f)]
    only = os.environ.get("E2E_ONLY")
    passed = failed = 0
    for name, fn in tests:
        if only and only not in name:
            continue
        t0 = time.monotonic()
        try:
            fn()
            passed += 1
            print("ok   %s (%.1fs)" % (name, time.monotonic() - t0), flush=True)
        except Exception:
            failed += 1
            print("FAIL %s (%.1fs)" % (name, time.monotonic() - t0), flush=True)
            traceback.print_exc()
    print("%d passed, %d failed" % (passed, failed), flush=True)
    sys.exit(1 if failed or not passed else 0)
