"""kubeplay.py: turns the rendered dev overlay into what `podman kube play` runs on this machine.

podman kube play (4.3, Debian) runs Pods, Deployments, PersistentVolumeClaims and ConfigMaps,
and nothing else: no Services (so no cluster DNS), no StatefulSets, no Secrets. The manifests
stay the dev overlay's own, changed only where a one-machine podman differs from a cluster:

  - every pod uses the host's network, on 127.0.0.1 and free ports, instead of Services:
    the ConfigMap's HOST and *_URL, each Deployment's PORT and container port, and the
    nats-server's listen ports are rewritten (tests target loopback only);
  - the nats StatefulSet becomes a Deployment with its volume claim template as a claim;
  - Secrets become ConfigMaps with the same keys (their volumes and key references follow);
    podman shares a ConfigMap's volume between pods and names emptyDir volumes by their
    name alone, so a secret volume that picks items becomes a ConfigMap of the pod's own,
    and emptyDir volumes are named after their pod;
  - the preStop `sleep` handler (Kubernetes >= 1.30) is dropped: podman does not know it.

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


def _pod_specs(doc):
    if doc.get("kind") in ("Deployment", "StatefulSet"):
        yield doc["spec"]["template"]["spec"]


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
            get = c.get(probe, {}).get("httpGet")
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


def _rewrite_config(doc, ports):
    data = doc["data"]
    name = doc["metadata"]["name"]
    if name.startswith("carshare-config"):
        data["HOST"] = "127.0.0.1"
        data["PUBLIC_BASE_URL"] = "http://127.0.0.1:%d" % ports["gateway"]
        data["NATS_URL"] = "nats://127.0.0.1:%d" % ports["nats-client"]
        for svc in SERVICES:
            key = svc.upper() + "_URL"
            if key in data:
                data[key] = "http://127.0.0.1:%d" % ports[svc]
    elif name.startswith("nats-config"):
        conf = data["nats.conf"]
        conf = re.sub(r"(?m)^port: \d+", "host: 127.0.0.1\nport: %d" % ports["nats-client"], conf)
        conf = re.sub(r"(?m)^http_port: \d+", "http: 127.0.0.1:%d" % ports["nats-monitor"], conf)
        data["nats.conf"] = conf


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


def for_podman(rendered, ports, suffix="", tag="dev"):
    """The documents of `rendered` (the dev overlay's YAML text), ready for podman kube play.
    ports: process name -> port, plus nats-client, nats-cluster, nats-monitor."""
    out = []
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    secrets = {d["metadata"]["name"]: _secret_to_configmap(d)["data"] for d in docs
               if d["kind"] == "Secret"}
    for doc in docs:
        kind = doc["kind"]
        if kind == "Secret":
            doc = _secret_to_configmap(doc)
            kind = "ConfigMap"
        if kind == "ConfigMap":
            _rewrite_config(doc, ports)
            out.append(doc)
        elif kind == "StatefulSet":
            for spec in _pod_specs(doc):
                out += _rewrite_pod(doc["metadata"]["name"], spec, ports, secrets)
            out += _statefulset_to_deployment(doc)
        elif kind == "Deployment":
            for spec in _pod_specs(doc):
                out += _rewrite_pod(doc["metadata"]["name"], spec, ports, secrets)
            out.append(doc)
        elif kind == "PersistentVolumeClaim":
            out.append(doc)
    for doc in out:
        _rename(doc, suffix, tag)
    # ConfigMaps and claims first: the pods refer to them.
    order = {"ConfigMap": 0, "PersistentVolumeClaim": 1, "Deployment": 2}
    out.sort(key=lambda d: order[d["kind"]])
    return yaml.safe_dump_all(out, sort_keys=False)
