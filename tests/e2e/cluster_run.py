"""cluster_run.py: `make run CLUSTER=1` (scripts/run.py itself) on free loopback ports, for the
cluster test (test_pg_cluster.py) and `make bench-scale` (tests/bench/scale.py).

    c = ClusterRun(workdir, {"CLUSTER_REPLICAS": "2"})
    c.start()                  # waits until every instance is ready
    c.state()                  # run.py's DATA_DIR/cluster.json: ports and PIDs
    c.rollout("order")         # scripts/rollout.py: (exit code, its output)
    c.stop()                   # SIGTERM to run.py, which stops what it started; its exit code

Every port run.py opens is given to it (<NAME>_PORTS, NATS_PORTS, NATS_CLUSTER_PORTS, PG_PORT), and
the balancers probe every 300 ms (GATEWAY_ and PAYMENT_PROBE_INTERVAL_MS), so a drain lasts 600 ms.
"""
import json
import os
import signal
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BIN, Nats, free_port, wait_for  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SERVICES = ["order", "delivery", "customerpage", "payment", "account", "gateway"]


def _ports(n):
    return ",".join(str(free_port()) for _ in range(n))


def ready(port):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/health/ready" % port, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class ClusterRun:
    def __init__(self, workdir, extra_env=None):
        os.chmod(workdir, 0o755)        # as root PostgreSQL runs as `postgres`: it must get in
        self.dir, self.data = workdir, os.path.join(workdir, "data")
        env = dict(os.environ, CLUSTER="1", DATA_DIR=self.data, CARSHARE_BIN=BIN,
                   PG_PORT=str(free_port()), NATS_PORTS=_ports(3), NATS_CLUSTER_PORTS=_ports(3),
                   GATEWAY_PROBE_INTERVAL_MS="300", PAYMENT_PROBE_INTERVAL_MS="300")
        env.pop("NATS_URL", None)
        for name in SERVICES:
            env[name.upper() + "_PORTS"] = _ports(4 if name != "gateway" else 1)
            env[name.upper() + "_PORT"] = env[name.upper() + "_PORTS"].split(",")[0]
        env.update(extra_env or {})
        self.env, self.proc = env, None

    def start(self, timeout=120):
        log = open(os.path.join(self.dir, "run.log"), "ab")
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "run.py")],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        wait_for(lambda: os.path.exists(os.path.join(self.data, "cluster.json")), timeout,
                 "run.py's state file")
        wait_for(self.all_ready, timeout, "every instance ready")

    def state(self):
        with open(os.path.join(self.data, "cluster.json")) as f:
            return json.load(f)

    def all_ready(self):
        st = self.state()
        return st["complete"] and all(ready(i["port"]) for slots in st["services"].values()
                                      for i in slots if i["pid"])

    def instances(self, name):
        return [i for i in self.state()["services"][name] if i["pid"]]

    def gateway_port(self):
        return self.state()["services"]["gateway"][0]["port"]

    def token(self, subject, role):
        return subprocess.run([os.path.join(BIN, "carshare-account"), "token",
                               os.path.join(self.data, "keys", "account.key"), subject, role, "3600"],
                              check=True, capture_output=True, text=True).stdout.strip()

    def stream_info(self):
        """JetStream's own view of the stream `carshare` (asked of any node that answers)."""
        with open(os.path.join(self.data, "secrets", "nats-0.conf")) as f:
            conf = json.load(f)
        admin = [u for u in conf["authorization"]["users"] if u["user"] == "admin"][0]["password"]
        for n in self.state()["nats"]:
            try:
                c = Nats(n["port"], "admin", admin)
                try:
                    return c.request("$JS.API.STREAM.INFO.carshare", b"")
                finally:
                    c.close()
            except OSError:
                continue
        return {}

    def rollout(self, *services):
        out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "rollout.py")] + list(services),
                             env=dict(os.environ, DATA_DIR=self.data, ROLLOUT_TIMEOUT_S="600"),
                             capture_output=True, text=True, timeout=900)
        return out.returncode, out.stdout + out.stderr

    def stop(self):
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode
