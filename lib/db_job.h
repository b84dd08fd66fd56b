/* db_job.h: a unit of work that answers an HTTP request (db.h + http.h).
 *
 * Every handler of a service whose store is reached through db.h has one
 * shape: check the request on the loop and copy its inputs into a job; run
 * the store part as a unit of work (db_run: at once on SQLite, on a database
 * thread on PostgreSQL); answer on the loop in `done`; free the job. This
 * module is that shape once, so a service writes only its own halves:
 *
 *   typedef struct my_job {
 *       db_job job;               // first member: the job is a db_job
 *       long long id;             // inputs, copied from the request
 *       thing t;                  // results, written by `work`
 *   } my_job;
 *
 *   static void get_work(store *st, void *arg) {     // any thread
 *       my_job *j = arg;
 *       j->found = thing_get(st, j->id, &j->t);      // never touch j->job.req
 *   }
 *   static void get_done(void *arg, db_status status) {   // the loop
 *       my_job *j = arg;
 *       if (db_job_answered_unavailable(&j->job, status)) return;
 *       ...answer j->job.req...
 *       db_job_free(&j->job);
 *   }
 *   static void get_thing(http_req *r, void *arg) {
 *       my_job *j = db_job_new(r, api->db, sizeof *j, "the thing database", NULL);
 *       j->id = ...;
 *       db_job_run(&j->job, get_work, get_done);
 *   }
 *
 * Rules the helper keeps for every service:
 *  - 503 with Retry-After (rep_reply_db_unavailable, naming `what`) when the
 *    database refuses the unit (its queue is full, it is closing) or the
 *    unit could not reach it (DB_UNAVAILABLE: no connection, a statement
 *    past its deadline). Whatever `work` left in the job is then ignored.
 *  - Out of memory (docs/CONVENTIONS.md, mem.h): the job is a request's
 *    bookkeeping, made with mem_must. A 503 would be no clearer answer: it
 *    needs memory for its own body, and a process that cannot allocate a
 *    few hundred bytes is better restarted (nothing acknowledged is lost).
 *  - `work` may run more than once (a serialization conflict reruns it,
 *    db.h), so it writes only results it sets afresh on every run, and it
 *    runs off the loop on PostgreSQL: it reads the job's copied inputs
 *    (request_id included), never the request itself.
 *  - The job is one allocation owned by the handler until db_job_free,
 *    which calls the service's `clear` (for what its fields own: rows of a
 *    page, strings) and frees it. Exactly one of `done` or db_job_run's own
 *    503 frees it, so a handler never frees a job it has run. */
#ifndef CARSHARE_DB_JOB_H
#define CARSHARE_DB_JOB_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "db.h"
#include "http.h"

typedef struct db_job db_job;

/* Frees what the service's fields of the job own (not the job itself). */
typedef void (*db_job_clear_fn)(db_job *job);

struct db_job {
    http_req *req;               /* the loop's only: never in `work` */
    db *db;
    const char *what;            /* "the payment database": static text */
    db_job_clear_fn clear;       /* NULL when the fields own nothing */
    char request_id[80];         /* X-Request-Id, copied for `work` */
};

/* A zeroed job of `size` bytes (the service's struct, its first member a
 * db_job) for request r. `what` and `clear` as above; `what` is borrowed
 * for the job's life (a string literal). Never NULL (mem_must). */
void *db_job_new(http_req *r, db *d, size_t size, const char *what, db_job_clear_fn clear);

/* Runs work then done (db_run) with the job as their argument; when the
 * database refuses the unit, answers 503 and frees the job at once. */
void db_job_run(db_job *job, db_work_fn work, db_done_fn done);

/* For `done`: when status is DB_UNAVAILABLE, answers 503, frees the job
 * and returns true (the caller returns); false otherwise. */
bool db_job_answered_unavailable(db_job *job, db_status status);

/* Calls the job's `clear`, then frees it. NULL is ignored. */
void db_job_free(db_job *job);

/* ---- one page of a list ----
 *
 * A list's job holds a db_job_page: on the loop, db_job_page_query reads
 * ?page&size and makes room for that many rows; the work sets n = 0 (a
 * rerun starts over), keeps each row it reads with db_job_page_keep, and
 * sets total (or failed); done answers with db_job_reply_page; the job's
 * clear frees the rows (db_job_page_free). */
typedef struct db_job_page {
    long page, size;             /* ?page&size */
    size_t row_size;
    void *rows;                  /* room for size rows */
    int n;                       /* rows kept by the work */
    long long total;             /* rows in all */
    bool failed;                 /* the work could not read them */
} db_job_page;

/* Reads ?page&size into p, with room for that many rows of row_size
 * bytes (mem_must); false when r was answered 400 (nothing allocated). */
bool db_job_page_query(http_req *r, db_job_page *p, size_t row_size);

/* In the work: row (row_size bytes) copied as the next, while room is left. */
void db_job_page_keep(db_job_page *p, const void *row);

/* In `done`: the page as the collection `name`, row by row through item,
 * or, when the work failed, a 500 with the message fmt says. Frees the job. */
void db_job_reply_page(db_job *job, const db_job_page *p, const char *name,
                       json_t *(*item)(const void *row, const char *base_url), const char *fmt,
                       ...) __attribute__((format(printf, 5, 6)));

/* In the job's clear: frees the rows. */
void db_job_page_free(db_job_page *p);

#endif
