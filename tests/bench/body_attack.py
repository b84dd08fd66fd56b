"""body_attack.py: the gateway's memory and descriptors under slow large bodies and slow heads.

    python3 tests/bench/body_attack.py [BIN_DIR] [LABEL]     (BIN_DIR defaults to build/bin)

Issue 16 measured the attack on the evhttp server: 100 connections each sending a large body
slowly took the gateway from 12 MB to 111 MB. This repeats it against a real gateway (with order
and nats-server behind it, started by tests/e2e/harness.py on free loopback ports, a fresh system
for every scenario so that VmHWM is the scenario's own peak), for each of BODY_ATTACK_CONNS
connection counts (default 100,500) and each scenario:

  under      each connection declares a body just under HTTP_MAX_BODY (limit - 1 bytes) and
             sends all of it but the last byte, in BODY_ATTACK_ROUNDS pieces spaced by
             BODY_ATTACK_INTERVAL_MS (default 8 x 250 ms): the most a connection can make the
             server hold, since the request never completes (bounded: one request per connection)
  over       each declares limit + 1 bytes and sends them the same way (refused at the head:
             413 before the body is read)
  over_1mib  each declares 1 MiB, the issue's attack (evhttp buffered up to 1 MiB before
             refusing)
  heads      each sends a request line and header lines slowly, about 7 KB in all (under
             HTTP_MAX_HEADERS), never the empty line that ends them

It samples the gateway's VmRSS and open descriptors every 20 ms: at start (all processes ready,
no attack yet), peak (the largest sample while the connections are open; VmHWM too) and after
(every attacking connection closed by the client and gone from the gateway's descriptors, or 5 s
later, then BODY_ATTACK_SETTLE_S more, default 3: a process gives freed heap back every 2 s,
lib/service.c). Answers say how the server ended the connections (413, closed, or nothing yet). One
line per scenario, starting "body_attack:", then a table; BODY_ATTACK_OUT writes the figures as
JSON. It judges nothing: the exit code is 0 when every system started.

The same script measures an older build: pass its bin directory (its gateway, order and account
binaries are what is started; the harness and this script are this tree's).
"""
import json
import os
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "bin"))
LABEL = sys.argv[2] if len(sys.argv) > 2 else os.path.basename(os.path.dirname(os.path.dirname(BIN)))
os.environ["CARSHARE_BIN"] = BIN          # harness reads it at import
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import harness  # noqa: E402

MAX_BODY = 65536                          # HTTP_MAX_BODY, given to the gateway explicitly
CONNS = [int(n) for n in os.environ.get("BODY_ATTACK_CONNS", "100,500").split(",")]
ROUNDS = int(os.environ.get("BODY_ATTACK_ROUNDS", "8"))
INTERVAL = int(os.environ.get("BODY_ATTACK_INTERVAL_MS", "250")) / 1000.0
SETTLE = float(os.environ.get("BODY_ATTACK_SETTLE_S", "3"))
SCENARIOS = os.environ.get("BODY_ATTACK_SCENARIOS", "under,over,over_1mib,heads").split(",")
HEAD = "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def proc_figures(pid):
    """(VmRSS kB, VmHWM kB, open descriptors) of pid."""
    rss = hwm = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm, len(os.listdir("/proc/%d/fd" % pid))


class Sampler(threading.Thread):
    """The largest VmRSS and descriptor count seen every 20 ms until stopped."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.rss, self.fds = pid, 0, 0
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            rss, _, fds = proc_figures(self.pid)
            self.rss, self.fds = max(self.rss, rss), max(self.fds, fds)
            self.done.wait(0.02)

    def stop(self):
        self.done.set()
        self.join()


def pieces(scenario):
    """(the bytes sent at once, the pieces sent one a round after them)."""
    if scenario == "heads":
        line = "X-Slow-%d: " + "a" * 850 + "\r\n"
        return HEAD.encode(), [(line % i).encode() for i in range(ROUNDS)]
    declared = {"under": MAX_BODY - 1, "over": MAX_BODY + 1, "over_1mib": 1 << 20}[scenario]
    body = declared - 1                   # the last byte is never sent
    step = -(-body // ROUNDS)
    sizes = [min(step, body - i * step) for i in range(ROUNDS)]
    return (HEAD + "Content-Length: %d\r\n\r\n" % declared).encode(), [b"x" * n for n in sizes if n > 0]


def send_some(conn, data):
    """Sends what the socket takes without waiting; False once the server has closed it."""
    sock, pending = conn
    pending.extend(data)
    try:
        while pending:
            n = sock.send(pending)
            del pending[:n]
    except BlockingIOError:
        pass
    except OSError:
        pending.clear()
        return False
    return True


def ending(sock):
    """How the server ended the connection so far: its status code, "closed" or "open"."""
    try:
        data = sock.recv(4096)
    except BlockingIOError:
        return "open"
    except OSError:
        return "closed"
    if not data:
        return "closed"
    parts = data.split(b" ", 2)
    return parts[1].decode("latin-1") if len(parts) > 1 and data.startswith(b"HTTP/") else "other"


def attack(scenario, n):
    with harness.System(["order", "gateway"], env={"HTTP_MAX_BODY": str(MAX_BODY)}) as system:
        pid = system.procs["gateway"].pid
        port = system.ports["gateway"]
        time.sleep(0.5)                   # settled after its readiness probes
        start_rss, _, start_fds = proc_figures(pid)
        sampler = Sampler(pid)
        sampler.start()
        first, rounds = pieces(scenario)
        conns = []
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setblocking(False)
            conns.append((sock, bytearray()))
        for conn in conns:
            send_some(conn, first)
        for piece in rounds:
            time.sleep(INTERVAL)
            for conn in conns:
                send_some(conn, piece)
        time.sleep(1.0)                   # everything sent has been read (or refused)
        endings = {}
        for sock, _ in conns:
            e = ending(sock)
            endings[e] = endings.get(e, 0) + 1
        for sock, _ in conns:
            sock.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc_figures(pid)[2] > start_fds:
            time.sleep(0.05)
        time.sleep(SETTLE)
        sampler.stop()
        after_rss, hwm, after_fds = proc_figures(pid)
    return {"server": LABEL, "scenario": scenario, "connections": n,
            "rss_kb": {"start": start_rss, "peak": sampler.rss, "after": after_rss, "hwm": hwm},
            "fds": {"start": start_fds, "peak": sampler.fds, "after": after_fds},
            "endings": endings}


def line(r):
    rss, fds = r["rss_kb"], r["fds"]
    return ("body_attack: server=%s scenario=%s conns=%d rss_mb start=%.1f peak=%.1f after=%.1f "
            "hwm=%.1f fds start=%d peak=%d after=%d endings=%s"
            % (r["server"], r["scenario"], r["connections"], rss["start"] / 1024.0,
               rss["peak"] / 1024.0, rss["after"] / 1024.0, rss["hwm"] / 1024.0, fds["start"],
               fds["peak"], fds["after"],
               ",".join("%s:%d" % kv for kv in sorted(r["endings"].items()))))


def main():
    print("body_attack: gateway from %s, HTTP_MAX_BODY=%d, %d rounds every %d ms"
          % (BIN, MAX_BODY, ROUNDS, INTERVAL * 1000), flush=True)
    results = []
    for n in CONNS:
        for scenario in SCENARIOS:
            r = attack(scenario, n)
            results.append(r)
            print(line(r), flush=True)
    print("\n%-10s %-10s %5s %8s %8s %8s %8s %6s %6s %6s" % (
        "server", "scenario", "conns", "rss MB", "peak", "after", "hwm", "fds", "peak", "after"))
    for r in results:
        rss, fds = r["rss_kb"], r["fds"]
        print("%-10s %-10s %5d %8.1f %8.1f %8.1f %8.1f %6d %6d %6d" % (
            r["server"], r["scenario"], r["connections"], rss["start"] / 1024.0,
            rss["peak"] / 1024.0, rss["after"] / 1024.0, rss["hwm"] / 1024.0, fds["start"],
            fds["peak"], fds["after"]))
    out = os.environ.get("BODY_ATTACK_OUT")
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
