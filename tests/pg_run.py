#!/usr/bin/env python3
"""pg_run.py: runs a command with a private PostgreSQL server, for the tests that need one.

    pg_run.py COMMAND [ARG...]

Starts a server of its own (scripts/pglocal.py: initdb in a temporary directory, pg_ctl on a free
loopback port), creates the role and database `unit` that only that role may use, runs COMMAND
with TEST_DATABASE_URL set to it (and TEST_DATABASE_URL_BADPASS, TEST_DATABASE_URL_NODB: the same
server with a wrong password, and with a database that does not exist), then stops the server
by its PID and removes the directory. Exits with COMMAND's exit code.
"""
import os
import socket
import subprocess
import sys
import tempfile
import shutil

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from pglocal import LocalPostgres  # noqa: E402


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="carshare-pg-")
    os.chmod(tmp, 0o755)     # the server runs as `postgres` when we are root: it must get in
    pg = LocalPostgres(os.path.join(tmp, "pg"), free_port())
    code = 1
    try:
        pg.start()
        url = pg.service_database("unit")
        env = dict(os.environ, TEST_DATABASE_URL=url,
                   TEST_DATABASE_URL_BADPASS=url.replace("unit:", "unit:x", 1),
                   TEST_DATABASE_URL_NODB=url.rsplit("/", 1)[0] + "/nosuchdb")
        code = subprocess.call(sys.argv[1:], env=env)
    finally:
        pg.stop()
        if code == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("pg_run: server log kept in %s" % pg.log_path, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
