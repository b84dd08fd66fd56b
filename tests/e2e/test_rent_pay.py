"""test_rent_pay.py: renting and paying, straight against order and payment (issue 2).

Real binaries, a real nats-server, free loopback ports. Covers: the fleet and the HAL shapes,
a rental and its payment, the httpie form with numeric strings, a declined card, every kind of
bad input (each refused in the contract's error shape and changing nothing), many concurrent
rentals of the last cars, cancellation, payment's idempotency per orderId and its voids, and
card numbers never stored or logged in full.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import System, check, check_error, run, wait_for  # noqa: E402
from rental_checks import (cancellations, concurrently, fleet, orders, payments, rent,  # noqa: E402
                           wait_settled)

SERVICES = ["payment", "order"]
FAST = {"RECONCILE_INTERVAL_MS": "200"}


def system(**kw):
    return System(SERVICES, env=FAST, **kw)


def test_fleet_and_hal_shapes():
    with system() as s:
        code, body, _ = s.call("GET", "order", "/cars")
        check(code == 200, "GET /cars: %d" % code)
        cars = body["_embedded"]["cars"]
        check([c["id"] for c in cars] == [str(i) for i in range(1001, 1011)],
              "demo fleet ids: %r" % [c["id"] for c in cars])
        for c in cars:
            for key in ("id", "name", "location", "dailyPrice", "total", "available"):
                check(key in c, "car lacks %s: %r" % (key, c))
            check(c["total"] >= 2 and c["available"] == c["total"], "fresh car %r" % c)
            check(45000 <= c["dailyPrice"] <= 150000, "daily price in KRW: %r" % c)
            check(c["_links"]["self"]["href"].endswith("/cars/" + c["id"]), "self link %r" % c)
        check(body["page"] == {"size": 20, "totalElements": 10, "totalPages": 1, "number": 0},
              "page block %r" % body["page"])
        check(body["_links"]["self"]["href"].endswith("/cars"), "collection self link")

        code, body, _ = s.call("GET", "order", "/cars?page=1&size=4")
        check(code == 200 and [c["id"] for c in body["_embedded"]["cars"]] == ["1005", "1006", "1007", "1008"],
              "second page of 4: %r" % body)
        check(body["page"]["totalPages"] == 3 and body["page"]["number"] == 1, "page %r" % body["page"])

        code, car, _ = s.call("GET", "order", "/cars/1007")
        check(code == 200 and car["id"] == "1007" and car["name"], "GET /cars/1007: %r" % car)
        check_error(s.call("GET", "order", "/cars/9999"), 404, "9999")
        check_error(s.call("GET", "order", "/cars?size=0"), 400, "size")

        for svc, path, name in (("order", "/orders", "orders"), ("payment", "/payments", "payments"),
                                ("payment", "/paymentCancellations", "paymentCancellations")):
            code, body, _ = s.call("GET", svc, path)
            check(code == 200 and body["_embedded"][name] == [] and body["page"]["totalElements"] == 0,
                  "empty %s: %r" % (path, body))


def test_rent_list_item_search():
    with system() as s:
        before = fleet(s)["1002"]
        code, o, h = rent(s, "1002", 2, customerId="kim", cardNumber="4111111111111111")
        check(code == 201, "rent: %d %r" % (code, o))
        check(o["status"] == "OrderApproved", "status %r" % o)
        check(o["productId"] == "1002" and o["qty"] == 2 and o["customerId"] == "kim", "fields %r" % o)
        check(o["amount"] == 2 * before["dailyPrice"], "amount %r, daily %d" % (o, before["dailyPrice"]))
        check(isinstance(o["paymentId"], int) and o["paymentId"] > 0, "paymentId %r" % o)
        check(isinstance(o["id"], int), "id %r" % o)
        check(h.get("location", "").endswith("/orders/%d" % o["id"]), "Location %r" % h.get("location"))
        check(o["_links"]["self"]["href"].endswith("/orders/%d" % o["id"]), "self link %r" % o)
        check("x-request-id" in h, "X-Request-Id echoed")
        check(fleet(s)["1002"]["available"] == before["available"] - 2, "2 cars of 1002 rented")

        code, item, _ = s.call("GET", "order", "/orders/%d" % o["id"])
        check(code == 200 and item == o, "GET item %r != %r" % (item, o))
        code, body, _ = s.call("GET", "order", "/orders")
        check(code == 200 and body["_embedded"]["orders"] == [o], "list %r" % body)
        check(body["page"]["totalElements"] == 1, "page %r" % body["page"])
        code, body, _ = s.call("GET", "order", "/orders/search/findByCustomerId?customerId=kim")
        check(code == 200 and body["_embedded"]["orders"] == [o], "search kim %r" % body)
        code, body, _ = s.call("GET", "order", "/orders/search/findByCustomerId?customerId=lee")
        check(code == 200 and body["_embedded"]["orders"] == [], "search lee %r" % body)
        check_error(s.call("GET", "order", "/orders/search/findByCustomerId"), 400, "customerId")

        code, p, _ = s.call("GET", "payment", "/payments/%d" % o["paymentId"])
        check(code == 200, "payment item %d %r" % (code, p))
        check(p["orderId"] == o["id"] and p["amount"] == o["amount"] and p["status"] == "Paid",
              "payment %r" % p)
        check(p["productId"] == "1002" and p["qty"] == 2, "payment fields %r" % p)
        check(p["cardLast4"] == "1111" and "cardNumber" not in p, "card on the payment %r" % p)
        check(p["_links"]["self"]["href"].endswith("/payments/%d" % p["id"]), "payment link %r" % p)
        code, body, _ = s.call("GET", "payment", "/payments/search/findByOrderId?orderId=%d" % o["id"])
        check(code == 200 and body["_embedded"]["payments"] == [p], "findByOrderId %r" % body)
        code, body, _ = s.call("GET", "payment", "/payments/search/findByOrderId?orderId=424242")
        check(code == 200 and body["_embedded"]["payments"] == [], "findByOrderId none %r" % body)
        check_error(s.call("GET", "payment", "/payments/424242"), 404, "424242")
        wait_settled(s)


def test_httpie_form_numeric_strings():
    with system() as s:
        code, o, _ = s.call("POST", "order", "/orders", {"productId": "1001", "qty": "1"})
        check(code == 201, "httpie form: %d %r" % (code, o))
        # The customer is the signed-in one (the harness signs POST /orders in as kim).
        check(o["qty"] == 1 and o["customerId"] == "kim" and o["status"] == "OrderApproved", "%r" % o)
        # A number for productId is its decimal text; fields the server owns are ignored.
        code, o2, _ = s.call("POST", "order", "/orders",
                             {"productId": 1003, "qty": 1, "id": 99, "status": "Shipped",
                              "amount": 1, "paymentId": 5, "colour": "red"})
        check(code == 201, "numeric productId: %d %r" % (code, o2))
        check(o2["productId"] == "1003" and o2["id"] != 99 and o2["status"] == "OrderApproved"
              and o2["amount"] == fleet(s)["1003"]["dailyPrice"] and o2["paymentId"] != 5, "%r" % o2)
        wait_settled(s)


def test_declined_card_leaves_nothing():
    with system() as s:
        before = fleet(s)
        code, body, h = rent(s, "1005", 2, cardNumber="4000000000000002")
        check_error((code, body, h), 402, "declined")
        check(body["path"] == "/orders", "path %r" % body)
        check(fleet(s) == before, "fleet changed after a decline")
        check(orders(s) == [] and payments(s) == [], "a declined rental left an order or a payment")
        # The same card with spaces is the same card.
        check_error(rent(s, "1005", 1, cardNumber="4000 0000 0000 0002"), 402, "declined")
        check(orders(s) == [] and payments(s) == [] and fleet(s) == before, "second decline left state")


def bad_inputs():
    """(description, method, path, json body or None, raw body or None, headers, status, word)"""
    big = '{"productId": "1001", "qty": 1, "pad": "%s"}' % ("x" * 100000)
    ok = {"productId": "1001", "qty": 1}
    cases = [
        ("not JSON", "POST", "/orders", None, "productId=1001&qty=1", None, 400, "JSON"),
        ("truncated JSON", "POST", "/orders", None, '{"productId": "1001", ', None, 400, "JSON"),
        ("empty body", "POST", "/orders", None, "", None, 400, ""),
        ("JSON array", "POST", "/orders", [ok], None, None, 400, ""),
        ("JSON string", "POST", "/orders", "1001", None, None, 400, ""),
        ("qty not numeric", "POST", "/orders", {"productId": "1001", "qty": "abc"}, None, None, 400, "qty"),
        ("qty fraction", "POST", "/orders", {"productId": "1001", "qty": 1.5}, None, None, 400, "qty"),
        ("qty boolean", "POST", "/orders", {"productId": "1001", "qty": True}, None, None, 400, "qty"),
        ("qty object", "POST", "/orders", {"productId": "1001", "qty": {"n": 1}}, None, None, 400, "qty"),
        ("qty zero", "POST", "/orders", {"productId": "1001", "qty": 0}, None, None, 400, "qty"),
        ("qty negative", "POST", "/orders", {"productId": "1001", "qty": -3}, None, None, 400, "qty"),
        ("qty negative string", "POST", "/orders", {"productId": "1001", "qty": "-1"}, None, None, 400, "qty"),
        ("qty huge", "POST", "/orders", {"productId": "1001", "qty": 1000000}, None, None, 400, "qty"),
        ("qty beyond 64 bits", "POST", "/orders", {"productId": "1001", "qty": 10 ** 30}, None, None, 400, "integer"),
        ("qty huge string", "POST", "/orders", {"productId": "1001", "qty": "99999999999999999999999"},
         None, None, 400, "qty"),
        ("qty missing", "POST", "/orders", {"productId": "1001"}, None, None, 400, "qty"),
        ("qty null", "POST", "/orders", {"productId": "1001", "qty": None}, None, None, 400, "qty"),
        ("productId missing", "POST", "/orders", {"qty": 1}, None, None, 400, "productId"),
        ("productId object", "POST", "/orders", {"productId": {"id": 1}, "qty": 1}, None, None, 400, "productId"),
        ("productId empty", "POST", "/orders", {"productId": "", "qty": 1}, None, None, 400, "productId"),
        ("productId too long", "POST", "/orders", {"productId": "1" * 200, "qty": 1}, None, None, 400, "productId"),
        ("customerId list", "POST", "/orders", {"productId": "1001", "qty": 1, "customerId": ["kim"]},
         None, None, 400, "customerId"),
        ("cardNumber letters", "POST", "/orders", {"productId": "1001", "qty": 1, "cardNumber": "4111-abcd"},
         None, None, 400, "cardNumber"),
        ("unknown car", "POST", "/orders", {"productId": "9999", "qty": 1}, None, None, 404, "9999"),
        ("oversized body", "POST", "/orders", None, big, {"Content-Type": "application/json"}, 413, ""),
        ("bad Idempotency-Key", "POST", "/orders", ok, None, {"Idempotency-Key": "k" * 300}, 400,
         "Idempotency-Key"),
        ("unknown route", "GET", "/rentals", None, None, None, 404, ""),
        ("unknown route under orders", "POST", "/orders/1/pay", ok, None, None, 404, ""),
        ("wrong method on /orders", "PUT", "/orders", ok, None, None, 405, ""),
        ("wrong method on an order", "PATCH", "/orders/1", ok, None, None, 405, ""),
        ("wrong method on /cars", "POST", "/cars", ok, None, None, 405, ""),
        ("order id not a number", "GET", "/orders/abc", None, None, None, 400, "id"),
        ("unknown order", "GET", "/orders/424242", None, None, None, 404, "424242"),
        ("cancel unknown order", "DELETE", "/orders/424242", None, None, None, 404, "424242"),
        ("bad page", "GET", "/orders?page=-1", None, None, None, 400, "page"),
    ]
    return cases


def test_bad_input_changes_nothing():
    with system() as s:
        before = fleet(s)
        for what, method, path, body, raw, headers, status, word in bad_inputs():
            resp = s.call(method, "order", path, body, headers=headers, raw=raw)
            try:
                check_error(resp, status, word or None)
                check(resp[1]["path"] == path.split("?")[0], "path %r" % resp[1])
            except AssertionError as e:
                raise AssertionError("%s: %s" % (what, e))
        check(fleet(s) == before, "bad input changed the fleet")
        check(orders(s) == [], "bad input created an order")
        check(payments(s) == [], "bad input reached payment")
        # And the service still works.
        code, o, _ = rent(s, "1001", 1)
        check(code == 201, "a good rental after the bad ones: %d %r" % (code, o))


def test_bad_input_at_payment():
    with system() as s:
        good = {"orderId": 1, "productId": "1001", "qty": 1, "amount": 45000}
        for what, body, word in (
                ("orderId missing", {"productId": "1001", "qty": 1, "amount": 1}, "orderId"),
                ("orderId zero", dict(good, orderId=0), "orderId"),
                ("amount negative", dict(good, amount=-5), "amount"),
                ("amount text", dict(good, amount="lots"), "amount"),
                ("qty zero", dict(good, qty=0), "qty"),
                ("card letters", dict(good, cardNumber="41x1"), "cardNumber")):
            try:
                check_error(s.call("POST", "payment", "/payments", body), 400, word)
            except AssertionError as e:
                raise AssertionError("%s: %s" % (what, e))
        check_error(s.call("POST", "payment", "/payments", raw="nope"), 400)
        check_error(s.call("POST", "payment", "/paymentCancellations", {"orderId": "x"}), 400, "orderId")
        check_error(s.call("DELETE", "payment", "/payments"), 405)
        check(payments(s) == [] and cancellations(s) == [], "bad input stored something")


def test_concurrent_rentals_of_the_last_cars():
    with system() as s:
        car = fleet(s)["1008"]
        n = car["available"]
        check(n >= 2, "needs a model with several cars: %r" % car)
        tries = 6 * n
        results = concurrently(tries, lambda i: rent(s, "1008", 1, customerId="c%d" % i))
        for r in results:
            check(not isinstance(r, Exception), "a request failed: %r" % (r,))
        codes = sorted(r[0] for r in results)
        check(codes.count(201) == n, "expected exactly %d winners, got %r" % (n, codes))
        check(codes.count(409) == tries - n, "the others must be 409: %r" % codes)
        for r in results:
            if r[0] == 409:
                check_error(r, 409, "available")
        check(fleet(s)["1008"]["available"] == 0, "all cars of 1008 rented")
        won = [o for o in orders(s) if o["productId"] == "1008"]
        check(len(won) == n, "orders of 1008: %d" % len(won))
        check(len(payments(s)) == n, "one payment per winner")
        check_error(rent(s, "1008", 1), 409, "available")
        wait_settled(s)


def test_cancel_releases_the_cars_once():
    with system() as s:
        before = fleet(s)["1004"]["available"]
        code, o, _ = rent(s, "1004", 2, customerId="lee")
        check(code == 201, "rent: %d %r" % (code, o))
        check(fleet(s)["1004"]["available"] == before - 2, "rented")

        code, body, _ = s.call("DELETE", "order", "/orders/%d" % o["id"])
        check(code == 204 and body is None, "DELETE: %d %r" % (code, body))
        code, item, _ = s.call("GET", "order", "/orders/%d" % o["id"])
        check(code == 200 and item["status"] == "OrderCancelled", "after cancel %r" % item)
        check(fleet(s)["1004"]["available"] == before, "cars released")

        code, body, _ = s.call("DELETE", "order", "/orders/%d" % o["id"])
        check(code == 204, "second DELETE: %d %r" % (code, body))
        check(fleet(s)["1004"]["available"] == before, "second cancel released nothing more")
        check_error(s.call("DELETE", "order", "/orders/999999"), 404, "999999")

        # OrderCancelled reached payment, which refunded exactly once.
        def refunded():
            cs = [c for c in cancellations(s) if c["orderId"] == o["id"]]
            return len(cs) == 1 and cs[0]["status"] == "PaymentCancelled" and cs[0]
        c = wait_for(refunded, 15, "the refund of the cancelled order")
        check(c["paymentId"] == o["paymentId"] and c["amount"] == o["amount"], "refund %r" % c)
        code, p, _ = s.call("GET", "payment", "/payments/%d" % o["paymentId"])
        check(p["status"] == "PaymentCancelled", "payment after refund %r" % p)
        # Asking payment again changes nothing.
        code, again, _ = s.call("POST", "payment", "/paymentCancellations", {"orderId": o["id"]})
        check(code == 200 and again["id"] == c["id"], "repeat refund: %d %r" % (code, again))
        check(len(cancellations(s)) == 1, "one refund")
        wait_settled(s)


def test_payment_idempotent_per_order():
    with system() as s:
        req = {"orderId": 5000, "productId": "1001", "qty": 2, "amount": 90000, "cardNumber": "5500000000000004"}
        code, p, h = s.call("POST", "payment", "/payments", req)
        check(code == 201 and p["status"] == "Paid" and p["orderId"] == 5000, "first: %d %r" % (code, p))
        check(h.get("location", "").endswith("/payments/%d" % p["id"]), "Location %r" % h)
        check(p["cardLast4"] == "0004", "last four %r" % p)
        code, again, _ = s.call("POST", "payment", "/payments", req)
        check(code == 200 and again["id"] == p["id"] and again["amount"] == 90000, "repeat: %d %r" % (code, again))
        # A repeat with any other field is another charge claiming the same order: 409, nothing charged.
        for change in ({"amount": 1}, {"qty": 1}, {"productId": "1002"}, {"cardNumber": "4111111111111111"},
                       {"cardNumber": None}):
            other = {k: v for k, v in dict(req, **change).items() if v is not None}
            check_error(s.call("POST", "payment", "/payments", other), 409, "already paid")
        check(len(payments(s)) == 1, "one payment for order 5000")

        # Refund: 201 once, then 200 with the same refund.
        code, c, _ = s.call("POST", "payment", "/paymentCancellations", {"orderId": 5000})
        check(code == 201 and c["status"] == "PaymentCancelled" and c["paymentId"] == p["id"]
              and c["amount"] == 90000, "refund: %d %r" % (code, c))
        code, c2, _ = s.call("POST", "payment", "/paymentCancellations", {"orderId": "5000"})
        check(code == 200 and c2["id"] == c["id"], "repeat refund: %d %r" % (code, c2))
        check_error(s.call("POST", "payment", "/payments", req), 409, "cancelled")

        # A void before any payment: recorded, and a late payment is refused.
        code, v, _ = s.call("POST", "payment", "/paymentCancellations", {"orderId": 5001})
        check(code == 201 and v["status"] == "PaymentVoided" and v["paymentId"] is None and v["amount"] == 0,
              "void: %d %r" % (code, v))
        check_error(s.call("POST", "payment", "/payments", dict(req, orderId=5001)), 409, "cancelled")
        code, body, _ = s.call("GET", "payment", "/paymentCancellations/%d" % v["id"])
        check(code == 200 and body == v, "cancellation item %r" % body)
        check(len(payments(s)) == 1 and len(cancellations(s)) == 2, "nothing else stored")

        # Declined: 402, nothing stored, and the order can still be paid with another card.
        check_error(s.call("POST", "payment", "/payments", dict(req, orderId=5002, cardNumber="4000000000000002")),
                    402, "declined")
        check(len(payments(s)) == 1, "declined stored nothing")
        code, p3, _ = s.call("POST", "payment", "/payments", dict(req, orderId=5002, cardNumber=None))
        check(code == 201 and p3["cardLast4"] is None, "no card is approved: %d %r" % (code, p3))


CARDS = ["4111111111111111", "5555444433331111", "3782 822463 10005"]


def test_card_numbers_never_stored_or_logged():
    s = system()
    with s:
        for i, card in enumerate(CARDS):
            code, o, _ = rent(s, "1001", 1, customerId="card%d" % i, cardNumber=card)
            check(code == 201, "rent with card %d: %d %r" % (i, code, o))
        check_error(rent(s, "1001", 1, cardNumber="4000000000000002"), 402)
        for p in payments(s):
            check(set(p) >= {"cardLast4"} and len(p["cardLast4"]) == 4, "payment shows last 4 only: %r" % p)
        # Every file the system wrote: databases (with their WAL), nats' store, the logs.
        check(s.stop("order") == 0, "order exits 0 on SIGTERM")
        check(s.stop("payment") == 0, "payment exits 0 on SIGTERM")
        files = s.data_files()
        if s.on_postgres("payment"):    # the server's tables and WAL
            kept = [f for f in files if "/pg/data/" in f]
        else:
            kept = [f for f in files if f.endswith("payment.db")]
        check(kept, "payment's database files not found in %r" % files)
        digits = [c.replace(" ", "") for c in CARDS] + ["4000000000000002"]
        for f in files:
            with open(f, "rb") as fh:
                data = fh.read()
            for d in digits:
                check(d.encode() not in data, "full card number found in %s" % f)
        last4 = [d[-4:] for d in digits[:3]]
        found = False
        for f in kept:
            with open(f, "rb") as fh:
                data = fh.read()
            found = found or any(x.encode() in data for x in last4)
        check(found, "the last four digits are kept")


run(globals())
