"""test_balance.py: the gateway balancing one upstream over two real instances.

The upstream is customerpage: a read model that answers GETs from its own store, so two
processes of it answer the same questions alike -- under CARSHARE_DB=postgres they are two
replicas of one database (the deployment replicas are meant for); on SQLite each has its own
file, which is equal to the other's here because this test sends no events (SQLite stays one
process per service outside this test). order, account and payment keep state that a second
process on its own database would not see, so they are not used for this.

Checked: sequential GETs spread over both instances (each instance's own request counter
grows); an instance frozen with SIGSTOP leaves the rotation once its probe fails and every
request keeps succeeding on the other; SIGCONT brings it back; a killed instance's GETs that
failed to connect are retried on the other (every answer 200), and after failures in a row
it is ejected (the gateway's per-instance metrics say so); a host name in the URL, resolved
through a hosts file (RESOLVE_HOSTS_FILE) every 100 ms: a replica on another loopback address
added to the file is probed and chosen without a gateway restart, and once removed from it is
no longer chosen, while a client sends GETs all along and none of them fails."""
import http.client
import os
import re
import threading

from harness import System, check, free_port, run, wait_for, Proc, BIN

PATH = "/customerpages"


def served(s, name):
    """Requests on PATH the instance itself answered (its own /metrics)."""
    _, text, _ = s.call("GET", name, "/metrics")
    total = 0
    for line in text.splitlines():
        if line.startswith('carshare_http_requests_total{route="/customerpages"'):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def gw_metric(s, name, instance_port, address="127.0.0.1"):
    """A per-instance gateway metric for the customerpage instance on that port."""
    _, text, _ = s.call("GET", "gateway", "/metrics")
    pat = re.compile(r'^%s\{upstream="customerpage",instance="http://%s:%d"\} (\S+)$'
                     % (re.escape(name), re.escape(address), instance_port), re.M)
    m = pat.search(text)
    return float(m.group(1)) if m else None


def start_second(s, port, host="127.0.0.1"):
    """A second customerpage process: its own port (or address), and on SQLite its own data
    directory (the keys shared, by a symlink)."""
    env = s.env_for("customerpage")
    env["PORT"] = str(port)
    env["HOST"] = host
    if "CUSTOMERPAGE_DATABASE_URL" not in env:
        d = os.path.join(s.dir, "data2")
        os.makedirs(d, exist_ok=True)
        if not os.path.exists(os.path.join(d, "keys")):
            os.symlink(s.data("keys"), os.path.join(d, "keys"))
        env["DATA_DIR"] = d
    s.ports["customerpage2"] = port
    p = Proc("customerpage2", [os.path.join(BIN, "carshare-customerpage")], env,
             os.path.join(s.dir, "customerpage2.log"))
    p.start()
    s.procs["customerpage2"] = p
    if host == "127.0.0.1":
        s.wait_ready("customerpage2")
    return p


def gets(s, n):
    for _ in range(n):
        code, body, _ = s.call("GET", "gateway", PATH)
        check(code == 200, "GET %s through the gateway: %d %r" % (PATH, code, body))


def system(probe_ms):
    port_a = free_port()
    port_b = free_port()
    env = {
        "CUSTOMERPAGE_URL": "http://127.0.0.1:%d,http://127.0.0.1:%d" % (port_a, port_b),
        "GATEWAY_PROBE_INTERVAL_MS": str(probe_ms),
        "GATEWAY_EJECT_FAILURES": "2",
        "GATEWAY_EJECT_MS": "200",
        # A frozen instance's calls end fast instead of after 5 s.
        "GATEWAY_CUSTOMERPAGE_TIMEOUT_MS": "1000",
    }
    s = System(["customerpage", "gateway"], service_env={"gateway": env})
    s.ports["customerpage"] = port_a
    return s, port_a, port_b


def test_spread_freeze_thaw():
    s, port_a, port_b = system(100)
    with s:
        start_second(s, port_b)
        wait_for(lambda: gw_metric(s, "carshare_upstream_instance_ready", port_b) == 1, 15,
                 "the second instance to be probed ready")
        a0, b0 = served(s, "customerpage"), served(s, "customerpage2")
        gets(s, 20)
        a1, b1 = served(s, "customerpage"), served(s, "customerpage2")
        check(a1 - a0 >= 5 and b1 - b0 >= 5,
              "20 GETs not spread over both instances: %d and %d" % (a1 - a0, b1 - b0))
        check(gw_metric(s, "carshare_upstream_instance_chosen_total", port_a) >= 5,
              "the gateway does not count its choices per instance")

        # Frozen: its probe gets no answer, it leaves the rotation, the other serves everything.
        s.freeze("customerpage2")
        wait_for(lambda: gw_metric(s, "carshare_upstream_instance_ready", port_b) == 0, 15,
                 "the frozen instance to leave the rotation")
        chosen_b = gw_metric(s, "carshare_upstream_instance_chosen_total", port_b)
        a2 = served(s, "customerpage")
        gets(s, 10)
        check(served(s, "customerpage") - a2 == 10, "the live instance did not serve all 10")
        check(gw_metric(s, "carshare_upstream_instance_chosen_total", port_b) == chosen_b,
              "the frozen instance was still chosen")

        # Thawed: probed ready again, and chosen again.
        s.thaw("customerpage2")
        wait_for(lambda: gw_metric(s, "carshare_upstream_instance_ready", port_b) == 1, 15,
                 "the thawed instance to come back")
        b2 = served(s, "customerpage2")
        gets(s, 10)
        check(served(s, "customerpage2") - b2 >= 3, "the thawed instance is not chosen again")


def test_killed_instance_retried_and_ejected():
    # Probes every 10 minutes once ready: the killed instance is found by the calls themselves.
    s, port_a, port_b = system(600000)
    with s:
        start_second(s, port_b)
        wait_for(lambda: gw_metric(s, "carshare_upstream_instance_ready", port_b) == 1, 15,
                 "the second instance to be probed ready")
        gets(s, 4)
        s.procs["customerpage2"].kill()
        a0 = served(s, "customerpage")
        gets(s, 10)     # every one 200: those sent to the dead instance went to the other
        check(served(s, "customerpage") - a0 == 10, "the live instance did not serve all 10")
        check(gw_metric(s, "carshare_upstream_instance_retries_total", port_b) >= 1,
              "no GET was retried away from the killed instance")
        check(gw_metric(s, "carshare_upstream_instance_ejections_total", port_b) == 1,
              "the killed instance was not ejected once")
        check(gw_metric(s, "carshare_upstream_instance_ready", port_b) == 0,
              "the killed instance is still in the rotation")
        # Ejected: no more attempts on it (the retries stop growing).
        retries = gw_metric(s, "carshare_upstream_instance_retries_total", port_b)
        gets(s, 6)
        check(gw_metric(s, "carshare_upstream_instance_retries_total", port_b) == retries,
              "the ejected instance is still tried")
        # A POST goes elsewhere only when it was never sent (nothing to POST on customerpage:
        # test_gateway.py's test_unsent_call_goes_to_another_instance shows it, the rule itself
        # is unit tested in tests/unit/lib/test_balance.c).


def served_at(s, address, port):
    """served() for an instance on another loopback address (its own /metrics)."""
    conn = http.client.HTTPConnection(address, port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers=s.auth())
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith('carshare_http_requests_total{route="/customerpages"'))


def write_hosts(path, addresses):
    """The hosts file as a script rewrites it: a new file renamed over the old one."""
    with open(path + ".new", "w") as f:
        for a in addresses:
            f.write("%s cp.carshare.test\n" % a)
    os.replace(path + ".new", path)


def test_replica_added_and_removed_by_name():
    port = free_port()
    s = System(["customerpage", "gateway"])
    hosts = os.path.join(s.dir, "hosts")
    write_hosts(hosts, ["127.0.0.1"])
    s.service_env = {"gateway": {
        "CUSTOMERPAGE_URL": "http://cp.carshare.test:%d" % port,
        "RESOLVE_HOSTS_FILE": hosts,
        "RESOLVE_INTERVAL_MS": "100",
        "GATEWAY_PROBE_INTERVAL_MS": "100",
    }}
    s.ports["customerpage"] = port
    with s:
        wait_for(lambda: gw_metric(s, "carshare_upstream_instance_ready", port) == 1, 15,
                 "the name's one address to be an instance")
        # A client sending GETs all along: none may fail.
        stop, failures, sent = threading.Event(), [], [0]

        def client():
            while not stop.is_set():
                code, body, _ = s.call("GET", "gateway", PATH)
                sent[0] += 1
                if code != 200:
                    failures.append((code, body))
        t = threading.Thread(target=client)
        t.start()
        try:
            # Added: a replica on 127.0.0.2, same port, then named in the hosts file.
            start_second(s, port, "127.0.0.2")
            wait_for(lambda: served_at(s, "127.0.0.2", port) >= 0, 15, "the replica to listen")
            write_hosts(hosts, ["127.0.0.1", "127.0.0.2"])
            wait_for(lambda: gw_metric(s, "carshare_upstream_instance_ready", port,
                                       "127.0.0.2") == 1, 15, "the added replica to be probed ready")
            b0 = served_at(s, "127.0.0.2", port)
            wait_for(lambda: served_at(s, "127.0.0.2", port) - b0 >= 5, 15,
                     "the added replica to be chosen")
            # Removed from the name: no longer chosen, its calls finish, nothing fails.
            write_hosts(hosts, ["127.0.0.1"])
            wait_for(lambda: gw_metric(s, "carshare_upstream_instance_ready", port,
                                       "127.0.0.2") == 0, 15, "the removed replica to leave")
            b1 = served_at(s, "127.0.0.2", port)
            n = sent[0]
            wait_for(lambda: sent[0] - n >= 20, 30, "20 more GETs")
            check(served_at(s, "127.0.0.2", port) == b1, "the removed replica is still chosen")
        finally:
            stop.set()
            t.join()
        check(not failures, "requests failed while a replica came and went: %r" % failures[:3])
        check(sent[0] >= 20, "the client sent only %d GETs" % sent[0])


if __name__ == "__main__":
    run(globals())
