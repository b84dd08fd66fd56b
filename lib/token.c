/* token.c: JWT with Ed25519 signatures (see token.h for the format, the
 * refusals and the measured costs).
 *
 * Verification order matters for what an attacker learns and what a bad
 * token costs us: cheap structural checks first (length, three parts,
 * base64url alphabet), then the header (alg, kid) so that an unknown key or
 * a forbidden alg is refused before any signature work, then the
 * signature, and only then are the claims trusted enough to be read. A
 * refusal never depends on a claim of an unsigned token.
 *
 * Key files are written with O_EXCL into a temporary name and linked into
 * place, so two processes creating the same key at once end up agreeing on
 * one of them, and a crash mid-write never leaves a half key behind. */
#include "token.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY_FILE_MAX 4096
#define CACHE_SLOTS 4096             /* a power of two; two ways per set */
#define CACHE_TOKEN_MAX 1024         /* longer tokens are verified every time */
#define HEADER_MAX 256               /* decoded header bytes */
#define CLAIMS_MAX 512               /* decoded claims bytes */

/* DER prefixes of an Ed25519 key: PKCS#8 private key (RFC 8410) followed by
 * the 32-byte seed, SubjectPublicKeyInfo followed by the 32-byte key. */
static const unsigned char PKCS8_PREFIX[16] = {0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06,
                                               0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20};
static const unsigned char SPKI_PREFIX[12] = {0x30, 0x2a, 0x30, 0x05, 0x06, 0x03,
                                              0x2b, 0x65, 0x70, 0x03, 0x21, 0x00};

struct token_key {
    unsigned char secret[crypto_sign_SECRETKEYBYTES];
    unsigned char public_key[crypto_sign_PUBLICKEYBYTES];
    char kid[TOKEN_KID_LEN + 1];
    char header_b64[128];            /* base64url of this key's header, made once */
};

typedef struct trusted_key {
    unsigned char public_key[crypto_sign_PUBLICKEYBYTES];
    char kid[TOKEN_KID_LEN + 1];
    unsigned roles;
} trusted_key;

typedef struct cache_entry {
    char *token;                     /* NULL: empty slot */
    size_t len;
    token_claims claims;
} cache_entry;

struct token_verifier {
    trusted_key keys[TOKEN_MAX_KEYS];
    int nkeys;
    unsigned char hash_key[crypto_shorthash_KEYBYTES];
    cache_entry cache[CACHE_SLOTS];
    token_cache_stats stats;
};

/* ---- roles, subjects, messages ---- */

const char *token_role_name(token_role role)
{
    switch (role) {
    case TOKEN_ROLE_CUSTOMER: return "customer";
    case TOKEN_ROLE_STAFF: return "staff";
    case TOKEN_ROLE_SERVICE: return "service";
    }
    return "unknown";
}

bool token_role_parse(const char *name, token_role *out)
{
    static const token_role roles[] = {TOKEN_ROLE_CUSTOMER, TOKEN_ROLE_STAFF, TOKEN_ROLE_SERVICE};
    for (size_t i = 0; name && i < sizeof roles / sizeof roles[0]; i++) {
        if (strcmp(name, token_role_name(roles[i])) == 0) {
            *out = roles[i];
            return true;
        }
    }
    return false;
}

bool token_subject_valid(const char *sub)
{
    size_t n = sub ? strlen(sub) : 0;
    if (n < 1 || n > TOKEN_SUBJECT_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = sub[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

const char *token_result_message(token_result r)
{
    switch (r) {
    case TOKEN_OK: return "the token is valid";
    case TOKEN_MISSING:
        return "this call needs a signed-in user: send Authorization: Bearer <token> "
               "(POST /sessions gives one)";
    case TOKEN_IN_QUERY:
        return "tokens are not accepted in the query string (they would end up in logs): "
               "send Authorization: Bearer <token>";
    case TOKEN_NOT_BEARER: return "the Authorization header must be \"Bearer <token>\"";
    case TOKEN_TOO_LARGE: return "the token is too large";
    case TOKEN_MALFORMED: return "the token is malformed: sign in again";
    case TOKEN_ALG_NONE: return "the token is not signed (alg none is not accepted)";
    case TOKEN_ALG_HMAC: return "the token's algorithm HMAC is not accepted: tokens are signed "
                                "with EdDSA";
    case TOKEN_ALG_OTHER: return "the token's algorithm is not accepted: tokens are signed "
                                 "with EdDSA";
    case TOKEN_UNKNOWN_KEY: return "the token was signed with an unknown key: sign in again";
    case TOKEN_BAD_SIGNATURE: return "the token's signature is not valid";
    case TOKEN_BAD_CLAIMS: return "the token's claims are not valid";
    case TOKEN_ROLE_NOT_SIGNED: return "the token's key may not sign for its role";
    case TOKEN_NOT_YET_VALID: return "the token was issued in the future: check the clock";
    case TOKEN_EXPIRED: return "the token has expired: sign in again";
    }
    return "the token is not valid";
}

int token_init(void)
{
    return sodium_init() < 0 ? -1 : 0;
}

static void set_err(char *err, size_t errlen, const char *fmt, const char *a, const char *b)
{
    if (err && errlen)
        snprintf(err, errlen, fmt, a, b ? b : "");
}

/* ---- base64url and key ids ---- */

static size_t b64url_encode(char *out, size_t outlen, const unsigned char *bin, size_t len)
{
    const int v = sodium_base64_VARIANT_URLSAFE_NO_PADDING;
    if (outlen < sodium_base64_ENCODED_LEN(len, v))
        return 0;
    sodium_bin2base64(out, outlen, bin, len, v);
    return strlen(out);
}

/* Decodes exactly one base64url part (no padding, no other byte). -1 on
 * anything else or when it does not fit. */
static long b64url_decode(unsigned char *out, size_t outlen, const char *in, size_t len)
{
    size_t n = 0;
    const char *end = NULL;
    if (sodium_base642bin(out, outlen, in, len, NULL, &n, &end,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0
        || end != in + len)
        return -1;
    return (long)n;
}

void token_kid_of(const unsigned char *public_key, char *kid)
{
    unsigned char digest[crypto_hash_sha256_BYTES];
    char text[32];
    crypto_hash_sha256(digest, public_key, crypto_sign_PUBLICKEYBYTES);
    b64url_encode(text, sizeof text, digest, 9);   /* 9 bytes -> 12 characters */
    memcpy(kid, text, TOKEN_KID_LEN);
    kid[TOKEN_KID_LEN] = '\0';
}

/* ---- key files ---- */

char *token_public_path(const char *private_path)
{
    size_t n = strlen(private_path);
    bool dot_key = n > 4 && strcmp(private_path + n - 4, ".key") == 0;
    size_t stem = dot_key ? n - 4 : n;
    char *p = malloc(stem + 5);
    if (!p)
        return NULL;
    memcpy(p, private_path, stem);
    memcpy(p + stem, ".pub", 5);
    return p;
}

/* Reads a whole small file. -1 with errno set; 0 and *len otherwise. */
static int read_small_file(const char *path, char *buf, size_t size, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, size - 1);
    int saved = errno;
    close(fd);
    if (n < 0) {
        errno = saved;
        return -1;
    }
    buf[n] = '\0';
    *len = (size_t)n;
    return 0;
}

/* The DER inside a PEM block of the given label ("PUBLIC KEY"). */
static long pem_decode(const char *text, const char *label, unsigned char *der, size_t size)
{
    char begin[64], end[64];
    snprintf(begin, sizeof begin, "-----BEGIN %s-----", label);
    snprintf(end, sizeof end, "-----END %s-----", label);
    const char *b = strstr(text, begin);
    const char *e = b ? strstr(b, end) : NULL;
    if (!b || !e)
        return -1;
    b += strlen(begin);
    size_t n = 0;
    const char *stop = NULL;
    if (sodium_base642bin(der, size, b, (size_t)(e - b), " \t\r\n", &n, &stop,
                          sodium_base64_VARIANT_ORIGINAL) != 0 || stop != e)
        return -1;
    return (long)n;
}

/* The 32 bytes after a DER prefix, when der is exactly prefix + 32. */
static bool der_key(const unsigned char *der, long n, const unsigned char *prefix,
                    size_t plen, unsigned char *key32)
{
    if (n != (long)plen + 32 || memcmp(der, prefix, plen) != 0)
        return false;
    memcpy(key32, der + plen, 32);
    return true;
}

int token_read_public_file(const char *path, unsigned char *public_key, char *err,
                           size_t errlen)
{
    char text[KEY_FILE_MAX];
    unsigned char der[128];
    size_t len;
    if (read_small_file(path, text, sizeof text, &len) != 0) {
        set_err(err, errlen, "cannot read the public key %s: %s", path, strerror(errno));
        return -1;
    }
    long n = pem_decode(text, "PUBLIC KEY", der, sizeof der);
    if (n < 0 || !der_key(der, n, SPKI_PREFIX, sizeof SPKI_PREFIX, public_key)) {
        set_err(err, errlen, "%s is not an Ed25519 public key in PEM%s", path,
                " (openssl pkey -pubout writes one)");
        return -1;
    }
    return 0;
}

static void pem_encode(char *out, size_t size, const char *label, const unsigned char *der,
                       size_t n)
{
    char b64[128];
    sodium_bin2base64(b64, sizeof b64, der, n, sodium_base64_VARIANT_ORIGINAL);
    snprintf(out, size, "-----BEGIN %s-----\n%s\n-----END %s-----\n", label, b64, label);
}

/* Writes text to path through a temporary file: 0600, fsync'ed. With
 * `exclusive`, an existing path is left alone (link fails: EEXIST);
 * otherwise it is replaced (rename). */
static int write_key_file(const char *path, const char *text, bool exclusive)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    size_t n = strlen(text);
    bool ok = write(fd, text, n) == (ssize_t)n && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    int rc = ok ? (exclusive ? link(tmp, path) : rename(tmp, path)) : -1;
    int saved = errno;
    unlink(tmp);
    errno = saved;
    return rc;
}

/* mkdir -p of the directory holding path, mode 0700 for what it creates. */
static void make_key_dir(const char *path)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return;
    *slash = '\0';
    for (char *p = dir + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(dir, 0700);
            *p = '/';
        }
    }
    mkdir(dir, 0700);
}

static void key_finish(token_key *k)
{
    crypto_sign_ed25519_sk_to_pk(k->public_key, k->secret);
    token_kid_of(k->public_key, k->kid);
    char header[96];
    snprintf(header, sizeof header, "{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":\"%s\"}", k->kid);
    b64url_encode(k->header_b64, sizeof k->header_b64, (const unsigned char *)header,
                  strlen(header));
}

/* Creates a key at path unless one appeared meanwhile (then 1: load it). */
static int key_create(const char *path, token_key *k)
{
    unsigned char seed[crypto_sign_SEEDBYTES], der[sizeof PKCS8_PREFIX + 32];
    char pem[256];
    randombytes_buf(seed, sizeof seed);
    crypto_sign_seed_keypair(k->public_key, k->secret, seed);
    memcpy(der, PKCS8_PREFIX, sizeof PKCS8_PREFIX);
    memcpy(der + sizeof PKCS8_PREFIX, seed, sizeof seed);
    pem_encode(pem, sizeof pem, "PRIVATE KEY", der, sizeof der);
    make_key_dir(path);
    int rc = write_key_file(path, pem, true);
    sodium_memzero(seed, sizeof seed);
    sodium_memzero(der, sizeof der);
    sodium_memzero(pem, sizeof pem);
    if (rc != 0)
        return errno == EEXIST ? 1 : -1;
    key_finish(k);
    return 0;
}

static int key_load(const char *path, token_key *k, char *err, size_t errlen)
{
    char text[KEY_FILE_MAX];
    unsigned char der[128], seed[crypto_sign_SEEDBYTES];
    size_t len;
    if (read_small_file(path, text, sizeof text, &len) != 0) {
        set_err(err, errlen, "cannot read the private key %s: %s", path, strerror(errno));
        return -1;
    }
    long n = pem_decode(text, "PRIVATE KEY", der, sizeof der);
    bool ok = n > 0 && der_key(der, n, PKCS8_PREFIX, sizeof PKCS8_PREFIX, seed);
    sodium_memzero(text, sizeof text);
    sodium_memzero(der, sizeof der);
    if (!ok) {
        set_err(err, errlen, "%s is not an Ed25519 private key in PEM%s", path,
                " (openssl genpkey -algorithm ed25519 writes one)");
        return -1;
    }
    crypto_sign_seed_keypair(k->public_key, k->secret, seed);
    sodium_memzero(seed, sizeof seed);
    key_finish(k);
    return 0;
}

/* Writes the public key file when it is missing or holds another key. */
static int key_publish(const token_key *k, const char *private_path, char *err, size_t errlen)
{
    char *pub = token_public_path(private_path);
    if (!pub)
        return -1;
    unsigned char existing[32];
    int rc = 0;
    if (token_read_public_file(pub, existing, NULL, 0) != 0
        || memcmp(existing, k->public_key, 32) != 0) {
        unsigned char der[sizeof SPKI_PREFIX + 32];
        char pem[256];
        memcpy(der, SPKI_PREFIX, sizeof SPKI_PREFIX);
        memcpy(der + sizeof SPKI_PREFIX, k->public_key, 32);
        pem_encode(pem, sizeof pem, "PUBLIC KEY", der, sizeof der);
        rc = write_key_file(pub, pem, false);
        if (rc != 0)
            set_err(err, errlen, "cannot write the public key %s: %s", pub, strerror(errno));
    }
    free(pub);
    return rc;
}

token_key *token_key_load_or_create(const char *path, char *err, size_t errlen)
{
    token_key *k = sodium_malloc(sizeof *k);
    if (!k) {
        set_err(err, errlen, "out of memory%s%s", "", NULL);
        return NULL;
    }
    int rc = access(path, F_OK) == 0 ? 1 : key_create(path, k);
    if (rc < 0)
        set_err(err, errlen, "cannot create the private key %s: %s", path, strerror(errno));
    if (rc == 1)
        rc = key_load(path, k, err, errlen);
    if (rc == 0)
        rc = key_publish(k, path, err, errlen);
    if (rc != 0) {
        sodium_free(k);
        return NULL;
    }
    return k;
}

void token_key_free(token_key *k)
{
    if (k)
        sodium_free(k);
}

const char *token_key_id(const token_key *k) { return k->kid; }
const unsigned char *token_key_public(const token_key *k) { return k->public_key; }

/* ---- signing ---- */

int token_sign(const token_key *k, const char *sub, token_role role, long long now, int ttl_s,
               char *out, size_t outlen)
{
    if (!token_subject_valid(sub) || ttl_s <= 0 || ttl_s > TOKEN_MAX_LIFETIME_S)
        return -1;
    char claims[256], claims_b64[400];
    int n = snprintf(claims, sizeof claims, "{\"sub\":\"%s\",\"role\":\"%s\",\"iat\":%lld,"
                     "\"exp\":%lld}", sub, token_role_name(role), now, now + ttl_s);
    if (n < 0 || (size_t)n >= sizeof claims
        || !b64url_encode(claims_b64, sizeof claims_b64, (unsigned char *)claims, (size_t)n))
        return -1;
    int signed_len = snprintf(out, outlen, "%s.%s", k->header_b64, claims_b64);
    if (signed_len < 0 || (size_t)signed_len >= outlen)
        return -1;
    unsigned char sig[crypto_sign_BYTES];
    crypto_sign_detached(sig, NULL, (unsigned char *)out, (size_t)signed_len, k->secret);
    out[signed_len] = '.';
    size_t sig_len = b64url_encode(out + signed_len + 1, outlen - (size_t)signed_len - 1, sig,
                                   sizeof sig);
    if (!sig_len)
        return -1;
    return signed_len + 1 + (int)sig_len;
}

/* ---- a process's own credentials ---- */

struct token_minter {
    const token_key *key;
    char sub[TOKEN_SUBJECT_MAX + 1];
    token_role role;
    int ttl_s;
    long long renew_at;              /* 0: nothing minted yet */
    char bearer[7 + TOKEN_MAX_LEN];  /* "Bearer " + token */
};

token_minter *token_minter_new(const token_key *k, const char *sub, token_role role, int ttl_s)
{
    if (!token_subject_valid(sub) || ttl_s < 3 || ttl_s > TOKEN_MAX_LIFETIME_S)
        return NULL;
    token_minter *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->key = k;
    snprintf(m->sub, sizeof m->sub, "%s", sub);
    m->role = role;
    m->ttl_s = ttl_s;
    return m;
}

void token_minter_free(token_minter *m)
{
    free(m);
}

const char *token_minter_bearer(token_minter *m, long long now)
{
    if (m->renew_at && now < m->renew_at)
        return m->bearer;
    memcpy(m->bearer, "Bearer ", 7);
    if (token_sign(m->key, m->sub, m->role, now, m->ttl_s, m->bearer + 7,
                   sizeof m->bearer - 7) < 0) {
        m->renew_at = 0;
        return NULL;
    }
    m->renew_at = now + m->ttl_s - m->ttl_s / 3;
    return m->bearer;
}

/* ---- verifier: keys ---- */

token_verifier *token_verifier_new(void)
{
    token_verifier *v = calloc(1, sizeof *v);
    if (v)
        crypto_shorthash_keygen(v->hash_key);
    return v;
}

static void cache_clear(token_verifier *v)
{
    for (size_t i = 0; i < CACHE_SLOTS; i++) {
        free(v->cache[i].token);
        v->cache[i].token = NULL;
    }
}

void token_verifier_free(token_verifier *v)
{
    if (!v)
        return;
    cache_clear(v);
    free(v);
}

int token_verifier_add(token_verifier *v, const unsigned char *public_key, unsigned roles)
{
    for (int i = 0; i < v->nkeys; i++) {
        if (memcmp(v->keys[i].public_key, public_key, 32) == 0) {
            v->keys[i].roles |= roles;
            return 0;
        }
    }
    if (v->nkeys == TOKEN_MAX_KEYS)
        return -1;
    trusted_key *k = &v->keys[v->nkeys++];
    memcpy(k->public_key, public_key, 32);
    token_kid_of(public_key, k->kid);
    k->roles = roles;
    return 0;
}

int token_verifier_add_file(token_verifier *v, const char *path, unsigned roles, char *err,
                            size_t errlen)
{
    unsigned char pk[32];
    if (token_read_public_file(path, pk, err, errlen) != 0)
        return -1;
    if (token_verifier_add(v, pk, roles) != 0) {
        set_err(err, errlen, "too many token keys (at most %s): %s", "8", path);
        return -1;
    }
    return 0;
}

int token_verifier_count(const token_verifier *v) { return v->nkeys; }

token_cache_stats token_verifier_stats(const token_verifier *v) { return v->stats; }

static const trusted_key *key_by_kid(const token_verifier *v, const char *kid)
{
    for (int i = 0; i < v->nkeys; i++)
        if (strcmp(v->keys[i].kid, kid) == 0)
            return &v->keys[i];
    return NULL;
}

/* ---- verifier: the checks ---- */

typedef struct token_parts {
    const char *header, *claims, *sig;
    size_t header_len, claims_len, sig_len;
} token_parts;

static bool split_parts(const char *t, size_t len, token_parts *p)
{
    const char *dot1 = memchr(t, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - t)) : NULL;
    if (!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - t)))
        return false;
    *p = (token_parts){t, dot1 + 1, dot2 + 1, (size_t)(dot1 - t), (size_t)(dot2 - dot1 - 1),
                       len - (size_t)(dot2 + 1 - t)};
    /* An empty signature is let through to the header check, so that an
     * unsigned ("alg": "none") token is refused as such. */
    return p->header_len && p->claims_len;
}

/* A part decoded and parsed as a JSON object, or NULL. */
static json_t *part_json(const char *part, size_t len, size_t max)
{
    unsigned char buf[CLAIMS_MAX];
    if (max > sizeof buf)
        max = sizeof buf;
    long n = b64url_decode(buf, max, part, len);
    if (n <= 0)
        return NULL;
    json_t *j = json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* The header's verdict on alg, and the kid it names. */
static token_result check_header(const token_parts *p, char *kid)
{
    json_t *h = part_json(p->header, p->header_len, HEADER_MAX);
    if (!h)
        return TOKEN_MALFORMED;
    const char *alg = json_string_value(json_object_get(h, "alg"));
    const char *k = json_string_value(json_object_get(h, "kid"));
    token_result r = TOKEN_OK;
    if (!alg)
        r = TOKEN_MALFORMED;
    else if (strcasecmp(alg, "none") == 0)
        r = TOKEN_ALG_NONE;
    else if (strncmp(alg, "HS", 2) == 0)
        r = TOKEN_ALG_HMAC;
    else if (strcmp(alg, "EdDSA") != 0)
        r = TOKEN_ALG_OTHER;
    else if (!k || strlen(k) != TOKEN_KID_LEN)
        r = TOKEN_UNKNOWN_KEY;
    else
        memcpy(kid, k, TOKEN_KID_LEN + 1);
    json_decref(h);
    return r;
}

static bool claim_int(const json_t *c, const char *name, long long *out)
{
    const json_t *v = json_object_get(c, name);
    if (!json_is_integer(v))
        return false;
    *out = json_integer_value(v);
    return true;
}

static token_result read_claims(const token_parts *p, token_claims *out)
{
    json_t *c = part_json(p->claims, p->claims_len, CLAIMS_MAX);
    if (!c)
        return TOKEN_MALFORMED;
    const char *sub = json_string_value(json_object_get(c, "sub"));
    const char *role = json_string_value(json_object_get(c, "role"));
    bool ok = sub && token_subject_valid(sub) && token_role_parse(role, &out->role)
              && claim_int(c, "iat", &out->iat) && claim_int(c, "exp", &out->exp)
              && out->iat > 0 && out->exp > out->iat   /* both positive: no overflow below */
              && out->exp - out->iat <= TOKEN_MAX_LIFETIME_S;
    if (ok)
        snprintf(out->sub, sizeof out->sub, "%s", sub);
    json_decref(c);
    return ok ? TOKEN_OK : TOKEN_BAD_CLAIMS;
}

static token_result check_times(const token_claims *c, long long now)
{
    if (c->iat > now + TOKEN_CLOCK_SKEW_S)
        return TOKEN_NOT_YET_VALID;
    if (now >= c->exp)
        return TOKEN_EXPIRED;
    return TOKEN_OK;
}

static token_result verify_full(const token_verifier *v, const char *t, size_t len, long long now,
                                token_claims *out)
{
    token_parts p;
    if (!split_parts(t, len, &p))
        return TOKEN_MALFORMED;
    char kid[TOKEN_KID_LEN + 1];
    token_result r = check_header(&p, kid);
    if (r != TOKEN_OK)
        return r;
    const trusted_key *key = key_by_kid(v, kid);
    if (!key)
        return TOKEN_UNKNOWN_KEY;
    unsigned char sig[crypto_sign_BYTES + 1];
    if (p.sig_len == 0 || b64url_decode(sig, sizeof sig, p.sig, p.sig_len) != crypto_sign_BYTES)
        return TOKEN_MALFORMED;
    if (crypto_sign_verify_detached(sig, (const unsigned char *)t,
                                    p.header_len + 1 + p.claims_len, key->public_key) != 0)
        return TOKEN_BAD_SIGNATURE;
    if ((r = read_claims(&p, out)) != TOKEN_OK)
        return r;
    if (!(key->roles & out->role))
        return TOKEN_ROLE_NOT_SIGNED;
    memcpy(out->kid, kid, sizeof kid);
    return check_times(out, now);
}

/* ---- verifier: the cache ---- */

/* The set of two entries a token may be cached in (entries 2i and 2i+1):
 * two ways, so that two busy tokens whose hashes collide do not evict each
 * other at every request.
 *
 * The set is chosen by a keyed SipHash of the token's length and its last
 * CACHE_HASH_TAIL bytes, not of all of it: the end of a token is its
 * signature (64 bytes, 86 in base64url; the last 16 characters carry 96
 * bits of it), which no two tokens that verified share, and which nobody
 * without the signing key chooses; the whole token is still compared
 * before a hit counts (cache_holds), so what is hashed decides only where
 * a token is looked for, never whether it is taken. Tokens that share a tail (forgeries of one signature) all fail
 * verification and are never cached: they cost a lookup in one set, as
 * any bad token does. Measured on the gateway (a ~250-byte staff token):
 * hashing the whole token was ~1,100 of a proxied request's ~29,700
 * instructions (callgrind); the length and tail, ~250 with the memcmp
 * (lookups per request ~1,290 -> ~460). */
#define CACHE_HASH_TAIL 16
static cache_entry *cache_set(token_verifier *v, const char *t, size_t len)
{
    unsigned char in[8 + CACHE_HASH_TAIL];
    size_t tail = len < CACHE_HASH_TAIL ? len : CACHE_HASH_TAIL;
    uint64_t n = (uint64_t)len;
    memcpy(in, &n, 8);
    memcpy(in + 8, t + len - tail, tail);
    unsigned char h[crypto_shorthash_BYTES];
    crypto_shorthash(h, in, 8 + tail, v->hash_key);
    uint32_t i;
    memcpy(&i, h, sizeof i);
    return &v->cache[(i & (CACHE_SLOTS / 2 - 1)) * 2];
}

static bool cache_holds(const cache_entry *e, const char *t, size_t len)
{
    return e->token && e->len == len && memcmp(e->token, t, len) == 0;
}

/* An empty way of the set, else the one that expires first. */
static cache_entry *cache_victim(cache_entry *set)
{
    if (!set[0].token)
        return &set[0];
    if (!set[1].token)
        return &set[1];
    return set[0].claims.exp <= set[1].claims.exp ? &set[0] : &set[1];
}

static void cache_put(cache_entry *e, const char *t, size_t len, const token_claims *c)
{
    char *copy = malloc(len);
    if (!copy)
        return;   /* not cached: the next use verifies again */
    free(e->token);
    memcpy(copy, t, len);
    e->token = copy;
    e->len = len;
    e->claims = *c;
}

token_result token_verify(token_verifier *v, const char *t, size_t len, long long now,
                          token_claims *out)
{
    if (!t || len == 0)
        return TOKEN_MISSING;
    if (len > TOKEN_MAX_LEN)
        return TOKEN_TOO_LARGE;
    cache_entry *set = len <= CACHE_TOKEN_MAX ? cache_set(v, t, len) : NULL;
    for (int way = 0; set && way < 2; way++) {
        if (cache_holds(&set[way], t, len)) {
            v->stats.hits++;
            *out = set[way].claims;
            return check_times(out, now);
        }
    }
    v->stats.misses++;
    token_result r = verify_full(v, t, len, now, out);
    if (r == TOKEN_OK && set)
        cache_put(cache_victim(set), t, len, out);
    return r;
}
