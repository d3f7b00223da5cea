#!/usr/bin/python3
"""Upload throughput to a local Glance: hotsnap against curl -T and openstack.

One and 8 concurrent uploads of a 1 GiB raw image each, RUNS times per
scenario, medians. hotsnap publishes shut-off guests (offline mode, raw
output) and its figure is the upload phase alone (create + PUT + read-back,
from its events), with its own CPU seconds and peak RSS (qemu-img excluded);
curl -T is the PUT alone on a record made beforehand; `openstack image
create --file` is the whole command.

With BUFFERS (e.g. 64K,256K,1M), hotsnap runs once per size of curl's
upload buffer (HOTSNAP_UPLOAD_BUFFER), next to curl -T; openstack is left out.

usage: bench/upload.py [RUNS] [BUFFERS]     (as root; prints a Markdown table)
"""
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
os.environ.setdefault("HOTSNAP", os.path.join(HERE, "..", "build", "hotsnap"))

import hsfix  # noqa: E402

GIB = 1 << 30


def wait4(p):
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss


def run_hotsnap(glance, state, names, buffer=None):
    env = dict(os.environ, HOTSNAP_UPLOAD_BUFFER=buffer) if buffer else None
    p = subprocess.Popen([os.environ["HOTSNAP"], "--json", "--state-dir", state, "snapshot",
                          "--format", "raw", "--to", "glance:" + glance.url] + names,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out, err = p.communicate()
    if p.returncode:
        raise RuntimeError("hotsnap failed: %s" % err)
    events = [json.loads(l) for l in out.splitlines()]
    starts = [e["elapsed"] for e in events if e.get("state") == "upload"]
    ends = [e["elapsed"] for e in events if e.get("state") == "cleanup"]
    t0 = [e for e in events if e.get("event") == "state"][0]
    # all jobs start together: elapsed values share one origin per job, so use wall times
    times = {}
    for e in events:
        if e.get("event") == "state" and e["state"] in ("upload", "cleanup"):
            times.setdefault(e["state"], []).append(parse(e["time"]))
    secs = max(times["cleanup"]) - min(times["upload"])
    summ = events[-1]
    return secs, summ["cpu_seconds"], summ["peak_rss_kib"]


def parse(iso):
    import datetime
    return datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def run_curl(glance, path, n):
    ids = [glance.api("POST", "/v2/images", json.dumps(
        {"name": "curl-%d" % i, "disk_format": "raw", "container_format": "bare"}).encode())["id"]
        for i in range(n)]
    t0 = time.time()
    ps = [subprocess.Popen(["curl", "-sS", "-f", "-T", path, "-X", "PUT", "-H",
                            "Content-Type: application/octet-stream",
                            glance.url + "/v2/images/%s/file" % i], stdout=subprocess.DEVNULL)
          for i in ids]
    usage = [wait4(p) for p in ps]
    secs = time.time() - t0
    if any(p.returncode for p in ps):
        raise RuntimeError("curl failed")
    return secs, sum(u[0] for u in usage), max(u[1] for u in usage)


def run_osc(glance, path, n):
    home = tempfile.mkdtemp()
    env = dict(os.environ, HOME=home)
    t0 = time.time()
    ps = [subprocess.Popen(["openstack", "--os-auth-type", "none", "--os-endpoint", glance.url,
                            "image", "create", "--file", path, "--disk-format", "raw",
                            "--container-format", "bare", "osc-%d" % i],
                           stdout=subprocess.DEVNULL, env=env) for i in range(n)]
    usage = [wait4(p) for p in ps]
    secs = time.time() - t0
    subprocess.run(["rm", "-rf", home])
    if any(p.returncode for p in ps):
        raise RuntimeError("openstack failed")
    return secs, sum(u[0] for u in usage), max(u[1] for u in usage)


def clear(glance):
    for img in glance.images():
        glance.api("DELETE", "/v2/images/" + img["id"])


@contextlib.contextmanager
def glance_and_guests(name, n, size_mb):
    """A local Glance, a state dir and n shut-off guests full of data;
    all removed afterwards."""
    hsfix.ensure_libvirtd()
    c = hsfix.conn()
    hsfix.sweep(c)
    glance = hsfix.GlanceServer()
    state = tempfile.mkdtemp(prefix="hsbench-%s-" % name)
    os.chmod(state, 0o711)
    guests = []
    try:
        for i in range(n):
            guests.append(hsfix.Guest(c, "bench-%s-%d" % (name, i), size_mb=size_mb,
                                      data_mb=size_mb))
        yield glance, state, guests
    finally:
        for g in guests:
            g.remove()
        glance.close()
        subprocess.run(["rm", "-rf", state])


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    buffers = sys.argv[2].split(",") if len(sys.argv) > 2 else []
    with glance_and_guests("up", 8, 1024) as (glance, state, guests):
        path = os.path.join(state, "one.raw")
        subprocess.run(["qemu-img", "convert", "-O", "raw", guests[0].disks[0].path, path],
                       check=True)
        res = {}
        for n in (1, 8):
            names = [g.name for g in guests[:n]]
            if buffers:
                clients = [("hotsnap, %s buffer" % b,
                            lambda b=b: run_hotsnap(glance, state, names, b)) for b in buffers]
                clients.append(("curl -T", lambda: run_curl(glance, path, n)))
            else:
                clients = [("hotsnap", lambda: run_hotsnap(glance, state, names)),
                           ("curl -T", lambda: run_curl(glance, path, n)),
                           ("openstack image create", lambda: run_osc(glance, path, n))]
            for _ in range(runs):  # interleaved: each round runs every client once
                for name, fn in clients:
                    clear(glance)
                    res.setdefault((name, n), []).append(fn())
        clear(glance)
        print("1 GiB raw image per upload, local Glance (one process), %d runs each, medians\n"
              % runs)
        print("| client | uploads at once | MB/s (all uploads) | CPU s | peak RSS (MiB) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for (name, n), rs in res.items():
            secs = statistics.median(r[0] for r in rs)
            print("| %s | %d | %.0f | %.1f | %.1f |" % (
                name, n, n * GIB / secs / 1e6, statistics.median(r[1] for r in rs),
                statistics.median(r[2] for r in rs) / 1024))


if __name__ == "__main__":
    main()
