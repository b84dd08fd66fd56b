"""test_manifests.py: the rendered Kubernetes manifests pass the review an operator would give.

Both overlays are rendered with `kubectl kustomize` (from a copy of deploy/k8s whose secret
files scripts/k8s-secrets.sh writes, as the pipeline does), then:
  - every object is valid against the API schema (schema.py, Debian's python3-kubernetes);
  - every container has resources (CPU and memory requests, a memory limit), readiness,
    liveness and startup probes (carshare's on /health/ready and /health/live), and the
    security context: non-root, read-only root, no privilege escalation, all capabilities
    dropped, seccomp RuntimeDefault; no service account token mounted;
  - carshare's containers stop in time: a preStop sleep, and a grace period that covers it, the
    longest request (HTTP_REQUEST_TIMEOUT_MS) and a margin for the bus's stop;
  - every ConfigMap and Secret referenced (envFrom, keys, volumes, items) exists with that key;
  - the images are those `make images` builds (one per binary in $CARSHARE_BIN, and nats), each
    deployed; every carshare process listens (PORT) on the port its container, its Service and
    the URLs in carshare-config name, and that is its contract port (scripts/run.py);
  - Services select pods that exist and target ports those pods name; the Ingress leads to the
    gateway's Service; NetworkPolicies: all of carshare denies by default, only the gateway is
    open, payment is reached only from gateway and order;
  - dev: one replica each, SQLite on claims, one nats-server, no autoscaler;
    prod: two replicas or more of each process, autoscaling/v2 HPAs on CPU for gateway, order
    and payment that target existing Deployments with CPU requests, PDBs selecting pods,
    PostgreSQL URLs from a Secret, a 3-server nats StatefulSet in one JetStream cluster; the
    prod database secrets open each service's database, and only it, on a real PostgreSQL;
  - tokens: every process verifies with account's and order's public keys; only account holds
    account's private key and only order its own;
  - the bus users in nats-auth/auth.conf are scripts/natsauth.py's, each password from the
    Secret, each service mounting only its own;
  - the pipeline (.github/workflows/pipeline.yml) tests, builds images, pushes them on a tag
    only and then deploys, every step through a make target that exists.
"""
import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import schema  # noqa: E402
import podman as pm  # noqa: E402
from harness import check, run  # noqa: E402

RENDERED = {}


def contract_ports():
    """PORTS of scripts/run.py (the processes' contract ports), read without running it."""
    with open(os.path.join(pm.ROOT, "scripts", "run.py")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PORTS":
            return ast.literal_eval(node.value)
    raise AssertionError("scripts/run.py has no PORTS")


def render(overlay):
    if overlay not in RENDERED:
        tmp = tempfile.mkdtemp(prefix="carshare-k8s-")
        try:
            k8s = os.path.join(tmp, "k8s")
            shutil.copytree(os.path.join(pm.ROOT, "deploy", "k8s"), k8s,
                            ignore=shutil.ignore_patterns("secrets"))
            path = os.path.join(k8s, "overlays", overlay)
            subprocess.run([os.path.join(pm.ROOT, "scripts", "k8s-secrets.sh"), path], check=True)
            out = subprocess.run(["kubectl", "kustomize", path], check=True,
                                 capture_output=True, text=True).stdout
        finally:
            shutil.rmtree(tmp)
        RENDERED[overlay] = [d for d in yaml.safe_load_all(out) if d]
    return RENDERED[overlay]


def of_kind(docs, *kinds):
    return [d for d in docs if d["kind"] in kinds]


def named(docs, kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    check(len(found) == 1, "%s %s: %d found" % (kind, name, len(found)))
    return found[0]


def workloads(docs):
    return of_kind(docs, "Deployment", "StatefulSet")


def pod(w):
    return w["spec"]["template"]["spec"]


def process_of(container):
    """The carshare process a container runs (its image's name without carshare-), or None."""
    base = container["image"].rsplit("/", 1)[-1].split(":")[0]
    return base[len("carshare-"):] if base.startswith("carshare-") else None


def env_of(docs, container):
    """The container's environment as Kubernetes builds it (envFrom, then env); values from
    keys are given as (kind, name, key)."""
    out = {}
    for src in container.get("envFrom", []):
        cm = named(docs, "ConfigMap", src["configMapRef"]["name"])
        out.update(cm["data"])
    for e in container.get("env", []):
        if "value" in e:
            out[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]
            for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                if key in ref:
                    out[e["name"]] = (kind, ref[key]["name"], ref[key]["key"])
    return out


def each_container(overlay):
    for w in workloads(render(overlay)):
        for c in pod(w)["containers"]:
            yield w, c


OVERLAYS = ("dev", "prod")


def test_schema():
    for overlay in OVERLAYS:
        errors = [e for d in render(overlay) for e in schema.validate(d)]
        check(not errors, "%s:\n  %s" % (overlay, "\n  ".join(errors)))


def test_resources_and_probes():
    for overlay in OVERLAYS:
        for w, c in each_container(overlay):
            where = "%s %s/%s" % (overlay, w["metadata"]["name"], c["name"])
            res = c.get("resources", {})
            check({"cpu", "memory"} <= set(res.get("requests", {})), where + ": requests")
            check("memory" in res.get("limits", {}), where + ": memory limit")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                check(probe in c, "%s: no %s" % (where, probe))
            if process_of(c) not in (None, "nats", "postgres"):
                check(c["readinessProbe"]["httpGet"]["path"] == "/health/ready", where)
                check(c["livenessProbe"]["httpGet"]["path"] == "/health/live", where)
                check(c["startupProbe"]["httpGet"]["path"].startswith("/health/"), where)


def test_security_context():
    for overlay in OVERLAYS:
        for w, c in each_container(overlay):
            where = "%s %s/%s" % (overlay, w["metadata"]["name"], c["name"])
            p, sc = pod(w).get("securityContext", {}), c.get("securityContext", {})
            check(p.get("runAsNonRoot") is True and p.get("runAsUser", 0) != 0, where + ": root")
            check(p.get("seccompProfile", {}).get("type") == "RuntimeDefault", where + ": seccomp")
            check(sc.get("readOnlyRootFilesystem") is True, where + ": writable root")
            check(sc.get("allowPrivilegeEscalation") is False, where + ": escalation")
            check(sc.get("privileged", False) is False, where + ": privileged")
            check("ALL" in sc.get("capabilities", {}).get("drop", []), where + ": capabilities")
            check(pod(w).get("automountServiceAccountToken") is False, where + ": token mounted")
            if process_of(c) == "nats" or process_of(c) is None:
                continue
            check(p.get("runAsUser") == 10001, where + ": not the images' user 10001")


def test_stop_fits_the_drain():
    for overlay in OVERLAYS:
        for w, c in each_container(overlay):
            proc = process_of(c)
            if proc in (None, "nats", "postgres"):
                continue
            where = "%s %s" % (overlay, w["metadata"]["name"])
            sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
            check(isinstance(sleep, int) and sleep >= 1, where + ": no preStop sleep")
            timeout_s = int(env_of(render(overlay), c)["HTTP_REQUEST_TIMEOUT_MS"]) / 1000
            grace = pod(w)["terminationGracePeriodSeconds"]
            check(grace >= sleep + timeout_s + 5, "%s: grace %ss < preStop %ss + requests %ss + 5"
                  % (where, grace, sleep, timeout_s))


def test_references_exist():
    for overlay in OVERLAYS:
        docs = render(overlay)
        data = {(d["kind"], d["metadata"]["name"]): set(d.get("data", {})) | set(d.get("stringData", {}))
                for d in of_kind(docs, "ConfigMap", "Secret")}

        def has(kind, name, key, where):
            check((kind, name) in data, "%s: %s %s does not exist" % (where, kind, name))
            check(key is None or key in data[(kind, name)],
                  "%s: %s %s has no key %r" % (where, kind, name, key))

        for w in workloads(docs):
            where = "%s %s" % (overlay, w["metadata"]["name"])
            for c in pod(w)["containers"]:
                for src in c.get("envFrom", []):
                    has("ConfigMap", src["configMapRef"]["name"], None, where)
                for e in c.get("env", []):
                    for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                        ref = e.get("valueFrom", {}).get(key)
                        if ref:
                            has(kind, ref["name"], ref["key"], where)
            for v in pod(w).get("volumes", []):
                for kind, key, field in (("ConfigMap", "configMap", "name"),
                                         ("Secret", "secret", "secretName")):
                    if key in v:
                        has(kind, v[key][field], None, where)
                        for item in v[key].get("items", []):
                            has(kind, v[key][field], item["key"], where)
                claim = v.get("persistentVolumeClaim", {}).get("claimName")
                if claim:
                    named(docs, "PersistentVolumeClaim", claim)


def test_images_and_ports_match():
    # The PostgreSQL image is deployed by prod only (its in-cluster server).
    built = set(pm.processes()) | {"postgres"}
    ports = contract_ports()
    for overlay in OVERLAYS:
        docs = render(overlay)
        deployed = set()
        config = named(docs, "ConfigMap", [d["metadata"]["name"] for d in of_kind(docs, "ConfigMap")
                                           if d["metadata"]["name"].startswith("carshare-config")][0])
        for w, c in each_container(overlay):
            proc = process_of(c)
            if proc is None:
                continue
            where = "%s %s" % (overlay, w["metadata"]["name"])
            check(proc in built, "%s: image %s is not one `make images` builds" % (where, c["image"]))
            check(w["metadata"]["name"] == proc and c["name"] == proc, where + ": named otherwise")
            deployed.add(proc)
            if proc in ("nats", "postgres"):
                continue
            port = int(env_of(docs, c)["PORT"])
            check(port == ports[proc], "%s: PORT %d, contract port %d" % (where, port, ports[proc]))
            http = [p for p in c["ports"] if p["name"] == "http"]
            check(http and http[0]["containerPort"] == port, where + ": container port != PORT")
            svc = named(docs, "Service", proc)
            check(svc["spec"]["ports"][0]["port"] == port and
                  svc["spec"]["ports"][0]["targetPort"] == "http", where + ": Service port")
            url = config["data"].get(proc.upper() + "_URL")
            if proc != "gateway":
                check(url == "http://%s:%d" % (proc, port), "%s: %s_URL is %r" % (where, proc.upper(), url))
        want = built if overlay == "prod" else built - {"postgres"}
        check(deployed == want, "%s: images %s, deployed %s" % (overlay, sorted(want), sorted(deployed)))
        check(config["data"]["NATS_URL"] == "nats://nats:4222", overlay + ": NATS_URL")


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) and all(
        labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", [])
        if e["operator"] == "In")


def pods_selected(docs, selector):
    return [w for w in workloads(docs)
            if labels_match(selector, w["spec"]["template"]["metadata"]["labels"])]


def test_upstream_services_are_headless():
    """Every URL a carshare process calls another by (carshare-config's *_URL, each instance of
    a comma-separated list) names a headless Service of that process: the name resolves to the
    ready pods themselves, which the caller balances over (a ClusterIP would be one instance to
    it). The gateway's own Service, behind the Ingress, keeps its ClusterIP."""
    for overlay in OVERLAYS:
        docs = render(overlay)
        config = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("carshare-config")][0]
        upstreams = {k: v for k, v in config["data"].items() if k.endswith("_URL")
                     and k not in ("NATS_URL", "PUBLIC_BASE_URL")}
        check(set(upstreams) >= {"ORDER_URL", "PAYMENT_URL", "DELIVERY_URL", "CUSTOMERPAGE_URL",
                                 "ACCOUNT_URL"}, "%s: upstream URLs %s" % (overlay, sorted(upstreams)))
        for key, urls in upstreams.items():
            for url in urls.split(","):
                host = re.match(r"^http://([a-z0-9-]+):\d+$", url.strip())
                check(host, "%s %s: %r is not http://<service>:<port>" % (overlay, key, url))
                svc = named(docs, "Service", host.group(1))
                where = "%s %s: Service %s" % (overlay, key, host.group(1))
                check(svc["spec"].get("clusterIP") == "None", where + " is not headless")
                check(not svc["spec"].get("publishNotReadyAddresses"), where + " names pods not ready")
                targets = pods_selected(docs, {"matchLabels": svc["spec"]["selector"]})
                check([w["metadata"]["name"] for w in targets] == [key[:-4].lower()],
                      "%s selects %s" % (where, [w["metadata"]["name"] for w in targets]))
        check(named(docs, "Service", "gateway")["spec"].get("clusterIP") != "None",
              overlay + ": the Ingress's Service is headless")


def test_services_ingress_network_policies():
    for overlay in OVERLAYS:
        docs = render(overlay)
        for svc in of_kind(docs, "Service"):
            where = "%s Service %s" % (overlay, svc["metadata"]["name"])
            targets = pods_selected(docs, {"matchLabels": svc["spec"]["selector"]})
            check(targets, where + ": selects no pods")
            names = {p["name"] for w in targets for c in pod(w)["containers"] for p in c.get("ports", [])}
            for p in svc["spec"]["ports"]:
                check(p["targetPort"] in names, "%s: no container port %s" % (where, p["targetPort"]))
        backend = named(docs, "Ingress", "carshare")["spec"]["rules"][0]["http"]["paths"][0]["backend"]
        check(backend["service"]["name"] == "gateway", overlay + ": the Ingress leads elsewhere")

        policies = of_kind(docs, "NetworkPolicy")
        deny = [p for p in policies if not p["spec"].get("ingress")
                and p["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/part-of": "carshare"}}]
        check(deny, overlay + ": no default-deny policy for carshare")

        def allowed_from(target):
            """Which workloads may connect to `target`'s pods (None: anyone)."""
            labels = named(docs, "Deployment", target)["spec"]["template"]["metadata"]["labels"]
            sources = set()
            for p in policies:
                if not labels_match(p["spec"]["podSelector"], labels):
                    continue
                for rule in p["spec"].get("ingress", []):
                    if "from" not in rule:
                        return None
                    for peer in rule["from"]:
                        check(set(peer) == {"podSelector"}, "%s: peers other than pods" % p["metadata"]["name"])
                        sources |= {w["metadata"]["name"] for w in pods_selected(docs, peer["podSelector"])}
            return sources

        check(allowed_from("gateway") is None, overlay + ": the gateway is not open")
        for svc in ("order", "delivery", "customerpage", "account"):
            check(allowed_from(svc) == {"gateway"}, "%s: %s reached from %s" % (overlay, svc, allowed_from(svc)))
        check(allowed_from("payment") == {"gateway", "order"},
              "%s: payment reached from %s" % (overlay, allowed_from("payment")))


def test_dev_layout():
    docs = render("dev")
    check(not of_kind(docs, "HorizontalPodAutoscaler", "PodDisruptionBudget"), "dev autoscales")
    for w in workloads(docs):
        check(w["spec"].get("replicas", 1) == 1, "dev %s has replicas" % w["metadata"]["name"])
    for w, c in each_container("dev"):
        proc = process_of(c)
        if proc in ("order", "delivery", "customerpage", "payment", "account"):
            data = [v for v in pod(w)["volumes"] if v["name"] == "data"][0]
            check("persistentVolumeClaim" in data, "dev %s: data not on a claim" % proc)
            check(w["spec"]["strategy"]["type"] == "Recreate", "dev %s: two writers at once" % proc)
            check("DATABASE_URL" not in env_of(docs, c), "dev %s: not on SQLite" % proc)


def test_prod_layout():
    docs = render("prod")
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(docs, "HorizontalPodAutoscaler")}
    check(set(hpas) == {"gateway", "order", "payment"}, "autoscaled: %s" % sorted(hpas))
    for name, h in hpas.items():
        check(h["apiVersion"] == "autoscaling/v2", name + ": not autoscaling/v2")
        ref = h["spec"]["scaleTargetRef"]
        target = named(docs, ref["kind"], ref["name"])
        check(ref["kind"] == "Deployment" and ref["apiVersion"] == "apps/v1", name + ": target")
        check(h["spec"]["minReplicas"] >= 2 and h["spec"]["maxReplicas"] > h["spec"]["minReplicas"], name)
        check("replicas" not in target["spec"], name + ": a fixed replica count fights the HPA")
        metric = h["spec"]["metrics"][0]["resource"]
        check(metric["name"] == "cpu" and pod(target)["containers"][0]["resources"]["requests"]["cpu"],
              name + ": CPU target without a CPU request")
    pdbs = of_kind(docs, "PodDisruptionBudget")
    for w in workloads(docs):
        name = w["metadata"]["name"]
        if name == "postgres":
            continue
        check(w["spec"].get("replicas", 0) >= 2 or name in hpas, "prod %s: one replica" % name)
        check(any(pods_selected(docs, p["spec"]["selector"]) == [w] for p in pdbs), "prod %s: no PDB" % name)
    for w, c in each_container("prod"):
        if process_of(c) in ("order", "delivery", "customerpage", "payment", "account"):
            url = env_of(docs, c).get("DATABASE_URL")
            check(isinstance(url, tuple) and url[0] == "Secret", "prod %s: DATABASE_URL %r" % (w["metadata"]["name"], url))
    nats = named(docs, "StatefulSet", "nats")
    check(nats["spec"]["replicas"] == 3, "nats replicas")
    config = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("carshare-config")][0]
    host = named(docs, "Ingress", "carshare")["spec"]["rules"][0]["host"]
    check(config["data"]["PUBLIC_BASE_URL"] == "https://" + host,
          "links name %s, the Ingress serves %s" % (config["data"]["PUBLIC_BASE_URL"], host))
    conf = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("nats-config")][0]
    text = conf["data"]["nats.conf"]
    for i in range(3):
        check("nats://nats-%d.nats-cluster:6222" % i in text, "nats-%d is not a route" % i)
    check(named(docs, "Service", "nats-cluster")["spec"]["clusterIP"] == "None", "nats-cluster not headless")


def test_pipeline_steps_are_make_targets():
    """The workflow tests, builds, pushes on a tag and deploys prod, each through make."""
    with open(os.path.join(pm.ROOT, ".github", "workflows", "pipeline.yml")) as f:
        flow = yaml.safe_load(f)
    with open(os.path.join(pm.ROOT, "Makefile")) as f:
        targets = {line.split(":")[0] for line in f if line[:1].isalpha() and ":" in line
                   and "=" not in line.split(":")[0]}
    runs = {job: " ".join(s.get("run", "") for s in spec["steps"]) for job, spec in flow["jobs"].items()}
    for job, target in (("test", "make test"), ("images", "make images"), ("images", "make push"),
                        ("images", "make test-prod-layout"), ("deploy", "make deploy")):
        check(target in runs.get(job, ""), "job %s does not run %s" % (job, target))
        check(target.split()[1] in targets, "Makefile has no target %s" % target)
    check(flow["jobs"]["deploy"]["if"].startswith("startsWith(github.ref, 'refs/tags/"), "deploy not on tags")
    push = [s for s in flow["jobs"]["images"]["steps"] if "make push" in s.get("run", "")][0]
    check("refs/tags/" in push.get("if", ""), "images pushed on every commit")
    check(flow["jobs"]["deploy"]["needs"] == "images" and flow["jobs"]["images"]["needs"] == "test",
          "the jobs do not wait for each other")


def test_bus_users_match_natsauth():
    """nats-auth/auth.conf is what scripts/natsconf.py makes of scripts/natsauth.py today, and
    every bus user's password comes from the Secret."""
    check(subprocess.run([sys.executable, os.path.join(pm.ROOT, "scripts", "natsconf.py"),
                          "--check"]).returncode == 0, "auth.conf is stale")
    sys.path.insert(0, os.path.join(pm.ROOT, "scripts"))
    import natsauth
    for overlay in OVERLAYS:
        docs = render(overlay)
        nats = named(docs, "StatefulSet", "nats")
        env = env_of(docs, pod(nats)["containers"][0])
        for user in natsauth.BUS_USERS + ["admin"]:
            ref = env.get(user.upper() + "_PASSWORD")
            check(isinstance(ref, tuple) and ref[0] == "Secret" and ref[2] == user,
                  "%s: nats gets %s's password from %r" % (overlay, user, ref))
        for w, c in each_container(overlay):
            proc = process_of(c)
            if proc in natsauth.BUS_USERS:
                e = env_of(docs, c)
                check(e.get("NATS_USER") == proc and e.get("NATS_PASSWORD_FILE"),
                      "%s %s: no bus credentials" % (overlay, proc))
                check((e.get("BUS_STREAM_OWNER") == "1") == (proc == natsauth.STREAM_OWNER),
                      "%s %s: BUS_STREAM_OWNER is not natsauth's owner" % (overlay, proc))
                vol = [v for v in pod(w)["volumes"]
                       if v.get("secret", {}).get("secretName", "").startswith("carshare-nats")]
                check(vol and vol[0]["secret"]["items"] == [{"key": proc, "path": "password"}],
                      "%s %s: mounts another user's password" % (overlay, proc))


def test_token_keys():
    """Every process checks tokens with account's and order's public keys from the Secret
    carshare-tokens; only account mounts account's private key, only order its own."""
    for overlay in OVERLAYS:
        docs = render(overlay)
        for w, c in each_container(overlay):
            proc = process_of(c)
            if proc in (None, "nats", "postgres"):
                continue
            where = "%s %s" % (overlay, proc)
            env = env_of(docs, c)
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            files = {}
            for v in pod(w)["volumes"]:
                if v.get("secret", {}).get("secretName", "").startswith("carshare-tokens"):
                    path = [p for p, n in mounts.items() if n == v["name"]][0]
                    for item in v["secret"]["items"]:
                        files[path + "/" + item["path"]] = item["key"]
            check(files.get(env.get("TOKEN_PUBLIC_KEYS")) == "account.pub", where + ": people's key")
            check(files.get(env.get("TOKEN_SERVICE_KEYS")) == "order.pub", where + ": service key")
            private = sorted(k for k in files.values() if k.endswith(".key"))
            want = {"account": ["account.key"], "order": ["order.key"]}.get(proc, [])
            check(private == want, "%s mounts private keys %s" % (where, private))
            if proc == "account":
                check(files.get(env.get("TOKEN_PRIVATE_KEY")) == "account.key", where + ": signing key")
            if proc == "order":
                check(files.get(env.get("SERVICE_TOKEN_KEY")) == "order.key", where + ": service key")


def test_prod_database_secrets_open_each_database():
    """The prod secrets as scripts/k8s-secrets.sh makes them, against a real PostgreSQL: its
    init.sql (what the in-cluster server runs at its first start) creates a role and database
    per service, each service's URL signs in to its own database, and to no other."""
    sys.path.insert(0, os.path.join(pm.ROOT, "scripts"))
    import pglocal
    from harness import free_port
    tmp = tempfile.mkdtemp(prefix="carshare-pg-")
    os.chmod(tmp, 0o755)   # the server runs as the postgres user
    pg = pglocal.LocalPostgres(os.path.join(tmp, "pg"), free_port())
    try:
        overlay = os.path.join(tmp, "prod")
        subprocess.run([os.path.join(pm.ROOT, "scripts", "k8s-secrets.sh"), overlay], check=True)
        pg.start()
        with open(os.path.join(overlay, "secrets", "db", "init.sql")) as f:
            for statement in f.read().split(";\n"):
                if statement.strip():
                    pg.psql(statement)
        services = ("order", "delivery", "customerpage", "payment", "account")
        urls = {}
        for svc in services:
            with open(os.path.join(overlay, "secrets", "db", svc)) as f:
                url = f.read()
            check(url.startswith("postgresql://%s:" % svc) and "@postgres:5432/%s?" % svc in url,
                  "%s's URL %r" % (svc, url.split("@")[-1]))
            urls[svc] = url.replace("@postgres:5432/", "@127.0.0.1:%d/" % pg.port)

        def whoami(url, database):
            r = subprocess.run(["psql", "-X", "-At", "-c", "select current_user",
                                url.rsplit("/", 1)[0] + "/" + database + "?sslmode=disable"],
                               capture_output=True, text=True, timeout=30)
            return r.stdout.strip() if r.returncode == 0 else None
        for svc in services:
            check(whoami(urls[svc], svc) == svc, "%s cannot open its database" % svc)
        check(whoami(urls["payment"], "order") is None, "payment opened order's database")
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run(globals())
