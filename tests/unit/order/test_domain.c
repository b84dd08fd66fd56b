/* test_domain.c: order's pure rules: what a payment answer means, the
 * amount, idempotency keys, intake state names, and reading a fleet file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "order.h"
#include "testing.h"

static void test_payment_verdict(void)
{
    /* What order asked payment for: order 12, 2 cars of model 1001, 90,000 KRW. */
    intake asked = {.id = 12, .product_id = "1001", .qty = 2, .amount = 90000};
    long long id = 0;
    CHECK_INT(rental_payment_verdict(201, "{\"id\": 7, \"status\": \"Paid\", \"orderId\": 12, "
              "\"productId\": \"1001\", \"qty\": 2, \"amount\": 90000}", &asked, &id),
              PAYMENT_VERDICT_PAID);
    CHECK_INT(id, 7);
    id = 0;
    CHECK_INT(rental_payment_verdict(200, "{\"id\": 3, \"status\": \"Paid\", \"orderId\": 12, "
              "\"productId\": \"1001\", \"qty\": 2, \"amount\": 90000}", &asked, &id),
              PAYMENT_VERDICT_PAID);
    CHECK_INT(id, 3);
    CHECK_INT(rental_payment_verdict(402, "{\"status\": 402}", &asked, &id), PAYMENT_VERDICT_DECLINED);
    CHECK_INT(rental_payment_verdict(402, "", &asked, &id), PAYMENT_VERDICT_DECLINED);

    /* A Paid answer for anything but what was asked is never accepted. */
    CHECK_INT(rental_payment_verdict(200, "{\"id\": 3, \"status\": \"Paid\", \"orderId\": 13, "
              "\"productId\": \"1001\", \"qty\": 2, \"amount\": 90000}", &asked, &id),
              PAYMENT_VERDICT_MISMATCH);
    CHECK_INT(rental_payment_verdict(200, "{\"id\": 3, \"status\": \"Paid\", \"orderId\": 12, "
              "\"productId\": \"1001\", \"qty\": 2, \"amount\": 1}", &asked, &id),
              PAYMENT_VERDICT_MISMATCH);
    CHECK_INT(rental_payment_verdict(200, "{\"id\": 3, \"status\": \"Paid\", \"orderId\": 12, "
              "\"productId\": \"1001\", \"qty\": 1, \"amount\": 90000}", &asked, &id),
              PAYMENT_VERDICT_MISMATCH);
    CHECK_INT(rental_payment_verdict(200, "{\"id\": 3, \"status\": \"Paid\", \"orderId\": 12, "
              "\"productId\": \"1002\", \"qty\": 2, \"amount\": 90000}", &asked, &id),
              PAYMENT_VERDICT_MISMATCH);
    CHECK_INT(rental_payment_verdict(201, "{\"id\": 12, \"status\": \"Paid\"}", &asked, &id),
              PAYMENT_VERDICT_MISMATCH);

    /* A success status without a believable body is not a payment. */
    CHECK_INT(rental_payment_verdict(201, "<html>ok</html>", &asked, &id), PAYMENT_VERDICT_UNKNOWN);
    CHECK_INT(rental_payment_verdict(201, "{\"id\": 5, \"status\": \"PaymentCancelled\"}", &asked, &id),
              PAYMENT_VERDICT_UNKNOWN);
    CHECK_INT(rental_payment_verdict(201, "{\"id\": \"5\", \"status\": \"Paid\"}", &asked, &id),
              PAYMENT_VERDICT_UNKNOWN);
    CHECK_INT(rental_payment_verdict(201, "{\"status\": \"Paid\"}", &asked, &id), PAYMENT_VERDICT_UNKNOWN);
    CHECK_INT(rental_payment_verdict(200, NULL, &asked, &id), PAYMENT_VERDICT_UNKNOWN);

    /* 409: payment refuses this order id; nothing of ours was charged. */
    CHECK_INT(rental_payment_verdict(409, "{}", &asked, &id), PAYMENT_VERDICT_REFUSED);
    /* Everything else is unknown: maybe charged, maybe not. */
    CHECK_INT(rental_payment_verdict(500, "{}", &asked, &id), PAYMENT_VERDICT_UNKNOWN);
    CHECK_INT(rental_payment_verdict(503, "{}", &asked, &id), PAYMENT_VERDICT_UNKNOWN);
    CHECK_INT(rental_payment_verdict(400, "{}", &asked, &id), PAYMENT_VERDICT_UNKNOWN);
    CHECK_INT(rental_payment_verdict(0, NULL, &asked, &id), PAYMENT_VERDICT_UNKNOWN);
}

static void test_amount(void)
{
    CHECK_INT(rental_amount(1, 1, 45000), 45000);
    CHECK_INT(rental_amount(3, 1, 150000), 450000);
    CHECK_INT(rental_amount(2, 3, 45000), 270000);      /* qty x days x dailyPrice */
    CHECK_INT(rental_amount(100, 30, 100000000LL), 300000000000LL);   /* the largest */
    CHECK_INT(rental_amount(0, 1, 45000), 0);
    CHECK_INT(rental_amount(4000000000LL, 1, 4000000000000LL), -1);   /* overflow */
    CHECK_INT(rental_amount(4000000LL, 4000000LL, 4000000000000LL), -1);
    CHECK_INT(rental_amount(-1, 1, 45000), -1);
    CHECK_INT(rental_amount(1, -1, 45000), -1);
}

static void test_keys(void)
{
    char long_key[200];
    memset(long_key, 'k', sizeof long_key - 1);
    long_key[sizeof long_key - 1] = '\0';
    CHECK(rental_key_valid("6f1c2a4e-rent-1"));
    CHECK(rental_key_valid("a b"));
    CHECK(!rental_key_valid(""));
    CHECK(!rental_key_valid(NULL));
    CHECK(!rental_key_valid(long_key));
    CHECK(!rental_key_valid("tab\there"));
    CHECK(!rental_key_valid("caf\xc3\xa9"));

    intake in = {.qty = 2};
    strcpy(in.product_id, "1001");
    strcpy(in.customer_id, "kim");
    rental_request same = {.product_id = "1001", .qty = 2, .customer_id = "kim"};
    rental_request other_qty = {.product_id = "1001", .qty = 1, .customer_id = "kim"};
    rental_request other_car = {.product_id = "1002", .qty = 2, .customer_id = "kim"};
    rental_request other_customer = {.product_id = "1001", .qty = 2, .customer_id = "lee"};
    CHECK(rental_same_request(&in, &same));
    CHECK(!rental_same_request(&in, &other_qty));
    CHECK(!rental_same_request(&in, &other_car));
    CHECK(!rental_same_request(&in, &other_customer));
}

static void test_state_names(void)
{
    intake_state s;
    const intake_state all[] = {INTAKE_PENDING, INTAKE_APPROVED, INTAKE_DECLINED, INTAKE_VOIDING,
                                INTAKE_VOIDED, INTAKE_IN_DOUBT};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        CHECK(intake_state_parse(intake_state_name(all[i]), &s));
        CHECK_INT(s, all[i]);
    }
    CHECK_STR(intake_state_name(INTAKE_IN_DOUBT), "in_doubt");
    CHECK(!intake_state_parse("paid", &s));
}

static car *parse(const char *text, size_t *n, char *err, size_t errlen)
{
    json_t *doc = json_loads(text, 0, NULL);
    CHECK(doc != NULL);
    car *cars = fleet_parse(doc, n, err, errlen);
    json_decref(doc);
    return cars;
}

static void test_fleet_parse(void)
{
    char err[256];
    size_t n = 0;
    car *cars = parse("{\"cars\": [{\"id\": \"2001\", \"name\": \"Kia Niro\", \"location\": "
                      "\"Mapo\", \"dailyPrice\": 50000, \"total\": 7},"
                      "{\"id\": 2002, \"name\": \"Kia Ray\", \"location\": \"Sinchon\", "
                      "\"dailyPrice\": \"45000\", \"total\": \"1000000\"}]}", &n, err, sizeof err);
    CHECK(cars != NULL);
    if (cars) {
        CHECK_INT(n, 2);
        CHECK_STR(cars[0].id, "2001");
        CHECK_STR(cars[0].name, "Kia Niro");
        CHECK_INT(cars[0].daily_price, 50000);
        CHECK_INT(cars[0].total, 7);
        CHECK_INT(cars[0].available, 7);
        CHECK_STR(cars[1].id, "2002");
        CHECK_INT(cars[1].total, 1000000);
        free(cars);
    }

    cars = parse("[{\"id\": \"3001\", \"name\": \"A\", \"location\": \"B\", \"dailyPrice\": 1, "
                 "\"total\": 0}]", &n, err, sizeof err);
    CHECK(cars != NULL);
    free(cars);

    CHECK(parse("{\"cars\": []}", &n, err, sizeof err) == NULL);
    CHECK(strstr(err, "no cars") != NULL);
    CHECK(parse("{\"fleet\": 1}", &n, err, sizeof err) == NULL);
    CHECK(parse("[{\"id\": \"3001\", \"name\": \"A\", \"location\": \"B\", \"dailyPrice\": 0, "
                "\"total\": 1}]", &n, err, sizeof err) == NULL);
    CHECK(strstr(err, "dailyPrice") != NULL && strstr(err, "3001") != NULL);
    CHECK(parse("[{\"id\": \"3001\", \"name\": \"A\", \"location\": \"B\", \"dailyPrice\": 5, "
                "\"total\": -1}]", &n, err, sizeof err) == NULL);
    CHECK(strstr(err, "total") != NULL);
    CHECK(parse("[{\"name\": \"A\", \"location\": \"B\", \"dailyPrice\": 5, \"total\": 1}]", &n,
                err, sizeof err) == NULL);
    CHECK(strstr(err, "id is required") != NULL);
    CHECK(parse("[1]", &n, err, sizeof err) == NULL);
    CHECK(strstr(err, "car #1") != NULL);
}

int main(void)
{
    test_payment_verdict();
    test_amount();
    test_keys();
    test_state_names();
    test_fleet_parse();
    return test_done("order/test_domain");
}
