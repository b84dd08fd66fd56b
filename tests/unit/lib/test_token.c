/* test_token.c: signed tokens -- keys on disk, signing, and every refusal
 * of the verifier (lib/token.h), the cache, a service's minter, and the
 * cost of a verification (printed, never asserted: speed is for benches). */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "testing.h"
#include "token.h"

static char dir[128];
static long long now;

static char *path_in(const char *name)
{
    static char buf[4][256];
    static int next;
    char *p = buf[next++ % 4];
    snprintf(p, sizeof buf[0], "%s/%s", dir, name);
    return p;
}

static token_key *key_at(const char *name)
{
    char err[256];
    token_key *k = token_key_load_or_create(path_in(name), err, sizeof err);
    if (!k)
        fprintf(stderr, "%s\n", err);
    CHECK(k != NULL);
    return k;
}

static void b64url(const void *bin, size_t len, char *out, size_t size)
{
    sodium_bin2base64(out, size, bin, len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

/* header.claims.signature from raw JSON texts and a raw signature. */
static void forge(char *out, size_t size, const char *header, const char *claims,
                  const unsigned char *sig, size_t sig_len)
{
    char h[256], c[512], s[128] = "";
    b64url(header, strlen(header), h, sizeof h);
    b64url(claims, strlen(claims), c, sizeof c);
    if (sig_len)
        b64url(sig, sig_len, s, sizeof s);
    snprintf(out, size, "%s.%s.%s", h, c, s);
}

static token_result verify(token_verifier *v, const char *t, token_claims *c)
{
    return token_verify(v, t, strlen(t), now, c);
}

static void test_keys(void)
{
    token_key *a = key_at("keys/account.key");
    token_key *again = key_at("keys/account.key");
    CHECK_STR(token_key_id(a), token_key_id(again));   /* loaded, not replaced */
    CHECK_INT(strlen(token_key_id(a)), TOKEN_KID_LEN);
    struct stat st;
    CHECK_INT(stat(path_in("keys/account.key"), &st), 0);
    CHECK_INT(st.st_mode & 0777, 0600);
    CHECK_INT(stat(path_in("keys"), &st), 0);
    CHECK_INT(st.st_mode & 0777, 0700);
    unsigned char pk[32];
    CHECK_INT(token_read_public_file(path_in("keys/account.pub"), pk, NULL, 0), 0);
    CHECK(memcmp(pk, token_key_public(a), 32) == 0);
    char *pub = token_public_path("x/y.key");
    CHECK_STR(pub, "x/y.pub");
    free(pub);
    pub = token_public_path("x/y.pem");
    CHECK_STR(pub, "x/y.pem.pub");
    free(pub);

    /* A public key lost is written again from the private one. */
    unlink(path_in("keys/account.pub"));
    token_key *third = key_at("keys/account.key");
    CHECK_INT(token_read_public_file(path_in("keys/account.pub"), pk, NULL, 0), 0);
    CHECK(memcmp(pk, token_key_public(a), 32) == 0);

    /* Not a key: refused with a reason. */
    FILE *f = fopen(path_in("junk.key"), "w");
    fputs("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", f);
    fclose(f);
    char err[256] = "";
    CHECK(token_key_load_or_create(path_in("junk.key"), err, sizeof err) == NULL);
    CHECK(strstr(err, "not an Ed25519 private key") != NULL);
    CHECK(token_read_public_file(path_in("nothing.pub"), pk, err, sizeof err) == -1);
    token_key_free(a);
    token_key_free(again);
    token_key_free(third);
}

static void test_sign_and_verify(token_key *k, token_verifier *v)
{
    char t[TOKEN_MAX_LEN];
    token_claims c;
    CHECK(token_sign(k, "kim", TOKEN_ROLE_CUSTOMER, now, 3600, t, sizeof t) > 0);
    CHECK_INT(verify(v, t, &c), TOKEN_OK);
    CHECK_STR(c.sub, "kim");
    CHECK_INT(c.role, TOKEN_ROLE_CUSTOMER);
    CHECK_INT(c.iat, now);
    CHECK_INT(c.exp, now + 3600);
    CHECK_STR(c.kid, token_key_id(k));
    CHECK(token_sign(k, "admin", TOKEN_ROLE_STAFF, now, 60, t, sizeof t) > 0);
    CHECK_INT(verify(v, t, &c), TOKEN_OK);
    CHECK_INT(c.role, TOKEN_ROLE_STAFF);
    /* Not signable: a subject outside the alphabet, a lifetime beyond a day. */
    CHECK_INT(token_sign(k, "Kim", TOKEN_ROLE_CUSTOMER, now, 60, t, sizeof t), -1);
    CHECK_INT(token_sign(k, "kim", TOKEN_ROLE_CUSTOMER, now, 86401, t, sizeof t), -1);
    CHECK_INT(token_sign(k, "kim", TOKEN_ROLE_CUSTOMER, now, 60, t, 20), -1);
}

static void test_refusals(token_key *k, token_key *stranger, token_verifier *v)
{
    char t[TOKEN_MAX_LEN * 2], good[TOKEN_MAX_LEN], header[160], claims[200];
    token_claims c;
    CHECK(token_sign(k, "kim", TOKEN_ROLE_CUSTOMER, now, 3600, good, sizeof good) > 0);
    snprintf(claims, sizeof claims, "{\"sub\":\"kim\",\"role\":\"staff\",\"iat\":%lld,"
             "\"exp\":%lld}", now, now + 3600);

    CHECK_INT(token_verify(v, NULL, 0, now, &c), TOKEN_MISSING);
    CHECK_INT(verify(v, "abc", &c), TOKEN_MALFORMED);
    CHECK_INT(verify(v, "a.b", &c), TOKEN_MALFORMED);
    CHECK_INT(verify(v, "a.b.c.d", &c), TOKEN_MALFORMED);
    CHECK_INT(verify(v, "!!!.???.***", &c), TOKEN_MALFORMED);
    forge(t, sizeof t, "not json", claims, (const unsigned char *)"x", 1);
    CHECK_INT(verify(v, t, &c), TOKEN_MALFORMED);

    /* alg none: unsigned, and claiming staff. */
    forge(t, sizeof t, "{\"alg\":\"none\",\"typ\":\"JWT\"}", claims, NULL, 0);
    CHECK_INT(verify(v, t, &c), TOKEN_ALG_NONE);
    forge(t, sizeof t, "{\"alg\":\"NONE\"}", claims, NULL, 0);
    CHECK_INT(verify(v, t, &c), TOKEN_ALG_NONE);

    /* HS256 keyed with the public key (the classic confusion attack). */
    snprintf(header, sizeof header, "{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"%s\"}",
             token_key_id(k));
    forge(t, sizeof t, header, claims, NULL, 0);
    unsigned char mac[crypto_auth_hmacsha256_BYTES];
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, token_key_public(k), 32);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)t, strlen(t) - 1);
    crypto_auth_hmacsha256_final(&st, mac);
    forge(t, sizeof t, header, claims, mac, sizeof mac);
    CHECK_INT(verify(v, t, &c), TOKEN_ALG_HMAC);
    forge(t, sizeof t, "{\"alg\":\"RS256\",\"kid\":\"abcdefghijkl\"}", claims, mac, sizeof mac);
    CHECK_INT(verify(v, t, &c), TOKEN_ALG_OTHER);

    /* Signed by a key nobody trusts; a kid that names no key. */
    CHECK(token_sign(stranger, "kim", TOKEN_ROLE_CUSTOMER, now, 3600, t, sizeof t) > 0);
    CHECK_INT(verify(v, t, &c), TOKEN_UNKNOWN_KEY);
    forge(t, sizeof t, "{\"alg\":\"EdDSA\",\"kid\":\"AAAAAAAAAAAA\"}", claims, mac, sizeof mac);
    CHECK_INT(verify(v, t, &c), TOKEN_UNKNOWN_KEY);

    /* The claims changed after signing (customer -> staff): bad signature. */
    snprintf(t, sizeof t, "%s", good);
    char *dot1 = strchr(t, '.'), *dot2 = strchr(dot1 + 1, '.');
    char forged_claims[400];
    b64url(claims, strlen(claims), forged_claims, sizeof forged_claims);
    char sig[200];
    snprintf(sig, sizeof sig, "%s", dot2 + 1);
    snprintf(dot1 + 1, sizeof t - (size_t)(dot1 + 1 - t), "%s.%s", forged_claims, sig);
    CHECK_INT(verify(v, t, &c), TOKEN_BAD_SIGNATURE);
    /* One signature byte changed. */
    snprintf(t, sizeof t, "%s", good);
    char *s = strrchr(t, '.') + 10;
    *s = *s == 'A' ? 'B' : 'A';
    CHECK_INT(verify(v, t, &c), TOKEN_BAD_SIGNATURE);
    /* A signature of the wrong length. */
    snprintf(t, sizeof t, "%s", good);
    strrchr(t, '.')[20] = '\0';
    CHECK_INT(verify(v, t, &c), TOKEN_MALFORMED);

    /* Expired; issued in the future (beyond the allowed skew; within it is fine). */
    CHECK(token_sign(k, "kim", TOKEN_ROLE_CUSTOMER, now - 7200, 3600, t, sizeof t) > 0);
    CHECK_INT(verify(v, t, &c), TOKEN_EXPIRED);
    CHECK(token_sign(k, "kim", TOKEN_ROLE_CUSTOMER, now + 3600, 3600, t, sizeof t) > 0);
    CHECK_INT(verify(v, t, &c), TOKEN_NOT_YET_VALID);
    CHECK(token_sign(k, "kim", TOKEN_ROLE_CUSTOMER, now + 30, 3600, t, sizeof t) > 0);
    CHECK_INT(verify(v, t, &c), TOKEN_OK);

    /* Oversized. */
    memset(t, 'a', TOKEN_MAX_LEN + 1);
    t[TOKEN_MAX_LEN + 1] = '\0';
    CHECK_INT(verify(v, t, &c), TOKEN_TOO_LARGE);

    /* Every refusal has its own words. */
    for (int r = TOKEN_MISSING; r <= TOKEN_EXPIRED; r++)
        CHECK(strlen(token_result_message((token_result)r)) > 10);
}

static void test_roles_per_key(token_key *svc_key)
{
    /* A service key signs only service tokens: a staff token it signed is refused. */
    token_verifier *v = token_verifier_new();
    CHECK_INT(token_verifier_add(v, token_key_public(svc_key), TOKEN_ROLE_SERVICE), 0);
    char t[TOKEN_MAX_LEN];
    token_claims c;
    CHECK(token_sign(svc_key, "order", TOKEN_ROLE_SERVICE, now, 300, t, sizeof t) > 0);
    CHECK_INT(verify(v, t, &c), TOKEN_OK);
    CHECK_INT(c.role, TOKEN_ROLE_SERVICE);
    CHECK(token_sign(svc_key, "order", TOKEN_ROLE_STAFF, now, 300, t, sizeof t) > 0);
    CHECK_INT(verify(v, t, &c), TOKEN_ROLE_NOT_SIGNED);
    token_verifier_free(v);
}

static void test_rotation(token_key *old_key, token_key *new_key)
{
    /* Both keys trusted during a rotation; the old one dropped afterwards. */
    token_verifier *both = token_verifier_new(), *after = token_verifier_new();
    unsigned people = TOKEN_ROLE_CUSTOMER | TOKEN_ROLE_STAFF;
    CHECK_INT(token_verifier_add_file(both, path_in("keys/account.pub"), people, NULL, 0), 0);
    CHECK_INT(token_verifier_add_file(both, path_in("keys/account-2.pub"), people, NULL, 0), 0);
    CHECK_INT(token_verifier_add_file(after, path_in("keys/account-2.pub"), people, NULL, 0), 0);
    CHECK_INT(token_verifier_count(both), 2);
    char t_old[TOKEN_MAX_LEN], t_new[TOKEN_MAX_LEN];
    token_claims c;
    CHECK(token_sign(old_key, "kim", TOKEN_ROLE_CUSTOMER, now, 600, t_old, sizeof t_old) > 0);
    CHECK(token_sign(new_key, "kim", TOKEN_ROLE_CUSTOMER, now, 600, t_new, sizeof t_new) > 0);
    CHECK_INT(verify(both, t_old, &c), TOKEN_OK);
    CHECK_INT(verify(both, t_new, &c), TOKEN_OK);
    CHECK_INT(verify(after, t_old, &c), TOKEN_UNKNOWN_KEY);
    CHECK_INT(verify(after, t_new, &c), TOKEN_OK);
    token_verifier_free(both);
    token_verifier_free(after);
}

static void test_cache(token_key *k)
{
    token_verifier *v = token_verifier_new();
    token_verifier_add(v, token_key_public(k), TOKEN_ROLE_CUSTOMER);
    char t[TOKEN_MAX_LEN];
    token_claims c;
    CHECK(token_sign(k, "kim", TOKEN_ROLE_CUSTOMER, now, 600, t, sizeof t) > 0);
    CHECK_INT(verify(v, t, &c), TOKEN_OK);
    CHECK_INT(verify(v, t, &c), TOKEN_OK);
    CHECK_INT(token_verifier_stats(v).misses, 1);
    CHECK_INT(token_verifier_stats(v).hits, 1);
    CHECK_STR(c.sub, "kim");
    /* A cached token expires all the same. */
    CHECK_INT(token_verify(v, t, strlen(t), now + 601, &c), TOKEN_EXPIRED);
    /* The set is chosen by the length and the signature's end only: a
     * forgery with the cached token's length and signature but other
     * claims lands in the same set, and is refused all the same (the
     * whole token is compared), without counting as a hit. */
    char forged[TOKEN_MAX_LEN];
    snprintf(forged, sizeof forged, "%s", t);
    char *claims = strchr(forged, '.') + 1;
    claims[2] = claims[2] == 'A' ? 'B' : 'A';
    CHECK(verify(v, forged, &c) != TOKEN_OK);
    CHECK(verify(v, forged, &c) != TOKEN_OK);
    CHECK_INT(token_verifier_stats(v).hits, 2);   /* the first two checks of t */
    CHECK_INT(verify(v, t, &c), TOKEN_OK);      /* still cached: a hit */
    CHECK_INT(token_verifier_stats(v).hits, 3);
    /* A refused token is never cached: it is refused again, in full. */
    t[strlen(t) - 5] ^= 1;
    CHECK(verify(v, t, &c) != TOKEN_OK);
    CHECK(verify(v, t, &c) != TOKEN_OK);
    CHECK_INT(token_verifier_stats(v).hits, 3);
    token_verifier_free(v);
}

static void test_minter(token_key *k)
{
    token_minter *m = token_minter_new(k, "order", TOKEN_ROLE_SERVICE, 300);
    CHECK(m != NULL);
    char first[TOKEN_MAX_LEN + 8];
    snprintf(first, sizeof first, "%s", token_minter_bearer(m, now));
    CHECK(strncmp(first, "Bearer ", 7) == 0);
    CHECK_STR(token_minter_bearer(m, now + 100), first);      /* reused */
    CHECK(strcmp(token_minter_bearer(m, now + 201), first) != 0);   /* renewed */
    token_minter_free(m);
    CHECK(token_minter_new(k, "Order!", TOKEN_ROLE_SERVICE, 300) == NULL);
}

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The figures of token.h's design note: a full verification and a cache
 * hit, per call. Printed only. */
static void measure(token_key *k)
{
    enum { N = 400 };
    static char tokens[N][TOKEN_MAX_LEN];
    token_verifier *v = token_verifier_new();
    token_verifier_add(v, token_key_public(k), TOKEN_ROLE_CUSTOMER);
    for (int i = 0; i < N; i++) {
        char sub[32];
        snprintf(sub, sizeof sub, "customer-%d", i);
        token_sign(k, sub, TOKEN_ROLE_CUSTOMER, now, 3600, tokens[i], sizeof tokens[i]);
    }
    token_claims c;
    int ok = 0;
    double t0 = seconds_now();
    for (int i = 0; i < N; i++)
        ok += verify(v, tokens[i], &c) == TOKEN_OK;
    double t1 = seconds_now();
    for (int round = 0; round < 25; round++)
        for (int i = 0; i < N; i++)
            ok += verify(v, tokens[i], &c) == TOKEN_OK;
    double t2 = seconds_now();
    CHECK_INT(ok, 26 * N);
    fprintf(stderr, "token: verify %.1f us (full, %d tokens), %.2f us (cached, %d checks); "
            "cache %llu hits %llu misses\n", (t1 - t0) * 1e6 / N, N, (t2 - t1) * 1e6 / (25 * N),
            25 * N, token_verifier_stats(v).hits, token_verifier_stats(v).misses);
    token_verifier_free(v);
}

int main(void)
{
    if (token_init() != 0 || !temp_dir_make(dir, sizeof dir, "token"))
        return 1;
    now = (long long)time(NULL);
    test_keys();
    token_key *k = key_at("keys/account.key");
    token_key *k2 = key_at("keys/account-2.key");
    token_key *stranger = key_at("elsewhere/other.key");
    token_verifier *v = token_verifier_new();
    CHECK_INT(token_verifier_add_file(v, path_in("keys/account.pub"),
                                      TOKEN_ROLE_CUSTOMER | TOKEN_ROLE_STAFF, NULL, 0), 0);
    test_sign_and_verify(k, v);
    test_refusals(k, stranger, v);
    test_roles_per_key(stranger);
    test_rotation(k, k2);
    test_cache(k);
    test_minter(k);
    measure(k);
    token_verifier_free(v);
    token_key_free(k);
    token_key_free(k2);
    token_key_free(stranger);
    temp_dir_remove(dir);
    return test_done("lib/test_token");
}
