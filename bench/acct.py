"""What the benchmarks bill each tool for, shared by bench/peer and
bench/host-scale.

- A tool's own CPU: its processes and their children (rusage at the wait).
- QEMU's work for it: the QEMU processes' threads that are not vCPUs
  (libvirt names those "CPU n/TCG" or "CPU n/KVM"), sampled every 100 ms so
  that a process that exits during the run (a saved guest) is counted to
  its last sample, less their idle rate measured before the row.
- The guests' vCPUs: charged to no tool.
- The rest of the host: busy time (no idle, iowait or steal) less all of
  the above and Glance's process, less its own idle rate.
- Peak RSS: VmHWM of each process of the tool's tree, sampled every 20 ms
  once it runs its own program (before its exec it is the forking Python).
"""
import os
import subprocess
import threading
import time

TICK = os.sysconf("SC_CLK_TCK")


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def host_busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: busy = all but idle,
    # iowait and steal (time the hypervisor took is nobody's work here)
    return (sum(v[:8]) - v[3] - v[4] - v[7]) / TICK


def proc_cpu(pid):
    """CPU-seconds process @pid has spent (user + system)."""
    with open("/proc/%d/stat" % pid) as f:
        v = f.read().rsplit(")", 1)[1].split()
    return (int(v[11]) + int(v[12])) / TICK


def cached_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Cached:"):
                return int(line.split()[1])
    return 0


def qemu_threads():
    """{(pid, tid): (is_vcpu, cpu-seconds)} of every QEMU process."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/comm" % pid) as f:
                if not f.read().startswith("qemu-system"):
                    continue
            for tid in os.listdir("/proc/%s/task" % pid):
                with open("/proc/%s/task/%s/comm" % (pid, tid)) as f:
                    comm = f.read().strip()
                with open("/proc/%s/task/%s/stat" % (pid, tid)) as f:
                    v = f.read().rsplit(")", 1)[1].split()
                out[(pid, tid)] = (comm.startswith("CPU "), (int(v[11]) + int(v[12])) / TICK)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


class QemuMeter:
    """QEMU's non-vCPU and vCPU CPU-seconds from start() to stop(), threads
    that appear or exit in between included (to their last sample)."""

    def __init__(self, period=0.1):
        self.period = period
        self.ended = threading.Event()
        self.first = {}
        self.last = {}

    def _sample(self):
        for k, v in qemu_threads().items():
            self.last[k] = v
            self.first.setdefault(k, (v[0], 0.0))  # born during the run: from 0

    def _run(self):
        while not self.ended.wait(self.period):
            self._sample()

    def start(self):
        self.first = qemu_threads()
        self.last = dict(self.first)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        """(non-vCPU, vCPU) CPU-seconds."""
        self.ended.set()
        self.thread.join()
        self._sample()
        io = vcpu = 0.0
        for k, (is_vcpu, t) in self.last.items():
            d = t - self.first[k][1]
            if is_vcpu:
                vcpu += d
            else:
                io += d
        return io, vcpu


def idle_rates(seconds=3.0, other_pids=()):
    """QEMU's non-vCPU threads and the rest of the host (less vCPUs and
    @other_pids) when nothing is copied, per second."""
    m = QemuMeter().start()
    b0, t0 = host_busy(), time.time()
    o0 = sum(proc_cpu(p) for p in other_pids)
    time.sleep(seconds)
    io, vcpu = m.stop()
    b1, t1 = host_busy(), time.time()
    o1 = sum(proc_cpu(p) for p in other_pids)
    return io / (t1 - t0), (b1 - b0 - io - vcpu - (o1 - o0)) / (t1 - t0)


def hwm_kib(pid, comm=None):
    """VmHWM of @pid (once it runs @comm, when given), else 0."""
    try:
        with open("/proc/%d/status" % pid) as f:
            st = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return 0
    if comm and st.get("Name", "").strip() != comm[:15]:
        return 0
    return int(st["VmHWM"].split()[0]) if "VmHWM" in st else 0


def descendants(pid):
    out = []
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        return out
    return out + [d for c in out for d in descendants(c)]


def run_all(argvs, env=None, capture=False):
    """Start every argv at once and wait for them: (wall s, CPU s of all and
    their children, largest VmHWM KiB of any of their processes, sum over
    the argvs of each one's largest, stdouts). A failure raises."""
    t0 = time.time()
    procs = [subprocess.Popen(a, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=env) for a in argvs]
    hwm = [0] * len(procs)
    ended = threading.Event()

    def sample():
        while not ended.is_set():
            for i, p in enumerate(procs):
                k = hwm_kib(p.pid, os.path.basename(argvs[i][0]))
                if k:  # its own program runs: its children count too
                    k = max([k] + [hwm_kib(c) for c in descendants(p.pid)])
                hwm[i] = max(hwm[i], k)
            ended.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    outs, errs = [""] * len(procs), [""] * len(procs)
    readers = []
    for i, p in enumerate(procs):
        def read(i=i, p=p):
            errs[i] = p.stderr.read()
        readers.append(threading.Thread(target=read, daemon=True))
        if capture:
            def read_out(i=i, p=p):
                outs[i] = p.stdout.read()
            readers.append(threading.Thread(target=read_out, daemon=True))
    for t in readers:
        t.start()
    cpu = 0.0
    failed = None
    for i, p in enumerate(procs):
        _, status, ru = os.wait4(p.pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        if rc and failed is None:
            failed = (i, rc)
        cpu += ru.ru_utime + ru.ru_stime
    wall = time.time() - t0
    ended.set()
    sampler.join()
    for t in readers:
        t.join()
    if failed:
        i, rc = failed
        raise RuntimeError("%s failed (%d): %s" % (argvs[i][0], rc, errs[i][-1500:]))
    return wall, cpu, max(hwm), sum(hwm), outs
