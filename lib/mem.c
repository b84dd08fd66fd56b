/* mem.c: the out-of-memory policy (mem.h). The log line goes out with a
 * fixed text and no allocation: log_error formats into a stack buffer. */
#include "mem.h"

#include <stdlib.h>

#include "log.h"

void *mem_must(void *p)
{
    if (!p) {
        log_error("msg=\"out of memory\"");
        abort();
    }
    return p;
}
