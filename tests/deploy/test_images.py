"""test_images.py: each image `make images` builds is what the issue asks of it.

For every process (the carshare services and nats-server):
  - its size is at most 25 MB (what `podman images` reports);
  - it runs as the unprivileged user 10001, never root;
  - it holds no shell nor any other program: every executable file in it is the process's own
    binary or a shared library (read from `podman export`), and asking for /bin/sh fails;
  - started with a read-only root filesystem (only /tmp and /data writable, as in the
    manifests), it answers its health endpoint, and on SIGTERM (podman stop) exits 0 by itself:
    the signal reaches the process (no shell in between) and its drain ends cleanly. nats-server
    exits 1 on SIGTERM and 0 on SIGINT, its graceful stop: its image says STOPSIGNAL SIGINT,
    which podman and the CRI runtimes send, and that is what is checked for it.

The PostgreSQL image (compose, the prod overlay) is checked apart: at most 85 MB (ICU is most of
it), user 10001, the server's programs and /bin/sh (initdb's popen) and nothing else, pgstart
as the entrypoint; on an empty volume its first start makes a role and database per service
from init.sql as scripts/pglocal.py writes it (each service opens its own database and no
other), it stops with exit 0 on its stop signal (SIGINT), and a second start on the same volume
keeps the data and does not initialise again.
"""
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import podman as pm  # noqa: E402
from harness import check, free_port, run, wait_for  # noqa: E402
sys.path.insert(0, os.path.join(pm.ROOT, "scripts"))
import pglocal  # noqa: E402

IMAGES = {}


def images():
    """The processes' images (the carshare services and nats), built once."""
    if not IMAGES:
        IMAGES.update(pm.build_images())
    return {p: i for p, i in IMAGES.items() if p != "postgres"}


def postgres_image():
    images()
    return IMAGES["postgres"]


def test_every_process_has_an_image():
    built = set(images())
    check({"order", "payment", "delivery", "customerpage", "account", "gateway", "nats"} <= built,
          "images built: %s" % sorted(built))


def test_size_at_most_25_mb():
    for proc, image in images().items():
        size = pm.inspect("image", image)["Size"]
        print("     %s: %.1f MB" % (image, size / 1e6))
        check(size <= pm.MAX_IMAGE_BYTES, "%s is %d bytes (> 25 MB)" % (image, size))


def test_runs_as_unprivileged_user():
    for proc, image in images().items():
        user = pm.inspect("image", image)["Config"].get("User", "")
        check(user.split(":")[0] not in ("", "0", "root"), "%s runs as %r" % (image, user))
        check(user == "10001:10001", "%s runs as %r, the manifests say 10001" % (image, user))


def executables(image):
    """Every regular file with an execute bit in the image, by path."""
    name = "carshare-%s-files" % pm.RUN_ID
    pm.podman("create", "--name", name, image)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tar = os.path.join(tmp, "fs.tar")
            pm.podman("export", "-o", tar, name)
            with tarfile.open(tar) as t:
                return [m.name.lstrip("./") for m in t.getmembers()
                        if m.isfile() and m.mode & 0o111]
    finally:
        pm.podman("rm", "-f", name, check=False)


def test_no_shell_nor_other_programs():
    for proc, image in images().items():
        entry = pm.inspect("image", image)["Config"]["Entrypoint"]
        check(len(entry) == 1 and entry[0].startswith("/usr/bin/"),
              "%s: entrypoint %r is not the binary itself" % (image, entry))
        for path in executables(image):
            lib = ".so" in os.path.basename(path)
            check(lib or "/" + path == entry[0], "%s holds the program %s" % (image, path))
        out = pm.podman("run", "--rm", "--entrypoint", "/bin/sh", image, "-c", "true", check=False)
        check("true" not in out, "%s ran /bin/sh" % image)


def health_path(proc):
    return "/healthz" if proc == "nats" else "/health/live"


KEYS = {}


def token_keys():
    """A directory with account's and order's key pairs (openssl, as k8s-secrets.sh makes them),
    readable by the images' user: every service needs the public keys to start."""
    if not KEYS:
        d = tempfile.mkdtemp(prefix="carshare-keys-")
        for name in ("account", "order"):
            key = os.path.join(d, name + ".key")
            subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key], check=True)
            subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-out",
                            os.path.join(d, name + ".pub")], check=True)
        subprocess.run(["chown", "-R", "10001:10001", d], check=True)
        KEYS["dir"] = d
    return KEYS["dir"]


def start_read_only(proc, image, port):
    """Starts the image as the manifests do (read-only root, tmpfs /tmp, a volume on /data) on
    the host's network at a free loopback port; returns the container's name. The anonymous
    volume on /data starts as the image's /data: owned by 10001."""
    name = "carshare-%s-%s" % (pm.RUN_ID, proc)
    args = ["run", "-d", "--name", name, "--network", "host", "--read-only",
            "--tmpfs", "/tmp", "-v", "/data",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    if proc == "nats":
        args += [image, "-js", "-a", "127.0.0.1", "-p", str(free_port()), "-m", str(port),
                 "-sd", "/data/jetstream"]
    else:
        args += ["-e", "HOST=127.0.0.1", "-e", "PORT=%d" % port,
                 "-e", "NATS_URL=nats://127.0.0.1:%d" % free_port(),
                 "-v", "%s:/keys:ro" % token_keys(), "-e", "TOKEN_PUBLIC_KEYS=/keys/account.pub",
                 "-e", "TOKEN_SERVICE_KEYS=/keys/order.pub",
                 "-e", "TOKEN_PRIVATE_KEY=/keys/account.key", "-e", "SERVICE_TOKEN_KEY=/keys/order.key",
                 image]
    pm.podman(*args)
    return name


def answers(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=2) as r:
        return r.status == 200


def test_stop_signal():
    for proc, image in images().items():
        want = "SIGINT" if proc == "nats" else "SIGTERM"
        got = pm.inspect("image", image)["Config"].get("StopSignal") or "SIGTERM"
        check(got == want, "%s stops with %s, not %s" % (image, got, want))


def test_read_only_health_and_stop_exit_0():
    for proc, image in images().items():
        port = free_port()
        name = start_read_only(proc, image, port)
        try:
            wait_for(lambda: answers(port, health_path(proc)), 30, "%s's health" % image)
            pm.podman("stop", "-t", "30", name)
            state = pm.inspect("container", name)["State"]
            check(state["ExitCode"] == 0, "%s exited %s on SIGTERM: %s" % (
                image, state["ExitCode"], pm.podman("logs", "--tail", "20", name, check=False)))
        finally:
            pm.podman("rm", "-f", "-v", name, check=False)


def test_postgres_image():
    image = postgres_image()
    config = pm.inspect("image", image)
    print("     %s: %.1f MB" % (image, config["Size"] / 1e6))
    check(config["Size"] <= pm.POSTGRES_MAX_IMAGE_BYTES, "%s is %d bytes" % (image, config["Size"]))
    check(config["Config"].get("User") == "10001:10001", "%s runs as %r" % (image, config["Config"].get("User")))
    check(config["Config"]["Entrypoint"] == ["/usr/bin/pgstart"], "entrypoint %r" % config["Config"]["Entrypoint"])
    check(config["Config"].get("StopSignal") == "SIGINT", "stop signal %r" % config["Config"].get("StopSignal"))
    programs = sorted(os.path.basename(p) for p in executables(image) if ".so" not in os.path.basename(p))
    check(programs == ["initdb", "pg_isready", "pgstart", "postgres", "sh"], "programs: %s" % programs)


def psql(url, sql):
    r = subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql, url],
                       capture_output=True, text=True, timeout=30)
    return r.stdout.strip() if r.returncode == 0 else None


def test_postgres_first_start_makes_the_databases_once():
    image, port = postgres_image(), free_port()
    init = tempfile.mkdtemp(prefix="carshare-pginit-")
    name, volume = "carshare-%s-postgres" % pm.RUN_ID, "carshare-%s-pgdata" % pm.RUN_ID
    try:
        pglocal.write_secrets(init, "127.0.0.1", port, ["payment", "order"])
        subprocess.run(["chown", "-R", "10001:10001", init], check=True)
        url = {s: open(os.path.join(init, s)).read() for s in ("payment", "order")}
        pm.podman("run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
                  "-v", volume + ":/data", "-v", init + ":/init:ro", "--cap-drop", "ALL",
                  "--security-opt", "no-new-privileges", image,
                  "-c", "listen_addresses=127.0.0.1", "-p", str(port), "-k", "/tmp")
        wait_for(lambda: psql(url["payment"], "select 1") == "1", 120, "payment's database")
        check(psql(url["payment"], "select current_user") == "payment", "payment's role")
        check(psql(url["order"], "select current_user") == "order", "order's role")
        other = url["payment"].replace("/payment?", "/order?")
        check(psql(other, "select 1") is None, "payment opened order's database")
        check(psql(url["payment"], "create table kept (v text); insert into kept values ('x')") == "",
              "payment cannot write its database")
        pm.podman("stop", "-t", "60", name)
        check(pm.inspect("container", name)["State"]["ExitCode"] == 0, "postgres's stop exit code")
        pm.podman("start", name)
        wait_for(lambda: psql(url["payment"], "select v from kept") == "x", 120,
                 "the row written before the restart")
        out = subprocess.run(["podman", "logs", name], capture_output=True, text=True)
        logs = out.stdout + out.stderr      # the container's stderr comes back on podman's
        check(logs.count("pgstart: no cluster at") == 1, "initialised %d times: %s" % (
            logs.count("pgstart: no cluster at"), logs[-2000:]))
    finally:
        pm.podman("rm", "-f", name, check=False)
        pm.podman("volume", "rm", "-f", volume, check=False)
        shutil.rmtree(init, ignore_errors=True)


if __name__ == "__main__":
    try:
        run(globals())
    finally:
        pm.remove_images(IMAGES)
        if KEYS:
            shutil.rmtree(KEYS["dir"], ignore_errors=True)
