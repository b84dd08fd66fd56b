#!/usr/bin/env python3
"""test_access.py: identity and access, end to end (issue 11; the contract's "Identity and access").

The whole system (account, payment, order, delivery, customerpage, gateway, an authenticated
nats-server) on free ports:
  - accounts and sessions: sign-up rules, sign-in, the same 401 for an unknown id and a wrong
    password, the staff account made at first start, throttling (429 + Retry-After);
  - every row of the contract's access table, through the gateway AND straight at the service's
    own port, for a customer, another customer, staff, a service and no token;
  - every bad token (malformed, expired, bad signature, alg none, HMAC with the public key,
    unknown kid, future iat, oversized, in the query string, another scheme) is a 401 in the
    contract's shape and changes nothing;
  - payment integrity: a future order paid in advance, future ids voided, a refund without a
    cancel, a repeat payment with other fields -- none of them rents a car or refunds one;
  - Idempotency-Key is scoped to the customer.
"""
import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (BIN, PASSWORD, SERVICE, SERVICES, STAFF, System, check, check_error,  # noqa: E402
                     run, wait_for)

WAIT = 30
CARD = "4111111111111111"

# Which process owns a path, for calls straight at a service's own port.
OWNER = {"/cars": "order", "/orders": "order", "/customerpages": "customerpage",
         "/payments": "payment", "/paymentCancellations": "payment", "/deliveries": "delivery",
         "/cancellations": "delivery", "/accounts": "account", "/sessions": "account"}


def owner(path):
    return OWNER["/" + path.split("?")[0].split("/")[1]]


def system():
    return System(SERVICES)


def rent(s, who, target="gateway", **fields):
    body = {"productId": "1001", "qty": 1, "cardNumber": CARD}
    body.update(fields)
    return s.call("POST", target, "/orders", body, as_=who)


def rented(s, who):
    code, body, _ = rent(s, who)
    check(code == 201, "%s could not rent: %d %r" % (who, code, body))
    return body


def both(s, method, path, who, body=None):
    """The same call through the gateway and straight at its service: [(target, answer)]."""
    return [(t, s.call(method, t, path, body, as_=who)) for t in ("gateway", owner(path))]


def expect(s, method, path, who, status, body=None, contains=None, gateway=None):
    """Asserts one row of the table for one caller, on both doors. `gateway` overrides the status
    the gateway answers (internal calls: 404 there)."""
    for target, resp in both(s, method, path, who, body):
        want = gateway if (gateway is not None and target == "gateway") else status
        where = "%s %s as %s via %s" % (method, path, who, target)
        if want >= 400:
            try:
                check_error(resp, want, contains if want == status else None)
            except AssertionError as e:
                raise AssertionError("%s: %s" % (where, e))
        else:
            check(resp[0] == want, "%s: expected %d, got %d %r" % (where, want, resp[0], resp[1]))


# ---------------------------------------------------------------- accounts and sessions

def test_sign_up_and_sign_in():
    with system() as s:
        code, acc, h = s.sign_up("kim", name="Kim Minji")
        check(code == 201, "sign-up: %d %r" % (code, acc))
        check(acc["customerId"] == "kim" and acc["name"] == "Kim Minji" and acc["role"] == "customer"
              and acc["createdAt"], "account %r" % acc)
        check(not any("password" in k.lower() or "hash" in k.lower() for k in acc), "secret in %r" % acc)
        check(h.get("location", "").endswith("/accounts/kim"), "Location %r" % h)
        check_error(s.sign_up("kim"), 409, "taken")
        # A role in the body is the server's to decide: never staff from the API.
        code, acc, _ = s.call("POST", "gateway", "/accounts", {"customerId": "lee", "password": PASSWORD,
                                                               "role": "staff"}, as_=None)
        check(code == 201 and acc["role"] == "customer", "role from the body: %r" % acc)
        for bad_id in ("Kim", "ab", "kim minji", "x" * 65, "kim:1", ""):
            check_error(s.sign_up(bad_id), 400, "customerId")
        check_error(s.sign_up("park", password="short"), 400, "10 characters")
        check_error(s.sign_up("park", password="password123"), 400, "commonly used")
        check_error(s.sign_up("parkjisung", password="parkjisung"), 400, "customerId")
        check_error(s.call("POST", "account", "/accounts", raw="nope",
                           headers={"Content-Type": "application/json"}, as_=None), 400)

        code, sess, _ = s.sign_in("kim")
        check(code == 201 and sess["tokenType"] == "Bearer" and sess["expiresIn"] == 3600
              and sess["customerId"] == "kim" and sess["role"] == "customer"
              and sess["token"].count(".") == 2, "session %r" % sess)
        header = json.loads(base64.urlsafe_b64decode(sess["token"].split(".")[0] + "=="))
        check(header["alg"] == "EdDSA" and len(header["kid"]) == 12, "header %r" % header)
        # Through the gateway too.
        code, sess2, _ = s.call("POST", "gateway", "/sessions", {"customerId": "kim", "password": PASSWORD},
                                as_=None)
        check(code == 201 and sess2["customerId"] == "kim", "sign-in via the gateway: %r" % sess2)

        # Unknown id and wrong password: the same 401, word for word.
        wrong = s.sign_in("kim", "not the password at all")
        unknown = s.sign_in("nobody-here", PASSWORD)
        check_error(wrong, 401)
        check_error(unknown, 401)
        check(wrong[1]["message"] == unknown[1]["message"], "messages differ: %r / %r" % (wrong[1], unknown[1]))
        check_error(s.call("POST", "account", "/sessions", {"customerId": "kim"}, as_=None), 400, "password")

        # Staff: admin, created at first start, its password in a file only its owner reads.
        path = s.data("secrets", "admin-password")
        check(stat.S_IMODE(os.stat(path).st_mode) == 0o600, "admin-password mode %o" % os.stat(path).st_mode)
        code, staff, _ = s.sign_in("admin", s.admin_password())
        check(code == 201 and staff["role"] == "staff", "staff sign-in: %r" % staff)
        check(s.admin_password() not in s.log("account"), "the admin password was logged")
        check(PASSWORD not in s.log("account"), "a password was logged")
        # Restarting account keeps admin and its password.
        s.stop("account")
        s.start("account")
        check(s.sign_in("admin", s.admin_password())[0] == 201, "admin after a restart")
        check(s.sign_in("kim")[0] == 201, "kim after a restart")


def test_sign_in_throttled():
    with system() as s:
        s.sign_up("lee")
        for i in range(5):
            check_error(s.sign_in("lee", "wrong password %d" % i), 401)
        code, body, h = s.sign_in("lee")   # even the right password, now
        check_error((code, body, h), 429, "too many failed sign-ins")
        retry = h.get("retry-after", "")
        check(retry.isdigit() and 1 <= int(retry) <= 900, "Retry-After %r" % retry)
        # Through the gateway, the same.
        check_error(s.call("POST", "gateway", "/sessions", {"customerId": "lee", "password": PASSWORD},
                           as_=None), 429)
        # Unknown ids are throttled alike (nothing tells them apart).
        for i in range(5):
            check_error(s.sign_in("ghost", "wrong password %d" % i), 401)
        check_error(s.sign_in("ghost", "wrong password 6"), 429)
        # Another id is not affected, and a restart does not forget.
        s.sign_up("kim")
        check(s.sign_in("kim")[0] == 201, "kim is not throttled")
        s.stop("account")
        s.start("account")
        check_error(s.sign_in("lee"), 429)


# ---------------------------------------------------------------- the access table

def wait_page(s, order_id):
    wait_for(lambda: s.call("GET", "customerpage", "/customerpages/%d" % order_id, as_=STAFF)[0] == 200,
             WAIT, "the customer page of order %d" % order_id)


def test_access_table():
    with system() as s:
        kim, lee = rented(s, "kim"), rented(s, "lee")
        wait_page(s, kim["id"])
        wait_page(s, lee["id"])
        k = kim["id"]

        # GET /cars...: no token needed.
        for path in ("/cars", "/cars/1001"):
            expect(s, "GET", path, None, 200)
            expect(s, "GET", path, "kim", 200)

        # POST /orders: a customer for themselves; staff 403; another customerId 403; none 401.
        expect(s, "POST", "/orders", STAFF, 403, {"productId": "1001", "qty": 1}, "staff")
        expect(s, "POST", "/orders", None, 401, {"productId": "1001", "qty": 1}, "Bearer")
        expect(s, "POST", "/orders", "kim", 403, {"productId": "1001", "qty": 1, "customerId": "lee"}, "not you")
        for target in ("gateway", "order"):
            code, o, _ = rent(s, "kim", target, customerId="kim")
            check(code == 201 and o["customerId"] == "kim", "kim rents via %s: %d %r" % (target, code, o))
        # A service token is no person: 403 straight at order, 403 at the gateway too.
        expect(s, "POST", "/orders", SERVICE, 403, {"productId": "1001", "qty": 1})

        # Reads of orders and customer pages: own only; another's id is a 404; staff all.
        for path in ("/orders/%d" % k, "/customerpages/%d" % k):
            expect(s, "GET", path, "kim", 200)
            expect(s, "GET", path, "lee", 404)
            expect(s, "GET", path, STAFF, 200)
            expect(s, "GET", path, SERVICE, 403)
            expect(s, "GET", path, None, 401)
        for path, name in (("/orders", "orders"), ("/customerpages", "customerpages"),
                           ("/orders/search/findByCustomerId?customerId=kim", "orders"),
                           ("/customerpages/search/findByCustomerId?customerId=kim", "customerpages"),
                           ("/customerpages/search/findByOrderId?orderId=%d" % k, "customerpages")):
            for target, (code, body, _) in both(s, "GET", path, "lee"):
                items = body["_embedded"][name] if code == 200 else None
                check(code == 200 and all(i["customerId"] == "lee" for i in items),
                      "lee sees others' rows via %s %s: %r" % (target, path, body))
                check(all(i.get("orderId", i["id"]) != k for i in items), "lee sees kim's %s" % path)
            for target, (code, body, _) in both(s, "GET", path.replace("customerId=kim", "customerId=lee"), STAFF):
                check(code == 200, "staff %s via %s: %d" % (path, target, code))
            code, body, _ = s.call("GET", "gateway", path.split("?")[0] if "search" not in path else path,
                                   as_=STAFF)
            check(code == 200, "staff reads %s" % path)
        code, body, _ = s.call("GET", "gateway", "/orders?size=100", as_=STAFF)
        owners = {o["customerId"] for o in body["_embedded"]["orders"]}
        check({"kim", "lee"} <= owners, "staff sees every customer's orders: %r" % owners)

        # Cancel and return: own only (another's is a 404, and nothing changes); staff any.
        expect(s, "DELETE", "/orders/%d" % k, "lee", 404)
        expect(s, "POST", "/orders/%d/return" % k, "lee", 404)
        expect(s, "DELETE", "/orders/%d" % k, None, 401)
        expect(s, "DELETE", "/orders/%d" % k, SERVICE, 403)
        check(s.call("GET", "order", "/orders/%d" % k, as_="kim")[1]["status"] in ("OrderApproved", "Shipped"),
              "another customer's cancel changed the order")
        code, _, _ = s.call("DELETE", "gateway", "/orders/%d" % lee["id"], as_=STAFF)
        check(code == 204, "staff cancels any rental: %d" % code)
        code, _, _ = s.call("DELETE", "order", "/orders/%d" % k, as_="kim")
        check(code == 204, "kim cancels her own: %d" % code)

        # Payments, cancellations, deliveries: staff only.
        for path in ("/payments", "/paymentCancellations", "/deliveries", "/cancellations",
                     "/payments/search/findByOrderId?orderId=%d" % k,
                     "/deliveries/search/findByOrderId?orderId=%d" % k):
            expect(s, "GET", path, "kim", 403, contains="customer")
            expect(s, "GET", path, STAFF, 200)
            expect(s, "GET", path, None, 401)
        expect(s, "GET", "/payments", SERVICE, 403)

        # Internal calls: service only; the gateway never routes them (404, whatever the token).
        for path, body in (("/payments", {"orderId": 99001, "productId": "1001", "qty": 1, "amount": 45000}),
                           ("/paymentCancellations", {"orderId": 99002}),
                           ("/cancellations", {"orderId": 99003})):
            expect(s, "POST", path, "kim", 403, body, "service", gateway=404)
            expect(s, "POST", path, STAFF, 403, body, "service", gateway=404)
            expect(s, "POST", path, None, 401, body, "Bearer", gateway=404)
            check(s.call("POST", owner(path), path, body, as_=SERVICE)[0] == 201, "service %s" % path)
            check_error(s.call("POST", "gateway", path, body, as_=SERVICE), 404, "not reachable")

        # /admin/... and /metrics: staff, on each service's own port; never through the gateway.
        for name in ("order", "payment", "delivery", "customerpage", "account"):
            check(s.call("GET", name, "/metrics", as_=STAFF)[0] == 200, "%s /metrics as staff" % name)
            check_error(s.call("GET", name, "/metrics", as_="kim"), 403, "customer")
            check_error(s.call("GET", name, "/metrics", as_=None), 401)
            check(s.call("GET", name, "/health/ready", as_=None)[0] == 200, "%s health is open" % name)
        for name in ("order", "payment", "delivery", "customerpage"):
            check(s.call("GET", name, "/admin/deadLetters", as_=STAFF)[0] == 200, "%s dead letters" % name)
            check_error(s.call("GET", name, "/admin/deadLetters", as_="kim"), 403)
        check_error(s.call("POST", "customerpage", "/admin/rebuild", as_="kim"), 403)
        check_error(s.call("GET", "gateway", "/admin/deadLetters", as_=STAFF), 404)
        check(s.call("GET", "gateway", "/metrics", as_=STAFF)[0] == 200, "gateway /metrics as staff")
        check_error(s.call("GET", "gateway", "/metrics", as_="kim"), 403)

        # An identity header from the network means nothing.
        code, body, _ = s.call("GET", "order", "/orders/%d" % k, as_="lee",
                               headers={"X-Customer-Id": "kim", "X-User": "kim", "X-Role": "staff"})
        check(code == 404, "an identity header was believed: %d %r" % (code, body))


def test_accounts_read():
    with system() as s:
        s.token("kim")
        s.token("lee")
        expect(s, "GET", "/accounts/kim", "kim", 200)
        expect(s, "GET", "/accounts/kim", "lee", 404)
        expect(s, "GET", "/accounts/kim", STAFF, 200)
        expect(s, "GET", "/accounts/kim", None, 401)


# ---------------------------------------------------------------- bad tokens

def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header, claims, signature=b""):
    return "%s.%s.%s" % (b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature))


def public_key_bytes(s):
    with open(s.data("keys", "account.pub")) as f:
        der = base64.b64decode("".join(l for l in f.read().splitlines() if not l.startswith("-----")))
    return der[-32:]


def bad_tokens(s):
    """(what, Authorization header value, a word of the message)."""
    now = int(time.time())
    good = s.token("kim")
    head, claims_b64, sig = good.split(".")
    kid = json.loads(base64.urlsafe_b64decode(head + "=="))["kid"]
    staff_claims = {"sub": "kim", "role": "staff", "iat": now, "exp": now + 3600}
    tampered = "%s.%s.%s" % (head, b64(json.dumps(staff_claims).encode()), sig)
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    hs_header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    signing_input = forged(hs_header, staff_claims).rsplit(".", 1)[0]
    mac = hmac.new(public_key_bytes(s), signing_input.encode(), hashlib.sha256).digest()
    stranger = os.path.join(s.dir, "stranger.key")
    return [
        ("malformed", "Bearer abc", "malformed"),
        ("two parts", "Bearer abc.def", "malformed"),
        ("expired", "Bearer " + s.mint("kim", "customer", ttl=3600, iat=now - 7200), "expired"),
        ("claims changed after signing", "Bearer " + tampered, "signature"),
        ("signature changed", "Bearer %s.%s.%s" % (head, claims_b64, flipped), "signature"),
        ("alg none", "Bearer " + forged({"alg": "none", "typ": "JWT"}, staff_claims), "alg none"),
        ("HS256 keyed with the public key", "Bearer %s.%s" % (signing_input, b64(mac)), "HMAC"),
        ("unknown kid", "Bearer " + s.mint("kim", "customer", key=stranger), "unknown key"),
        ("future iat", "Bearer " + s.mint("kim", "customer", ttl=3600, iat=now + 1800), "future"),
        ("oversized", "Bearer " + "a" * 3000, "too large"),
        ("another scheme", "Basic a2ltOnBhc3N3b3Jk", "Bearer"),
        ("empty", "Bearer ", "Bearer"),
    ]


def test_bad_tokens():
    with system() as s:
        order = rented(s, "kim")
        before = s.call("GET", "order", "/orders?size=1000", as_=STAFF)[1]["page"]["totalElements"]
        for what, value, word in bad_tokens(s):
            for target in ("gateway", "order"):
                resp = s.call("GET", target, "/orders/%d" % order["id"], headers={"Authorization": value})
                try:
                    check_error(resp, 401, word)
                except AssertionError as e:
                    raise AssertionError("%s via %s: %s" % (what, target, e))
                check(resp[2].get("www-authenticate", "").startswith("Bearer"),
                      "%s: no WWW-Authenticate %r" % (what, resp[2]))
                resp = s.call("POST", target, "/orders", {"productId": "1001", "qty": 1},
                              headers={"Authorization": value})
                check_error(resp, 401)
            # Straight at payment, where a forged token would pay or refund.
            check_error(s.call("POST", "payment", "/paymentCancellations", {"orderId": order["id"]},
                               headers={"Authorization": value}), 401)
        # A valid token in the query string: refused, even with a good header too.
        tok = s.token("kim")
        for target in ("gateway", "order"):
            check_error(s.call("GET", target, "/orders/%d?access_token=%s" % (order["id"], tok), as_=None),
                        401, "query string")
            check_error(s.call("GET", target, "/orders?access_token=%s" % tok, as_="kim"), 401, "query string")
        # Nothing changed: no order, no refund.
        after = s.call("GET", "order", "/orders?size=1000", as_=STAFF)[1]["page"]["totalElements"]
        check(after == before, "a refused call created an order (%d -> %d)" % (before, after))
        check(s.call("GET", "payment", "/paymentCancellations", as_=STAFF)[1]["page"]["totalElements"] == 0,
              "a refused call refunded")


# ---------------------------------------------------------------- payment integrity

def payment_of(s, order_id):
    code, body, _ = s.call("GET", "payment", "/payments/search/findByOrderId?orderId=%d" % order_id, as_=STAFF)
    check(code == 200, "payment lookup %d" % code)
    items = body["_embedded"]["payments"]
    return items[0] if items else None


def test_payment_integrity():
    with system() as s:
        first = rented(s, "kim")
        n = first["id"]
        # A customer can neither pay nor void an order id, nor refund a rental without cancelling.
        for who in ("kim", STAFF, None):
            for path, body in (("/payments", {"orderId": n + 1, "productId": "1001", "qty": 1, "amount": 1}),
                               ("/paymentCancellations", {"orderId": n + 2}),
                               ("/paymentCancellations", {"orderId": n})):
                for target in ("gateway", "payment"):
                    code = s.call("POST", target, path, body, as_=who)[0]
                    check(code in (401, 403, 404), "%s %s as %s via %s: %d" % (path, body, who, target, code))
        check(payment_of(s, n)["status"] == "Paid", "kim's payment was refunded without a cancel")
        check(s.call("GET", "order", "/orders/%d" % n, as_="kim")[1]["status"] in ("OrderApproved", "Shipped"),
              "kim's rental no longer stands")
        check(s.call("GET", "payment", "/paymentCancellations", as_=STAFF)[1]["page"]["totalElements"] == 0,
              "something was refunded")

        # Even an internal caller cannot pay a future order in advance: order only accepts the
        # payment it asked for. Order n+1 is paid beforehand with another amount and card.
        code, pre, _ = s.call("POST", "payment", "/payments", {"orderId": n + 1, "productId": "1001", "qty": 1,
                                                               "amount": 1, "cardNumber": "5500000000000004"},
                              as_=SERVICE)
        check(code == 201, "pre-payment by a service: %d %r" % (code, pre))
        code, body, h = rent(s, "kim", cardNumber="4000000000000002")   # a declined card
        check(code == 502, "a pre-paid order id was accepted or misreported: %d %r" % (code, body))
        check("retry-after" not in h and "try the payment again shortly" not in body["message"],
              "a refusal shown as busy: %r %r" % (h, body))
        # The stray payment is refunded by order's reconciler; no order n+1 exists.
        wait_for(lambda: payment_of(s, n + 1)["status"] == "PaymentCancelled", WAIT,
                 "the pre-payment of order %d to be refunded" % (n + 1))
        check(s.call("GET", "order", "/orders/%d" % (n + 1), as_=STAFF)[0] == 404, "order n+1 exists")

        # Voiding a future id (n + 2) makes that rental refused, never "busy, try again".
        check(s.call("POST", "payment", "/paymentCancellations", {"orderId": n + 2}, as_=SERVICE)[0] == 201,
              "void by a service")
        code, body, h = rent(s, "kim")
        check(code == 502 and "retry-after" not in h, "a voided id: %d %r %r" % (code, body, h))
        # The next rental works.
        code, body, _ = rent(s, "kim")
        check(code == 201 and body["id"] == n + 3, "the next rental: %d %r" % (code, body))

        # A repeat payment for an order with other fields is a 409; the same fields, the same payment.
        p = payment_of(s, n)
        same = {"orderId": n, "productId": p["productId"], "qty": p["qty"], "amount": p["amount"],
                "cardNumber": CARD}
        code, again, _ = s.call("POST", "payment", "/payments", same, as_=SERVICE)
        check(code == 200 and again["id"] == p["id"], "repeat: %d %r" % (code, again))
        for change in ({"amount": 1}, {"qty": 2}, {"productId": "1002"}, {"cardNumber": "5500000000000004"}):
            check_error(s.call("POST", "payment", "/payments", dict(same, **change), as_=SERVICE), 409,
                        "already paid")
        # A refund comes from cancelling the rental.
        check(s.call("DELETE", "gateway", "/orders/%d" % n, as_="kim")[0] == 204, "cancel")
        wait_for(lambda: payment_of(s, n)["status"] == "PaymentCancelled", WAIT, "the refund of order %d" % n)


def test_key_rotation():
    """The README's rotation: every process trusts the old and the new public key while account
    signs with the new one; once the old key is dropped, its tokens are refused."""
    s = System(SERVICES)
    s.make_keys()
    subprocess.run([os.path.join(BIN, "carshare-account"), "keygen", s.data("keys", "account-2.key")],
                   check=True, stdout=subprocess.DEVNULL)
    both_keys = "%s,%s" % (s.data("keys", "account.pub"), s.data("keys", "account-2.pub"))
    s.extra_env["TOKEN_PUBLIC_KEYS"] = both_keys
    s.service_env["account"] = {"TOKEN_PRIVATE_KEY": s.data("keys", "account-2.key")}
    with s:
        old = s.mint("kim", "customer", key="account")
        new = s.token("kim")                      # signed in: account's new key
        kid = lambda t: json.loads(base64.urlsafe_b64decode(t.split(".")[0] + "=="))["kid"]
        check(kid(old) != kid(new), "the same kid for both keys")
        for tok in (old, new):
            for target in ("gateway", "order"):
                code, body, _ = s.call("GET", target, "/orders", headers={"Authorization": "Bearer " + tok})
                check(code == 200, "during the rotation via %s: %d %r" % (target, code, body))
        # The old key is dropped from order (restarted): its tokens are refused, the new ones not.
        s.stop("order")
        s.service_env["order"] = {"TOKEN_PUBLIC_KEYS": s.data("keys", "account-2.pub")}
        s.start("order")
        check_error(s.call("GET", "order", "/orders", headers={"Authorization": "Bearer " + old}), 401,
                    "unknown key")
        check(s.call("GET", "order", "/orders", headers={"Authorization": "Bearer " + new})[0] == 200,
              "the new key after the rotation")


def test_idempotency_key_per_customer():
    with system() as s:
        key = {"Idempotency-Key": "same-key-1"}
        body = {"productId": "1001", "qty": 1, "cardNumber": CARD}
        code, a, _ = s.call("POST", "gateway", "/orders", body, headers=key, as_="kim")
        check(code == 201, "kim: %d %r" % (code, a))
        code, b, _ = s.call("POST", "gateway", "/orders", body, headers=key, as_="lee")
        check(code == 201 and b["id"] != a["id"] and b["customerId"] == "lee",
              "lee's rental with kim's key: %d %r" % (code, b))
        code, again, _ = s.call("POST", "gateway", "/orders", body, headers=key, as_="kim")
        check(code == 201 and again["id"] == a["id"], "kim's replay: %d %r" % (code, again))


if __name__ == "__main__":
    run(globals())
