"""test_pg_payment_replicas.py: order's payment client over two payment processes (issue 14).

Runs once, on PostgreSQL: two payment processes are two replicas of ONE database, the only
topology in which payment replicas are correct ("one payment per orderId" must hold across them,
and the reconciler's lookups must see every payment). order takes PAYMENT_URL as a list
(lib/balance.h: least outstanding, ties in turn, readiness probes, ejection, retry).

- Sequential rentals spread over both payment processes (each one's own request counter grows).
- One payment process killed (SIGKILL): every later rental is still 201 -- a call that found the
  dead instance (refused connect, or a pooled connection that broke) goes once more to the other,
  which is safe because payment charges at most once per orderId -- and every 201 has exactly one
  payment; order's metrics show the retries away from the dead instance and its ejection.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BIN, Proc, System, check, free_port, run, wait_for  # noqa: E402
from rental_checks import metric, orders, payments, rent, temp_fleet  # noqa: E402


def payments_served(s, name):
    """POST /payments the process itself answered (its own /metrics)."""
    _, text, _ = s.call("GET", name, "/metrics")
    total = 0
    for line in str(text).splitlines():
        if line.startswith('carshare_http_requests_total{route="/payments",method="POST"'):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def instance(port):
    return 'upstream="payment",instance="http://127.0.0.1:%d"' % port


def test_payment_spread_and_kill():
    port_a, port_b = free_port(), free_port()
    fleet = temp_fleet([{"id": "1001", "name": "Hyundai Avante", "location": "Gangnam",
                         "dailyPrice": 45000, "total": 100}])
    order_env = {
        "PAYMENT_URL": "http://127.0.0.1:%d,http://127.0.0.1:%d" % (port_a, port_b),
        "PAYMENT_PROBE_INTERVAL_MS": "600000",    # the calls themselves find the dead one
        "PAYMENT_EJECT_FAILURES": "1",
        "FLEET_FILE": fleet,
    }
    s = System(["payment", "order"], db="postgres", service_env={"order": order_env})
    s.ports["payment"] = port_a
    with s:
        env = s.env_for("payment")
        env["PORT"] = str(port_b)
        s.ports["payment2"] = port_b
        p = Proc("payment2", [os.path.join(BIN, "carshare-payment")], env,
                 os.path.join(s.dir, "payment2.log"))
        p.start()
        s.procs["payment2"] = p
        s.wait_ready("payment2")
        wait_for(lambda: metric(s, "order", "carshare_upstream_instance_ready", instance(port_b)) == 1,
                 15, "order to probe the second payment ready")

        a0, b0 = payments_served(s, "payment"), payments_served(s, "payment2")
        for _ in range(10):
            code, body, _ = rent(s)
            check(code == 201, "rental: %d %r" % (code, body))
        a1, b1 = payments_served(s, "payment"), payments_served(s, "payment2")
        check(a1 - a0 >= 3 and b1 - b0 >= 3,
              "10 rentals not spread over both payments: %d and %d" % (a1 - a0, b1 - b0))

        s.procs["payment2"].kill()
        for _ in range(10):
            code, body, _ = rent(s)
            check(code == 201, "rental after a payment process died: %d %r" % (code, body))
        check(payments_served(s, "payment") - a1 >= 10, "the live payment did not take the rest")
        check(metric(s, "order", "carshare_upstream_instance_retries_total", instance(port_b)) >= 1,
              "no payment call went to the other instance after failing on the dead one")
        check(metric(s, "order", "carshare_upstream_instance_ready", instance(port_b)) == 0,
              "the dead payment is still in order's rotation")

        # Every accepted rental has exactly one payment, whichever process took it.
        got = orders(s)
        check(len(got) == 20, "20 rentals accepted, %d orders" % len(got))
        paid = {}
        for pay in payments(s):
            paid[pay["orderId"]] = paid.get(pay["orderId"], 0) + 1
        for o in got:
            check(paid.get(o["id"]) == 1, "order %s has %s payments" % (o["id"], paid.get(o["id"])))
    os.unlink(fleet)


if __name__ == "__main__":
    run(globals())
