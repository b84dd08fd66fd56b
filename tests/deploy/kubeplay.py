"""kubeplay.py: turns a rendered overlay (dev or prod) into what `podman kube play` runs here.

podman kube play (4.3, Debian) runs Pods, Deployments, PersistentVolumeClaims and ConfigMaps,
and nothing else: no Services (so no cluster DNS), no StatefulSets, no Secrets, one replica per
Deployment. The manifests stay the overlay's own, changed only where a one-machine podman
differs from a cluster:

  - every pod uses the host's network, on 127.0.0.1 and free ports, instead of Services:
    the ConfigMap's HOST and *_URL, each Deployment's PORT and container port, and the
    nats-server's listen ports are rewritten (tests target loopback only);
  - the nats StatefulSet becomes a Deployment with its volume claim template as a claim;
  - Secrets become ConfigMaps with the same keys (their volumes and key references follow);
    podman shares a ConfigMap's volume between pods and names emptyDir volumes by their
    name alone, so a secret volume that picks items becomes a ConfigMap of the pod's own,
    and emptyDir volumes are named after their pod;
  - the preStop `sleep` handler (Kubernetes >= 1.30) is dropped: podman does not know it;
  - several replicas (prod): a Deployment asked for as n instances becomes n Deployments
    (<name>-0, <name>-1, ...) each on its own port, and the upstream URLs in carshare-config
    list them all, which is what the callers see of a headless Service (every ready pod's
    address); the nats StatefulSet becomes one Deployment per server with its own ports and a
    nats.conf whose routes name those ports instead of nats-<i>.nats-cluster (its volume claim
    template one claim each); the postgres StatefulSet listens on its loopback port, and the
    Secret carshare-db's URLs name that port instead of the Service `postgres`;
  - `sqlite` services (not ported to PostgreSQL yet) lose the overlay's DATABASE_URL and keep
    SQLite on their data volume.

For tests, every object's name takes a suffix (pods, volumes and ConfigMaps of two runs at once
must not collide) and the images a tag of the run's own.

Everything else (commands, environment, probes, security context, volumes, resources) is
played as rendered.
"""
import base64
import copy
import re

import yaml

SERVICES = ("order", "delivery", "customerpage", "payment", "account", "gateway")


def _secret_to_configmap(doc):
    data = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
    data.update(doc.get("stringData") or {})
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": doc["metadata"]["name"]}, "data": data}


def _statefulset_to_deployment(doc):
    """A one-replica StatefulSet as a Deployment, with its claim templates as claims."""
    out = [{"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": copy.deepcopy(doc["metadata"]),
            "spec": {"replicas": 1, "selector": doc["spec"]["selector"],
                     "template": doc["spec"]["template"]}}]
    spec = out[0]["spec"]["template"]["spec"]
    for tpl in doc["spec"].get("volumeClaimTemplates", []):
        claim = "%s-%s-0" % (tpl["metadata"]["name"], doc["metadata"]["name"])
        out.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim}, "spec": tpl["spec"]})
        spec.setdefault("volumes", []).append(
            {"name": tpl["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim}})
    return out


def _rewrite_pod(pod_name, spec, ports, secrets):
    """Rewrites one pod spec in place; returns the ConfigMaps its secret volumes become."""
    spec["hostNetwork"] = True
    extra = []
    for c in spec["containers"]:
        c.get("lifecycle", {}).pop("preStop", None)
        if not c.get("lifecycle"):
            c.pop("lifecycle", None)
        name = c["name"]
        for env in c.get("env", []):
            if env["name"] == "PORT" and name in ports:
                env["value"] = str(ports[name])
            ref = env.get("valueFrom", {}).pop("secretKeyRef", None)
            if ref:
                env["valueFrom"]["configMapKeyRef"] = ref
        # On the host's network a container port would be a port mapping, which podman
        # refuses; the ports are the processes' own (PORT, nats.conf).
        c.pop("ports", None)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = c.get(probe, {}).get("httpGet") or c.get(probe, {}).get("tcpSocket")
            if get and name == "nats":
                get["port"] = ports["nats-monitor"]
            elif get and name in ports:
                get["port"] = ports[name]
    # podman makes one named volume per ConfigMap, shared by every pod that mounts it, and
    # per emptyDir name: a volume that picks items (order's own bus password) becomes a
    # ConfigMap of the pod's own, and every volume of the pod gets a name of its own.
    renamed = {}
    for vol in spec.get("volumes", []):
        secret = vol.pop("secret", None)
        if secret:
            data = secrets[secret["secretName"]]
            if "items" in secret:
                data = {i["path"]: data[i["key"]] for i in secret["items"]}
            cm = "%s-%s-%s" % (secret["secretName"], pod_name, vol["name"])
            extra.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": cm},
                          "data": data})
            vol["configMap"] = {"name": cm, "defaultMode": secret.get("defaultMode", 0o440)}
        if "emptyDir" in vol:
            renamed[vol["name"]] = vol["name"] = "%s-%s" % (pod_name, vol["name"])
    for c in spec["containers"]:
        for mount in c.get("volumeMounts", []):
            mount["name"] = renamed.get(mount["name"], mount["name"])
    return extra


def _rewrite_config(doc, instances, nodes):
    """carshare-config: every upstream URL lists its instances' loopback ports."""
    data = doc["data"]
    data["HOST"] = "127.0.0.1"
    data["PUBLIC_BASE_URL"] = "http://127.0.0.1:%d" % instances["gateway"][0]
    data["NATS_URL"] = "nats://127.0.0.1:%d" % nodes[0]["client"]
    for svc in SERVICES:
        key = svc.upper() + "_URL"
        if key in data:
            data[key] = ",".join("http://127.0.0.1:%d" % p for p in instances[svc])


def nats_node_conf(text, nodes, i):
    """A nats.conf (dev's or prod's) for server i of nodes ({client, cluster, monitor} ports):
    its listeners on 127.0.0.1 and those ports, its routes to the others' cluster ports
    instead of nats-<j>.nats-cluster:6222."""
    n = nodes[i]
    text = re.sub(r"(?m)^port: \d+", "host: 127.0.0.1\nport: %d" % n["client"], text)
    text = re.sub(r"(?m)^http_port: \d+", "http: 127.0.0.1:%d" % n["monitor"], text)
    text = re.sub(r"(?m)^  port: 6222", "  host: 127.0.0.1\n  port: %d" % n["cluster"], text)
    for j, other in enumerate(nodes):
        text = text.replace("nats://nats-%d.nats-cluster:6222" % j,
                            "nats://127.0.0.1:%d" % other["cluster"])
    if "nats-cluster" in text:
        raise ValueError("a route was not rewritten:\n" + text)
    return text


def _nats_configs(doc, nodes):
    """nats-config for one server (dev: the same name), or one per server: nats-config-<i>."""
    if len(nodes) == 1:
        doc["data"]["nats.conf"] = nats_node_conf(doc["data"]["nats.conf"], nodes, 0)
        return [doc]
    out = []
    for i in range(len(nodes)):
        one = copy.deepcopy(doc)
        one["metadata"]["name"] += "-%d" % i
        one["data"]["nats.conf"] = nats_node_conf(doc["data"]["nats.conf"], nodes, i)
        out.append(one)
    return out


def _rename(doc, suffix, tag):
    """Appends suffix to the object's name and to every name it refers to; retags images."""
    doc["metadata"]["name"] += suffix
    if doc["kind"] != "Deployment":
        return
    spec = doc["spec"]["template"]["spec"]
    for c in spec["containers"]:
        c["image"] = c["image"].rsplit(":", 1)[0] + ":" + tag
        for src in c.get("envFrom", []):
            src.get("configMapRef", {})["name"] = src["configMapRef"]["name"] + suffix
        for env in c.get("env", []):
            ref = env.get("valueFrom", {}).get("configMapKeyRef")
            if ref:
                ref["name"] += suffix
    for vol in spec.get("volumes", []):
        for key, field in (("configMap", "name"), ("persistentVolumeClaim", "claimName")):
            if key in vol:
                vol[key][field] += suffix
        if "emptyDir" in vol:
            for c in spec["containers"]:
                for mount in c.get("volumeMounts", []):
                    if mount["name"] == vol["name"]:
                        mount["name"] += suffix
            vol["name"] += suffix


def _copies(doc, count):
    """count copies of a workload named <name>-<i>, or the workload itself when count is 1."""
    if count == 1:
        return [doc]
    out = []
    for i in range(count):
        one = copy.deepcopy(doc)
        one["metadata"]["name"] += "-%d" % i
        out.append(one)
    return out


def _postgres(doc, port, secrets):
    """The postgres StatefulSet on its loopback port (the image's CMD would listen on every
    address at 5432)."""
    spec = doc["spec"]["template"]["spec"]
    for c in spec["containers"]:
        c["args"] = ["-c", "listen_addresses=127.0.0.1", "-p", str(port), "-k", "/tmp"]
    out = _rewrite_pod(doc["metadata"]["name"], spec, {"postgres": port}, secrets)
    return out + _statefulset_to_deployment(doc)


def _nats(doc, nodes, secrets):
    """The nats StatefulSet as one Deployment per server, each with its own nats-config."""
    out = []
    for i, one in enumerate(_copies(doc, len(nodes))):
        spec = one["spec"]["template"]["spec"]
        if len(nodes) > 1:
            for vol in spec.get("volumes", []):
                if vol.get("configMap", {}).get("name") == "nats-config" or \
                        vol.get("configMap", {}).get("name", "").startswith("nats-config-"):
                    vol["configMap"]["name"] += "-%d" % i
        out += _rewrite_pod(one["metadata"]["name"], spec,
                            {"nats-monitor": nodes[i]["monitor"]}, secrets)
        out += _statefulset_to_deployment(one)
    return out


def _service(doc, ports, sqlite, secrets):
    """A Deployment as one Deployment per instance (its ports), DATABASE_URL dropped if sqlite."""
    name = doc["metadata"]["name"]
    out = []
    for port, one in zip(ports, _copies(doc, len(ports))):
        spec = one["spec"]["template"]["spec"]
        if name in sqlite:
            for c in spec["containers"]:
                c["env"] = [e for e in c.get("env", []) if e["name"] != "DATABASE_URL"]
        out += _rewrite_pod(one["metadata"]["name"], spec, {name: port}, secrets)
        out.append(one)
    return out


def for_podman(rendered, ports, suffix="", tag="dev", sqlite=()):
    """The documents of `rendered` (an overlay's YAML text), ready for podman kube play.
    ports: process name -> its port, or a list of ports, one per instance; nats-client,
    nats-cluster, nats-monitor for one nats-server, or nats: a list of {client, cluster,
    monitor}, one per server of the StatefulSet; postgres (prod). sqlite: the services that
    run without the overlay's DATABASE_URL."""
    out = []
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    instances = {p: v if isinstance(v, list) else [v] for p, v in ports.items() if p in SERVICES}
    nodes = ports.get("nats") or [{"client": ports["nats-client"], "cluster": ports["nats-cluster"],
                                   "monitor": ports["nats-monitor"]}]
    for doc in docs:
        if doc["kind"] == "Secret" and doc["metadata"]["name"].startswith("carshare-db"):
            for key, value in doc.get("data", {}).items():
                url = base64.b64decode(value).decode()
                url = url.replace("@postgres:5432/", "@127.0.0.1:%d/" % ports.get("postgres", 0))
                doc["data"][key] = base64.b64encode(url.encode()).decode()
    secrets = {d["metadata"]["name"]: _secret_to_configmap(d)["data"] for d in docs
               if d["kind"] == "Secret"}
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "Secret":
            out.append(_secret_to_configmap(doc))
        elif kind == "ConfigMap" and name.startswith("carshare-config"):
            _rewrite_config(doc, instances, nodes)
            out.append(doc)
        elif kind == "ConfigMap" and name.startswith("nats-config"):
            out += _nats_configs(doc, nodes)
        elif kind == "ConfigMap":
            out.append(doc)
        elif kind == "StatefulSet" and name == "nats":
            out += _nats(doc, nodes, secrets)
        elif kind == "StatefulSet" and name == "postgres":
            out += _postgres(doc, ports["postgres"], secrets)
        elif kind == "Deployment":
            out += _service(doc, instances[name], sqlite, secrets)
        elif kind == "PersistentVolumeClaim":
            out.append(doc)
    for doc in out:
        _rename(doc, suffix, tag)
    # ConfigMaps and claims first: the pods refer to them.
    order = {"ConfigMap": 0, "PersistentVolumeClaim": 1, "Deployment": 2}
    out.sort(key=lambda d: order[d["kind"]])
    return yaml.safe_dump_all(out, sort_keys=False)
