/* account.h: what the files of the account service share.
 *
 * account (no seed name: the seed had no identity) keeps customer and staff
 * accounts and signs people in: POST /accounts creates a customer, POST
 * /sessions checks a password and answers a signed token (lib/token.h)
 * that every other process verifies with account's public key. Only this
 * process holds the private key.
 *
 * Passwords are hashed with Argon2id (libsodium's crypto_pwhash_str, its
 * "interactive" limits: 2 passes over 64 MiB, ~100 ms here). That is far
 * too long for the event loop, so hashing and verifying run on worker
 * threads (hasher.c) and their results come back to the loop. A password
 * is never logged, stored or echoed; its hash never leaves the database.
 *
 * Sign-in answers the same way, after the same work, whether the id exists
 * or not: an unknown id is verified against a dummy hash made at start with
 * the same parameters. Failed sign-ins are counted per id in the database
 * (so a restart does not reset them): 5 within 15 minutes and the id is
 * refused with 429 and Retry-After until the oldest of them is 15 minutes
 * old. An attempt is counted as a failure before its password is checked
 * and forgiven when it was right, so that parallel guesses cannot slip
 * past the limit while their hashes are being computed.
 *
 * The database is SQLite by default or PostgreSQL (ACCOUNT_DATABASE_URL or
 * DATABASE_URL, lib/db.h); every use of it is a unit of work (api.c), so
 * on PostgreSQL neither the hashing nor the database is waited for on the
 * loop.
 *
 * Files: domain.c (the rules: ids, passwords, throttling), session.c (the
 * transactions), store.c (all SQL; store_pg.c its PostgreSQL twin),
 * hasher.c (Argon2id off the loop), common_passwords.c (the refused list),
 * api.c (HTTP), main.c (wiring, the staff account, the keys). */
#ifndef CARSHARE_ACCOUNT_H
#define CARSHARE_ACCOUNT_H

#include <stdbool.h>
#include <stddef.h>
#include "db.h"
#include "store.h"
#include "token.h"

struct service;
struct event_base;

#define ACCOUNT_ID_MIN 3
#define ACCOUNT_ID_MAX 64
#define ACCOUNT_NAME_MAX 100
#define ACCOUNT_PASSWORD_MIN 10
#define ACCOUNT_PASSWORD_MAX 256     /* bytes: bounds what a client makes us hash */
#define ACCOUNT_HASH_MAX 128         /* crypto_pwhash_STRBYTES */
#define ACCOUNT_STAFF_ID "admin"

#define THROTTLE_MAX_FAILURES 5
#define THROTTLE_WINDOW_S (15 * 60)

typedef struct account {
    char customer_id[ACCOUNT_ID_MAX + 1];
    char name[ACCOUNT_NAME_MAX + 1];
    token_role role;
    char password_hash[ACCOUNT_HASH_MAX];
    char created_at[32];          /* log_utc_now */
} account;

/* ---- domain.c: rules without I/O ---- */

/* NULL when id is a valid customerId, else why not (for a 400). */
const char *account_id_refusal(const char *id);
/* NULL when the password may be used by `id`, else why not. */
const char *account_password_refusal(const char *password, const char *id);
/* Whether the password is on the commonly used list (case-insensitive). */
bool account_password_common(const char *password);

/* Throttling: given the times (seconds) of the failed sign-ins of one id
 * within the window, 0 when another attempt may go ahead, else the
 * seconds until it may (Retry-After, at least 1). */
long long throttle_retry_after(const long long *failures, int count, long long now);

/* ---- common_passwords.c ---- */
extern const char *const account_common_passwords[];
extern const size_t account_common_password_count;

/* ---- hasher.c: Argon2id on worker threads ---- */

typedef struct hasher hasher;

typedef enum {
    HASH_DONE,                  /* hashed, or verified: see `match` */
    HASH_FAILED,                /* out of memory in crypto_pwhash */
} hash_status;

typedef struct hash_result {
    hash_status status;
    bool match;                             /* verify: the password matched */
    char hash[ACCOUNT_HASH_MAX];            /* hash: the new hash */
} hash_result;

/* Called on the loop thread with the outcome. */
typedef void (*hash_cb)(const hash_result *res, void *arg);

/* `workers` threads; at most `max_queue` jobs waiting. */
hasher *hasher_new(struct event_base *base, int workers, int max_queue);
/* Stops the threads once the queued jobs are done, and frees it. */
void hasher_free(hasher *h);
/* Queue a hash of `password`, or a verification of it against `hash`
 * (NULL: hash). The password is copied into locked memory and wiped. False
 * when the queue is full (the caller answers 503). */
bool hasher_submit(hasher *h, const char *password, const char *hash, hash_cb cb, void *arg);

/* The same, on the calling thread: for start-up (the staff account, the
 * dummy hash), before the loop runs. 0 or -1. */
int hash_password_now(const char *password, char *out);

/* ---- store.c ---- */

extern const db_schema account_schema;     /* db_open(..., &account_schema) */
store *account_store_open_path(const char *path);
/* 1 created, 0 the id is taken, -1 error. Sets created_at. */
int account_store_insert(store *st, account *a);
int account_store_get(store *st, const char *customer_id, account *out);   /* 1, 0, -1 */
/* Failed sign-ins of one id since `since`, oldest first, at most `max`:
 * their times into `out`. Returns how many, or -1. */
int failure_store_recent(store *st, const char *customer_id, long long since, long long *out,
                         int max);
/* Records a failed attempt; its row id into *id. 0 or -1. */
int failure_store_add(store *st, const char *customer_id, long long at, long long *id);
int failure_store_forgive(store *st, long long id);
/* Deletes failures older than `before` (they no longer count). */
int failure_store_prune(store *st, long long before);

/* ---- session.c: transactions, each one unit of work's body ---- */

/* Stores a new account in its own transaction (sets created_at): 1
 * created, 0 the id is taken, -1 error. */
int account_create(store *st, account *a);

typedef enum {
    SIGNIN_GO,                  /* recorded as a failure; verify the password */
    SIGNIN_THROTTLED,           /* too many failures lately: retry_after */
    SIGNIN_FAILED,              /* the database failed: nothing recorded */
} signin_verdict;

/* One sign-in attempt: customer_id (as the client wrote it, bounded) and
 * now are the inputs; the rest is what signin_start found. */
typedef struct signin_attempt {
    char customer_id[ACCOUNT_ID_MAX + 1];
    long long now;
    long long retry_after;      /* THROTTLED: seconds (Retry-After) */
    long long attempt;          /* GO: its failure row, forgiven on success */
    bool found;                 /* GO: a real account, in `account` */
    account account;
} signin_attempt;

/* In one transaction: the throttle over the id's recent failures, then
 * the attempt recorded as a failure and the account read (account.h's
 * header says why in that order). */
signin_verdict signin_start(store *st, signin_attempt *at);

/* Deletes the attempt's failure row (its password was right). 0 or -1. */
int signin_forgive(store *st, long long attempt);

/* ---- store_pg.c: the same on PostgreSQL (store.c calls them) ---- */

extern const char *const account_pg_migrations[];
int account_pg_insert(store *st, account *a);
int account_pg_get(store *st, const char *customer_id, account *out);
int failure_pg_recent(store *st, const char *customer_id, long long since, long long *out,
                      int max);
int failure_pg_add(store *st, const char *customer_id, long long at, long long *id);
int failure_pg_forgive(store *st, long long id);
int failure_pg_prune(store *st, long long before);

/* ---- api.c ---- */

typedef struct account_api_config {
    token_key *key;             /* signs the tokens (account owns the private key) */
    hasher *hasher;
    const char *dummy_hash;     /* verified against for unknown ids */
    int token_ttl_s;            /* TOKEN_TTL_S, default 3600 */
} account_api_config;

/* Registers the routes; their store work runs as units of work on d. */
void account_api_register(struct service *svc, db *d, const account_api_config *cfg);

#endif
