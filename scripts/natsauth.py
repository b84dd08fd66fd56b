"""natsauth.py: the bus's users and what each may do, as nats-server configuration.

The bus is not open to whoever can reach it. nats-server runs with one user per service and an
`admin` user for operators (and tests); there is no anonymous access (nats-server refuses a
client without credentials as soon as it knows users). Each service's user may:

  - publish its own event types only (order: Ordered, OrderCancelled, Returned; payment: Paid,
    PayCancelled; delivery: Shipped, DeliveryCanceled; customerpage: none);
  - make the JetStream API calls its bus really makes (lib/bus.c, lib/consumer.c): create the
    stream `carshare` if it is missing and read its info; create, read and pull from its own
    durable consumer (named after the service) and ack its messages. It may NOT delete or purge
    the stream, create other streams, nor touch another service's consumer. Creating `carshare`
    cannot change it once it exists (nats-server refuses a create whose configuration differs);
  - update the stream only if it is the stream's owner (STREAM_OWNER, order: its bus brings an
    existing stream's limits to the configured ones, BUS_STREAM_OWNER=1 in its environment,
    lib/bus.c "Reconciling"). The others may not: an update could shrink the limits (dropping
    events nobody consumed yet) or change the subjects, so one user holds that power, not four
    (nats-server 2.9 refuses an update that adds a republish rule, and a service cannot create
    a stream to source from, so an update does not let the owner inject events);
  - receive replies on _INBOX.<user>.> only (lib/bus.c sets that inbox prefix), so no service
    reads another's replies.

customerpage also rebuilds its read model through an ephemeral consumer (lib/consumer.c replay),
whose name nats-server chooses: it may create, pull from, ack and delete any consumer of the
stream except the other services' durables.

Passwords are random, new at every start of the configuration's writer (run.py, the e2e harness),
and kept only in the configuration file (0600, in a 0700 directory) and the services'
environment.
"""
import json
import os
import secrets

STREAM = "carshare"

# eventType -> publisher is the contract's event table; a service not listed publishes nothing.
PUBLISHES = {
    "order": ["Ordered", "OrderCancelled", "Returned"],
    "payment": ["Paid", "PayCancelled"],
    "delivery": ["Shipped", "DeliveryCanceled"],
    "customerpage": [],
}
REPLAYERS = {"customerpage"}
# The one service whose bus updates the stream's configuration (docs/DESIGN.md "Reconciling the
# stream"); the service where every rental's events begin.
STREAM_OWNER = "order"
BUS_USERS = list(PUBLISHES)


def new_passwords():
    """A random password for every bus user and for admin. Each starts with a letter: where the
    configuration takes a password from the environment ($ORDER_PASSWORD, natsconf.py),
    nats-server parses the value, and one starting with '-' or a digit is read as a number ("10MB"
    even as a size) or refused."""
    return {name: "p" + secrets.token_urlsafe(24) for name in BUS_USERS + ["admin"]}


def _consumer_subjects(durable):
    api = "$JS.API.CONSUMER."
    return [api + "CREATE.%s.%s" % (STREAM, durable),           # nats.c on nats-server >= 2.9
            api + "CREATE.%s.%s.>" % (STREAM, durable),         # ... with a filter subject
            api + "DURABLE.CREATE.%s.%s" % (STREAM, durable),   # ... on older servers
            api + "INFO.%s.%s" % (STREAM, durable),
            api + "MSG.NEXT.%s.%s" % (STREAM, durable),
            "$JS.ACK.%s.%s.>" % (STREAM, durable)]


def permissions(name):
    """The nats-server permissions of service `name`'s user."""
    allow = ["%s.%s" % (STREAM, t) for t in PUBLISHES[name]]
    allow += ["$JS.API.STREAM.CREATE." + STREAM, "$JS.API.STREAM.INFO." + STREAM]
    if name == STREAM_OWNER:
        allow += ["$JS.API.STREAM.UPDATE." + STREAM]
    allow += _consumer_subjects(name)
    deny = []
    if name in REPLAYERS:
        api = "$JS.API.CONSUMER."
        allow += [api + "CREATE." + STREAM, api + "CREATE.%s.*" % STREAM,
                  api + "CREATE.%s.*.>" % STREAM, api + "INFO.%s.*" % STREAM,
                  api + "MSG.NEXT.%s.*" % STREAM, api + "DELETE.%s.*" % STREAM,
                  "$JS.ACK.%s.*.>" % STREAM]
        for other in BUS_USERS:
            if other != name:
                deny += _consumer_subjects(other) + [api + "DELETE.%s.%s" % (STREAM, other)]
    publish = {"allow": allow}
    if deny:
        publish["deny"] = deny
    return {"publish": publish, "subscribe": {"allow": ["_INBOX.%s.>" % name]}}


def config(host, port, store_dir, passwords, extra=None):
    """The whole nats-server configuration (JSON is valid nats-server configuration syntax);
    `extra` adds top-level settings (a cluster node's server_name and cluster block)."""
    users = [{"user": name, "password": passwords[name], "permissions": permissions(name)}
             for name in BUS_USERS]
    users.append({"user": "admin", "password": passwords["admin"]})
    conf = {"listen": "%s:%d" % (host, port),
            "jetstream": {"store_dir": store_dir},
            "authorization": {"users": users}}
    conf.update(extra or {})
    return conf


def write_config(path, host, port, store_dir, passwords, extra=None):
    """Writes the configuration to `path` (0600; its directory 0700) and returns the path."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    os.chmod(os.path.dirname(path), 0o700)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config(host, port, store_dir, passwords, extra), f, indent=1)
    os.chmod(path + ".tmp", 0o600)
    os.replace(path + ".tmp", path)
    return path


def service_env(name, passwords):
    """The environment that gives service `name` its bus credentials ({} if it uses no bus), and
    the stream's owner its duty to update the stream."""
    if name not in PUBLISHES:
        return {}
    env = {"NATS_USER": name, "NATS_PASSWORD": passwords[name]}
    if name == STREAM_OWNER:
        env["BUS_STREAM_OWNER"] = "1"
    return env
