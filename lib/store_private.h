/* store_private.h: what store.c and store_pg.c share, and nothing else
 * includes. store.c owns `struct store` and dispatches the calls that work
 * on both backends (begin, commit, rollback, exec, ready, close) to the
 * PostgreSQL functions below when the store is one; store_pg.c owns
 * `struct pgstore`, one libpq connection with its statement cache. */
#ifndef CARSHARE_STORE_PRIVATE_H
#define CARSHARE_STORE_PRIVATE_H

#include <stdbool.h>

#include "store.h"

struct pgstore;

/* store.c: a store around a PostgreSQL connection (taken over: freed by
 * store_close); `label` (the redacted URL) is what store_path returns. */
store *store_new_pg(struct pgstore *pg, const char *label);
/* store.c: the PostgreSQL side of a store, NULL for SQLite. */
struct pgstore *store_pgstore(const store *st);

/* store_pg.c: the same contracts as store_begin ... store_close. */
int pgstore_begin(struct pgstore *pg, bool locking);   /* store_begin_locking */
int pgstore_commit(struct pgstore *pg);
void pgstore_rollback(struct pgstore *pg);
int pgstore_exec(struct pgstore *pg, const char *sql);
bool pgstore_ready(struct pgstore *pg);
const char *pgstore_error(struct pgstore *pg);
bool pgstore_in_transaction(struct pgstore *pg);
void pgstore_free(struct pgstore *pg);

#endif
