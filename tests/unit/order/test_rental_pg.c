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
 *    the others find it (and are answered from it by rental.c).
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
    db_status status;
    int *finished;
    struct event_base *base;
};

static void racer_work(store *st, void *arg)
{
    struct racer *a = arg;
    a->outcome = rental_reserve(st, &a->rq, &a->in, &a->c);
}

static void racer_done(void *arg, db_status status)
{
    struct racer *a = arg;
    a->status = status;
    if (++*a->finished == RACERS)
        event_base_loopbreak(a->base);
}

/* Runs the RACERS reservations at once on the database threads. */
static void race(struct event_base *base, db *d, struct racer *a)
{
    int finished = 0;
    for (int i = 0; i < RACERS; i++) {
        a[i].finished = &finished;
        a[i].base = base;
        CHECK(db_run(d, racer_work, racer_done, &a[i]));
    }
    event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY);
    for (int i = 0; i < RACERS; i++)
        CHECK_INT(a[i].status, DB_DONE);
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
    race(base, d, a);
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
    race(base, d, a);
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
    race(base, d, a);
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

static void backend_tests(struct event_base *base, db *d)
{
    test_last_cars(base, d);
    test_overlapping_periods(base, d);
    test_one_key_at_once(base, d);
}
