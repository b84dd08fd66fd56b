"""bench.py: measure the whole carshare system in one run, as `make bench` does.

    python3 tests/bench/bench.py [BIN_DIR]        (or CARSHARE_BIN=BIN_DIR)

The machine is a shared 2-core box, so absolute figures drift from run to run; what this
script reports are mostly ratios between figures taken within the same run, by the same
generator (wrk, driven by load.lua), with the same threads and connections:

  start_ms          launching nats-server and the five services on a fresh data directory,
                    until every /health/ready answers 200
  rentals_per_s     POST /orders through the gateway for BENCH_SECONDS (each one a rental
                    with a synchronous payment), with p50_ms, p99_ms, and errors = every
                    answer that is not 201 plus every socket error and timeout
  hello_per_s       the same requests against bench-hello, a bare libevent server: the
                    machine's ceiling; ratio = rentals_per_s / hello_per_s
  gateway_vs_nginx  GET /orders/1 through a gateway whose every upstream is bench-hello,
                    against Debian's nginx (1 worker, keep-alive upstream, HTTP/1.1, access
                    log on, as the gateway logs every request) proxying to the same
                    bench-hello: the proxies' own cost, which a slow upstream would hide.
                    Both get the same wrk load in BENCH_PROXY_ROUNDS (10) interleaved
                    rounds of 1 s each (the gateway first in one round, nginx in the next),
                    and in each round the CPU time that answering took is counted for each
                    side: the proxy (every thread of the gateway; nginx's worker, its master
                    does nothing), bench-hello and wrk, per answered request. The figure is
                    the median over the rounds of nginx's CPU per request / the gateway's.
                    On a machine these processes saturate, req/s is that inverse (what the
                    proxy costs, plus what its requests cost the upstream and its answers
                    wrk), so it is the ratio of rates without the neighbours: on this shared
                    2-core machine a round's rate is mostly what the others leave to the
                    four processes (during a soak, round ratios 0.57-1.70 by req/s against
                    0.74-1.02 by CPU per request, in the same rounds).
                    gateway_vs_nginx_rate (the figure until stop 12, then from 5 rounds of
                    2 s) and gateway_vs_nginx_own (the proxy's CPU alone, which leaves out
                    that the gateway's forwarded requests carry more headers for bench-hello
                    to parse) are the same rounds' medians of the gateway's req/s / nginx's
                    and of the proxies' own CPU, shown beside it. The same pair with the
                    real order service as upstream (its CPU in place of bench-hello's) is in
                    the table and the JSON (gateway_vs_nginx_order).
  lag_p99_ms        under a background rental load of about half rentals_per_s: from a
                    rental's 201 to GET /customerpages/search/findByOrderId showing Shipped
  max_rss_mb        the largest VmRSS (resident now, not the peak) of the six processes at
                    the end of the run; rss_mb gives each one's (name:MB). The table also
                    shows each one's VmHWM (peak), its anonymous and file-backed parts, and
                    from its /metrics the C heap in use (SQLite's share of it: page caches,
                    schemas, statements) and the free heap malloc still holds
  cpu_ms_per_rental CPU time (user + system) of the whole system per accepted rental, over
                    the rentals load and the settling after it (the events it left are part
                    of a rental's cost): the services, nats-server and, with
                    CARSHARE_DB=postgres, the PostgreSQL server (its postmaster and every
                    child: backends, WAL writer, checkpointer; children that exited meanwhile
                    through the postmaster's cutime/cstime). The table splits it by process.
  db                sqlite or postgres (CARSHARE_DB, `make bench DB=postgres`): where the
                    services that have a PostgreSQL store keep their data

Between measurements the script waits for the system to go idle (the event consumers may
still be draining the backlog a load left behind), so that no figure pays for the one before.
It prints a table, writes the figures as JSON (BENCH_OUT, default <BIN_DIR>/../bench.json)
and ends with exactly one `bench: ...` summary line. It never judges the figures: the exit
code is 0 whenever the system started, 1 when it could not (or a tool is missing).

Environment: BENCH_SECONDS (30), BENCH_HELLO_SECONDS (10, each secondary measure, per side),
BENCH_PROXY_ROUNDS (10, of BENCH_HELLO_SECONDS / rounds seconds each, at least 1),
BENCH_WARMUP_SECONDS (2), BENCH_THREADS (2), BENCH_CONNECTIONS (32), BENCH_MODELS (100),
BENCH_CARS_PER_MODEL (1000000), BENCH_LAG_SAMPLES (300), BENCH_LAG_SECONDS (30, cap on
sampling), BENCH_LOG_LEVEL (info: what the services log in
production), BENCH_OUT, CARSHARE_KEEP=1 keeps the temporary directory with every log.
"""
import http.client
import json
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))


def env_int(name, default):
    text = os.environ.get(name, "")
    if text == "":
        return default
    try:
        return int(text)
    except ValueError:
        sys.exit("bench: %s must be an integer, got %r" % (name, text))


BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                      os.environ.get("CARSHARE_BIN", os.path.join(ROOT, "build-bench", "bin")))
os.environ["CARSHARE_BIN"] = BIN          # harness reads it at import
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import harness  # noqa: E402

SECONDS = env_int("BENCH_SECONDS", 30)
SHORT_SECONDS = env_int("BENCH_HELLO_SECONDS", 10)
WARMUP_SECONDS = env_int("BENCH_WARMUP_SECONDS", 2)
THREADS = env_int("BENCH_THREADS", 2)
CONNECTIONS = env_int("BENCH_CONNECTIONS", 32)
MODELS = env_int("BENCH_MODELS", 100)
CARS_PER_MODEL = env_int("BENCH_CARS_PER_MODEL", 1000000)
PROXY_ROUNDS = max(1, env_int("BENCH_PROXY_ROUNDS", 10))
LAG_SAMPLES = env_int("BENCH_LAG_SAMPLES", 300)
LAG_SECONDS = env_int("BENCH_LAG_SECONDS", 30)
LOG_LEVEL = os.environ.get("BENCH_LOG_LEVEL", "info")
OUT = os.environ.get("BENCH_OUT") or os.path.join(os.path.dirname(BIN), "bench.json")
LOAD_LUA = os.path.join(HERE, "load.lua")
WRK = shutil.which("wrk")
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
CARD = "4111111111111111"


class StartFailure(Exception):
    """The system (or a process the bench needs) could not start: the only failure."""


def note(text):
    print("bench: " + text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the fleet

def write_fleet(path):
    """The bench fleet: MODELS models of CARS_PER_MODEL cars each, in the format order's
    FLEET_FILE takes (services/order/fleet.c), so that a run of any length never runs out
    of cars."""
    cars = [{"id": str(1001 + i), "name": "Bench model %d" % (i + 1), "location": "Seoul",
             "dailyPrice": 50000 + 1000 * (i % 10), "total": CARS_PER_MODEL}
            for i in range(MODELS)]
    with open(path, "w") as f:
        json.dump({"cars": cars}, f)


# ---------------------------------------------------------------- processes

def start_system(workdir, ready_ms=None):
    """Starts nats-server and the five services with a fresh data directory, all launched at
    once (as `make run` does); returns (system, start_ms) once every /health/ready is 200.
    ready_ms, a dict, receives when each process was ready (ms from the launch)."""
    ready_ms = {} if ready_ms is None else ready_ms
    fleet = os.path.join(workdir, "fleet.json")
    write_fleet(fleet)
    system = harness.System(harness.SERVICES, env={"LOG_LEVEL": LOG_LEVEL},
                            service_env={"order": {"FLEET_FILE": fleet}})
    t0 = time.monotonic()
    try:
        system.start_nats()
        ready_ms["nats"] = (time.monotonic() - t0) * 1000.0   # listening
        for name in harness.SERVICES:
            system.start(name, wait_ready=False)
        waiting = set(harness.SERVICES)
        deadline = t0 + 30
        while waiting:
            for name in sorted(waiting):
                if not system.procs[name].running():
                    raise StartFailure("%s exited with %s; log tail:\n%s" % (
                        name, system.procs[name].popen.returncode, system.log(name)[-3000:]))
                try:
                    if system.call("GET", name, "/health/ready", timeout=2)[0] == 200:
                        waiting.discard(name)
                        ready_ms[name] = (time.monotonic() - t0) * 1000.0
                except (OSError, http.client.HTTPException):
                    pass
            if waiting and time.monotonic() > deadline:
                raise StartFailure("not ready after 30 s: %s; log tails:\n%s" % (
                    ", ".join(sorted(waiting)),
                    "\n".join("-- %s --\n%s" % (n, system.log(n)[-1500:]) for n in sorted(waiting))))
            if waiting:
                time.sleep(0.005)
        prepare_auth(system)
    except BaseException:
        system.failed = True
        system.close()
        raise
    return system, (time.monotonic() - t0) * 1000.0


# Tokens (the contract's identity): a staff token for reads and /metrics, signed in through
# account like any operator; the rental load's customers bench-0 .. bench-96 get theirs signed
# with account's key by `carshare-account token` (97 sign-ups would spend ~10 s of Argon2id,
# and the bench measures rentals, not sign-ups). The wrk script reads them from a file.
AUTH = {"staff": None, "customer_file": None, "lag": None, "customers": []}
BENCH_CUSTOMERS = 97


def prepare_auth(system):
    AUTH["staff"] = system.token(harness.STAFF)
    path = os.path.join(system.dir, "bench-tokens.txt")
    AUTH["customers"] = [system.mint("bench-%d" % i, "customer") for i in range(BENCH_CUSTOMERS)]
    with open(path, "w") as f:
        f.write("".join(t + "\n" for t in AUTH["customers"]))
    AUTH["customer_file"] = path
    AUTH["lag"] = system.mint("lag", "customer")


def bearer(token):
    return {"Authorization": "Bearer " + token} if token else {}


def start_proc(name, argv, env, workdir, port):
    """A process of the bench's own (bench-hello, the second gateway), ready once its port
    answers HTTP."""
    proc = harness.Proc(name, argv, env, os.path.join(workdir, name + ".log"))
    proc.start()
    try:
        harness.wait_for(lambda: proc.running() and harness.port_open(port), 10, name + " to listen")
    except AssertionError:
        proc.stop()
        raise StartFailure("%s did not start; log:\n%s" % (name, read_tail(proc.log_path)))
    return proc


def read_tail(path, size=2000):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-size:]
    except OSError:
        return ""


def start_hello(workdir):
    port = harness.free_port()
    env = dict(os.environ, HOST="127.0.0.1", PORT=str(port))
    return start_proc("bench-hello", [os.path.join(BIN, "bench-hello")], env, workdir, port), port


def start_proxy_gateway(system, workdir, upstream_port):
    """A second gateway, every route of which goes to bench-hello."""
    port = harness.free_port()
    env = system.env_for("gateway")
    env["PORT"] = str(port)
    for var in harness.URL_VARS.values():
        env[var] = "http://127.0.0.1:%d" % upstream_port
    proc = start_proc("gateway-to-hello", [os.path.join(BIN, "carshare-gateway")], env, workdir, port)
    try:
        harness.wait_for(lambda: http_get(port, "/health/ready")[0] == 200, 10, "gateway-to-hello ready")
    except AssertionError:
        proc.stop()
        raise StartFailure("the second gateway is not ready; log:\n" + read_tail(proc.log_path))
    return proc, port


NGINX_CONF = """
worker_processes 1;
daemon off;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 4096; }
http {
    access_log %(dir)s/access.log;
    client_body_temp_path %(dir)s/body;
    proxy_temp_path %(dir)s/proxy;
    fastcgi_temp_path %(dir)s/fastcgi;
    uwsgi_temp_path %(dir)s/uwsgi;
    scgi_temp_path %(dir)s/scgi;
    upstream bench_upstream {
        server 127.0.0.1:%(upstream)d;
        keepalive 32;
    }
    server {
        listen 127.0.0.1:%(port)d;
        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
        }
    }
}
"""


def start_nginx(workdir, name, upstream_port):
    """Debian's nginx with its own prefix and config in the temp directory, one worker, on a
    free port, proxying everything to upstream_port. It logs every request, as the gateway
    does. Returns (proc, port), or (None, None) when nginx is not installed."""
    if NGINX is None:
        return None, None
    ndir = os.path.join(workdir, name)
    os.makedirs(ndir, exist_ok=True)
    port = harness.free_port()
    conf = os.path.join(ndir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF % {"dir": ndir, "port": port, "upstream": upstream_port})
    proc = start_proc(name, [NGINX, "-p", ndir, "-c", conf, "-e", os.path.join(ndir, "error.log")],
                      dict(os.environ), workdir, port)
    return proc, port


def stop_nginx(proc):
    """SIGQUIT is nginx's graceful stop; its master stops its worker."""
    if proc is None or not proc.running():
        return
    os.kill(proc.pid, signal.SIGQUIT)
    try:
        proc.popen.wait(10)
    except subprocess.TimeoutExpired:
        proc.stop()


# ---------------------------------------------------------------- HTTP

def http_get(port, path, timeout=2):
    """A GET as staff (once prepare_auth ran): reads of every customer's data and /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=bearer(AUTH["staff"]))
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException) as e:
        return 0, str(e).encode()
    finally:
        conn.close()


class Client:
    """One persistent HTTP/1.1 connection, reopened when the server closes it."""

    def __init__(self, port, token=None):
        self.port = port
        self.conn = None
        self.token = token

    def request(self, method, path, body=None):
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                headers.update(bearer(self.token))
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("connection", "").lower() == "close":
                    self.close()
                return resp.status, data
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ---------------------------------------------------------------- wrk

def wrk_argv(port, path, seconds):
    return [WRK, "-t%d" % THREADS, "-c%d" % CONNECTIONS, "-d%ds" % seconds, "--timeout", "5s",
            "-s", LOAD_LUA, "http://127.0.0.1:%d%s" % (port, path)]


def wrk_env(mode, expect, delay_ms=None):
    env = dict(os.environ, BENCH_MODE=mode, BENCH_EXPECT=str(expect), BENCH_MODELS=str(MODELS))
    if AUTH["customer_file"]:
        env["BENCH_TOKEN_FILE"] = AUTH["customer_file"]
    if AUTH["staff"]:
        env["BENCH_TOKEN"] = AUTH["staff"]
    env.pop("BENCH_DELAY_MS", None)
    if delay_ms:
        env["BENCH_DELAY_MS"] = str(delay_ms)
    return env


def parse_wrk(output):
    for line in output.splitlines():
        if line.startswith("BENCH "):
            r = json.loads(line[len("BENCH "):])
            # Only expected answers count: a fast 503 is not a rental.
            good = r["requests"] - r["unexpected"]
            r["per_s"] = good / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0
            r["errors"] = (r["unexpected"] + r["connect_errors"] + r["read_errors"] +
                           r["write_errors"] + r["timeouts"])
            return r
    return None


def children_cpu_ns():
    """CPU time (user + system) of this script's children that exited and were waited for."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (r.ru_utime + r.ru_stime) * 1e9


def run_wrk(label, port, path, seconds, mode, expect, cpu_pids=None):
    """One measured load; returns wrk's figures, or None (said why) when wrk failed. With
    cpu_pids {name: pid}, also the CPU microseconds each of those processes and wrk itself
    used meanwhile (cpu_us: {name: us, "wrk": us})."""
    note("%s: %d s, %d threads, %d connections, %s :%d%s" % (
        label, seconds, THREADS, CONNECTIONS, mode, port, path))
    pids = cpu_pids or {}
    before = {name: cpu_ns(pid) for name, pid in pids.items()}
    wrk_before = children_cpu_ns()
    done = subprocess.run(wrk_argv(port, path, seconds), env=wrk_env(mode, expect),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=seconds + 60)
    wrk_used = children_cpu_ns() - wrk_before
    after = {name: cpu_ns(pid) for name, pid in pids.items()}
    result = parse_wrk(done.stdout)
    if result is not None and pids and all(v is not None for v in
                                           list(before.values()) + list(after.values())):
        result["cpu_us"] = {name: (after[name] - before[name]) / 1e3 for name in pids}
        result["cpu_us"]["wrk"] = wrk_used / 1e3
    if result is None:
        note("%s: wrk gave no result (exit %d):\n%s" % (label, done.returncode, done.stdout[-2000:]))
        return None
    if result["errors"]:
        note("%s: %d errors: by status %s, socket %d/%d/%d, timeouts %d; first: %s" % (
            label, result["errors"], result["unexpected_by_status"], result["connect_errors"],
            result["read_errors"], result["write_errors"], result["timeouts"],
            result["first_unexpected"]))
    return result


# ---------------------------------------------------------------- idleness, memory

def stat_fields(pid):
    """/proc/PID/stat after the command name (fields[0] is the state), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_ticks(pids, waited_children=False):
    """utime + stime of the pids; with waited_children, also the CPU of their children that
    exited and were reaped (cutime + cstime)."""
    total = 0
    for pid in pids:
        fields = stat_fields(pid)
        try:
            total += int(fields[11]) + int(fields[12])   # utime, stime
            if waited_children:
                total += int(fields[13]) + int(fields[14])   # cutime, cstime
        except (TypeError, IndexError, ValueError):
            pass
    return total


def cpu_ns(pid):
    """CPU time so far of every thread of pid, in nanoseconds (the scheduler's own account,
    /proc/PID/task/*/schedstat; utime + stime in clock ticks where the kernel has none), or
    None when the process is gone."""
    total = 0
    try:
        for task in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/schedstat" % (pid, task)) as f:
                total += int(f.read().split()[0])
        return total
    except (OSError, ValueError, IndexError):
        ticks = cpu_ticks([pid])
        return ticks * 1e9 / os.sysconf("SC_CLK_TCK") if stat_fields(pid) else None


def nginx_worker(proc):
    """The pid of nginx's one worker (a child of its master), or None."""
    deadline = time.monotonic() + 5
    while proc is not None and proc.running() and time.monotonic() < deadline:
        found = children_of(proc.pid)
        if found:
            return found[0]
        time.sleep(0.05)
    return None


def children_of(parent):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields and len(fields) > 1 and fields[1] == str(parent):
                found.append(int(entry))
    return found


def postmaster_pid():
    """The PostgreSQL server the system runs on (the harness's private one), or None."""
    pg = harness._postgres.get("server") if harness.DB == "postgres" else None
    return pg.pid if pg is not None and pg.running() else None


def system_cpu_ticks(system):
    """{process: ticks so far} for the services, nats-server and the PostgreSQL server (its
    postmaster with its children, live and reaped)."""
    ticks = {name: cpu_ticks([p.pid]) for name, p in system.procs.items() if p.running()}
    pm = postmaster_pid()
    if pm:
        ticks["postgres"] = cpu_ticks([pm], waited_children=True) + cpu_ticks(children_of(pm))
    return ticks


def cpu_per_rental(before, after, rentals):
    """CPU ms per rental, in total and by process, between two system_cpu_ticks."""
    if not rentals:
        return None
    tick_ms = 1000.0 / os.sysconf("SC_CLK_TCK")
    by = {name: (after[name] - before.get(name, 0)) * tick_ms / rentals for name in after}
    return {"ms_per_rental": sum(by.values()), "by_process_ms": by, "rentals": rentals,
            "postgres_ms_per_rental": by.get("postgres")}


def wait_idle(system, timeout=60.0):
    """Waits until nats-server and the services use (almost) no CPU: the event backlog a
    load left behind has been drained. Returns the milliseconds it took."""
    pids = [p.pid for p in system.procs.values() if p.running()]
    pm = postmaster_pid()
    if pm:
        pids += [pm] + children_of(pm)
    t0 = time.monotonic()
    quiet = 0
    last = cpu_ticks(pids)
    while time.monotonic() - t0 < timeout:
        time.sleep(0.25)
        now = cpu_ticks(pids)
        quiet = quiet + 1 if now - last <= 2 else 0   # <= 2 ticks (~20 ms) per 250 ms
        last = now
        if quiet >= 2:
            break
    else:
        note("the system was still busy %.0f s after the load" % timeout)
    return (time.monotonic() - t0) * 1000.0


def memory_kb(pid):
    found = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    found[key] = int(value.split()[0])
        # Pss: the shared libraries' pages divided among the processes mapping them (about
        # 11 MB of each service's VmRSS are shared libraries, 3.3 MB of them libpq's own
        # dependencies: gnutls, krb5, ldap, p11-kit), so the sum over processes is real memory.
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == "Pss":
                    found["Pss"] = int(value.split()[0])
    except OSError:
        pass
    return found


# ---------------------------------------------------------------- lag

def shipped(body):
    """Whether a findByOrderId answer (a collection or a single item) shows Shipped."""
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    items = doc.get("_embedded", {}).get("customerpages", []) if "_embedded" in doc else [doc]
    return any(isinstance(i, dict) and i.get("status") == "Shipped" for i in items)


def sample_lag(gateway_port, deadline):
    """Rents one car after another and times each from its 201 to the customer page showing
    Shipped, polling every ~5 ms on a persistent connection. Returns (lags_ms, lost, refused)."""
    renter, watcher = Client(gateway_port, AUTH["lag"]), Client(gateway_port, AUTH["lag"])
    lags, lost, refused = [], 0, 0
    n = 0
    while len(lags) + lost < LAG_SAMPLES and time.monotonic() < deadline:
        n += 1
        body = json.dumps({"productId": str(1001 + n % MODELS), "qty": 1, "cardNumber": CARD})
        status, data = renter.request("POST", "/orders", body)
        accepted = time.monotonic()
        if status != 201:
            refused += 1
            if refused > 50 and not lags:
                note("lag: rentals refused (%d: %s)" % (status, data[:200]))
                break
            continue
        order_id = json.loads(data)["id"]
        path = "/customerpages/search/findByOrderId?orderId=%s" % order_id
        give_up = accepted + 10.0
        while True:
            status, data = watcher.request("GET", path)
            if status == 200 and shipped(data):
                lags.append((time.monotonic() - accepted) * 1000.0)
                break
            if time.monotonic() > give_up:
                lost += 1
                break
            time.sleep(0.005)
    renter.close()
    watcher.close()
    return lags, lost, refused


def percentile(values, p):
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(p / 100.0 * len(ordered)) - 1))  # nearest rank
    return ordered[rank]


def measure_lag(gateway_port, max_rate):
    """Samples the lag under a background wrk rental load throttled to about half max_rate:
    each connection waits, before each request, as long as a request took at full load."""
    delay_ms = max(1, int(round(1000.0 * CONNECTIONS / max_rate))) if max_rate else 10
    note("lag: background load with %d ms between a connection's rentals, up to %d samples" % (
        delay_ms, LAG_SAMPLES))
    background = subprocess.Popen(wrk_argv(gateway_port, "/orders", LAG_SECONDS + 30),
                                  env=wrk_env("rent", 201, delay_ms), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        lags, lost, refused = sample_lag(gateway_port, t0 + LAG_SECONDS)
    finally:
        if background.poll() is None:
            background.send_signal(signal.SIGINT)   # wrk stops and reports
        try:
            out, _ = background.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            background.kill()
            out, _ = background.communicate()
    load = parse_wrk(out)
    return {
        "samples": len(lags), "lost": lost, "refused": refused, "delay_ms": delay_ms,
        "p50_ms": percentile(lags, 50), "p90_ms": percentile(lags, 90),
        "p99_ms": percentile(lags, 99), "max_ms": max(lags) if lags else None,
        "background_per_s": load["per_s"] if load else None,
        "background_errors": load["errors"] if load else None,
    }


# ---------------------------------------------------------------- report

def fmt(value, digits=1):
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return "%.*f" % (digits, value)


def ratio(a, b):
    return a / b if a is not None and b else None


def per_s(result):
    return result["per_s"] if result else None


def ms(result, key):
    return result[key] / 1000.0 if result else None


def cpu_cells(result):
    cpu = result.get("cpu_us_per_req") if result else None
    return " ".join(fmt(cpu[n], 2) for n in ALL) if cpu else ""


def print_table(res):
    rows = [("measure", "req/s", "p50 ms", "p99 ms", "errors", "CPU us/req: proxy upstream wrk",
             "")]
    for key, label, note_text in (
            ("rentals", "POST /orders via gateway", "each a rental with a payment"),
            ("hello", "POST /orders to bench-hello", "the machine's ceiling"),
            ("gateway_hello", "gateway -> bench-hello", "GET /orders/1"),
            ("nginx_hello", "nginx -> bench-hello", "GET /orders/1"),
            ("gateway_order", "gateway -> order", "GET /orders/{id}"),
            ("nginx_order", "nginx -> order", "GET /orders/{id}")):
        r = res["wrk"].get(key)
        rows.append((label, fmt(per_s(r), 0), fmt(ms(r, "p50_us"), 2), fmt(ms(r, "p99_us"), 2),
                     fmt(r["errors"]) if r else "n/a", cpu_cells(r), note_text))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) if i in (0, 6) else cell.rjust(widths[i])
                        for i, cell in enumerate(row)).rstrip())
    lag = res["lag"] or {}
    print()
    print("ratio rentals/hello       %s" % fmt(res["ratio"], 3))
    rounds = res.get("proxy_round_ratios", {})
    for suffix, key in (("hello", "gateway_vs_nginx"), ("order", "gateway_vs_nginx_order")):
        tail = "" if suffix == "hello" else "_" + suffix
        by = rounds.get(suffix, {})
        for kind, value, what in (
                ("cpu", res[key], "CPU per request of proxy + upstream + wrk, nginx's / the "
                                  "gateway's"),
                ("rate", res.get("gateway_vs_nginx_rate" + tail), "req/s, the gateway's / "
                                                                 "nginx's"),
                ("own", res.get("gateway_vs_nginx_own" + tail), "CPU per request of the proxy "
                                                               "alone, nginx's / the gateway's")):
            label = "gateway/nginx (%s)" % suffix if kind == "cpu" else "  by " + kind
            print("%-25s %s  %s; median of rounds: %s" % (
                label, fmt(value, 3), what,
                " ".join(fmt(r, 2) for r in by.get(kind, [])) or "n/a"))
    print("start                     %s ms (ready at: %s)" % (fmt(res["start_ms"], 0), ", ".join(
        "%s %s" % (name, fmt(at, 0)) for name, at in sorted(res["ready_ms"].items(), key=lambda x: x[1]))))
    print("settle after rentals      %s ms (event backlog drained, system idle)" %
          fmt(res["settle_ms"], 0))
    cpu = res.get("cpu") or {}
    print("CPU per rental            %s ms on %s (%s)" % (
        fmt(cpu.get("ms_per_rental"), 3), res["db"], ", ".join(
            "%s %s" % (name, fmt(v, 3)) for name, v in sorted(
                (cpu.get("by_process_ms") or {}).items(), key=lambda x: -x[1]))))
    print("lag 201 -> Shipped        p50 %s  p90 %s  p99 %s  max %s ms (%s samples, %s lost, "
          "background %s rentals/s)" % (
              fmt(lag.get("p50_ms")), fmt(lag.get("p90_ms")), fmt(lag.get("p99_ms")),
              fmt(lag.get("max_ms")), fmt(lag.get("samples")), fmt(lag.get("lost")),
              fmt(lag.get("background_per_s"), 0)))
    print()
    print("memory at the end (MB)    VmRSS    Pss   VmHWM (peak)   of VmRSS: anon  file   "
          "of anon: heap in use (sqlite)  heap free held")
    for name in harness.SERVICES:
        m = res["memory_kb"].get(name, {})
        mb = {k: (m[k] / 1024.0 if k in m else None)
              for k in ("VmRSS", "Pss", "VmHWM", "RssAnon", "RssFile", "heap", "sqlite", "heap_free")}
        print("  %-22s %6s %6s   %6s              %6s  %6s   %14s (%6s)  %14s" % (
            name, fmt(mb["VmRSS"]), fmt(mb["Pss"]), fmt(mb["VmHWM"]), fmt(mb["RssAnon"]),
            fmt(mb["RssFile"]), fmt(mb["heap"]), fmt(mb["sqlite"]), fmt(mb["heap_free"])))
    print()


def summary_line(res):
    rentals = res["wrk"].get("rentals")
    errors = rentals["errors"] if rentals else None
    return ("bench: rentals_per_s=%s hello_per_s=%s ratio=%s p50_ms=%s p99_ms=%s lag_p99_ms=%s "
            "gateway_vs_nginx=%s gateway_vs_nginx_rate=%s max_rss_mb=%s start_ms=%s errors=%s "
            "cpu_ms_per_rental=%s "
            "db=%s rss_mb=%s" % (
                fmt(per_s(rentals), 0), fmt(per_s(res["wrk"].get("hello")), 0),
                fmt(res["ratio"], 3), fmt(ms(rentals, "p50_us"), 2), fmt(ms(rentals, "p99_us"), 2),
                fmt((res["lag"] or {}).get("p99_ms"), 1), fmt(res["gateway_vs_nginx"], 3),
                fmt(res.get("gateway_vs_nginx_rate"), 3),
                fmt(res["max_rss_mb"], 1), fmt(res["start_ms"], 0), fmt(errors),
                fmt((res.get("cpu") or {}).get("ms_per_rental"), 3), res["db"],
                ",".join("%s:%s" % (n, fmt(m["VmRSS"] / 1024.0, 1))
                         for n, m in res["memory_kb"].items() if "VmRSS" in m) or "n/a"))


# ---------------------------------------------------------------- the run

def first_order_id(gateway_port):
    """The id of an accepted order, for the GET the proxies are compared on."""
    status, data = http_get(gateway_port, "/orders?page=0&size=1")
    if status == 200:
        try:
            items = json.loads(data).get("_embedded", {}).get("orders", [])
            if items:
                return items[0]["id"]
        except (ValueError, KeyError, AttributeError):
            pass
    return None


def step(label, fn, *args):
    """Runs one measurement; a failure is reported and the run goes on without that figure
    (only a system that cannot start fails the bench)."""
    try:
        return fn(*args)
    except StartFailure:
        raise
    except Exception as e:   # noqa: BLE001 -- any failure of one measure, said and skipped
        note("%s failed: %s: %s" % (label, type(e).__name__, e))
        return None


def measure_rentals(system, res):
    gw = system.ports["gateway"]
    if WARMUP_SECONDS > 0:
        run_wrk("warm-up", gw, "/orders", WARMUP_SECONDS, "rent", 201)
        wait_idle(system)
    before = system_cpu_ticks(system)
    res["wrk"]["rentals"] = r = run_wrk("rentals", gw, "/orders", SECONDS, "rent", 201)
    res["settle_ms"] = wait_idle(system)
    if r:
        res["cpu"] = cpu_per_rental(before, system_cpu_ticks(system),
                                    r["requests"] - r["unexpected"])


def cpu_per_req(result, names):
    """CPU microseconds per expected answer of the named processes of result["cpu_us"]
    together, or None."""
    cpu = result.get("cpu_us") if result else None
    good = result["requests"] - result["unexpected"] if result else 0
    if not cpu or good <= 0:
        return None
    return sum(cpu[n] for n in names) / good


ALL = ("proxy", "upstream", "wrk")


def compare_proxies(res, suffix, gateway, nginx, upstream_pid, path):
    """The gateway against nginx on the same GET, in PROXY_ROUNDS short interleaved rounds
    (gateway first in one round, nginx first in the next, so a trend favours neither);
    gateway and nginx are (port, pid of the proxy process whose CPU counts). In each round
    both get the same wrk load, and each side's CPU per answered request is taken for the
    proxy, the upstream and wrk together; the round's ratio is nginx's over the gateway's,
    and the figure is the median of the rounds' ratios: a neighbour's burst on this shared
    machine spoils one round, not the figure. Beside it (the table, the JSON): the same
    rounds' median ratio of req/s (gateway_vs_nginx_rate[_order]) and of the proxy's own
    CPU per request (gateway_vs_nginx_own[_order]). Without nginx, the gateway alone is
    measured."""
    seconds = max(1, SHORT_SECONDS // PROXY_ROUNDS)
    gw_key, nginx_key = "gateway_" + suffix, "nginx_" + suffix
    runs = {gw_key: [], nginx_key: []}
    ratios = {"cpu": [], "rate": [], "own": []}
    for i in range(PROXY_ROUNDS):
        sides = [(gw_key, gateway)] + ([(nginx_key, nginx)] if nginx[0] else [])
        got = {}
        for key, (port, pid) in (sides if i % 2 == 0 else sides[::-1]):
            pids = {"proxy": pid, "upstream": upstream_pid} if pid and upstream_pid else None
            got[key] = run_wrk(key.replace("_", " -> "), port, path, seconds, "get", 200,
                               cpu_pids=pids)
            runs[key].append(got[key])
        gw, ng = got.get(gw_key), got.get(nginx_key)
        for kind, r in (("cpu", ratio(cpu_per_req(ng, ALL), cpu_per_req(gw, ALL))),
                        ("rate", ratio(per_s(gw), per_s(ng))),
                        ("own", ratio(cpu_per_req(ng, ("proxy",)), cpu_per_req(gw, ("proxy",))))):
            if r is not None:
                ratios[kind].append(r)
    for key, results in runs.items():
        res["wrk"][key] = merge_results(results)
    tail = "" if suffix == "hello" else "_" + suffix
    for kind in ("rate", "own"):
        res["gateway_vs_nginx_%s%s" % (kind, tail)] = (
            statistics.median(ratios[kind]) if ratios[kind] else None)
    res.setdefault("proxy_round_ratios", {})[suffix] = ratios
    return statistics.median(ratios["cpu"]) if ratios["cpu"] else None


def measure_hello_and_proxies(system, workdir, res):
    """bench-hello alone, then as the only upstream of a second gateway and of nginx."""
    hello, hello_port = start_hello(workdir)
    proxy_gw = nginx = None
    try:
        res["wrk"]["hello"] = run_wrk("hello", hello_port, "/orders", SHORT_SECONDS, "rent", 200)
        res["ratio"] = ratio(per_s(res["wrk"].get("rentals")), per_s(res["wrk"]["hello"]))
        proxy_gw, proxy_port = start_proxy_gateway(system, workdir, hello_port)
        nginx, nginx_port = start_nginx(workdir, "nginx-to-hello", hello_port)
        if nginx is None:
            note("nginx is not installed (apt-get install nginx-light): gateway_vs_nginx is n/a")
        res["gateway_vs_nginx"] = compare_proxies(res, "hello", (proxy_port, proxy_gw.pid),
                                                  (nginx_port, nginx_worker(nginx)), hello.pid,
                                                  "/orders/1")
    finally:
        stop_nginx(nginx)
        for proc in (proxy_gw, hello):
            if proc is not None:
                proc.stop()


def measure_order_proxies(system, workdir, res):
    """The same comparison with the real order service as the upstream, on an order that
    exists (GET /orders/{id}: one indexed row, a small answer)."""
    order_id = first_order_id(system.ports["gateway"])
    if order_id is None:
        note("no order to GET: no gateway -> order comparison")
        return
    nginx, nginx_port = start_nginx(workdir, "nginx-to-order", system.ports["order"])
    try:
        res["gateway_vs_nginx_order"] = compare_proxies(
            res, "order", (system.ports["gateway"], system.procs["gateway"].pid),
            (nginx_port, nginx_worker(nginx)), system.procs["order"].pid,
            "/orders/%s" % order_id)
    finally:
        stop_nginx(nginx)
    wait_idle(system)


def merge_results(results):
    """The rounds of one measure as one: sums, the rate over the summed time, and the worst
    of the rounds' percentiles (wrk's histograms are not available to merge exactly)."""
    results = [r for r in results if r]
    if not results:
        return None
    merged = dict(results[0])
    for key in ("requests", "duration_us", "bytes", "connect_errors", "read_errors",
                "write_errors", "timeouts", "unexpected", "errors"):
        merged[key] = sum(r[key] for r in results)
    for key in ("max_us", "p50_us", "p90_us", "p99_us", "p999_us"):
        merged[key] = max(r[key] for r in results)
    good = merged["requests"] - merged["unexpected"]
    merged["per_s"] = good / (merged["duration_us"] / 1e6) if merged["duration_us"] else 0.0
    merged["rounds_per_s"] = [r["per_s"] for r in results]
    cpu = [r for r in results if r.get("cpu_us")]
    merged.pop("cpu_us", None)
    if cpu:   # per answered request over all rounds: the proxy, the upstream, wrk
        good = sum(r["requests"] - r["unexpected"] for r in cpu)
        merged["cpu_us_per_req"] = {n: sum(r["cpu_us"][n] for r in cpu) / good
                                    for n in ALL} if good else None
    return merged


def metrics_kb(port):
    """What a service's /metrics says its memory is made of (lib/service.c), in kB."""
    status, data = http_get(port, "/metrics")
    found = {}
    if status != 200:
        return found
    names = {"carshare_sqlite_memory_bytes": "sqlite", 'carshare_heap_bytes{state="in_use"}': "heap",
             'carshare_heap_bytes{state="free"}': "heap_free"}
    for line in data.decode(errors="replace").splitlines():
        key, _, value = line.rpartition(" ")
        if key in names:
            try:
                found[names[key]] = int(float(value) / 1024)
            except ValueError:
                pass
    return found


def measure_memory(system, res):
    for name in harness.SERVICES:
        res["memory_kb"][name] = memory_kb(system.procs[name].pid)
        res["memory_kb"][name].update(metrics_kb(system.ports[name]))
    rss = {n: m["VmRSS"] for n, m in res["memory_kb"].items() if "VmRSS" in m}
    res["max_rss_mb"] = max(rss.values()) / 1024.0 if rss else None
    res["max_rss_of"] = max(rss, key=rss.get) if rss else None


def measure(system, workdir, res):
    step("rentals", measure_rentals, system, res)
    step("hello and proxies", measure_hello_and_proxies, system, workdir, res)
    step("proxies to order", measure_order_proxies, system, workdir, res)
    gw = system.ports["gateway"]
    res["lag"] = step("lag", measure_lag, gw, per_s(res["wrk"].get("rentals")))
    step("settle after lag", wait_idle, system)
    step("memory", measure_memory, system, res)


def main():
    missing = [what for what, ok in (
        ("wrk (apt-get install wrk)", WRK),
        ("%s/carshare-*" % BIN, all(os.access(os.path.join(BIN, "carshare-" + s), os.X_OK)
                                     for s in harness.SERVICES)),
        ("%s/bench-hello" % BIN, os.access(os.path.join(BIN, "bench-hello"), os.X_OK))) if not ok]
    if missing:
        note("missing: " + ", ".join(missing))
        return 1
    res = {"config": {"seconds": SECONDS, "short_seconds": SHORT_SECONDS, "threads": THREADS,
                      "connections": CONNECTIONS, "models": MODELS, "cars_per_model": CARS_PER_MODEL,
                      "log_level": LOG_LEVEL, "bin": BIN},
           "wrk": {}, "lag": None, "memory_kb": {}, "rss_kind": "VmRSS at the end of the run",
           "ratio": None, "gateway_vs_nginx": None, "gateway_vs_nginx_order": None,
           "gateway_vs_nginx_rate": None, "gateway_vs_nginx_rate_order": None,
           "gateway_vs_nginx_own": None, "gateway_vs_nginx_own_order": None,
           "max_rss_mb": None, "max_rss_of": None, "start_ms": None, "ready_ms": {},
           "settle_ms": None, "cpu": None, "db": "postgres" if harness.DB == "postgres" else "sqlite"}
    workdir = tempfile.mkdtemp(prefix="carshare-bench-")
    try:
        system, res["start_ms"] = start_system(workdir, res["ready_ms"])
    except (StartFailure, AssertionError) as e:
        note("the system could not start: %s" % e)
        shutil.rmtree(workdir, ignore_errors=True)
        return 1
    note("system ready in %.0f ms (logs in %s)" % (res["start_ms"], system.dir))
    try:
        measure(system, workdir, res)
    except StartFailure as e:
        note("could not start a process the bench needs: %s" % e)
        system.failed = True
        return 1
    finally:
        codes = system.close()
        bad = {name: code for name, code in codes.items()
               if name in harness.SERVICES and code not in (0, None)}
        if bad:   # the contract: SIGTERM drains and exits 0 (nats-server is not ours)
            note("services that did not exit 0 on SIGTERM: %s" % bad)
        if os.environ.get("CARSHARE_KEEP") == "1":
            note("bench files kept in %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(res)
    os.makedirs(os.path.dirname(os.path.abspath(OUT)), exist_ok=True)
    res["summary"] = summary_line(res)
    with open(OUT, "w") as f:
        json.dump(res, f, indent=2)
    note("figures written to %s" % OUT)
    print(res["summary"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
