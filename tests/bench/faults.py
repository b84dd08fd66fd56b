"""faults.py: what carshare does when things go wrong, measured on the real system.

    python3 tests/bench/faults.py [BIN_DIR]        (or CARSHARE_BIN=BIN_DIR; scripts/bench-faults.sh)

The figures issues 3 (events) and 4 (resilience) ask for. Like bench.py it reports and never
judges: no threshold, exit 0 whenever the systems started, 1 when one could not (or a binary is
missing). Every figure comes from nats-server and the real Release binaries on free loopback
ports (tests/e2e/harness.py), every process stopped by its PID, and every request goes through
the gateway unless a row says otherwise. A service that dies during a measurement is recorded
(phase, exit status) and started again, as `make run`'s supervisor would: the figure around it
is still reported, next to the death.

Issue 3, one system with the services' own defaults:
  lag           rentals one after another on an idle system, each timed from its 201 to
                GET /customerpages/search/findByOrderId showing Shipped (polled every
                FAULTS_LAG_POLL_MS): median, p90, p99, max
  drain         nats-server stopped, FAULTS_DRAIN_RENTALS rentals made (they must still be
                accepted: their Ordered and Paid wait in order's and payment's outboxes),
                nats-server started again on the same store. From its launch: when the
                relays first got an event out (reconnect), when both outboxes were empty
                (carshare_bus_outbox_backlog = 0 on order and payment: outbox events/s), and
                when the customer page showed every one of those rentals Shipped (rentals/s,
                and events/s counting the three events each rental needs: Ordered, Paid,
                Shipped). "counter" is when customerpage's carshare_bus_consumed_total
                {event="Shipped"} said so; "page" is when a full read of the page confirmed it.

Issue 4, one system whose order and gateway are restarted between phases (same data):
  hang          payment frozen with SIGSTOP, FAULTS_HANG_REQUESTS POST /orders from
                FAULTS_HANG_CLIENTS clients, with the breakers of order (to payment) and of
                the gateway (to order) disabled so that every call runs into order's
                PAYMENT_TIMEOUT_MS: answer time median and max
  breaker open  the breakers back at their defaults, payment frozen again: rentals until
                order's breaker to payment is open, then FAULTS_OPEN_REQUESTS more through
                the gateway and as many straight to order: answer time median and max. Which
                breakers are open, and what GET /cars through the gateway answers meanwhile.
  recovery      from SIGCONT of the frozen payment, and from a stopped payment being ready
                again after a restart, to the first 201, through the gateway and straight to
                order (one try of each every FAULTS_RECOVERY_POLL_MS; what the tries before
                it got is counted). Payment comes back right after the breakers opened, so
                this is the worst case: about a whole breaker cool-down.
  burst         FAULTS_BURST_FACTOR x capacity concurrent POST /orders (one connection
                each, from one asyncio loop), capacity = order's payment bulkhead
                (PAYMENT_MAX_INFLIGHT + PAYMENT_MAX_QUEUE, read from order's log): the
                answers by status and by who gave them, median and worst latency, the
                largest VmRSS of each process sampled every FAULTS_RSS_SAMPLE_MS, the
                connections the kernel dropped because a listen queue was full (TcpExt
                ListenOverflows: each costs the client a SYN retransmit, 1 s or more), and
                orders-201s = orders accepted during the burst minus 201 answers (anything
                but 0 means customers were told "no" and rented anyway). Three rows:
                through the gateway with payment at its speed; through the gateway with
                payment slowed by its test-only PAYMENT_TEST_DELAY_MS
                (FAULTS_BURST_PAYMENT_DELAY_MS, 0 = skip); straight to order with payment
                slowed (the gateway's own bound on calls to order is below order's
                bulkhead, so only a direct burst reaches order's bulkhead)

It prints one table per issue, writes everything as JSON (FAULTS_OUT; default faults.json next
to BENCH_OUT when that is set, else <BIN_DIR>/../faults.json) and ends with one `faults: ...`
summary line. It takes one to two minutes (a crash adds the 30 s JetStream ack wait).

Environment: FAULTS_ONLY (3 or 4: one issue's part), FAULTS_LAG_SAMPLES (300),
FAULTS_LAG_POLL_MS (5), FAULTS_DRAIN_RENTALS (2000), FAULTS_DRAIN_CLIENTS (4),
FAULTS_HANG_REQUESTS (20), FAULTS_HANG_CLIENTS (4), FAULTS_OPEN_REQUESTS (20),
FAULTS_RECOVERY_POLL_MS (20), FAULTS_BURST_FACTOR (10), FAULTS_BURST_PAYMENT_DELAY_MS (200),
FAULTS_RSS_SAMPLE_MS (20), FAULTS_PAYMENT_TIMEOUT_MS (unset: order's default),
FAULTS_LOG_LEVEL (info), FAULTS_OUT; CARSHARE_KEEP=1 keeps every log. The services also read
the rest of the environment (PAYMENT_BREAKER_OPEN_MS, GATEWAY_ORDER_TIMEOUT_MS, ...), so a
configuration can be measured by setting it.
"""
import asyncio
import collections
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402  -- sets CARSHARE_BIN from argv before harness is imported
from bench import harness, percentile, fmt  # noqa: E402

BIN = bench.BIN
env_int = bench.env_int
ONLY = os.environ.get("FAULTS_ONLY", "")
LAG_SAMPLES = env_int("FAULTS_LAG_SAMPLES", 300)
LAG_POLL_MS = env_int("FAULTS_LAG_POLL_MS", 5)
DRAIN_RENTALS = env_int("FAULTS_DRAIN_RENTALS", 2000)
DRAIN_CLIENTS = max(1, env_int("FAULTS_DRAIN_CLIENTS", 4))
HANG_REQUESTS = env_int("FAULTS_HANG_REQUESTS", 20)
HANG_CLIENTS = max(1, env_int("FAULTS_HANG_CLIENTS", 4))
OPEN_REQUESTS = env_int("FAULTS_OPEN_REQUESTS", 20)
RECOVERY_POLL_MS = env_int("FAULTS_RECOVERY_POLL_MS", 20)
BURST_FACTOR = env_int("FAULTS_BURST_FACTOR", 10)
BURST_PAYMENT_DELAY_MS = env_int("FAULTS_BURST_PAYMENT_DELAY_MS", 200)
RSS_SAMPLE_MS = max(1, env_int("FAULTS_RSS_SAMPLE_MS", 20))
PAYMENT_TIMEOUT_MS = os.environ.get("FAULTS_PAYMENT_TIMEOUT_MS", "")
LOG_LEVEL = os.environ.get("FAULTS_LOG_LEVEL", "info")
if os.environ.get("FAULTS_OUT"):
    OUT = os.environ["FAULTS_OUT"]
elif os.environ.get("BENCH_OUT"):
    OUT = os.path.join(os.path.dirname(os.path.abspath(os.environ["BENCH_OUT"])), "faults.json")
else:
    OUT = os.path.join(os.path.dirname(BIN), "faults.json")

CARD = bench.CARD
NO_BREAKER = {"BREAKER_FAILURES": "1000000", "BREAKER_MIN_CALLS": "1000000"}
ANSWER_TIMEOUT_S = 60          # a client gives up on an answer after this long: "no answer"
WAIT_S = 120                   # the longest any phase waits for the system to catch up


def note(text):
    print("faults: " + text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- small helpers

def step(label, fn, system, *args):
    """Runs one measurement; a failure is reported (with where it happened) and the run goes
    on without that figure. A service that died meanwhile is recorded and started again."""
    t0 = time.monotonic()
    try:
        return fn(system, *args)
    except Exception as e:   # noqa: BLE001 -- any failure of one measure, said and skipped
        note("%s failed: %s: %s\n%s" % (label, type(e).__name__, e,
                                          "".join(traceback.format_exc().splitlines(True)[-6:])))
        return None
    finally:
        try:
            revive(system, label, t0)
        except Exception as e:   # noqa: BLE001 -- said; the next step will say more
            note("after %s: %s" % (label, e))


def start_system(service_env):
    """nats-server and the five services on free ports, each ready."""
    system = harness.System(harness.SERVICES, env={"LOG_LEVEL": LOG_LEVEL},
                            service_env=service_env)
    try:
        system.__enter__()
        bench.prepare_auth(system)   # staff and customer tokens (bench.AUTH)
        return system
    except (AssertionError, OSError) as e:
        raise bench.StartFailure(str(e))


def stop_system(system, res):
    """SIGTERM to everything; a service that does not exit 0 is recorded, not fatal."""
    try:
        system.close()
    except AssertionError as e:
        res.setdefault("stop_errors", []).append(str(e))
        note("on stopping: %s" % e)


def summary_of(values):
    """Median, p99 and max of a list of milliseconds (None when empty)."""
    if not values:
        return {"n": 0, "median_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None,
                "min_ms": None}
    return {"n": len(values), "median_ms": statistics.median(values),
            "p90_ms": percentile(values, 90), "p99_ms": percentile(values, 99),
            "max_ms": max(values), "min_ms": min(values)}


def since_ms(t0):
    return (time.monotonic() - t0) * 1000.0


def rental_body(tag, n):
    # customerId names the customer the harness signs the call in as (its token decides).
    return {"productId": str(1001 + n % bench.MODELS), "qty": 1, "customerId": tag,
            "cardNumber": CARD}


def who_answered(status, body):
    """Which component gave an answer, from the contract's error message: order's fallback,
    or the gateway speaking for an upstream it could not use."""
    if status == 201:
        return "201 rented"
    message = body.get("message", "") if isinstance(body, dict) else str(body or "")
    for needle, label in (("try the payment again shortly", "order fallback"),
                          ("circuit breaker is open", "gateway breaker open"),
                          ("too many requests are already waiting", "gateway queue full"),
                          ("did not answer within", "gateway timeout"),
                          ("could not connect", "gateway connect failed"),
                          ("connection broke", "gateway connection broke")):
        if needle in message:
            return "%d %s" % (status, label)
    return "%d %s" % (status, message[:60] or "(no message)")


def rent(system, service, tag, n, timeout=ANSWER_TIMEOUT_S):
    """One POST /orders on a fresh connection. Returns (status, body, ms, who)."""
    t0 = time.monotonic()
    try:
        status, body, _ = system.call("POST", service, "/orders", rental_body(tag, n),
                                      timeout=timeout)
    except OSError as e:
        return 0, None, since_ms(t0), "no answer (%s)" % type(e).__name__
    return status, body, since_ms(t0), who_answered(status, body)


def metrics_of(system, service):
    """Every series of a service's /metrics as {'name{labels}': value}."""
    status, text = bench.http_get(system.ports[service], "/metrics", timeout=5)
    out = {}
    if status != 200:
        return out
    for line in text.decode("utf-8", "replace").splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


def metric(system, service, series, default=None):
    return metrics_of(system, service).get(series, default)


def breaker_state(system, service, upstream):
    value = metric(system, service, 'carshare_breaker_state{upstream="%s"}' % upstream)
    return {0: "closed", 1: "open", 2: "half-open"}.get(value, "n/a")


def log_settings(system, service, upstream):
    """The effective settings of a service's http client, from its 'http client ready' line
    (lib/httpc.c logs them once resolved), e.g. {'max_inflight': 64, 'max_queue': 128, ...}."""
    found = {}
    for line in system.log(service).splitlines():
        if "upstream=%s " % upstream in line and "http client ready" in line:
            found = {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)\b", line)
                     if k in ("pool", "max_inflight", "max_queue", "timeout_ms",
                              "connect_timeout_ms", "retries")}
    return found


def in_threads(count, clients, fn):
    """fn(i) for i in 0..count-1 on `clients` threads, each taking the next i. Returns the
    results in order (an exception is returned as the result)."""
    results = [None] * count
    lock = threading.Lock()
    next_i = [0]

    def worker():
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= count:
                return
            try:
                results[i] = fn(i)
            except Exception as e:   # noqa: BLE001 -- reported with the results
                results[i] = e
    threads = [threading.Thread(target=worker) for _ in range(min(clients, max(count, 1)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def restart(system, name, env):
    """Restarts a service with its environment replaced by `env` on top of the System's."""
    system.stop(name)
    system.service_env[name] = env
    system.start(name)


def listen_overflows():
    """The kernel's count of connections dropped because a listen queue was full
    (TcpExt ListenOverflows in /proc/net/netstat), or None where it cannot be read."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            return int(table["ListenOverflows"]) if "ListenOverflows" in table else None
    return None


class RssSampler:
    """Samples VmRSS of the given processes every RSS_SAMPLE_MS on a thread and keeps each
    one's largest value (kB)."""

    def __init__(self, pids):
        self.pids = pids           # {name: pid}
        self.peak_kb = {name: 0 for name in pids}
        self.samples = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stopping.is_set():
            for name, pid in self.pids.items():
                kb = bench.memory_kb(pid).get("VmRSS", 0)
                if kb > self.peak_kb[name]:
                    self.peak_kb[name] = kb
            self.samples += 1
            self.stopping.wait(RSS_SAMPLE_MS / 1000.0)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join()
        return False


# ---------------------------------------------------------------- a burst, from one thread

async def one_request(port, payload, timeout):
    """One POST /orders on its own connection ("Connection: close"); returns (status, body
    dict or text, ms) or (0, error name, ms)."""
    t0 = time.monotonic()
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        writer.write(payload)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        raw = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b""
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        return status, body, since_ms(t0)
    except asyncio.TimeoutError:
        return 0, "timeout", since_ms(t0)
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
        return 0, type(e).__name__, since_ms(t0)
    finally:
        if writer is not None:
            writer.close()


def burst_payload(port, n):
    """Rental n of a burst, by customer bench-(n % 97) with that customer's token."""
    customers = bench.AUTH["customers"]
    body = json.dumps(rental_body("bench-%d" % (n % len(customers)), n)).encode()
    token = customers[n % len(customers)].encode()
    return (b"POST /orders HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer %s\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (port, token, len(body), body))


def send_burst(port, count):
    """`count` POST /orders started together from one asyncio loop (one connection each)."""
    async def all_of_them():
        payloads = [burst_payload(port, n) for n in range(count)]
        return await asyncio.gather(*(one_request(port, p, ANSWER_TIMEOUT_S) for p in payloads))
    return asyncio.run(all_of_them())


def orders_total(system):
    """How many orders order has accepted (GET /orders' totalElements)."""
    status, data = bench.http_get(system.ports["order"], "/orders?page=0&size=1", timeout=10)
    return json.loads(data)["page"]["totalElements"] if status == 200 else None


def measure_burst(system, service, label, count):
    orders_before = orders_total(system)
    pids = {name: system.procs[name].pid for name in system.procs if system.procs[name].running()}
    before = {name: bench.memory_kb(pid).get("VmRSS") for name, pid in pids.items()}
    note("burst %s: %d concurrent POST /orders to %s" % (label, count, service))
    overflows = listen_overflows()
    with RssSampler(pids) as rss:
        t0 = time.monotonic()
        answers = send_burst(system.ports[service], count)
        wall_ms = since_ms(t0)
        time.sleep(0.5)            # what the services do right after the last answer counts too
    if overflows is not None and listen_overflows() is not None:
        overflows = listen_overflows() - overflows
    by_who = collections.Counter()
    by_status = collections.Counter()
    for status, body, _ in answers:
        by_status[str(status) if status else "no answer"] += 1
        by_who[who_answered(status, body) if status else "no answer (%s)" % body] += 1
    latencies = [ms for _, _, ms in answers]
    # Every answer but 201 promises no rental: once the intakes are settled, the orders
    # accepted during the burst must be exactly the 201s.
    bench.wait_idle(system)
    orders_after = orders_total(system)
    accepted = (orders_after - orders_before) if None not in (orders_before, orders_after) else None
    services = {n: kb for n, kb in rss.peak_kb.items() if n in harness.SERVICES}
    result = {
        "label": label, "target": service, "requests": count, "wall_ms": wall_ms,
        "by_status": dict(sorted(by_status.items())), "by_who": dict(sorted(by_who.items())),
        "latency": summary_of(latencies), "listen_overflows": overflows,
        "orders_accepted": accepted,
        "accepted_without_201": accepted - by_status.get("201", 0) if accepted is not None else None,
        "rss_before_kb": before, "rss_peak_kb": dict(rss.peak_kb), "rss_samples": rss.samples,
        "max_service_rss_mb": max(services.values()) / 1024.0 if services else None,
        "max_service_rss_name": max(services, key=services.get) if services else None,
    }
    note("burst %s: %s in %.0f ms, worst %.0f ms" % (label, result["by_who"], wall_ms,
                                                      result["latency"]["max_ms"]))
    return result


# ---------------------------------------------------------------- issue 3: lag and drain

def page_shipped(system, order_id, client):
    status, data = client.request("GET", "/customerpages/search/findByOrderId?orderId=%s" % order_id)
    return status == 200 and bench.shipped(data)


def measure_lag(system):
    """Sequential rentals on an idle system: from each 201 to the page showing Shipped."""
    renter = bench.Client(system.ports["gateway"], bench.AUTH["lag"])
    watcher = bench.Client(system.ports["gateway"], bench.AUTH["lag"])
    lags, lost, refused = [], 0, collections.Counter()
    note("lag: %d rentals one after another, page polled every %d ms" % (LAG_SAMPLES, LAG_POLL_MS))
    try:
        for n in range(LAG_SAMPLES):
            status, data = renter.request("POST", "/orders", json.dumps(rental_body("lag", n)))
            accepted = time.monotonic()
            if status != 201:
                refused[status] += 1
                continue
            order_id = json.loads(data)["id"]
            while not page_shipped(system, order_id, watcher):
                if time.monotonic() - accepted > 30:
                    lost += 1
                    break
                time.sleep(LAG_POLL_MS / 1000.0)
            else:
                lags.append(since_ms(accepted))
    finally:
        renter.close()
        watcher.close()
    result = summary_of(lags)
    result.update({"lost": lost, "refused": dict(refused), "poll_ms": LAG_POLL_MS})
    return result


CRASHES = []     # every service death seen during the run: {phase, service, exit, ms}


def revive(system, phase, since, limit=20):
    """Does what `make run`'s supervisor does: a service that died is started again. Each
    death is recorded in CRASHES (phase, service, exit code, ms from `since`): a crash is a
    finding, never hidden by the figure measured around it. Returns the deaths seen in
    this phase so far."""
    for name in harness.SERVICES:
        proc = system.procs.get(name)
        if proc is None or proc.running() or proc.crashed_on_purpose:
            continue
        if len(CRASHES) >= limit:
            raise RuntimeError("%d service deaths: giving up" % len(CRASHES))
        code = proc.popen.returncode
        CRASHES.append({"phase": phase, "service": name, "exit": code, "ms": since_ms(since)})
        note("%s died (exit %s) %.0f ms into %s; restarting it as make run would" % (
            name, code, since_ms(since), phase))
        system.start(name, wait_ready=False)
    return [c for c in CRASHES if c["phase"] == phase]


def outbox_backlog(system, service):
    return metric(system, service, "carshare_bus_outbox_backlog")


def shipped_on_page(system, customer, wanted):
    """How many of the order ids in `wanted` the customer page shows Shipped."""
    seen, page = 0, 0
    while True:
        status, data = bench.http_get(system.ports["customerpage"],
                                      "/customerpages/search/findByCustomerId?customerId=%s"
                                      "&page=%d&size=1000" % (customer, page), timeout=10)
        if status != 200:
            return seen
        doc = json.loads(data)
        for item in doc.get("_embedded", {}).get("customerpages", []):
            if item.get("orderId") in wanted and item.get("status") == "Shipped":
                seen += 1
        if page + 1 >= doc.get("page", {}).get("totalPages", 0):
            return seen
        page += 1


def measure_drain(system):
    """Rentals while nats-server is down, then the catch-up once it is back."""
    shipped_series = 'carshare_bus_consumed_total{event="Shipped"}'
    shipped_before = metric(system, "customerpage", shipped_series, 0.0)
    system.stop_nats()
    harness.wait_for(lambda: metric(system, "order", "carshare_bus_connected") == 0, 30,
                     "order to notice the bus is down")
    note("drain: nats-server stopped; %d rentals from %d clients" % (DRAIN_RENTALS, DRAIN_CLIENTS))
    t0 = time.monotonic()
    answers = in_threads(DRAIN_RENTALS, DRAIN_CLIENTS, lambda n: rent(system, "gateway", "drain", n))
    renting_ms = since_ms(t0)
    codes = collections.Counter(a[3] if isinstance(a, tuple) else "error %r" % a for a in answers)
    accepted = {a[1]["id"] for a in answers if isinstance(a, tuple) and a[0] == 201}
    backlog = {s: outbox_backlog(system, s) for s in ("order", "payment")}
    waiting = sum(v or 0 for v in backlog.values())
    note("drain: %d accepted in %.0f ms (%s); outbox backlog %s; starting nats-server" % (
        len(accepted), renting_ms, dict(codes), backlog))

    launch = time.monotonic()
    system.start_nats()
    listening_ms = since_ms(launch)
    first_out_ms = outbox_empty_ms = metric_shipped_ms = all_shipped_ms = None
    crashes = []
    # A restarted customerpage counts from zero: its applied Shipped add up over its lives
    # (an undercount if it died between two polls, hence the page reads below).
    shipped_lives = [0.0]
    shown, last_read = 0, 0.0
    while since_ms(launch) < WAIT_S * 1000:
        crashes = revive(system, "drain", launch)
        left = [outbox_backlog(system, s) for s in ("order", "payment")]
        if first_out_ms is None and None not in left and sum(left) < waiting:
            first_out_ms = since_ms(launch)
        if outbox_empty_ms is None and left == [0, 0]:
            outbox_empty_ms = since_ms(launch)
        now = metric(system, "customerpage", shipped_series)
        if now is not None:
            if now < shipped_lives[-1]:
                shipped_lives.append(0.0)
            shipped_lives[-1] = now
        if metric_shipped_ms is None and sum(shipped_lives) - shipped_before >= len(accepted):
            metric_shipped_ms = since_ms(launch)
        # The page itself must show every one of these rentals Shipped. Reading 2000 items is
        # too heavy to do every 20 ms while the page drains: once the counter says so, or
        # every second after a crash.
        if metric_shipped_ms is not None or (crashes and time.monotonic() - last_read > 1.0):
            last_read = time.monotonic()
            shown = shipped_on_page(system, "drain", accepted)
            if shown == len(accepted):
                all_shipped_ms = all_shipped_ms or since_ms(launch)
                if outbox_empty_ms is not None:
                    break
        time.sleep(0.02)
    if crashes or metric_shipped_ms is None:
        metric_shipped_ms = None       # the counter cannot be trusted across a crash
    shipped_s = (metric_shipped_ms or all_shipped_ms or 0) / 1000.0   # the earliest sure sign
    result = {
        "rentals": DRAIN_RENTALS, "accepted": len(accepted), "answers": dict(codes),
        "renting_ms": renting_ms, "renting_per_s": len(accepted) / (renting_ms / 1000.0),
        "outbox_backlog_at_restart": backlog, "outbox_events": waiting,
        "nats_listening_ms": listening_ms, "first_event_out_ms": first_out_ms,
        "outbox_empty_ms": outbox_empty_ms,
        "outbox_events_per_s": waiting / (outbox_empty_ms / 1000.0) if outbox_empty_ms else None,
        "outbox_events_per_s_after_reconnect": (
            waiting / ((outbox_empty_ms - first_out_ms) / 1000.0)
            if outbox_empty_ms and first_out_ms and outbox_empty_ms > first_out_ms else None),
        "page_shipped_metric_ms": metric_shipped_ms, "page_all_shipped_ms": all_shipped_ms,
        "page_shown_shipped": shown, "crashes": crashes,
        "rentals_shipped_per_s": len(accepted) / shipped_s if shipped_s else None,
        "events_per_s": 3 * len(accepted) / shipped_s if shipped_s else None,
    }
    return result


def issue3(workdir, res):
    fleet = os.path.join(workdir, "fleet.json")
    bench.write_fleet(fleet)
    system = start_system({"order": {"FLEET_FILE": fleet}})
    note("issue 3: system ready (logs in %s)" % system.dir)
    try:
        res["lag"] = step("lag", measure_lag, system)
        bench.wait_idle(system)
        res["drain"] = step("drain", measure_drain, system)
    finally:
        stop_system(system, res)


# ---------------------------------------------------------------- issue 4: hang, breaker, burst

def order_env(fleet, breaker=True, extra=None):
    env = {"FLEET_FILE": fleet}
    if PAYMENT_TIMEOUT_MS:
        env["PAYMENT_TIMEOUT_MS"] = PAYMENT_TIMEOUT_MS
    if not breaker:
        env.update({"PAYMENT_" + k: v for k, v in NO_BREAKER.items()})
    env.update(extra or {})
    return env


def gateway_env(breaker=True):
    return {} if breaker else {"GATEWAY_ORDER_" + k: v for k, v in NO_BREAKER.items()}


def warm(system, tag, count=3):
    for n in range(count):
        status, body, _, who = rent(system, "gateway", tag, n)
        if status != 201:
            raise RuntimeError("warm-up rental refused: %s %r" % (who, body))


def answers_summary(answers):
    return {"latency": summary_of([a[2] for a in answers]),
            "by_who": dict(collections.Counter(a[3] for a in answers))}


def measure_hang(system, fleet):
    restart(system, "order", order_env(fleet, breaker=False))
    restart(system, "gateway", gateway_env(breaker=False))
    warm(system, "hang-warm")
    settings = log_settings(system, "order", "payment")
    system.freeze("payment")
    note("hang: payment frozen; %d rentals from %d clients (payment timeout %s ms)" % (
        HANG_REQUESTS, HANG_CLIENTS, settings.get("timeout_ms")))
    try:
        answers = in_threads(HANG_REQUESTS, HANG_CLIENTS, lambda n: rent(system, "gateway", "hang", n))
    finally:
        system.thaw("payment")
    result = answers_summary([a for a in answers if isinstance(a, tuple)])
    result["payment_timeout_ms"] = settings.get("timeout_ms")
    return result


def first_rentals(system, tag, since):
    """Rents every RECOVERY_POLL_MS, through the gateway and straight at order in turn, until
    each has had a 201. Returns {target: {"ms": from `since`, "answers_before": what the tries
    before it got}}."""
    found = {}
    before = {target: collections.Counter() for target in ("gateway", "order")}
    n = 0
    while len(found) < len(before) and since_ms(since) < WAIT_S * 1000:
        for target in before:
            if target in found:
                continue
            status, _, _, who = rent(system, target, tag, n)
            n += 1
            if status == 201:
                found[target] = since_ms(since)
            else:
                before[target][who] += 1
        time.sleep(RECOVERY_POLL_MS / 1000.0)
    return {target: {"ms": found.get(target), "answers_before": dict(counts)}
            for target, counts in before.items()}


def open_order_breaker(system, tag):
    """Rents until order's breaker to payment is open; returns the answers it took."""
    answers = []
    for n in range(60):
        answers.append(rent(system, "gateway", tag, n))
        if breaker_state(system, "order", "payment") == "open":
            return answers
    raise RuntimeError("order's breaker to payment did not open after 60 failed rentals: %s" %
                       dict(collections.Counter(a[3] for a in answers)))


def breakers(system):
    return {"order->payment": breaker_state(system, "order", "payment"),
            "gateway->order": breaker_state(system, "gateway", "order")}


def measure_recovery(system, result, key, label, since):
    result[key] = first_rentals(system, key, since)
    note("recovery after %s: via gateway %s ms, order direct %s ms" % (
        label, fmt(result[key]["gateway"]["ms"], 0), fmt(result[key]["order"]["ms"], 0)))


def measure_breaker_and_recovery(system, fleet):
    restart(system, "order", order_env(fleet))
    restart(system, "gateway", gateway_env())
    warm(system, "open-warm")
    result = {"breaker_settings": "the services' defaults (PAYMENT_BREAKER_*, GATEWAY_ORDER_BREAKER_*)"}

    # Frozen payment: the breaker opens, answers while open, recovery after SIGCONT.
    system.freeze("payment")
    try:
        opening = open_order_breaker(system, "opening")
        note("breaker: order's breaker open after %d rentals (%s)" % (
            len(opening), dict(collections.Counter(a[3] for a in opening))))
        result["opening"] = answers_summary(opening)
        result["breakers_opened"] = breakers(system)
        answers = [rent(system, "gateway", "open", n) for n in range(OPEN_REQUESTS)]
        result["open"] = answers_summary(answers)
        direct = [rent(system, "order", "open-direct", n) for n in range(OPEN_REQUESTS)]
        result["open_order_direct"] = answers_summary(direct)
        # What else of order the customer can reach through the gateway meanwhile.
        result["get_cars_via_gateway"] = bench.http_get(system.ports["gateway"], "/cars", 10)[0]
        result["breakers_after_open"] = breakers(system)
    finally:
        system.thaw("payment")
    measure_recovery(system, result, "recovery_after_sigcont", "SIGCONT", time.monotonic())
    bench.wait_idle(system)

    # Stopped payment: answers while it is down, recovery from its restart being ready.
    system.stop("payment")
    result["payment_stopped"] = answers_summary(open_order_breaker(system, "down"))
    system.start("payment", wait_ready=False)
    harness.wait_for(lambda: bench.http_get(system.ports["payment"], "/health/ready", 1)[0] == 200,
                     30, "payment to be ready again")
    measure_recovery(system, result, "recovery_after_restart", "restart", time.monotonic())
    return result


def measure_bursts(system, fleet):
    restart(system, "order", order_env(fleet))
    restart(system, "gateway", gateway_env())
    warm(system, "burst-warm")
    settings = log_settings(system, "order", "payment")
    capacity = settings["max_inflight"] + max(0, settings["max_queue"])
    count = BURST_FACTOR * capacity
    result = {"capacity": capacity, "payment_client": settings,
              "gateway_order_client": log_settings(system, "gateway", "order"), "rows": []}
    bench.wait_idle(system)
    result["rows"].append(measure_burst(system, "gateway", "via gateway, payment at speed", count))
    if BURST_PAYMENT_DELAY_MS > 0:
        bench.wait_idle(system)
        restart(system, "payment", {"PAYMENT_TEST_DELAY_MS": str(BURST_PAYMENT_DELAY_MS)})
        bench.wait_idle(system)
        slow = "payment +%d ms" % BURST_PAYMENT_DELAY_MS
        result["rows"].append(measure_burst(system, "gateway", "via gateway, " + slow, count))
        bench.wait_idle(system)
        result["rows"].append(measure_burst(system, "order", "order direct, " + slow, count))
    return result


def issue4(workdir, res):
    fleet = os.path.join(workdir, "fleet.json")
    bench.write_fleet(fleet)
    system = start_system({"order": order_env(fleet)})
    note("issue 4: system ready (logs in %s)" % system.dir)
    try:
        res["hang"] = step("hang", measure_hang, system, fleet)
        bench.wait_idle(system)
        res["breaker"] = step("breaker", measure_breaker_and_recovery, system, fleet)
        bench.wait_idle(system)
        res["burst"] = step("burst", measure_bursts, system, fleet)
    finally:
        stop_system(system, res)


# ---------------------------------------------------------------- report

def row(cells, widths):
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def print_rows(rows):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print(row(r, widths).rstrip())


def print_issue3(res):
    lag, drain = res.get("lag"), res.get("drain")
    print()
    print("issue 3: events")
    if lag:
        print("  201 -> customer page Shipped: median %s  p90 %s  p99 %s  max %s ms "
              "(%d rentals one by one, %d lost, refused %s)" % (
                  fmt(lag["median_ms"]), fmt(lag["p90_ms"]), fmt(lag["p99_ms"]),
                  fmt(lag["max_ms"]), lag["n"], lag["lost"], lag["refused"] or "none"))
    if drain:
        print("  bus outage: %d of %d rentals accepted with nats-server down (%s/s); outbox "
              "backlog %s" % (drain["accepted"], drain["rentals"], fmt(drain["renting_per_s"], 0),
                              drain["outbox_backlog_at_restart"]))
        print("  after nats-server started (ms from its launch): listening %s, first event out "
              "%s, outboxes empty %s, page shows all Shipped %s (counter %s)" % (
                  fmt(drain["nats_listening_ms"], 0), fmt(drain["first_event_out_ms"], 0),
                  fmt(drain["outbox_empty_ms"], 0), fmt(drain["page_all_shipped_ms"], 0),
                  fmt(drain["page_shipped_metric_ms"], 0)))
        if drain["crashes"]:
            print("  !! %d service deaths while draining: %s" % (len(drain["crashes"]), ", ".join(
                "%s (exit %s at %.0f ms)" % (c["service"], c["exit"], c["ms"]) for c in drain["crashes"])))
        print("  drain rate: outbox %s events/s (%s after the reconnect); end to end %s "
              "rentals/s = %s events/s (Ordered+Paid+Shipped)" % (
                  fmt(drain["outbox_events_per_s"], 0),
                  fmt(drain["outbox_events_per_s_after_reconnect"], 0),
                  fmt(drain["rentals_shipped_per_s"], 0), fmt(drain["events_per_s"], 0)))


def print_issue4(res):
    print()
    print("issue 4: resilience (POST /orders through the gateway)")
    rows = [("situation", "n", "median ms", "max ms", "answers")]
    hang, brk = res.get("hang"), res.get("breaker") or {}
    for label, part in (
            ("payment hangs (SIGSTOP, breakers off; timeout %s ms)" %
             (hang or {}).get("payment_timeout_ms"), hang),
            ("payment hangs, until order's breaker opens", brk.get("opening")),
            ("breakers open (payment frozen)", brk.get("open")),
            ("  the same straight to order", brk.get("open_order_direct")),
            ("payment stopped, until order's breaker opens", brk.get("payment_stopped"))):
        if part:
            lat = part["latency"]
            rows.append((label, str(lat["n"]), fmt(lat["median_ms"]), fmt(lat["max_ms"]),
                         ", ".join("%s x%d" % kv for kv in sorted(part["by_who"].items()))))
    if len(rows) > 1:
        print_rows(rows)
    if brk.get("open"):
        print("  breakers once order's opened: %s; after the open phase: %s; GET /cars through "
              "the gateway meanwhile: %s" % (brk["breakers_opened"], brk["breakers_after_open"],
                                             brk["get_cars_via_gateway"]))
    for key, label in (("recovery_after_sigcont", "SIGCONT"),
                       ("recovery_after_restart", "restart (ready)")):
        rec = brk.get(key)
        if rec:
            for target in ("gateway", "order"):
                print("  recovery from payment's %s to the first 201 %s: %s ms (tries before: "
                      "%s)" % (label, "via gateway" if target == "gateway" else "straight to order",
                               fmt(rec[target]["ms"], 0), rec[target]["answers_before"] or "none"))
    burst = res.get("burst")
    if burst:
        print()
        print("  burst: %d x capacity %d = %d concurrent POST /orders (order's payment client %s; "
              "gateway's order client %s)" % (
                  BURST_FACTOR, burst["capacity"], BURST_FACTOR * burst["capacity"],
                  burst["payment_client"], burst["gateway_order_client"]))
        rows = [("burst", "p50 ms", "worst ms", "max RSS MB", "SYN drops", "orders-201s", "answers")]
        for r in burst["rows"]:
            rows.append((r["label"], fmt(r["latency"]["median_ms"]), fmt(r["latency"]["max_ms"]),
                         "%s (%s)" % (fmt(r["max_service_rss_mb"]), r["max_service_rss_name"]),
                         fmt(r["listen_overflows"]), fmt(r["accepted_without_201"]),
                         ", ".join("%s x%d" % kv for kv in r["by_who"].items())))
        print_rows(rows)
        print("  peak VmRSS during each burst (MB, sampled every %d ms):" % RSS_SAMPLE_MS)
        names = [n for n in harness.SERVICES + ["nats"]]
        print("    %-40s %s" % ("", " ".join("%12s" % n for n in names)))
        for r in burst["rows"]:
            print("    %-40s %s" % (r["label"], " ".join(
                "%12s" % fmt(r["rss_peak_kb"].get(n, 0) / 1024.0) for n in names)))


def print_crashes(res):
    if CRASHES or res.get("stop_errors"):
        print()
        print("SERVICES DIED during the run (each was started again, as make run does):")
        for c in CRASHES:
            print("  %-12s exit %-4s in %s, %.0f ms into it" % (c["service"], c["exit"], c["phase"],
                                                               c["ms"]))
        for e in res.get("stop_errors", []):
            print("  on SIGTERM at the end: %s" % e)


def summary_line(res):
    lag = res.get("lag") or {}
    drain = res.get("drain") or {}
    hang = (res.get("hang") or {}).get("latency", {})
    brk = res.get("breaker") or {}
    opened = (brk.get("open") or {}).get("latency", {})
    rows = (res.get("burst") or {}).get("rows", [])
    worst = max((r["latency"]["max_ms"] for r in rows), default=None)
    rss = max((r["max_service_rss_mb"] for r in rows if r["max_service_rss_mb"]), default=None)
    return ("faults: lag_p50_ms=%s lag_p99_ms=%s drain_events_per_s=%s drain_outbox_events_per_s=%s "
            "hang_p50_ms=%s hang_max_ms=%s open_p50_ms=%s open_max_ms=%s recover_sigcont_ms=%s "
            "recover_restart_ms=%s burst_worst_ms=%s burst_max_rss_mb=%s crashes=%d" % (
                fmt(lag.get("median_ms")), fmt(lag.get("p99_ms")),
                fmt(drain.get("events_per_s"), 0), fmt(drain.get("outbox_events_per_s"), 0),
                fmt(hang.get("median_ms"), 0), fmt(hang.get("max_ms"), 0),
                fmt(opened.get("median_ms")), fmt(opened.get("max_ms")),
                fmt(((brk.get("recovery_after_sigcont") or {}).get("gateway") or {}).get("ms"), 0),
                fmt(((brk.get("recovery_after_restart") or {}).get("gateway") or {}).get("ms"), 0),
                fmt(worst, 0), fmt(rss), len(CRASHES)))


def main():
    missing = [s for s in harness.SERVICES
               if not os.access(os.path.join(BIN, "carshare-" + s), os.X_OK)]
    if missing:
        note("missing in %s: %s" % (BIN, ", ".join("carshare-" + s for s in missing)))
        return 1
    res = {"config": {"bin": BIN, "log_level": LOG_LEVEL, "lag_samples": LAG_SAMPLES,
                      "lag_poll_ms": LAG_POLL_MS, "drain_rentals": DRAIN_RENTALS,
                      "drain_clients": DRAIN_CLIENTS, "hang_requests": HANG_REQUESTS,
                      "hang_clients": HANG_CLIENTS, "open_requests": OPEN_REQUESTS,
                      "recovery_poll_ms": RECOVERY_POLL_MS, "burst_factor": BURST_FACTOR,
                      "burst_payment_delay_ms": BURST_PAYMENT_DELAY_MS,
                      "rss_sample_ms": RSS_SAMPLE_MS,
                      "payment_timeout_ms": PAYMENT_TIMEOUT_MS or "order's default"}}
    workdir = tempfile.mkdtemp(prefix="carshare-faults-")
    try:
        for part, fn in (("3", issue3), ("4", issue4)):
            if ONLY and ONLY != part:
                continue
            try:
                fn(workdir, res)
            except bench.StartFailure as e:
                note("issue %s: the system could not start: %s" % (part, e))
                return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not ONLY or ONLY == "3":
        print_issue3(res)
    if not ONLY or ONLY == "4":
        print_issue4(res)
    res["crashes"] = CRASHES
    print_crashes(res)
    print()
    res["summary"] = summary_line(res)
    os.makedirs(os.path.dirname(os.path.abspath(OUT)), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(res, f, indent=2)
    note("figures written to %s" % OUT)
    print(res["summary"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
