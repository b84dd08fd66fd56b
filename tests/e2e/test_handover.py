"""test_handover.py: a new gateway takes over the public port from the running one, which then
drains, while clients keep sending requests: none is refused, reset or failed (issue 14).

The two processes share the port by sharing ONE listening socket: the running gateway offers
it on HTTP_HANDOVER_SOCKET and the new one, at start, receives it (lib/http_handover.c), so
the old one's stop closes nothing a waiting connection was queued on. Clients open a fresh
connection for every request, so each one goes through the accept queue that a plain
SO_REUSEPORT rollout would reset. A third release then takes the socket from the second, as the
next rollout would. Every exit is 0.
"""
import http.client
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BIN, Proc, System, check, run, wait_for  # noqa: E402

CLIENTS = 3


class Load:
    """CLIENTS threads, each sending GET /health/live on a new connection, again and again."""

    def __init__(self, port):
        self.port, self.sent, self.failures = port, 0, []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client) for _ in range(CLIENTS)]

    def client(self):
        while not self.stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/health/live")
                resp = conn.getresponse()
                resp.read()
                ok, what = resp.status == 200, resp.status
            except (OSError, http.client.HTTPException) as e:
                ok, what = False, repr(e)
            finally:
                conn.close()
            with self.lock:
                self.sent += 1
                if not ok:
                    self.failures.append(what)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()
        return False

    def more(self, n, what):
        start = self.sent
        wait_for(lambda: self.sent - start >= n, 30, "%d more requests %s" % (n, what))


def release(s, n):
    """Gateway release n, started beside the running one, on the same port and socket path."""
    p = Proc("gateway%d" % n, [os.path.join(BIN, "carshare-gateway")], s.env_for("gateway"),
             os.path.join(s.dir, "gateway%d.log" % n))
    p.start()
    s.procs["gateway%d" % n] = p
    wait_for(lambda: "listening socket taken over" in open(p.log_path).read(), 15,
             "release %d to take the listening socket over" % n)
    return p


def served(proc):
    """Requests the process logged."""
    return open(proc.log_path).read().count("msg=request ")


def test_rollout_under_load():
    s = System(["gateway"], nats=False)
    path = os.path.join(s.dir, "gateway.sock")
    s.service_env = {"gateway": {"HTTP_HANDOVER_SOCKET": path}}
    with s:
        first = s.procs["gateway"]
        with Load(s.ports["gateway"]) as load:
            load.more(50, "to the first release")
            previous = first
            for n in (2, 3):
                new = release(s, n)
                # Both accept from the one socket until the old one stops.
                wait_for(lambda: served(new) > 0, 30, "release %d to serve" % n)
                code = previous.stop()
                check(code == 0, "the old release exited with %r" % code)
                load.more(100, "after the old release stopped")
                check(not load.failures, "requests failed during the hand-over: %r"
                      % load.failures[:5])
                previous = new
        check(not load.failures, "requests failed: %r" % load.failures[:5])
        check(load.sent >= 250, "only %d requests sent" % load.sent)
        check(os.path.exists(path), "the last release no longer offers its socket")


if __name__ == "__main__":
    run(globals())
