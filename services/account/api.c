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
 * Every use of the database is a unit of work (lib/db_job.h): at once on
 * the loop on SQLite, on a database thread on PostgreSQL, its answer on
 * the loop; a database that is unreachable or too slow is a 503. A request
 * is a chain of them around the hashing, one job carried through: the
 * password it holds lives in sodium_malloc'ed memory (wiped when freed)
 * until the hasher has its own copy.
 *
 * Sign-up: is the id taken (unit of work; 409 before ~100 ms of hashing)
 * -> hash (hasher) -> store it (unit of work; ON CONFLICT decides races).
 *
 * Sign-in, step by step (what makes the answers equal for unknown and
 * known ids, and the throttle hold under parallel guesses):
 *   1. one transaction (session.c): the id's failures of the last 15
 *      minutes, 5 or more -> 429; else the attempt is recorded as a
 *      failure (before any hashing) and the account read; an unknown id
 *      takes the dummy hash;
 *   2. the password is verified on a worker thread -- same work either way;
 *   3. right password of a real account: the attempt is forgiven (a unit
 *      of work) and a token answered (201); anything else: 401,
 *      "customerId or password is wrong", the same words for both. */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "account.h"
#include "auth.h"
#include "db_job.h"
#include "http.h"
#include "log.h"
#include "mem.h"
#include "rep.h"
#include "service.h"

#define WRONG_CREDENTIALS "customerId or password is wrong"
#define PRUNE_EVERY_S 60
#define DATABASE "the account database"

typedef struct account_api {
    db *db;
    token_key *key;
    hasher *hasher;
    const char *dummy_hash;
    int token_ttl_s;
    long long last_prune;        /* loop only */
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

/* A copy of the password in guarded memory (sodium_malloc: not swapped,
 * wiped by sodium_free), for the time between the request and the hasher. */
static char *password_copy(const char *password)
{
    size_t n = strlen(password);
    char *copy = mem_must(sodium_malloc(n + 1));    /* mem.h: the request's own */
    memcpy(copy, password, n + 1);
    return copy;
}

static void password_drop(char **password)
{
    if (*password) sodium_free(*password);
    *password = NULL;
}

/* ---- POST /accounts ---- */

typedef struct signup_job {
    db_job job;                  /* db_job.h */
    account_api *api;
    char *password;              /* guarded; NULL once hashed */
    account a;
    int found;                   /* the id before hashing: 1, 0, -1 */
    int created;                 /* account_create: 1, 0 taken, -1 */
} signup_job;

static void signup_clear(db_job *job)
{
    signup_job *s = (signup_job *)job;
    password_drop(&s->password);
    explicit_bzero(&s->a, sizeof s->a);     /* the hash too */
}

static void create_work(store *st, void *arg)
{
    signup_job *s = arg;
    s->created = account_create(st, &s->a);
}

static void create_done(void *arg, db_status status)
{
    signup_job *s = arg;
    if (db_job_answered_unavailable(&s->job, status))
        return;
    http_req *r = s->job.req;
    if (s->created > 0) {
        log_info("req=%s msg=\"account created\" customer=%s", http_req_id(r),
                 s->a.customer_id);
        rep_reply_created(r, account_json(&s->a, http_req_base_url(r)));
    } else if (s->created == 0) {
        http_reply_error(r, 409, "customerId %s is taken", s->a.customer_id);
    } else {
        http_reply_error(r, 500, "the account could not be stored; please retry");
    }
    db_job_free(&s->job);
}

static void on_signup_hashed(const hash_result *res, void *arg)
{
    signup_job *s = arg;
    if (res->status != HASH_DONE) {
        http_reply_error(s->job.req, 500, "the account could not be created; please retry");
        db_job_free(&s->job);
        return;
    }
    snprintf(s->a.password_hash, sizeof s->a.password_hash, "%s", res->hash);
    db_job_run(&s->job, create_work, create_done);
}

static void taken_work(store *st, void *arg)
{
    signup_job *s = arg;
    account existing;
    s->found = account_store_get(st, s->a.customer_id, &existing);
    explicit_bzero(&existing, sizeof existing);
}

static void taken_done(void *arg, db_status status)
{
    signup_job *s = arg;
    if (db_job_answered_unavailable(&s->job, status))
        return;
    http_req *r = s->job.req;
    /* Taken ids are refused before the ~100 ms of hashing; the insert
     * still decides races (ON CONFLICT). */
    if (s->found != 0) {
        http_reply_error(r, s->found > 0 ? 409 : 500, s->found > 0 ? "customerId %s is taken"
                         : "the account %s could not be read", s->a.customer_id);
    } else if (hasher_submit(s->api->hasher, s->password, NULL, on_signup_hashed, s)) {
        password_drop(&s->password);    /* the hasher has its own copy */
        return;                         /* on_signup_hashed goes on */
    } else {
        refuse_busy(r);
    }
    db_job_free(&s->job);
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
    signup_job *s = db_job_new(r, api->db, sizeof *s, DATABASE, signup_clear);
    s->api = api;
    const char *password = NULL;
    bool ok = read_signup(r, in, &s->a, &password);
    if (ok)
        s->password = password_copy(password);
    json_decref(in);
    if (!ok) {
        db_job_free(&s->job);
        return;
    }
    db_job_run(&s->job, taken_work, taken_done);
}

/* ---- POST /sessions ---- */

typedef struct signin_job {
    db_job job;                  /* db_job.h */
    account_api *api;
    char *password;              /* guarded; NULL once handed to the hasher */
    bool prune;                  /* prune old failures first */
    bool busy;                   /* forgiven because the hasher was full: 503 */
    signin_verdict verdict;
    signin_attempt at;
} signin_job;

static void signin_clear(db_job *job)
{
    signin_job *s = (signin_job *)job;
    password_drop(&s->password);
    explicit_bzero(&s->at, sizeof s->at);
}

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

static void forgive_work(store *st, void *arg)
{
    signin_job *s = arg;
    signin_forgive(st, s->at.attempt);
}

/* The attempt is forgiven (or could not be: it then counts as one failure
 * of five, which is no reason to refuse a right password or to keep a
 * refusal from being answered): the answer does not depend on it. */
static void forgive_done(void *arg, db_status status)
{
    (void)status;
    signin_job *s = arg;
    if (s->busy)
        refuse_busy(s->job.req);
    else
        answer_token(s->job.req, s->api, &s->at.account);
    db_job_free(&s->job);
}

static void on_signin_verified(const hash_result *res, void *arg)
{
    signin_job *s = arg;
    http_req *r = s->job.req;
    if (res->status == HASH_DONE && res->match && s->at.found) {
        db_job_run(&s->job, forgive_work, forgive_done);
        return;
    }
    log_info("req=%s msg=\"sign-in refused\" known=%s", http_req_id(r),
             s->at.found ? "yes" : "no");
    http_set_header(r, "WWW-Authenticate", "Bearer realm=\"carshare\"");
    http_reply_error(r, 401, WRONG_CREDENTIALS);
    db_job_free(&s->job);
}

static void refuse_throttled(http_req *r, long long wait)
{
    char value[24];
    snprintf(value, sizeof value, "%lld", wait);
    http_set_header(r, "Retry-After", value);
    log_info("req=%s msg=\"sign-in throttled\" retry_after_s=%lld", http_req_id(r), wait);
    http_reply_error(r, 429, "too many failed sign-ins for this customerId; try again in %lld "
                     "seconds", wait);
}

static void start_work(store *st, void *arg)
{
    signin_job *s = arg;
    /* Old failures no longer count: an idempotent DELETE, apart from the
     * attempt's transaction (it touches every id's rows). */
    if (s->prune)
        failure_store_prune(st, s->at.now - THROTTLE_WINDOW_S);
    s->verdict = signin_start(st, &s->at);
}

static void start_done(void *arg, db_status status)
{
    signin_job *s = arg;
    if (db_job_answered_unavailable(&s->job, status))
        return;
    http_req *r = s->job.req;
    if (s->verdict == SIGNIN_THROTTLED) {
        refuse_throttled(r, s->at.retry_after);
    } else if (s->verdict == SIGNIN_FAILED) {
        http_reply_error(r, 500, "sign-in is unavailable; please retry");
    } else {
        const char *hash = s->at.found ? s->at.account.password_hash : s->api->dummy_hash;
        bool queued = hasher_submit(s->api->hasher, s->password, hash, on_signin_verified, s);
        password_drop(&s->password);
        if (queued)
            return;                     /* on_signin_verified goes on */
        /* Not checked, so not a failure: take the attempt back. */
        s->busy = true;
        db_job_run(&s->job, forgive_work, forgive_done);
        return;
    }
    db_job_free(&s->job);
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

static void post_session(http_req *r, void *arg)
{
    account_api *api = arg;
    json_t *in = http_req_json(r);
    if (!in)
        return;
    signin_job *s = db_job_new(r, api->db, sizeof *s, DATABASE, signin_clear);
    s->api = api;
    const char *password = NULL;
    bool ok = read_signin(r, in, s->at.customer_id, sizeof s->at.customer_id, &password);
    if (ok)
        s->password = password_copy(password);
    json_decref(in);
    if (!ok) {
        db_job_free(&s->job);
        return;
    }
    s->at.now = now_s();
    if (s->at.now - api->last_prune >= PRUNE_EVERY_S) {
        api->last_prune = s->at.now;
        s->prune = true;
    }
    db_job_run(&s->job, start_work, start_done);
}

/* ---- GET /accounts/{id} ---- */

typedef struct read_job {
    db_job job;                  /* db_job.h */
    char id[ACCOUNT_ID_MAX + 1];
    int found;
    account a;
} read_job;

static void read_clear(db_job *job)
{
    read_job *j = (read_job *)job;
    explicit_bzero(&j->a, sizeof j->a);
}

static void get_account_work(store *st, void *arg)
{
    read_job *j = arg;
    j->found = account_store_get(st, j->id, &j->a);
}

static void get_account_done(void *arg, db_status status)
{
    read_job *j = arg;
    if (db_job_answered_unavailable(&j->job, status))
        return;
    http_req *r = j->job.req;
    rep_reply_found(r, j->found, j->found > 0 ? account_json(&j->a, http_req_base_url(r)) : NULL,
                    "account", http_req_param(r, "id"));
    db_job_free(&j->job);
}

static void get_account(http_req *r, void *arg)
{
    account_api *api = arg;
    const char *id = http_req_param(r, "id");
    /* Another customer's account is as unknown as a missing one, and so is
     * an id no account can have. */
    if (!auth_may_see(r, id) || account_id_refusal(id)) {
        rep_reply_found(r, 0, NULL, "account", id);
        return;
    }
    read_job *j = db_job_new(r, api->db, sizeof *j, DATABASE, read_clear);
    snprintf(j->id, sizeof j->id, "%s", id);
    db_job_run(&j->job, get_account_work, get_account_done);
}

static void free_api(void *arg)
{
    account_api *api = arg;
    hasher_free(api->hasher);
    free(api);
}

void account_api_register(service *svc, db *d, const account_api_config *cfg)
{
    account_api *api = mem_must(calloc(1, sizeof *api));
    api->db = d;
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
