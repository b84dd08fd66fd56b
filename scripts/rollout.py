#!/usr/bin/env python3
"""rollout.py: a rolling redeploy of a running `make run CLUSTER=1`, as `make rollout` does.

    scripts/rollout.py               every service, in the order run.py starts them
    scripts/rollout.py order         one service (or several: order delivery)

Why a request and not the work itself: run.py supervises every process (it restarts one that
exits), so it is run.py that must replace them, or it would restart the old instance the moment it
exits. This script finds run.py through DATA_DIR/cluster.json (the state file run.py keeps: ports
and PIDs), drops a request in DATA_DIR/rollout/request.json, then follows DATA_DIR/rollout/<id>.log
and prints each step until <id>.json says how it ended. What run.py does for each instance (its
docstring has the whole of it): start a new one in the service's empty slot from the binaries now
built, wait until it is ready and the gateway's probe has it ready, then SIGTERM the old one, which
drains (readiness 503, DRAIN_MS more of serving with Connection: close, in-flight requests
finished) and must exit 0.

Exit status: 0 when every instance asked for was replaced, 1 otherwise (a service that could not be
rolled says why: e.g. one still on SQLite runs single), 2 when no clustered system runs.
"""
import json
import os
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.abspath(os.environ.get("DATA_DIR", os.path.join(ROOT, "data", "cluster")))
ORDER = ["account", "payment", "order", "delivery", "customerpage", "gateway"]


def running_cluster():
    """The state run.py keeps, if its run.py is alive; else None."""
    try:
        with open(os.path.join(DATA_DIR, "cluster.json")) as f:
            state = json.load(f)
        os.kill(state["run_pid"], 0)
        return state
    except (OSError, ValueError, KeyError):
        return None


def request(services):
    """Leaves the request for run.py; returns its id."""
    rid = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    d = os.path.join(DATA_DIR, "rollout")
    os.makedirs(d, mode=0o700, exist_ok=True)
    path = os.path.join(d, "request.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"id": rid, "services": services}, f)
    os.replace(path + ".tmp", path)
    return rid


def follow(rid, timeout_s):
    """Prints the rollout's log as it grows; returns its outcome (or None after timeout_s)."""
    d = os.path.join(DATA_DIR, "rollout")
    logp, done = os.path.join(d, rid + ".log"), os.path.join(d, rid + ".json")
    shown, deadline = 0, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if os.path.exists(logp):
            with open(logp) as f:
                lines = f.read().splitlines()
            for line in lines[shown:]:
                print("rollout: " + line.split(" ", 1)[1], flush=True)
            shown = len(lines)
        if os.path.exists(done):
            with open(done) as f:
                return json.load(f)
        if running_cluster() is None:
            print("rollout: run.py stopped before the rollout ended", file=sys.stderr)
            return None
        time.sleep(0.2)
    return None


def main(argv):
    services = argv or ORDER
    unknown = [s for s in services if s not in ORDER]
    if unknown:
        print("rollout: unknown service %s (one of %s)" % (", ".join(unknown), ", ".join(ORDER)),
              file=sys.stderr)
        return 2
    if running_cluster() is None:
        print("rollout: no `make run CLUSTER=1` is running with data in %s" % DATA_DIR, file=sys.stderr)
        return 2
    rid = request(services)
    print("rollout: %s of %s (request %s)" % ("every service" if not argv else "the service",
                                               ", ".join(services), rid), flush=True)
    outcome = follow(rid, float(os.environ.get("ROLLOUT_TIMEOUT_S", 900)))
    if outcome is None:
        print("rollout: no outcome (see %s)" % os.path.join(DATA_DIR, "rollout", rid + ".log"),
              file=sys.stderr)
        return 1
    for name, o in outcome["services"].items():
        if o["ok"]:
            print("rollout: %s: %d instance(s) replaced" % (name, len(o.get("replaced", []))))
        else:
            print("rollout: %s: NOT rolled: %s" % (name, o["why"]))
    return 0 if outcome["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
