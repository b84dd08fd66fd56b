"""test_openapi.py: docs/openapi.yaml is the API, and it cannot drift.

  - the gateway serves the document at GET /openapi.yaml, byte for byte the file it was built from;
  - every route a service registers (http_server_route in services/ and lib/) is in the document
    with its method, and every path of the document that is not marked planned is served;
  - the document is sound: OpenAPI 3.1, every $ref resolves, every schema is a valid JSON Schema
    (2020-12), every operation lists its answers;
  - the schema hook that checks every answer of the suite (harness.py, schema_check.py) does fail
    on a wrong answer: a representation with a field missing, an undocumented field, an
    undocumented success status, an answer on a path nobody documented.
Every other e2e test exercises the hook on the answers it receives."""
import glob
import os
import re

import jsonschema
import yaml

from harness import System, check, contract, run
from schema_check import DOC

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
ROUTE = re.compile(r'http_server_route(?:_for)?\(\s*[^,]+,\s*"([A-Z]+)",\s*"([^"]+)"', re.S)


def registered_routes():
    routes = set()
    for src in glob.glob(os.path.join(ROOT, "services", "*", "*.c")) + \
            glob.glob(os.path.join(ROOT, "lib", "*.c")):
        with open(src, encoding="utf-8") as f:
            text = f.read()
        for method, path in ROUTE.findall(text):
            if path.startswith("/") and "{" not in path.split("/")[1]:
                routes.add((method.lower(), path))
    return routes


def test_gateway_serves_the_document():
    with System(["gateway"], nats=False) as s:
        code, body, headers = s.call("GET", "gateway", "/openapi.yaml")
        check(code == 200, "GET /openapi.yaml: %d" % code)
        check(headers.get("content-type", "").startswith("application/yaml"), "type %r" % headers)
        with open(DOC, encoding="utf-8") as f:
            want = f.read()
        check(body == want, "the gateway serves the document it was built from")
        check(yaml.safe_load(body)["openapi"].startswith("3.1"), "OpenAPI 3.1")
        code, _, headers = s.call("HEAD", "gateway", "/openapi.yaml")
        check(code == 200 and int(headers.get("content-length", "0")) == len(want.encode()),
              "HEAD /openapi.yaml: %d %r" % (code, headers))


def test_every_route_is_documented_and_every_documented_route_exists():
    doc = contract().doc
    documented = {(m, p) for p, item in doc["paths"].items() for m in item
                  if m in ("get", "post", "put", "patch", "delete")}
    routes = registered_routes()
    check(len(routes) >= 25, "the route scan found the services' routes: %d" % len(routes))
    missing = sorted(routes - documented)
    check(not missing, "routes the services serve but docs/openapi.yaml does not describe: %s"
          % missing)
    planned = {(m, p) for p, item in doc["paths"].items() for m, op in item.items()
               if isinstance(op, dict) and op.get("x-status") == "planned"}
    served_elsewhere = {("get", "/")}     # the web page: the gateway's fallback
    extra = sorted(documented - routes - planned - served_elsewhere)
    check(not extra, "paths docs/openapi.yaml describes but nothing serves (mark them "
          "x-status: planned until they land): %s" % extra)
    for m, p in sorted(planned & routes):
        check(False, "%s %s is served: drop its x-status: planned" % (m.upper(), p))


def test_the_document_is_sound():
    doc = contract().doc
    check(doc["openapi"] == "3.1.0", "openapi: 3.1.0")
    for name, schema in doc["components"]["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as e:
            check(False, "schema %s: %s" % (name, e.message))
    refs = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    refs.append(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(doc)
    check(len(refs) > 50, "refs found: %d" % len(refs))
    for ref in refs:
        try:
            contract()._local(ref)
        except (KeyError, TypeError):
            check(False, "unresolved $ref %s" % ref)
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                check(op.get("responses"), "%s %s lists its answers" % (method, path))
                check("default" in op["responses"], "%s %s: refusals under default" % (method, path))
    check("bearerJWT" in doc["components"]["securitySchemes"], "the bearer JWT scheme")


def test_the_hook_fails_on_a_wrong_answer():
    json_ = {"content-type": "application/json"}
    good = {"id": 7, "productId": "1001", "qty": 1, "customerId": "kim", "amount": 120000,
            "paymentId": 3, "status": "OrderApproved", "from": "2026-12-10", "to": "2026-12-11",
            "days": 1, "_links": {"self": {"href": "http://h/orders/7"}}}
    check(contract().check("GET", "/orders/7", 200, json_, good) == [], "a right answer passes")
    check(contract().check("GET", "/orders/7", 200, json_, dict(good, secret=1)),
          "an undocumented field fails")
    partial = dict(good)
    del partial["amount"]
    check(contract().check("GET", "/orders/7", 200, json_, partial), "a missing field fails")
    check(contract().check("GET", "/orders/7", 299, json_, good), "an undocumented 2xx fails")
    check(contract().check("GET", "/ordersx/7", 200, json_, good), "an undocumented path fails")
    check(contract().check("GET", "/orders/7", 404, json_, {"status": 404}),
          "a refusal not in the Error shape fails")
    check(contract().check("GET", "/orders/7", 404, json_, {"status": 404, "error": "Not Found",
                                                         "message": "order 7 not found",
                                                         "path": "/orders/7"}) == [],
          "a refusal in the Error shape passes")


if __name__ == "__main__":
    run(globals())
