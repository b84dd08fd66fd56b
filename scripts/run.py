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
"""
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request

import natsauth

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("CARSHARE_BIN", os.path.join(ROOT, "build", "bin"))
HOST = os.environ.get("HOST", "127.0.0.1")
DATA_DIR = os.path.abspath(os.environ.get("DATA_DIR", os.path.join(ROOT, "data")))
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
    def __init__(self, name, argv, env):
        self.name, self.argv, self.env = name, argv, env
        self.proc, self.crashes, self.next_start = None, 0, 0.0

    def start(self):
        path = os.path.join(DATA_DIR, "logs", self.name + ".log")
        logf = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        os.chmod(path, 0o600)   # a log written before files were kept private
        # A session of its own: Ctrl-C in the terminal reaches run.py only, which then stops the
        # services in order (gateway first, nats-server last) instead of all at once.
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        self.started = time.monotonic()

    def check(self):
        """Restarts the process if it died; returns nothing."""
        if self.proc is None or self.proc.poll() is None:
            if self.proc is not None and time.monotonic() - self.started > 30:
                self.crashes = 0
            return
        if self.next_start == 0.0:
            self.crashes += 1
            pause = min(30.0, 0.5 * 2 ** (self.crashes - 1))
            log("%s exited with %s; restarting in %.1fs (see %s)" % (
                self.name, self.proc.returncode, pause,
                os.path.join(DATA_DIR, "logs", self.name + ".log")))
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
            log("%s did not stop in %ss; killing it" % (self.name, timeout))
            self.proc.kill()
            self.proc.wait()


TLS = bool(os.environ.get("GATEWAY_TLS_CERT"))


def ready(name):
    """/health/ready of one process; the gateway's over HTTPS when it serves TLS (its certificate
    is the operator's, maybe self-signed: readiness is all that is asked here)."""
    scheme, ctx = "http", None
    if name == "gateway" and TLS:
        scheme, ctx = "https", ssl._create_unverified_context()
    try:
        with urllib.request.urlopen("%s://%s:%d/health/ready" % (scheme, HOST, port_of(name)),
                                    timeout=1, context=ctx) as r:
            return r.status == 200
    except OSError:
        return False


def private_dirs():
    """The data directory and what run.py creates in it: readable by their owner only."""
    os.umask(0o077)
    for d in (DATA_DIR, os.path.join(DATA_DIR, "logs"), os.path.join(DATA_DIR, "secrets")):
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


def main():
    private_dirs()
    make_keys()
    admin_existed = os.path.exists(os.path.join(DATA_DIR, "secrets", "admin-password"))
    nats_port = int(os.environ.get("NATS_PORT", 4222))
    env = dict(os.environ)
    env.setdefault("DATA_DIR", DATA_DIR)
    env.setdefault("NATS_URL", "nats://%s:%d" % (HOST, nats_port))
    env.setdefault("WEB_DIR", os.path.join(ROOT, "web"))
    # Links and Location in every service name the gateway, the one public entry.
    public = "%s://%s:%d" % ("https" if TLS else "http",
                             "localhost" if HOST in ("0.0.0.0", "::") else HOST, port_of("gateway"))
    env.setdefault("PUBLIC_BASE_URL", public)
    for name in PORTS:
        if name != "gateway":
            env.setdefault(name.upper() + "_URL", "http://%s:%d" % (HOST, port_of(name)))

    pg = None
    if os.environ.get("DB", "sqlite") == "postgres":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from pglocal import LocalPostgres
        # Its log stays in its own directory: logs/ is private to us, and the server may run as
        # the `postgres` user.
        pg = LocalPostgres(os.path.join(DATA_DIR, "postgres"), int(os.environ.get("PG_PORT", 5433)))
        log("starting PostgreSQL on 127.0.0.1:%d (data and log in %s)" % (pg.port, pg.dir))
        pg.start()
        for name in PG_SERVICES:
            var = name.upper() + "_DATABASE_URL"
            if var not in os.environ and "DATABASE_URL" not in os.environ:
                env[var] = pg.service_database(name)
        log("on PostgreSQL: %s; on SQLite: %s" % (
            ", ".join(PG_SERVICES), ", ".join(n for n in ORDER if n not in PG_SERVICES + ["gateway"])))

    procs = []
    passwords = {}
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
    for p in procs:
        p.start()
    pending = set(ORDER)
    while pending and not stopping and time.monotonic() - t0 < 30:
        pending = {n for n in pending if not ready(n)}
        time.sleep(0.05)
    if pending:
        log("not ready after 30s: %s (logs in %s)" % (", ".join(sorted(pending)),
                                                    os.path.join(DATA_DIR, "logs")))
    else:
        log("all services ready in %d ms; data in %s, logs in %s" % (
            (time.monotonic() - t0) * 1000, DATA_DIR, os.path.join(DATA_DIR, "logs")))
        print_admin_password_once(admin_existed)
        log("open %s/ in a browser (Ctrl-C stops everything)" % env["PUBLIC_BASE_URL"])

    while not stopping:
        for p in procs:
            if not stopping:
                p.check()
        time.sleep(0.2)

    log("stopping")
    for p in reversed(procs):          # gateway first, nats-server last
        if p.name == "nats-server":
            continue
        p.terminate()
    for p in reversed(procs):
        if p.name != "nats-server":
            p.wait(15)
    for p in procs:
        if p.name == "nats-server":
            p.terminate()
            p.wait(10)
    if pg:
        pg.stop()
    log("stopped")


if __name__ == "__main__":
    sys.exit(main())
