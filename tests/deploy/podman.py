"""podman.py: what the container tests share: podman calls, and images built once per run.

Each test run builds its own tag of the images (`test-<pid>`, from the binaries in $CARSHARE_BIN,
as `make images` does) and removes it at the end, so that two worktrees or two CI runs testing at
once neither overwrite each other's images nor remove them. The layers are shared with
`make images`'s own (same context, same build cache), so a run costs seconds, not a build.
"""
import json
import os
import subprocess
import sys
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from harness import BIN  # noqa: E402

RUN_ID = "t%d" % os.getpid()
TAG = "test-" + RUN_ID
PREFIX = "localhost/carshare-"
MAX_IMAGE_BYTES = 25 * 1000 * 1000


def podman(*args, check=True, timeout=120):
    """Runs podman; returns its stdout. Raises with podman's stderr when check and it fails."""
    p = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError("podman %s: exit %d: %s" % (" ".join(args), p.returncode,
                                                         p.stderr.strip()[-2000:]))
    return p.stdout


def processes():
    """The processes that get an image: every carshare binary built, and nats."""
    names = sorted(f[len("carshare-"):] for f in os.listdir(BIN) if f.startswith("carshare-"))
    return names + ["nats"]


# The PostgreSQL image (Debian's server on the runtime layer, deploy/Containerfile) is larger
# than the 25 MB of the processes' images: ICU's data alone is 30 MB. Its own bound.
POSTGRES_MAX_IMAGE_BYTES = 85 * 1000 * 1000


def build_images():
    """Builds this run's images; returns {process: image}, with "postgres" too."""
    env = dict(os.environ, CARSHARE_BIN=os.path.abspath(BIN), IMAGE_TAG=TAG,
               IMAGE_CONTEXT=os.path.join(ROOT, "build", "image-" + RUN_ID))
    subprocess.run([os.path.join(ROOT, "scripts", "images.sh")], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["rm", "-rf", env["IMAGE_CONTEXT"]], check=True)
    return {p: "%s%s:%s" % (PREFIX, p, TAG) for p in processes() + ["postgres"]}


def remove_images(images):
    for image in images.values():
        podman("rmi", image, check=False)


def inspect(kind, name):
    return json.loads(podman(kind, "inspect", name))[0]


def nats_stream(monitor_port, name="carshare"):
    """The stream's details as a nats-server's monitoring port gives them (/jsz), or None."""
    with urllib.request.urlopen("http://127.0.0.1:%d/jsz?accounts=true&streams=true&config=true"
                                % monitor_port, timeout=3) as r:
        info = json.loads(r.read())
    for account in info.get("account_details", []):
        for stream in account.get("stream_detail", []):
            if stream["name"] == name:
                return stream
    return None
