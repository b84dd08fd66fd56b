#!/usr/bin/env python3
"""test_periods.py: rental periods, day-by-day bookings and returns, end to end (issue 12).

Real binaries and a real nats-server on free loopback ports. Covers:
  - a rental for a period: amount = qty x days x dailyPrice, from/to/days on the order, the
    payment charged for the period; the seed's command still rents for one day from today;
  - every bad period (past, too far ahead, empty or reversed, more than 30 days, dates that do
    not exist, other formats, not a string) is a 400 in the contract's shape that changes nothing;
  - overlapping and adjacent periods racing for the last car: overlapping ones never overbook a
    day (the loser's 409 names the first full day), adjacent ones do not compete;
  - a 30-day rental books exactly its 30 days; availability for a period (GET /cars?from&to);
  - return by the customer who rented (another customer's is a 404, no token a 401) and by
    staff: 200 Returned, cars free again from the next day, again 200 with no new effect, a
    returned rental cannot be cancelled, a cancelled one cannot be returned;
  - a return racing a cancel: exactly one of them wins, only the winner's event is published, and
    the cars and payment agree;
  - the automatic return at the end of the period, with the test clock, across a restart;
  - the customer page shows the period and Returned, and its rebuild gives the same view; the
    stream holds one Returned per returned rental however often it was returned.
Time moves only through ORDER_TEST_CLOCK_OFFSET_S (order's test clock); nothing waits for days.
"""
import datetime
import os
import sys
import zoneinfo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import AUTO, STAFF, System, check, check_error, run, wait_for  # noqa: E402
from rental_checks import (all_items, concurrently, orders, payments,  # noqa: E402
                           stream_count, temp_fleet)

SEOUL = zoneinfo.ZoneInfo("Asia/Seoul")
DAY = 86400
WAIT = 30


def today(offset_s=0):
    """Today in the company's time zone (order's default TIME_ZONE), as order sees it."""
    now = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset_s)
    return now.astimezone(SEOUL).date()


def iso(d, days=0):
    return (d + datetime.timedelta(days=days)).isoformat()


def fleet_file(cars):
    return temp_fleet(cars)


FLEET = fleet_file([
    {"id": "9001", "name": "Kia Ray (last car)", "location": "Mapo", "dailyPrice": 45000, "total": 1},
    {"id": "9002", "name": "Hyundai Avante", "location": "Gangnam", "dailyPrice": 50000, "total": 3},
    {"id": "9003", "name": "Kia Carnival", "location": "Incheon", "dailyPrice": 120000, "total": 40},
])


def system(services=("payment", "order"), order_env=None, **kw):
    env = {"order": {"FLEET_FILE": FLEET, "RETURN_INTERVAL_MS": "100"}}
    env["order"].update(order_env or {})
    return System(list(services), env={"RECONCILE_INTERVAL_MS": "200", "BUS_RETRY_MS": "50"},
                  service_env=env, **kw)


def rent(s, product="9003", qty=1, expect=201, **fields):
    body = {"productId": product, "qty": qty, "customerId": "kim"}
    body.update(fields)
    code, got, _ = s.call("POST", "order", "/orders", body)
    check(code == expect, "POST /orders %r: %d %r" % (body, code, got))
    return got


def car(s, product, start=None, end=None):
    query = ""
    if start:
        query = "?from=%s&to=%s" % (start, end)
    code, body, _ = s.call("GET", "order", "/cars/%s%s" % (product, query))
    check(code == 200, "GET /cars/%s%s: %d %r" % (product, query, code, body))
    return body


def free(s, product, start, end):
    return car(s, product, start, end)["available"]


def order(s, oid):
    code, body, _ = s.call("GET", "order", "/orders/%d" % oid)
    check(code == 200, "GET /orders/%d: %d %r" % (oid, code, body))
    return body


def give_back(s, oid, expect=200, as_=AUTO):
    code, body, _ = s.call("POST", "order", "/orders/%d/return" % oid, as_=as_)
    check(code == expect, "return of %d: %d %r" % (oid, code, body))
    return body


def test_period_rental_and_pricing():
    with system() as s:
        d = today()
        o = rent(s, "9003", 2, **{"from": iso(d, 3), "to": iso(d, 6)})
        check(o["from"] == iso(d, 3) and o["to"] == iso(d, 6) and o["days"] == 3,
              "period on the order: %r" % o)
        check(o["amount"] == 2 * 3 * 120000, "amount = qty x days x dailyPrice: %r" % o)
        check(order(s, o["id"]) == o, "GET /orders/{id} differs from the 201's body")
        pay = [p for p in payments(s) if p["orderId"] == o["id"]]
        check(len(pay) == 1 and pay[0]["amount"] == o["amount"], "payment %r" % pay)

        # The seed's command: numeric strings, no period -> one day from today.
        code, one, _ = s.call("POST", "order", "/orders", {"productId": "9003", "qty": "1"})
        check(code == 201 and one["from"] == iso(d) and one["to"] == iso(d, 1) and one["days"] == 1
              and one["amount"] == 120000, "seed command: %d %r" % (code, one))
        # Only from: one day; only to: from today.
        o = rent(s, "9003", 1, **{"from": iso(d, 10)})
        check(o["to"] == iso(d, 11) and o["days"] == 1, "only from: %r" % o)
        o = rent(s, "9003", 1, to=iso(d, 4))
        check(o["from"] == iso(d) and o["days"] == 4 and o["amount"] == 4 * 120000,
              "only to: %r" % o)
        check(free(s, "9003", iso(d), iso(d, 1)) == 40 - 2, "today: two one-day rentals")
        check(free(s, "9003", iso(d, 3), iso(d, 4)) == 40 - 3, "day 3: period + to-rental")


def test_bad_periods_change_nothing():
    with system() as s:
        d = today()
        before = (len(orders(s)), len(payments(s)), car(s, "9001", iso(d), iso(d, 30)))
        bad = [
            ({"from": iso(d, -1), "to": iso(d, 1)}, "past"),
            ({"from": iso(d, 91), "to": iso(d, 92)}, "90 days"),
            ({"from": iso(d, 2), "to": iso(d, 2)}, "after"),
            ({"from": iso(d, 3), "to": iso(d, 2)}, "after"),
            ({"from": iso(d), "to": iso(d, 31)}, "30 days"),
            ({"from": "2026-02-30", "to": "2026-03-02"}, "from must be a date"),
            ({"from": iso(d, 1), "to": "2027-13-01"}, "to must be a date"),
            ({"from": "10/12/2026"}, "YYYY-MM-DD"),
            ({"from": iso(d).replace("-", "")}, "YYYY-MM-DD"),
            ({"from": iso(d) + "T10:00:00"}, "YYYY-MM-DD"),
            ({"from": 20261210}, "YYYY-MM-DD"),
            ({"to": ["2026-12-10"]}, "YYYY-MM-DD"),
            ({"from": "x" * 5000}, "YYYY-MM-DD"),
        ]
        for fields, words in bad:
            body = {"productId": "9001", "qty": 1, "customerId": "kim"}
            body.update(fields)
            check_error(s.call("POST", "order", "/orders", body), 400, words)
        for query, words in (("from=%s&to=%s" % (iso(d, -2), iso(d)), "past"),
                             ("from=2026-02-29", "date"), ("to=%s" % iso(d, 40), "30 days")):
            check_error(s.call("GET", "order", "/cars?" + query), 400, words)
            check_error(s.call("GET", "order", "/cars/9001?" + query), 400, words)
        after = (len(orders(s)), len(payments(s)), car(s, "9001", iso(d), iso(d, 30)))
        check(before == after, "a refused period changed something: %r -> %r" % (before, after))


def test_overlapping_and_adjacent_periods_race_for_the_last_car():
    with system() as s:
        d = today()
        # 9001 has one car. Ten customers at once: five want [d+1, d+3), five the adjacent
        # [d+3, d+5). Each half has exactly one winner: adjacent periods do not compete.
        periods = [(iso(d, 1), iso(d, 3))] * 5 + [(iso(d, 3), iso(d, 5))] * 5

        def attempt(i):
            start, end = periods[i]
            return s.call("POST", "order", "/orders", {"productId": "9001", "qty": 1,
                                                       "customerId": "c%d" % i,
                                                       "from": start, "to": end}, timeout=30)
        results = concurrently(10, attempt)
        codes = [r[0] for r in results]
        check(codes[:5].count(201) == 1 and codes[5:].count(201) == 1,
              "one winner per half: %r" % codes)
        for code, body, _ in results:
            if code == 409:
                check_error((code, body, {}), 409, "not enough cars available on")
            else:
                check(code == 201, "unexpected answer %d %r" % (code, body))
        for day in range(1, 5):
            check(free(s, "9001", iso(d, day), iso(d, day + 1)) == 0, "day %d not booked" % day)
        check(free(s, "9001", iso(d), iso(d, 1)) == 1 and free(s, "9001", iso(d, 5), iso(d, 6)) == 1,
              "days around the two periods are free")

        # Overlapping periods racing: [d+10, d+13) against [d+12, d+15): one car, one winner;
        # the loser's 409 names the first day it could not have.
        periods = [(iso(d, 10), iso(d, 13))] * 4 + [(iso(d, 12), iso(d, 15))] * 4
        results = concurrently(8, attempt)
        codes = [r[0] for r in results]
        check(codes.count(201) == 1 and codes.count(409) == 7, "one winner overall: %r" % codes)
        winner = codes.index(201)
        first_full = iso(d, 12)   # the overlap's first day, whichever half won
        losers_other_half = [results[i] for i in range(8) if (i < 4) != (winner < 4)]
        for code, body, _ in losers_other_half:
            check(first_full in body["message"], "409 names %s: %r" % (first_full, body))
        check(free(s, "9001", iso(d, 10), iso(d, 15)) == 0, "the winner's days are booked")
        wait_settled_periods(s)


def wait_settled_periods(s):
    """Every accepted rental is paid once for its amount; refused ones left no payment."""
    ords = {o["id"]: o for o in orders(s)}
    for p in payments(s):
        o = ords.get(p["orderId"])
        check(o is not None and o["amount"] == p["amount"] and p["status"] == "Paid",
              "payment %r without its rental" % p)
    check(len(payments(s)) == len(ords), "payments %d for %d rentals" % (len(payments(s)), len(ords)))


def test_thirty_day_rental_and_availability():
    with system() as s:
        d = today()
        o = rent(s, "9002", 2, **{"from": iso(d, 1), "to": iso(d, 31)})
        check(o["days"] == 30 and o["amount"] == 2 * 30 * 50000, "30 days: %r" % o)
        check(free(s, "9002", iso(d), iso(d, 1)) == 3, "the day before is free")
        for day in (1, 2, 15, 29, 30):
            check(free(s, "9002", iso(d, day), iso(d, day + 1)) == 1, "day %d: 1 free" % day)
        check(free(s, "9002", iso(d, 31), iso(d, 32)) == 3, "the day it is due back is free")
        check(free(s, "9002", iso(d), iso(d, 30)) == 1, "any period touching it: 1 free")

        # Availability for a period in the fleet list, without a period today's.
        code, body, _ = s.call("GET", "order", "/cars?from=%s&to=%s" % (iso(d, 5), iso(d, 7)))
        cars = {c["id"]: c for c in body["_embedded"]["cars"]}
        check(code == 200 and cars["9002"]["available"] == 1 and cars["9001"]["available"] == 1,
              "fleet for a period: %r" % cars)
        code, body, _ = s.call("GET", "order", "/cars")
        check({c["id"]: c["available"] for c in body["_embedded"]["cars"]}["9002"] == 3,
              "today's availability")
        # One more car than is free on one day of the period: refused, naming that day.
        got = rent(s, "9002", 2, expect=409, **{"from": iso(d, 30), "to": iso(d, 33)})
        check(iso(d, 30) in got["message"], "409 names the first full day: %r" % got)
        rent(s, "9002", 2, **{"from": iso(d, 31), "to": iso(d, 33)})   # adjacent: fits


def test_return_by_customer():
    with system() as s:
        d = today()
        o = rent(s, "9002", 2, **{"from": iso(d), "to": iso(d, 3)})
        check(free(s, "9002", iso(d, 1), iso(d, 3)) == 1, "booked for three days")
        # Only the customer who rented (or staff) may return it: another customer's is a 404,
        # no token a 401, and neither changes anything.
        check_error(s.call("POST", "order", "/orders/%d/return" % o["id"], as_="lee"), 404)
        check_error(s.call("POST", "order", "/orders/%d/return" % o["id"], as_=None), 401)
        check(order(s, o["id"])["status"] == "OrderApproved", "a refused return changed the rental")
        check(free(s, "9002", iso(d, 1), iso(d, 3)) == 1, "a refused return freed cars")
        r = give_back(s, o["id"], as_="kim")
        check(r["status"] == "Returned" and r["returnedAt"] and r["id"] == o["id"], "return: %r" % r)
        check(free(s, "9002", iso(d), iso(d, 1)) == 1, "still out today (back from tomorrow)")
        check(free(s, "9002", iso(d, 1), iso(d, 3)) == 3, "free again from the next day")
        again = give_back(s, o["id"])
        check(again == r, "a second return changed something: %r -> %r" % (r, again))
        check(free(s, "9002", iso(d, 1), iso(d, 3)) == 3, "second return released again")
        check_error(s.call("DELETE", "order", "/orders/%d" % o["id"]), 409, "returned")
        check(order(s, o["id"])["status"] == "Returned", "cancel after return changed the rental")
        pay = [p for p in payments(s) if p["orderId"] == o["id"]]
        check(pay[0]["status"] == "Paid", "a returned rental is not refunded: %r" % pay)

        c = rent(s, "9002", 1, **{"from": iso(d, 5), "to": iso(d, 6)})
        code, _, _ = s.call("DELETE", "order", "/orders/%d" % c["id"])
        check(code == 204, "cancel: %d" % code)
        check_error(s.call("POST", "order", "/orders/%d/return" % c["id"]), 409, "cancelled")
        check(order(s, c["id"])["status"] == "OrderCancelled", "return after cancel changed it")
        check_error(s.call("POST", "order", "/orders/424242/return"), 404, "424242")

        # Staff may return any customer's rental.
        other = rent(s, "9002", 1, **{"from": iso(d, 7), "to": iso(d, 9), "customerId": "lee"})
        r = give_back(s, other["id"], as_=STAFF)
        check(r["status"] == "Returned" and r["customerId"] == "lee", "staff return: %r" % r)
        check(free(s, "9002", iso(d, 7), iso(d, 9)) == 3, "the staff return freed its days")
        check_error(s.call("POST", "order", "/orders/abc/return"), 400, "order id")
        check_error(s.call("POST", "order", "/orders/0/return"), 400, "order id")


def test_return_races_cancel():
    with system() as s:
        d = today()
        rentals = [rent(s, "9003", 1, **{"from": iso(d), "to": iso(d, 4)}) for _ in range(12)]

        def act(i):
            oid = rentals[i // 2]["id"]
            if i % 2 == 0:
                return s.call("POST", "order", "/orders/%d/return" % oid)[0]
            return s.call("DELETE", "order", "/orders/%d" % oid)[0]
        codes = concurrently(24, act)
        returned = cancelled = 0
        for k, o in enumerate(rentals):
            ret, can = codes[2 * k], codes[2 * k + 1]
            status = order(s, o["id"])["status"]
            if status == "Returned":
                check(ret == 200 and can == 409, "returned, yet cancel said %r" % can)
                returned += 1
            else:
                check(status == "OrderCancelled" and can == 204 and ret == 409,
                      "order %d: %s, return %r, cancel %r" % (o["id"], status, ret, can))
                cancelled += 1
        check(returned + cancelled == 12, "every race has one winner")
        # Cars: a cancelled rental frees every day, a returned one from tomorrow.
        check(free(s, "9003", iso(d), iso(d, 1)) == 40 - returned, "today")
        check(free(s, "9003", iso(d, 1), iso(d, 4)) == 40, "later days")
        # One Returned per returned rental, one OrderCancelled per cancelled one: the loser of
        # each race published nothing.
        wait_for(lambda: stream_count(s, "Returned") == returned
                 and stream_count(s, "OrderCancelled") == cancelled, WAIT,
                 "one event per race winner (Returned %d, OrderCancelled %d)" % (returned, cancelled))
        wait_for(lambda: all(p["status"] == ("PaymentCancelled" if order(s, p["orderId"])["status"]
                                             == "OrderCancelled" else "Paid")
                             for p in payments(s)), WAIT, "refunds of the cancelled rentals only")


def test_automatic_return_with_the_test_clock():
    with system() as s:
        d = today()
        due = rent(s, "9002", 1, **{"from": iso(d), "to": iso(d, 2)})
        later = rent(s, "9002", 1, **{"from": iso(d, 1), "to": iso(d, 5)})
        check(order(s, due["id"])["status"] == "OrderApproved", "not due yet")
        # Order restarts with its clock two days ahead: the first is due, the second is not.
        s.stop("order")
        s.service_env["order"]["ORDER_TEST_CLOCK_OFFSET_S"] = str(2 * DAY)
        s.start("order")
        back = wait_for(lambda: (lambda o: o if o["status"] == "Returned" else None)(
            order(s, due["id"])), WAIT, "the rental due back to be returned")
        check(back["returnedAt"] and back["days"] == 2, "auto-returned order %r" % back)
        ret_day = datetime.datetime.fromisoformat(back["returnedAt"].replace("Z", "+00:00"))
        check(ret_day.astimezone(SEOUL).date() >= today(2 * DAY) - datetime.timedelta(days=1),
              "returnedAt is on the test clock: %r" % back["returnedAt"])
        check(order(s, later["id"])["status"] == "OrderApproved", "a rental not due was returned")
        check("rental returned at the end of its period" in s.log("order"), "no log line")
        # From the shifted today on, one car of 9002 is out (later) until d+5.
        d2 = today(2 * DAY)
        check(free(s, "9002", iso(d2), iso(d2, 1)) == 2, "returned car free again")
        check_error(s.call("DELETE", "order", "/orders/%d" % back["id"]), 409, "returned")
        # The past is the past on the test clock too.
        check_error(s.call("POST", "order", "/orders",
                           {"productId": "9002", "qty": 1, "from": iso(d, 1)}), 400, "past")


# ---- with the customer page ----

def page(s, oid):
    code, body, _ = s.call("GET", "customerpage", "/customerpages/%d" % oid)
    return body if code == 200 else None


def wait_page(s, oid, status):
    return wait_for(lambda: (lambda p: p if p and p["status"] == status else None)(page(s, oid)),
                    WAIT, "customer page of %d to be %s" % (oid, status))


def all_pages(s):
    return all_items(s, "customerpage", "/customerpages", "customerpages")


def test_customer_page_with_returned_and_rebuild():
    services = ("payment", "order", "delivery", "customerpage")
    with system(services, order_env={"RETURN_INTERVAL_MS": "100"}) as s:
        d = today()
        shipped = rent(s, "9003", 2, **{"from": iso(d), "to": iso(d, 3)})
        p = wait_page(s, shipped["id"], "Shipped")
        check(p["from"] == iso(d) and p["to"] == iso(d, 3) and p["days"] == 3
              and p["amount"] == 2 * 3 * 120000, "page period: %r" % p)
        give_back(s, shipped["id"])
        p = wait_page(s, shipped["id"], "Returned")
        check([h["status"] for h in p["history"]] == ["Paid", "OrderApproved", "Shipped", "Returned"],
              "history with Returned: %r" % p["history"])
        check(give_back(s, shipped["id"])["status"] == "Returned", "second return")

        cancelled = rent(s, "9003", 1, **{"from": iso(d, 2), "to": iso(d, 4)})
        wait_page(s, cancelled["id"], "Shipped")
        s.call("DELETE", "order", "/orders/%d" % cancelled["id"])
        wait_page(s, cancelled["id"], "PaymentCancelled")
        plain = rent(s, "9003", 1)
        wait_page(s, plain["id"], "Shipped")

        # The automatic return reaches the page too (order's clock four days ahead).
        s.stop("order")
        s.service_env["order"]["ORDER_TEST_CLOCK_OFFSET_S"] = str(4 * DAY)
        s.start("order")
        wait_page(s, plain["id"], "Returned")
        live = all_pages(s)
        check(sum(1 for x in live if x["status"] == "Returned") == 2, "two returned rows: %r" % live)

        code, body, _ = s.call("POST", "customerpage", "/admin/rebuild")
        check(code == 202, "rebuild: %d %r" % (code, body))
        result = wait_for(lambda: (lambda b: b if b["state"] in ("done", "failed") else None)(
            s.call("GET", "customerpage", "/admin/rebuild")[1]), WAIT, "the rebuild to end")
        check(result["state"] == "done" and result["differences"] == 0, "rebuild %r" % result)
        check(all_pages(s) == live, "the rebuilt view differs from the live one")
        # Returned once per returned rental, however often it was asked for (two returns of the
        # first, the timer for the other).
        check(stream_count(s, "Returned") == 2, "Returned events: %d" % stream_count(s, "Returned"))


run(globals())
