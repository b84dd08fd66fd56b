"""test_pg_replicas.py: two order processes on one PostgreSQL database (issue 14, order's part).
Runs once, on a private PostgreSQL server (harness.py), payment and order on it, the two order
processes called directly.

- The last cars across two replicas: many rentals of a model with 3 cars, sent at once to both
  processes: exactly 3 are accepted (and paid), every other one is a 409.
- One Idempotency-Key sent to both processes at once: one rental, one payment; the other request
  gets the same order or "still being processed" (409).
- An intake left by a kill -9'd replica: payment is frozen (SIGSTOP) so that replica A's payment
  call hangs; while A lives, its lease is renewed and replica B's reconciler leaves the pending
  intake alone (checked over two lease lengths); A is killed with SIGKILL, payment thawed; once
  A's lease has run out B takes the intake and settles it exactly once (one settlement in its log,
  the intake B's, at most one Ordered event and one payment for it), and nothing stays charged
  without its order.
"""
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BIN, Proc, System, check, free_port, run, wait_for  # noqa: E402
from rental_checks import concurrently, payments, problems, rent, stream_count, temp_fleet  # noqa: E402

LEASE_MS = 3000
CARS = [{"id": "9001", "name": "Kia Ray", "location": "Mapo", "dailyPrice": 45000, "total": 3},
        {"id": "9002", "name": "Hyundai Avante", "location": "Gangnam", "dailyPrice": 45000,
         "total": 100}]


def system(**env):
    fleet = temp_fleet(CARS)
    env = dict({"RECONCILE_INTERVAL_MS": "200", "ORDER_LEASE_MS": str(LEASE_MS),
                "FLEET_FILE": fleet, "INSTANCE_ID": "order-b"}, **env)
    s = System(["payment", "order"], db="postgres", service_env={"order": env})
    s.fleet_file = fleet
    return s


def start_replica(s, name, **env):
    """A second order process on the same database (the harness's "order" is the first)."""
    e = s.env_for("order")
    e.update(PORT=str(free_port()), INSTANCE_ID=name, **env)
    check(e.get("ORDER_DATABASE_URL"), "order runs on PostgreSQL")
    s.ports[name] = int(e["PORT"])
    p = Proc(name, [os.path.join(BIN, "carshare-order")], e, os.path.join(s.dir, name + ".log"))
    p.start()
    s.procs[name] = p
    s.wait_ready(name)
    return p


def rent_at(s, name, product, **kw):
    return s.call("POST", name, "/orders", {"productId": product, "qty": 1}, as_="kim", **kw)


def test_last_cars_across_two_replicas():
    s = system()
    with s:
        start_replica(s, "order-a")
        replicas = ["order", "order-a"]
        answers = concurrently(12, lambda i: rent_at(s, replicas[i % 2], "9001"))
        codes = sorted(a[0] if isinstance(a, tuple) else repr(a) for a in answers)
        check(codes == [201] * 3 + [409] * 9, "exactly the 3 cars won: %r" % codes)
        won = {a[1]["id"] for a in answers if a[0] == 201}
        paid = {p["orderId"] for p in payments(s)}
        check(won == paid, "the winners and only they are paid: %r vs %r" % (won, paid))
        for name in replicas:
            code, car, _ = s.call("GET", name, "/cars/9001")
            check(code == 200 and car["available"] == 0, "%s sees no car left: %r" % (name, car))

        # One Idempotency-Key sent to both replicas at once.
        key = {"Idempotency-Key": "both-replicas"}
        answers = concurrently(2, lambda i: rent_at(s, replicas[i], "9002", headers=key))
        codes = [a[0] for a in answers]
        ids = {a[1]["id"] for a in answers if a[0] == 201}
        check(len(ids) == 1 and set(codes) <= {201, 409}, "one rental for the key: %r" % answers)
        rows = s.psql("order", "SELECT id FROM intakes WHERE idempotency_key LIKE '%:both-replicas'")
        check(len(rows) == 1, "one intake holds the key: %r" % rows)
        mine = [p for p in payments(s) if p["orderId"] == int(rows[0][0])]
        check(len(mine) == 1, "charged once: %r" % mine)
    os.remove(s.fleet_file)


def intake_row(s, intake_id):
    rows = s.psql("order", "SELECT state, owner FROM intakes WHERE id = %d" % intake_id)
    return rows[0] if rows else None


def test_killed_replicas_intake_settled_once_by_the_other():
    s = system()
    with s:
        a = start_replica(s, "order-a", PAYMENT_TIMEOUT_MS="60000", PAYMENT_RETRIES="0")
        payment = s.procs["payment"]
        payment.signal(signal.SIGSTOP)
        thawed = False
        try:
            t = threading.Thread(target=lambda: _rent_ignoring_errors(s))
            t.start()

            def pending():
                rows = s.psql("order", "SELECT id, owner FROM intakes WHERE state = 'pending'")
                return rows[0] if rows else None
            intake_id, owner = wait_for(pending, 20, "order-a's intake to be pending")
            intake_id = int(intake_id)
            check(owner == "order-a", "the intake is order-a's: %r" % owner)
            # While order-a lives and waits for payment, its lease is renewed: order-b's
            # reconciler (a pass every 200 ms) must leave the intake alone.
            time.sleep(2 * LEASE_MS / 1000.0)
            check(intake_row(s, intake_id) == ["pending", "order-a"],
                  "a live replica's intake was taken: %r" % intake_row(s, intake_id))
            a.kill()
            payment.signal(signal.SIGCONT)
            thawed = True
            t.join(60)
        finally:
            if not thawed:
                payment.signal(signal.SIGCONT)
        wait_for(lambda: (intake_row(s, intake_id) or [""])[0] in ("approved", "voided"), 30,
                 "order-b to settle order-a's intake")
        state, owner = intake_row(s, intake_id)
        check(owner == "order-b", "settled by order-b: %r" % owner)
        log = s.log("order")
        settled = [line for line in log.splitlines()
                   if ("intake=%d " % intake_id in line + " " or "order=%d " % intake_id in line + " ")
                   and ("rental accepted after restart" in line or "intake voided" in line)]
        check(len(settled) == 1, "settled once: %r" % settled)
        charged = [p for p in payments(s) if p["orderId"] == intake_id]
        check(len(charged) <= 1, "charged at most once: %r" % charged)
        if state == "approved":
            wait_for(lambda: stream_count(s, "Ordered") == 1, 20, "one Ordered event")
        wait_for(lambda: not problems(s), 20, "nothing charged without its order, no car held")
    os.remove(s.fleet_file)


def _rent_ignoring_errors(s):
    try:
        rent_at(s, "order-a", "9002", timeout=90)
    except OSError:
        pass    # order-a is killed while it waits


run(globals())
