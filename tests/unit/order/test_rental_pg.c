/* test_rental_pg.c: order's store on PostgreSQL (tests/pg_run.py starts the
 * server). First every test of test_rental.c, unchanged, on this backend;
 * then what only this backend has to prove, because here reservations run
 * at the same moment on DB_POOL_SIZE connections (lib/db.c) instead of one
 * after another on the loop:
 *  - the last cars: many rentals of a model with 3 cars at once, exactly 3
 *    win and the day's count is 3;
 *  - overlapping periods at once: no day is ever booked past the total,
 *    and each day's count is the sum of the winners that hold it;
 *  - one Idempotency-Key sent by many requests at once: one reservation,
 *    the others find it (and are answered from it by rental.c);
 *  - many reconcilers (replicas) taking expired intakes at once: each
 *    intake is taken by exactly one (issue 14);
 *  - many returns of one rental at once (the return timers of several
 *    replicas, a customer): one returns it and publishes Returned, the
 *    others find it returned.
 * The losers of a conflict are refused by PostgreSQL (SERIALIZABLE, 40001)
 * and run again by lib/db.c; none may be lost or answered as unavailable. */
#define ORDER_TEST_PG
#include "test_rental.c"

#define RACERS 24

struct racer {
    rental_request rq;
    char key[64];
    reserve_outcome outcome;
    intake in;
    car c;
};

static void racer_work(store *st, void *arg)
{
    struct racer *a = arg;
    a->outcome = rental_reserve(st, &a->rq, &a->in, &a->c);
}

static void add_model(store *st, const char *id, long long total)
{
    car c = {.daily_price = 10000, .total = total};
    snprintf(c.id, sizeof c.id, "%s", id);
    snprintf(c.name, sizeof c.name, "race car %s", id);
    snprintf(c.location, sizeof c.location, "Mapo");
    CHECK_INT(store_begin(st), SQLITE_OK);
    CHECK_INT(car_store_insert(st, &c), 0);
    CHECK_INT(store_commit(st), SQLITE_OK);
}

static long long booked(store *st, const char *model, long day)
{
    char d[24];
    const char *v[] = {model, store_pg_int(d, day)};
    return store_pg_one_int(st, "SELECT COALESCE(MAX(booked), 0) FROM bookings"
                                " WHERE product_id = $1 AND day = $2::bigint", 2, v, "booked");
}

static void test_last_cars(struct event_base *base, db *d)
{
    store *st = db_store(d);
    add_model(st, "race1", 3);
    struct racer a[RACERS];
    memset(a, 0, sizeof a);
    for (int i = 0; i < RACERS; i++)
        a[i].rq = request("race1", 1, NULL);
    race(base, d, a, RACERS, racer_work);
    int won = 0, full = 0;
    for (int i = 0; i < RACERS; i++) {
        won += a[i].outcome == RESERVE_OK;
        full += a[i].outcome == RESERVE_NOT_ENOUGH;
    }
    CHECK_INT(won, 3);
    CHECK_INT(full, RACERS - 3);
    CHECK_INT(booked(st, "race1", TODAY), 3);
    CHECK_INT(available(st, "race1"), 0);
}

static void test_overlapping_periods(struct event_base *base, db *d)
{
    store *st = db_store(d);
    add_model(st, "race2", 2);
    struct racer a[RACERS];
    memset(a, 0, sizeof a);
    for (int i = 0; i < RACERS; i++) {
        a[i].rq = request("race2", 1, NULL);
        a[i].rq.from_day = TODAY + i % 4;
        a[i].rq.to_day = a[i].rq.from_day + 2;
    }
    race(base, d, a, RACERS, racer_work);
    int won = 0;
    for (long day = TODAY; day < TODAY + 6; day++) {
        long long held = 0;
        for (int i = 0; i < RACERS; i++)
            if (a[i].outcome == RESERVE_OK && a[i].rq.from_day <= day && day < a[i].rq.to_day)
                held++;
        CHECK(held <= 2);
        CHECK_INT(booked(st, "race2", day), held);
    }
    for (int i = 0; i < RACERS; i++) {
        CHECK(a[i].outcome == RESERVE_OK || a[i].outcome == RESERVE_NOT_ENOUGH);
        won += a[i].outcome == RESERVE_OK;
    }
    CHECK(won >= 2);   /* at least the first day's two cars */
}

static void test_one_key_at_once(struct event_base *base, db *d)
{
    store *st = db_store(d);
    add_model(st, "race3", 1000);
    struct racer a[RACERS];
    memset(a, 0, sizeof a);
    for (int i = 0; i < RACERS; i++) {
        snprintf(a[i].key, sizeof a[i].key, "kim:race-key");
        a[i].rq = request("race3", 1, a[i].key);
    }
    race(base, d, a, RACERS, racer_work);
    int won = 0;
    long long winner = 0;
    for (int i = 0; i < RACERS; i++) {
        if (a[i].outcome == RESERVE_OK) {
            won++;
            winner = a[i].in.id;
        } else {
            /* a conflict run again finds the key taken; a unique violation
             * fails the unit (rental.c then replays the holder) */
            CHECK(a[i].outcome == RESERVE_KEY_IN_USE || a[i].outcome == RESERVE_FAILED);
        }
    }
    CHECK_INT(won, 1);
    intake held;
    CHECK_INT(intake_store_find_by_key(st, "kim:race-key", &held), 1);
    CHECK_INT(held.id, winner);
    CHECK_INT(booked(st, "race3", TODAY), 1);
}

/* ---- replicas: reconcilers and return timers at once ---- */

struct unit {
    char owner[16];
    long long ids[32];
    int n;
    long long order_id;
    end_outcome returned;
};

static void keep_claimed(const intake *in, void *arg)
{
    struct unit *u = arg;
    if (u->n < 32)
        u->ids[u->n++] = in->id;
}

static void claim_work(store *st, void *arg)
{
    struct unit *u = arg;
    u->n = 0;
    if (store_begin(st) != SQLITE_OK ||
        intake_store_claim(st, u->owner, 60000, 4, keep_claimed, u) < 0 ||
        store_commit(st) != SQLITE_OK) {
        store_rollback(st);
        u->n = -1;
    }
}

static void return_work(store *st, void *arg)
{
    struct unit *u = arg;
    order o;
    u->returned = order_return(st, u->order_id, TODAY, 1796000000, "race", &o);
}

static void test_reconcilers_at_once(struct event_base *base, db *d)
{
    store *st = db_store(d);
    enum { DEAD = 24 };
    long long dead[DEAD];
    for (int i = 0; i < DEAD; i++) {
        intake in;
        car c;
        rental_request rq = request("race3", 1, NULL);
        rq.owner = "dead";
        rq.lease_ms = -1000;
        CHECK_INT(rental_reserve(st, &rq, &in, &c), RESERVE_OK);
        dead[i] = in.id;
    }
    struct unit u[RACERS];
    memset(u, 0, sizeof u);
    for (int i = 0; i < RACERS; i++)
        snprintf(u[i].owner, sizeof u[i].owner, "rec-%d", i);
    race(base, d, u, RACERS, claim_work);
    for (int k = 0; k < DEAD; k++) {
        int takers = 0;
        for (int i = 0; i < RACERS; i++)
            for (int j = 0; j < u[i].n; j++)
                takers += u[i].ids[j] == dead[k];
        CHECK_INT(takers, 1);
    }
    for (int i = 0; i < RACERS; i++)
        CHECK(u[i].n >= 0 && u[i].n <= 4);
    CHECK_INT(count(st, "SELECT count(*) FROM intakes WHERE owner = 'dead'"), 0);
}

static void test_returns_at_once(struct event_base *base, db *d)
{
    store *st = db_store(d);
    intake in;
    car c;
    order o;
    rental_request rq = request("race3", 1, NULL);
    CHECK_INT(rental_reserve(st, &rq, &in, &c), RESERVE_OK);
    CHECK_INT(rental_approve(st, in.id, 777, &o), 1);
    struct unit u[RACERS];
    memset(u, 0, sizeof u);
    for (int i = 0; i < RACERS; i++)
        u[i].order_id = in.id;
    race(base, d, u, RACERS, return_work);
    int done = 0;
    for (int i = 0; i < RACERS; i++) {
        done += u[i].returned == END_DONE;
        CHECK(u[i].returned == END_DONE || u[i].returned == END_ALREADY);
    }
    CHECK_INT(done, 1);
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM outbox WHERE event_type = 'Returned'"
             " AND (payload::json ->> 'id')::bigint = %lld", in.id);
    CHECK_INT(count(st, sql), 1);
}

static void backend_tests(struct event_base *base, db *d)
{
    test_last_cars(base, d);
    test_overlapping_periods(base, d);
    test_one_key_at_once(base, d);
    test_reconcilers_at_once(base, d);
    test_returns_at_once(base, d);
}
