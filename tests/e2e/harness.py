"""harness.py: start the real carshare binaries on free loopback ports and talk to them.

Every end-to-end test builds a System: a temporary data directory, a real nats-server (JetStream,
file storage) when asked, and the real service binaries from $CARSHARE_BIN, each on a free port,
wired to each other by environment variables exactly as `make run` wires them. Processes are
stopped by PID (SIGTERM, then SIGKILL after a grace period), never by name.

    with System(["payment", "order", "gateway"]) as sys:
        status, body, headers = sys.call("POST", "gateway", "/orders", {"productId": "1001", "qty": 1})

Identity (the contract's "Identity and access"): every call needs a token but a few open ones, so
call() signs each call by itself unless told otherwise -- as the role the contract's access table
gives that call: POST /orders as the customer named in the body's customerId (default "kim"),
the internal calls (POST /payments, /paymentCancellations, /cancellations, and payment's
findByOrderId) as order's service credential, everything else as staff. Customers and staff are
signed in for real through account (POST /accounts, POST /sessions; staff is `admin` with the
password account wrote into secrets/admin-password) when the System runs account; otherwise their
tokens are signed with account's key by `carshare-account token`, as service tokens always are.
A test of access says who calls: as_="kim" (a customer), as_=STAFF, as_=SERVICE, as_=None (no
token), or passes its own Authorization header.

    sys.call("GET", "gateway", "/orders/7", as_="lee")        # another customer: 404
    sys.token("kim")                                          # the token itself

CARSHARE_DB=postgres runs the services that have a PostgreSQL store (PG_SERVICES: all of them, or
those a System is given as pg_services) on a real PostgreSQL instead of SQLite: one private
server per test process (scripts/pglocal.py: initdb in a temporary directory, pg_ctl on a free
port, stopped by PID at exit), a fresh database and role per service and System; the other
services stay on SQLite. pg_services=MIXED_PG_SERVICES is the seed's mixed setup (order and
payment on PostgreSQL, delivery and customerpage on SQLite).

A test file defines test_* functions and ends with `run(globals())`, which runs them in order,
prints one line per test and a closing 'N passed, N failed' line, and exits non-zero on failure.
"""
import atexit
import glob
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
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
from pglocal import LocalPostgres  # noqa: E402

BIN = os.environ.get("CARSHARE_BIN", os.path.join(os.path.dirname(__file__), "..", "..", "build", "bin"))
WEB = os.environ.get("CARSHARE_WEB", os.path.join(os.path.dirname(__file__), "..", "..", "web"))
NATS = shutil.which("nats-server") or "/usr/sbin/nats-server"

SERVICES = ["account", "payment", "order", "delivery", "customerpage", "gateway"]

# The schema hook: under run() (every e2e test), System.call checks each answer against
# docs/openapi.yaml (schema_check.py). A mismatch raises in the caller and is also kept here, so
# that one seen in a thread fails its test too. Others who import the harness (bench, soak, the
# browser test's launcher) neither pay for the check nor need python3-jsonschema.
CHECK_ANSWERS = False
CONTRACT_PROBLEMS = []
_contract = None


def contract():
    """The loaded docs/openapi.yaml (schema_check.Contract)."""
    global _contract
    if _contract is None:
        from schema_check import Contract
        _contract = Contract()
    return _contract
# A test may put its own stub behind the gateway (ORDER_URL=...): what the stub answers is the
# test's, not carshare's, and is not checked.
UPSTREAM_PATHS = {"ORDER_URL": ("/orders", "/cars"), "PAYMENT_URL": ("/payments", "/paymentCancellations"),
                  "DELIVERY_URL": ("/deliveries", "/cancellations"),
                  "CUSTOMERPAGE_URL": ("/customerpages",), "ACCOUNT_URL": ("/accounts", "/sessions")}
# The services whose store has a PostgreSQL version (issue 13 ports them one by one).
PG_SERVICES = ["account", "payment", "order", "delivery", "customerpage"]
# The seed's polyglot setup (issue 13): order and payment on PostgreSQL, delivery and customerpage
# on SQLite. System(pg_services=MIXED_PG_SERVICES) runs it (test_pg_postgres tests it).
MIXED_PG_SERVICES = ["payment", "order"]
DB = os.environ.get("CARSHARE_DB", "sqlite")
URL_VARS = {"order": "ORDER_URL", "payment": "PAYMENT_URL", "delivery": "DELIVERY_URL",
            "customerpage": "CUSTOMERPAGE_URL", "account": "ACCOUNT_URL"}

# Who calls: call(..., as_=AUTO) picks by the access table (see above).
AUTO, STAFF, SERVICE = object(), "<staff>", "<service>"
PASSWORD = "correct horse battery staple"   # every test customer's password
SERVICE_ONLY = (("POST", "/payments"), ("POST", "/paymentCancellations"), ("POST", "/cancellations"),
                ("GET", "/payments/search/findByOrderId"))


def caller_for(method, path, body, target):
    """The identity the access table gives a call to `target` (a process name): a customer id,
    STAFF, SERVICE, or None for the open calls. Through the gateway nothing is SERVICE's (it
    admits no service token): payment's lookup by order is staff's there."""
    bare = path.split("?", 1)[0].rstrip("/") or "/"
    if bare.startswith("/health/") or (method in ("GET", "HEAD") and (bare == "/cars" or bare.startswith("/cars/"))):
        return None
    if method == "POST" and bare in ("/accounts", "/sessions"):
        return None
    if (method, bare) in SERVICE_ONLY:
        return STAFF if target == "gateway" and method == "GET" else SERVICE
    if method == "POST" and bare == "/orders":
        named = body.get("customerId") if isinstance(body, dict) else None
        return named if isinstance(named, str) and named else "kim"
    return STAFF


_given_ports = set()


def free_port():
    """A loopback port nobody listens on, for a server this test starts a moment later.
    Not bind(0): that draws from the kernel's ephemeral range (ip_local_port_range, 32768-60999
    here), where every outgoing connection also takes its local port and where another suite's
    bind(0) is handed the same port as soon as we close ours; a service then fails to listen and
    the test talks to a stranger. Ports below that range are never given to outgoing connections,
    a random draw makes two suites picking the same port unlikely, and this process never hands
    out a port twice."""
    lo, hi = 20000, 32000
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            first = int(f.read().split()[0])
        hi = min(hi, first)
        lo = min(lo, hi - 4000)
    except (OSError, ValueError, IndexError):
        pass
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(lo, hi)
        if port in _given_ports:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        _given_ports.add(port)
        return port
    raise RuntimeError("no free loopback port in %d-%d" % (lo, hi))


_postgres = {"server": None, "databases": 0}


def postgres():
    """This process's private PostgreSQL server, started on first use, stopped at exit."""
    if _postgres["server"] is None:
        d = tempfile.mkdtemp(prefix="carshare-e2e-pg-")
        os.chmod(d, 0o755)      # as root the server runs as `postgres`: it must get in
        pg = LocalPostgres(os.path.join(d, "pg"), free_port())
        pg.start()
        _postgres["server"], _postgres["dir"] = pg, d

        def stop():
            pg.stop()
            shutil.rmtree(d, ignore_errors=True)
        atexit.register(stop)
    return _postgres["server"]


def new_database(service):
    """A fresh database and role for one service of one System; its URL."""
    _postgres["databases"] += 1
    return postgres().service_database("%s_%d" % (service, _postgres["databases"]))


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
    def __init__(self, services=SERVICES, nats=None, env=None, service_env=None, keep=False,
                 db=None, pg_services=None):
        """services: which carshare services to run. nats: run a nats-server (default: when any
        service but payment-only/order-only needs events -- always True unless False is given).
        env: extra environment for every service; service_env: {name: {VAR: value}}.
        db: "postgres" or "sqlite" (default: $CARSHARE_DB, else sqlite): the backend of the
        services in pg_services (default PG_SERVICES; MIXED_PG_SERVICES is the seed's setup)."""
        self.dir = tempfile.mkdtemp(prefix="carshare-e2e-")
        self.services = list(services)
        self.db = db or DB
        self.pg_services = list(PG_SERVICES if pg_services is None else pg_services)
        if self.db == "postgres":
            postgres()      # its port taken before ours are chosen, so none can be the same
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
        self.tokens = {}                 # (subject, role) -> token
        self.db_urls = {}       # service -> its PostgreSQL URL
        self.psql_sessions = {}  # service -> a psql reading queries (count_rows)

    # ---- lifecycle ----
    def on_postgres(self, name):
        return self.db == "postgres" and name in self.pg_services

    def __enter__(self):
        try:
            self.make_keys()
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

    # ---- identity ----
    def data(self, *parts):
        return os.path.join(self.dir, "data", *parts)

    def make_keys(self):
        """account's token key and order's service key, before any process starts (as make run
        does): every verifier finds the public keys at start."""
        os.makedirs(self.data(), exist_ok=True)
        subprocess.run([os.path.join(BIN, "carshare-account"), "keygen", self.data("keys", "account.key"),
                        self.data("keys", "order.key")], check=True, stdout=subprocess.DEVNULL)

    def mint(self, subject, role, key="account", ttl=3600, iat=None):
        """A token signed by `carshare-account token` with a key of data/keys (or a path)."""
        path = key if os.path.isabs(key) else self.data("keys", key + ".key")
        argv = [os.path.join(BIN, "carshare-account"), "token", path, subject, role, str(ttl)]
        if iat is not None:
            argv.append(str(int(iat)))
        return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()

    def sign_up(self, customer, password=PASSWORD, name=None):
        """POST /accounts straight to account. Returns (status, body, headers)."""
        return self.call("POST", "account", "/accounts",
                         {"customerId": customer, "password": password, "name": name or customer},
                         as_=None)

    def sign_in(self, customer, password=PASSWORD):
        """POST /sessions straight to account. Returns (status, body, headers)."""
        return self.call("POST", "account", "/sessions", {"customerId": customer, "password": password},
                         as_=None)

    def admin_password(self):
        with open(self.data("secrets", "admin-password")) as f:
            return f.read().strip()

    def token(self, who=STAFF):
        """A valid token: for a customer id (signed up and in through account when it runs), for
        STAFF (admin), or for SERVICE (order's credential). Cached per System."""
        if who in self.tokens:
            return self.tokens[who]
        running = "account" in self.procs and self.procs["account"].running()
        if who == SERVICE:
            tok = self.mint("order", "service", key="order")
        elif not running:
            tok = self.mint("admin", "staff") if who == STAFF else self.mint(who, "customer")
        else:
            if who == STAFF:
                code, body, _ = self.sign_in("admin", self.admin_password())
            else:
                self.sign_up(who)     # 201, or 409 when it exists already
                code, body, _ = self.sign_in(who)
            check(code == 201, "sign-in of %s failed: %d %r" % (who, code, body))
            tok = body["token"]
        self.tokens[who] = tok
        return tok

    def auth(self, who=STAFF):
        """The Authorization header of `who`, for a request's headers."""
        return {"Authorization": "Bearer " + self.token(who)}

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
            # No balancer probes these processes (a test of the drain sets its own): a stop
            # closes the listener at once instead of serving 2 s more.
            "DRAIN_MS": "0",
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
        if name in self.db_urls:
            env[name.upper() + "_DATABASE_URL"] = self.db_urls[name]
        env.update(self.extra_env)
        env.update(self.service_env.get(name, {}))
        return env

    def count_rows(self, name, table):
        """Rows in a table of a service's database, read beside the service (SQLite read-only, or
        psql as the server's superuser): for watching a consumer without asking it over HTTP."""
        if name in self.db_urls:
            # One psql session per service, kept: ~2 ms a query, fast enough to land between two
            # of a consumer's transactions (a new psql per query takes tens of milliseconds).
            if name not in self.psql_sessions:
                pg = postgres()
                self.psql_sessions[name] = subprocess.Popen(
                    ["psql", "-X", "-q", "-At", "-h", pg.dir, "-p", str(pg.port), "-U", "postgres",
                     "-d", self.db_urls[name].rsplit("/", 1)[1]],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
            session = self.psql_sessions[name]
            session.stdin.write("SELECT count(*) FROM %s;\n" % table)
            session.stdin.flush()
            return int(session.stdout.readline())
        path = os.path.join(self.dir, "data", name + ".db")
        db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=10)
        try:
            return db.execute("SELECT COUNT(*) FROM %s" % table).fetchone()[0]
        finally:
            db.close()

    def psql(self, name, sql):
        """Runs SQL on a service's PostgreSQL database as the server's superuser (what a test
        does behind the service's back: inject a failure, read a table). Returns the rows as
        lists of text."""
        pg = postgres()
        out = subprocess.run(["psql", "-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                              "-h", pg.dir, "-p", str(pg.port), "-U", "postgres",
                              "-d", self.db_urls[name].rsplit("/", 1)[1], "-c", sql],
                             check=True, stdout=subprocess.PIPE, text=True, timeout=60).stdout
        return [line.split("\t") for line in out.splitlines() if line]

    def data_files(self):
        """Every file the system's services and servers wrote: its directory, and the PostgreSQL
        server's when a service of it runs there."""
        dirs = [self.dir] + ([_postgres["dir"]] if self.db_urls else [])
        return [f for d in dirs for f in glob.glob(os.path.join(d, "**"), recursive=True)
                if os.path.isfile(f)]

    def start(self, name, wait_ready=True):
        if not os.path.exists(self.data("keys", "account.pub")):
            self.make_keys()
        if self.on_postgres(name) and name not in self.db_urls:
            # Its database, once per System: a restart finds its data again.
            self.db_urls[name] = new_database(name)
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
        for session in self.psql_sessions.values():
            session.stdin.close()
            session.wait()
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

    def call(self, method, name, path, body=None, headers=None, timeout=10, raw=None, as_=AUTO):
        """One request. Returns (status, parsed JSON or text or None, headers dict lowercased).
        as_: who calls (module docstring); AUTO unless the headers carry an Authorization."""
        hdrs = dict(headers or {})
        if as_ is AUTO and not any(k.lower() == "authorization" for k in hdrs):
            as_ = caller_for(method, path, body, name)
        if as_ is not AUTO and as_ is not None:
            hdrs["Authorization"] = "Bearer " + self.token(as_)
        conn = http.client.HTTPConnection("127.0.0.1", self.ports[name], timeout=timeout)
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
        self.check_contract(method, path, resp.status, rh, parsed, name)
        return resp.status, parsed, rh

    def stubbed(self, path):
        """True when the gateway sends this path to a stub of the test's (UPSTREAM_PATHS)."""
        env = dict(self.extra_env)
        env.update(self.service_env.get("gateway", {}))
        for var, prefixes in UPSTREAM_PATHS.items():
            if var in env and var.split("_")[0].lower() not in self.services:
                if any(path == p or path.startswith(p + "/") or path.startswith(p + "?")
                       for p in prefixes):
                    return True
        return False

    def check_contract(self, method, path, status, headers, body, name="gateway"):
        """The schema hook (schema_check.py): raises when the answer is not what
        docs/openapi.yaml says. Tests that talk HTTP without call() may use it too."""
        if not CHECK_ANSWERS or (name == "gateway" and self.stubbed(path)):
            return
        problems = contract().check(method, path, status, headers, body)
        if problems:
            CONTRACT_PROBLEMS.extend(problems)
            raise AssertionError("answer does not match docs/openapi.yaml: " + "; ".join(problems))


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
    global CHECK_ANSWERS
    CHECK_ANSWERS = True
    tests = [(n, f) for n, f in namespace.items() if n.startswith("test_") and callable(f)]
    only = os.environ.get("E2E_ONLY")
    passed = failed = 0
    for name, fn in tests:
        if only and only not in name:
            continue
        t0 = time.monotonic()
        del CONTRACT_PROBLEMS[:]
        try:
            fn()
            if CONTRACT_PROBLEMS:
                raise AssertionError("answers that do not match docs/openapi.yaml: "
                                     + "; ".join(CONTRACT_PROBLEMS[:5]))
            passed += 1
            print("ok   %s (%.1fs)" % (name, time.monotonic() - t0), flush=True)
        except Exception:
            failed += 1
            print("FAIL %s (%.1fs)" % (name, time.monotonic() - t0), flush=True)
            traceback.print_exc()
    print("%d passed, %d failed" % (passed, failed), flush=True)
    sys.exit(1 if failed or not passed else 0)
