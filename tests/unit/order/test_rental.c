/* test_rental.c: the life of a rental against a real (temporary) database.
 *
 * Reservation never oversells; approval writes the order and its Ordered
 * event once; decline and void give the cars back once; a restart turns
 * pending intakes into in-doubt ones; cancel releases the cars and
 * publishes OrderCancelled once; Shipped only moves an approved order;
 * fleet files replace the fleet while keeping rented cars out.
 *
 * On SQLite here; test_rental_pg.c runs the same tests on PostgreSQL
 * (compiled with ORDER_TEST_PG), and the races only that backend has. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "order.h"
#ifdef ORDER_TEST_PG
#include <event2/event.h>
#include <event2/thread.h>
#include "log.h"
#include "store_pg.h"
#endif
#include "testing.h"
#include "testing_store.h"

static char dir[64];

/* The day the tests take as today: the store takes days explicitly. */
#define TODAY 20800L   /* 2026-12-13 */

static long long available(store *st, const char *id)
{
    car c;
    return car_store_get(st, id, TODAY, TODAY + 1, &c) == 1 ? c.available : -1;
}

static rental_request request(const char *product, long long qty, const char *key)
{
    return (rental_request){.product_id = product, .qty = qty, .customer_id = "kim",
                            .idempotency_key = key, .request_id = "req-test",
                            .from_day = TODAY, .to_day = TODAY + 1};
}

static void test_demo_fleet(store *st)
{
    CHECK_INT(fleet_load(st, NULL), 0);
    CHECK_INT(car_store_count(st), 10);
    car c;
    CHECK_INT(car_store_get(st, "1001", TODAY, TODAY + 1, &c), 1);
    CHECK(c.total > 1);
    CHECK_INT(c.available, c.total);
    CHECK(c.daily_price >= 45000 && c.daily_price <= 150000);
    CHECK_INT(car_store_get(st, "1010", TODAY, TODAY + 1, &c), 1);
    CHECK_INT(car_store_get(st, "1011", TODAY, TODAY + 1, &c), 0);

    /* A second start keeps the fleet as it is. */
    CHECK_INT(booking_store_book(st, "1002", TODAY, TODAY + 1, 1), 1);
    CHECK_INT(fleet_load(st, NULL), 0);
    CHECK_INT(car_store_count(st), 10);
    CHECK_INT(booking_store_release(st, "1002", TODAY, TODAY + 1, 1), 0);
}

static void test_reserve_never_oversells(store *st)
{
    car c;
    CHECK_INT(car_store_get(st, "1007", TODAY, TODAY + 1, &c), 1);
    long long total = c.total;
    intake in;
    long long ids[64];
    int won = 0;
    for (int i = 0; i < total + 3; i++) {
        rental_request rq = request("1007", 1, NULL);
        reserve_outcome o = rental_reserve(st, &rq, &in, &c);
        if (o == RESERVE_OK && won < 64) {
            ids[won++] = in.id;
            CHECK_INT(in.state, INTAKE_PENDING);
            CHECK_INT(in.amount, c.daily_price);
        } else {
            CHECK_INT(o, RESERVE_NOT_ENOUGH);
            CHECK_INT(c.available, 0);
        }
    }
    CHECK_INT(won, total);
    CHECK_INT(available(st, "1007"), 0);
    for (int i = 0; i < won; i++)
        CHECK_INT(rental_decline(st, ids[i], "declined"), 1);
    CHECK_INT(available(st, "1007"), total);

    rental_request unknown = request("9999", 1, NULL);
    CHECK_INT(rental_reserve(st, &unknown, &in, &c), RESERVE_UNKNOWN_CAR);
    rental_request too_many = request("1001", 1000, NULL);
    CHECK_INT(rental_reserve(st, &too_many, &in, &c), RESERVE_NOT_ENOUGH);
    CHECK_INT(available(st, "1001"), c.total);
}

static void test_approve(store *st)
{
    intake in;
    car c;
    rental_request rq = request("1001", 2, "key-approve");
    CHECK_INT(rental_reserve(st, &rq, &in, &c), RESERVE_OK);
    CHECK_INT(in.amount, 2 * c.daily_price);
    CHECK_INT(available(st, "1001"), c.total - 2);

    long long events = count(st, "SELECT COUNT(*) FROM outbox WHERE event_type = 'Ordered'");
    order o;
    CHECK_INT(rental_approve(st, in.id, 77, &o), 1);
    CHECK_INT(o.id, in.id);
    CHECK_INT(o.payment_id, 77);
    CHECK_STR(o.status, "OrderApproved");
    CHECK_INT(o.amount, in.amount);
    CHECK_INT(count(st, "SELECT COUNT(*) FROM outbox WHERE event_type = 'Ordered'"), events + 1);

    /* A second settlement of the same intake changes nothing. */
    CHECK_INT(rental_approve(st, in.id, 78, &o), 0);
    CHECK_INT(rental_start_void(st, in.id), 0);
    CHECK_INT(rental_decline(st, in.id, "no"), 0);
    CHECK_INT(count(st, "SELECT COUNT(*) FROM orders"), 1);
    CHECK_INT(available(st, "1001"), c.total - 2);

    intake found;
    CHECK_INT(intake_store_find_by_key(st, "key-approve", &found), 1);
    CHECK_INT(found.state, INTAKE_APPROVED);
    CHECK_INT(found.payment_id, 77);
    CHECK_INT(order_store_get(st, in.id, &o), 1);
    CHECK_INT(order_store_count(st, "kim"), 1);
    CHECK_INT(order_store_count(st, "lee"), 0);
}

static void test_decline_and_void(store *st)
{
    intake in;
    car c;
    rental_request rq = request("1002", 1, NULL);
    CHECK_INT(rental_reserve(st, &rq, &in, &c), RESERVE_OK);
    long long before = available(st, "1002");
    CHECK_INT(rental_decline(st, in.id, "payment declined: card refused"), 1);
    CHECK_INT(available(st, "1002"), before + 1);
    CHECK_INT(rental_decline(st, in.id, "again"), 0);
    CHECK_INT(available(st, "1002"), before + 1);
    intake got;
    CHECK_INT(intake_store_get(st, in.id, &got), 1);
    CHECK_INT(got.state, INTAKE_DECLINED);
    CHECK_STR(got.message, "payment declined: card refused");

    rq = request("1002", 1, "key-void");
    CHECK_INT(rental_reserve(st, &rq, &in, &c), RESERVE_OK);
    before = available(st, "1002");
    CHECK_INT(rental_finish_void(st, in.id), 0);    /* not voiding yet */
    CHECK_INT(rental_start_void(st, in.id), 1);
    CHECK_INT(available(st, "1002"), before);        /* still held until payment agrees */
    CHECK_INT(rental_approve(st, in.id, 5, &(order){0}), 0);
    CHECK_INT(rental_finish_void(st, in.id), 1);
    CHECK_INT(available(st, "1002"), before + 1);
    CHECK_INT(rental_finish_void(st, in.id), 0);
    CHECK_INT(available(st, "1002"), before + 1);

    /* The key of a voided attempt goes to the next attempt. */
    intake next;
    CHECK_INT(rental_reserve(st, &rq, &next, &c), RESERVE_OK);
    CHECK(next.id != in.id);
    CHECK_INT(intake_store_find_by_key(st, "key-void", &got), 1);
    CHECK_INT(got.id, next.id);
    CHECK_INT(rental_decline(st, next.id, "x"), 1);
}

static void test_in_doubt(store *st)
{
    intake a, b;
    car c;
    rental_request rq = request("1003", 1, NULL);
    CHECK_INT(rental_reserve(st, &rq, &a, &c), RESERVE_OK);
    CHECK_INT(rental_reserve(st, &rq, &b, &c), RESERVE_OK);
    CHECK_INT(rental_mark_in_doubt(st), 2);
    CHECK_INT(rental_mark_in_doubt(st), 0);

    intake got;
    CHECK_INT(intake_store_get(st, a.id, &got), 1);
    CHECK_INT(got.state, INTAKE_IN_DOUBT);
    /* in doubt -> approved (payment found) or voiding (not found) */
    order o;
    CHECK_INT(rental_approve(st, a.id, 99, &o), 1);
    CHECK_INT(rental_start_void(st, b.id), 1);
    CHECK_INT(intake_store_get(st, b.id, &got), 1);
    CHECK_INT(got.state, INTAKE_VOIDING);
}

static void collect(const intake *in, void *arg)
{
    int *n = arg;
    (*n)++;
    CHECK(in->state == INTAKE_VOIDING || in->state == INTAKE_IN_DOUBT);
}

static void test_unsettled(store *st)
{
    int n = 0;
    CHECK_INT(intake_store_claim(st, "me", 1000, 32, collect, &n), 1);   /* b of test_in_doubt */
    CHECK_INT(n, 1);
}

static void only_id(const intake *in, void *arg)
{
    long long *id = arg;
    CHECK_INT(*id, 0);
    *id = in->id;
    CHECK_INT(in->state, INTAKE_IN_DOUBT);
    CHECK_STR(in->owner, "reconciler");
}

/* A pending intake is taken only once its lease has run out; a renewed
 * one stays its owner's; a taken one is the taker's. */
static void test_leases(store *st)
{
    intake live, dead;
    car c;
    long long before = available(st, "1003");
    rental_request rq = request("1003", 1, NULL);
    rq.owner = "live";
    rq.lease_ms = 60000;
    CHECK_INT(rental_reserve(st, &rq, &live, &c), RESERVE_OK);
    rq.owner = "dead";
    rq.lease_ms = -1000;    /* ran out a second ago */
    CHECK_INT(rental_reserve(st, &rq, &dead, &c), RESERVE_OK);
    CHECK_STR(live.owner, "live");

    long long taken = 0;
    CHECK_INT(intake_store_claim(st, "reconciler", 60000, 32, only_id, &taken), 1);
    CHECK_INT(taken, dead.id);
    taken = 0;
    CHECK_INT(intake_store_claim(st, "another", 60000, 32, only_id, &taken), 0);
    CHECK_INT(intake_store_renew(st, "live", &live.id, 1, 60000), 1);
    CHECK_INT(intake_store_renew(st, "dead", &dead.id, 1, 60000), 0);   /* not its own now */

    CHECK_INT(rental_decline(st, live.id, "x"), 1);
    CHECK_INT(rental_start_void(st, dead.id), 1);
    CHECK_INT(rental_finish_void(st, dead.id), 1);
    CHECK_INT(available(st, "1003"), before);
}

static void test_cancel(store *st)
{
    intake in;
    car c;
    rental_request rq = request("1004", 3, NULL);
    CHECK_INT(rental_reserve(st, &rq, &in, &c), RESERVE_OK);
    order o;
    CHECK_INT(rental_approve(st, in.id, 101, &o), 1);
    long long before = available(st, "1004");
    long long events = count(st, "SELECT COUNT(*) FROM outbox WHERE event_type = 'OrderCancelled'");

    CHECK_INT(order_cancel(st, in.id, "req-c", &o), END_DONE);
    CHECK_STR(o.status, "OrderCancelled");
    CHECK_INT(available(st, "1004"), before + 3);
    CHECK_INT(order_cancel(st, in.id, "req-c2", &o), END_ALREADY);
    CHECK_INT(available(st, "1004"), before + 3);
    CHECK_INT(count(st, "SELECT COUNT(*) FROM outbox WHERE event_type = 'OrderCancelled'"),
              events + 1);
    CHECK_INT(order_cancel(st, 424242, NULL, &o), END_NOT_FOUND);

    /* Shipped only from OrderApproved. */
    CHECK_INT(order_mark_shipped(st, in.id), 0);
    CHECK_INT(order_store_get(st, in.id, &o), 1);
    CHECK_STR(o.status, "OrderCancelled");

    CHECK_INT(rental_reserve(st, &rq, &in, &c), RESERVE_OK);
    CHECK_INT(rental_approve(st, in.id, 102, &o), 1);
    CHECK_INT(order_mark_shipped(st, in.id), 1);
    CHECK_INT(order_mark_shipped(st, in.id), 0);
    CHECK_INT(order_store_get(st, in.id, &o), 1);
    CHECK_STR(o.status, "Shipped");
    /* A shipped rental can still be cancelled; its cars come back. */
    before = available(st, "1004");
    CHECK_INT(order_cancel(st, in.id, NULL, &o), END_DONE);
    CHECK_INT(available(st, "1004"), before + 3);
}

static long long free_on(store *st, const char *id, long from, long to)
{
    car c;
    return car_store_get(st, id, from, to, &c) == 1 ? c.available : -1;
}

static reserve_outcome rent(store *st, const char *id, long long qty, long from, long to,
                            intake *in)
{
    car c;
    rental_request rq = request(id, qty, NULL);
    rq.from_day = from;
    rq.to_day = to;
    return rental_reserve(st, &rq, in, &c);
}

/* The booking rule: on every day of a period, booked + qty <= total. */
static void test_periods(store *st)
{
    intake a, b, x;
    long d = TODAY + 10;
    /* 1006 has 3 cars. Two for [d, d+5), then one more fits every day. */
    CHECK_INT(rent(st, "1006", 2, d, d + 5, &a), RESERVE_OK);
    CHECK_INT(a.amount, 2 * 5 * 95000);
    CHECK_INT(free_on(st, "1006", d, d + 5), 1);
    CHECK_INT(free_on(st, "1006", d - 3, d), 3);          /* before: untouched */
    CHECK_INT(free_on(st, "1006", d + 5, d + 9), 3);      /* adjacent after: untouched */
    CHECK_INT(free_on(st, "1006", d + 4, d + 6), 1);      /* overlap of one day is enough */
    CHECK_INT(rent(st, "1006", 1, d + 2, d + 8, &b), RESERVE_OK);
    /* Days d+2..d+4 are full now: an overlapping rental is refused on all
     * its days, and the first full day is named. */
    CHECK_INT(rent(st, "1006", 1, d - 2, d + 3, &x), RESERVE_NOT_ENOUGH);
    long day;
    long long free_cars;
    CHECK_INT(booking_store_first_full(st, "1006", d - 2, d + 3, 1, &day, &free_cars), 1);
    CHECK_INT(day, d + 2);
    CHECK_INT(free_cars, 0);
    CHECK_INT(free_on(st, "1006", d - 2, d + 2), 3 - 2);  /* the refusal changed nothing */
    CHECK_INT(free_on(st, "1006", d - 2, d), 3);
    /* Adjacent periods do not compete: [d-2, d+2) ends where b starts. */
    CHECK_INT(rent(st, "1006", 1, d - 2, d + 2, &x), RESERVE_OK);
    CHECK_INT(free_on(st, "1006", d, d + 2), 0);
    CHECK_INT(free_on(st, "1006", d + 5, d + 8), 2);
    /* More than the total is full on the first day. */
    CHECK_INT(rent(st, "1006", 4, d + 20, d + 22, &x), RESERVE_NOT_ENOUGH);
    CHECK_INT(booking_store_first_full(st, "1006", d + 20, d + 22, 4, &day, &free_cars), 1);
    CHECK_INT(day, d + 20);
    CHECK_INT(booking_store_first_full(st, "1006", d + 20, d + 22, 1, &day, &free_cars), 0);

    /* A declined rental gives back every day of its period. */
    CHECK_INT(rental_decline(st, b.id, "declined"), 1);
    CHECK_INT(free_on(st, "1006", d + 2, d + 8), 1);
    CHECK_INT(free_on(st, "1006", d + 5, d + 8), 3);

    /* 30 days: one statement books them all, 31 is refused by the store. */
    CHECK_INT(rent(st, "1008", 4, TODAY, TODAY + 30, &x), RESERVE_OK);
    CHECK_INT(free_on(st, "1008", TODAY, TODAY + 1), 0);
    CHECK_INT(free_on(st, "1008", TODAY + 29, TODAY + 30), 0);
    CHECK_INT(free_on(st, "1008", TODAY + 30, TODAY + 31), 4);
    CHECK_INT(count(st, "SELECT COUNT(*) FROM bookings WHERE product_id = '1008'"), 30);
    CHECK_INT(booking_store_book(st, "1009", TODAY, TODAY + 31, 1), -1);
    CHECK_INT(rental_decline(st, x.id, "declined"), 1);
    CHECK_INT(free_on(st, "1008", TODAY, TODAY + 30), 4);
    CHECK_INT(rental_decline(st, a.id, "declined"), 1);
}

static void test_returns(store *st)
{
    intake in;
    order o;
    long d = TODAY;
    /* 1009 (3 cars): 2 for [d, d+4), returned on day d+1: free from d+2. */
    CHECK_INT(rent(st, "1009", 2, d, d + 4, &in), RESERVE_OK);
    CHECK_INT(rental_approve(st, in.id, 201, &o), 1);
    CHECK_INT(o.from_day, d);
    CHECK_INT(o.to_day, d + 4);
    long long events = count(st, "SELECT COUNT(*) FROM outbox WHERE event_type = 'Returned'");

    /* Earlier tests left one-day rentals due on d+1: `before` of them. */
    long long ids[64];
    int before = order_store_due(st, d + 3, ids, 64);
    CHECK(before >= 0);
    CHECK_INT(order_store_due(st, d + 4, ids, 64), before + 1);   /* due on d+4 */
    CHECK_INT(ids[before], in.id);

    CHECK_INT(order_return(st, in.id, d + 1, 1796000000, "req-r", &o), END_DONE);
    CHECK_STR(o.status, "Returned");
    CHECK_STR(o.returned_at, "2026-11-30T00:53:20Z");
    CHECK_INT(free_on(st, "1009", d + 1, d + 2), 1);      /* still out today */
    CHECK_INT(free_on(st, "1009", d + 2, d + 4), 3);
    CHECK_INT(order_return(st, in.id, d + 1, 1796000100, "req-r2", &o), END_ALREADY);
    CHECK_STR(o.returned_at, "2026-11-30T00:53:20Z");
    CHECK_INT(count(st, "SELECT COUNT(*) FROM outbox WHERE event_type = 'Returned'"), events + 1);
    CHECK_INT(order_store_due(st, d + 10, ids, 64), before);   /* no longer active */
    CHECK_INT(order_cancel(st, in.id, NULL, &o), END_OTHER_WAY);
    CHECK_INT(order_store_get(st, in.id, &o), 1);
    CHECK_STR(o.status, "Returned");
    CHECK_INT(order_mark_shipped(st, in.id), 0);
    CHECK_INT(order_return(st, 424242, d, 1796000000, NULL, &o), END_NOT_FOUND);

    /* A cancelled rental cannot be returned; a shipped one can. */
    CHECK_INT(rent(st, "1009", 1, d, d + 2, &in), RESERVE_OK);
    CHECK_INT(rental_approve(st, in.id, 202, &o), 1);
    CHECK_INT(order_cancel(st, in.id, NULL, &o), END_DONE);
    CHECK_INT(order_return(st, in.id, d, 1796000000, NULL, &o), END_OTHER_WAY);
    CHECK_INT(rent(st, "1009", 1, d + 1, d + 3, &in), RESERVE_OK);
    CHECK_INT(rental_approve(st, in.id, 203, &o), 1);
    CHECK_INT(order_mark_shipped(st, in.id), 1);
    CHECK_INT(free_on(st, "1009", d + 1, d + 2), 0);
    /* Returned before its period started: every day comes back. */
    CHECK_INT(order_return(st, in.id, d - 1, 1796000000, NULL, &o), END_DONE);
    CHECK_INT(free_on(st, "1009", d + 1, d + 2), 1);      /* the first rental's day */
    CHECK_INT(free_on(st, "1009", d + 2, d + 3), 3);
    CHECK_INT(count(st, "SELECT COUNT(*) FROM outbox WHERE event_type = 'Returned'"), events + 2);

    /* Old days' rows can go: availability from today on is unchanged, and
     * a release over deleted days has nothing to do. */
    long long later = free_on(st, "1009", d + 1, d + 4);
    CHECK(count(st, "SELECT COUNT(*) FROM bookings WHERE day < 20801") > 0);
    CHECK(booking_store_forget_before(st, d + 1) > 0);
    CHECK_INT(count(st, "SELECT COUNT(*) FROM bookings WHERE day < 20801"), 0);
    CHECK_INT(free_on(st, "1009", d + 1, d + 4), later);
    CHECK_INT(booking_store_release(st, "1009", d - 5, d + 1, 1), 0);
    CHECK_INT(free_on(st, "1009", d + 1, d + 4), later);
}

static void check_event(const char *type, const char *payload)
{
    json_t *ev = json_loads(payload, 0, NULL);
    CHECK(ev != NULL);
    CHECK(json_is_integer(json_object_get(ev, "id")));
    CHECK(json_is_string(json_object_get(ev, "productId")));
    CHECK(json_is_integer(json_object_get(ev, "qty")));
    CHECK(json_is_string(json_object_get(ev, "customerId")));
    CHECK(json_is_string(json_object_get(ev, "eventId")));
    CHECK(json_is_string(json_object_get(ev, "timestamp")));
    if (strcmp(type, "Ordered") == 0) {
        CHECK(json_is_integer(json_object_get(ev, "amount")));
        CHECK_STR(json_string_value(json_object_get(ev, "status")), "OrderApproved");
        CHECK(json_is_string(json_object_get(ev, "from")));
        CHECK(json_is_string(json_object_get(ev, "to")));
        CHECK(json_integer_value(json_object_get(ev, "days")) >= 1);
        CHECK_INT(json_object_size(ev), 12);   /* 9 fields + envelope */
    } else if (strcmp(type, "Returned") == 0) {
        CHECK(json_is_string(json_object_get(ev, "from")));
        CHECK(json_is_string(json_object_get(ev, "to")));
        CHECK(json_is_string(json_object_get(ev, "returnedAt")));
        CHECK_INT(json_object_size(ev), 10);   /* 7 fields + envelope */
    } else {
        CHECK_STR(type, "OrderCancelled");
        CHECK_INT(json_object_size(ev), 7);   /* 4 fields + envelope */
    }
    json_decref(ev);
}

static void test_events_payloads(store *st)
{
    int n = 0;
#ifdef ORDER_TEST_PG
    PGresult *r = store_pg_query(st, "SELECT event_type, payload FROM outbox ORDER BY seq", 0,
                                 NULL, "outbox");
    CHECK(r != NULL);
    for (int i = 0; r && i < PQntuples(r); i++, n++)
        check_event(PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
    PQclear(r);
#else
    sqlite3_stmt *s;
    CHECK_INT(sqlite3_prepare_v2(store_db(st), "SELECT event_type, payload FROM outbox ORDER BY seq",
                                 -1, &s, NULL), SQLITE_OK);
    for (; sqlite3_step(s) == SQLITE_ROW; n++)
        check_event((const char *)sqlite3_column_text(s, 0),
                    (const char *)sqlite3_column_text(s, 1));
    sqlite3_finalize(s);
#endif
    CHECK(n > 0);
}

static void test_fleet_file(store *st)
{
    /* 1005 has 2 cars out; the file shrinks it to 1 and drops 1006..1010. */
    intake in;
    car c;
    rental_request rq = request("1005", 2, NULL);
    CHECK_INT(rental_reserve(st, &rq, &in, &c), RESERVE_OK);

    char path[300];
    snprintf(path, sizeof path, "%s/fleet.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"cars\": [{\"id\": \"1005\", \"name\": \"Hyundai Tucson\", \"location\": \"Jamsil\","
          " \"dailyPrice\": 80000, \"total\": 1},"
          " {\"id\": \"5001\", \"name\": \"Kia Ray\", \"location\": \"Mapo\","
          " \"dailyPrice\": 45000, \"total\": 100000}]}", f);
    fclose(f);
    CHECK_INT(fleet_load(st, path), 0);
    CHECK_INT(car_store_count(st), 2);
    CHECK_INT(car_store_get(st, "1005", TODAY, TODAY + 1, &c), 1);
    CHECK_INT(c.total, 1);
    CHECK_INT(c.available, 0);
    CHECK_INT(car_store_get(st, "5001", TODAY, TODAY + 1, &c), 1);
    CHECK_INT(c.available, 100000);
    CHECK_INT(car_store_get(st, "1001", TODAY, TODAY + 1, &c), 0);

    /* Giving the 2 cars back never exceeds the new total. */
    CHECK_INT(rental_decline(st, in.id, "x"), 1);
    CHECK_INT(available(st, "1005"), 1);

    /* A broken file changes nothing. */
    f = fopen(path, "w");
    fputs("{\"cars\": [{\"id\": \"6001\"}]}", f);
    fclose(f);
    CHECK_INT(fleet_load(st, path), -1);
    CHECK_INT(car_store_count(st), 2);
}

#ifdef ORDER_TEST_PG
static void backend_tests(struct event_base *base, db *d);   /* test_rental_pg.c */
#endif

static void run_tests(store *st)
{
    test_demo_fleet(st);
    test_reserve_never_oversells(st);
    test_approve(st);
    test_decline_and_void(st);
    test_in_doubt(st);
    test_unsettled(st);
    test_leases(st);
    test_cancel(st);
    test_periods(st);
    test_returns(st);
    test_events_payloads(st);
    test_fleet_file(st);
}

int main(void)
{
    if (!temp_dir_make(dir, sizeof dir, "order"))
        return 1;
#ifdef ORDER_TEST_PG
    const char *url = getenv("TEST_DATABASE_URL");
    if (!url) {
        fprintf(stderr, "TEST_DATABASE_URL is not set: run under tests/pg_run.py\n");
        return 1;
    }
    log_init("test_rental_pg");
    evthread_use_pthreads();
    struct event_base *base = event_base_new();
    setenv("ORDER_DATABASE_URL", url, 1);
    db *d = db_open(base, "order", &order_schema);
    CHECK(d != NULL && db_is_pg(d));
    if (d) {
        run_tests(db_store(d));
        backend_tests(base, d);
        db_close(d);
    }
    event_base_free(base);
    temp_dir_remove(dir);
    return test_done("order/test_rental_pg");
#else
    char path[300];
    snprintf(path, sizeof path, "%s/order.db", dir);
    store *st = order_store_open_path(path);
    CHECK(st != NULL);
    if (st) {
        run_tests(st);
        store_close(st);
    }
    temp_dir_remove(dir);
    return test_done("order/test_rental");
#endif
}
