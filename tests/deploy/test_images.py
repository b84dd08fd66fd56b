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

IMAGES = {}


def images():
    if not IMAGES:
        IMAGES.update(pm.build_images())
    return IMAGES


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


if __name__ == "__main__":
    try:
        run(globals())
    finally:
        pm.remove_images(IMAGES)
        if KEYS:
            shutil.rmtree(KEYS["dir"], ignore_errors=True)
