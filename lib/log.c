/* log.c: structured logfmt lines on stderr.
 *
 * A line is assembled in a stack buffer ("ts=... level=... svc=... inst=... "
 * then the caller's fields; inst is INSTANCE_ID, see instance.h) and
 * written with a single write(2), so lines from
 * several threads never interleave (writes up to PIPE_BUF are atomic on
 * pipes, and a plain file or terminal gets whole lines in practice).
 * Nothing is allocated and no lock is taken: the request path calls this
 * once per request.
 *
 * Formatting the timestamp (gmtime_r + strftime) is the costly part, so the
 * "YYYY-MM-DDTHH:MM:SS" prefix is cached per thread and per second; only the
 * milliseconds are printed for every line, and the prefix of a line is put
 * together with memcpy rather than snprintf.
 *
 * LOG_LEVEL (info, warn, error; default info) drops lines below that
 * level, e.g. LOG_LEVEL=warn silences the per-request access lines. (There
 * is no debug level: no line was ever written at it.)
 *
 * LOG_MAX_BYTES (default 52428800, 0 = no cap) bounds a log that is a
 * regular file (make run sends each service's stderr to data/logs/): once
 * this process has written that much to it, the file is renamed to
 * <name>.1 (replacing the previous one) and a new one takes stderr's place
 * with dup2, which is atomic for the other threads' writes. So a service
 * keeps at most about twice that on disk, whatever runs it. A pipe or
 * terminal (containers, a shell) is left alone: its reader owns it. The
 * rename and open are metadata operations done once per LOG_MAX_BYTES, the
 * only disk work here besides the write itself. */
#include "log.h"
#include "instance.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 8192

static char log_service[64] = "carshare";
static atomic_uint log_generation;          /* changes with log_service (prefix_tail) */
static int log_min_level = 1;   /* info */

/* The cap on a log file (0: none, or stderr is not a regular file). */
static long long log_max_bytes;
static atomic_llong log_written;            /* bytes in the current file */
static pthread_mutex_t log_rotate_mu = PTHREAD_MUTEX_INITIALIZER;

static int level_rank(const char *level)
{
    switch (level ? level[0] : 'i') {
    case 'w': return 2;
    case 'e': return 3;
    default:  return 1;
    }
}

void log_init(const char *service_name)
{
    if (service_name && *service_name) {
        snprintf(log_service, sizeof log_service, "%s", service_name);
        atomic_fetch_add(&log_generation, 1);
    }
    const char *lvl = getenv("LOG_LEVEL");
    if (lvl && *lvl) {
        if (!strcasecmp(lvl, "info")) log_min_level = 1;
        else if (!strcasecmp(lvl, "warn") || !strcasecmp(lvl, "warning")) log_min_level = 2;
        else if (!strcasecmp(lvl, "error")) log_min_level = 3;
        else log_line("warn", "msg=\"unknown LOG_LEVEL, using info\" value=%s", lvl);
    }
    const char *cap = getenv("LOG_MAX_BYTES");
    char *end = NULL;
    long long max = cap && *cap ? strtoll(cap, &end, 10) : 50LL << 20;
    if (cap && *cap && (*end || max < 0)) {
        log_line("warn", "msg=\"LOG_MAX_BYTES is not a byte count, using 52428800\" value=%s", cap);
        max = 50LL << 20;
    }
    struct stat st;
    bool file = fstat(STDERR_FILENO, &st) == 0 && S_ISREG(st.st_mode);
    log_max_bytes = file ? max : 0;
    atomic_store(&log_written, file ? (long long)st.st_size : 0);
}

/* The current file becomes <path>.1 and a new one takes stderr's place;
 * the line of `len` bytes about to be written is the new file's first. */
static void rotate_log(size_t len)
{
    if (pthread_mutex_trylock(&log_rotate_mu) != 0)
        return;                 /* another thread is at it */
    char path[PATH_MAX - 3], old[PATH_MAX];
    ssize_t n = atomic_load(&log_written) >= log_max_bytes
                    ? readlink("/proc/self/fd/2", path, sizeof path - 1) : -1;
    if (n > 0 && path[0] == '/') {
        path[n] = '\0';
        snprintf(old, sizeof old, "%s.1", path);
        int fd = rename(path, old) == 0
                     ? open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600) : -1;
        if (fd >= 0) {
            dup2(fd, STDERR_FILENO);
            close(fd);
            atomic_store(&log_written, (long long)len);
        } else {
            log_max_bytes = 0;  /* cannot rotate here (read-only directory?): stop trying */
        }
    }
    pthread_mutex_unlock(&log_rotate_mu);
}

/* Writes "YYYY-MM-DDTHH:MM:SS.mmmZ" (no NUL) into out, at most 24 bytes;
 * returns its length. The digits are placed by hand: measured, the two
 * snprintf calls of the line's prefix were ~2,400 instructions of the
 * ~5,500 a log line costs. */
static size_t format_timestamp(char out[24])
{
    static _Thread_local time_t cached_second = -1;
    static _Thread_local char cached_prefix[24];
    static _Thread_local size_t cached_len;   /* at most 19 */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (now.tv_sec != cached_second) {
        struct tm tm;
        gmtime_r(&now.tv_sec, &tm);
        strftime(cached_prefix, sizeof cached_prefix, "%Y-%m-%dT%H:%M:%S", &tm);
        cached_len = strnlen(cached_prefix, 19);
        cached_second = now.tv_sec;
    }
    unsigned ms = (unsigned)(now.tv_nsec / 1000000L) % 1000u;
    size_t n = cached_len;
    memcpy(out, cached_prefix, n);
    out[n++] = '.';
    out[n++] = (char)('0' + ms / 100);
    out[n++] = (char)('0' + ms / 10 % 10);
    out[n++] = (char)('0' + ms % 10);
    out[n++] = 'Z';
    return n;
}

const char *log_utc_now(char *out, bool millis)
{
    size_t n = format_timestamp(out);
    if (!millis) {
        n -= 5;           /* ".mmmZ" */
        out[n++] = 'Z';
    }
    out[n] = '\0';
    return out;
}

/* Appends n bytes of s at line[*used], cut to leave the last byte free. */
static void append(char *line, size_t size, size_t *used, const char *s, size_t n)
{
    if (n > size - 1 - *used)
        n = size - 1 - *used;
    memcpy(line + *used, s, n);
    *used += n;
}

static void write_all(const char *buf, size_t len)
{
    if (log_max_bytes > 0 &&
        atomic_fetch_add(&log_written, (long long)len) + (long long)len > log_max_bytes)
        rotate_log(len);
    while (len > 0) {
        ssize_t n = write(STDERR_FILENO, buf, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return;   /* nowhere left to report a logging failure */
        }
        buf += n;
        len -= (size_t)n;
    }
}

/* " level=%s svc=%s inst=%s " (at most 160 bytes, no NUL) into out;
 * returns its length. It is the same for every line of a level, so it is
 * kept per thread for the level last used (levels are string constants:
 * the pointer says which) and made again when log_init renames the
 * service: three strlen and six copies per line were ~200 of the ~1,700
 * instructions of the gateway's access line. */
static size_t prefix_tail(char out[160], const char *lvl)
{
    static _Thread_local const char *cached_level;
    static _Thread_local unsigned cached_generation;
    static _Thread_local char text[160];
    static _Thread_local size_t len;
    unsigned generation = atomic_load_explicit(&log_generation, memory_order_relaxed);
    if (lvl != cached_level || generation != cached_generation) {
        int n = snprintf(text, sizeof text, " level=%s svc=%s inst=%s ", lvl, log_service,
                         instance_id());
        len = n < 0 ? 0 : (size_t)n < sizeof text ? (size_t)n : sizeof text - 1;
        cached_level = lvl;
        cached_generation = generation;
    }
    memcpy(out, text, len);
    return len;
}

/* The line's prefix, "ts=%s level=%s svc=%s inst=%s ", into line (at
 * least 190 bytes); returns its length. */
static size_t line_prefix(char *line, const char *level)
{
    size_t used = 3;
    memcpy(line, "ts=", 3);
    used += format_timestamp(line + used);
    return used + prefix_tail(line + used, level ? level : "info");
}

/* Ends the line (cut, and saying so, rather than split) and writes it. */
static void line_finish(char *line, size_t size, size_t used)
{
    if (used >= size - 1) {
        static const char cut[] = " truncated=true";
        used = size - sizeof cut - 1;
        memcpy(line + used, cut, sizeof cut - 1);
        used += sizeof cut - 1;
    }
    line[used++] = '\n';
    write_all(line, used);
}

void log_line(const char *level, const char *fmt, ...)
{
    if (level_rank(level) < log_min_level)
        return;
    int saved_errno = errno;   /* callers often log right before using errno */
    char line[LOG_LINE_MAX];
    size_t used = line_prefix(line, level);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + used, sizeof line - used, fmt, ap);
    va_end(ap);
    if (m > 0)
        used += (size_t)m < sizeof line - used ? (size_t)m : sizeof line - used - 1;
    line_finish(line, sizeof line, used);
    errno = saved_errno;
}

void log_text(const char *level, const char *text, unsigned long len)
{
    if (level_rank(level) < log_min_level)
        return;
    int saved_errno = errno;
    char line[LOG_LINE_MAX];
    size_t used = line_prefix(line, level);
    append(line, sizeof line, &used, text, len);
    line_finish(line, sizeof line, used);
    errno = saved_errno;
}

bool log_enabled(const char *level)
{
    return level_rank(level) >= log_min_level;
}

const char *log_quote(char *buf, unsigned long size, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    if (size < 3) {
        if (size > 0) buf[0] = '\0';
        return buf;
    }
    size_t o = 0;
    buf[o++] = '"';
    /* Keep room for the closing quote and the NUL. */
    size_t limit = size - 2;
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        /* A run that needs no escape is copied at once (measured: ~900
         * instructions per value byte by byte, ~250 so). */
        const unsigned char *run = p;
        while (*p >= 0x20 && *p != 0x7f && *p != '"' && *p != '\\')
            p++;
        if (p > run) {
            size_t n = (size_t)(p - run);
            if (o + n > limit)
                n = limit - o;
            memcpy(buf + o, run, n);
            o += n;
            if (o == limit || !*p)
                break;
        }
        char esc[4];
        size_t elen = 0;
        switch (*p) {
        case '"':  esc[0] = '\\'; esc[1] = '"';  elen = 2; break;
        case '\\': esc[0] = '\\'; esc[1] = '\\'; elen = 2; break;
        case '\n': esc[0] = '\\'; esc[1] = 'n';  elen = 2; break;
        case '\r': esc[0] = '\\'; esc[1] = 'r';  elen = 2; break;
        case '\t': esc[0] = '\\'; esc[1] = 't';  elen = 2; break;
        default:
            if (*p < 0x20 || *p == 0x7f) {
                esc[0] = '\\'; esc[1] = 'x'; esc[2] = hex[*p >> 4]; esc[3] = hex[*p & 15];
                elen = 4;
            } else {
                esc[0] = (char)*p;
                elen = 1;
            }
        }
        if (o + elen > limit)
            break;
        memcpy(buf + o, esc, elen);
        o += elen;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}
