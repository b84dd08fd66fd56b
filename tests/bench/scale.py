"""scale.py: what a second replica buys, and what a rolling redeploy costs, as `make bench-scale` does.

    python3 tests/bench/scale.py [BIN_DIR]        (or CARSHARE_BIN=BIN_DIR)

Two runs of `make run CLUSTER=1` (scripts/run.py itself, through tests/e2e/cluster_run.py: three
nats-server nodes, the stream at replicas 3, PostgreSQL), the first with one instance of every
service that has a PostgreSQL store (CLUSTER_REPLICAS=1), the second with two. In each, after a
warm-up, rentals (POST /orders through the gateway: a reservation, a synchronous payment, the
events) are driven for SCALE_SECONDS by wrk with `make bench`'s own script and fleet
(tests/bench/load.lua, bench.py's write_fleet: models that never run out of cars), and the run
reports:

  rentals_per_s   answers 201 per second (anything else is an error, counted apart)
  cpu_ms          CPU time (user + system) of every process of the system per rental: the
                  services, the three nats-server nodes, and PostgreSQL (postmaster and its
                  backends, the ones that ended included), read from /proc

Then, in the two-replica run only, the rolling redeploy of every service (scripts/rollout.py)
under a steady load (tests/e2e/steady_load.py: SCALE_ROLLOUT_WORKERS workers, each a whole rental
life per round: rent, read, customer page, deliveries, cancel), and every answer is checked:

  rollout_answers, rollout_failed, rollout_worst_ms, rollout_p99_ms, rollout_s

The machine has two cores shared with everything else, so the second replica cannot double
anything: it shows what the replicas cost (CPU per rental) and whether the single instance was the
limit. It ends with one line, `bench-scale: ...`. Environment: SCALE_SECONDS (20), SCALE_WARMUP (3),
SCALE_ROLLOUT_WORKERS (3), BENCH_THREADS / BENCH_CONNECTIONS (bench.py's: 2 / 32), CARSHARE_KEEP=1
keeps the temporary directories.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

import bench   # bench.py: its wrk driver, fleet and tokens file format (reads BIN from argv/env)

sys.path.insert(0, os.path.join(bench.ROOT, "tests", "e2e"))
from cluster_run import ClusterRun  # noqa: E402
from steady_load import Load  # noqa: E402

SECONDS = bench.env_int("SCALE_SECONDS", 20)
WARMUP = bench.env_int("SCALE_WARMUP", 3)
ROLLOUT_WORKERS = bench.env_int("SCALE_ROLLOUT_WORKERS", 3)
HZ = os.sysconf("SC_CLK_TCK")


def note(text):
    print("bench-scale: " + text, file=sys.stderr, flush=True)


def system_pids(c):
    """Every process of the system now: run.py's children, and PostgreSQL's postmaster with its
    backends (pg_ctl starts the postmaster outside run.py's tree)."""
    st = c.state()
    pids = [n["pid"] for n in st["nats"] if n["pid"]]
    pids += [i["pid"] for slots in st["services"].values() for i in slots if i["pid"]]
    pg = (st.get("postgres") or {}).get("pid")
    if pg:
        pids.append(pg)
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open("/proc/%s/stat" % entry) as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == pg:
                            pids.append(int(entry))
                except (OSError, IndexError, ValueError):
                    pass
    return pids, pg


def cpu_ticks(c):
    """User + system ticks of the system's processes, plus what PostgreSQL's ended backends
    spent (the postmaster's children's times, counted once they are reaped)."""
    pids, pg = system_pids(c)
    total = bench.cpu_ticks(pids)
    if pg:
        try:
            with open("/proc/%d/stat" % pg) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[13]) + int(fields[14])   # cutime, cstime
        except (OSError, IndexError, ValueError):
            pass
    return total


def prepare_tokens(c, workdir):
    path = os.path.join(workdir, "tokens.txt")
    with open(path, "w") as f:
        for i in range(bench.BENCH_CUSTOMERS):
            f.write(c.token("bench-%d" % i, "customer") + "\n")
    bench.AUTH["customer_file"] = path


def measure_rentals(c, label):
    port = c.gateway_port()
    bench.run_wrk(label + " warm-up", port, "/orders", WARMUP, "rent", 201)
    t0, cpu0 = time.monotonic(), cpu_ticks(c)
    r = bench.run_wrk(label, port, "/orders", SECONDS, "rent", 201)
    cpu1, t1 = cpu_ticks(c), time.monotonic()
    if not r:
        return None
    good = r["requests"] - r["unexpected"]
    cpu_s = (cpu1 - cpu0) / HZ
    return {"rentals_per_s": round(r["per_s"], 1), "errors": r["errors"],
            "cpu_ms": round(cpu_s * 1000.0 / good, 2) if good else None,
            "cpu_cores": round(cpu_s / (t1 - t0), 2)}


def measure_rollout(c):
    load = Load("127.0.0.1", c.gateway_port(), c.token("rollout", "customer"), c.token("admin", "staff"),
                workers=ROLLOUT_WORKERS)
    load.start("rollout")
    time.sleep(2)
    t0 = time.monotonic()
    code, out = c.rollout()
    took = time.monotonic() - t0
    time.sleep(2)
    load.stop()
    for line in out.splitlines():
        if "NOT rolled" in line or "instance(s) replaced" in line:
            note(line.replace("rollout: ", "rollout "))
    for what, status, body in load.failures[:5]:
        note("rollout: unexpected answer to %s: %s %s" % (what, status, body))
    f = load.figures()
    return {"rollout_answers": f["answers"], "rollout_failed": f["failed"],
            "rollout_resends": f["resends"], "rollout_worst_ms": f["worst_ms"],
            "rollout_p99_ms": f["p99_ms"], "rollout_s": round(took, 1),
            "rolled": ",".join(sorted(line.split(":")[1].strip() for line in out.splitlines()
                                      if "instance(s) replaced" in line)) or "none"}


def one_run(replicas, results):
    workdir = tempfile.mkdtemp(prefix="carshare-scale-")
    fleet = os.path.join(workdir, "fleet.json")
    bench.write_fleet(fleet)
    c = ClusterRun(workdir, {"CLUSTER_REPLICAS": str(replicas), "FLEET_FILE": fleet,
                             "LOG_LEVEL": bench.LOG_LEVEL})
    try:
        c.start()
        results["replicated"] = ",".join(sorted(c.state()["replicated"]))
        prepare_tokens(c, workdir)
        m = measure_rentals(c, "%d replica(s)" % replicas)
        if m:
            for k, v in m.items():
                results["%s_%d" % (k, replicas)] = v
        if replicas == 2:
            results.update(measure_rollout(c))
    finally:
        c.stop()
        if os.environ.get("CARSHARE_KEEP") != "1":
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            note("kept %s" % workdir)


def main():
    if not bench.WRK:
        note("wrk is not installed (apt-get install wrk)")
        return 1
    results = {}
    for replicas in (1, 2):
        one_run(replicas, results)
    keys = ["rentals_per_s_1", "rentals_per_s_2", "cpu_ms_1", "cpu_ms_2", "cpu_cores_1", "cpu_cores_2",
            "errors_1", "errors_2", "rollout_answers", "rollout_failed", "rollout_resends",
            "rollout_worst_ms", "rollout_p99_ms", "rollout_s", "rolled", "replicated"]
    print("bench-scale: " + " ".join("%s=%s" % (k, results.get(k, "n/a")) for k in keys), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
