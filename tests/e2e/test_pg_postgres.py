"""test_pg_postgres.py: what only PostgreSQL can do to a service (issue 13). Runs once, always on a
private PostgreSQL server (harness.py), with the services of PG_SERVICES on it.

- PostgreSQL restarted during rentals (order and payment both on it): nothing acknowledged is lost
  (every 201 is an order, in order's database as an approved intake, with its payment), readiness
  turns 503 while the server is down and 200 again when it is back, rentals resume by themselves
  without a restart of any service, and every intake the outage interrupted is settled (no
  payment stands without its order, no car stays held by an attempt).
- The seed's mixed setup: order and payment on PostgreSQL, delivery and customerpage on SQLite; a
  rental goes through all four and its cancellation too.
- A statement past DB_STATEMENT_TIMEOUT_MS (a table locked from outside) is cancelled and answered
  503; the next request, lock released, succeeds.
- Two processes of a service start at once on a fresh database: both apply the migrations under
  the advisory lock, one of them each script, and both serve.
- A wrong password, a database that does not exist and a URL of another scheme stop the service
  at start with a message naming the setting.
"""
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (BIN, MIXED_PG_SERVICES, PG_SERVICES, Proc, System, check,  # noqa: E402
                     free_port, new_database, postgres, run, wait_for)
from rental_checks import orders, payments, problems, rent, temp_fleet  # noqa: E402

SERVICES = ["payment", "order"]
FAST = {"RECONCILE_INTERVAL_MS": "300", "PAYMENT_TIMEOUT_MS": "3000", "ORDER_LEASE_MS": "2000"}


def system(**kw):
    """payment and order on PostgreSQL, with cars enough that none runs out."""
    fleet = temp_fleet([{"id": "1001", "name": "Hyundai Avante", "location": "Gangnam",
                         "dailyPrice": 45000, "total": 5000}])
    s = System(SERVICES, db="postgres", env=FAST,
               service_env={"order": {"FLEET_FILE": fleet}}, **kw)
    s.fleet_file = fleet
    return s


def ready(s, name):
    try:
        return s.call("GET", name, "/health/ready", timeout=3)[0]
    except OSError:
        return None


def test_restart_during_rentals():
    s = system()
    with s:
        for name in SERVICES:
            check(name in PG_SERVICES and s.db_urls.get(name), "%s runs on PostgreSQL" % name)
        answers, stop = [], threading.Event()

        def renter():
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    code, body, _ = rent(s, "1001", 1, customerId="pg%d" % i)
                except OSError:
                    continue
                answers.append((code, body))
                time.sleep(0.02)
        t = threading.Thread(target=renter)
        t.start()
        try:
            wait_for(lambda: sum(1 for c, _ in answers if c == 201) >= 5, 20, "rentals before")
            pg = postgres()
            pg.stop()
            for name in SERVICES:
                wait_for(lambda: ready(s, name) == 503, 15, name + " not ready while down")
            during = len(answers)
            time.sleep(1.0)
            pg.start()
            for name in SERVICES:
                wait_for(lambda: ready(s, name) == 200, 20, name + " ready again")
            wait_for(lambda: sum(1 for c, _ in answers[during:] if c == 201) >= 5, 30,
                     "rentals resume by themselves")
        finally:
            stop.set()
            t.join()
        accepted = {b["id"] for c, b in answers if c == 201}
        refused = [c for c, _ in answers if c != 201]
        # 500 only as the contract's "outcome unknown": payment charged, then neither the approval
        # nor the voiding could be written while the server was away (the rental may still stand).
        unknown = [b for c, b in answers if c == 500]
        check(all("may still be accepted" in b.get("message", "") for b in unknown),
              "a 500 that is not 'outcome unknown': %r" % unknown[:3])
        check(all(c in (402, 409, 500, 503) for c in refused), "refusals are 503s: %r" % refused[:10])
        # Every acknowledged rental is an order with its payment: nothing acknowledged was lost.
        paid = {p["orderId"] for p in payments(s)}
        listed = {o["id"] for o in orders(s)}
        check(accepted <= listed, "accepted rentals missing: %r" % sorted(accepted - listed))
        check(accepted <= paid, "accepted rentals without payment: %r" % sorted(accepted - paid))
        # order's own records: each accepted rental is an approved intake; the attempts the outage
        # cut short are settled by the reconciler (none pending for ever, nothing left charged).
        approved = {int(r[0]) for r in s.psql("order", "SELECT id FROM intakes WHERE state = 'approved'")}
        check(accepted <= approved, "accepted rentals not approved in order's database: %r" %
              sorted(accepted - approved))
        # An intake whose outcome could not be written (a 500) is settled too, once its lease
        # has run out (the process no longer renews it when its call is over).
        wait_for(lambda: not s.psql("order", "SELECT id FROM intakes WHERE state IN "
                                             "('pending', 'voiding', 'in_doubt')"),
                 30, "every interrupted intake settled")
        wait_for(lambda: not problems(s), 30, "no payment without its order, no car held")
        print("rentals: %d accepted, %d refused while PostgreSQL was away" %
              (len(accepted), len(refused)))
    os.remove(s.fleet_file)


def test_statement_timeout_answers_503():
    s = System(["payment"], db="postgres",
               service_env={"payment": {"DB_STATEMENT_TIMEOUT_MS": "300"}})
    with s:
        body = {"orderId": 1, "productId": "1001", "qty": 1, "amount": 100}
        check(s.call("POST", "payment", "/payments", body)[0] == 201, "first payment")
        database = s.db_urls["payment"].rsplit("/", 1)[1]
        pg = postgres()
        holder = subprocess.Popen(
            ["psql", "-X", "-q", "-h", pg.dir, "-p", str(pg.port), "-U", "postgres", "-d", database,
             "-c", "BEGIN; LOCK TABLE payments IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(3); COMMIT;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            def locked():
                out = pg.psql("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                              " WHERE c.relname = 'payments' AND l.mode = 'AccessExclusiveLock'"
                              " AND l.granted", database)
                return "1" in out.split()
            wait_for(locked, 10, "the table to be locked")
            code, err, _ = s.call("POST", "payment", "/payments", dict(body, orderId=2))
            check(code == 503, "a statement past its deadline is answered 503: %d %r" % (code, err))
            code, _, _ = s.call("GET", "payment", "/payments")
            check(code == 503, "a read past its deadline too: %d" % code)
        finally:
            holder.wait(20)
        code, p, _ = s.call("POST", "payment", "/payments", dict(body, orderId=2))
        check(code == 201, "the lock gone, the same request succeeds: %d %r" % (code, p))
        check(len(payments(s)) == 2, "nothing was stored twice")


def payment_proc(s, name, url, port):
    """A payment process of its own on `url`, wired as the harness wires payment (bus user,
    token keys), but on its own port."""
    s.ports.setdefault("payment", free_port())
    env = s.env_for("payment")
    env.update(PORT=str(port), PAYMENT_DATABASE_URL=url)
    return Proc(name, [os.path.join(BIN, "carshare-payment")], env, os.path.join(s.dir, name + ".log"))


def test_two_processes_migrate_at_once():
    s = System([], db="postgres")
    with s:
        url = new_database("payment")
        ports = [free_port(), free_port()]
        procs = [payment_proc(s, "payment-%d" % i, url, ports[i]) for i in range(2)]
        try:
            for p in procs:
                p.start()
            for i, p in enumerate(procs):
                def up(p=p, port=ports[i]):
                    check(p.running(), "%s exited: %s" % (p.name, open(p.log_path).read()[-2000:]))
                    s.ports[p.name] = port
                    try:
                        return s.call("GET", p.name, "/health/ready", timeout=2)[0] == 200
                    except OSError:
                        return False
                wait_for(up, 20, p.name + " ready")
            logs = [open(p.log_path).read() for p in procs]
            migrated = sum(log.count('schema=service version=1') for log in logs)
            check(migrated == 1, "the service script ran once in all: %d" % migrated)
            body = {"orderId": 7, "productId": "1001", "qty": 1, "amount": 100}
            check(s.call("POST", "payment-0", "/payments", body)[0] == 201, "first process serves")
            code, p, _ = s.call("POST", "payment-1", "/payments", body)
            check(code == 200 and p["orderId"] == 7, "the second sees the same database: %d" % code)
        finally:
            for p in procs:
                p.stop()


def test_mixed_setup():
    """The seed's polyglot persistence: order and payment on PostgreSQL, delivery and customerpage
    on their SQLite files, one rental through all four and its cancellation."""
    s = System(["payment", "order", "delivery", "customerpage"], db="postgres",
               pg_services=MIXED_PG_SERVICES)
    with s:
        check(sorted(s.db_urls) == ["order", "payment"], "on PostgreSQL: %r" % sorted(s.db_urls))
        for name in ("delivery", "customerpage"):
            check(os.path.exists(os.path.join(s.dir, "data", name + ".db")), name + " on SQLite")
        code, o, _ = rent(s, "1001", 1)
        check(code == 201, "rental: %d %r" % (code, o))

        def page():
            code, body, _ = s.call("GET", "customerpage", "/customerpages/%d" % o["id"])
            return body if code == 200 else None
        wait_for(lambda: (page() or {}).get("status") == "Shipped", 20, "the customer page shows it shipped")
        check(s.call("DELETE", "order", "/orders/%d" % o["id"])[0] == 204, "cancel")
        wait_for(lambda: (page() or {}).get("status") == "PaymentCancelled", 20,
                 "the cancellation reaches the customer page")
        wait_for(lambda: not problems(s), 20, "refunded, the car back")


def test_bad_settings_stop_the_service():
    s = System([], nats=False, db="postgres")
    with s:
        url = new_database("payment")
        password = url.split("://")[1].split("@")[0].split(":")[1]
        bad = {
            "wrong password": url.replace("@", "x@", 1),
            "missing database": url.rsplit("/", 1)[0] + "/no_such_database",
            "another scheme": "mysql://u:p@127.0.0.1:1/x",
        }
        for what, value in bad.items():
            p = payment_proc(s, "payment-bad", value, free_port())
            p.start()
            try:
                code = p.popen.wait(20)
            except subprocess.TimeoutExpired:
                p.stop()
                code = None
            log = open(p.log_path).read()
            check(code not in (0, None), "%s: the service must stop at start (exit %r)" % (what, code))
            check("PAYMENT_DATABASE_URL" in log,
                  "%s: the message names the setting:\n%s" % (what, log[-1500:]))
            check(password not in log, "%s: the password is not logged" % what)
            os.remove(p.log_path)


run(globals())
