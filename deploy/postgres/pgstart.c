/* pgstart.c: the entrypoint of carshare's PostgreSQL image (deploy/Containerfile, target
 * `postgres`), what the official image's docker-entrypoint.sh does, without a shell script.
 *
 *   pgstart [postgres option...]
 *
 * When $PGDATA (default /data/pgdata) holds a cluster, pgstart execs `postgres -D $PGDATA
 * option...`, so the server is the container's process and gets its stop signal. When it does
 * not, pgstart first makes one:
 *
 *   1. initdb into $PGDATA.init (what a start killed earlier left there is removed first);
 *   2. lets TCP clients in from anywhere with a password (pg_hba: scram-sha-256; the network
 *      policy decides who can reach the port at all);
 *   3. starts a server listening on a private Unix socket only, runs $PG_INIT_SQL (default
 *      /init/init.sql) through libpq as the superuser, and stops that server;
 *   4. renames $PGDATA.init to $PGDATA: the rename is the commit.
 *
 * The init SQL is what scripts/pglocal.py writes (`pglocal.py init-sql`, called by
 * scripts/k8s-secrets.sh and scripts/run-containers.sh): a role and a database per service,
 * each closed to the others, one statement per line. It runs exactly once per cluster: a start
 * killed anywhere before the rename leaves no $PGDATA, so the next one starts over (the
 * official image runs its scripts on any data directory without PG_VERSION and never finishes
 * a cluster left with half its roles). Statements go one by one because CREATE DATABASE cannot
 * run in the implicit transaction of a multi-statement query; lines, not ';', separate them,
 * so that a password holding a ';' is never cut.
 *
 * The superuser logs in only over the Unix socket inside the container (trust); it has no
 * password unless $POSTGRES_PASSWORD_FILE names one (initdb --pwfile), for an operator's
 * TCP login. initdb runs the bootstrap backend through popen(), i.e. /bin/sh: that is why the
 * image holds dash, and nothing here runs a shell itself.
 */
#include <errno.h>
#include <ftw.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define READY_WAIT_S 120 /* a cold start on a loaded node: initdb's server can be slow */

static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("pgstart: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static const char *env_or(const char *name, const char *fallback) {
    const char *v = getenv(name);
    return v && *v ? v : fallback;
}

/* path: dir/name in buf (size PATH_MAX-ish); exits when it does not fit. */
static void join(char *buf, size_t size, const char *dir, const char *name) {
    if ((size_t)snprintf(buf, size, "%s/%s", dir, name) >= size) {
        say("path too long: %s/%s", dir, name);
        exit(1);
    }
}

/* Runs argv[0] with argv; 0 when it exited 0. */
static int run(char *const argv[]) {
    pid_t pid = fork();
    if (pid < 0)
        return say("fork: %s", strerror(errno)), -1;
    if (pid == 0) {
        execv(argv[0], argv);
        say("exec %s: %s", argv[0], strerror(errno));
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* Removes what an interrupted initialisation left at path (nothing when there is none). */
static int remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -1;
    return nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int init_cluster(const char *bin, const char *dir) {
    char initdb[4096], pwfile[4200];
    join(initdb, sizeof initdb, bin, "initdb");
    const char *pw = getenv("POSTGRES_PASSWORD_FILE");
    snprintf(pwfile, sizeof pwfile, "--pwfile=%s", pw ? pw : "");
    /* The same cluster settings as scripts/pglocal.py's private servers. */
    char *argv[] = {initdb, "-D", (char *)dir, "-U", "postgres", "--auth-local=trust",
                    "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
                    pw && *pw ? pwfile : NULL, NULL};
    return run(argv);
}

/* initdb's pg_hba lets TCP in from the loopback only: the services are on other hosts. */
static int allow_tcp(const char *dir) {
    char path[4096];
    join(path, sizeof path, dir, "pg_hba.conf");
    FILE *f = fopen(path, "a");
    if (!f)
        return say("%s: %s", path, strerror(errno)), -1;
    fputs("# pgstart: every database's own role, over TCP, with its password\n"
          "host all all all scram-sha-256\n", f);
    return fclose(f) == 0 ? 0 : -1;
}

/* A server on dir for the init SQL only: no TCP, its socket in sockdir. Returns its pid. */
static pid_t start_private(const char *bin, const char *dir, const char *sockdir) {
    char postgres[4096];
    join(postgres, sizeof postgres, bin, "postgres");
    pid_t pid = fork();
    if (pid == 0) {
        execl(postgres, postgres, "-D", dir, "-c", "listen_addresses=", "-k", sockdir,
              (char *)NULL);
        say("exec %s: %s", postgres, strerror(errno));
        _exit(127);
    }
    return pid;
}

static bool exited(pid_t pid) {
    int status;
    return waitpid(pid, &status, WNOHANG) == pid;
}

static PGconn *connect_private(const char *sockdir, pid_t server) {
    const char *keys[] = {"host", "user", "dbname", NULL};
    const char *values[] = {sockdir, "postgres", "postgres", NULL};
    for (int i = 0; i < READY_WAIT_S * 10; i++) {
        if (PQpingParams(keys, values, 0) == PQPING_OK)
            return PQconnectdbParams(keys, values, 0);
        if (exited(server))
            return say("the init server stopped before it took connections"), NULL;
        nanosleep(&(struct timespec){.tv_nsec = 100 * 1000 * 1000}, NULL);
    }
    return say("the init server did not take connections in %d s", READY_WAIT_S), NULL;
}

/* Runs each statement line of path (blank lines and -- comments skipped); 0 when all ran. */
static int run_sql(PGconn *conn, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f)
        return say("%s: %s", path, strerror(errno)), -1;
    char *line = NULL;
    size_t cap = 0;
    int rc = 0, n = 0;
    while (rc == 0 && getline(&line, &cap, f) > 0) {
        line[strcspn(line, "\r\n")] = '\0';
        const char *s = line + strspn(line, " \t");
        if (!*s || strncmp(s, "--", 2) == 0)
            continue;
        PGresult *res = PQexec(conn, s);
        ExecStatusType st = PQresultStatus(res);
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
            /* The message, never the statement: it may hold a password. */
            say("%s: statement %d failed: %s", path, n + 1, PQresultErrorMessage(res));
            rc = -1;
        }
        PQclear(res);
        n++;
    }
    free(line);
    fclose(f);
    if (rc == 0)
        say("%s: %d statements", path, n);
    return rc;
}

/* Fast shutdown (SIGINT): checkpoint, then exit; 0 when the server exited 0. */
static int stop_private(pid_t pid) {
    int status;
    kill(pid, SIGINT);
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static int init_sql(const char *bin, const char *dir, const char *sql) {
    if (access(sql, R_OK) != 0) {
        say("no init SQL at %s (%s): the cluster has only its superuser", sql, strerror(errno));
        return 0;
    }
    char sockdir[] = "/tmp/pgstart-XXXXXX";
    if (!mkdtemp(sockdir))
        return say("mkdtemp: %s", strerror(errno)), -1;
    pid_t server = start_private(bin, dir, sockdir);
    if (server < 0)
        return say("fork: %s", strerror(errno)), -1;
    PGconn *conn = connect_private(sockdir, server);
    int rc = -1;
    if (conn && PQstatus(conn) == CONNECTION_OK)
        rc = run_sql(conn, sql);
    else if (conn)
        say("connecting to the init server: %s", PQerrorMessage(conn));
    PQfinish(conn);
    if (stop_private(server) != 0)
        rc = -1;
    rmdir(sockdir);
    return rc;
}

/* Makes the cluster at data through data.init; 0 when data holds it. */
static int make_cluster(const char *bin, const char *data) {
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.init", data) >= sizeof tmp)
        return -1;
    say("no cluster at %s: initialising", data);
    if (remove_tree(tmp) != 0)
        return say("removing %s: %s", tmp, strerror(errno)), -1;
    if (init_cluster(bin, tmp) != 0 || allow_tcp(tmp) != 0 ||
        init_sql(bin, tmp, env_or("PG_INIT_SQL", "/init/init.sql")) != 0)
        return -1;
    if (rename(tmp, data) != 0)
        return say("rename %s: %s", tmp, strerror(errno)), -1;
    return 0;
}

int main(int argc, char **argv) {
    const char *bin = env_or("PG_BIN", "/usr/lib/postgresql/15/bin");
    const char *data = env_or("PGDATA", "/data/pgdata");
    char version[4096], postgres[4096];
    join(version, sizeof version, data, "PG_VERSION");
    join(postgres, sizeof postgres, bin, "postgres");
    if (access(version, F_OK) != 0 && make_cluster(bin, data) != 0) {
        say("the cluster could not be made; the next start begins again");
        return 1;
    }
    char **args = calloc((size_t)argc + 3, sizeof *args);
    if (!args)
        return say("out of memory"), 1;
    args[0] = postgres;
    args[1] = "-D";
    args[2] = (char *)data;
    for (int i = 1; i < argc; i++)
        args[i + 2] = argv[i];
    execv(postgres, args);
    say("exec %s: %s", postgres, strerror(errno));
    return 1;
}
