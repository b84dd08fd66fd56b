"""schema_check.py: every answer the e2e suite receives, checked against docs/openapi.yaml.

harness.System.call hands each answer to Contract.check, which returns what is wrong with it:
  - a path and method the document knows: the status must be listed (a 2xx explicitly; any
    other may fall under `default`), and a JSON body must match the listed schema;
  - a path the document does not know: only a refusal in the contract's Error shape, or a file
    of the web page (not JSON), may come back: an API answer nobody documented is drift;
  - HEAD answers carry no body: only the status is checked.
The one non-JSON refusal allowed is evhttp's own HTML 400/413 for a request line it cannot
parse or a body beyond its memory bound (lib/http.c, "Limits"). python3-jsonschema (Debian):
4.10 (bookworm: RefResolver) and later (referencing) are both supported."""
import json
import os
import re

import jsonschema
import yaml

DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "openapi.yaml")
BASE = "urn:carshare:openapi"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def _pointer(*parts):
    return "#/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


class Contract:
    def __init__(self, path=DOC):
        with open(path, encoding="utf-8") as f:
            self.doc = yaml.safe_load(f)
        self.routes = []
        for template, item in self.doc.get("paths", {}).items():
            pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
            literal = template.count("{")
            self.routes.append((literal, template, re.compile(pattern), item))
        self.routes.sort(key=lambda r: r[0])     # literal segments win over {params}
        self.checked = 0
        try:
            from referencing import Registry, Resource
            from referencing.jsonschema import DRAFT202012
            resource = Resource.from_contents(self.doc, default_specification=DRAFT202012)
            self._registry = Registry().with_resource(BASE, resource)
            self._resolver = None
        except ImportError:
            self._registry = None
            self._resolver = jsonschema.RefResolver(base_uri=BASE, referrer=self.doc)

    def _validate(self, instance, pointer):
        schema = {"$ref": BASE + pointer}
        if self._registry is not None:
            v = jsonschema.Draft202012Validator(schema, registry=self._registry)
        else:
            v = jsonschema.Draft202012Validator(schema, resolver=self._resolver)
        errors = sorted(v.iter_errors(instance), key=lambda e: list(e.absolute_path))
        return ["%s: %s" % ("/".join(str(p) for p in e.absolute_path) or "(body)", e.message)
                for e in errors[:3]]

    def _local(self, pointer):
        node = self.doc
        for part in pointer.lstrip("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def operation(self, method, path):
        """(template, operation) for the request, or (None, None)."""
        path = path.split("?", 1)[0] or "/"
        for _, template, pattern, item in self.routes:
            if pattern.match(path):
                op = item.get("get" if method == "HEAD" else method.lower())
                return template, op
        return None, None

    def check(self, method, path, status, headers, body):
        """What is wrong with this answer: a list of strings, empty when it matches."""
        self.checked += 1
        ctype = (headers.get("content-type") or "").split(";")[0].strip()
        is_json = ctype == "application/json"
        where = "%s %s -> %d" % (method, path, status)
        if not is_json and status in (400, 413) and ctype == "text/html":
            return []       # evhttp's own refusal of a request it could not parse
        template, op = self.operation(method, path)
        if op is None:
            if is_json and status >= 400:
                return ["%s: %s" % (where, m) for m in
                        self._validate(body, _pointer("components", "schemas", "Error"))]
            if not is_json and template is None and method in ("GET", "HEAD"):
                return []   # a file of the web page
            return ["%s: not in docs/openapi.yaml (%s)" % (
                where, "no such path" if template is None else "no such method")]
        responses = op.get("responses", {})
        key = str(status)
        if key not in responses:
            if 200 <= status < 300 or "default" not in responses:
                return ["%s: status %d is not documented for %s %s" % (where, status, method,
                                                                       template)]
            key = "default"
        if method == "HEAD" or status in (204, 304):
            return []
        pointer = _pointer("paths", template, "get" if method == "HEAD" else method.lower(),
                           "responses", key)
        response = responses[key]
        if "$ref" in response:      # a shared response (components/responses)
            pointer = response["$ref"]
            response = self._local(pointer)
        content = response.get("content") or {}
        if not content:
            return [] if body in (None, "") else ["%s: a body where none is documented" % where]
        if ctype not in content:
            return ["%s: content type %r, documented %s" % (where, ctype, sorted(content))]
        if not is_json:
            return []
        pointer += "/content/" + ctype.replace("~", "~0").replace("/", "~1") + "/schema"
        return ["%s: %s" % (where, m) for m in self._validate(body, pointer)]
