"""schema.py: validates Kubernetes objects against the API's own schema, as Debian ships it.

Debian has no kubeconform or kubeval, and `kubectl --validate` needs a cluster. Debian's
python3-kubernetes carries the API's OpenAPI schema as its generated models: every model class
lists its fields with their JSON names (attribute_map) and types (openapi_types), and its
constructor refuses a missing required field or a value outside an enum. validate() walks an
object with those: an unknown field (a typo, a field at the wrong level), a wrong type, or a
missing required field is an error, with the path to it.

The package is the client of Kubernetes 1.22. Two newer API parts are mapped onto what it has:
autoscaling/v2 (GA in 1.23) onto autoscaling/v2beta2, whose fields are the same for what
v2 kept, and the lifecycle `sleep` handler (1.29+) by its definition, {seconds: integer}.
"""
import kubernetes.client as k8s
from kubernetes.client import ApiClient

# Types newer than the package, defined by hand: model name -> {json field: type}.
EXTRA_MODELS = {"V1SleepAction": {"seconds": "int"}}
# Fields newer than the package, added to its models: model name -> {json field: type}.
EXTRA_FIELDS = {"V1Handler": {"sleep": "V1SleepAction"}}
VERSION_FALLBACK = {"V2HorizontalPodAutoscaler": "V2beta2HorizontalPodAutoscaler"}


def model_name(doc):
    group_version = doc.get("apiVersion", "")
    version = group_version.split("/")[-1]
    name = "V" + version[1:] + doc.get("kind", "")     # v1 -> V1, v2beta2 -> V2beta2
    return VERSION_FALLBACK.get(name, name)


def _fields(model):
    """json field -> type of a model class name."""
    if model in EXTRA_MODELS:
        return dict(EXTRA_MODELS[model])
    cls = getattr(k8s, model)
    out = {cls.attribute_map[py]: typ for py, typ in cls.openapi_types.items()}
    out.update(EXTRA_FIELDS.get(model, {}))
    return out


def _walk(value, typ, path, errors):
    if value is None:
        return
    if typ.startswith("list["):
        if not isinstance(value, list):
            errors.append("%s: expected a list, got %r" % (path, value))
            return
        for i, item in enumerate(value):
            _walk(item, typ[5:-1], "%s[%d]" % (path, i), errors)
    elif typ.startswith("dict("):
        inner = typ[5:-1].split(", ", 1)[1]
        if not isinstance(value, dict):
            errors.append("%s: expected a map, got %r" % (path, value))
            return
        for key, item in value.items():
            _walk(item, inner, "%s.%s" % (path, key), errors)
    elif typ == "str" or typ == "datetime":
        if not isinstance(value, str):
            errors.append("%s: expected a string, got %r" % (path, value))
    elif typ == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append("%s: expected an integer, got %r" % (path, value))
    elif typ == "bool":
        if not isinstance(value, bool):
            errors.append("%s: expected true or false, got %r" % (path, value))
    elif typ in ("object", "float"):
        pass  # int-or-string, quantities, free-form
    else:
        if not isinstance(value, dict):
            errors.append("%s: expected an object (%s), got %r" % (path, typ, value))
            return
        fields = _fields(typ)
        for key, item in value.items():
            if key not in fields:
                errors.append("%s: unknown field %r (%s)" % (path, key, typ))
            else:
                _walk(item, fields[key], "%s.%s" % (path, key), errors)


def _strip_extras(value, typ):
    """The object without the fields the package does not know (for its constructors)."""
    if value is None:
        return None
    if typ.startswith("list[") and isinstance(value, list):
        return [_strip_extras(v, typ[5:-1]) for v in value]
    if typ.startswith("dict(") and isinstance(value, dict):
        inner = typ[5:-1].split(", ", 1)[1]
        return {kk: _strip_extras(v, inner) for kk, v in value.items()}
    if typ in EXTRA_MODELS or not hasattr(k8s, typ) or not isinstance(value, dict):
        return value
    fields = _fields(typ)
    extra = EXTRA_FIELDS.get(typ, {})
    return {kk: _strip_extras(v, fields[kk]) for kk, v in value.items()
            if kk in fields and kk not in extra}


def validate(doc):
    """Every schema error of one object (an empty list when it is valid)."""
    name = model_name(doc)
    where = "%s/%s" % (doc.get("kind"), doc.get("metadata", {}).get("name"))
    if not hasattr(k8s, name):
        return ["%s: no schema for %s %s" % (where, doc.get("apiVersion"), doc.get("kind"))]
    errors = []
    _walk(doc, name, where, errors)
    if errors:
        return errors
    try:  # required fields and enums, as the models' constructors check them
        ApiClient()._ApiClient__deserialize(_strip_extras(doc, name), name)
    except (ValueError, TypeError) as e:
        errors.append("%s: %s" % (where, e))
    return errors
