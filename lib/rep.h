/* rep.h: the contract's representations.
 *
 * Output: HAL items and collections in the shape Spring Data REST gave the
 * seed's clients, and the contract's error body.
 * Input: reading fields from a client's JSON object the way the contract
 * asks: numbers may arrive as numeric strings ("qty": "1"), anything else
 * non-numeric is an error; a missing required field is an error; an error
 * message names the field and says what is wrong, ready for a 400.
 * The same rules apply to query parameters and path ids, and the answers
 * every service gives (collections, 201 Created) are built here too. */
#ifndef CARSHARE_REP_H
#define CARSHARE_REP_H

#include <stdbool.h>
#include <jansson.h>
#include "http.h"

/* ---- input ---- */

/* Reads an integer field. Accepts a JSON integer, or a string of decimal
 * digits (optional leading '-'; surrounding spaces refused). Refuses reals
 * with a fraction, booleans, null, objects, out-of-range values.
 * Returns 1 when found and valid (*out set), 0 when absent (or null) and
 * not required, -1 on error with `err` filled ("qty must be an integer").
 * min/max bound the value ("qty must be between 1 and 100"). */
int rep_int(const json_t *obj, const char *field, bool required,
            long long min, long long max, long long *out, char *err, size_t errlen);

/* Reads a string field; a JSON number is accepted and converted to its
 * decimal text (productId may be 1001 or "1001"). Same return convention.
 * The string must be 1..max_len bytes of printable UTF-8 after trimming
 * spaces; *out points into obj (valid while obj lives) or to a copy kept
 * in `buf` of size `buflen` when converted or trimmed. */
int rep_str(const json_t *obj, const char *field, bool required, size_t max_len,
            const char **out, char *buf, size_t buflen, char *err, size_t errlen);

/* A positive id written as decimal digits only (a path segment such as the
 * 7 of /orders/7), within long long. Returns false for anything else; the
 * caller decides whether that is a 400 or a 404. */
bool rep_path_id(const char *text, long long *out);

/* ---- input from a request ---- */

/* A required integer query parameter (?orderId=7), read like rep_int.
 * On a missing or bad value replies 400 naming the parameter and returns
 * false: the handler must then return without replying. */
bool rep_query_int(http_req *r, const char *name, long long min, long long max,
                   long long *out);

/* Page parameters from the request's query (?page&size, rep_page_params).
 * On a bad value replies 400 and returns false, like rep_query_int. */
bool rep_page_query(http_req *r, long *page, long *size);

/* ---- output ---- */

/* Adds "_links": {"self": {"href": base_url + "/" + collection + "/" + id}}
 * to item and returns it. */
json_t *rep_item(json_t *item, const char *base_url, const char *collection, const char *id);

/* Page parameters from the query (page >= 0, 1 <= size <= 1000, defaults 0
 * and 20). Returns false with err filled on a bad value. */
bool rep_page_params(const char *page_s, const char *size_s, long *page, long *size,
                     char *err, size_t errlen);

/* {"_embedded": {collection: items}, "_links": {"self": {"href": self_url}},
 *  "page": {"size", "totalElements", "totalPages", "number"}}. Steals items. */
json_t *rep_collection(const char *collection, json_t *items, const char *self_url,
                       long page, long size, long long total);

/* {"status", "error", "message", "path"} */
json_t *rep_error(int status, const char *message, const char *path);


/* ---- answers ---- */

/* The items of a collection being listed, and the base URL their links
 * need: what a service's list handler hands to its store's list callback. */
typedef struct rep_list {
    json_t *items;
    const char *base_url;
} rep_list;

/* 200 with rep_collection(): the self link is the request's own URL (base
 * URL, path and query). Steals items. */
void rep_reply_collection(http_req *r, const char *collection, json_t *items,
                          long page, long size, long long total);

/* 201 with item, its _links.self.href (rep_item) as the Location. Steals
 * item. */
void rep_reply_created(http_req *r, json_t *item);

/* Answers a lookup by id from a store's result: found < 0 is a 500 ("could
 * not read payment 7"), 0 a 404 ("payment 7 not found"), else 200 with item
 * (stolen; pass NULL unless found > 0). `what` names the resource, `id` is
 * its id as the client wrote it. */
void rep_reply_found(http_req *r, int found, json_t *item, const char *what, const char *id);

/* 503 with Retry-After: 1, for a unit of work (db.h) that could not run or
 * found the database unreachable or too slow: "`what` is unavailable: try
 * again shortly" (what: "the payment database"). */
void rep_reply_db_unavailable(http_req *r, const char *what);

#endif
