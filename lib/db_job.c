/* db_job.c: a unit of work that answers an HTTP request (see db_job.h for
 * the shape and its rules). The whole module is the 503 paths and the
 * job's lifetime, written once instead of once per service's api.c. */
#include "db_job.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>

#include "mem.h"
#include "rep.h"

void *db_job_new(http_req *r, db *d, size_t size, const char *what, db_job_clear_fn clear)
{
    assert(size >= sizeof(db_job));
    db_job *job = mem_must(calloc(1, size));    /* mem.h: a request's bookkeeping */
    job->req = r;
    job->db = d;
    job->what = what;
    job->clear = clear;
    snprintf(job->request_id, sizeof job->request_id, "%s", http_req_id(r));
    return job;
}

void db_job_free(db_job *job)
{
    if (!job) return;
    if (job->clear) job->clear(job);
    free(job);
}

void db_job_run(db_job *job, db_work_fn work, db_done_fn done)
{
    if (db_run(job->db, work, done, job)) return;
    rep_reply_db_unavailable(job->req, job->what);
    db_job_free(job);
}

bool db_job_answered_unavailable(db_job *job, db_status status)
{
    if (status != DB_UNAVAILABLE) return false;
    rep_reply_db_unavailable(job->req, job->what);
    db_job_free(job);
    return true;
}
