#!/usr/bin/env python3
"""test_replicas.py: two processes of one service, the bus part (issue 14).

On PostgreSQL (the e2e_pg suite), replicas share a database, an outbox and a durable consumer:
  - two payment replicas charge orders (half each), then get every OrderCancelled twice (two
    eventIds) while HTTP refunds of a third of the orders race them on the other replica: one
    refund and one PayCancelled per order, every Paid in the stream (the standby's rows are
    published by the leading relay);
  - a customer page rebuild started on one replica, which is frozen mid-replay while the other
    applies new events: those are in the view after the swap;
  - two replicas of delivery and two of customerpage are fed the events of many rentals at once
    (Ordered, Paid, and for half of them OrderCancelled and PayCancelled, each producer's events in
    its own order, the producers interleaved at random so that events of one rental land in
    batches of both replicas), one replica of each frozen with SIGSTOP mid-stream and continued:
    every rental ends in the contract's state, on delivery and on the customer page, and every
    event was applied exactly once (the replicas' applied counts add up to the events, the stream
    holds one Shipped per page that shows one, and one DeliveryCanceled per cancelled rental);
  - the leading outbox relay killed (kill -9) while it drains a backlog: the other replica's relay
    takes the lead and publishes the rest; the stream holds every event once and the consumer
    applies each once.
On SQLite (the e2e suite), which stays one process per service: a second process on the same
database stops at start and says why, and the first one goes on.
Waits poll real state with generous deadlines; nothing asserts speed."""
import json
import os
import random
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BIN, DB, Proc, System, check, free_port, postgres, run, wait_for  # noqa: E402
from rental_checks import concurrently, metric, stream_count  # noqa: E402

WAIT = 60       # seconds: an upper bound, not an expectation
ON_PG = DB == "postgres"


# ---- helpers ----

def start_replica(s, name, instance):
    """A second process of `name` on the same database (PostgreSQL) with its own port."""
    env = s.env_for(name)
    port = free_port()
    env.update({"PORT": str(port), "INSTANCE_ID": instance})
    key = name + "2"
    s.ports[key] = port
    p = Proc(key, [os.path.join(BIN, "carshare-" + name)], env, os.path.join(s.dir, key + ".log"))
    p.start()
    s.procs[key] = p
    s.wait_ready(key)
    return key


def value(s, name, series):
    """The value of one series (name{labels}, or a bare name) in a process's /metrics, or 0."""
    code, text, _ = s.call("GET", name, "/metrics")
    check(code == 200, "/metrics of %s: %d" % (name, code))
    for line in str(text).splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0


def leading(s, name):
    code, text, _ = s.call("GET", name, "/metrics")
    for line in str(text).splitlines():
        if line.startswith("carshare_bus_relay_leader "):
            return float(line.split()[-1]) == 1
    return None     # not decided yet


def applied(s, names, event_type):
    return sum(metric(s, n, "carshare_bus_consumed_total", 'event="%s"' % event_type) or 0
               for n in names)


def psql(s, service, sql):
    """Runs sql as the server's superuser in a service's database; its output lines."""
    pg = postgres()
    out = subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", pg.dir, "-p",
                          str(pg.port), "-U", "postgres", "-d", s.db_urls[service].rsplit("/", 1)[1],
                          "-c", sql], check=True, capture_output=True, text=True).stdout
    return out.splitlines()


def publish_many(s, events):
    """Publishes [(type, event)] to the stream in this order, pipelined on one connection, each
    with its eventId as Nats-Msg-Id; checks every acknowledgement."""
    nc = s.nats_client()
    try:
        for event_type, event in events:
            nc.send("carshare." + event_type, json.dumps(event).encode(),
                    {"Nats-Msg-Id": event["eventId"]}, nc.inbox)
        stored = 0
        while stored < len(events):
            line = nc.line()
            if line == "PING":
                nc.sock.sendall(b"PONG\r\n")
            elif line.startswith("MSG ") or line.startswith("HMSG "):
                parts = line.split()
                data = nc.payload(int(parts[-1]))
                ack = json.loads(data[int(parts[-2]):] if line.startswith("HMSG ") else data)
                check(ack.get("stream") == "carshare" and not ack.get("duplicate"),
                      "JetStream did not store an event: %r" % (ack,))
                stored += 1
    finally:
        nc.close()


def envelope(event_type, **payload):
    payload.update(eventType=event_type, eventId=str(uuid.uuid4()),
                   timestamp=time.strftime("%Y%m%d%H%M%S", time.gmtime()))
    return event_type, payload


def rental_events(order_id, cancelled):
    """What order and payment would publish for one rental: two producers' sequences."""
    customer = "cust%d" % (order_id % 7)
    ordered = [envelope("Ordered", id=order_id, productId="1001", qty=1, customerId=customer,
                        amount=45000, status="OrderApproved")]
    paid = [envelope("Paid", id=order_id + 500000, orderId=order_id, productId="1001", qty=1,
                     amount=45000, status="Paid")]
    if cancelled:
        ordered.append(envelope("OrderCancelled", id=order_id, productId="1001", qty=1,
                                customerId=customer))
        paid.append(envelope("PayCancelled", id=order_id + 700000, orderId=order_id,
                             productId="1001", qty=1, amount=45000))
    return ordered, paid


def interleave(queues, rng):
    """Merges the queues at random, keeping each queue's own order (a producer's order)."""
    queues = [list(q) for q in queues if q]
    out = []
    while queues:
        q = rng.choice(queues)
        out.append(q.pop(0))
        if not q:
            queues.remove(q)
    return out


# ---- PostgreSQL: consumers shared by replicas ----

def test_consumer_replicas_apply_each_event_once():
    if not ON_PG:
        return
    env = {"BUS_RETRY_MS": "50", "BUS_POLL_MS": "200"}
    s = System(["delivery", "customerpage"], env=env)
    with s:
        dl = ["delivery", start_replica(s, "delivery", "delivery-b")]
        cp = ["customerpage", start_replica(s, "customerpage", "customerpage-b")]
        rng = random.Random(14)
        n = 120
        cancelled = {o for o in range(1, n + 1) if o % 2 == 0}
        queues = []
        for o in range(1, n + 1):
            queues.extend(rental_events(o, o in cancelled))
        events = interleave(queues, rng)
        third = len(events) // 3

        def applied_by(name):
            return sum(applied(s, [name], t) for t in ("Ordered", "Paid", "OrderCancelled"))
        # Both replicas at work on one stream: JetStream spreads the messages over the pull
        # requests of both, so the two events of a rental often meet in different replicas.
        publish_many(s, events[:third])
        wait_for(lambda: all(applied_by(x) > 0 for x in dl), WAIT,
                 "both delivery replicas to apply events")
        # One replica of each frozen mid-stream: its fetched batches come back to the other after
        # the ack wait, possibly while its own transaction is still open; it finds them done
        # when it runs again.
        s.freeze("delivery2")
        s.freeze("customerpage2")
        publish_many(s, events[third:2 * third])
        time.sleep(5)
        s.thaw("delivery2")
        s.thaw("customerpage2")
        for k in range(2 * third, len(events), 20):
            publish_many(s, events[k:k + 20])

        c = len(cancelled)
        wait_for(lambda: applied(s, dl, "Ordered") + applied(s, dl, "Paid")
                 + applied(s, dl, "OrderCancelled") == 2 * n + c, WAIT,
                 "delivery's replicas to apply every event")
        wait_for(lambda: stream_count(s, "DeliveryCanceled") == c, WAIT,
                 "one DeliveryCanceled per cancelled rental")

        # Delivery: one delivery per rental, in the contract's state.
        rows = psql(s, "delivery", "SELECT order_id, status FROM deliveries ORDER BY order_id")
        got = {int(o): st for o, st in (r.split("|") for r in rows)}
        want = {o: "DeliveryCancelled" if o in cancelled else "Shipped" for o in range(1, n + 1)}
        check(got == want, "delivery's states: %r" % {o: got.get(o) for o in want
                                                        if got.get(o) != want[o]})
        check(psql(s, "delivery", "SELECT count(*) FROM cancellations") == [str(c)],
              "cancellations are not one per cancelled rental")
        shipped = stream_count(s, "Shipped")
        check(n - c <= shipped <= n, "Shipped events: %d for %d rentals" % (shipped, n))

        # Customer page: every event of the six types applied once over both replicas.
        fed = {"Ordered": n, "Paid": n, "OrderCancelled": c, "PayCancelled": c,
               "Shipped": shipped, "DeliveryCanceled": c}
        wait_for(lambda: sum(applied(s, cp, t) for t in fed) == sum(fed.values()), WAIT,
                 "customerpage's replicas to apply every event")
        for t, k in fed.items():
            check(applied(s, cp, t) == k, "customerpage applied %s %d times, fed %d"
                  % (t, applied(s, cp, t), k))
        pages_shipped = 0
        for o in range(1, n + 1):
            code, p, _ = s.call("GET", "customerpage", "/customerpages/%d" % o)
            check(code == 200, "page of order %d: %d %r" % (o, code, p))
            steps = [h["status"] for h in p["history"]]
            check(len(steps) == len(set(steps)), "order %d: a step twice: %r" % (o, steps))
            pages_shipped += "Shipped" in steps
            if o in cancelled:
                check(p["status"] == "PaymentCancelled"
                      and {"Paid", "OrderApproved", "OrderCancelled", "DeliveryCancelled",
                           "PaymentCancelled"} <= set(steps), "cancelled order %d: %r" % (o, p))
            else:
                check(p["status"] == "Shipped" and sorted(steps) == ["OrderApproved", "Paid",
                                                                    "Shipped"],
                      "order %d: %r" % (o, p))
        check(pages_shipped == shipped, "%d pages show Shipped, the stream holds %d"
              % (pages_shipped, shipped))
        check(metric(s, "delivery2", "carshare_instance_info",
                     'service="delivery",instance="delivery-b"') == 1,
              "the replica's /metrics does not name its INSTANCE_ID")
        check(" inst=delivery-b " in s.log("delivery2"), "its log lines do not carry it")
        reruns = sum(value(s, x, "carshare_bus_conflict_reruns_total") for x in dl + cp)
        dead = sum(value(s, x, "carshare_bus_dead_letters_total") for x in dl + cp)
        check(dead == 0, "%d events were dead-lettered" % dead)
        print("replicas: %d events, conflict reruns %d, applied by each replica: delivery %s,"
              " customerpage %s" % (len(events), reruns,
                                    [sum(applied(s, [x], t) for t in fed) for x in dl],
                                    [sum(applied(s, [x], t) for t in fed) for x in cp]))


# ---- PostgreSQL: one relay leads, a standby takes over ----

def leader(s, names):
    lead = [x for x in names if leading(s, x) is True]
    stand = [x for x in names if leading(s, x) is False]
    return lead[0] if len(lead) == 1 and len(stand) == len(names) - 1 else None


def test_relay_leader_killed_mid_batch():
    if not ON_PG:
        return
    # Standbys look for the lead every 200 ms.
    s = System(["delivery", "customerpage"], env={"BUS_POLL_MS": "200"})
    with s:
        names = ["delivery", start_replica(s, "delivery", "delivery-b")]
        first = wait_for(lambda: leader(s, names), WAIT, "one relay to lead, one to stand by")
        other = [x for x in names if x != first][0]
        # A backlog in the shared outbox, as if both replicas had written it while the leader
        # was frozen: it then drains it in batches of 256, and is killed mid-drain.
        n = 3000
        base = 900000
        s.freeze(first)
        psql(s, "delivery",
             "INSERT INTO outbox (event_id, event_type, payload, created_at) SELECT u, 'Shipped',"
             " format('{\"eventType\":\"Shipped\",\"timestamp\":\"20261207000000\",\"eventId\":"
             "\"%%s\",\"id\":%%s,\"orderId\":%%s,\"paymentId\":null,\"status\":\"Shipped\"}',"
             " u, %d + i, %d + i), '2026-12-07T00:00:00.000Z' FROM (SELECT"
             " gen_random_uuid()::text AS u, i FROM generate_series(1, %d) AS i) AS t"
             % (base, base, n))
        s.thaw(first)
        wait_for(lambda: s.count_rows("delivery", "outbox") < n, WAIT,
                 "the leader to publish a first batch")
        s.kill(first)
        left = s.count_rows("delivery", "outbox")
        wait_for(lambda: leading(s, other), WAIT,
                 "the other replica's relay to take the lead")
        wait_for(lambda: s.count_rows("delivery", "outbox") == 0, WAIT,
                 "the new leader to drain the outbox")
        check(stream_count(s, "Shipped") == n, "the stream holds %d Shipped for %d events"
              % (stream_count(s, "Shipped"), n))
        wait_for(lambda: applied(s, ["customerpage"], "Shipped") == n, WAIT,
                 "customerpage to apply every event")
        dup = value(s, "customerpage", "carshare_bus_duplicates_total")
        check(applied(s, ["customerpage"], "Shipped") == n and
              s.count_rows("customerpage", "processed_events") == n,
              "customerpage did not apply each event once")
        print("relay: killed with %d of %d rows left; consumer duplicates %d" % (left, n, dup))


# ---- PostgreSQL: payment's replicas, charges and refunds racing ----

def until_not_503(call, tries=5):
    """A call repeated, as a client does, while the answer is 503 (all reruns of its
    transaction lost serialization conflicts: "try again shortly"); the same body is
    idempotent."""
    for _ in range(tries):
        code = call()
        if code != 503:
            return code
        time.sleep(0.2)
    return code


def test_payment_replicas_refund_once():
    if not ON_PG:
        return
    s = System(["payment"], env={"BUS_RETRY_MS": "50", "BUS_POLL_MS": "200"})
    with s:
        both = ["payment", start_replica(s, "payment", "payment-b")]
        n = 40
        card = "5500000000000004"

        def charge(i):
            o = i + 1
            return until_not_503(lambda: s.call("POST", both[i % 2], "/payments", {
                "orderId": o, "productId": "1001", "qty": 1, "amount": 45000,
                "cardNumber": card})[0])
        codes = concurrently(n, charge)
        check(all(c in (200, 201) for c in codes), "charges over two replicas: %r" % codes)
        check(psql(s, "payment", "SELECT count(*) FROM payments") == [str(n)],
              "not one payment per order")
        # Each replica committed half of the Paid events; the leading relay publishes both
        # halves (the other replica's rows on its BUS_RELAY_POLL_MS look).
        wait_for(lambda: stream_count(s, "Paid") == n, WAIT, "every Paid in the stream")

        # Two OrderCancelled per order under different eventIds (the same fact published twice),
        # and an HTTP refund of every third order at the same moment on the other replica.
        rng = random.Random(7)
        events = interleave([[envelope("OrderCancelled", id=o, productId="1001", qty=1,
                                       customerId="kim") for _ in range(2)]
                             for o in range(1, n + 1)], rng)

        def refund(i):
            o = 3 * i + 1
            return until_not_503(lambda: s.call("POST", both[o % 2], "/paymentCancellations",
                                                {"orderId": o})[0])
        codes = concurrently(n // 3 + 1, lambda i: publish_many(s, events) if i == 0 else refund(i - 1))
        check(all(c in (None, 200, 201) for c in codes), "refunds: %r" % codes)
        wait_for(lambda: applied(s, both, "OrderCancelled") == 2 * n, WAIT,
                 "the replicas to apply every OrderCancelled")
        wait_for(lambda: stream_count(s, "PayCancelled") >= n, WAIT, "every PayCancelled")
        check(psql(s, "payment", "SELECT count(*), count(DISTINCT order_id) FROM"
                                 " payment_cancellations") == ["%d|%d" % (n, n)],
              "refunds are not one per order")
        time.sleep(1)   # a second refund would be published within BUS_RELAY_POLL_MS
        check(stream_count(s, "PayCancelled") == n, "PayCancelled events: %d for %d orders"
              % (stream_count(s, "PayCancelled"), n))
        dead = sum(value(s, x, "carshare_bus_dead_letters_total") for x in both)
        check(dead == 0, "%d events were dead-lettered" % dead)
        print("payment: applied by each replica %s, conflict reruns %d" % (
            [applied(s, [x], "OrderCancelled") for x in both],
            sum(value(s, x, "carshare_bus_conflict_reruns_total") for x in both)))


# ---- PostgreSQL: a rebuild on one replica keeps what the others apply meanwhile ----

def test_rebuild_on_one_replica_keeps_the_other_replicas_events():
    if not ON_PG:
        return
    s = System(["customerpage"], env={"BUS_RETRY_MS": "50"})
    with s:
        b = start_replica(s, "customerpage", "customerpage-b")
        both = ["customerpage", b]
        # A stream long enough that the replay is still running when the rebuilding replica is
        # frozen just after its 202.
        n = 1500
        publish_many(s, [rental_events(o, False)[0][0] for o in range(1, n + 1)])
        wait_for(lambda: applied(s, both, "Ordered") == n, WAIT, "the replicas to apply the stream")
        code, body, _ = s.call("POST", "customerpage", "/admin/rebuild")
        s.freeze("customerpage")
        check(code == 202, "rebuild: %d %r" % (code, body))
        # Applied by the other replica while the rebuild runs on the frozen one (after its
        # replay's end point): they must be in the view that the swap puts in place.
        late = list(range(n + 1, n + 51))
        before = applied(s, [b], "Ordered")
        publish_many(s, [rental_events(o, False)[0][0] for o in late])
        wait_for(lambda: applied(s, [b], "Ordered") >= before + len(late), WAIT,
                 "the other replica to apply the late events")
        s.thaw("customerpage")
        result = wait_for(lambda: (lambda r: r if r["state"] in ("done", "failed") else None)(
            s.call("GET", "customerpage", "/admin/rebuild")[1]), WAIT, "the rebuild to end")
        check(result["state"] == "done", "rebuild: %r" % result)
        missing = [o for o in late if s.call("GET", b, "/customerpages/%d" % o)[0] != 200]
        check(not missing, "pages lost by the rebuild's swap: %r" % missing[:10])
        check(psql(s, "customerpage", "SELECT running FROM page_rebuild") == ["0"],
              "the rebuild flag is still set")
        print("rebuild: replayed %s events, %d applied meanwhile by the other replica"
              % (result.get("events"), len(late)))


# ---- SQLite: one process per service ----

def test_sqlite_refuses_a_second_process():
    if ON_PG:
        return
    s = System(["delivery"], db="sqlite")
    with s:
        env = s.env_for("delivery")
        env["PORT"] = str(free_port())
        p = subprocess.run([os.path.join(BIN, "carshare-delivery")], env=env, timeout=30,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
        check(p.returncode != 0, "a second delivery on the same SQLite file started")
        check("another delivery process already uses this SQLite database" in p.stderr
              and "DELIVERY_DATABASE_URL" in p.stderr, "no clear message: %r" % p.stderr[-800:])
        code, _, _ = s.call("GET", "delivery", "/health/ready")
        check(code == 200, "the first delivery is no longer ready: %d" % code)
        # The lock goes with the process: after a kill -9, a new process starts.
        s.kill("delivery")
        s.start("delivery")
        check(s.log("delivery").count("inst=") > 0, "log lines carry no instance id")


if __name__ == "__main__":
    run(globals())
