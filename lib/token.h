/* token.h: signed access tokens (JWT, EdDSA over Ed25519, libsodium).
 *
 * A token is `base64url(header).base64url(claims).base64url(signature)`:
 *   header {"alg": "EdDSA", "typ": "JWT", "kid": "<key id>"}
 *   claims {"sub": "kim", "role": "customer", "iat": 1765070000, "exp": 1765073600}
 * The signature is Ed25519 over the first two parts, as RFC 8037 says.
 * Ed25519 and not ES256: libsodium (already our password library) has it,
 * it has no nonce to get wrong, and its signatures verify in ~50 us.
 *
 * Keys: a signing key lives in one PEM file (PKCS#8, "BEGIN PRIVATE KEY",
 * the format `openssl genpkey -algorithm ed25519` writes), its public half
 * beside it (SubjectPublicKeyInfo, "BEGIN PUBLIC KEY"). A key's id (kid) is
 * derived from its public key (12 base64url characters of its SHA-256), so
 * no configuration has to keep names and keys in step.
 *
 * A verifier holds up to TOKEN_MAX_KEYS public keys, each with the roles it
 * may sign for: account's keys sign customer and staff tokens, a service's
 * own key signs only `service` tokens for itself. Two keys of one signer can
 * be trusted at once: that is a key rotation (README). Everything that is
 * not exactly a well-formed, in-date token signed by a trusted key for a
 * role that key may sign is refused, each refusal with its own reason:
 * alg "none", alg "HS256" (the "public key as HMAC secret" attack), any
 * other alg, an unknown kid, a future iat (beyond TOKEN_CLOCK_SKEW_S), an
 * expired token, a lifetime beyond TOKEN_MAX_LIFETIME_S, tokens longer than
 * TOKEN_MAX_LEN, bad base64url, a signature that does not match.
 *
 * Cost (measured on this shared 2-core machine, RelWithDebInfo; test_token
 * prints it at every run as "token: verify ... us"): a full verification --
 * two base64 decodes, two small JSON parses, one Ed25519 verification --
 * takes 45-100 us (three runs: 46, 75, 99 us; the Ed25519 check is most of
 * it). For scale, a request proxied by the gateway costs it ~69k
 * instructions, ~25 us (docs/DESIGN.md), and a rental checks a token in the
 * gateway, in order and (order's service token) in payment: without
 * a cache, checks would cost a rental ~0.2 ms of its ~1.8 ms of CPU and
 * triple the gateway's cost per request. Verified tokens are therefore
 * cached (4096 entries in two-way sets, chosen by a keyed SipHash of the
 * token's length and signature end, entries compared byte for byte, see
 * token.c cache_set): a hit is one SipHash of 24 bytes, one memcmp and one
 * clock read, ~1 % of the gateway's cost per request. A cached
 * token is still refused once expired. Keys are only ever added while a
 * process runs (a rotation restarts it), so a cached entry never outlives
 * the key that signed it.
 *
 * Threads: a verifier and a signing key are used from one thread (a
 * process's loop). token_init() must run before anything else here. */
#ifndef CARSHARE_TOKEN_H
#define CARSHARE_TOKEN_H

#include <stdbool.h>
#include <stddef.h>

#define TOKEN_MAX_LEN 2048           /* longer Authorization values are refused */
#define TOKEN_SUBJECT_MAX 64         /* bytes of `sub`: a customerId, "order" */
#define TOKEN_KID_LEN 12
#define TOKEN_MAX_KEYS 8
#define TOKEN_CLOCK_SKEW_S 60        /* iat may be this far in the future */
#define TOKEN_MAX_LIFETIME_S 86400   /* exp - iat */

/* Roles, as bits so that a route can allow several. */
typedef enum {
    TOKEN_ROLE_CUSTOMER = 1,
    TOKEN_ROLE_STAFF = 2,
    TOKEN_ROLE_SERVICE = 4,
} token_role;
#define TOKEN_ROLES_ALL (TOKEN_ROLE_CUSTOMER | TOKEN_ROLE_STAFF | TOKEN_ROLE_SERVICE)

const char *token_role_name(token_role role);     /* "customer", ... */
bool token_role_parse(const char *name, token_role *out);

typedef struct token_claims {
    char sub[TOKEN_SUBJECT_MAX + 1];
    token_role role;
    long long iat, exp;              /* seconds since the epoch */
    char kid[TOKEN_KID_LEN + 1];
} token_claims;

/* Whether `sub` may be a token's subject: 1..64 bytes of a-z 0-9 . _ -
 * (the contract's customerId alphabet; service names fit it too). */
bool token_subject_valid(const char *sub);

typedef enum {
    TOKEN_OK = 0,
    TOKEN_MISSING,           /* no token at all */
    TOKEN_IN_QUERY,          /* ?access_token=...: refused, it would end up in logs */
    TOKEN_NOT_BEARER,        /* an Authorization header of another scheme */
    TOKEN_TOO_LARGE,
    TOKEN_MALFORMED,         /* not three base64url parts of JSON objects */
    TOKEN_ALG_NONE,
    TOKEN_ALG_HMAC,
    TOKEN_ALG_OTHER,
    TOKEN_UNKNOWN_KEY,
    TOKEN_BAD_SIGNATURE,
    TOKEN_BAD_CLAIMS,        /* sub, role, iat or exp missing or invalid */
    TOKEN_ROLE_NOT_SIGNED,   /* a key signed a role it may not sign for */
    TOKEN_NOT_YET_VALID,     /* iat in the future */
    TOKEN_EXPIRED,
} token_result;

/* A sentence for a 401's message ("the token has expired: sign in again"). */
const char *token_result_message(token_result r);

/* Call once per process before any other function here (libsodium's
 * sodium_init). Returns 0, or -1 when libsodium cannot start. */
int token_init(void);

/* ---- signing (account, and a service minting its own tokens) ---- */

typedef struct token_key token_key;

/* Loads the Ed25519 private key at `path` (PEM, PKCS#8), or when the file
 * does not exist creates one (mode 0600, its directory 0700). Either way
 * (re)writes the public key beside it, at token_public_path(path), when it
 * is missing or does not match. NULL with `err` filled on failure. */
token_key *token_key_load_or_create(const char *path, char *err, size_t errlen);
void token_key_free(token_key *k);
const char *token_key_id(const token_key *k);
const unsigned char *token_key_public(const token_key *k);   /* 32 bytes */

/* "keys/account.key" -> "keys/account.pub"; another name gets ".pub"
 * appended. malloc'ed. */
char *token_public_path(const char *private_path);

/* Writes a signed token for (sub, role), issued at `now`, valid ttl_s
 * seconds, into out (NUL-terminated). Returns its length, or -1 when it
 * does not fit or sub is not a valid subject. */
int token_sign(const token_key *k, const char *sub, token_role role, long long now, int ttl_s,
               char *out, size_t outlen);

/* A process's own credentials for calls to other services: tokens for
 * (sub, role) signed with its key, renewed when less than a third of their
 * lifetime is left, so that a call never leaves with a token about to
 * expire. Borrows the key. */
typedef struct token_minter token_minter;
token_minter *token_minter_new(const token_key *k, const char *sub, token_role role, int ttl_s);
void token_minter_free(token_minter *m);
/* "Bearer <token>", valid until the next call; NULL if it cannot sign. */
const char *token_minter_bearer(token_minter *m, long long now);

/* ---- verifying ---- */

typedef struct token_verifier token_verifier;

token_verifier *token_verifier_new(void);
void token_verifier_free(token_verifier *v);

/* Trusts a public key (32 bytes) for tokens of the given roles (bits).
 * 0, or -1 when the verifier is full. Adding the same key again widens its
 * roles. */
int token_verifier_add(token_verifier *v, const unsigned char *public_key, unsigned roles);
/* Same, from a PEM public key file. -1 with err filled. */
int token_verifier_add_file(token_verifier *v, const char *path, unsigned roles, char *err,
                            size_t errlen);
int token_verifier_count(const token_verifier *v);

/* Verifies `token` (len bytes, need not be NUL-terminated) at time `now`.
 * TOKEN_OK fills *out. */
token_result token_verify(token_verifier *v, const char *token, size_t len, long long now,
                          token_claims *out);

/* Cache figures, for tests and /metrics. */
typedef struct token_cache_stats {
    unsigned long long hits, misses;
} token_cache_stats;
token_cache_stats token_verifier_stats(const token_verifier *v);

/* ---- key files, for tools and tests ---- */

/* Reads a PEM public key file into 32 bytes. 0, or -1 with err filled. */
int token_read_public_file(const char *path, unsigned char *public_key, char *err,
                           size_t errlen);
/* The kid of a public key (TOKEN_KID_LEN characters + NUL). */
void token_kid_of(const unsigned char *public_key, char *kid);

#endif
