"""End-to-end: order's answers stay true when its database fails twice in a row.

After payment has charged a rental, order records the outcome: approved (201), or, when that
write fails, voiding (the reconciler refunds it) and 503 "not booked". If the second write failed
too, the intake stayed pending and the next start settled it with payment and accepted the rental
the customer had been told was not booked. Now 503 is answered only once the voiding is on record;
if it cannot be written, the customer is told the outcome is unknown (500, "may still be
accepted"). The failures are injected with a trigger on order's own database (its SQLite file,
or its PostgreSQL database under CARSHARE_DB=postgres); order itself runs unmodified.
"""
import os
import sqlite3
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import System, check, check_error, run, wait_for  # noqa: E402
from rental_checks import orders, payments, problems, rent  # noqa: E402


def inject(s, when):
    """A trigger that fails every update of an intake matching `when` (SQL on OLD/NEW)."""
    if s.on_postgres("order"):
        s.psql("order", "CREATE FUNCTION injected_failure() RETURNS trigger LANGUAGE plpgsql AS "
                        "$$BEGIN RAISE EXCEPTION 'injected failure'; END$$;"
                        "CREATE TRIGGER injected_failure BEFORE UPDATE ON intakes FOR EACH ROW "
                        "WHEN (%s) EXECUTE FUNCTION injected_failure()" % when)
        return None
    db = sqlite3.connect(os.path.join(s.dir, "data", "order.db"), timeout=30)
    db.execute("CREATE TRIGGER injected_failure BEFORE UPDATE ON intakes WHEN %s "
               "BEGIN SELECT RAISE(ABORT, 'injected failure'); END" % when)
    db.commit()
    return db


def heal(s, db):
    if db is None:
        s.psql("order", "DROP TRIGGER injected_failure ON intakes")
        return
    db.execute("DROP TRIGGER injected_failure")
    db.commit()
    db.close()


def restart_after_kill(s):
    s.kill("order")
    s.start("order")


def test_approval_fails_voiding_recorded_503_never_accepted():
    with System(["payment", "order"]) as s:
        db = inject(s, "NEW.state = 'approved'")
        check_error(rent(s), 503, "not booked")
        heal(s, db)
        restart_after_kill(s)
        wait_for(lambda: not problems(s), 30, "the charge refunded")
        check(orders(s) == [], "a rental the customer was told was not booked stands: %r" % orders(s))
        check(len(payments(s)) == 1, "payment was not charged once: %r" % payments(s))


def test_double_failure_answers_unknown_not_503():
    with System(["payment", "order"]) as s:
        db = inject(s, "OLD.state = 'pending'")    # neither approved nor voiding can be written
        check_error(rent(s), 500, "may still be accepted")
        heal(s, db)
        restart_after_kill(s)
        # Settled with payment at the start: accepted, which the customer was told it may be.
        wait_for(lambda: not problems(s) and len(orders(s)) == 1, 30, "the rental settled")
        check(orders(s)[0]["status"] == "OrderApproved", "unexpected %r" % orders(s))


run(globals())
