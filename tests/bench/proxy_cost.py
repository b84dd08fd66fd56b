"""proxy_cost.py: what one proxied request costs the gateway, in CPU and instructions.

    python3 tests/bench/proxy_cost.py BIN_DIR [BIN_DIR ...]

For each BIN_DIR (say, the build of main and the build of a branch) it starts bench-hello and a
gateway whose every upstream is bench-hello (as `make bench`'s gateway_vs_nginx does), and nginx
proxying to the same bench-hello, then measures GET /orders/1 with a staff token:

  cpu_us_per_req   the proxy's user+system CPU time (from /proc) over a wrk run, divided by the
                   requests answered: steadier than a rate on a shared machine, since what the
                   neighbours take shows up as wall time, not as this process's CPU
  ir_per_req       (COST_CALLGRIND=1) user-space instructions per request under callgrind:
                   counters are zeroed after a warm-up, dumped after a fixed load

The binaries are alternated (A B A B ...) COST_ROUNDS times (default 3) in one window, so a
neighbour's burst spoils a round, not the comparison. Environment: COST_SECONDS (5) per round,
COST_CONNECTIONS (32), COST_CALLGRIND (0; N: N callgrind runs per BIN_DIR), COST_CALLGRIND_SECONDS (6), COST_KEEP=1 keeps the directory (callgrind's files). It judges nothing: the
figures are printed, one line per measurement, and a summary of medians per BIN_DIR.
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BINS = [os.path.abspath(b) for b in sys.argv[1:]] or [os.path.join(HERE, "..", "..", "build", "bin")]
sys.argv[1:] = [BINS[0]]
import bench  # noqa: E402  (reads BIN from argv[1]; harness comes with it)

harness = bench.harness
ROUNDS = bench.env_int("COST_ROUNDS", 3)
SECONDS = bench.env_int("COST_SECONDS", 5)
CONNECTIONS = bench.env_int("COST_CONNECTIONS", 32)
CALLGRIND = bench.env_int("COST_CALLGRIND", 0)
CALLGRIND_SECONDS = bench.env_int("COST_CALLGRIND_SECONDS", 6)


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port, seconds, connections, threads=2):
    argv = [bench.WRK, "-t%d" % threads, "-c%d" % connections, "-d%ds" % seconds, "--timeout", "5s",
            "-s", bench.LOAD_LUA, "http://127.0.0.1:%d/orders/1" % port]
    done = subprocess.run(argv, env=bench.wrk_env("get", 200), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=seconds + 60)
    result = bench.parse_wrk(done.stdout)
    if result is None:
        raise RuntimeError("wrk gave no result:\n" + done.stdout[-2000:])
    return result


def gateway(system, workdir, bin_dir, hello_port, name, wrapper=()):
    port = harness.free_port()
    system.ports.setdefault("gateway", port)
    env = system.env_for("gateway")
    env["PORT"] = str(port)
    env["GATEWAY_READY_UPSTREAMS"] = "none"
    env["LOG_LEVEL"] = bench.LOG_LEVEL
    for var in harness.URL_VARS.values():
        env[var] = "http://127.0.0.1:%d" % hello_port
    proc = harness.Proc(name, list(wrapper) + [os.path.join(bin_dir, "carshare-gateway")], env,
                        os.path.join(workdir, name + ".log"))
    proc.start()
    harness.wait_for(lambda: proc.running() and harness.port_open(port), 60, name + " to listen")
    return proc, port


def cpu_round(pid, port):
    before = cpu_s(pid)
    r = wrk(port, SECONDS, CONNECTIONS)
    used = cpu_s(pid) - before
    good = r["requests"] - r["unexpected"]
    return used * 1e6 / max(good, 1), r["per_s"], r["errors"]


def callgrind_round(system, workdir, bin_dir, hello_port, tag):
    """Instructions counted inside the event loop only (startup excluded), over every request
    sent to it, warm-up included; the dump is written when the gateway exits."""
    out = os.path.join(workdir, "callgrind.%s.out" % tag)
    proc, port = gateway(system, workdir, bin_dir, hello_port, "gateway-cg-" + tag,
                         ("valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
                          "--collect-atstart=no", "--toggle-collect=event_base_loop"))
    try:
        warm = wrk(port, 2, 4, 1)
        r = wrk(port, CALLGRIND_SECONDS, 4, 1)
    finally:
        proc.stop(timeout=60)
    ir = 0
    with open(out) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                ir = int(line.split()[1])
    n = warm["requests"] + r["requests"]
    return ir / max(n, 1), n, out


def main():
    workdir = tempfile.mkdtemp(prefix="carshare-cost-")
    figures = {b: {"cpu": [], "rate": [], "ir": []} for b in BINS}
    nginx_cpu = []
    with harness.System([], nats=False) as system:
        bench.AUTH["staff"] = system.mint("admin", "staff")
        hello, hello_port = bench.start_hello(workdir)
        nginx, nginx_port = bench.start_nginx(workdir, "nginx-to-hello", hello_port)
        gws = {}
        try:
            for i, b in enumerate(BINS):
                gws[b] = gateway(system, workdir, b, hello_port, "gateway-%d" % i)
            wrk(nginx_port, 1, CONNECTIONS)
            for b in BINS:
                wrk(gws[b][1], 1, CONNECTIONS)
            for rnd in range(ROUNDS):
                order = BINS if rnd % 2 == 0 else BINS[::-1]
                for b in order:
                    us, rate, errors = cpu_round(gws[b][0].pid, gws[b][1])
                    figures[b]["cpu"].append(us)
                    figures[b]["rate"].append(rate)
                    print("cost: round=%d bin=%s cpu_us_per_req=%.2f per_s=%.0f errors=%d"
                          % (rnd, b, us, rate, errors), flush=True)
                if nginx:
                    worker = [int(p) for p in subprocess.run(
                        ["pgrep", "-P", str(nginx.pid)], capture_output=True,
                        text=True).stdout.split()]
                    if worker:
                        us, rate, errors = cpu_round(worker[0], nginx_port)
                        nginx_cpu.append(us)
                        print("cost: round=%d nginx cpu_us_per_req=%.2f per_s=%.0f errors=%d"
                              % (rnd, us, rate, errors), flush=True)
            if CALLGRIND:
                for rnd in range(max(1, CALLGRIND)):
                    for i, b in enumerate(BINS):
                        ir, n, _ = callgrind_round(system, workdir, b, hello_port, "%d-%d" % (rnd, i))
                        figures[b]["ir"].append(ir)
                        print("cost: round=%d bin=%s ir_per_req=%.0f requests=%d" % (rnd, b, ir, n),
                              flush=True)
        finally:
            for proc, _ in gws.values():
                proc.stop()
            bench.stop_nginx(nginx)
            hello.stop()
    def med(xs, fmt):
        return fmt % statistics.median(xs) if xs else "n/a"
    for b in BINS:
        f = figures[b]
        print("cost: summary bin=%s cpu_us_per_req=%s per_s=%s ir_per_req=%s" % (
            b, med(f["cpu"], "%.2f"), med(f["rate"], "%.0f"), med(f["ir"], "%.0f")))
    if nginx_cpu:
        print("cost: summary nginx cpu_us_per_req=%.2f" % statistics.median(nginx_cpu))
    if os.environ.get("COST_KEEP") == "1":
        print("cost: kept " + workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
