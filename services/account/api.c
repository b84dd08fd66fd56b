/* api.c: account's HTTP interface (see account.h and the contract).
 *
 *   POST /accounts        open: a new customer account (201; 409 taken; 400)
 *   POST /sessions        open: sign in (201 with a token; 401; 429)
 *   GET  /accounts/{id}   the account itself (a customer: their own only,
 *                         another's is a 404) or any (staff)
 *
 * Both POSTs hash (Argon2id, ~100 ms): the handler validates, then hands
 * the password to the hasher and answers from its callback, on the loop.
 * A full hashing queue is a 503 with Retry-After: sign-ins are refused
 * fast rather than queued for seconds.
 *
 * Sign-in, step by step (what makes the answers equal for unknown and
 * known ids, and the throttle hold under parallel guesses):
 *   1. the id's failures of the last 15 minutes: 5 or more -> 429;
 *   2. the attempt is recorded as a failure (before any hashing);
 *   3. the account is read; an unknown id takes the dummy hash;
 *   4. the password is verified on a worker thread -- same work either way;
 *   5. right password of a real account: the attempt is forgiven and a
 *      token answered (201); anything else: 401, "customerId or password
 *      is wrong", the same words for both. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "account.h"
#include "auth.h"
#include "http.h"
#include "log.h"
#include "mem.h"
#include "rep.h"
#include "service.h"

#define WRONG_CREDENTIALS "customerId or password is wrong"
#define PRUNE_EVERY_S 60

typedef struct account_api {
    store *st;
    token_key *key;
    hasher *hasher;
    const char *dummy_hash;
    int token_ttl_s;
    long long last_prune;
} account_api;

static long long now_s(void)
{
    return (long long)time(NULL);
}

static json_t *account_json(const account *a, const char *base_url)
{
    json_t *item = json_pack("{s:s, s:s, s:s, s:s}", "customerId", a->customer_id,
                             "name", a->name, "role", token_role_name(a->role),
                             "createdAt", a->created_at);
    return rep_item(item, base_url, "accounts", a->customer_id);
}

static void refuse_busy(http_req *r)
{
    http_set_header(r, "Retry-After", "1");
    http_reply_error(r, 503, "too many sign-ins and sign-ups at once; please try again in a "
                     "moment");
}

/* ---- POST /accounts ---- */

typedef struct signup {
    account_api *api;
    http_req *req;
    account a;
} signup;

static void on_signup_hashed(const hash_result *res, void *arg)
{
    signup *s = arg;
    http_req *r = s->req;
    if (res->status != HASH_DONE) {
        http_reply_error(r, 500, "the account could not be created; please retry");
    } else {
        snprintf(s->a.password_hash, sizeof s->a.password_hash, "%s", res->hash);
        int rc = account_store_insert(s->api->st, &s->a);
        if (rc > 0) {
            log_info("req=%s msg=\"account created\" customer=%s", http_req_id(r),
                     s->a.customer_id);
            rep_reply_created(r, account_json(&s->a, http_req_base_url(r)));
        } else if (rc == 0) {
            http_reply_error(r, 409, "customerId %s is taken", s->a.customer_id);
        } else {
            http_reply_error(r, 500, "the account could not be stored; please retry");
        }
    }
    explicit_bzero(s, sizeof *s);
    free(s);
}

/* Reads and checks the sign-up; on a refusal answers 400 and returns false. */
static bool read_signup(http_req *r, const json_t *in, account *a, const char **password)
{
    char err[160], id_buf[ACCOUNT_ID_MAX + 1], name_buf[ACCOUNT_NAME_MAX + 1];
    const char *id = NULL, *name = NULL;
    if (rep_str(in, "customerId", true, ACCOUNT_ID_MAX, &id, id_buf, sizeof id_buf, err,
                sizeof err) < 0
        || rep_str(in, "name", false, ACCOUNT_NAME_MAX, &name, name_buf, sizeof name_buf, err,
                   sizeof err) < 0) {
        http_reply_error(r, 400, "%s", err);
        return false;
    }
    const char *why = account_id_refusal(id);
    const json_t *pw = json_object_get(in, "password");
    if (!why && !json_is_string(pw))
        why = "password is required (a string)";
    if (!why)
        why = account_password_refusal(json_string_value(pw), id);
    if (why) {
        http_reply_error(r, 400, "%s", why);
        return false;
    }
    memset(a, 0, sizeof *a);
    snprintf(a->customer_id, sizeof a->customer_id, "%s", id);
    snprintf(a->name, sizeof a->name, "%s", name ? name : "");
    a->role = TOKEN_ROLE_CUSTOMER;
    *password = json_string_value(pw);
    return true;
}

static void post_account(http_req *r, void *arg)
{
    account_api *api = arg;
    json_t *in = http_req_json(r);
    if (!in)
        return;
    signup *s = calloc(1, sizeof *s);
    const char *password = NULL;
    if (!s) {
        http_reply_error(r, 500, "out of memory");
    } else if (read_signup(r, in, &s->a, &password)) {
        account existing;
        int found = account_store_get(api->st, s->a.customer_id, &existing);
        s->api = api;
        s->req = r;
        /* Taken ids are refused before the ~100 ms of hashing; the insert
         * still decides races (ON CONFLICT). */
        if (found != 0)
            http_reply_error(r, found > 0 ? 409 : 500, found > 0 ? "customerId %s is taken"
                             : "the account %s could not be read", s->a.customer_id);
        else if (hasher_submit(api->hasher, password, NULL, on_signup_hashed, s))
            s = NULL;   /* the callback answers and frees it */
        else
            refuse_busy(r);
    }
    free(s);
    json_decref(in);
}

/* ---- POST /sessions ---- */

typedef struct signin {
    account_api *api;
    http_req *req;
    bool found;
    account a;
    long long attempt;           /* its failure row, forgiven on success */
} signin;

static void answer_token(http_req *r, account_api *api, const account *a)
{
    char token[TOKEN_MAX_LEN];
    if (token_sign(api->key, a->customer_id, a->role, now_s(), api->token_ttl_s, token,
                   sizeof token) < 0) {
        http_reply_error(r, 500, "the token could not be made");
        return;
    }
    log_info("req=%s msg=\"signed in\" customer=%s role=%s kid=%s", http_req_id(r),
             a->customer_id, token_role_name(a->role), token_key_id(api->key));
    http_reply_json(r, 201, json_pack("{s:s, s:s, s:i, s:s, s:s}", "token", token,
                                      "tokenType", "Bearer", "expiresIn", api->token_ttl_s,
                                      "customerId", a->customer_id,
                                      "role", token_role_name(a->role)));
}

static void on_signin_verified(const hash_result *res, void *arg)
{
    signin *s = arg;
    http_req *r = s->req;
    if (res->status == HASH_DONE && res->match && s->found) {
        failure_store_forgive(s->api->st, s->attempt);
        answer_token(r, s->api, &s->a);
    } else {
        log_info("req=%s msg=\"sign-in refused\" known=%s", http_req_id(r),
                 s->found ? "yes" : "no");
        http_set_header(r, "WWW-Authenticate", "Bearer realm=\"carshare\"");
        http_reply_error(r, 401, WRONG_CREDENTIALS);
    }
    explicit_bzero(s, sizeof *s);
    free(s);
}

/* 429 when the id failed too often lately; false then (answered). */
static bool throttle_allows(http_req *r, account_api *api, const char *id, long long now)
{
    long long times[2 * THROTTLE_MAX_FAILURES];
    int n = failure_store_recent(api->st, id, now - THROTTLE_WINDOW_S, times,
                                 (int)(sizeof times / sizeof times[0]));
    if (n < 0) {
        http_reply_error(r, 500, "sign-in is unavailable; please retry");
        return false;
    }
    long long wait = throttle_retry_after(times, n, now);
    if (wait == 0)
        return true;
    char value[24];
    snprintf(value, sizeof value, "%lld", wait);
    http_set_header(r, "Retry-After", value);
    log_info("req=%s msg=\"sign-in throttled\" retry_after_s=%lld", http_req_id(r), wait);
    http_reply_error(r, 429, "too many failed sign-ins for this customerId; try again in %lld "
                     "seconds", wait);
    return false;
}

static void prune_failures(account_api *api, long long now)
{
    if (now - api->last_prune < PRUNE_EVERY_S)
        return;
    api->last_prune = now;
    failure_store_prune(api->st, now - THROTTLE_WINDOW_S);
}

/* The id as the client wrote it, bounded: an invalid one is just unknown. */
static bool read_signin(http_req *r, const json_t *in, char *id, size_t idlen,
                        const char **password)
{
    const json_t *jid = json_object_get(in, "customerId");
    const json_t *pw = json_object_get(in, "password");
    if (!json_is_string(jid) || !json_is_string(pw)) {
        http_reply_error(r, 400, "customerId and password are required (strings)");
        return false;
    }
    snprintf(id, idlen, "%s", json_string_value(jid));
    *password = json_string_value(pw);
    return true;
}

static void start_signin(http_req *r, account_api *api, signin *s, const char *password,
                         long long now)
{
    if (failure_store_add(api->st, s->a.customer_id, now, &s->attempt) != 0) {
        http_reply_error(r, 500, "sign-in is unavailable; please retry");
        free(s);
        return;
    }
    char id[ACCOUNT_ID_MAX + 1];
    snprintf(id, sizeof id, "%s", s->a.customer_id);
    int found = account_id_refusal(id) ? 0 : account_store_get(api->st, id, &s->a);
    s->found = found > 0;
    if (found < 0)
        snprintf(s->a.customer_id, sizeof s->a.customer_id, "%s", id);
    const char *hash = s->found ? s->a.password_hash : api->dummy_hash;
    if (!hasher_submit(api->hasher, password, hash, on_signin_verified, s)) {
        failure_store_forgive(api->st, s->attempt);
        free(s);
        refuse_busy(r);
    }
}

static void post_session(http_req *r, void *arg)
{
    account_api *api = arg;
    json_t *in = http_req_json(r);
    if (!in)
        return;
    signin *s = calloc(1, sizeof *s);
    const char *password = NULL;
    long long now = now_s();
    if (!s) {
        http_reply_error(r, 500, "out of memory");
    } else if (read_signin(r, in, s->a.customer_id, sizeof s->a.customer_id, &password)
               && throttle_allows(r, api, s->a.customer_id, now)) {
        s->api = api;
        s->req = r;
        prune_failures(api, now);
        start_signin(r, api, s, password, now);
        s = NULL;   /* start_signin answers or hands it to the callback */
    }
    free(s);
    json_decref(in);
}

/* ---- GET /accounts/{id} ---- */

static void get_account(http_req *r, void *arg)
{
    account_api *api = arg;
    const char *id = http_req_param(r, "id");
    account a;
    /* Another customer's account is as unknown as a missing one. */
    int found = auth_may_see(r, id) ? account_store_get(api->st, id, &a) : 0;
    rep_reply_found(r, found, found > 0 ? account_json(&a, http_req_base_url(r)) : NULL,
                    "account", id);
}

static void free_api(void *arg)
{
    account_api *api = arg;
    hasher_free(api->hasher);
    free(api);
}

void account_api_register(service *svc, store *st, const account_api_config *cfg)
{
    account_api *api = mem_must(calloc(1, sizeof *api));
    api->st = st;
    api->key = cfg->key;
    api->hasher = cfg->hasher;
    api->dummy_hash = cfg->dummy_hash;
    api->token_ttl_s = cfg->token_ttl_s;

    http_server *h = svc->http;
    http_server_route_for(h, "POST", "/accounts", HTTP_OPEN, post_account, api);
    http_server_route_for(h, "POST", "/sessions", HTTP_OPEN, post_session, api);
    http_server_route_for(h, "GET", "/accounts/{id}", TOKEN_ROLE_CUSTOMER | TOKEN_ROLE_STAFF,
                          get_account, api);
    service_on_stop(svc, free_api, api);
}
