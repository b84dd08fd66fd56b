"""End-to-end: the data directory's filesystem fills up, then space returns.

The test mounts a small tmpfs as the data directory of the whole system (every database, the keys),
rents, fills the filesystem to the last byte, and checks what a customer and an operator see:
rentals get 503 (not 500, no crash; one that still fits in space a file already holds is
accepted and must stand), every process stays up, nothing acknowledged before is lost
or corrupted (integrity_check on every database, every accepted rental still there and settled).
Then the filler is removed: rentals succeed again by themselves, and the events that could not be
applied while the disk was full are applied (a storage failure is retried, never dead-lettered).
Needs root (mount); the tmpfs is unmounted at the end whatever happens.
"""
import os
import sqlite3
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import System, check, run, wait_for  # noqa: E402
from rental_checks import orders, problems, rent  # noqa: E402

SERVICES = ["payment", "order", "delivery", "customerpage"]


def fill(path):
    """Writes zeros until the filesystem refuses (ENOSPC)."""
    block = b"\0" * 65536
    # Unbuffered: with a buffer, the bytes still in it are flushed by close() when the `with`
    # ends, and that ENOSPC escapes the try below.
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
                f.flush()
        except OSError:
            pass
    for size in (4096, 512, 1):     # and the last crumbs
        try:
            with open(path, "ab", buffering=0) as f:
                while True:
                    f.write(b"\0" * size)
                    f.flush()
        except OSError:
            pass


def integrity(data):
    for name in sorted(os.listdir(data)):
        if name.endswith(".db"):
            db = sqlite3.connect("file:%s?mode=ro" % os.path.join(data, name), uri=True, timeout=30)
            result = db.execute("PRAGMA integrity_check").fetchone()[0]
            db.close()
            check(result == "ok", "%s: integrity_check says %r" % (name, result))


def alive(s):
    for name in SERVICES:
        check(s.procs[name].running(), "%s died:\n%s" % (name, s.log(name)[-2000:]))
        code = s.call("GET", name, "/health/live", timeout=5)[0]
        check(code == 200, "%s not live: %d" % (name, code))


def metric(s, name, service):
    code, text, _ = s.call("GET", service, "/metrics")
    for line in (text if isinstance(text, str) else "").splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def count(data, db_name, sql):
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(data, db_name), uri=True, timeout=30)
    n = db.execute(sql).fetchone()[0]
    db.close()
    return n


def test_disk_full_refuses_rentals_and_recovers():
    # customerpage gives up on a failing event after 2 deliveries: a full disk must not count.
    # The data directory's filesystem is what fills up: every service on its SQLite file there,
    # whatever backend the suite runs on (PostgreSQL's own disk is the server's business).
    s = System(SERVICES, service_env={"customerpage": {"BUS_MAX_DELIVER": "2", "BUS_RETRY_MS": "50"}},
               db="sqlite")
    data = os.path.join(s.dir, "data")
    os.makedirs(data, mode=0o700, exist_ok=True)
    subprocess.check_call(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", data])
    try:
        with s:
            s.freeze("customerpage")        # its events wait for it in the stream
            accepted = []
            for _ in range(3):
                code, body, _ = rent(s)
                check(code == 201, "rental before the disk filled: %d %r" % (code, body))
                accepted.append(body["id"])
            wait_for(lambda: not problems(s), 30, "the first rentals settled")

            filler = os.path.join(data, "filler")
            fill(filler)
            s.thaw("customerpage")          # its events now fail: the disk is full
            wait_for(lambda: metric(s, "carshare_bus_redeliveries_total", "customerpage") >= 3, 60,
                     "customerpage retrying its events on the full disk")
            # A write that fits in space a file already has (the WAL is reused after each
            # checkpoint) may still succeed: such a rental is accepted and must stand. Every other
            # answer is 503, and the disk being full shows up as one soon enough.
            codes = []
            while len(codes) < 50 and 503 not in codes:
                code, body, _ = rent(s)
                codes.append(code)
                if code == 201:
                    accepted.append(body["id"])
            check(503 in codes and set(codes) <= {201, 503},
                  "rentals on a full disk answered %r" % codes)
            alive(s)
            ids = [o["id"] for o in orders(s)]
            check(all(i in ids for i in accepted), "accepted rentals lost: %r not in %r" % (accepted, ids))

            os.remove(filler)
            wait_for(lambda: rent(s)[0] == 201, 60, "a rental accepted once space returned")
            wait_for(lambda: not problems(s), 60, "everything settled after the disk was full")
            wait_for(lambda: count(data, "customerpage.db", "SELECT COUNT(*) FROM customer_pages") >= 4,
                     60, "the customer page caught up")
            check(count(data, "customerpage.db", "SELECT COUNT(*) FROM dead_letters") == 0,
                  "events set aside as dead letters because the disk was full")
            ids = [o["id"] for o in orders(s)]
            check(all(i in ids for i in accepted), "accepted rentals lost: %r not in %r" % (accepted, ids))
            alive(s)
        integrity(data)
    finally:
        subprocess.call(["umount", "-l", data])


run(globals())
