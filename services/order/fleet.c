/* fleet.c: the cars order rents out.
 *
 * On first start (an empty fleet) the demo fleet below is created: ten
 * models, ids "1001".."1010", a few cars each, in Seoul and around, with
 * daily prices in KRW.
 *
 * FLEET_FILE replaces it, at every start, with the fleet of a JSON file:
 *
 *   {"cars": [{"id": "1001", "name": "Hyundai Avante", "location": "Gangnam Station, Seoul",
 *              "dailyPrice": 45000, "total": 5}, ...]}
 *
 * (a bare array of the same objects is accepted too; numbers may be
 * numeric strings). Models in the file are created or updated; models not
 * in the file leave the fleet. Cars currently rented stay rented: a
 * model's `available` becomes its new total minus the cars that are out
 * (never below 0). A malformed file stops the process at start with a
 * message naming the car and the field. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "order.h"
#include "rep.h"

static const car demo_fleet[] = {
    {"1001", "Hyundai Avante", "Gangnam Station, Gangnam-gu, Seoul", 45000, 6, 6},
    {"1002", "Kia K5", "Hongik Univ. Station, Mapo-gu, Seoul", 60000, 5, 5},
    {"1003", "Hyundai Sonata", "Yeouido Station, Yeongdeungpo-gu, Seoul", 65000, 5, 5},
    {"1004", "Kia Ray", "Sinchon Station, Seodaemun-gu, Seoul", 45000, 4, 4},
    {"1005", "Hyundai Tucson", "Jamsil Station, Songpa-gu, Seoul", 80000, 4, 4},
    {"1006", "Kia Sorento", "Pangyo Techno Valley, Seongnam", 95000, 3, 3},
    {"1007", "Genesis G80", "Seoul Station, Jung-gu, Seoul", 150000, 2, 2},
    {"1008", "Hyundai Ioniq 5", "Magok Naru Station, Gangseo-gu, Seoul", 90000, 4, 4},
    {"1009", "Kia Carnival", "Incheon Airport Terminal 1, Incheon", 120000, 3, 3},
    {"1010", "Kia EV6", "Suwon Station, Suwon", 85000, 3, 3},
};

static int read_car(const json_t *obj, size_t index, car *c, char *err, size_t errlen)
{
    char why[160], buf[ORDER_CAR_TEXT_MAX + 1];
    const char *s;

    memset(c, 0, sizeof *c);
    if (!json_is_object(obj)) {
        snprintf(err, errlen, "car #%zu is not a JSON object", index + 1);
        return -1;
    }
    if (rep_str(obj, "id", true, ORDER_PRODUCT_MAX, &s, buf, sizeof buf, why, sizeof why) < 0)
        goto bad;
    snprintf(c->id, sizeof c->id, "%s", s);
    if (rep_str(obj, "name", true, ORDER_CAR_TEXT_MAX, &s, buf, sizeof buf, why, sizeof why) < 0)
        goto bad;
    snprintf(c->name, sizeof c->name, "%s", s);
    if (rep_str(obj, "location", true, ORDER_CAR_TEXT_MAX, &s, buf, sizeof buf, why,
                sizeof why) < 0)
        goto bad;
    snprintf(c->location, sizeof c->location, "%s", s);
    if (rep_int(obj, "dailyPrice", true, 1, ORDER_MAX_DAILY_PRICE, &c->daily_price, why,
                sizeof why) < 0
        || rep_int(obj, "total", true, 0, ORDER_MAX_FLEET_TOTAL, &c->total, why, sizeof why) < 0)
        goto bad;
    c->available = c->total;
    return 0;
bad:
    snprintf(err, errlen, "car #%zu%s%s: %s", index + 1, c->id[0] ? " " : "", c->id, why);
    return -1;
}

car *fleet_parse(const json_t *doc, size_t *count, char *err, size_t errlen)
{
    const json_t *list = json_is_array(doc) ? doc : json_object_get(doc, "cars");
    if (!json_is_array(list)) {
        snprintf(err, errlen, "expected {\"cars\": [...]} or an array of cars");
        return NULL;
    }
    size_t n = json_array_size(list);
    if (n == 0) {
        snprintf(err, errlen, "the fleet has no cars");
        return NULL;
    }
    car *cars = calloc(n, sizeof *cars);
    if (!cars) {
        snprintf(err, errlen, "out of memory for %zu cars", n);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if (read_car(json_array_get(list, i), i, &cars[i], err, errlen) != 0) {
            free(cars);
            return NULL;
        }
    }
    *count = n;
    return cars;
}

static int replace_fleet(store *st, const car *cars, size_t n)
{
    if (store_begin(st) != SQLITE_OK)
        return -1;
    int rc = car_store_replace_begin(st);
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = car_store_replace_put(st, &cars[i]);
    if (rc == 0)
        rc = car_store_replace_end(st);
    if (rc == 0 && store_commit(st) == SQLITE_OK)
        return 0;
    store_rollback(st);
    return -1;
}

static int load_file(store *st, const char *path)
{
    json_error_t jerr;
    json_t *doc = json_load_file(path, 0, &jerr);
    if (!doc) {
        log_error("msg=\"FLEET_FILE is not valid JSON\" file=\"%s\" line=%d error=\"%s\"", path,
                  jerr.line, jerr.text);
        return -1;
    }
    char err[256];
    size_t n = 0;
    car *cars = fleet_parse(doc, &n, err, sizeof err);
    json_decref(doc);
    if (!cars) {
        char q[300];
        log_error("msg=\"FLEET_FILE is not a fleet\" file=\"%s\" error=%s", path,
                  log_quote(q, sizeof q, err));
        return -1;
    }
    int rc = replace_fleet(st, cars, n);
    free(cars);
    if (rc == 0)
        log_info("msg=\"fleet loaded from FLEET_FILE\" file=\"%s\" models=%zu", path, n);
    else
        log_error("msg=\"fleet could not be stored\" file=\"%s\"", path);
    return rc;
}

static int create_demo_fleet(store *st)
{
    long long existing = car_store_count(st);
    if (existing < 0)
        return -1;
    if (existing > 0)
        return 0;   /* created on a previous start: keep what has been rented */
    if (store_begin(st) != SQLITE_OK)
        return -1;
    for (size_t i = 0; i < sizeof demo_fleet / sizeof demo_fleet[0]; i++) {
        if (car_store_insert(st, &demo_fleet[i]) != 0) {
            store_rollback(st);
            return -1;
        }
    }
    if (store_commit(st) != SQLITE_OK) {
        store_rollback(st);
        return -1;
    }
    log_info("msg=\"demo fleet created\" models=%zu", sizeof demo_fleet / sizeof demo_fleet[0]);
    return 0;
}

int fleet_load(store *st, const char *fleet_file)
{
    return fleet_file && *fleet_file ? load_file(st, fleet_file) : create_demo_fleet(st);
}
