"""steady_load.py: a bounded, steady load of whole rentals through the gateway, every answer checked.

Used by the rollout test (test_pg_cluster.py) and `make bench-scale`: while processes are killed
or replaced behind the gateway, the load keeps going and every answer is compared with the one it
would have been without that. A worker repeats one rental's life, one request at a time on its own
keep-alive connection (so the load is bounded: WORKERS requests in flight at most), with a pause
(pause_s) between two rentals:

    POST /orders            201, the order as asked (product, qty, period, customer)
    GET  /orders/{id}       200, the same order, approved (or shipped)
    GET  /customerpages/search/findByCustomerId?customerId=me   200, a collection
    GET  /deliveries?size=1 (staff)   200
    DELETE /orders/{id}     204

Worker w rents its own car model for a one-day period of its own (days ahead spread per worker and
round), and cancels it before renting again, so no rental can ever meet a full day: a 409 is as
wrong as a 503. POST carries an Idempotency-Key, and a POST that got no answer at all (the
connection broke before any byte came back) is sent again with the same key, as a careful client
does; such resends are counted apart, and the answer to the resend is what is checked.

Nothing here asserts on time; latencies are recorded for the figures (worst, p99).
"""
import http.client
import json
import threading
import time
import uuid


class Load:
    def __init__(self, host, port, customer_token, staff_token, workers=4, models=None, pause_s=0.05):
        self.host, self.port = host, port
        self.pause_s = pause_s      # between two rentals of a worker: a steady load, not a flood
        self.customer_token, self.staff_token = customer_token, staff_token
        self.workers = workers
        self.models = models or ["%d" % (1001 + i) for i in range(10)]
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.answers = 0
        self.failures = []          # (what, status, body) of every answer that was not the one expected
        self.resends = 0
        self.latencies = []
        self.rentals = []           # order ids rented (and cancelled)
        self.threads = []

    # ---- one worker ----
    def _conn(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=30)

    def _call(self, conn_box, method, path, body=None, token=None, headers=None, resend_ok=False):
        """One request on the worker's connection; (status, parsed body). A request that got no
        answer at all is sent again on a new connection when resend_ok (an idempotent request, or
        a POST with its Idempotency-Key)."""
        h = {"Authorization": "Bearer " + (token or self.customer_token)}
        h.update(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        for attempt in range(2):
            t0 = time.monotonic()
            try:
                c = conn_box[0]
                c.request(method, path, body=data, headers=h)
                r = c.getresponse()
                raw = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    c.close()
                    conn_box[0] = self._conn()
                dt = time.monotonic() - t0
                with self.lock:
                    self.answers += 1
                    self.latencies.append(dt)
                try:
                    return r.status, json.loads(raw) if raw else None
                except ValueError:
                    return r.status, raw[:200]
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn_box[0].close()
                conn_box[0] = self._conn()
                if attempt == 0 and resend_ok:
                    with self.lock:
                        self.resends += 1
                    continue
                return None, "no answer: %r" % e
            except OSError as e:
                conn_box[0].close()
                conn_box[0] = self._conn()
                return None, "no answer: %r" % e
        return None, "no answer"

    def _fail(self, what, status, body):
        with self.lock:
            self.failures.append((what, status, body if isinstance(body, str) else json.dumps(body)[:300]))

    def _worker(self, w):
        box = [self._conn()]
        model = self.models[w % len(self.models)]
        rnd = 0
        while not self.stop_flag.is_set():
            rnd += 1
            day = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400 * (2 + (w * 7 + rnd) % 80)))
            nxt = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400 * (3 + (w * 7 + rnd) % 80)))
            key = str(uuid.uuid4())
            asked = {"productId": model, "qty": 1, "from": day, "to": nxt}
            st, b = self._call(box, "POST", "/orders", asked, headers={"Idempotency-Key": key},
                               resend_ok=True)
            if st != 201 or not isinstance(b, dict) or b.get("productId") != model or \
                    b.get("from") != day or b.get("status") != "OrderApproved":
                self._fail("POST /orders", st, b)
                continue
            oid = b["id"]
            with self.lock:
                self.rentals.append(oid)
            st, g = self._call(box, "GET", "/orders/%d" % oid, resend_ok=True)
            if st != 200 or not isinstance(g, dict) or g.get("id") != oid or \
                    g.get("status") not in ("OrderApproved", "Shipped"):
                self._fail("GET /orders/%d" % oid, st, g)
            st, p = self._call(box, "GET", "/customerpages/search/findByCustomerId?customerId=%s"
                               % self.customer, resend_ok=True)
            if st != 200 or not isinstance(p, dict):
                self._fail("GET /customerpages", st, p)
            st, d = self._call(box, "GET", "/deliveries?size=1", token=self.staff_token, resend_ok=True)
            if st != 200 or not isinstance(d, dict):
                self._fail("GET /deliveries", st, d)
            st, x = self._call(box, "DELETE", "/orders/%d" % oid, resend_ok=True)
            if st != 204:
                self._fail("DELETE /orders/%d" % oid, st, x)
            self.stop_flag.wait(self.pause_s)
        box[0].close()

    # ---- control ----
    def start(self, customer="kim"):
        self.customer = customer
        for w in range(self.workers):
            t = threading.Thread(target=self._worker, args=(w,), daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(60)

    def figures(self):
        lat = sorted(self.latencies)
        return {"answers": self.answers, "failed": len(self.failures), "resends": self.resends,
                "rentals": len(self.rentals),
                "worst_ms": round(lat[-1] * 1000, 1) if lat else None,
                "p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 1) if lat else None}
