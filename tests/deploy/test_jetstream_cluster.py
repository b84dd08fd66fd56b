"""test_jetstream_cluster.py: prod's bus, as deploy/k8s/overlays/prod configures it, is a working
3-server JetStream cluster, and a service keeps the stream on all three (BUS_STREAM_REPLICAS=3).

Three containers of the nats image run the prod overlay's own nats.conf and the base's
nats-auth/auth.conf (rendered by kubectl kustomize from a copy with fresh secrets), with the
passwords from the overlay's Secret in their environment, as the StatefulSet gives them. Only
what one machine needs is changed: the host's network, 127.0.0.1 and free ports, and routes to
those ports instead of the headless Service's names (nats-<i>.nats-cluster:6222). Then:
  - the three servers form the cluster and JetStream is ready on each (/healthz);
  - payment (the real binary, as its bus user) creates the stream with 3 replicas: its leader
    and two followers are on the three servers (/jsz);
  - one server is stopped: the stream keeps a leader, and a client without credentials is still
    refused by the others.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kubeplay  # noqa: E402
import podman as pm  # noqa: E402
import test_manifests as tm  # noqa: E402
from harness import Proc, check, free_port, run, wait_for  # noqa: E402

TMP = tempfile.mkdtemp(prefix="carshare-js-")
os.chmod(TMP, 0o755)
NODES = [{"client": free_port(), "cluster": free_port(), "monitor": free_port()} for _ in range(3)]
STATE = {"images": {}, "containers": [], "procs": []}


def prod_configs():
    """nats.conf and auth.conf as the prod overlay renders them, and the Secret's passwords."""
    docs = tm.render("prod")
    conf = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("nats-config")][0]
    auth = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("nats-auth")][0]
    import base64
    secret = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].startswith("carshare-nats")][0]
    passwords = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    return conf["data"]["nats.conf"], auth["data"]["auth.conf"], passwords


def node_conf(text, i):
    """The prod nats.conf for node i on this machine's loopback ports (kubeplay.py's rewrite,
    which the prod layout's play uses too)."""
    return kubeplay.nats_node_conf(text, NODES, i)


def monitor(i, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (NODES[i]["monitor"], path), timeout=3) as r:
        return json.loads(r.read())


def healthy(i):
    try:
        return monitor(i, "/healthz?js-enabled-only=true").get("status") == "ok"
    except OSError:
        return False


def test_three_servers_form_a_jetstream_cluster():
    STATE["images"] = pm.build_images()
    conf, auth, passwords = prod_configs()
    STATE["passwords"] = passwords
    for i in range(3):
        d = os.path.join(TMP, "nats-%d" % i)
        os.makedirs(os.path.join(d, "nats"))
        os.makedirs(os.path.join(d, "nats-auth"))
        with open(os.path.join(d, "nats", "nats.conf"), "w") as f:
            f.write(node_conf(conf, i))
        with open(os.path.join(d, "nats-auth", "auth.conf"), "w") as f:
            f.write(auth)
        name = "carshare-%s-nats-%d" % (pm.RUN_ID, i)
        env = ["-e", "POD_NAME=nats-%d" % i]
        for user, pw in passwords.items():
            env += ["-e", "%s_PASSWORD=%s" % (user.upper(), pw)]
        pm.podman("run", "-d", "--name", name, "--network", "host", "--read-only",
                  "--tmpfs", "/tmp", "-v", "/data", "-v", "%s:/etc/nats:ro" % d, *env,
                  STATE["images"]["nats"], "-c", "/etc/nats/nats/nats.conf")
        STATE["containers"].append(name)
    for i in range(3):
        try:
            wait_for(lambda: healthy(i), 60, "nats-%d's JetStream" % i)
        except AssertionError:
            logs = subprocess.run(["podman", "logs", "--tail", "20", STATE["containers"][i]],
                                  capture_output=True, text=True)
            print(logs.stdout + logs.stderr)
            raise
    wait_for(lambda: monitor(0, "/routez")["num_routes"] >= 2, 60, "nats-0's routes to both peers")


def stream_info(i):
    return pm.nats_stream(NODES[i]["monitor"])


def test_payment_keeps_the_stream_on_all_three():
    keys = os.path.join(TMP, "keys")
    os.makedirs(keys)
    for name in ("account", "order"):
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out",
                        os.path.join(keys, name + ".key")], check=True)
        subprocess.run(["openssl", "pkey", "-in", os.path.join(keys, name + ".key"), "-pubout",
                        "-out", os.path.join(keys, name + ".pub")], check=True)
    env = dict(os.environ, HOST="127.0.0.1", PORT=str(free_port()), DATA_DIR=os.path.join(TMP, "data"),
               NATS_URL="nats://127.0.0.1:%d" % NODES[0]["client"], NATS_USER="payment",
               NATS_PASSWORD=STATE["passwords"]["payment"], BUS_STREAM_REPLICAS="3",
               TOKEN_PUBLIC_KEYS=os.path.join(keys, "account.pub"),
               TOKEN_SERVICE_KEYS=os.path.join(keys, "order.pub"))
    os.makedirs(env["DATA_DIR"], mode=0o700)
    p = Proc("payment", [os.path.join(pm.BIN, "carshare-payment")], env,
             os.path.join(TMP, "payment.log"))
    p.start()
    STATE["procs"].append(p)

    def replicated():
        s = stream_info(0)
        return s if s and s.get("cluster", {}).get("leader") and \
            len(s["cluster"].get("replicas", [])) == 2 else None
    try:
        s = wait_for(replicated, 60, "the stream on three servers")
    except AssertionError:
        with open(os.path.join(TMP, "payment.log")) as f:
            print(f.read()[-3000:])
        raise
    check(s["config"]["num_replicas"] == 3, "stream config %r" % s["config"])
    # Seen from nats-0: the leader, and the peers other than the one answering.
    servers = {"nats-0", s["cluster"]["leader"]} | {r["name"] for r in s["cluster"]["replicas"]}
    check(servers == {"nats-0", "nats-1", "nats-2"}, "stream on %s: %r" % (servers, s["cluster"]))


def test_one_server_down_the_stream_stays():
    pm.podman("stop", "-t", "20", STATE["containers"][2])
    state = pm.inspect("container", STATE["containers"][2])["State"]
    check(state["ExitCode"] == 0, "nats-2 exited %s" % state["ExitCode"])

    def led():
        s = stream_info(0)
        return s and s.get("cluster", {}).get("leader") in ("nats-0", "nats-1")
    wait_for(led, 60, "a stream leader on the two servers left")
    import socket
    with socket.create_connection(("127.0.0.1", NODES[1]["client"]), timeout=5) as c:
        f = c.makefile("rwb")
        f.readline()
        f.write(b'CONNECT {"verbose":false}\r\nPING\r\n')
        f.flush()
        check(b"Authorization" in f.readline(), "an anonymous client was let in")


def cleanup():
    for p in STATE["procs"]:
        p.stop()
    for name in STATE["containers"]:
        pm.podman("rm", "-f", "-v", name, check=False)
    pm.remove_images(STATE["images"])
    shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    try:
        run({k: v for k, v in globals().items() if k.startswith("test_") and v.__module__ == __name__})
    finally:
        cleanup()
