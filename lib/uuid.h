/* uuid.h: random UUIDs (version 4), the ids of requests and events.
 *
 * One generator for the process, safe from any thread. Random bytes come
 * from getrandom(2) (or /dev/urandom), drawn 512 at a time per thread: one
 * system call per 32 ids instead of one per id (measured: a getrandom per
 * event and per request was one of a rental's ~240 system calls in every
 * service). Without any source of randomness the process stops: ids that
 * repeat would merge two requests' logs and make a consumer skip an event
 * as already processed. */
#ifndef CARSHARE_UUID_H
#define CARSHARE_UUID_H

/* Writes a fresh lowercase UUID v4 and its NUL into out. */
void uuid_v4(char out[37]);

#endif
