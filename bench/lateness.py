#!/usr/bin/python3
"""The loop's lateness during a batch of 8 uploads to a local Glance, for two
hotsnap binaries side by side (e.g. before and after a change), alternating
runs in one session.

8 shut-off guests with 512 MiB of data each are published as raw images
(offline mode); each run's summary gives the loop's p50 and p99 lateness (a
20 ms timer, engine/engine.c), the process's CPU seconds and the wall time.

usage: bench/lateness.py BINARY_A BINARY_B [RUNS]   (as root; Markdown table)
"""
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

from upload import clear, glance_and_guests  # noqa: E402


def run(binary, glance, state, names):
    t0 = time.time()
    p = subprocess.run([binary, "--json", "--state-dir", state, "snapshot", "--format", "raw",
                        "--to", "glance:" + glance.url] + names,
                       capture_output=True, text=True)
    secs = time.time() - t0
    if p.returncode:
        raise RuntimeError("%s failed: %s" % (binary, p.stderr))
    summ = json.loads(p.stdout.splitlines()[-1])
    late = summ["loop_lateness_ms"]
    return late["p50"], late["p99"], late["max"], summ["cpu_seconds"], secs


def main():
    a, b = sys.argv[1], sys.argv[2]
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    with glance_and_guests("late", 8, 512) as (glance, state, guests):
        names = [g.name for g in guests]
        res = {a: [], b: []}
        for _ in range(runs):
            for binary in (a, b):
                clear(glance)
                res[binary].append(run(binary, glance, state, names))
        clear(glance)
        print("8 uploads at once of a 512 MiB raw image each, local Glance; %d runs each, "
              "alternating, medians\n" % runs)
        print("| binary | loop p50 (ms) | loop p99 (ms) | worst (ms) | CPU s | wall s |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for binary, rs in res.items():
            med = [statistics.median(r[i] for r in rs) for i in range(5)]
            print("| %s | %.1f | %.1f | %.1f | %.1f | %.1f |" % (binary, *med))


if __name__ == "__main__":
    main()
