"""test_pg_cluster.py: `make run CLUSTER=1` itself (scripts/run.py) under a steady load of rentals:
a nats-server node killed, then a rolling redeploy of every service (scripts/rollout.py).

PostgreSQL only (test_pg_*: run once, on the e2e_pg pass): the cluster puts every service with a
PostgreSQL store on it, two instances each. run.py runs on free loopback ports in a temporary
directory (every port given through the <NAME>_PORTS / NATS_PORTS / NATS_CLUSTER_PORTS / PG_PORT
variables it reads), with the gateway's probes every 300 ms (so a drain lasts 600 ms), and is
stopped by its PID at the end; it stops what it started.

  1. The cluster is up: three nats-server nodes hold the stream `carshare` at replicas 3 (a leader
     and two current followers, asked of JetStream itself), every instance is ready.
  2. A node is killed (SIGKILL; run.py's supervisor brings it back, as Kubernetes would) while
     rentals run through the gateway: every answer is the one it would have been, and nothing
     is lost: every rented (then cancelled) order reaches the customer page with every event of its
     life (Ordered, Paid, OrderCancelled, DeliveryCanceled, PayCancelled; Shipped if delivery got
     Ordered first) and as PaymentCancelled.
  3. scripts/rollout.py of every service under the same load: every instance of every service that
     runs replicated is replaced (new one ready and chosen by the gateway, old one drained, exit 0);
     every answer during it is the one it would have been (0 failed). The services that run single
     must say why they were not rolled. The figures (answers, resends, worst latency) are printed.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BIN, Nats, check, free_port, run, wait_for  # noqa: E402
from steady_load import Load  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
TMP = tempfile.mkdtemp(prefix="carshare-cluster-")
os.chmod(TMP, 0o755)            # as root PostgreSQL runs as `postgres`: it must get in
DATA = os.path.join(TMP, "data")
SERVICES = ["order", "delivery", "customerpage", "payment", "account", "gateway"]
S = {}


def ports(n):
    return ",".join(str(free_port()) for _ in range(n))


def state():
    with open(os.path.join(DATA, "cluster.json")) as f:
        return json.load(f)


def ready(port):
    import urllib.request
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/health/ready" % port, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def token(subject, role):
    return subprocess.run([os.path.join(BIN, "carshare-account"), "token",
                           os.path.join(DATA, "keys", "account.key"), subject, role, "3600"],
                          check=True, capture_output=True, text=True).stdout.strip()


def gateway_port():
    return state()["services"]["gateway"][0]["port"]


def stream_info():
    with open(os.path.join(DATA, "secrets", "nats-0.conf")) as f:
        conf = json.load(f)
    admin = [u for u in conf["authorization"]["users"] if u["user"] == "admin"][0]["password"]
    for n in state()["nats"]:
        try:
            c = Nats(n["port"], "admin", admin)
            try:
                return c.request("$JS.API.STREAM.INFO.carshare", b"")
            finally:
                c.close()
        except OSError:
            continue
    return {}


def all_instances_ready():
    st = state()
    return all(i["pid"] and ready(i["port"]) for name, slots in st["services"].items()
               for i in slots if i["pid"] or name not in st["replicated"])


def test_cluster_comes_up():
    env = dict(os.environ, CLUSTER="1", DATA_DIR=DATA, CARSHARE_BIN=BIN, PG_PORT=str(free_port()),
               NATS_PORTS=ports(3), NATS_CLUSTER_PORTS=ports(3), GATEWAY_PROBE_INTERVAL_MS="300",
               PAYMENT_PROBE_INTERVAL_MS="300",
               LOG_LEVEL="info")
    env.pop("NATS_URL", None)
    for name in SERVICES:
        env[name.upper() + "_PORTS"] = ports(3 if name != "gateway" else 1)
        env[name.upper() + "_PORT"] = env[name.upper() + "_PORTS"].split(",")[0]
    S["log"] = open(os.path.join(TMP, "run.log"), "ab")
    S["run"] = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "run.py")], env=env,
                                stdout=S["log"], stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_for(lambda: os.path.exists(os.path.join(DATA, "cluster.json")), 120, "run.py's state file")
    wait_for(all_instances_ready, 120, "every instance ready")
    st = state()
    for name in st["replicated"]:
        check(sum(1 for i in st["services"][name] if i["pid"]) == 2, "%s runs two instances" % name)
    check(len(st["nats"]) == 3 and st["nats_url"].count(",") == 2, "three nats-server nodes")

    def replicated_stream():
        info = stream_info()
        cl = info.get("cluster", {})
        reps = cl.get("replicas", [])
        return (info.get("config", {}).get("num_replicas") == 3 and cl.get("leader")
                and len(reps) == 2 and all(r.get("current") for r in reps))
    wait_for(replicated_stream, 60, "the stream at replicas 3 with a leader and two current followers")
    S["customer"] = token("clusterkim", "customer")
    S["staff"] = token("admin", "staff")


# The events of a rental cancelled at once: Shipped too when delivery took Ordered first; when the
# cancellation reached it first it never ships (a replica may take the later event first).
CANCELLED = {"Ordered", "Paid", "OrderCancelled", "DeliveryCanceled", "PayCancelled"}


def customer_page_complete(customer, ids):
    """Whether every order in ids is on the customer's page as a rental that was cancelled: every
    event of that life in its history, and the status the contract ends it in."""
    load = Load("127.0.0.1", gateway_port(), S["customer"], S["staff"])
    box = [load._conn()]
    seen = {}
    page = 0
    while True:
        st, b = load._call(box, "GET", "/customerpages/search/findByCustomerId?customerId=%s&size=100&page=%d"
                           % (customer, page), token=S["staff"])
        if st != 200:
            return False
        items = b.get("_embedded", {}).get("customerpages", [])
        for it in items:
            kinds = {e.get("eventType") for e in it.get("history", [])}
            seen[it.get("orderId")] = (it.get("status"), CANCELLED <= kinds and kinds <= CANCELLED | {"Shipped"})
        if len(items) < 100:
            break
        page += 1
    S["incomplete"] = {i: seen.get(i) for i in ids if seen.get(i) != ("PaymentCancelled", True)}
    return not S["incomplete"]


def test_a_nats_node_killed_during_rentals():
    load = Load("127.0.0.1", gateway_port(), S["customer"], S["staff"], workers=3)
    load.start("clusterkim")
    wait_for(lambda: len(load.rentals) >= 10, 120, "rentals before the kill")
    info = stream_info()
    leader = info["cluster"]["leader"]           # "carshare-<i>": the worst node to lose
    victim = state()["nats"][int(leader.rsplit("-", 1)[1])]
    os.kill(victim["pid"], signal.SIGKILL)
    before = len(load.rentals)
    wait_for(lambda: len(load.rentals) >= before + 20, 180, "rentals after the kill")
    load.stop()
    f = load.figures()
    print("nats node %s (stream leader) killed: %s" % (leader, f))
    check(not load.failures, "answers that were not the expected ones: %r" % load.failures[:5])
    wait_for(lambda: stream_info().get("cluster", {}).get("leader"), 60, "a stream leader again")
    try:
        wait_for(lambda: customer_page_complete("clusterkim", load.rentals), 120,
                 "every rental on the customer page with its six events")
    except AssertionError:
        raise AssertionError("rentals not complete on the customer page: %r" % S["incomplete"])


def test_rollout_of_every_service_under_load():
    load = Load("127.0.0.1", gateway_port(), S["customer"], S["staff"], workers=3)
    load.start("clusterkim")
    wait_for(lambda: len(load.rentals) >= 5, 120, "rentals before the rollout")
    before = {name: [i["pid"] for i in slots if i["pid"]] for name, slots in state()["services"].items()}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "rollout.py")],
                         env=dict(os.environ, DATA_DIR=DATA, ROLLOUT_TIMEOUT_S="600"),
                         capture_output=True, text=True, timeout=900)
    print(out.stdout)
    n = len(load.rentals)
    wait_for(lambda: len(load.rentals) >= n + 5, 120, "rentals after the rollout")
    load.stop()
    f = load.figures()
    print("rollout under load: %s" % f)
    check(not load.failures, "answers that were not the expected ones: %r" % load.failures[:5])
    st = state()
    rolled = [l.split(":")[1].strip() for l in out.stdout.splitlines() if "instance(s) replaced" in l]
    for name in st["replicated"]:
        check(name in rolled, "%s was not rolled:\n%s" % (name, out.stdout))
        now = [i["pid"] for i in st["services"][name] if i["pid"]]
        check(len(now) == 2 and not set(now) & set(before[name]),
              "%s: instances %r after, %r before" % (name, now, before[name]))
    for name in SERVICES:
        if name not in st["replicated"]:
            check("%s: NOT rolled" % name in out.stdout, "%s runs single but no reason was given" % name)
    for line in out.stdout.splitlines():
        if "drained and exited" in line:
            check(line.split("exited ")[1].startswith("0 "), "an old instance did not exit 0: " + line)


def test_stop():
    p = S.get("run")
    if p:
        p.send_signal(signal.SIGTERM)
        p.wait(120)
        check(p.returncode == 0, "run.py exited %r" % p.returncode)
        check(not os.path.exists(os.path.join(DATA, "cluster.json")), "the state file is left")
    shutil.rmtree(TMP, ignore_errors=True)


def _cleanup():
    p = S.get("run")
    if p and p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(120)
        except subprocess.TimeoutExpired:
            p.kill()


import atexit  # noqa: E402
atexit.register(_cleanup)
run(globals())
