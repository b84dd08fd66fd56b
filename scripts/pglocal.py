"""pglocal.py: a private PostgreSQL server in a directory, for `make run DB=postgres` and the tests.

Debian's `postgresql` package gives the server binaries (/usr/lib/postgresql/<version>/bin); this
module makes a cluster of our own with them instead of touching the system's cluster:

    pg = LocalPostgres("/tmp/x/pg", port)    # initdb on first use, then pg_ctl start -w
    pg.start()
    url = pg.service_database("payment")     # role + database "payment", only it may connect
    ...
    pg.stop()                                # SIGINT (fast shutdown) to the postmaster's PID

For a server that is not ours (the PostgreSQL image under compose or Kubernetes), write_secrets
(`pglocal.py secrets DIR HOST PORT SERVICE...`) writes each service's URL and the init.sql that
creates the same roles and databases at that server's first start (deploy/postgres/pgstart.c).

The server listens on 127.0.0.1 only, and on a Unix socket inside its own directory (no clash with
a system server in /var/run/postgresql). Local socket connections are trusted (that is how this
module, as the cluster's superuser, creates roles); TCP connections need a password
(scram-sha-256), so a service reaches only the database its role owns: every database is
REVOKEd from PUBLIC. PostgreSQL refuses to run as root, so as root the server runs as the
`postgres` user the package created (setpriv, which execs: the PIDs we record are the server's).
Passwords are random, kept in <dir>/passwords.json (mode 0600) so that a restart finds them.
"""
import glob
import json
import os
import pwd
import secrets
import signal
import subprocess
import time


def server_bin_dir():
    """The newest installed PostgreSQL server's bin directory, or None."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                  key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return os.path.dirname(dirs[-1]) if dirs else None


class LocalPostgres:
    def __init__(self, directory, port, log_path=None):
        self.dir = os.path.abspath(directory)
        self.data = os.path.join(self.dir, "data")
        self.port = port
        self.log_path = log_path or os.path.join(self.dir, "postgres.log")
        self.bin = server_bin_dir()
        if not self.bin:
            raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
        self.as_user = os.geteuid() == 0
        self.pid = None

    # ---- running a server binary as the cluster's owner ----
    def _argv(self, prog, *args):
        argv = [os.path.join(self.bin, prog)] + list(args)
        if self.as_user:
            argv = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"] + argv
        return argv

    def _own(self, path):
        if self.as_user:
            pw = pwd.getpwnam("postgres")
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _run(self, prog, *args):
        r = subprocess.run(self._argv(prog, *args), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError("%s failed: %s" % (prog, r.stdout.decode("utf-8", "replace")[-2000:]))
        return r.stdout.decode("utf-8", "replace")

    # ---- lifecycle ----
    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self._own(self.dir)
        if self.as_user:
            # The server (user postgres) must pass through the directory above ours, which may be
            # private (0700): let others traverse it, never list it.
            parent = os.path.dirname(self.dir)
            mode = os.stat(parent).st_mode & 0o777
            if mode & 0o001 == 0:
                os.chmod(parent, mode | 0o001)
        if not os.path.exists(os.path.join(self.data, "PG_VERSION")):
            self._run("initdb", "-D", self.data, "-U", "postgres", "--auth-local=trust",
                      "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
        if not os.path.exists(self.log_path):
            open(self.log_path, "a").close()
        self._own(self.log_path)
        # fsync and synchronous_commit stay on (the defaults): an answered commit is on disk.
        opts = "-c listen_addresses=127.0.0.1 -p %d -k %s -c max_connections=200" % (
            self.port, self.dir)
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", self.data, "-l", self.log_path,
                  "-o", opts)
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            self.pid = int(f.readline().strip())

    def running(self):
        if not self.pid:
            return False
        try:
            os.kill(self.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def stop(self, timeout=30):
        """Fast shutdown by PID (SIGINT: open transactions are rolled back, clients cut off)."""
        if not self.running():
            return
        os.kill(self.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.running():                 # immediate shutdown: recovery at next start
            os.kill(self.pid, signal.SIGQUIT)
            while self.running():
                time.sleep(0.05)
        self.pid = None

    # ---- roles and databases ----
    def psql(self, sql, database="postgres"):
        """Runs SQL as the cluster's superuser over the private socket."""
        r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.dir,
                            "-p", str(self.port), "-U", "postgres", "-d", database, "-c", sql],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError("psql failed: %s" % r.stdout.decode("utf-8", "replace"))
        return r.stdout.decode("utf-8", "replace")

    def _passwords(self):
        path = os.path.join(self.dir, "passwords.json")
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def _save_passwords(self, pw):
        path = os.path.join(self.dir, "passwords.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(pw, f)

    def service_database(self, name):
        """Creates (once) role `name` and database `name`, owned by it and closed to every other
        role; returns its postgres:// URL (loopback TCP, password)."""
        pw = self._passwords()
        if name not in pw:
            pw[name] = secrets.token_hex(16)
            for statement in service_database_sql(name, pw[name]):
                self.psql(statement)
            self._save_passwords(pw)
        return "postgres://%s:%s@127.0.0.1:%d/%s" % (name, pw[name], self.port, name)


# ---- the same roles and databases on a server of another kind ----
def _ident(name):
    return '"%s"' % name.replace('"', '""')     # quoted: "order" is an SQL keyword


def _literal(text):
    return "'%s'" % text.replace("'", "''")


def service_database_sql(name, password):
    """The statements that give a service its role and database, closed to every other role:
    what service_database runs here, and what the PostgreSQL image runs at its first start
    (init.sql, from write_secrets)."""
    return ["CREATE ROLE %s LOGIN PASSWORD %s" % (_ident(name), _literal(password)),
            "CREATE DATABASE %s OWNER %s" % (_ident(name), _ident(name)),
            "REVOKE ALL ON DATABASE %s FROM PUBLIC" % _ident(name)]


def write_secrets(directory, host, port, services):
    """For a PostgreSQL server elsewhere (compose, the prod overlay): directory/<service> holds
    the service's URL (postgresql://service:password@host:port/service, made once, kept after),
    and directory/init.sql the statements that create those roles and databases, one a line
    (deploy/postgres/pgstart.c runs it at the server's first start). init.sql is derived from
    the URLs each time, so the two cannot disagree. Files are 0600."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    lines = []
    for name in services:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            url = "postgresql://%s:%s@%s:%d/%s?sslmode=disable" % (
                name, secrets.token_hex(16), host, port, name)
            _write_private(path, url)
        with open(path) as f:
            url = f.read().strip()
        password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
        lines += [s + ";" for s in service_database_sql(name, password)]
    _write_private(os.path.join(directory, "init.sql"), "\n".join(lines) + "\n")


def _write_private(path, text):
    fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(path + ".new", path)


if __name__ == "__main__":
    # pglocal.py secrets DIR HOST PORT SERVICE...: write_secrets, for scripts/k8s-secrets.sh
    # and scripts/run-containers.sh.
    import sys
    if len(sys.argv) < 6 or sys.argv[1] != "secrets":
        sys.exit("usage: pglocal.py secrets DIR HOST PORT SERVICE...")
    write_secrets(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:])
