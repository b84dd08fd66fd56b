"""test_prod_layout.py: the prod overlay, rendered by kubectl kustomize and played by podman kube
play as far as one machine's podman allows (`make test-prod-layout`).

What runs is prod's own rendering (kubeplay.py adapts it as for dev: host network on free
loopback ports instead of Services, Secrets as ConfigMaps, StatefulSets as Deployments):
its ConfigMap (BUS_STREAM_REPLICAS=3), its Secrets as scripts/k8s-secrets.sh makes them, its
resources, probes and security contexts, and
  - PostgreSQL: the StatefulSet on carshare's image, whose first start makes each service's
    role and database from the Secret's init.sql; the services' DATABASE_URLs from carshare-db;
  - nats: three servers of prod's nats.conf, routed to each other (the R3 stream);
  - two instances of gateway, payment, delivery and customerpage, the services that are safe
    as replicas on PostgreSQL; the callers' URLs list both, which is what a headless Service's
    name resolves to (podman has no Services: kubeplay.py);
  - order on PostgreSQL too, as two instances (each intake has an owner: issue 14); account
    on PostgreSQL at one instance (two making the staff account at their first start together
    is not tested yet).
Then:
  1. every pod is ready (the time it took is printed); the bus refuses anonymous clients;
  2. the dev layout's rental flow (test_dev_layout.py), through both gateways in turn: rent,
     Shipped, the customer page, another customer cannot cancel, a cancellation refunds and
     cancels the delivery; with six rentals more, both payment instances took payments;
  3. the stream is on all three nats-servers;
  4. one payment instance is killed (SIGKILL, by PID): rentals go on through the other
     (a 503 "try again" is allowed while order's client ejects the dead one, and each rental
     retried this way is charged once), and podman restarts it.
What needs a cluster (Services and DNS, NetworkPolicies, HPAs, PDBs, rolling updates, the
Ingress) is checked on the rendered manifests by test_manifests.py.
"""
import datetime
import json
import os
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import podman as pm  # noqa: E402
import test_dev_layout as dl  # noqa: E402
from harness import check, run, wait_for  # noqa: E402

REPLICATED = ("gateway", "order", "payment", "delivery", "customerpage")
# The flow's helpers (rent, page, delivery, token) act on test_dev_layout's LAYOUT: this module's.
dl.LAYOUT.close()
dl.LAYOUT = LAYOUT = dl.Layout("prod", instances={p: 2 for p in REPLICATED}, nats_servers=3)


def test_prod_layout_starts():
    LAYOUT.start()


test_bus_refuses_anonymous_clients = dl.test_bus_refuses_anonymous_clients
test_rental_flow_through_the_gateway = dl.test_rental_flow_through_the_gateway


def payments_taken(instance):
    """How many POST /payments the payment instance answered (its request log lines)."""
    out = subprocess.run(["podman", "logs", LAYOUT.container("payment", instance)],
                         capture_output=True, text=True)
    return sum(1 for line in (out.stdout + out.stderr).splitlines()
               if 'method=POST path="/payments"' in line)


def test_both_payment_instances_take_payments():
    """Each order instance calls the payment instances in turn (ties of least outstanding):
    with 8 rentals over two order instances one of them makes at least 4, so both payment
    instances must have charged."""
    check(dl.STATE, "needs the rental flow's rentals")
    for _ in range(6):
        check(rent_or_retry("kim", must=True), "a rental")
    taken = [payments_taken(i) for i in (0, 1)]
    check(all(n >= 1 for n in taken), "payments per instance: %s" % taken)


def stream():
    return pm.nats_stream(LAYOUT.ports["nats"][0]["monitor"])


def test_stream_on_three_servers():
    s = wait_for(lambda: (lambda s: s if s and s.get("cluster", {}).get("leader") and
                          len(s["cluster"].get("replicas", [])) == 2 else None)(stream()),
                 dl.WAIT, "the stream with a leader and two replicas")
    check(s["config"]["num_replicas"] == 3, "stream config %r" % s["config"])
    # Seen from nats-0: the leader, and the peers other than nats-0 itself.
    port = LAYOUT.ports["nats"][0]["monitor"]
    with urllib.request.urlopen("http://127.0.0.1:%d/varz" % port, timeout=3) as r:
        self_name = json.loads(r.read())["server_name"]
    names = {self_name, s["cluster"]["leader"]} | {r["name"] for r in s["cluster"]["replicas"]}
    check(len(names) == 3, "the stream is on %s" % names)


def test_one_payment_instance_killed_rentals_go_on():
    before = LAYOUT.kill("payment", 0)
    for _ in range(4):
        rented = wait_for(lambda: rent_or_retry("kim"), dl.WAIT, "a rental with payment-0 dead")
        dl.page("kim", rented["id"], "Shipped", 3)
    wait_for(lambda: LAYOUT.restarts("payment", 0) > before, dl.WAIT, "payment-0 restarted")
    wait_for(lambda: LAYOUT.ready("payment", 0), dl.WAIT, "payment-0 ready again")
    check(rent_or_retry("kim", must=True), "a rental")


DAYS = iter(range(10, 80))


def rent_or_retry(customer, must=False):
    """A one-day rental on a day of its own (the fleet has few cars of a model per day), or
    None after a 503 (nothing charged: the contract's "try again") unless it must succeed."""
    day = datetime.date.today() + datetime.timedelta(days=next(DAYS))
    code, body = LAYOUT.call("POST", "/orders", {"productId": "1001", "qty": 1,
                                                 "from": day.isoformat(),
                                                 "to": (day + datetime.timedelta(days=1)).isoformat(),
                                                 "cardNumber": "4111111111111111"},
                             dl.token(customer))
    if code == 503 and not must:
        return None
    check(code == 201 and body["status"] == "OrderApproved", "rent: %d %r" % (code, body))
    return body


if __name__ == "__main__":
    try:
        run(globals())
    finally:
        LAYOUT.close()
