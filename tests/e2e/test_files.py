#!/usr/bin/env python3
"""End-to-end: what the system writes to disk is readable by its owner only.

  - `make run` (scripts/run.py, started here on free ports with a temporary data directory that
    already exists with mode 0755 and an old log readable by all): the data directory, logs/ and
    secrets/ are 0700; every file under it (databases and their WAL, nats-server's configuration
    with the bus passwords, logs, keys, secrets) is 0600 or stricter; the bus works with the
    credentials run.py wrote (every service reaches /health/ready, which needs its bus); links
    name the gateway, straight from a service too (run.py's PUBLIC_BASE_URL).
  - the services themselves, started by the e2e harness: the data directory they are given is
    made 0700 and their databases 0600, whoever created the directory.
"""
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import shutil
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BIN, System, check, free_port, run, wait_for  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
NAMES = ["order", "delivery", "customerpage", "payment", "account", "gateway"]


def modes(top):
    """{path relative to top: mode bits} for top and everything under it."""
    found = {".": stat.S_IMODE(os.stat(top).st_mode)}
    for d, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(d, name)
            if not os.path.islink(path):
                found[os.path.relpath(path, top)] = stat.S_IMODE(os.lstat(path).st_mode)
    return found


def check_private(top, must_have):
    found = modes(top)
    for rel in must_have:
        check(rel in found, "%s was not written (found: %s)" % (rel, sorted(found)))
    open_to_others = {rel: oct(m) for rel, m in found.items() if m & 0o077}
    check(not open_to_others, "readable by others: %r" % open_to_others)
    for rel, m in found.items():
        if os.path.isdir(os.path.join(top, rel)):
            check(m == 0o700, "%s is %s, not 0700" % (rel, oct(m)))


def test_make_run_keeps_its_files_private():
    tmp = tempfile.mkdtemp(prefix="carshare-files-")
    data = os.path.join(tmp, "data")
    os.makedirs(os.path.join(data, "logs"), mode=0o755)
    os.chmod(data, 0o755)
    old_log = os.path.join(data, "logs", "order.log")
    with open(old_log, "w") as f:
        f.write("an old log\n")
    os.chmod(old_log, 0o644)
    env = dict(os.environ, DATA_DIR=data, CARSHARE_BIN=os.path.abspath(BIN), HOST="127.0.0.1",
               NATS_PORT=str(free_port()))
    env.pop("NATS_URL", None)
    for name in NAMES:
        env[name.upper() + "_PORT"] = str(free_port())
    out = open(os.path.join(tmp, "run.out"), "wb")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "run.py")], env=env,
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def ready():
            check(proc.poll() is None, "run.py exited: %s" % open(out.name).read()[-3000:])
            text = open(out.name).read()
            check("not ready" not in text, "run.py: %s" % text[-3000:])
            return "all services ready" in text
        wait_for(ready, 60, "run.py to bring the system up")
        # run.py gives every service the gateway's address as the public base URL.
        gw = "http://127.0.0.1:%s" % env["GATEWAY_PORT"]
        for name in ("gateway", "order"):
            with urllib.request.urlopen("http://127.0.0.1:%s/cars" % env[name.upper() + "_PORT"],
                                        timeout=10) as r:
                href = json.loads(r.read())["_links"]["self"]["href"]
            check(href.startswith(gw + "/"), "%s's link %r does not name the gateway %s" % (name, href, gw))
        check_private(data, ["logs", "secrets", "secrets/nats.conf", "order.db", "payment.db",
                             "delivery.db", "customerpage.db", "logs/order.log",
                             "logs/gateway.log", "logs/nats-server.log"])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()
    check(proc.returncode == 0, "run.py exited with %s" % proc.returncode)
    check_private(data, ["order.db", "secrets/nats.conf"])
    shutil.rmtree(tmp, ignore_errors=True)


def test_services_make_their_data_private():
    # SQLite's files are what is checked here, whatever backend the suite runs on.
    with System(["payment", "order"], db="sqlite") as s:
        data = os.path.join(s.dir, "data")
        check_private(data, ["order.db", "payment.db", "order.db-wal", "payment.db-wal"])


if __name__ == "__main__":
    run(globals())
