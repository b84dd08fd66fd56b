"""launch_system.py: start the whole carshare system for the browser test.

Reuses tests/e2e/harness.py (a temporary data directory, nats-server with
JetStream and the five real binaries from $CARSHARE_BIN on free loopback
ports, wired exactly as `make run` wires them), then prints one JSON line
on stdout:

    {"gateway": "http://127.0.0.1:PORT", "dir": "/tmp/carshare-e2e-...", "pid": PID}

and keeps the system up until its standard input closes or it gets SIGTERM
or SIGINT; then it stops every process it started, by PID. The node test
spawns it with a pipe on stdin, so the system also goes away when the test
process dies without cleaning up. A line "failed" on stdin marks the run as
failed: the data directory and logs are then kept and their tails printed
on stderr (as the e2e tests do).
"""
import json
import os
import signal
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
import harness  # noqa: E402


def main():
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    system = None

    def watch_stdin():
        try:
            for line in sys.stdin:
                if line.strip() == "failed" and system is not None:
                    system.failed = True
        except (OSError, ValueError):
            pass
        stop.set()

    with harness.System(harness.SERVICES) as started:
        system = started
        print(json.dumps({"gateway": system.url("gateway"), "dir": system.dir, "pid": os.getpid()}), flush=True)
        threading.Thread(target=watch_stdin, daemon=True).start()
        while not stop.wait(0.5):
            for name, proc in system.procs.items():
                if not proc.running():
                    print("launch_system: %s exited with %s" % (name, proc.popen.returncode), file=sys.stderr)
                    system.failed = True   # keeps the logs for the test's report
                    stop.set()
                    break
    return 0


if __name__ == "__main__":
    sys.exit(main())
