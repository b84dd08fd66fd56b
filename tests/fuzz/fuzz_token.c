/* fuzz_token: lib/token.c's verifier on any bytes.
 *
 * Two ways in, chosen by the input's first byte:
 *  - even: the rest is a token as a client would send it; almost never
 *    signed, so this exercises the structure checks, base64url, the header
 *    (alg, kid) and the refusals before any claim is read;
 *  - odd: the rest is the claims' JSON text (any bytes), which this target
 *    puts behind a correct header and signs with the trusted key before
 *    verifying, so that the claims parser and the time checks see hostile
 *    but validly signed input (as only a leaked key could produce).
 * Invariants checked on every input: a verdict is one of token_result's;
 * TOKEN_OK only with a subject of the allowed alphabet, a known role, and
 * iat <= now + skew < exp; the same token verified again (from the cache)
 * gives the same verdict and the same claims. A broken one aborts. */
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "token.h"

#define NOW 1796600000LL

static token_verifier *verifier;
static unsigned char secret[crypto_sign_SECRETKEYBYTES];
static char header_b64[128];

static void fail(const char *what, const uint8_t *data, size_t size)
{
    fprintf(stderr, "fuzz_token: %s on %zu bytes: %.*s\n", what, size,
            (int)(size > 200 ? 200 : size), (const char *)data);
    abort();
}

static void setup(void)
{
    unsigned char pk[crypto_sign_PUBLICKEYBYTES];
    if (token_init() != 0)
        abort();
    crypto_sign_keypair(pk, secret);
    char kid[TOKEN_KID_LEN + 1], header[96];
    token_kid_of(pk, kid);
    snprintf(header, sizeof header, "{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":\"%s\"}", kid);
    sodium_bin2base64(header_b64, sizeof header_b64, (const unsigned char *)header, strlen(header),
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    verifier = token_verifier_new();
    token_verifier_add(verifier, pk, TOKEN_ROLE_CUSTOMER | TOKEN_ROLE_STAFF);
}

/* header.base64url(claims).signature in out; its length, or 0 when it does
 * not fit. */
static size_t signed_token(const uint8_t *claims, size_t n, char *out, size_t size)
{
    const int v = sodium_base64_VARIANT_URLSAFE_NO_PADDING;
    size_t hlen = strlen(header_b64);
    if (hlen + 1 + sodium_base64_ENCODED_LEN(n, v) + 1 + 90 >= size)
        return 0;
    memcpy(out, header_b64, hlen);
    out[hlen] = '.';
    sodium_bin2base64(out + hlen + 1, size - hlen - 1, claims, n, v);
    size_t signed_len = hlen + 1 + strlen(out + hlen + 1);
    unsigned char sig[crypto_sign_BYTES];
    crypto_sign_detached(sig, NULL, (const unsigned char *)out, signed_len, secret);
    out[signed_len] = '.';
    sodium_bin2base64(out + signed_len + 1, size - signed_len - 1, sig, sizeof sig, v);
    return signed_len + 1 + strlen(out + signed_len + 1);
}

static void check_ok(const token_claims *c, const uint8_t *data, size_t size)
{
    if (!token_subject_valid(c->sub))
        fail("accepted a bad subject", data, size);
    if (c->role != TOKEN_ROLE_CUSTOMER && c->role != TOKEN_ROLE_STAFF)
        fail("accepted a role the key may not sign", data, size);
    if (c->iat > NOW + TOKEN_CLOCK_SKEW_S || c->exp <= NOW)
        fail("accepted a token out of its time", data, size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!verifier)
        setup();
    if (size < 1)
        return 0;
    static char buf[2 * TOKEN_MAX_LEN];
    const char *token = (const char *)data + 1;
    size_t len = size - 1;
    if (data[0] & 1) {
        len = signed_token(data + 1, size - 1, buf, sizeof buf);
        if (len == 0)
            return 0;
        token = buf;
    }
    token_claims first, again;
    memset(&first, 0, sizeof first);
    memset(&again, 0, sizeof again);
    token_result r = token_verify(verifier, token, len, NOW, &first);
    if (r < TOKEN_OK || r > TOKEN_EXPIRED || !token_result_message(r))
        fail("an unknown verdict", data, size);
    if (r == TOKEN_OK)
        check_ok(&first, data, size);
    token_result r2 = token_verify(verifier, token, len, NOW, &again);
    if (r2 != r || (r == TOKEN_OK && memcmp(&first, &again, sizeof first) != 0))
        fail("a second verification disagrees", data, size);
    return 0;
}
