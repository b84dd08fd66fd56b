"""rental_checks.py: helpers shared by the rental end-to-end tests (test_rent_pay, test_resilience).

The central one is settled(): the promises of the rental intake, checked from the outside once
nothing is in flight any more:
  - every accepted order has exactly one payment, for its amount, and it is Paid while the order
    stands (refunded once the order is cancelled);
  - a payment whose order was never accepted has been refunded (PaymentCancelled): nothing
    unpaid is accepted and nothing is charged for a rental that was not;
  - every car is either available today or held today by an accepted order: one that stands and
    whose period covers today, or one returned today (its cars are free from the next day on).
"""
import atexit
import datetime
import json
import os
import sys
import tempfile
import threading
import time
import zoneinfo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, wait_for  # noqa: E402

ACTIVE = ("OrderApproved", "Shipped")
SEOUL = zoneinfo.ZoneInfo("Asia/Seoul")   # order's default TIME_ZONE


def seoul_day(instant=None):
    """The company's calendar day (YYYY-MM-DD) of an ISO UTC instant, or of now."""
    t = (datetime.datetime.fromisoformat(instant.replace("Z", "+00:00")) if instant
         else datetime.datetime.now(datetime.timezone.utc))
    return t.astimezone(SEOUL).date().isoformat()


def holds_today(o, today):
    """Whether an order keeps its cars out today (see the module's note)."""
    if "from" in o and not (o["from"] <= today < o["to"]):
        return False
    if o["status"] in ACTIVE:
        return True
    return o["status"] == "Returned" and seoul_day(o["returnedAt"]) == today


def all_items(system, service, path, name):
    """Every item of a paged collection."""
    items, page = [], 0
    while True:
        sep = "&" if "?" in path else "?"
        code, body, _ = system.call("GET", service, "%s%spage=%d&size=1000" % (path, sep, page))
        check(code == 200, "GET %s on %s: %d %r" % (path, service, code, body))
        items += body["_embedded"][name]
        if page + 1 >= body["page"]["totalPages"]:
            return items
        page += 1


def fleet(system):
    return {c["id"]: c for c in all_items(system, "order", "/cars", "cars")}


def orders(system):
    return all_items(system, "order", "/orders", "orders")


def payments(system):
    return all_items(system, "payment", "/payments", "payments")


def cancellations(system):
    return all_items(system, "payment", "/paymentCancellations", "paymentCancellations")


def rent(system, product="1001", qty=1, headers=None, timeout=30, **fields):
    body = {"productId": product, "qty": qty}
    body.update(fields)
    return system.call("POST", "order", "/orders", body, headers=headers, timeout=timeout)


def problems(system):
    """What breaks the settled state right now (empty list when settled)."""
    out = []
    today = seoul_day()
    cars, ords, pays = fleet(system), orders(system), payments(system)
    pays_by_order = {}
    for p in pays:
        pays_by_order.setdefault(p["orderId"], []).append(p)
    accepted = set()
    held = {}
    for o in ords:
        accepted.add(o["id"])
        mine = pays_by_order.get(o["id"], [])
        if len(mine) != 1:
            out.append("order %d has %d payments" % (o["id"], len(mine)))
            continue
        p = mine[0]
        if p["id"] != o["paymentId"] or p["amount"] != o["amount"]:
            out.append("order %r does not match its payment %r" % (o, p))
        if o["status"] in ACTIVE + ("Returned",):
            if p["status"] != "Paid":
                out.append("order %d stands but its payment is %s" % (o["id"], p["status"]))
        if holds_today(o, today):
            held[o["productId"]] = held.get(o["productId"], 0) + o["qty"]
        elif p["status"] != "PaymentCancelled":
            out.append("order %d is %s but its payment is %s" % (o["id"], o["status"], p["status"]))
    for p in pays:
        if p["orderId"] not in accepted and p["status"] != "PaymentCancelled":
            out.append("payment %d for order %d that was never accepted is %s" % (
                p["id"], p["orderId"], p["status"]))
    for cid, c in cars.items():
        if c["available"] != c["total"] - held.get(cid, 0):
            out.append("car %s: available %d, expected %d (total %d, held %d)" % (
                cid, c["available"], c["total"] - held.get(cid, 0), c["total"], held.get(cid, 0)))
    return out


def wait_settled(system, timeout=30):
    """Waits until problems() is empty; fails with the last problems otherwise."""
    last = []

    def ok():
        last[:] = problems(system)
        return not last
    try:
        wait_for(ok, timeout, "the rentals to settle")
    except AssertionError:
        raise AssertionError("not settled after %ss: %s" % (timeout, "; ".join(last[:10])))


def stream_count(s, event_type):
    """How many events of this type the stream `carshare` holds."""
    nc = s.nats_client()
    try:
        info = nc.request("$JS.API.STREAM.INFO.carshare",
                          json.dumps({"subjects_filter": "carshare." + event_type}).encode())
    finally:
        nc.close()
    check("state" in info, "stream info without state: %r" % (info,))
    return (info["state"].get("subjects") or {}).get("carshare." + event_type, 0)


def concurrently(n, fn):
    """Runs fn(i) for i in 0..n-1 on n threads started together; returns the results in order.
    An exception in fn is returned as the result."""
    results = [None] * n
    gate = threading.Barrier(n)

    def worker(i):
        try:
            gate.wait(10)
            results[i] = fn(i)
        except Exception as e:  # noqa: BLE001 -- reported to the caller
            results[i] = e
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    check(not any(t.is_alive() for t in threads), "a request thread hung")
    return results


def timed(fn):
    t0 = time.monotonic()
    result = fn()
    return result, time.monotonic() - t0


def write_fleet(path, cars):
    with open(path, "w") as f:
        json.dump({"cars": cars}, f)
    return path


def temp_fleet(cars):
    """A fleet file of cars in the temporary directory, removed when the test's process exits
    (whether or not the test passed): its path, for order's FLEET_FILE."""
    fd, path = tempfile.mkstemp(prefix="carshare-fleet-", suffix=".json")
    os.close(fd)
    atexit.register(lambda: os.path.exists(path) and os.remove(path))
    return write_fleet(path, cars)


def metric(system, service, name, labels):
    """The value of one series in /metrics, or None."""
    code, text, _ = system.call("GET", service, "/metrics")
    check(code == 200, "/metrics: %d" % code)
    prefix = "%s{%s}" % (name, labels)
    for line in str(text).splitlines():
        if line.startswith(prefix + " "):
            return float(line.split()[-1])
    return None
