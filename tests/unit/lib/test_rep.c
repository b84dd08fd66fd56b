/* test_rep.c: every input rule of rep_int / rep_str / rep_page_params /
 * rep_path_id, and the HAL item, collection and error shapes. (The
 * request-level helpers are exercised through the services' HTTP tests.) */
#include <limits.h>
#include <string.h>

#include "rep.h"
#include "testing.h"

static json_t *parse(const char *text)
{
    json_error_t e;
    /* NUL allowed, to prove the rules hold even for bodies parsed that way. */
    json_t *j = json_loads(text, JSON_ALLOW_NUL, &e);
    if (!j) fprintf(stderr, "bad test JSON %s: %s\n", text, e.text);
    return j;
}

/* rep_int on {"qty": <value_json>} within [min, max]. */
static int int_of(const char *body, bool required, long long min, long long max,
                  long long *out, char *err)
{
    json_t *obj = parse(body);
    err[0] = '\0';
    int r = rep_int(obj, "qty", required, min, max, out, err, 128);
    json_decref(obj);
    return r;
}

#define INT_OK(body, expected) do { long long v_ = -999; char e_[128]; \
    CHECK_INT(int_of(body, true, LLONG_MIN, LLONG_MAX, &v_, e_), 1); CHECK_INT(v_, expected); } while (0)
#define INT_ERR(body, message) do { long long v_ = -999; char e_[128]; \
    CHECK_INT(int_of(body, true, 1, 100, &v_, e_), -1); CHECK_STR(e_, message); CHECK_INT(v_, -999); } while (0)

static void test_int(void)
{
    INT_OK("{\"qty\": 1}", 1);
    INT_OK("{\"qty\": -7}", -7);
    INT_OK("{\"qty\": \"1\"}", 1);              /* httpie sends numbers as strings */
    INT_OK("{\"qty\": \"-12\"}", -12);
    INT_OK("{\"qty\": \"007\"}", 7);
    INT_OK("{\"qty\": 3.0}", 3);                /* an integer written as a real */
    INT_OK("{\"qty\": 9223372036854775807}", LLONG_MAX);
    INT_OK("{\"qty\": \"-9223372036854775808\"}", LLONG_MIN);

    const char *not_integer = "qty must be an integer";
    INT_ERR("{\"qty\": 1.5}", not_integer);
    INT_ERR("{\"qty\": -0.25}", not_integer);
    INT_ERR("{\"qty\": \"1.0\"}", not_integer);
    INT_ERR("{\"qty\": \"1.5\"}", not_integer);
    INT_ERR("{\"qty\": \"abc\"}", not_integer);
    INT_ERR("{\"qty\": \"\"}", not_integer);
    INT_ERR("{\"qty\": \" 1\"}", not_integer);
    INT_ERR("{\"qty\": \"1 \"}", not_integer);
    INT_ERR("{\"qty\": \"+1\"}", not_integer);
    INT_ERR("{\"qty\": \"-\"}", not_integer);
    INT_ERR("{\"qty\": \"1e2\"}", not_integer);
    INT_ERR("{\"qty\": \"0x10\"}", not_integer);
    INT_ERR("{\"qty\": \"1\\u00002\"}", not_integer);   /* embedded NUL */
    INT_ERR("{\"qty\": true}", not_integer);
    INT_ERR("{\"qty\": false}", not_integer);
    INT_ERR("{\"qty\": {}}", not_integer);
    INT_ERR("{\"qty\": [1]}", not_integer);

    const char *bounds = "qty must be between 1 and 100";
    INT_ERR("{\"qty\": 0}", bounds);
    INT_ERR("{\"qty\": 101}", bounds);
    INT_ERR("{\"qty\": -1}", bounds);
    INT_ERR("{\"qty\": \"0\"}", bounds);
    INT_ERR("{\"qty\": \"101\"}", bounds);
    INT_ERR("{\"qty\": \"99999999999999999999\"}", bounds);    /* beyond long long */
    INT_ERR("{\"qty\": 1e300}", bounds);
    INT_ERR("{\"qty\": 1e17}", bounds);         /* beyond exact doubles: not rounded */

    long long v = 0;
    char err[128];
    CHECK_INT(int_of("{\"qty\": 1}", true, 1, 100, &v, err), 1);
    CHECK_INT(v, 1);
    CHECK_INT(int_of("{\"qty\": \"100\"}", true, 1, 100, &v, err), 1);
    CHECK_INT(v, 100);

    /* One-sided bounds read naturally. */
    CHECK_INT(int_of("{\"qty\": 0}", true, 1, LLONG_MAX, &v, err), -1);
    CHECK_STR(err, "qty must be at least 1");
    CHECK_INT(int_of("{\"qty\": 5}", true, LLONG_MIN, 4, &v, err), -1);
    CHECK_STR(err, "qty must be at most 4");
    CHECK_INT(int_of("{\"qty\": \"99999999999999999999\"}", true, LLONG_MIN, LLONG_MAX, &v, err), -1);
    CHECK_STR(err, "qty is out of range");

    /* Absent or null: required or not. */
    v = 55;
    CHECK_INT(int_of("{}", true, 1, 100, &v, err), -1);
    CHECK_STR(err, "qty is required");
    CHECK_INT(int_of("{\"qty\": null}", true, 1, 100, &v, err), -1);
    CHECK_STR(err, "qty is required");
    CHECK_INT(int_of("{}", false, 1, 100, &v, err), 0);
    CHECK_INT(int_of("{\"qty\": null}", false, 1, 100, &v, err), 0);
    CHECK_INT(v, 55);                           /* untouched when absent */
    CHECK_INT(int_of("{\"qty\": \"x\"}", false, 1, 100, &v, err), -1);  /* optional but wrong */
    CHECK_STR(err, "qty must be an integer");
    CHECK_INT(rep_int(NULL, "qty", false, 1, 100, &v, err, sizeof err), 0);
}

/* rep_str on {"productId": <value>}. */
static int str_of(const char *body, bool required, size_t max_len, char *value, char *err,
                  bool *pointed_into_obj)
{
    json_t *obj = parse(body);
    const char *out = NULL;
    char buf[128];
    err[0] = value[0] = '\0';
    int r = rep_str(obj, "productId", required, max_len, &out, buf, sizeof buf, err, 128);
    if (r == 1) {
        snprintf(value, 128, "%s", out);
        if (pointed_into_obj)
            *pointed_into_obj = out == json_string_value(json_object_get(obj, "productId"));
    }
    json_decref(obj);
    return r;
}

#define STR_OK(body, max, expected) do { char v_[128], e_[128]; \
    CHECK_INT(str_of(body, true, max, v_, e_, NULL), 1); CHECK_STR(v_, expected); } while (0)
#define STR_ERR(body, max, message) do { char v_[128], e_[128]; \
    CHECK_INT(str_of(body, true, max, v_, e_, NULL), -1); CHECK_STR(e_, message); } while (0)

static void test_str(void)
{
    char value[128], err[128];
    bool into = false;
    CHECK_INT(str_of("{\"productId\": \"1001\"}", true, 32, value, err, &into), 1);
    CHECK_STR(value, "1001");
    CHECK(into);                                /* no copy when nothing changed */
    CHECK_INT(str_of("{\"productId\": \"  kim \"}", true, 32, value, err, &into), 1);
    CHECK_STR(value, "kim");                    /* trimmed, into buf */
    CHECK(!into);

    STR_OK("{\"productId\": 1001}", 32, "1001");
    STR_OK("{\"productId\": 1001.0}", 32, "1001");
    STR_OK("{\"productId\": -3}", 32, "-3");
    STR_OK("{\"productId\": 10.5}", 32, "10.5");
    STR_OK("{\"productId\": \"\\uae40\\ucca0\\uc218\"}", 32, "\xea\xb9\x80\xec\xb2\xa0\xec\x88\x98");
    STR_OK("{\"productId\": \"abcde\"}", 5, "abcde");          /* exactly max */
    STR_OK("{\"productId\": \"Hyundai Avante 2024\"}", 32, "Hyundai Avante 2024");

    STR_ERR("{\"productId\": \"abcdef\"}", 5, "productId must be at most 5 characters long");
    STR_ERR("{\"productId\": 123456}", 5, "productId must be at most 5 characters long");
    /* Korean: 3 characters but 9 bytes; the limit is on bytes of storage. */
    STR_ERR("{\"productId\": \"\\uae40\\ucca0\\uc218\"}", 8, "productId must be at most 8 characters long");
    STR_ERR("{\"productId\": \"\"}", 32, "productId must not be empty");
    STR_ERR("{\"productId\": \"   \"}", 32, "productId must not be empty");
    const char *unprintable = "productId must be printable text (UTF-8, no control characters)";
    STR_ERR("{\"productId\": \"a\\nb\"}", 32, unprintable);
    STR_ERR("{\"productId\": \"a\\u0000b\"}", 32, unprintable);
    STR_ERR("{\"productId\": \"a\\u001bb\"}", 32, unprintable);
    STR_ERR("{\"productId\": \"a\\u007fb\"}", 32, unprintable);
    STR_ERR("{\"productId\": \"a\\u0085b\"}", 32, unprintable);
    STR_ERR("{\"productId\": true}", 32, "productId must be a string");
    STR_ERR("{\"productId\": [\"1001\"]}", 32, "productId must be a string");
    STR_ERR("{\"productId\": {\"id\": 1}}", 32, "productId must be a string");
    STR_ERR("{}", 32, "productId is required");
    STR_ERR("{\"productId\": null}", 32, "productId is required");

    CHECK_INT(str_of("{}", false, 32, value, err, NULL), 0);
    CHECK_INT(str_of("{\"productId\": null}", false, 32, value, err, NULL), 0);
    CHECK_INT(str_of("{\"productId\": 7}", false, 32, value, err, NULL), 1);

    /* A very long string is refused, whatever the buffer. */
    size_t n = 100000;
    char *big = malloc(n + 32);
    strcpy(big, "{\"productId\": \"");
    memset(big + strlen(big), 'x', n);
    strcpy(big + 15 + n, "\"}");
    CHECK_INT(str_of(big, true, 64, value, err, NULL), -1);
    CHECK_STR(err, "productId must be at most 64 characters long");
    free(big);

    /* A trimmed value longer than the caller's buffer is an error, not an overflow. */
    json_t *obj = parse("{\"productId\": \" 0123456789 \"}");
    const char *out = NULL;
    char small[4];
    CHECK_INT(rep_str(obj, "productId", true, 64, &out, small, sizeof small, err, sizeof err), -1);
    CHECK_STR(err, "productId is too long");
    json_decref(obj);
}

static void test_page_params(void)
{
    long page = -1, size = -1;
    char err[128];
    CHECK(rep_page_params(NULL, NULL, &page, &size, err, sizeof err));
    CHECK_INT(page, 0);
    CHECK_INT(size, 20);
    CHECK(rep_page_params("", "", &page, &size, err, sizeof err));
    CHECK_INT(page, 0);
    CHECK_INT(size, 20);
    CHECK(rep_page_params("3", "50", &page, &size, err, sizeof err));
    CHECK_INT(page, 3);
    CHECK_INT(size, 50);
    CHECK(rep_page_params("0", "1000", &page, &size, err, sizeof err));
    CHECK_INT(size, 1000);
    CHECK(rep_page_params(NULL, "1", &page, &size, err, sizeof err));
    CHECK_INT(size, 1);

    const char *bad_page = "page must be an integer between 0 and 1000000000";
    const char *bad_size = "size must be an integer between 1 and 1000";
    CHECK(!rep_page_params("-1", NULL, &page, &size, err, sizeof err));
    CHECK_STR(err, bad_page);
    CHECK(!rep_page_params("abc", NULL, &page, &size, err, sizeof err));
    CHECK_STR(err, bad_page);
    CHECK(!rep_page_params("1.5", NULL, &page, &size, err, sizeof err));
    CHECK_STR(err, bad_page);
    CHECK(!rep_page_params("99999999999999999999", NULL, &page, &size, err, sizeof err));
    CHECK_STR(err, bad_page);
    CHECK(!rep_page_params(NULL, "0", &page, &size, err, sizeof err));
    CHECK_STR(err, bad_size);
    CHECK(!rep_page_params(NULL, "1001", &page, &size, err, sizeof err));
    CHECK_STR(err, bad_size);
    CHECK(!rep_page_params(NULL, "-5", &page, &size, err, sizeof err));
    CHECK_STR(err, bad_size);
    CHECK(!rep_page_params(NULL, "ten", &page, &size, err, sizeof err));
    CHECK_STR(err, bad_size);
}

static void test_path_id(void)
{
    long long id = -1;
    CHECK(rep_path_id("7", &id));
    CHECK_INT(id, 7);
    CHECK(rep_path_id("007", &id));
    CHECK_INT(id, 7);
    CHECK(rep_path_id("9223372036854775807", &id));
    CHECK_INT(id, LLONG_MAX);

    id = -1;
    CHECK(!rep_path_id("0", &id));
    CHECK(!rep_path_id("-7", &id));
    CHECK(!rep_path_id("+7", &id));
    CHECK(!rep_path_id(" 7", &id));
    CHECK(!rep_path_id("7 ", &id));
    CHECK(!rep_path_id("7a", &id));
    CHECK(!rep_path_id("1.0", &id));
    CHECK(!rep_path_id("", &id));
    CHECK(!rep_path_id(NULL, &id));
    CHECK(!rep_path_id("9223372036854775808", &id));   /* beyond long long */
    CHECK_INT(id, -1);                                  /* untouched when refused */
}

static void test_item(void)
{
    json_t *item = json_pack("{s:i, s:s}", "id", 7, "status", "OrderApproved");
    json_t *same = rep_item(item, "http://localhost:8081", "orders", "7");
    CHECK(same == item);
    CHECK_STR(json_string_value(json_object_get(json_object_get(json_object_get(item, "_links"),
                                                                "self"), "href")),
              "http://localhost:8081/orders/7");
    CHECK_INT(json_integer_value(json_object_get(item, "id")), 7);
    CHECK_STR(json_string_value(json_object_get(item, "status")), "OrderApproved");
    json_decref(item);
}

static long long page_field(json_t *c, const char *name)
{
    return json_integer_value(json_object_get(json_object_get(c, "page"), name));
}

static void test_collection(void)
{
    json_t *items = json_array();
    for (int i = 0; i < 3; i++) json_array_append_new(items, json_pack("{s:i}", "id", i + 1));
    json_t *c = rep_collection("orders", items, "http://h/orders?page=2&size=20", 2, 20, 43);
    json_t *embedded = json_object_get(json_object_get(c, "_embedded"), "orders");
    CHECK(embedded == items);                   /* stolen, not copied */
    CHECK_INT(json_array_size(embedded), 3);
    CHECK_STR(json_string_value(json_object_get(json_object_get(json_object_get(c, "_links"), "self"),
                                                "href")), "http://h/orders?page=2&size=20");
    CHECK_INT(page_field(c, "size"), 20);
    CHECK_INT(page_field(c, "totalElements"), 43);
    CHECK_INT(page_field(c, "totalPages"), 3);  /* ceil(43 / 20) */
    CHECK_INT(page_field(c, "number"), 2);
    json_decref(c);

    struct { long long total; long size; long long pages; } cases[] = {
        {0, 20, 0}, {1, 20, 1}, {20, 20, 1}, {21, 20, 2}, {40, 20, 2}, {1000, 1, 1000}, {5, 1000, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        c = rep_collection("cars", json_array(), "http://h/cars", 0, cases[i].size, cases[i].total);
        CHECK_INT(page_field(c, "totalPages"), cases[i].pages);
        CHECK(json_is_array(json_object_get(json_object_get(c, "_embedded"), "cars")));
        json_decref(c);
    }
}

static void test_error(void)
{
    json_t *e = rep_error(400, "qty must be between 1 and 100", "/orders");
    CHECK_INT(json_object_size(e), 4);
    CHECK_INT(json_integer_value(json_object_get(e, "status")), 400);
    CHECK_STR(json_string_value(json_object_get(e, "error")), "Bad Request");
    CHECK_STR(json_string_value(json_object_get(e, "message")), "qty must be between 1 and 100");
    CHECK_STR(json_string_value(json_object_get(e, "path")), "/orders");
    json_decref(e);

    e = rep_error(404, "no order 7", "/orders/7");
    CHECK_STR(json_string_value(json_object_get(e, "error")), "Not Found");
    json_decref(e);
}

int main(void)
{
    test_int();
    test_str();
    test_page_params();
    test_path_id();
    test_item();
    test_collection();
    test_error();
    return test_done("test_rep");
}
