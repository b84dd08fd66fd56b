/* mem.h: the one out-of-memory policy of carshare.
 *
 * An allocation that fails on a path that cannot give a clear answer
 * without it (half-built server state, a request's bookkeeping, a metric
 * series) stops the process: one log line, then abort(), like Redis's
 * zmalloc. Limping on with half-built state would break promises that
 * are harder to see than a restart (the supervisor restarts the process;
 * a crash loses nothing acknowledged, by design). Code that CAN answer
 * without the memory (a 503, a refused call) checks the NULL itself and
 * says so in a comment; it never calls exit(). docs/CONVENTIONS.md. */
#ifndef CARSHARE_MEM_H
#define CARSHARE_MEM_H

#include <stddef.h>

/* Returns p; when p is NULL, logs "out of memory" and aborts. For the
 * results of any allocator: malloc, strdup, event_new, evbuffer_new... */
void *mem_must(void *p);

#endif
