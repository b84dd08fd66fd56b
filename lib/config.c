/* config.c: configuration from the environment.
 *
 * Values are read with getenv() when asked for, at start, by the module that
 * needs them; nothing is cached, so tests can setenv() before creating the
 * object under test. A malformed value is fatal (exit code 2, the usual
 * "usage error"), with a log line naming the variable, the value and the
 * accepted range: an operator's typo must stop the process, not silently
 * fall back to a default. */
#include "config.h"
#include "log.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

const char *config_str(const char *name, const char *fallback)
{
    const char *value = getenv(name);
    return (value && *value) ? value : fallback;
}

static void config_fatal(const char *name, const char *value, const char *why)
{
    char quoted[256];
    log_error("msg=\"invalid configuration\" var=%s value=%s reason=\"%s\"", name,
              log_quote(quoted, sizeof quoted, value), why);
    exit(2);
}

bool config_parse_int(const char *value, long min, long max, long *out, char *why,
                      size_t whylen)
{
    char *end = NULL;
    errno = 0;
    long n = strtol(value, &end, 10);
    /* strtol would skip leading spaces; a value is exactly an integer. */
    bool blank_first = *value == ' ' || *value == '\t' || *value == '\n' || *value == '\v' ||
                       *value == '\f' || *value == '\r';
    if (blank_first || end == value || *end != '\0' || errno == ERANGE) {
        snprintf(why, whylen, "not an integer");
        return false;
    }
    if (n < min || n > max) {
        snprintf(why, whylen, "must be between %ld and %ld", min, max);
        return false;
    }
    *out = n;
    return true;
}

long config_int(const char *name, long fallback, long min, long max)
{
    const char *value = getenv(name);
    if (!value || !*value)
        return fallback;
    long n;
    char why[128];
    if (!config_parse_int(value, min, max, &n, why, sizeof why)) {
        config_fatal(name, value, why);
        return fallback;
    }
    return n;
}

/* mkdir -p: creates every missing directory of path. Returns 0 or -1
 * (errno set). */
static int make_directories(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return -1;
    int rc = 0;
    for (char *p = copy + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(copy, 0700) != 0 && errno != EEXIST) {
                rc = -1;
                break;
            }
            *p = saved;
            if (saved == '\0')
                break;
        }
    }
    free(copy);
    if (rc == 0) {
        struct stat st;
        if (stat(path, &st) != 0)
            return -1;
        if (!S_ISDIR(st.st_mode)) {
            errno = ENOTDIR;
            return -1;
        }
    }
    return rc;
}

/* The data directory holds databases, keys and secrets: owner only. One
 * created before, or by someone else's tool, is tightened too, unless it
 * is a shared directory (sticky, like /tmp) or not ours to change. */
static void make_private(const char *dir)
{
    struct stat st;
    if (stat(dir, &st) != 0 || (st.st_mode & S_ISVTX) || st.st_uid != geteuid()) return;
    if ((st.st_mode & 077) && chmod(dir, 0700) != 0)
        log_warn("msg=\"cannot make the data directory private\" dir=%s errno=%d", dir, errno);
}

char *config_data_path(const char *file_name)
{
    const char *dir = config_str("DATA_DIR", "./data");
    if (make_directories(dir) != 0) {
        char why[160];
        snprintf(why, sizeof why, "cannot create the data directory: %s", strerror(errno));
        config_fatal("DATA_DIR", dir, why);
        return NULL;
    }
    make_private(dir);
    size_t dlen = strlen(dir);
    while (dlen > 1 && dir[dlen - 1] == '/')
        dlen--;
    size_t flen = strlen(file_name);
    char *path = malloc(dlen + 1 + flen + 1);
    if (!path) {
        log_error("msg=\"out of memory\" where=config_data_path");
        abort();
    }
    memcpy(path, dir, dlen);
    path[dlen] = '/';
    memcpy(path + dlen + 1, file_name, flen + 1);
    return path;
}

const char *config_database_url(const char *service, char *setting, size_t len)
{
    char name[64];
    size_t n = 0;
    for (const char *p = service; *p && n + 1 < sizeof name; p++)
        name[n++] = (char)(*p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : *p);
    name[n] = '\0';
    snprintf(setting, len, "%s_DATABASE_URL", name);
    const char *url = config_str(setting, NULL);
    if (url && *url) return url;
    snprintf(setting, len, "DATABASE_URL");
    url = config_str(setting, NULL);
    return url && *url ? url : NULL;
}
