#!/usr/bin/python3
"""Guest write stall, wall time and peak scratch per snapshot mode, side by side.

A writing test guest (the Debian kernel, a busybox initramfs, the writer from
tests/guest rewriting a ring as fast as it can) on a Nova-style 1 GiB disk with
DATA_MB of data is snapshotted RUNS times in each mode, interleaved. Reports
medians and maxima:
- stall: for stream, live and mirror, the longest gap between two completed guest
  writes during the job, from the writer's own heartbeats (guest clock); for
  cold, the guest is stopped, and its clock with it under emulation, so the
  downtime is measured from libvirt's lifecycle events instead (host clock);
- wall: the hotsnap command's wall time;
- scratch: the peak bytes allocated in hotsnap's scratch directory.

usage: bench/stall.py [RUNS] [DATA_MB]     (as root; prints a Markdown table)
"""
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
os.environ.setdefault("HOTSNAP", os.path.join(HERE, "..", "build", "hotsnap"))

import libvirt  # noqa: E402
import hsfix  # noqa: E402

MODES = tuple(os.environ.get("HS_BENCH_MODES", "stream,live,mirror,cold").split(","))


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


class ScratchMeter(threading.Thread):
    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.peak, self.stop = path, 0, False

    def run(self):
        while not self.stop:
            self.peak = max(self.peak, dir_bytes(self.path))
            time.sleep(0.02)


def guest_gaps(console, start_at):
    """Max writer gap (ms) in heartbeats printed after byte offset start_at."""
    with open(console, errors="replace") as f:
        f.seek(start_at)
        gaps = [int(l.split()[3]) / 1000.0 for l in f if l.startswith("HSW hb ")]
    return max(gaps) if gaps else float("nan")


def downtime(log, name, t0, t1):
    """Host time between the guest going down and coming back (cold)."""
    down = up = None
    for t, n, e, _ in log.events:
        if n != name or not (t0 <= t <= t1 + 1):
            continue
        if e in (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_STOPPED) and down is None:
            down = t
        if e in (libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_STARTED):
            up = t
    return (up - down) * 1000.0 if down and up else float("nan")


def one(g, log, mode, state):
    scratch = os.path.join(state, "scratch")
    os.makedirs(scratch, exist_ok=True)
    meter = ScratchMeter(scratch)
    meter.start()
    offset = os.path.getsize(g.console)
    t0 = time.time()
    r = subprocess.run([os.environ["HOTSNAP"], "--quiet", "--state-dir", state, "snapshot",
                        "--mode", mode, "--quiesce", "off", "--to", "dir:" + state + "/store",
                        g.name], capture_output=True, text=True)
    t1 = time.time()
    meter.stop = True
    meter.join()
    if r.returncode != 0:
        raise RuntimeError("%s failed: %s %s" % (mode, r.stdout, r.stderr))
    time.sleep(2.5)  # let the heartbeats covering the job arrive
    stall = downtime(log, g.name, t0, t1) if mode == "cold" else guest_gaps(g.console, offset)
    for f in os.listdir(state + "/store"):
        os.unlink(os.path.join(state, "store", f))
    return stall, t1 - t0, meter.peak


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    data_mb = int(sys.argv[2]) if len(sys.argv) > 2 else 512
    hsfix.ensure_libvirtd()
    c = hsfix.conn()
    hsfix.sweep(c)
    log = hsfix.EventLog()
    state = tempfile.mkdtemp(prefix="hsbench-")
    os.chmod(state, 0o711)
    os.makedirs(state + "/store")
    g = hsfix.WriterGuest(c, "bench-stall", rate=0, size_mb=1024, data_mb=data_mb)
    try:
        g.start()
        g.wait_writing()
        time.sleep(2)
        idle = guest_gaps(g.console, 0)
        res = {m: [] for m in MODES}
        for i in range(runs):
            for m in MODES:
                res[m].append(one(g, log, m, state))
        print("Guest: 128 MiB, writer unthrottled (O_DIRECT 4 KiB); disk: 1 GiB qcow2 overlay, "
              "%d MiB of data; %d runs per mode, interleaved; writer's worst gap with no "
              "snapshot: %.1f ms\n" % (data_mb, runs, idle))
        print("| mode | guest stall p50 (ms) | stall max (ms) | wall p50 (s) | peak scratch p50 (MiB) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for m in MODES:
            st = [x[0] for x in res[m]]
            print("| %s | %.1f | %.1f | %.2f | %.0f |" % (
                m, statistics.median(st), max(st), statistics.median(x[1] for x in res[m]),
                statistics.median(x[2] for x in res[m]) / 2**20))
        print("\n(cold: downtime from libvirt's lifecycle events, host clock)")
    finally:
        g.remove()
        log.close()
        subprocess.run(["rm", "-rf", state])


if __name__ == "__main__":
    main()
