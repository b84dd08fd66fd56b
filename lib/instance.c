/* instance.c: the process's instance id and its claim on an SQLite file
 * (instance.h says what and why).
 *
 * The claim is a flock(2), not a PID file: a PID file outlives a kill -9
 * and must then be judged stale, while a flock goes with the process. It is
 * taken on a file of its own beside the database, never on the database:
 * SQLite's own locks are POSIX record locks, which a process loses on
 * *every* descriptor of the file when it closes any one of them. */
#include "instance.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "log.h"

#define INSTANCE_MAX 64

static char instance[INSTANCE_MAX];
static pthread_once_t instance_once = PTHREAD_ONCE_INIT;

static bool valid_id(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n >= INSTANCE_MAX) return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("._:-", *s)) return false;
    return true;
}

/* "<hostname>-<pid>", the host name cut to what is valid. */
static void default_id(char *out, size_t size)
{
    char host[INSTANCE_MAX] = "";
    if (gethostname(host, sizeof host) != 0) host[0] = '\0';
    host[sizeof host - 1] = '\0';
    size_t n = 0;
    while (host[n] && n < 40 && (isalnum((unsigned char)host[n]) || strchr("._-", host[n]))) n++;
    host[n] = '\0';
    snprintf(out, size, "%s-%ld", n ? host : "host", (long)getpid());
}

static void make_id(void)
{
    const char *v = getenv("INSTANCE_ID");
    if (v && *v && valid_id(v)) {
        snprintf(instance, sizeof instance, "%s", v);
        return;
    }
    default_id(instance, sizeof instance);
    if (v && *v)    /* log_line calls instance_id: the id is set by now */
        fprintf(stderr, "level=warn msg=\"INSTANCE_ID is not 1-63 characters of "
                        "[A-Za-z0-9._:-]: using %s\"\n", instance);
}

const char *instance_id(void)
{
    pthread_once(&instance_once, make_id);
    return instance;
}

/* The files this process holds already: opening one again (a test, a
 * store closed and reopened) is not a second process. */
static pthread_mutex_t claims_mu = PTHREAD_MUTEX_INITIALIZER;
static char *claims[8];

static bool claimed_here(const char *path, bool add)
{
    pthread_mutex_lock(&claims_mu);
    bool found = false;
    size_t i = 0;
    for (; i < sizeof claims / sizeof claims[0] && claims[i] && !found; i++)
        found = strcmp(claims[i], path) == 0;
    if (!found && add && i < sizeof claims / sizeof claims[0]) claims[i] = strdup(path);
    pthread_mutex_unlock(&claims_mu);
    return found;
}

bool instance_claim_sqlite(const char *service, const char *db_path)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s.lock", db_path) >= (int)sizeof path) {
        log_error("msg=\"database path too long\" path=%s", db_path);
        return false;
    }
    if (claimed_here(path, false)) return true;
    /* Never closed: the claim lasts as long as the process. */
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        log_error("msg=\"cannot open the database's lock file\" path=%s error=\"%s\"", path,
                  strerror(errno));
        return false;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
        claimed_here(path, true);
        return true;
    }
    int e = errno;
    close(fd);
    char upper[32];
    size_t n = 0;
    for (; service[n] && n < sizeof upper - 1; n++) upper[n] = (char)toupper((unsigned char)service[n]);
    upper[n] = '\0';
    if (e == EWOULDBLOCK)
        log_error("msg=\"another %s process already uses this SQLite database: SQLite runs one "
                  "process per service; run replicas on PostgreSQL (%s_DATABASE_URL or "
                  "DATABASE_URL)\" db=%s lock=%s", service, upper, db_path, path);
    else
        log_error("msg=\"cannot lock the database's lock file\" path=%s error=\"%s\"", path,
                  strerror(e));
    return false;
}
