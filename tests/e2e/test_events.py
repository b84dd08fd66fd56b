#!/usr/bin/env python3
"""test_events.py: the asynchronous half of carshare, end to end (issue 3).

Real binaries (payment, order, delivery, customerpage) and a real nats-server on free ports:
  - a rental is shipped: order shows Shipped, delivery has it, the customer page shows it with
    its history, and each service logs the event with the rental's request id;
  - delivery stopped or frozen: rentals are still accepted, and all are shipped once it is back;
  - nats-server stopped: rentals and cancellations still succeed, their events wait in the
    outboxes and flow once it is back (readiness reports the bus meanwhile);
  - services started while nats-server accepts connections but does not answer (frozen): not
    ready meanwhile, ready and serving rentals once it answers;
  - a cancellation: delivery DeliveryCancelled, exactly one refund, the page shows
    PaymentCancelled with the full history; repeats change nothing;
  - kill -9 of delivery and of customerpage in the middle of a backlog: after restart nothing is
    lost, and the stream holds exactly one Shipped per rental (nothing applied twice);
  - the rebuilt customer page equals the live one, and events arriving during a rebuild are kept;
  - once retention (BUS_STREAM_MAX_BYTES) has dropped the stream's first events, a rebuild is
    refused with the reason and the live view is left as it was;
  - a malformed event is set aside in GET /admin/deadLetters and does not block the ones behind;
  - a backlog with a second copy of an event and a poison event in it, fetched as one batch and
    applied in one transaction: the poison one alone is set aside, the copy skipped, the rest
    applied once.

The stream is inspected, and a poison event injected, with a few lines of the NATS text
protocol (stdlib only). Waits poll real state with generous deadlines; nothing asserts speed.
"""
import base64
import json
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import System, check, check_error, run, wait_for  # noqa: E402
from rental_checks import stream_count, temp_fleet  # noqa: E402

SERVICES = ["payment", "order", "delivery", "customerpage"]
WAIT = 30          # seconds: an upper bound for anything to propagate, not an expectation
RANK = {"Paid": 0, "OrderApproved": 1, "Shipped": 2, "OrderCancelled": 3, "DeliveryCancelled": 4,
        "PaymentCancelled": 5}


def big_fleet():
    """A fleet file with enough cars that availability never limits these tests."""
    return temp_fleet([{"id": "1001", "name": "Hyundai Avante", "location": "Gangnam",
                        "dailyPrice": 45000, "total": 500},
                       {"id": "1002", "name": "Kia K5", "location": "Mapo",
                        "dailyPrice": 60000, "total": 500}])


FLEET = big_fleet()


def system(**kw):
    env = {"BUS_RETRY_MS": "50"}
    env.update(kw.pop("env", {}))
    return System(SERVICES, env=env, service_env={"order": {"FLEET_FILE": FLEET}}, **kw)


def publish_raw(s, event_type, event, msg_id=None):
    """Publishes event as it is; Nats-Msg-Id is its eventId unless msg_id is given (another id
    makes JetStream store a second copy: the consumers must skip it as a duplicate)."""
    nc = s.nats_client()
    try:
        ack = nc.request("carshare." + event_type, json.dumps(event).encode(),
                         {"Nats-Msg-Id": msg_id or event["eventId"]})
    finally:
        nc.close()
    check(ack.get("stream") == "carshare", "JetStream did not store the event: %r" % (ack,))


def last_event(s, event_type):
    """The last event of this type in the stream, as published."""
    nc = s.nats_client()
    try:
        got = nc.request("$JS.API.STREAM.MSG.GET.carshare",
                         json.dumps({"last_by_subj": "carshare." + event_type}).encode())
    finally:
        nc.close()
    check("message" in got, "no %s in the stream: %r" % (event_type, got))
    return json.loads(base64.b64decode(got["message"]["data"]))


# ---- the services ----

def rent(s, customer="kim", product="1001", qty=1):
    code, body, headers = s.call("POST", "order", "/orders",
                                 {"productId": product, "qty": qty, "customerId": customer})
    check(code == 201, "rental refused: %d %r" % (code, body))
    check(body["status"] == "OrderApproved", "new order status %r" % body["status"])
    body["_requestId"] = headers.get("x-request-id")
    return body


def cancel(s, order_id):
    code, body, _ = s.call("DELETE", "order", "/orders/%d" % order_id)
    check(code == 204, "cancel of order %d: %d %r" % (order_id, code, body))


def items(body, name):
    return (body or {}).get("_embedded", {}).get(name, [])


def deliveries_of(s, order_id):
    code, body, _ = s.call("GET", "delivery",
                           "/deliveries/search/findByOrderId?orderId=%d" % order_id)
    check(code == 200, "findByOrderId: %d %r" % (code, body))
    return items(body, "deliveries")


def wait_delivery(s, order_id, status):
    def ready():
        found = deliveries_of(s, order_id)
        return found[0] if len(found) == 1 and found[0]["status"] == status else None
    return wait_for(ready, WAIT, "delivery of order %d to be %s" % (order_id, status))


def page(s, order_id):
    code, body, _ = s.call("GET", "customerpage", "/customerpages/%d" % order_id)
    return body if code == 200 else None


def wait_page(s, order_id, status, history_len=None, timeout=WAIT):
    def ready():
        p = page(s, order_id)
        if p and p["status"] == status and (history_len is None
                                            or len(p["history"]) == history_len):
            return p
        return None
    return wait_for(ready, timeout, "customer page of order %d to be %s" % (order_id, status))


def wait_order(s, order_id, status):
    def ready():
        code, body, _ = s.call("GET", "order", "/orders/%d" % order_id)
        return body if code == 200 and body["status"] == status else None
    return wait_for(ready, WAIT, "order %d to be %s" % (order_id, status))


def all_pages(s):
    code, body, _ = s.call("GET", "customerpage", "/customerpages?size=1000")
    check(code == 200, "GET /customerpages: %d %r" % (code, body))
    return items(body, "customerpages")


def total(s, service, path):
    code, body, _ = s.call("GET", service, path + "?size=1")
    check(code == 200, "GET %s: %d %r" % (path, code, body))
    return body["page"]["totalElements"]


def check_history(p, statuses):
    got = [h["status"] for h in p["history"]]
    check(sorted(got, key=RANK.get) == sorted(statuses, key=RANK.get),
          "history of order %s: %r, expected the steps %r" % (p["orderId"], got, statuses))
    keys = [(h["timestamp"], RANK[h["status"]]) for h in p["history"]]
    check(keys == sorted(keys), "history not ordered by (timestamp, rank): %r" % p["history"])
    check(p["status"] == max(statuses, key=RANK.get), "status %r" % p["status"])


def ready_status(s, name):
    code, body, _ = s.call("GET", name, "/health/ready")
    return code, json.dumps(body) if not isinstance(body, str) else body


# ---- tests ----

def test_rent_is_shipped_and_visible():
    with system() as s:
        order = rent(s, "kim", "1002", 2)
        oid = order["id"]
        d = wait_delivery(s, oid, "Shipped")
        check(d["orderId"] == oid and d["paymentId"] == order["paymentId"],
              "delivery %r does not match order %r" % (d, order))
        p = wait_page(s, oid, "Shipped", 3)
        for key, want in (("id", oid), ("orderId", oid), ("customerId", "kim"),
                          ("productId", "1002"), ("qty", 2), ("amount", order["amount"]),
                          ("paymentId", order["paymentId"]), ("deliveryId", d["id"])):
            check(p[key] == want, "page %s = %r, expected %r" % (key, p[key], want))
        check_history(p, ["Paid", "OrderApproved", "Shipped"])
        check([h["eventType"] for h in p["history"]] == ["Paid", "Ordered", "Shipped"],
              "history event types %r" % p["history"])
        check(p["_links"]["self"]["href"].endswith("/customerpages/%d" % oid), "self link")
        wait_order(s, oid, "Shipped")

        # The read side's other doors.
        code, body, _ = s.call("GET", "delivery", "/deliveries/%d" % d["id"])
        check(code == 200 and body["status"] == "Shipped", "GET delivery: %d %r" % (code, body))
        code, body, _ = s.call("GET", "customerpage",
                               "/customerpages/search/findByCustomerId?customerId=kim")
        check(code == 200 and [x["orderId"] for x in items(body, "customerpages")] == [oid],
              "findByCustomerId: %r" % (body,))
        check(body["page"]["totalElements"] == 1, "page block %r" % body.get("page"))
        code, body, _ = s.call("GET", "customerpage",
                               "/customerpages/search/findByOrderId?orderId=%d" % oid)
        check(code == 200 and len(items(body, "customerpages")) == 1, "findByOrderId %r" % (body,))
        check([x["orderId"] for x in all_pages(s)] == [oid], "list of pages")
        check_error(s.call("GET", "customerpage", "/customerpages/999999"), 404)
        check_error(s.call("GET", "customerpage", "/customerpages/abc"), 404)
        check_error(s.call("GET", "customerpage",
                           "/customerpages/search/findByOrderId?orderId=x"), 400, "orderId")
        check_error(s.call("GET", "customerpage", "/customerpages/search/findByCustomerId"),
                    400, "customerId")
        check_error(s.call("GET", "delivery", "/deliveries/999999"), 404)
        check_error(s.call("GET", "delivery", "/deliveries?page=-1"), 400)
        check_error(s.call("GET", "delivery", "/deliveries/search/findByOrderId"), 400, "orderId")

        # POST /cancellations validates its input and changes nothing when refusing.
        check_error(s.call("POST", "delivery", "/cancellations", {"orderId": "seven"}), 400,
                    "orderId")
        check_error(s.call("POST", "delivery", "/cancellations", {}), 400, "orderId")
        check_error(s.call("POST", "delivery", "/cancellations", {"orderId": 0}), 400, "orderId")
        check_error(s.call("POST", "delivery", "/cancellations", raw="not json",
                           headers={"Content-Type": "application/json"}), 400)
        check(total(s, "delivery", "/cancellations") == 0, "a refused cancellation was recorded")

        # Readiness names the store and the bus.
        for name in ("delivery", "customerpage"):
            code, text = ready_status(s, name)
            check(code == 200, "%s not ready: %s" % (name, text))

        # One log line per event handled, carrying the rental's request id.
        req = order["_requestId"]
        check(req, "order gave no X-Request-Id")
        for name in ("delivery", "customerpage"):
            lines = [line for line in s.log(name).splitlines()
                     if "event handled" in line and req in line]
            check(len(lines) >= 2, "%s logged no handled event with req=%s:\n%s"
                  % (name, req, s.log(name)[-2000:]))
            check(all("eventId=" in line for line in lines), "event lines lack eventId")


def test_delivery_down_then_caught_up():
    with system() as s:
        s.stop("delivery")
        stopped = [rent(s, "lee") for _ in range(8)]          # accepted: 201 each
        for o in stopped:
            wait_page(s, o["id"], "OrderApproved")           # the rest of the system moves on
        s.freeze("customerpage")                             # and a frozen consumer too
        frozen = [rent(s, "lee") for _ in range(3)]
        s.start("delivery")
        s.thaw("customerpage")
        for o in stopped + frozen:
            wait_delivery(s, o["id"], "Shipped")
            p = wait_page(s, o["id"], "Shipped", 3)
            check_history(p, ["Paid", "OrderApproved", "Shipped"])
            wait_order(s, o["id"], "Shipped")
        check(total(s, "delivery", "/deliveries") == 11, "deliveries != rentals")


def test_bus_down_outbox_drains():
    with system() as s:
        warm = rent(s)
        wait_page(s, warm["id"], "Shipped")
        s.stop_nats()
        for name in ("delivery", "customerpage"):
            wait_for(lambda: ready_status(s, name)[0] == 503, WAIT, name + " to report the bus")
            code, text = ready_status(s, name)
            check("bus_connected" in text, "%s readiness does not name the bus: %s" % (name, text))
        kept = [rent(s, "park") for _ in range(5)]
        gone = [rent(s, "park") for _ in range(3)]
        for o in gone:
            cancel(s, o["id"])
        s.start_nats()
        for o in kept:
            wait_delivery(s, o["id"], "Shipped")
            p = wait_page(s, o["id"], "Shipped", 3)
            check_history(p, ["Paid", "OrderApproved", "Shipped"])
            wait_order(s, o["id"], "Shipped")
        for o in gone:
            wait_delivery(s, o["id"], "DeliveryCancelled")
            p = wait_page(s, o["id"], "PaymentCancelled")
            # Paid, Ordered and OrderCancelled reach delivery in any order: shipped or not,
            # the end is the same.
            steps = [h["status"] for h in p["history"]]
            want = ["Paid", "OrderApproved", "OrderCancelled", "DeliveryCancelled",
                    "PaymentCancelled"] + (["Shipped"] if "Shipped" in steps else [])
            wait_page(s, o["id"], "PaymentCancelled", len(want))
            check_history(page(s, o["id"]), want)
        for name in ("delivery", "customerpage"):
            wait_for(lambda: ready_status(s, name)[0] == 200, WAIT, name + " ready again")
        # One Shipped per shipment, none lost or doubled by the outage: the warm-up rental,
        # the kept ones, and the cancelled ones that had shipped before their cancellation.
        shipped_then_cancelled = sum(1 for o in gone if "Shipped" in
                                     [h["status"] for h in page(s, o["id"])["history"]])
        check(stream_count(s, "Shipped") == 1 + len(kept) + shipped_then_cancelled,
              "Shipped events in the stream do not match the shipments")


def test_services_start_while_nats_does_not_answer():
    """nats-server frozen (SIGSTOP) before the services start, as an overloaded server: it accepts
    their connections but never answers, so each one's first connection times out. With nats.c's
    retry on a failed first connect, that connection was closed for good and the service never
    became ready (lib/bus.c, "Connecting"). Each must say it is not ready while nats-server does
    not answer, and be ready and serve a rental end to end once it does."""
    s = system()
    try:
        s.make_keys()
        s.start_nats()
        s.freeze("nats")
        for name in SERVICES:
            s.start(name, wait_ready=False)
        for name in SERVICES:
            wait_for(lambda: "cannot reach nats-server yet" in s.log(name), WAIT,
                     name + "'s first connection to time out")
            code, text = ready_status(s, name)
            check(code == 503 and "bus_connected" in text,
                  "%s ready before its bus is connected: %d %s" % (name, code, text))
        s.thaw("nats")
        for name in SERVICES:
            s.wait_ready(name, WAIT)
        o = rent(s)
        p = wait_page(s, o["id"], "Shipped", 3)
        check_history(p, ["Paid", "OrderApproved", "Shipped"])
        wait_delivery(s, o["id"], "Shipped")
    except BaseException:
        s.failed = s.closing_after_error = True
        raise
    finally:
        s.close()


def refunds_of(s, order_id):
    code, body, _ = s.call("GET", "payment", "/paymentCancellations?size=1000")
    check(code == 200, "GET /paymentCancellations: %d %r" % (code, body))
    return [c for c in items(body, "paymentCancellations") if c["orderId"] == order_id]


def test_cancel_flow():
    with system() as s:
        order = rent(s, "choi")
        oid = order["id"]
        wait_page(s, oid, "Shipped", 3)
        cancel(s, oid)
        p = wait_page(s, oid, "PaymentCancelled", 6)
        check_history(p, list(RANK))
        check(p["customerId"] == "choi" and p["paymentId"] == order["paymentId"],
              "page fields after cancel: %r" % p)
        d = wait_delivery(s, oid, "DeliveryCancelled")
        code, body, _ = s.call("GET", "delivery", "/cancellations")
        mine = [c for c in items(body, "cancellations") if c["orderId"] == oid]
        check(len(mine) == 1 and mine[0]["deliveryId"] == d["id"], "cancellations %r" % (body,))
        wait_order(s, oid, "OrderCancelled")

        # Repeats: DELETE again, the delivery's own command, payment's own command.
        cancel(s, oid)
        code, body, _ = s.call("POST", "delivery", "/cancellations", {"orderId": str(oid)})
        check(code == 200 and body["id"] == mine[0]["id"],
              "repeated POST /cancellations: %d %r" % (code, body))
        code, body, _ = s.call("POST", "payment", "/paymentCancellations", {"orderId": oid})
        check(code in (200, 201), "repeated refund request: %d %r" % (code, body))

        # A later rental flows through every consumer: whatever the repeats caused is applied.
        later = rent(s, "choi")
        wait_page(s, later["id"], "Shipped", 3)
        check(len(refunds_of(s, oid)) == 1, "refunds of order %d: %r" % (oid, refunds_of(s, oid)))
        check(stream_count(s, "PayCancelled") == 1, "more than one PayCancelled event")
        check(stream_count(s, "DeliveryCanceled") == 1, "more than one DeliveryCanceled event")
        after = page(s, oid)
        check(after == p, "the page changed after repeats:\n%r\n%r" % (p, after))

        # A delivery cancelled by its own command before the order ever shipped.
        code, body, _ = s.call("POST", "delivery", "/cancellations", {"orderId": 987654})
        check(code == 201 and body["orderId"] == 987654 and body["paymentId"] is None,
              "POST /cancellations: %d %r" % (code, body))
        wait_delivery(s, 987654, "DeliveryCancelled")
        check(page(s, 987654) is None, "a page without Ordered is shown")


def kill_mid_batch(s, name, table):
    """SIGKILLs a consumer as soon as the first part of its backlog is committed, watching its
    database read-only (HTTP is no use here: the loop answers it only between fetched batches).
    The kill lands with part of the backlog applied and the rest not: in a later batch's
    transaction (rolled back, redelivered) or between a commit and its acks (redelivered,
    skipped as duplicates). Which one is timing; the test prints the duplicates it saw.
    Returns the rows committed at the kill."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        done = s.count_rows(name, table)
        if done:
            s.kill(name)
            return done
    raise AssertionError("%s did not start on its backlog" % name)


def metric(s, name, series):
    code, text, _ = s.call("GET", name, "/metrics")
    check(code == 200, "GET /metrics on %s: %d" % (name, code))
    for line in text.splitlines():
        if line.startswith(series + " ") or line.startswith(series + "{"):
            return float(line.split()[-1])
    return 0.0


def test_kill9_consumers_mid_batch():
    with system() as s:
        # A consumer applies a fetched slice (up to 64 events) in one pass and commits it faster
        # than it is watched (on PostgreSQL since its port, on SQLite too since a slice has no
        # savepoint per event: with 40 rentals a loaded machine saw the whole backlog committed
        # at the first look). A backlog of several slices per consumer keeps the kill landing
        # with part of it applied.
        n = 160
        s.freeze("delivery")
        s.freeze("customerpage")
        orders = [rent(s, "jung") for _ in range(n)]
        ids = {o["id"] for o in orders}

        s.thaw("delivery")
        shipped_at_kill = kill_mid_batch(s, "delivery", "deliveries")
        s.thaw("customerpage")
        shown_at_kill = kill_mid_batch(s, "customerpage", "customer_pages")
        check(shipped_at_kill < n and shown_at_kill < n, "the kills came after the backlog")

        s.start("delivery")
        s.start("customerpage")
        for o in orders:
            # Messages the killed process had fetched come back after the consumer's AckWait
            # (30 s in bus.c): allow for it.
            p = wait_page(s, o["id"], "Shipped", 3, timeout=WAIT + 60)
            check_history(p, ["Paid", "OrderApproved", "Shipped"])
        pages = all_pages(s)
        check({p["orderId"] for p in pages} == ids and len(pages) == n, "pages != rentals")
        code, body, _ = s.call("GET", "delivery", "/deliveries?size=1000")
        found = items(body, "deliveries")
        check(sorted(d["orderId"] for d in found) == sorted(ids), "deliveries != rentals")
        check(len({d["id"] for d in found}) == n, "delivery ids repeat")
        check(stream_count(s, "Shipped") == n, "the stream holds %d Shipped events for %d rentals"
              % (stream_count(s, "Shipped"), n))
        # Informative: events applied before the kill but never acked come back and are skipped.
        print("     killed delivery at %d/%d, customerpage at %d/%d; redelivered duplicates "
              "skipped after restart: delivery %d, customerpage %d"
              % (shipped_at_kill, n, shown_at_kill, n,
                 metric(s, "delivery", "carshare_bus_duplicates_total"),
                 metric(s, "customerpage", "carshare_bus_duplicates_total")), flush=True)


def test_batch_with_duplicate_and_poison():
    """One backlog fetched in a batch by each frozen consumer: a second copy of an event in it
    (another Nats-Msg-Id, the same eventId) and a poison event between the rentals. The consumer
    applies the batch in one transaction; the poison one fails, that transaction is rolled back
    and the batch applied again without it: every rental is shipped and shown once, the copy is
    skipped, the poison is dead-lettered and never applied."""
    with system() as s:
        warm = rent(s, "cho")
        wait_page(s, warm["id"], "Shipped", 3)
        s.freeze("delivery")
        s.freeze("customerpage")
        before = [rent(s, "cho") for _ in range(6)]
        copy = last_event(s, "Ordered")                     # not applied yet: frozen
        publish_raw(s, "Ordered", copy, msg_id="copy-" + copy["eventId"])
        poison = {"eventType": "Paid", "eventId": str(uuid.uuid4()), "timestamp": "20261124015039",
                  "id": 434343, "orderId": "not-a-number", "status": "Paid"}
        publish_raw(s, "Paid", poison)
        after = [rent(s, "cho") for _ in range(6)]
        s.thaw("delivery")
        s.thaw("customerpage")
        orders = [warm] + before + after
        for o in orders:
            check_history(wait_page(s, o["id"], "Shipped", 3), ["Paid", "OrderApproved", "Shipped"])
        for name in ("delivery", "customerpage"):
            wait_for(lambda: poison["eventId"] in json.dumps(
                s.call("GET", name, "/admin/deadLetters")[1]), WAIT,
                "the poison event in %s's dead letters" % name)
            check(metric(s, name, "carshare_bus_duplicates_total") >= 1,
                  "%s did not skip the copy of %s" % (name, copy["eventId"]))
            check(metric(s, name, "carshare_bus_failed_event_rollbacks_total") >= 1,
                  "%s never rolled a batch back for the poison event" % name)
        code, body, _ = s.call("GET", "delivery", "/deliveries?size=1000")
        found = items(body, "deliveries")
        check(sorted(d["orderId"] for d in found) == sorted(o["id"] for o in orders),
              "deliveries %r != rentals" % [d["orderId"] for d in found])
        check(stream_count(s, "Shipped") == len(orders), "the stream holds %d Shipped events for %d "
              "rentals" % (stream_count(s, "Shipped"), len(orders)))
        check(len(all_pages(s)) == len(orders), "pages != rentals")
        check(page(s, 434343) is None and deliveries_of(s, 434343) == [], "poison was applied")


def rebuild(s):
    code, body, headers = s.call("POST", "customerpage", "/admin/rebuild")
    check(code == 202 and body["state"] in ("running", "done"), "rebuild: %d %r" % (code, body))
    return wait_for(lambda: (lambda b: b if b["state"] in ("done", "failed") else None)(
        s.call("GET", "customerpage", "/admin/rebuild")[1]), WAIT, "the rebuild to end")


def test_rebuild_equals_live():
    with system() as s:
        orders = [rent(s, "han") for _ in range(8)]
        for o in orders[:3]:
            wait_page(s, o["id"], "Shipped")
            cancel(s, o["id"])
        for o in orders[:3]:
            wait_page(s, o["id"], "PaymentCancelled", 6)
        for o in orders[3:]:
            wait_page(s, o["id"], "Shipped", 3)
        live = all_pages(s)

        result = rebuild(s)
        check(result["state"] == "done", "rebuild failed: %r" % result)
        check(result["differences"] == 0 and result["rows"] == 8,
              "rebuild result %r" % result)
        check(result["events"] >= 8 * 3 + 3 * 3, "replayed too few events: %r" % result)
        check(all_pages(s) == live, "the rebuilt view differs from the live one")

        # Events that arrive while a rebuild runs are not lost by the swap.
        code, body, _ = s.call("POST", "customerpage", "/admin/rebuild")
        check(code == 202, "second rebuild: %d %r" % (code, body))
        during = [rent(s, "han") for _ in range(3)]
        again = s.call("POST", "customerpage", "/admin/rebuild")
        if again[0] == 409:
            check_error(again, 409, "already running")
        wait_for(lambda: s.call("GET", "customerpage", "/admin/rebuild")[1]["state"] == "done",
                 WAIT, "the second rebuild to end")
        for o in during:
            wait_page(s, o["id"], "Shipped", 3)
        check(all_pages(s)[:8] == live, "rows changed across the second rebuild")
        check(rebuild(s)["differences"] == 0, "a third rebuild found differences")


def stream_state(s):
    nc = s.nats_client()
    try:
        info = nc.request("$JS.API.STREAM.INFO.carshare", b"")
    finally:
        nc.close()
    check("state" in info, "stream info without state: %r" % (info,))
    return info["state"], info["config"]


def test_rebuild_refused_when_retention_cut_history():
    # A stream kept to 16 KiB drops its oldest events; each group of rentals is shipped (so every
    # consumer has read it) before the next, so only the replay's history is short.
    with system(env={"BUS_STREAM_MAX_BYTES": "16384"}) as s:
        for _ in range(4):
            group = [rent(s, "han") for _ in range(6)]
            for o in group:
                wait_page(s, o["id"], "Shipped", 3)
        state, config = stream_state(s)
        check(config.get("max_bytes") == 16384, "stream limits: %r" % (config,))
        check(state["bytes"] <= 16384 and state["first_seq"] > 1, "stream not cut: %r" % (state,))
        live = all_pages(s)
        check(len(live) == 24, "live view: %d rows" % len(live))
        result = rebuild(s)
        check(result["state"] == "failed" and "retention" in (result["error"] or ""),
              "a rebuild from a cut history: %r" % (result,))
        check(all_pages(s) == live, "a refused rebuild changed the view")
        after = rent(s, "han")                # the live view still follows the stream
        wait_page(s, after["id"], "Shipped", 3)


def test_dead_letters():
    with system() as s:
        warm = rent(s)
        wait_page(s, warm["id"], "Shipped")
        poison = {"eventType": "Paid", "eventId": str(uuid.uuid4()), "timestamp": "20261124015039",
                  "id": 424242, "orderId": "not-a-number", "status": "Paid"}
        publish_raw(s, "Paid", poison)
        after = rent(s)                       # behind the poison in the stream
        wait_page(s, after["id"], "Shipped", 3)
        for name in ("delivery", "customerpage"):
            def listed():
                code, body, _ = s.call("GET", name, "/admin/deadLetters")
                check(code == 200, "GET /admin/deadLetters on %s: %d %r" % (name, code, body))
                return poison["eventId"] in json.dumps(body)
            wait_for(listed, WAIT, "the poison event in %s's dead letters" % name)
            code, body, _ = s.call("GET", name, "/admin/deadLetters")
            check("orderId" in json.dumps(body), "the dead letter does not say what was wrong: %r"
                  % (body,))
        check(page(s, 424242) is None and deliveries_of(s, 424242) == [], "poison was applied")


run(globals())
