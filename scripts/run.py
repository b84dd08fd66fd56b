#!/usr/bin/env python3
"""run.py: brings the whole of carshare up on this machine, as `make run` does.

Starts nats-server (JetStream, file storage under the data directory) and the five services,
each with its own SQLite database in DATA_DIR, waits until every /health/ready answers, prints
where to point a browser, and then supervises: a service that exits unexpectedly is restarted
(with a growing pause if it keeps crashing). Ctrl-C or SIGTERM stops everything cleanly: the
services get SIGTERM (they finish what is in flight and exit 0), nats-server last.

Configuration is the same environment the services read (see the README); the defaults are the
contract's ports on 127.0.0.1 and ./data.

The bus is authenticated (scripts/natsauth.py): at each start run.py writes nats-server's
configuration, with a new random password for every service's user, to <data>/secrets/nats.conf
(0600) and hands each service its own credentials in NATS_USER / NATS_PASSWORD. With NATS_URL
set, nats-server is the operator's, and so are the NATS_USER / NATS_PASSWORD given to services.

Files: the data directory and secrets/ are 0700; the services create theirs 0600 (umask 077),
and the logs written here are 0600 too.

Identity: before anything starts, `carshare-account keygen` makes account's token key and order's
service key in DATA_DIR/keys (once; 0600), so every process finds the public keys it verifies
with. At the first start account creates the staff account `admin` with a random password in
DATA_DIR/secrets/admin-password (0600); this script prints it that once.

DB=postgres (make run DB=postgres): also starts a private PostgreSQL server in DATA_DIR/postgres
(scripts/pglocal.py: initdb on first use, pg_ctl on PG_PORT, default 5433, loopback only), creates
a role and a database per service that has a PostgreSQL store (each role may use only its own
database), runs those services on it (<SERVICE>_DATABASE_URL) and the others on SQLite, and stops
the server last, by its PID. A <SERVICE>_DATABASE_URL or DATABASE_URL already set is left alone.

CLUSTER=1 (make run CLUSTER=1): the clustered system, in DATA_DIR/cluster unless DATA_DIR is set.
Three nats-server nodes form a JetStream cluster (client ports NATS_PORT, +1, +2; cluster routes on
NATS_CLUSTER_PORT, 6222, +1, +2; each its own store in nats-<i>/), services get NATS_URL as the
list of the three and BUS_STREAM_REPLICAS=3; PostgreSQL as with DB=postgres; every service with a
PostgreSQL store runs CLUSTER_REPLICAS (2) instances, the others (SQLite: one process per database
file) one, and the gateway one (its second slot, on the same port, is for its next release, which
takes the listening socket over: HTTP_HANDOVER_SOCKET). A replicated service has one slot more
than its replicas (the
surge of a rollout, as a Kubernetes RollingUpdate with maxSurge 1, maxUnavailable 0): its ports are
<NAME>_PORTS (a comma list) or its port + 100 per slot (order 8081, 8181, 8281), and the gateway's
<NAME>_URL lists every slot, and so does order's PAYMENT_URL (an empty slot is simply not ready,
so never chosen: lib/balance.h). The layout, with
ports and PIDs, is kept in DATA_DIR/cluster.json.

Rolling redeploy (scripts/rollout.py, `make rollout [SERVICE=order]`): it drops a request in
DATA_DIR/rollout/ and run.py, which supervises every process, carries it out: for each instance of
the service, start a new one (the binaries now in the build directory) in the empty slot, wait until
it is ready and the processes that balance over it (the gateway; order, for payment) have it
ready, then SIGTERM the old one (it drains: readiness 503,
serves DRAIN_MS more with Connection: close, finishes what is in flight, exits 0), and go on with
the next. The gateway's new release takes the public port's socket over from the old one once it
is ready; both accept from it while the old one drains. Progress goes to DATA_DIR/rollout/<id>.log,
the outcome to <id>.json.
"""
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

import natsauth

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("CARSHARE_BIN", os.path.join(ROOT, "build", "bin"))
HOST = os.environ.get("HOST", "127.0.0.1")
CLUSTER = os.environ.get("CLUSTER", "0") not in ("", "0")
DATA_DIR = os.path.abspath(os.environ.get("DATA_DIR", os.path.join(ROOT, "data", "cluster") if CLUSTER
                                          else os.path.join(ROOT, "data")))
REPLICAS = int(os.environ.get("CLUSTER_REPLICAS", "2"))
PORTS = {"order": 8081, "delivery": 8082, "customerpage": 8083, "payment": 8084, "account": 8085,
         "gateway": 8088}
ORDER = ["account", "payment", "order", "delivery", "customerpage", "gateway"]
# The services whose store has a PostgreSQL version (tests/e2e/harness.py has the same list).
PG_SERVICES = ["account", "payment", "order", "delivery", "customerpage"]


def port_of(name):
    return int(os.environ.get(name.upper() + "_PORT", PORTS[name]))


def log(msg):
    print("run: " + msg, flush=True)


class Supervised:
    def __init__(self, name, argv, env, instance=None, port=None):
        self.name, self.argv, self.env = name, argv, env
        self.instance = instance or name      # "order-1" under CLUSTER=1: its log file's name
        self.port = port
        self.proc, self.crashes, self.next_start = None, 0, 0.0
        self.retired = False                  # stopped on purpose (a rollout): not restarted

    def start(self):
        path = os.path.join(DATA_DIR, "logs", self.instance + ".log")
        logf = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        self.log_offset = os.fstat(logf.fileno()).st_size   # where this start's lines begin
        os.chmod(path, 0o600)   # a log written before files were kept private
        # A session of its own: Ctrl-C in the terminal reaches run.py only, which then stops the
        # services in order (gateway first, nats-server last) instead of all at once.
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        self.started = time.monotonic()

    def check(self):
        """Restarts the process if it died; returns nothing."""
        if self.retired:
            return
        if self.proc is None or self.proc.poll() is None:
            if self.proc is not None and time.monotonic() - self.started > 30:
                self.crashes = 0
            return
        if self.next_start == 0.0:
            self.crashes += 1
            pause = min(30.0, 0.5 * 2 ** (self.crashes - 1))
            log("%s exited with %s; restarting in %.1fs (see %s)" % (
                self.instance, self.proc.returncode, pause,
                os.path.join(DATA_DIR, "logs", self.instance + ".log")))
            self.next_start = time.monotonic() + pause
        elif time.monotonic() >= self.next_start:
            self.next_start = 0.0
            self.start()

    def terminate(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout):
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log("%s did not stop in %ss; killing it" % (self.instance, timeout))
            self.proc.kill()
            self.proc.wait()


TLS = bool(os.environ.get("GATEWAY_TLS_CERT"))


def ready(name, port=None):
    """/health/ready of one process; the gateway's over HTTPS when it serves TLS (its certificate
    is the operator's, maybe self-signed: readiness is all that is asked here)."""
    scheme, ctx = "http", None
    if name == "gateway" and TLS:
        scheme, ctx = "https", ssl._create_unverified_context()
    try:
        with urllib.request.urlopen("%s://%s:%d/health/ready" % (scheme, HOST, port or port_of(name)),
                                    timeout=1, context=ctx) as r:
            return r.status == 200
    except OSError:
        return False


def private_dirs():
    """The data directory and what run.py creates in it: readable by their owner only."""
    os.umask(0o077)
    for d in (DATA_DIR, os.path.join(DATA_DIR, "logs"), os.path.join(DATA_DIR, "secrets"),
              os.path.join(DATA_DIR, "rollout")):
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)


def make_keys():
    """account's token signing key and order's service key (private 0600, .pub beside)."""
    keys = os.path.join(DATA_DIR, "keys")
    subprocess.run([os.path.join(BIN, "carshare-account"), "keygen",
                    os.environ.get("TOKEN_PRIVATE_KEY", os.path.join(keys, "account.key")),
                    os.environ.get("SERVICE_TOKEN_KEY", os.path.join(keys, "order.key"))],
                   check=True, stdout=subprocess.DEVNULL)


def print_admin_password_once(existed_before):
    """The staff password, printed at the first start only (account wrote it)."""
    path = os.path.join(DATA_DIR, "secrets", "admin-password")
    if existed_before or not os.path.exists(path):
        return
    with open(path) as f:
        log("staff account created: sign in as admin with password %s" % f.read().strip())
    log("(printed this once; it stays in %s, readable by you only)" % path)


def start_postgres(env, services):
    """The private PostgreSQL server (scripts/pglocal.py) and a database per service in `services`
    (<SERVICE>_DATABASE_URL in env, unless the operator set one). Returns the server."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from pglocal import LocalPostgres
    # Its log stays in its own directory: logs/ is private to us, and the server may run as
    # the `postgres` user.
    pg = LocalPostgres(os.path.join(DATA_DIR, "postgres"), int(os.environ.get("PG_PORT", 5433)))
    log("starting PostgreSQL on 127.0.0.1:%d (data and log in %s)" % (pg.port, pg.dir))
    pg.start()
    for name in services:
        var = name.upper() + "_DATABASE_URL"
        if var not in os.environ and "DATABASE_URL" not in os.environ:
            env[var] = pg.service_database(name)
    log("on PostgreSQL: %s; on SQLite: %s" % (
        ", ".join(services), ", ".join(n for n in ORDER if n not in services + ["gateway"]) or "none"))
    return pg


# ---- CLUSTER=1 ----

def listed_ports(var, first, n, step):
    """n ports: the comma list in $var, else first, first + step, ..."""
    given = os.environ.get(var)
    if not given:
        return [first + step * k for k in range(n)]
    ports = [int(x) for x in given.split(",") if x.strip()]
    if len(ports) < n:
        raise SystemExit("run: %s lists %d ports, %d are needed" % (var, len(ports), n))
    return ports[:n]


def nats_cluster(env, passwords):
    """Three nats-server nodes in one JetStream cluster; returns their processes and sets the
    services' NATS_URL (the list of the three) and BUS_STREAM_REPLICAS (3)."""
    ports = listed_ports("NATS_PORTS", int(os.environ.get("NATS_PORT", 4222)), 3, 1)
    routes = listed_ports("NATS_CLUSTER_PORTS", int(os.environ.get("NATS_CLUSTER_PORT", 6222)), 3, 1)
    procs = []
    for i in range(3):
        extra = {"server_name": "carshare-%d" % i,
                 "cluster": {"name": "carshare", "listen": "%s:%d" % (HOST, routes[i]),
                             "routes": ["nats-route://%s:%d" % (HOST, r) for r in routes if r != routes[i]]}}
        conf = natsauth.write_config(os.path.join(DATA_DIR, "secrets", "nats-%d.conf" % i), HOST,
                                     ports[i], os.path.join(DATA_DIR, "nats-%d" % i), passwords, extra)
        procs.append(Supervised("nats-server", ["nats-server", "-c", conf], env, "nats-%d" % i, ports[i]))
    env["NATS_URL"] = ",".join("nats://%s:%d" % (HOST, p) for p in ports)
    env.setdefault("BUS_STREAM_REPLICAS", "3")
    return procs


class Cluster:
    """The instances of every service by slot, the state file, and rollouts (one at a time)."""

    def __init__(self, env, passwords, replicated, nats):
        self.env, self.passwords, self.nats = env, passwords, nats
        self.lock = threading.Lock()
        self.slots, self.ports = {}, {}      # name -> [Supervised or None], [port] by slot
        for name in ORDER:
            # The gateway's two slots share its one public port: a new release takes the very
            # listening socket over from the running one (HTTP_HANDOVER_SOCKET, lib/http_handover.c).
            n = REPLICAS + 1 if name in replicated else 2 if name == "gateway" else 1
            self.slots[name] = [None] * n
            self.ports[name] = ([port_of(name)] * n if name == "gateway" else
                                listed_ports(name.upper() + "_PORTS", port_of(name), n, 100))
        self.replicated = replicated
        self.handover = os.path.join(DATA_DIR, "gateway.handover")
        for name in ORDER:
            if name != "gateway":
                env[name.upper() + "_URL"] = ",".join(self.url(name, k) for k in range(len(self.slots[name])))
        self.rollout = None
        self.pg = None                       # the PostgreSQL server (pglocal), for the state file
        self.complete = False                # every instance started

    def url(self, name, slot):
        return "http://%s:%d" % (HOST, self.ports[name][slot])

    def instance_env(self, name, slot):
        senv = dict(self.env, PORT=str(self.ports[name][slot]), INSTANCE_ID="%s-%d" % (name, slot))
        if name == "gateway":
            senv["HTTP_HANDOVER_SOCKET"] = self.handover
        if self.passwords:
            senv.update(natsauth.service_env(name, self.passwords))
        return senv

    def spawn(self, name, slot):
        p = Supervised(name, [os.path.join(BIN, "carshare-" + name)], self.instance_env(name, slot),
                       "%s-%d" % (name, slot), self.ports[name][slot])
        p.start()
        self.slots[name][slot] = p
        return p

    def start(self, stopping):
        for p in self.nats:
            p.start()
        for name in ORDER:
            self.spawn(name, 0)
        self.save()
        # The other instances once the first of each is ready: a first start makes things once
        # (account's staff account and its password file) that two starting together would race
        # for, the loser exiting to be restarted.
        t0 = time.monotonic()
        while (time.monotonic() - t0 < 60 and not stopping and
               not all(ready(n, self.ports[n][0]) for n in self.replicated)):
            time.sleep(0.05)
        if stopping:
            return      # a stop asked while starting: main stops what was started
        for name in ORDER:
            for k in range(1, REPLICAS if name in self.replicated else 1):
                self.spawn(name, k)
        self.complete = True
        self.save()

    def running(self):
        with self.lock:
            return list(self.nats) + [p for s in self.slots.values() for p in s if p]

    def save(self):
        """DATA_DIR/cluster.json: what scripts/rollout.py and the tests read."""
        state = {"run_pid": os.getpid(), "host": HOST,
                 "nats": [{"port": p.port, "pid": p.proc.pid if p.proc else None} for p in self.nats],
                 "nats_url": self.env["NATS_URL"],
                 "postgres": {"port": self.pg.port, "pid": self.pg.pid} if self.pg else None,
                 "services": {name: [{"slot": k, "port": self.ports[name][k],
                                      "pid": p.proc.pid if p and p.proc and p.proc.poll() is None else None}
                                     for k, p in enumerate(slots)]
                              for name, slots in self.slots.items()},
                 "replicated": sorted(self.replicated), "complete": self.complete}
        path = os.path.join(DATA_DIR, "cluster.json")
        with open(path + ".tmp", "w") as f:
            json.dump(state, f, indent=1)
        os.replace(path + ".tmp", path)

    def check(self, stopping):
        for p in self.running():
            if not stopping:
                p.check()

    # ---- rollout ----

    def poll_request(self):
        """Takes a request scripts/rollout.py left in DATA_DIR/rollout/, if none is running."""
        path = os.path.join(DATA_DIR, "rollout", "request.json")
        if self.rollout and self.rollout.is_alive() or not os.path.exists(path):
            return
        with open(path) as f:
            req = json.load(f)
        os.unlink(path)
        self.rollout = threading.Thread(target=self.roll, args=(req,), daemon=True)
        self.rollout.start()

    def roll(self, req):
        out = os.path.join(DATA_DIR, "rollout", req["id"])
        with open(out + ".log", "a") as logf:
            def say(msg):
                logf.write("%.3f %s\n" % (time.time(), msg))
                logf.flush()
                log("rollout: " + msg)
            result = {"id": req["id"], "ok": True, "services": {}}
            for name in req["services"]:
                outcome = self.roll_service(name, say)
                result["services"][name] = outcome
                result["ok"] = result["ok"] and outcome["ok"]
            say("done: %s" % ("every instance replaced" if result["ok"] else "FAILED"))
        with open(out + ".json.tmp", "w") as f:
            json.dump(result, f)
        os.replace(out + ".json.tmp", out + ".json")

    def roll_service(self, name, say):
        if name not in self.slots:
            return {"ok": False, "why": "no such service"}
        if name not in self.replicated and name != "gateway":
            why = "runs single: it is on SQLite, one process per database file"
            say("%s not rolled: %s" % (name, why))
            return {"ok": False, "why": why}
        replaced = []
        for old in [p for p in self.slots[name] if p]:
            step = self.replace(name, old, say)
            if not step["ok"]:
                return {"ok": False, "why": step["why"], "replaced": replaced}
            replaced.append(step)
        return {"ok": True, "replaced": replaced}

    def replace(self, name, old, say):
        """One instance of `name` replaced: new in the empty slot, ready, chosen; old drained."""
        with self.lock:
            slot = self.slots[name].index(None)
            new = self.spawn(name, slot)
        self.save()
        say("%s: started %s (pid %d, port %d) to replace %s (pid %d)" % (
            name, new.instance, new.proc.pid, new.port, old.instance, old.proc.pid))
        t0 = time.monotonic()
        while not self.new_ready(new):
            if new.proc.poll() is not None or time.monotonic() - t0 > 60:
                with self.lock:
                    new.retired = True
                    new.terminate()
                    self.slots[name][slot] = None
                new.wait(30)
                self.save()
                say("%s: %s never became ready; %s kept" % (name, new.instance, old.instance))
                return {"ok": False, "why": "%s never became ready" % new.instance}
            time.sleep(0.05)
        say("%s: %s ready after %d ms" % (name, new.instance, (time.monotonic() - t0) * 1000))
        t1 = time.monotonic()
        callers = self.callers(name)
        while not all(self.sees(port, name, self.url(name, slot)) for port in callers):
            if time.monotonic() - t1 > 60:
                say("%s: its callers did not take %s in 60 s; %s kept" % (name, new.instance, old.instance))
                return {"ok": False, "why": "its callers did not take %s" % new.instance}
            time.sleep(0.1)
        if callers:
            say("%s: %s is chosen by %s (%d ms after ready)" % (
                name, new.instance, ", ".join(self.caller_names(name)), (time.monotonic() - t1) * 1000))
        else:
            say("%s: %s accepts on the public port beside %s" % (name, new.instance, old.instance))
        with self.lock:
            old.retired = True
            old.terminate()
        t2 = time.monotonic()
        old.wait(60)
        code = old.proc.returncode
        with self.lock:
            self.slots[name][self.slots[name].index(old)] = None
        self.save()
        say("%s: %s drained and exited %s in %d ms" % (name, old.instance, code, (time.monotonic() - t2) * 1000))
        if code != 0:
            return {"ok": False, "why": "%s exited %s" % (old.instance, code)}
        return {"ok": True, "old": old.instance, "new": new.instance, "exit": code}

    def new_ready(self, new):
        """Whether a new instance is ready. A new gateway shares the public port with the old one,
        so asking the port could reach either: it is ready once it listens, which it does only
        when ready (lib/service.c takes a handed-over port once every readiness check passes)."""
        if new.name != "gateway":
            return ready(new.name, new.port)
        with open(os.path.join(DATA_DIR, "logs", new.instance + ".log"), "rb") as f:
            f.seek(new.log_offset)
            return b"msg=listening" in f.read()

    def caller_names(self, name):
        """Who balances over `name`'s instances: the gateway, and order for payment; nobody
        balances over the gateway (its instances share one listening socket)."""
        if name == "gateway":
            return []
        return ["gateway"] + (["order"] if name == "payment" else [])

    def callers(self, name):
        """The ports of every running process that balances over `name`'s instances."""
        with self.lock:
            return [p.port for c in self.caller_names(name) for p in self.slots[c]
                    if p and not p.retired]

    def sees(self, port, name, url):
        """Whether the process on `port` has instance `url` of `name` ready: its readiness probe
        passed and it is not ejected (its /metrics, lib/balance_set.c)."""
        req = urllib.request.Request("http://%s:%d/metrics" % (HOST, port),
                                     headers={"Authorization": "Bearer " + staff_token()})
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return False
        want = 'carshare_upstream_instance_ready{upstream="%s",instance="%s"} 1' % (name, url)
        return any(line.strip() == want for line in text.splitlines())


_token = {}


def staff_token():
    """A short-lived staff token signed with account's key: for the gateway's /metrics."""
    if _token.get("exp", 0) < time.time() + 60:
        _token["value"] = subprocess.run(
            [os.path.join(BIN, "carshare-account"), "token",
             os.environ.get("TOKEN_PRIVATE_KEY", os.path.join(DATA_DIR, "keys", "account.key")),
             "rollout", "staff", "600"], check=True, capture_output=True, text=True).stdout.strip()
        _token["exp"] = time.time() + 600
    return _token["value"]


def main():
    private_dirs()
    make_keys()
    admin_existed = os.path.exists(os.path.join(DATA_DIR, "secrets", "admin-password"))
    nats_port = int(os.environ.get("NATS_PORT", 4222))
    env = dict(os.environ)
    env.setdefault("DATA_DIR", DATA_DIR)
    if not CLUSTER:
        env.setdefault("NATS_URL", "nats://%s:%d" % (HOST, nats_port))
    env.setdefault("WEB_DIR", os.path.join(ROOT, "web"))
    # Links and Location in every service name the gateway, the one public entry.
    public = "%s://%s:%d" % ("https" if TLS else "http",
                             "localhost" if HOST in ("0.0.0.0", "::") else HOST, port_of("gateway"))
    env.setdefault("PUBLIC_BASE_URL", public)
    if not CLUSTER:
        for name in PORTS:
            if name != "gateway":
                env.setdefault(name.upper() + "_URL", "http://%s:%d" % (HOST, port_of(name)))

    pg = None
    if CLUSTER or os.environ.get("DB", "sqlite") == "postgres":
        pg = start_postgres(env, PG_SERVICES)

    passwords = {}
    if CLUSTER:
        if "NATS_URL" in os.environ:
            raise SystemExit("run: CLUSTER=1 runs its own three nats-server nodes: unset NATS_URL")
        passwords = natsauth.new_passwords()
        cluster = Cluster(env, passwords, set(PG_SERVICES), nats_cluster(env, passwords))
        cluster.pg = pg
        single = [n for n in ORDER if n not in PG_SERVICES and n != "gateway"]
        log("cluster: 3 nats-server nodes (%s), stream replicas %s; %d instances of %s%s" % (
            env["NATS_URL"], env["BUS_STREAM_REPLICAS"], REPLICAS, ", ".join(PG_SERVICES),
            ("; single (SQLite, not on PostgreSQL yet): %s" % ", ".join(single)) if single else ""))
        procs = None
    else:
        procs = []
        if "NATS_URL" not in os.environ:
            passwords = natsauth.new_passwords()
            conf = natsauth.write_config(os.path.join(DATA_DIR, "secrets", "nats.conf"), HOST,
                                         nats_port, os.path.join(DATA_DIR, "nats"), passwords)
            procs.append(Supervised("nats-server", ["nats-server", "-c", conf], env))
        for name in ORDER:
            senv = dict(env, PORT=str(port_of(name)))
            if passwords:
                senv.update(natsauth.service_env(name, passwords))
            procs.append(Supervised(name, [os.path.join(BIN, "carshare-" + name)], senv))

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))

    t0 = time.monotonic()
    if procs is None:
        cluster.start(stopping)     # after the handlers: a SIGTERM while starting stops it all
    if procs is not None:
        for p in procs:
            p.start()
        waited = [(n, None) for n in ORDER]
    else:
        waited = [(p.name, p.port) for p in cluster.running() if p.name != "nats-server"]
    pending = set(waited)
    while pending and not stopping and time.monotonic() - t0 < 60:
        pending = {(n, port) for (n, port) in pending if not ready(n, port)}
        time.sleep(0.05)
    if stopping:
        pass
    elif pending:
        log("not ready after 60s: %s (logs in %s)" % (", ".join(sorted("%s:%s" % x for x in pending)),
                                                    os.path.join(DATA_DIR, "logs")))
    else:
        log("all services ready in %d ms; data in %s, logs in %s" % (
            (time.monotonic() - t0) * 1000, DATA_DIR, os.path.join(DATA_DIR, "logs")))
        print_admin_password_once(admin_existed)
        log("open %s/ in a browser (Ctrl-C stops everything)" % env["PUBLIC_BASE_URL"])

    while not stopping:
        if procs is not None:
            for p in procs:
                if not stopping:
                    p.check()
        else:
            cluster.check(stopping)
            cluster.poll_request()
        time.sleep(0.2)

    log("stopping")
    every = procs if procs is not None else cluster.running()
    for p in reversed(every):          # gateway first, nats-server last
        if p.name == "nats-server":
            continue
        p.retired = True
        p.terminate()
    for p in reversed(every):
        if p.name != "nats-server":
            p.wait(15)
    for p in every:
        if p.name == "nats-server":
            p.terminate()
    for p in every:
        if p.name == "nats-server":
            p.wait(10)
    if pg:
        pg.stop()
    if procs is None:
        os.unlink(os.path.join(DATA_DIR, "cluster.json"))
    # A service that did not exit 0 on SIGTERM did not stop cleanly (a crash, a leak found by a
    # sanitizer, a drain cut short): said, and run.py's own exit status says it too. (nats-server
    # exits 1 on SIGTERM by design.)
    unclean = ["%s (%s)" % (p.instance, p.proc.returncode) for p in every
               if p.proc is not None and p.proc.returncode != 0 and p.name != "nats-server"]
    log("stopped" + ("; not cleanly: " + ", ".join(unclean) if unclean else ""))
    return 1 if unclean else 0


if __name__ == "__main__":
    sys.exit(main())
