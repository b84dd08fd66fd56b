/* main.c: the account process: accounts, sign-in, tokens.
 *
 *   carshare-account                 runs the service
 *   carshare-account keygen PATH...  creates the Ed25519 key pair PATH
 *                                    (private, 0600) and its .pub beside it
 *                                    unless they exist, prints each kid, and
 *                                    exits: make run and the tests create
 *                                    every key before any process starts, so
 *                                    that verifiers find the public keys.
 *   carshare-account token KEY SUB ROLE [TTL_S [IAT]]
 *                                    prints a token for SUB with ROLE signed
 *                                    with the private key KEY (TTL_S default
 *                                    3600, IAT default now): for operators
 *                                    holding the key (a staff token for a
 *                                    script) and for the tests (service
 *                                    tokens, expired ones). It is no way in:
 *                                    whoever can read KEY can sign anyway.
 *
 * Environment (every variable is optional):
 *   HOST, PORT              address to listen on (127.0.0.1:8085)
 *   DATA_DIR, DB_PATH       the database: DB_PATH, else $DATA_DIR/account.db
 *   ACCOUNT_DATABASE_URL, DATABASE_URL   a postgres:// URL: PostgreSQL
 *                           instead (lib/db.h; DB_POOL_SIZE etc. there)
 *   TOKEN_PRIVATE_KEY       the signing key (PEM), default
 *                           $DATA_DIR/keys/account.key; created on first
 *                           start (0600), its public half beside it (.pub)
 *   TOKEN_TTL_S             token lifetime, default 3600 (the contract's
 *                           expiresIn), 60..86400
 *   HASH_WORKERS            password hashing threads, default 2 (64 MiB each)
 *   HASH_QUEUE              hashes waiting at most, default 64 (then 503)
 *   TOKEN_PUBLIC_KEYS, TOKEN_SERVICE_KEYS   see lib/auth.h (staff routes)
 *   HTTP_* limits           see lib/http.h
 *
 * At first start the staff account `admin` is created with a random
 * password, written to $DATA_DIR/secrets/admin-password (0600, its folder
 * 0700) -- never logged; `make run` prints it once. */
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "account.h"
#include "config.h"
#include "log.h"
#include "service.h"

#define ADMIN_PASSWORD_LEN 24

static int keygen(int argc, char **argv)
{
    if (token_init() != 0)
        return 1;
    for (int i = 2; i < argc; i++) {
        char err[512];
        token_key *k = token_key_load_or_create(argv[i], err, sizeof err);
        if (!k) {
            fprintf(stderr, "keygen: %s\n", err);
            return 1;
        }
        printf("%s kid=%s\n", argv[i], token_key_id(k));
        token_key_free(k);
    }
    return 0;
}

static int mint(int argc, char **argv)
{
    token_role role;
    if (argc < 5 || token_init() != 0 || !token_role_parse(argv[4], &role)) {
        fprintf(stderr, "usage: carshare-account token KEY SUB customer|staff|service "
                        "[TTL_S [IAT]]\n");
        return 2;
    }
    char err[512], out[TOKEN_MAX_LEN];
    token_key *k = token_key_load_or_create(argv[2], err, sizeof err);
    if (!k) {
        fprintf(stderr, "token: %s\n", err);
        return 1;
    }
    int ttl = argc > 5 ? atoi(argv[5]) : 3600;
    long long iat = argc > 6 ? atoll(argv[6]) : (long long)time(NULL);
    int n = token_sign(k, argv[3], role, iat, ttl, out, sizeof out);
    token_key_free(k);
    if (n < 0) {
        fprintf(stderr, "token: cannot sign for \"%s\" (subject a-z 0-9 . _ -, TTL 1..86400)\n",
                argv[3]);
        return 1;
    }
    printf("%s\n", out);
    return 0;
}

/* A password of ADMIN_PASSWORD_LEN characters from an unambiguous alphabet
 * (no 0/O, 1/l/I): ~137 bits. */
static void random_password(char *out)
{
    static const char alphabet[] = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    for (int i = 0; i < ADMIN_PASSWORD_LEN; i++)
        out[i] = alphabet[randombytes_uniform(sizeof alphabet - 1)];
    out[ADMIN_PASSWORD_LEN] = '\0';
}

static int write_secret(const char *path, const char *text)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    size_t n = strlen(text);
    bool ok = write(fd, text, n) == (ssize_t)n && write(fd, "\n", 1) == 1 && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    return ok ? rename(tmp, path) : -1;
}

/* The staff account, once: the password file first, so that a crash in
 * between leaves a file with a password nobody has rather than an account
 * whose password nobody knows (the next start then writes both again). */
static int ensure_staff(store *st)
{
    account a;
    int found = account_store_get(st, ACCOUNT_STAFF_ID, &a);
    if (found != 0)
        return found > 0 ? 0 : -1;
    char *dir = config_data_path("secrets");
    mkdir(dir, 0700);
    free(dir);
    char *path = config_data_path("secrets/admin-password");
    char password[ADMIN_PASSWORD_LEN + 1];
    random_password(password);
    memset(&a, 0, sizeof a);
    snprintf(a.customer_id, sizeof a.customer_id, "%s", ACCOUNT_STAFF_ID);
    snprintf(a.name, sizeof a.name, "Staff");
    a.role = TOKEN_ROLE_STAFF;
    int rc = write_secret(path, password) == 0 && hash_password_now(password, a.password_hash) == 0
             && account_create(st, &a) > 0 ? 0 : -1;
    sodium_memzero(password, sizeof password);
    if (rc == 0)
        log_info("msg=\"staff account created; its password is in the file\" customer=%s "
                 "file=%s", ACCOUNT_STAFF_ID, path);
    else
        log_error("msg=\"cannot create the staff account\" file=%s error=\"%s\"", path,
                  strerror(errno));
    free(path);
    return rc;
}

/* The hash unknown ids are verified against: same algorithm and limits as
 * real ones, of a password nobody knows, made anew at every start. */
static int make_dummy_hash(char *out)
{
    char password[ADMIN_PASSWORD_LEN + 1];
    random_password(password);
    int rc = hash_password_now(password, out);
    sodium_memzero(password, sizeof password);
    return rc;
}

static token_key *load_key(void)
{
    char *fallback = config_data_path("keys/account.key");
    const char *path = config_str("TOKEN_PRIVATE_KEY", fallback);
    char err[512];
    token_key *k = token_init() == 0 ? token_key_load_or_create(path, err, sizeof err) : NULL;
    if (!k)
        fprintf(stderr, "carshare-account: cannot load or create the token key: %s\n", err);
    free(fallback);
    return k;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "keygen") == 0)
        return keygen(argc, argv);
    if (argc > 1 && strcmp(argv[1], "token") == 0)
        return mint(argc, argv);
    /* Before service_new: its token check reads the public key made here. */
    token_key *key = load_key();
    if (!key)
        return 1;
    service *svc = service_new("account", 8085);
    if (!svc)
        return 1;
    log_info("msg=\"token signing key\" kid=%s", token_key_id(key));

    static char dummy_hash[ACCOUNT_HASH_MAX];
    /* Main's own store (on PostgreSQL its own connection) for the start,
     * before the loop runs: the staff account, then the units of work. */
    db *d = db_open(svc->base, "account", &account_schema);
    if (!d || ensure_staff(db_store(d)) != 0 || make_dummy_hash(dummy_hash) != 0) {
        log_error("msg=\"cannot open the account database or create the staff account\"");
        db_close(d);
        return 1;
    }
    account_api_config cfg = {
        .key = key,
        .hasher = hasher_new(svc->base, (int)config_int("HASH_WORKERS", 2, 1, 8),
                             (int)config_int("HASH_QUEUE", 64, 1, 100000)),
        .dummy_hash = dummy_hash,
        .token_ttl_s = (int)config_int("TOKEN_TTL_S", 3600, 60, TOKEN_MAX_LIFETIME_S),
    };
    if (!cfg.hasher) {
        db_close(d);
        return 1;
    }
    account_api_register(svc, d, &cfg);
    /* Group commit and the answers held for it (SQLite), readiness, and
     * the database closed after the HTTP server drained (after the api's
     * hook, which waits for the hashes still running). */
    service_use_db(svc, d);
    int rc = service_run(svc);
    token_key_free(key);
    return rc;
}
