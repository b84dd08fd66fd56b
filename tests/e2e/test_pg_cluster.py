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
     runs replicated is replaced (new one ready and chosen by its callers, old one drained, exit 0),
     and so is the gateway (its new release takes the public port's socket over); every answer
     during it is the one it would have been (0 failed). The services that run single (on SQLite)
     must say why they were not rolled. The figures (answers, resends, worst latency) are printed.
"""
import atexit
import os
import shutil
import signal
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_run import SERVICES, ClusterRun  # noqa: E402
from harness import check, run, wait_for  # noqa: E402
from steady_load import Load  # noqa: E402

TMP = tempfile.mkdtemp(prefix="carshare-cluster-")
C = ClusterRun(TMP)
S = {}


def test_cluster_comes_up():
    C.start()
    st = C.state()
    for name in st["replicated"]:
        check(len(C.instances(name)) == 2, "%s runs two instances" % name)
    check(len(st["nats"]) == 3 and st["nats_url"].count(",") == 2, "three nats-server nodes")

    def replicated_stream():
        info = C.stream_info()
        cl = info.get("cluster", {})
        reps = cl.get("replicas", [])
        return (info.get("config", {}).get("num_replicas") == 3 and cl.get("leader")
                and len(reps) == 2 and all(r.get("current") for r in reps))
    wait_for(replicated_stream, 60, "the stream at replicas 3 with a leader and two current followers")
    S["customer"] = C.token("clusterkim", "customer")
    S["staff"] = C.token("admin", "staff")


def load(workers=3):
    return Load("127.0.0.1", C.gateway_port(), S["customer"], S["staff"], workers=workers)


# The events of a rental cancelled at once: Shipped too when delivery took Ordered first; when the
# cancellation reached it first it never ships (a replica may take the later event first).
CANCELLED = {"Ordered", "Paid", "OrderCancelled", "DeliveryCanceled", "PayCancelled"}


def customer_page_complete(customer, ids):
    """Whether every order in ids is on the customer's page as a rental that was cancelled: every
    event of that life in its history, and the status the contract ends it in."""
    reader = load()
    box = [reader._conn()]
    seen = {}
    page = 0
    while True:
        st, b = reader._call(box, "GET", "/customerpages/search/findByCustomerId?customerId=%s&size=100&page=%d"
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
    rentals = load()
    rentals.start("clusterkim")
    wait_for(lambda: len(rentals.rentals) >= 10, 120, "rentals before the kill")
    leader = C.stream_info()["cluster"]["leader"]     # "carshare-<i>": the worst node to lose
    victim = C.state()["nats"][int(leader.rsplit("-", 1)[1])]
    os.kill(victim["pid"], signal.SIGKILL)
    before = len(rentals.rentals)
    wait_for(lambda: len(rentals.rentals) >= before + 20, 180, "rentals after the kill")
    rentals.stop()
    print("nats node %s (stream leader) killed: %s" % (leader, rentals.figures()))
    check(not rentals.failures, "answers that were not the expected ones: %r" % rentals.failures[:5])
    wait_for(lambda: C.stream_info().get("cluster", {}).get("leader"), 60, "a stream leader again")
    try:
        wait_for(lambda: customer_page_complete("clusterkim", rentals.rentals), 120,
                 "every rental on the customer page with every event of its life")
    except AssertionError:
        raise AssertionError("rentals not complete on the customer page: %r" % S["incomplete"])


def test_rollout_of_every_service_under_load():
    rentals = load()
    rentals.start("clusterkim")
    wait_for(lambda: len(rentals.rentals) >= 5, 120, "rentals before the rollout")
    st = C.state()
    before = {name: [i["pid"] for i in C.instances(name)] for name in st["services"]}
    code, out = C.rollout()
    print(out)
    n = len(rentals.rentals)
    wait_for(lambda: len(rentals.rentals) >= n + 5, 120, "rentals after the rollout")
    rentals.stop()
    print("rollout under load: %s" % rentals.figures())
    check(not rentals.failures, "answers that were not the expected ones: %r" % rentals.failures[:5])
    rolled = [line.split(":")[1].strip() for line in out.splitlines() if "instance(s) replaced" in line]
    replicated = list(st["replicated"])
    for name in replicated + ["gateway"]:
        check(name in rolled, "%s was not rolled:\n%s" % (name, out))
        now = [i["pid"] for i in C.instances(name)]
        check(len(now) == len(before[name]) and not set(now) & set(before[name]),
              "%s: instances %r after, %r before" % (name, now, before[name]))
    single = [name for name in SERVICES if name not in replicated + ["gateway"]]
    for name in single:
        check("%s: NOT rolled" % name in out, "%s runs single but no reason was given" % name)
    check(code == (1 if single else 0), "rollout.py exited %d" % code)
    drained = [line for line in out.splitlines() if "drained and exited" in line]
    check(len(drained) == 2 * len(replicated) + 1, "every old instance drained:\n" + out)
    for line in drained:
        check(line.split("exited ")[1].startswith("0 "), "an old instance did not exit 0: " + line)


def test_stop():
    check(C.stop() == 0, "run.py did not exit 0: a process did not stop cleanly (see run.log)")
    with open(os.path.join(TMP, "run.log")) as f:
        restarts = [line for line in f if "restarting in" in line]
    check(len(restarts) == 1 and "nats-" in restarts[0],
          "only the killed nats-server node was restarted: %r" % restarts)
    check(not os.path.exists(os.path.join(C.data, "cluster.json")), "the state file is left")
    shutil.rmtree(TMP, ignore_errors=True)


atexit.register(C.stop)
run(globals())
