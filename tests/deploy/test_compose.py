"""test_compose.py: `make run-containers` (deploy/compose.yaml under podman-compose) brings the
whole system up, a customer signs up and in through account, a rental flows through the
gateway to the customer page, and `down` stops it.

The rental's rows are then read from PostgreSQL (the image's server, made by its first start):
the customer's account, the order, its payment, its delivery and its customer page are there,
each read with its own service's URL, so every service keeps its data in it. The server's
port is not published;
psql reaches it on the loopback of the container's own network namespace (nsenter).

The project, the gateway's port and the images' tag are this run's own (two runs at once do
not meet); the volumes are removed at the end. The rental flow itself is tested at length on
the dev overlay (test_dev_layout.py); here the point is that the compose file is right: names
on the project's network, the bus's users and passwords, the token keys, volumes, read-only
roots.
"""
import json
import os
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import podman as pm  # noqa: E402
from harness import check, free_port, run, wait_for  # noqa: E402

PROJECT = "carshare-" + pm.RUN_ID
PORT = free_port()
IMAGES = {}


def compose(action):
    env = dict(os.environ, COMPOSE_PROJECT=PROJECT, GATEWAY_PORT=str(PORT), IMAGE_TAG=pm.TAG)
    return subprocess.run([os.path.join(pm.ROOT, "scripts", "run-containers.sh"), action],
                          env=env, capture_output=True, text=True, timeout=300)


def call(method, path, body=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (PORT, path), method=method,
                                 data=json.dumps(body).encode() if body else None, headers=headers)
    with urllib.request.urlopen(req, timeout=15) as r:
        return r.status, json.loads(r.read())


def in_postgres(service, sql):
    """Runs sql in service's database as service (its URL from the compose secrets) on the
    loopback of the PostgreSQL container's network namespace; returns psql's output."""
    keys = os.path.join(pm.ROOT, "build", "compose-keys-" + PROJECT)
    with open(os.path.join(keys, "db", service)) as f:
        url = f.read().replace("@postgres:5432/", "@127.0.0.1:5432/")
    pid = pm.inspect("container", PROJECT + "_postgres_1")["State"]["Pid"]
    r = subprocess.run(["nsenter", "--net=/proc/%d/ns/net" % pid, "psql", "-X", "-At", "-c", sql,
                        url], capture_output=True, text=True, timeout=30)
    return r.stdout.strip() if r.returncode == 0 else r.stderr.strip()


def test_up_rent_down():
    IMAGES.update(pm.build_images())
    up = compose("up")
    print("     " + up.stdout.strip())
    check(up.returncode == 0, "run-containers up: %s %s" % (up.stdout, up.stderr))
    who = {"customerId": "kim", "password": "correct horse battery"}
    code, _ = call("POST", "/accounts", dict(who, name="Kim Minji"))
    check(code == 201, "sign up: %d" % code)
    code, session = call("POST", "/sessions", who)
    token = session["token"]
    code, order = call("POST", "/orders", {"productId": "1001", "qty": 1,
                                           "cardNumber": "4111111111111111"}, token)
    check(code == 201 and order["status"] == "OrderApproved", "rent: %d %r" % (code, order))

    def shipped():
        code, page = call("GET", "/customerpages/%d" % order["id"], token=token)
        return page["status"] == "Shipped"
    wait_for(shipped, 60, "the customer page to show the rental Shipped")
    rows = {"order": "select count(*) from orders where id = %d" % order["id"],
            "payment": "select count(*) from payments where order_id = %d" % order["id"],
            "delivery": "select count(*) from deliveries where order_id = %d" % order["id"],
            "customerpage": "select count(*) from customer_pages where order_id = %d" % order["id"],
            "account": "select count(*) from accounts where customer_id = 'kim'"}
    for svc, sql in rows.items():
        got = in_postgres(svc, sql)
        check(got == "1", "%s's row of the rental in PostgreSQL: %r" % (svc, got))
    down = compose("down")
    check(down.returncode == 0, "run-containers down: %s" % down.stderr)
    left = pm.podman("ps", "-a", "--filter", "label=io.podman.compose.project=" + PROJECT,
                     "--format", "{{.Names}}").split()
    check(not left, "containers left after down: %s" % left)


def cleanup():
    compose("down")
    # Whatever a failed `down` left (containers restarting: restart unless-stopped), by label.
    label = "label=io.podman.compose.project=" + PROJECT
    for name in pm.podman("ps", "-a", "-q", "--filter", label, check=False).split():
        pm.podman("rm", "-f", name, check=False)
    pm.podman("network", "rm", PROJECT + "_default", check=False)
    for vol in pm.podman("volume", "ls", "-q", "--filter",
                         "label=io.podman.compose.project=" + PROJECT).split():
        pm.podman("volume", "rm", "-f", vol, check=False)
    pm.remove_images(IMAGES)
    subprocess.run(["rm", "-rf", os.path.join(pm.ROOT, "build", "compose-keys-" + PROJECT)])


if __name__ == "__main__":
    try:
        run(globals())
    finally:
        cleanup()
