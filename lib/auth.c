/* auth.c: the token check of every process (see auth.h).
 *
 * The order of the checks gives each caller the most useful refusal: a
 * token in the query string is refused before anything else (it must not
 * be used even when a good header comes along), then a missing or broken
 * token is a 401, and only a valid token can earn a 403 (its role may not
 * make the call). Messages come from token.h, so the gateway and the
 * services word the same refusal the same way.
 *
 * Time: tokens carry seconds since the epoch; the wall clock is read once
 * per check (a cache hit needs it to refuse an expired token). */
#include "auth.h"
#include "config.h"
#include "log.h"
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

_Static_assert(HTTP_ROUTE_DEFAULT_ROLES == TOKEN_ROLE_STAFF, "http.h's default is staff only");
_Static_assert(HTTP_CALLER_MAX == TOKEN_SUBJECT_MAX, "a caller is a token's subject");

struct auth {
    token_verifier *verifier;
};

static void fatal(const char *var, const char *why)
{
    log_error("msg=\"invalid configuration\" var=%s reason=\"%s\"", var, why);
    exit(2);
}

/* Adds every path of a comma-separated list. */
static void add_key_list(token_verifier *v, const char *var, const char *list, unsigned roles)
{
    char *copy = strdup(list), *save = NULL;
    if (!copy)
        fatal(var, "out of memory");
    for (char *p = strtok_r(copy, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        while (*p == ' ')
            p++;
        if (!*p)
            continue;
        char err[512];
        if (token_verifier_add_file(v, p, roles, err, sizeof err) != 0)
            fatal(var, err);
        unsigned char pk[32];
        char kid[TOKEN_KID_LEN + 1];
        token_read_public_file(p, pk, NULL, 0);
        token_kid_of(pk, kid);
        log_info("msg=\"token key trusted\" var=%s kid=%s path=%s", var, kid, p);
    }
    free(copy);
}

auth *auth_from_env(void)
{
    if (token_init() != 0)
        fatal("TOKEN_PUBLIC_KEYS", "libsodium cannot start");
    auth *a = calloc(1, sizeof *a);
    a->verifier = a ? token_verifier_new() : NULL;
    if (!a || !a->verifier)
        fatal("TOKEN_PUBLIC_KEYS", "out of memory");

    char *account_pub = config_data_path("keys/account.pub");
    const char *people = config_str("TOKEN_PUBLIC_KEYS", account_pub);
    if (access(people, F_OK) != 0 && people == account_pub)
        fatal("TOKEN_PUBLIC_KEYS", "no public key to verify tokens with: <DATA_DIR>/keys/"
              "account.pub is created by carshare-account (or `carshare-account keygen`)");
    add_key_list(a->verifier, "TOKEN_PUBLIC_KEYS", people, TOKEN_ROLE_CUSTOMER | TOKEN_ROLE_STAFF);
    free(account_pub);

    char *order_pub = config_data_path("keys/order.pub");
    const char *services = config_str("TOKEN_SERVICE_KEYS", NULL);
    if (services)
        add_key_list(a->verifier, "TOKEN_SERVICE_KEYS", services, TOKEN_ROLE_SERVICE);
    else if (access(order_pub, F_OK) == 0)
        add_key_list(a->verifier, "TOKEN_SERVICE_KEYS", order_pub, TOKEN_ROLE_SERVICE);
    free(order_pub);
    return a;
}

auth *auth_new(token_verifier *v)
{
    auth *a = calloc(1, sizeof *a);
    if (a)
        a->verifier = v;
    return a;
}

void auth_free(auth *a)
{
    if (!a)
        return;
    token_verifier_free(a->verifier);
    free(a);
}

token_verifier *auth_verifier(auth *a) { return a->verifier; }

/* ---- the check ---- */

static void refuse_401(http_req *r, token_result why)
{
    char challenge[200];
    if (why == TOKEN_MISSING)
        snprintf(challenge, sizeof challenge, "Bearer realm=\"carshare\"");
    else
        snprintf(challenge, sizeof challenge, "Bearer realm=\"carshare\", error=\"invalid_token\"");
    http_set_header(r, "WWW-Authenticate", challenge);
    metrics_counter_add("carshare_auth_refusals_total", "status=\"401\"", 1);
    http_reply_error(r, 401, "%s", token_result_message(why));
}

static void allowed_names(unsigned roles, char *out, size_t size)
{
    static const token_role all[] = {TOKEN_ROLE_CUSTOMER, TOKEN_ROLE_STAFF, TOKEN_ROLE_SERVICE};
    out[0] = '\0';
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (!(roles & all[i]))
            continue;
        size_t n = strlen(out);
        snprintf(out + n, size - n, "%s%s", n ? ", " : "", token_role_name(all[i]));
    }
}

static void refuse_403(http_req *r, token_role role, unsigned roles)
{
    char names[64];
    allowed_names(roles, names, sizeof names);
    metrics_counter_add("carshare_auth_refusals_total", "status=\"403\"", 1);
    http_reply_error(r, 403, "%s %s is not allowed for role %s (allowed: %s)",
                     http_req_method(r), http_req_path(r), token_role_name(role), names);
}

/* The token of the Authorization header: TOKEN_OK with token and len set. */
static token_result bearer_of(const http_req *r, const char **token, size_t *len)
{
    if (http_req_query(r, "access_token") || http_req_query(r, "token"))
        return TOKEN_IN_QUERY;
    const char *h = http_req_header(r, "Authorization");
    if (!h || !*h)
        return TOKEN_MISSING;
    if (strncasecmp(h, "Bearer ", 7) != 0)
        return TOKEN_NOT_BEARER;
    const char *t = h + 7;
    while (*t == ' ')
        t++;
    size_t n = strlen(t);
    while (n && t[n - 1] == ' ')
        n--;
    *token = t;
    *len = n;
    return n ? TOKEN_OK : TOKEN_MISSING;
}

bool auth_check(auth *a, http_req *r, unsigned roles)
{
    const char *t = NULL;
    size_t len = 0;
    token_claims c;
    token_result res = bearer_of(r, &t, &len);
    if (res == TOKEN_OK)
        res = token_verify(a->verifier, t, len, (long long)time(NULL), &c);
    if (res != TOKEN_OK) {
        refuse_401(r, res);
        return false;
    }
    if (!(roles & c.role)) {
        refuse_403(r, c.role, roles);
        return false;
    }
    http_req_set_caller(r, c.role, c.sub);
    return true;
}

bool auth_guard(http_req *r, unsigned roles, void *arg)
{
    return auth_check(arg, r, roles);
}

/* ---- ownership ---- */

bool auth_is_staff(const http_req *r)
{
    return http_req_caller_role(r) == TOKEN_ROLE_STAFF;
}

bool auth_is_customer(const http_req *r)
{
    return http_req_caller_role(r) == TOKEN_ROLE_CUSTOMER;
}

const char *auth_owner_filter(const http_req *r)
{
    return auth_is_customer(r) ? http_req_caller(r) : NULL;
}

bool auth_may_see(const http_req *r, const char *customer_id)
{
    if (!auth_is_customer(r))
        return http_req_caller_role(r) != 0;
    return customer_id && strcmp(customer_id, http_req_caller(r)) == 0;
}
