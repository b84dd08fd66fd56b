"""test_dev_layout.py: the dev overlay, rendered by kubectl kustomize and run by podman kube play,
carries a rental from start to end through the gateway, and loses nothing when a container dies.

The images are this run's build of `make images`; the manifests are deploy/k8s/overlays/dev as
rendered, adapted only where one machine's podman differs from a cluster (kubeplay.py: host
network on free loopback ports instead of Services, the nats StatefulSet as a Deployment,
Secrets as ConfigMaps). Kubernetes' own behaviours that podman does not have (Services, probes
acting on pods, NetworkPolicies, autoscaling) are checked by test_manifests.py, not here.

  1. every pod comes up and the gateway is ready; the time it took is printed; the bus asks
     for credentials (each service signs in as its own user, from its Secret) and refuses a
     client without them;
  2. the rental flow through the gateway only, signed in through account (a staff token made
     with the overlay's key for the deliveries): the fleet, a rental (paid, OrderApproved), its
     delivery Shipped, the customer page; a cancellation refunds the payment, cancels the
     delivery, and the customer page ends at PaymentCancelled with its whole history;
  3. order's, customerpage's and account's processes are killed (SIGKILL, by PID): podman
     restarts each container (restartPolicy Always, from the Deployment), every rental,
     payment and page from before is still there (SQLite on the claim's volume), the tokens
     signed before still open them, and a new rental flows.
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
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kubeplay  # noqa: E402
import podman as pm  # noqa: E402
from harness import check, free_port, run, wait_for  # noqa: E402

WAIT = 60
SERVICES = ["order", "delivery", "customerpage", "payment", "account", "gateway"]


class Layout:
    """An overlay played by podman: start(), call() through the gateway, close().

    instances: how many pods of a process to play (default one; each its own port, the
    callers' URLs list them all); nats_servers: 1, or 3 for prod's JetStream cluster; sqlite:
    processes played without the overlay's DATABASE_URL (kubeplay.py)."""

    def __init__(self, overlay="dev", instances=None, nats_servers=1, sqlite=()):
        self.overlay, self.sqlite = overlay, tuple(sqlite)
        self.images = {}
        self.ready_at = {}
        self.ports = {name: [free_port() for _ in range((instances or {}).get(name, 1))]
                      for name in SERVICES}
        self.ports["nats"] = [{"client": free_port(), "cluster": free_port(),
                               "monitor": free_port()} for _ in range(nats_servers)]
        self.ports["nats-client"] = self.ports["nats"][0]["client"]
        if overlay == "prod":
            self.ports["postgres"] = free_port()
        self.suffix = "-" + pm.RUN_ID
        self.tmp = tempfile.mkdtemp(prefix="carshare-kube-")
        self.play = os.path.join(self.tmp, "play.yaml")
        self.calls = 0

    def render(self):
        """kubectl kustomize of a copy of deploy/k8s whose secrets are this run's own, with the
        images of this run (as `make deploy` names a registry's: scripts/deploy.sh)."""
        k8s = os.path.join(self.tmp, "k8s")
        shutil.copytree(os.path.join(pm.ROOT, "deploy", "k8s"), k8s,
                        ignore=shutil.ignore_patterns("secrets"))
        overlay = os.path.join(k8s, "overlays", self.overlay)
        subprocess.run([os.path.join(pm.ROOT, "scripts", "k8s-secrets.sh"), overlay], check=True)
        self.account_key = os.path.join(overlay, "secrets", "tokens", "account.key")
        release = os.path.join(self.tmp, "release")
        os.makedirs(release)
        with open(os.path.join(release, "kustomization.yaml"), "w") as f:
            f.write("bases:\n- ../k8s/overlays/%s\nimages:\n" % self.overlay)
            for proc in pm.processes() + ["postgres"]:
                f.write("- name: carshare-%s\n  newName: localhost/carshare-%s\n" % (proc, proc))
        out = subprocess.run(["kubectl", "kustomize", release], check=True, capture_output=True,
                             text=True).stdout
        with open(self.play, "w") as f:
            f.write(kubeplay.for_podman(out, self.ports, self.suffix, pm.TAG, sqlite=self.sqlite))

    def start(self):
        self.images = pm.build_images()
        self.render()
        t0 = time.monotonic()
        pm.podman("kube", "play", self.play)
        for name in SERVICES:
            try:
                wait_for(lambda: self.ready(name), WAIT, name + " ready")
            except AssertionError:
                for i in range(len(self.ports[name])):
                    print(pm.podman("logs", "--tail", "15", self.container(name, i), check=False))
                raise
            self.ready_at[name] = time.monotonic() - t0
        self.started_s = time.monotonic() - t0
        print("     the %s layout was ready %.1f s after podman kube play (%s)" % (
            self.overlay, self.started_s, ", ".join("%s %.1f" % kv for kv in self.ready_at.items())))

    def ready(self, name, instance=None):
        """Every instance of name (or the one given) answers /health/ready with 200."""
        ports = self.ports[name] if instance is None else [self.ports[name][instance]]
        for port in ports:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/health/ready" % port,
                                            timeout=2) as r:
                    if r.status != 200:
                        return False
            except (urllib.error.URLError, OSError):
                return False
        return True

    def call(self, method, path, body=None, token=None):
        """One request through a gateway (each instance in turn); returns (status, JSON body)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = "Bearer " + token
        gateways = self.ports["gateway"]
        self.calls += 1
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (gateways[self.calls % len(gateways)],
                                                                path),
                                     data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                text = r.read()
                return r.status, json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            text = e.read()
            return e.code, json.loads(text) if text else None

    def sign_in(self, customer):
        """A customer's token, signed up and in through the gateway and account."""
        body = {"customerId": customer, "password": "correct horse battery " + customer}
        code, _ = self.call("POST", "/accounts", dict(body, name=customer.title()))
        check(code == 201, "sign up %s: %d" % (customer, code))
        code, answer = self.call("POST", "/sessions", body)
        check(code in (200, 201) and answer.get("token"), "sign in %s: %d %r" % (customer, code, answer))
        return answer["token"]

    def staff(self):
        """A staff token, signed with the overlay's account key as an operator would make one
        (`carshare-account token KEY admin staff`): the images hold no shell to read the staff
        password account writes at its first start."""
        out = subprocess.run([os.path.join(pm.BIN, "carshare-account"), "token", self.account_key,
                              "admin", "staff", "600"], check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def container(self, name, instance=0):
        pod = name if len(self.ports[name]) == 1 else "%s-%d" % (name, instance)
        return "%s%s-pod-0-%s" % (pod, self.suffix, name)

    def kill(self, name, instance=0):
        """SIGKILL to the container's process, by its PID; returns the restart count before."""
        state = pm.inspect("container", self.container(name, instance))
        os.kill(state["State"]["Pid"], signal.SIGKILL)
        return state["RestartCount"]

    def restarts(self, name, instance=0):
        return pm.inspect("container", self.container(name, instance))["RestartCount"]

    def close(self):
        if os.path.exists(self.play):
            pm.podman("kube", "down", self.play, check=False)
            import yaml
            with open(self.play) as f:
                for doc in yaml.safe_load_all(f):
                    if doc["kind"] in ("ConfigMap", "PersistentVolumeClaim"):
                        pm.podman("volume", "rm", "-f", doc["metadata"]["name"], check=False)
                    if doc["kind"] == "Deployment":
                        for vol in doc["spec"]["template"]["spec"].get("volumes", []):
                            if "emptyDir" in vol:
                                pm.podman("volume", "rm", "-f", vol["name"], check=False)
        pm.remove_images(self.images)
        shutil.rmtree(self.tmp, ignore_errors=True)


LAYOUT = Layout()


def items(body, name):
    return body["_embedded"][name]


TOKENS = {}


def token(customer):
    if customer not in TOKENS:
        TOKENS[customer] = LAYOUT.staff() if customer == "staff" else LAYOUT.sign_in(customer)
    return TOKENS[customer]


def rent(customer):
    code, body = LAYOUT.call("POST", "/orders", {"productId": "1001", "qty": 1,
                                                 "cardNumber": "4111111111111111"},
                             token(customer))
    check(code == 201 and body["status"] == "OrderApproved", "rent: %d %r" % (code, body))
    return body


def page(customer, order_id, status, history):
    def at():
        code, body = LAYOUT.call("GET", "/customerpages/%d" % order_id, token=token(customer))
        if code == 200 and body["status"] == status and len(body["history"]) == history:
            return body
        return None
    return wait_for(at, WAIT, "customer page of %d at %s" % (order_id, status))


def delivery(order_id, status):
    def at():
        code, body = LAYOUT.call("GET", "/deliveries/search/findByOrderId?orderId=%d" % order_id,
                                 token=token("staff"))
        found = items(body, "deliveries") if code == 200 else []
        return found[0] if len(found) == 1 and found[0]["status"] == status else None
    return wait_for(at, WAIT, "delivery of %d %s" % (order_id, status))


def test_dev_layout_starts():
    LAYOUT.start()


STATE = {}


def test_bus_refuses_anonymous_clients():
    """nats-server runs with the users of nats-auth/auth.conf: its INFO asks for credentials,
    and a client without them is refused."""
    with socket.create_connection(("127.0.0.1", LAYOUT.ports["nats-client"]), timeout=5) as s:
        f = s.makefile("rwb")
        info = f.readline()
        check(info.startswith(b"INFO ") and json.loads(info[5:])["auth_required"] is True,
              "INFO %r" % info)
        f.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        f.flush()
        answer = f.readline()
        check(answer.startswith(b"-ERR") and b"Authorization" in answer, "anonymous: %r" % answer)


def test_rental_flow_through_the_gateway():
    code, body = LAYOUT.call("GET", "/cars")
    check(code == 200 and any(c["id"] == "1001" for c in items(body, "cars")), "cars %r" % body)
    kept = rent("kim")
    link = kept["_links"]["self"]["href"]
    check(link == "http://127.0.0.1:%d/orders/%d" % (LAYOUT.ports["gateway"][0], kept["id"]),
          "the rental's link %r does not lead through the gateway" % link)
    delivery(kept["id"], "Shipped")
    page("kim", kept["id"], "Shipped", 3)
    code, mine = LAYOUT.call("GET", "/customerpages/search/findByCustomerId?customerId=kim",
                             token=token("kim"))
    check(code == 200 and [p["orderId"] for p in items(mine, "customerpages")] == [kept["id"]],
          "kim's pages %r" % (mine,))

    cancelled = rent("lee")
    delivery(cancelled["id"], "Shipped")
    code, _ = LAYOUT.call("DELETE", "/orders/%d" % cancelled["id"], token=token("kim"))
    check(code == 404, "kim cancelled lee's rental: %d" % code)
    code, _ = LAYOUT.call("DELETE", "/orders/%d" % cancelled["id"], token=token("lee"))
    check(code in (200, 204), "cancel: %d" % code)
    page("lee", cancelled["id"], "PaymentCancelled", 6)
    delivery(cancelled["id"], "DeliveryCancelled")
    code, body = LAYOUT.call("GET", "/orders/%d" % cancelled["id"], token=token("lee"))
    check(code == 200 and body["status"] == "OrderCancelled", "cancelled order %r" % (body,))
    STATE.update(kept=kept, cancelled=cancelled)


def test_killed_containers_restart_and_lose_nothing():
    check(STATE, "needs the rental flow's rentals")
    before = {name: LAYOUT.kill(name) for name in ("order", "customerpage", "account")}
    for name, count in before.items():
        wait_for(lambda: LAYOUT.restarts(name) > count, WAIT, name + " restarted by podman")
        wait_for(lambda: LAYOUT.ready(name), WAIT, name + " ready again")
    wait_for(lambda: LAYOUT.ready("gateway"), WAIT, "gateway ready again")

    kept, cancelled = STATE["kept"], STATE["cancelled"]
    for who, order, status, history in (("kim", kept, "Shipped", 3),
                                        ("lee", cancelled, "PaymentCancelled", 6)):
        code, body = LAYOUT.call("GET", "/orders/%d" % order["id"], token=token(who))
        check(code == 200 and body["paymentId"] == order["paymentId"],
              "order %d after the restart: %d %r" % (order["id"], code, body))
        page(who, order["id"], status, history)
    later = rent("kim")
    check(later["id"] > cancelled["id"], "ids went back: %r" % later)
    page("kim", later["id"], "Shipped", 3)


if __name__ == "__main__":
    try:
        run(globals())
    finally:
        LAYOUT.close()
