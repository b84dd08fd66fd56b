/* db_job.c: a unit of work that answers an HTTP request (see db_job.h for
 * the shape and its rules). The whole module is the 503 paths and the
 * job's lifetime, written once instead of once per service's api.c. */
#include "db_job.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

bool db_job_page_query(http_req *r, db_job_page *p, size_t row_size)
{
    if (!rep_page_query(r, &p->page, &p->size))
        return false;
    p->row_size = row_size;
    p->rows = mem_must(calloc((size_t)p->size, row_size));   /* mem.h: the job's own */
    return true;
}

void db_job_page_keep(db_job_page *p, const void *row)
{
    if (p->n < p->size)
        memcpy((char *)p->rows + (size_t)p->n++ * p->row_size, row, p->row_size);
}

void db_job_reply_page(db_job *job, const db_job_page *p, const char *name,
                       json_t *(*item)(const void *row, const char *base_url), const char *fmt, ...)
{
    http_req *r = job->req;
    if (p->failed) {
        char message[300];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(message, sizeof message, fmt, ap);
        va_end(ap);
        http_reply_error(r, 500, "%s", message);
    } else {
        json_t *items = json_array();
        for (int i = 0; i < p->n; i++)
            json_array_append_new(items, item((const char *)p->rows + (size_t)i * p->row_size,
                                              http_req_base_url(r)));
        rep_reply_collection(r, name, items, p->page, p->size, p->total);
    }
    db_job_free(job);
}

void db_job_page_free(db_job_page *p)
{
    free(p->rows);
    p->rows = NULL;
}
