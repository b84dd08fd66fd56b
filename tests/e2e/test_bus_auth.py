#!/usr/bin/env python3
"""End-to-end: the bus is not open to whoever can reach it (scripts/natsauth.py).

Real nats-server configured as make run configures it, real services connected with their own
users. Each refusal is checked next to the same call made by a user who may make it, so a test
cannot pass because the call was malformed or the server refuses everything:

  - a client without credentials, or with a wrong password, is refused, and a forged event it
    tries to publish never reaches the stream;
  - each service's user may publish its own event types and no other service's (order cannot
    publish Paid, payment cannot publish Ordered, customerpage publishes nothing);
  - no user can delete or purge the stream, or create another stream (with a republish rule),
    nor read, pull from or ack another service's consumer, nor subscribe outside its own inbox;
    only the stream's owner (order) may update the stream, and nats-server refuses even it a
    republish rule;
  - a stream left with older limits (an upgraded deployment: 2-minute duplicate window, other
    size and age limits) is brought to the configured ones by order when it starts, keeping what
    an operator set besides; payment, not the owner, leaves it as it is and is ready all the same.
"""
import json
import os
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import NatsRefused, System, check, free_port, run, wait_for  # noqa: E402

BUS_SERVICES = ["payment", "order", "delivery", "customerpage"]


def event(event_type, **payload):
    body = {"eventType": event_type, "timestamp": "20261207000000", "eventId": str(uuid.uuid4())}
    body.update(payload)
    return body


def count(s, event_type):
    nc = s.nats_client()
    try:
        info = nc.request("$JS.API.STREAM.INFO.carshare",
                          json.dumps({"subjects_filter": "carshare." + event_type}).encode())
    finally:
        nc.close()
    return (info.get("state", {}).get("subjects") or {}).get("carshare." + event_type, 0)


def publish(s, user, event_type, password=None):
    """Publishes one forged event as `user`; returns the JetStream ack or raises NatsRefused."""
    if password is not None:
        from harness import Nats
        nc = Nats(s.nats_port, user, password)
    else:
        nc = s.nats_client(user)
    # No order id: the services that consume it set it aside as malformed and publish nothing in
    # reaction (delivery cancelling on a stored OrderCancelled would put a DeliveryCanceled in
    # the stream while another user's forged DeliveryCanceled is being counted).
    ev = event(event_type, forged=True)
    try:
        return nc.request("carshare." + event_type, json.dumps(ev).encode(),
                          {"Nats-Msg-Id": ev["eventId"]})
    finally:
        nc.close()


def refused(fn, what):
    try:
        answer = fn()
    except NatsRefused as e:
        return str(e)
    raise AssertionError("%s was not refused: %r" % (what, answer))


def stream_ready(s):
    wait_for(lambda: "state" in s.nats_client().request("$JS.API.STREAM.INFO.carshare", b""),
             15, "the services to create the stream")


def test_no_credentials_no_bus():
    with System(BUS_SERVICES) as s:
        stream_ready(s)
        before = count(s, "Paid")
        why = refused(lambda: publish(s, None, "Paid"), "a client without credentials")
        check("authorization" in why.lower(), "unexpected refusal: %s" % why)
        why = refused(lambda: publish(s, "payment", "Paid", password="not-the-password"),
                      "a wrong password")
        check("authorization" in why.lower(), "unexpected refusal: %s" % why)
        check(count(s, "Paid") == before, "a forged Paid reached the stream")
        # The same publish with payment's credentials is stored: the refusals were about who.
        ack = publish(s, "payment", "Paid")
        check(ack.get("stream") == "carshare", "payment could not publish Paid: %r" % (ack,))
        check(count(s, "Paid") == before + 1, "payment's own Paid was not stored")


def test_each_service_publishes_only_its_own_events():
    own = {"order": ["Ordered", "OrderCancelled", "Returned"], "payment": ["Paid", "PayCancelled"],
           "delivery": ["Shipped", "DeliveryCanceled"], "customerpage": []}
    every = sorted({t for types in own.values() for t in types})
    with System(BUS_SERVICES) as s:
        stream_ready(s)
        # The services only had to create the stream and their users' consumers. Stopped now,
        # since they react to the events published below (delivery answers an OrderCancelled with
        # a DeliveryCanceled of its own), which would move the counts this test compares.
        for name in BUS_SERVICES:
            s.stop(name)
        for user, types in own.items():
            for t in every:
                before = count(s, t)
                if t in types:
                    ack = publish(s, user, t)
                    check(ack.get("stream") == "carshare", "%s may publish %s: %r" % (user, t, ack))
                    check(count(s, t) == before + 1, "%s's %s was not stored" % (user, t))
                else:
                    why = refused(lambda: publish(s, user, t), "%s publishing %s" % (user, t))
                    check("permissions violation" in why.lower(), "unexpected refusal: %s" % why)
                    check(count(s, t) == before, "%s's forged %s reached the stream" % (user, t))


def api_call(s, user, subject, body=b""):
    nc = s.nats_client(user)
    try:
        return nc.request(subject, body)
    finally:
        nc.close()


def test_no_service_changes_the_stream_or_another_consumer():
    # A stream update could shrink the limits or change the subjects: only the owner may.
    republish = json.dumps({"name": "carshare", "subjects": ["carshare.>"], "storage": "file",
                            "republish": {"src": ">", "dest": "x.>"}}).encode()
    evil = json.dumps({"name": "evil", "subjects": ["evil.>"],
                       "republish": {"src": "evil.>", "dest": "carshare.Paid"}}).encode()
    with System(BUS_SERVICES) as s:
        stream_ready(s)
        for user in ["order", "payment", "delivery", "customerpage"]:
            if user == "order":     # the owner: allowed to ask, and refused by JetStream itself
                answer = api_call(s, user, "$JS.API.STREAM.UPDATE.carshare", republish)
                check("republish" in answer.get("error", {}).get("description", "").lower(),
                      "order added a republish rule: %r" % (answer,))
            else:
                refused(lambda: api_call(s, user, "$JS.API.STREAM.UPDATE.carshare", republish),
                        "%s updating the stream" % user)
            for subject, body in [("$JS.API.STREAM.DELETE.carshare", b""),
                                  ("$JS.API.STREAM.PURGE.carshare", b""),
                                  ("$JS.API.STREAM.CREATE.evil", evil),
                                  ("$JS.API.STREAM.MSG.DELETE.carshare", b'{"seq": 1}')]:
                refused(lambda: api_call(s, user, subject, body), "%s calling %s" % (user, subject))
            for other in ["order", "payment", "delivery", "customerpage"]:
                if other == user:
                    continue
                for subject in ["$JS.API.CONSUMER.MSG.NEXT.carshare." + other,
                                "$JS.API.CONSUMER.DELETE.carshare." + other,
                                "$JS.API.CONSUMER.CREATE.carshare." + other,
                                "$JS.ACK.carshare.%s.1.1.1.1.1" % other]:
                    refused(lambda: api_call(s, user, subject, b'{"batch": 1}'),
                            "%s calling %s" % (user, subject))
            # Its own consumer: allowed (the refusals above are about whose it is).
            info = api_call(s, user, "$JS.API.CONSUMER.INFO.carshare." + user)
            check(info.get("name") == user, "%s cannot read its own consumer: %r" % (user, info))
        info = api_call(s, "admin", "$JS.API.STREAM.INFO.carshare")
        check(info["config"].get("republish") is None, "the stream was changed: %r" % info)
        check(info["config"]["subjects"] == ["carshare.>"], "the stream was changed: %r" % info)


def stream_config(s):
    return api_call(s, "admin", "$JS.API.STREAM.INFO.carshare")["config"]


def test_the_owner_brings_an_old_stream_to_the_configured_limits():
    s_ = 10 ** 9
    old = {"name": "carshare", "subjects": ["carshare.>"], "storage": "file", "discard": "new",
           "max_bytes": 1 << 20, "max_age": 0, "duplicate_window": 120 * s_,
           "description": "kept: set by an operator"}
    with System([]) as s:      # nats-server only: the services start once the stream is there
        for name in ["payment", "order"]:
            s.ports.setdefault(name, free_port())
        created = api_call(s, "admin", "$JS.API.STREAM.CREATE.carshare", json.dumps(old).encode())
        check(created.get("did_create"), "the old stream was not created: %r" % (created,))
        s.start("payment")      # ready once its bus set the stream and its consumer up
        conf = stream_config(s)
        check((conf["duplicate_window"], conf["max_bytes"], conf["max_age"], conf["discard"])
              == (120 * s_, 1 << 20, 0, "new"), "payment, not the owner, changed it: %r" % conf)
        s.start("order")
        conf = stream_config(s)
        check(conf["duplicate_window"] == 30 * s_, "duplicate window not updated: %r" % conf)
        check(conf["max_bytes"] == 1 << 30, "max bytes not updated: %r" % conf)
        check(conf["max_age"] == 7 * 24 * 3600 * s_, "max age not updated: %r" % conf)
        check(conf["discard"] == "old", "discard policy not updated: %r" % conf)
        check(conf.get("description") == old["description"] and conf["storage"] == "file"
              and conf["subjects"] == ["carshare.>"], "the rest was not kept: %r" % conf)
        check("stream configuration updated" in s.log("order"), "order did not say so")
        # A restart finds nothing to change, and the stream still takes events.
        s.stop("order")
        s.start("order")
        check(stream_config(s) == conf, "a second start changed it again")
        ack = publish(s, "order", "Ordered")
        check(ack.get("stream") == "carshare", "the updated stream refused an event: %r" % (ack,))


def test_no_service_reads_others_replies_or_the_raw_subjects():
    with System(BUS_SERVICES) as s:
        stream_ready(s)
        for user in ["order", "customerpage"]:
            for subject in ["carshare.>", "_INBOX.>", "_INBOX.payment.>", ">"]:
                nc = s.nats_client(user)
                try:
                    nc.sock.sendall(("SUB %s 9\r\nPING\r\n" % subject).encode())
                    # Two PINGs were sent (the client's own, then this one): a forbidden SUB is
                    # answered with -ERR before the second PONG.
                    lines, pongs = [], 0
                    while pongs < 2:
                        line = nc.line()
                        lines.append(line)
                        pongs += line == "PONG"
                    errs = [ln for ln in lines if ln.startswith("-ERR")]
                    check(errs and "subscription" in errs[0].lower(),
                          "%s could subscribe to %s (%r)" % (user, subject, lines))
                finally:
                    nc.close()


if __name__ == "__main__":
    run(globals())
