/* uuid.c: random UUIDs (see uuid.h). */
#include "uuid.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "log.h"

static size_t read_urandom(unsigned char *buf, size_t len)
{
    size_t got = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    while (fd >= 0 && got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
    }
    if (fd >= 0) close(fd);
    return got;
}

static void fill_random(unsigned char *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = getrandom(buf + got, len - got, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
    }
    if (got < len) got += read_urandom(buf + got, len - got);
    if (got < len) {
        log_error("msg=\"no source of randomness for ids (getrandom, /dev/urandom): stopping\"");
        abort();
    }
}

void uuid_v4(char out[37])
{
    static _Thread_local unsigned char pool[512];
    static _Thread_local size_t used = sizeof pool;
    static const char hex[] = "0123456789abcdef";
    if (used + 16 > sizeof pool) {
        fill_random(pool, sizeof pool);
        used = 0;
    }
    unsigned char b[16];
    memcpy(b, pool + used, 16);
    used += 16;
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);   /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);   /* RFC 4122 variant */
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = '\0';
}
