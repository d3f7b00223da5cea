"""Fixtures for integration tests: a real libvirtd and throwaway QEMU guests.

Guests are named with PREFIX and removed (with their disks) even when a test
fails; each test class also sweeps leftovers of an earlier, killed run.
Disks are laid out as Nova does: a qcow2 overlay on a shared raw base.
"""
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import libvirt

PREFIX = "hstest-"
IMAGES = "/var/lib/libvirt/images/hstest"
URI = "qemu:///system"
HOTSNAP = os.environ.get("HOTSNAP") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "hotsnap")

libvirt.registerErrorHandler(lambda *a: None, None)


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


def domain_type():
    """KVM only where a real KVM module is loaded; QEMU emulation otherwise."""
    for mod in ("kvm_intel", "kvm_amd"):
        if os.path.exists("/sys/module/" + mod):
            return "kvm"
    return "qemu"


def fix_kvm_node():
    """A /dev/kvm that root can open but the QEMU user cannot makes libvirt
    re-probe QEMU on every call (4-36 s each); let group kvm open it."""
    try:
        st = os.stat("/dev/kvm")
    except OSError:
        return
    import grp
    try:
        gid = grp.getgrnam("kvm").gr_gid
    except KeyError:
        return
    if st.st_gid != gid or (st.st_mode & 0o060) != 0o060:
        os.chown("/dev/kvm", -1, gid)
        os.chmod("/dev/kvm", (st.st_mode & 0o7777) | 0o060)


def stop_at_exit(pidfile):
    """Stop a daemon this process started, by its PID, when the tests end, and
    wait until it is gone: a next test program must not find it exiting."""
    import atexit

    def stop():
        # the pidfile's daemon now: a fault test may have killed the first
        # and started another in its place
        try:
            with open(pidfile) as f:
                pid = int(f.read().strip())
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            return
        for i in range(300):
            try:
                os.kill(pid, signal.SIGKILL if i == 200 else 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
    atexit.register(stop)


def ensure_libvirtd():
    """Start virtlogd and libvirtd when they do not answer (no systemd here)."""
    fix_kvm_node()
    if sh("virsh", "-c", URI, "version", check=False).returncode == 0:
        return
    if sh("pgrep", "-x", "virtlogd", check=False).returncode != 0:
        sh("virtlogd", "-d")
        stop_at_exit("/run/virtlogd.pid")
    started = False
    for _ in range(600):  # a first start probes QEMU: seconds
        if sh("virsh", "-c", URI, "version", check=False).returncode == 0:
            return
        # none running, or one still exiting (then start once it is gone)
        if not started and sh("pgrep", "-x", "libvirtd", check=False).returncode != 0:
            sh("libvirtd", "-d")
            stop_at_exit("/run/libvirtd.pid")
            started = True
        time.sleep(0.1)
    raise RuntimeError("libvirtd did not come up")


def conn():
    return libvirt.open(URI)


def proc_alive(pid):
    """Running, not a zombie nobody reaped."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def sweep(c):
    """Remove every test domain and disk an earlier run left."""
    for dom in c.listAllDomains():
        if dom.name().startswith(PREFIX):
            remove_domain(dom)
    shutil.rmtree(IMAGES, ignore_errors=True)


def remove_domain(dom):
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError:
        pass
    # checkpoints (--incremental) keep a domain defined unless their metadata goes too
    for fn in (lambda: dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE |
                                         libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA),
               lambda: dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE),
               lambda: dom.undefine()):
        try:
            fn()
            break
        except libvirt.libvirtError:
            pass


def write_pattern(path, fmt, offset, length, byte):
    step = 256 << 20  # qemu-io takes requests up to 2 GiB - 1
    cmds = []
    for off in range(offset, offset + length, step):
        cmds += ["-c", "write -P 0x%02x %d %d" % (byte, off, min(step, offset + length - off))]
    sh("qemu-io", "-f", fmt, *cmds, path)


class Disk:
    """A Nova-style disk: qcow2 overlay on a raw base, with distinct data in each."""

    def __init__(self, dirpath, target, size_mb=64, data_mb=4, chain=1, seed=1):
        base_dir = os.path.join(IMAGES, "_base")
        os.makedirs(base_dir, exist_ok=True)
        self.target = target
        self.base = os.path.join(base_dir, "%s-%s.raw" % (os.path.basename(dirpath), target))
        sh("qemu-img", "create", "-q", "-f", "raw", self.base, "%dM" % size_mb)
        write_pattern(self.base, "raw", 0, data_mb << 20, 0x10 + seed)
        backing, bfmt = self.base, "raw"
        for i in range(chain):
            path = os.path.join(dirpath, "%s.%d.qcow2" % (target, i))
            sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", bfmt, "-b", backing, path)
            # each layer overwrites part of what is below it
            write_pattern(path, "qcow2", (1 + i) << 20, data_mb << 19, 0x40 + 16 * i + seed)
            backing, bfmt = path, "qcow2"
        self.path = backing

    def xml(self):
        return ("<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                "<source file='%s'/><target dev='%s' bus='virtio'/></disk>"
                % (self.path, self.target))


class Guest:
    """A guest idling in SeaBIOS (no kernel): ~22 MiB, no CPU, enough for cold and offline."""

    def __init__(self, c, name, disks=1, size_mb=64, data_mb=4, chain=1, extra_disk_xml=""):
        self.c = c
        self.name = PREFIX + name
        self.dir = os.path.join(IMAGES, self.name)
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(IMAGES, 0o755)
        self.disks = [Disk(self.dir, "vd" + chr(ord("a") + i), size_mb, data_mb, chain, seed=i)
                      for i in range(disks)]
        xml = """<domain type='%s'>
  <name>%s</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='network'/></os>
  <devices>%s%s<memballoon model='none'/></devices>
</domain>""" % (domain_type(), self.name, "".join(d.xml() for d in self.disks), extra_disk_xml)
        self.dom = c.defineXML(xml)

    def start(self, paused=False):
        self.dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
        return self

    def state(self):
        return self.dom.state()[0]

    def remove(self):
        remove_domain(self.dom)
        shutil.rmtree(self.dir, ignore_errors=True)


STATE_NAMES = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
               libvirt.VIR_DOMAIN_SHUTOFF: "shut off"}


class Run:
    """A hotsnap process with --json; events are read as they come (on a
    thread, so that a wait for one has a bound even when hotsnap is silent)."""

    def __init__(self, state_dir, *args):
        import queue
        import threading
        self.args = [HOTSNAP, "--json", "--state-dir", state_dir] + list(args)
        self.p = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        self.events = []
        self.lines = queue.Queue()
        self.err = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.err_reader = threading.Thread(target=lambda: self.err.append(self.p.stderr.read()),
                                           daemon=True)
        self.err_reader.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def stderr_so_far(self):
        return "".join(self.err)

    def until(self, pred, timeout=120):
        """Read events until pred(event) holds; returns that event. A hotsnap
        that says nothing more fails the test within the timeout (and is
        killed), never holds it."""
        import queue
        deadline = time.time() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.time()))
            except queue.Empty:
                self.p.kill()
                raise AssertionError("no awaited event within %d s; last events: %s"
                                     % (timeout, self.events[-5:]))
            if line is None:
                self.lines.put(None)
                self.err_reader.join()
                raise AssertionError("hotsnap ended before the awaited event; stderr: %s"
                                     % self.stderr_so_far())
            ev = json.loads(line)
            self.events.append(ev)
            if pred(ev):
                return ev

    def finish(self, timeout=300):
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise AssertionError("hotsnap did not end within %d s; last events: %s"
                                 % (timeout, self.events[-5:]))
        self.reader.join()
        self.err_reader.join()
        while True:
            line = self.lines.get()
            if line is None:
                break
            self.events.append(json.loads(line))
        self.p.stdout.close()
        self.p.stderr.close()
        self.stderr = self.stderr_so_far()
        self.rc = self.p.returncode
        return self

    def summary(self):
        return [e for e in self.events if e.get("event") == "summary"][-1]

    def states(self):
        return [e["state"] for e in self.events if e.get("event") == "state"]


def state_event(name):
    return lambda ev: ev.get("event") == "state" and ev.get("state") == name


def hotsnap(state_dir, *args, timeout=300):
    return Run(state_dir, *args).finish(timeout)


def job_active(dom):
    """Whether libvirt runs a job on dom. libvirt 9.0 fails job stats during
    parts of a backup ("backup job data missing"); a backup shows in its XML."""
    try:
        return dom.jobStats()["type"] != libvirt.VIR_DOMAIN_JOB_NONE
    except libvirt.libvirtError:
        try:
            dom.backupGetXMLDesc()
            return True
        except libvirt.libvirtError:
            return False


def file_digest(path, algo):
    """A file's digest as a store records it, computed by another tool:
    xxhsum (Debian's xxhash) for xxh128, Python's hashlib for the others."""
    if algo == "xxh128":
        return sh("xxhsum", "-H2", path).stdout.split()[0]
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def assert_sidecar_digest(tc, meta, path, algo="xxh128"):
    """The sidecar records the one digest, of @algo, and it is the file's."""
    tc.assertEqual(meta["os_hash_algo"], algo)
    tc.assertNotIn("sha256", meta)  # one digest per image, not two
    tc.assertEqual(meta["os_hash_value"], file_digest(path, algo))


def images_identical(a, b):
    r = sh("qemu-img", "compare", "-U", a, b, check=False)
    return r.returncode == 0, r.stdout + r.stderr


class GuestTestCase(unittest.TestCase):
    """Per test: a state dir and a store; guests made with guest() are always removed."""

    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root for qemu:///system")
        ensure_libvirtd()
        cls.c = conn()
        sweep(cls.c)

    @classmethod
    def tearDownClass(cls):
        sweep(cls.c)
        cls.c.close()

    def setUp(self):
        self.guests = []
        self.state = tempfile.mkdtemp(prefix="hstest-state-")
        # gone also when a subclass's setUp fails (tearDown does not run then)
        self.addCleanup(shutil.rmtree, self.state, ignore_errors=True)
        os.chmod(self.state, 0o711)  # QEMU writes live backup targets in its scratch
        self.store = os.path.join(self.state, "store")
        os.makedirs(self.store)

    def tearDown(self):
        for g in self.guests:
            g.remove()
        shutil.rmtree(self.state, ignore_errors=True)

    def guest(self, name, **kw):
        g = Guest(self.c, name, **kw)
        self.guests.append(g)
        return g

    def snapshot(self, *args):
        return hotsnap(self.state, "snapshot", "--to", "dir:" + self.store, *args)

    def writer(self, name, **kw):
        """A WriterGuest, started and writing, removed after the test."""
        g = WriterGuest(self.c, name, **kw)
        self.guests.append(g)
        g.start()
        g.wait_writing()
        return g

    def wait_for_save_job(self, g):
        """Until libvirt shows the managed save of g as its job."""
        for _ in range(20000):
            try:
                if g.dom.jobStats().get("operation") == libvirt.VIR_DOMAIN_JOB_OPERATION_SAVE:
                    return
            except libvirt.libvirtError:
                pass
        self.fail("the managed save never showed as a libvirt job")

    def kill_after_the_save(self, g):
        """A cold snapshot of g killed (SIGKILL) once the guest is saved:
        g is left off with the dead run's save image and journal."""
        run = Run(self.state, "snapshot", "--to", "dir:" + self.store, "--mode", "cold", g.name)
        run.until(state_event("extract"))
        run.p.send_signal(signal.SIGKILL)
        run.finish()
        return run

    def assert_nothing_left(self):
        for sub in ("journal", "scratch"):
            d = os.path.join(self.state, sub)
            left = os.listdir(d) if os.path.isdir(d) else []
            self.assertEqual(left, [], "%s left in %s" % (left, d))
        for g in self.guests:
            if g.state() != libvirt.VIR_DOMAIN_SHUTOFF:
                self.assertFalse(job_active(g.dom), g.name)
        self.assertEqual([f for f in os.listdir(self.store) if f.startswith(".")], [])

    def image_files(self, run):
        imgs = []
        for r in run.summary()["results"]:
            for img in r["images"]:
                with open(os.path.join(self.store, img["id"] + ".json")) as f:
                    meta = json.load(f)
                imgs.append((img, meta))
        return imgs


GUEST_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "guest")
CHECKER = os.path.join(GUEST_SRC, "checker.py")
_guest_kernel = None


def guest_kernel():
    """Build the writer guest's kernel and initramfs once per process (again
    when a sweep between test classes removed them)."""
    global _guest_kernel
    if _guest_kernel is None or not all(os.path.exists(p) for p in _guest_kernel):
        out = os.path.join(IMAGES, "_guest")
        os.makedirs(IMAGES, exist_ok=True)
        os.chmod(IMAGES, 0o755)
        sh(os.path.join(GUEST_SRC, "build.sh"), out)
        _guest_kernel = (os.path.join(out, "vmlinuz"), os.path.join(out, "initrd.img"))
    return _guest_kernel


class WriterGuest(Guest):
    """The Debian kernel and a busybox initramfs whose writer rewrites a ring of
    BLOCKS 4 KiB blocks on its disks, RATE writes a second (checker.py). The
    guest also writes a heartbeat to a small freezable filesystem (it stops
    while the filesystems are frozen); with agent=True qemu-ga runs, and with
    freeze_delay=S its fsfreeze hook sleeps S seconds before a freeze."""

    BLOCKS = 4096

    def __init__(self, c, name, disks=1, rate=300, size_mb=256, data_mb=4, agent=False,
                 freeze_delay=0, thaw_delay=0):
        kernel, initrd = guest_kernel()
        self.c = c
        self.name = PREFIX + name
        self.dir = os.path.join(IMAGES, self.name)
        os.makedirs(self.dir, exist_ok=True)
        self.disks = [Disk(self.dir, "vd" + chr(ord("a") + i), size_mb, data_mb, 1, seed=i)
                      for i in range(disks)]
        self.console = os.path.join(self.dir, "console.log")
        devs = ",".join(d.target for d in self.disks)
        xml = """<domain type='%s'>
  <name>%s</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%s</kernel><initrd>%s</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 hsw=%s:%d:%d%s</cmdline>
  </os>
  <features><tcg><tb-cache unit='MiB'>16</tb-cache></tcg></features>
  <devices>%s
    <serial type='pty'><log file='%s'/><target port='0'/></serial>%s
    <memballoon model='none'/>
  </devices>
</domain>""" % (domain_type(), self.name, kernel, initrd, devs, self.BLOCKS, rate,
                (" hsfd=%d" % freeze_delay if freeze_delay else "") +
                (" hstd=%d" % thaw_delay if thaw_delay else ""),
                "".join(d.xml().replace("type='qcow2'/>", "type='qcow2' cache='none'/>")
                        for d in self.disks), self.console,
                "<channel type='unix'><source mode='bind'/>"
                "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>" if agent else "")
        if domain_type() == "kvm":
            xml = xml.replace("<features><tcg><tb-cache unit='MiB'>16</tb-cache></tcg></features>",
                              "")
        self.dom = c.defineXML(xml)

    def console_lines(self, prefix):
        try:
            with open(self.console, errors="replace") as f:
                return [l.strip() for l in f if l.startswith(prefix)]
        except OSError:
            return []

    def heartbeats(self):
        return [int(l.split()[2]) for l in self.console_lines("HSW hb ")]

    def assert_beats_after(self, before, timeout=60):
        """The guest writes on: a heartbeat newer than @before comes."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.heartbeats()[-1] > before:
                return
            time.sleep(0.2)
        raise AssertionError("%s: no heartbeat after %d (stopped or paused?)" % (self.name, before))

    def fs_heartbeats(self):
        """The heartbeat written to the freezable filesystem."""
        return [int(l.split()[2]) for l in self.console_lines("HSW fshb ")]

    def assert_fs_writable(self, timeout=20):
        """The guest's filesystem takes writes again (thawed): its heartbeat moves on."""
        start = len(self.fs_heartbeats())
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.fs_heartbeats()) >= start + 3:
                return
            time.sleep(0.2)
        raise AssertionError("%s: the filesystem heartbeat stopped (frozen?)" % self.name)

    def wait_agent(self, timeout=60):
        import libvirt_qemu
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                libvirt_qemu.qemuAgentCommand(self.dom, '{"execute":"guest-ping"}', 5, 0)
                return
            except libvirt.libvirtError:
                time.sleep(0.5)
        raise AssertionError("the guest agent of %s does not answer" % self.name)

    def freeze_status(self):
        import libvirt_qemu
        out = libvirt_qemu.qemuAgentCommand(
            self.dom, '{"execute":"guest-fsfreeze-status"}', 10, 0)
        return json.loads(out)["return"]

    def wait_writing(self, timeout=90):
        """Until the writer has reported twice."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.heartbeats()) >= 2:
                return self.heartbeats()[-1]
            time.sleep(0.5)
        with open(self.console, errors="replace") as f:
            raise AssertionError("the writer guest did not start: " + f.read()[-2000:])


def check_images(blocks, *images):
    r = sh("/usr/bin/python3", CHECKER, str(blocks), *images, check=False)
    return r.returncode == 0, r.stdout.strip() + r.stderr.strip()


class EventLog:
    """libvirt lifecycle events of every domain, collected on a thread."""

    _started = False

    def __init__(self):
        if not EventLog._started:
            libvirt.virEventRegisterDefaultImpl()
            import threading
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            EventLog._started = True
        self.events = []
        self.c = libvirt.open(URI)
        self.cb = self.c.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None)

    @staticmethod
    def _run():
        while True:
            libvirt.virEventRunDefaultImpl()

    def _lifecycle(self, conn, dom, event, detail, opaque):
        self.events.append((time.time(), dom.name(), event, detail))

    def of(self, name, since, until):
        return [(e, d) for t, n, e, d in self.events if n == name and since <= t <= until]

    def close(self):
        self.c.domainEventDeregisterAny(self.cb)
        self.c.close()


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class GlanceServer:
    """A real glance-api (Debian's package) on 127.0.0.1: sqlite, file store,
    no auth, one process (sqlite with several workers answers 'database is
    locked'). Started and stopped by its PID."""

    def __init__(self, image_size_cap=None, keystone=None, import_only=False,
                 hashing_algorithm=None):
        self.dir = tempfile.mkdtemp(prefix="hstest-glance-")
        extra = "hashing_algorithm = %s\n" % hashing_algorithm if hashing_algorithm else ""
        with open(os.path.join(self.dir, "policy.yaml"), "w") as f:
            # import_only: plain uploads forbidden by policy, import offered
            f.write('"upload_image": "!"\n' if import_only else "{}\n")
        if import_only:
            extra += ("enabled_import_methods = [glance-direct]\n"
                     "node_staging_uri = file://%s/staging\n" % self.dir)
            os.makedirs(os.path.join(self.dir, "staging"))
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        conf = """[DEFAULT]
bind_host = 127.0.0.1
bind_port = %d
workers = 0
log_file = %s/glance-api.log
%s
%s
[database]
connection = sqlite:///%s/glance.sqlite
[oslo_policy]
policy_file = %s/policy.yaml
[glance_store]
stores = file
default_store = file
filesystem_store_datadir = %s/images/
[paste_deploy]
flavor = %s
config_file = /etc/glance/glance-api-paste.ini
%s
""" % (self.port, self.dir, "image_size_cap = %d" % image_size_cap if image_size_cap else "",
       extra, self.dir, self.dir, self.dir, "keystone" if keystone else "",
       keystone.authtoken_conf() if keystone else "")
        self.conf = os.path.join(self.dir, "glance-api.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        sh("glance-manage", "--config-file", self.conf, "db_sync")
        self.proc = None
        self.start()

    def start(self):
        import urllib.request
        self.proc = subprocess.Popen(["glance-api", "--config-file", self.conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        import urllib.error
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url + "/v2/images", timeout=2).read()
                return
            except urllib.error.HTTPError as e:
                if e.code == 401:  # up, and asking for a token
                    return
                time.sleep(0.2)
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("glance-api did not come up")

    def stop(self, sig=signal.SIGKILL):
        """SIGKILL, or SIGTERM as its service script stops it."""
        if self.proc:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def api(self, method, path, data=None, token=None):
        import urllib.request
        headers = {"Content-Type": "application/json"}
        if token:
            headers["X-Auth-Token"] = token
        req = urllib.request.Request(self.url + path, method=method, data=data, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else None

    def images(self, token=None):
        return self.api("GET", "/v2/images?limit=1000", token=token)["images"]

    def download(self, image_id):
        """Through python3-glanceclient, as an operator would."""
        from glanceclient import Client
        return b"".join(Client("2", endpoint=self.url).images.data(image_id))


class EventLogMixin:
    """For a GuestTestCase: libvirt's lifecycle events for the class (self.log)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.log = EventLog()

    @classmethod
    def tearDownClass(cls):
        cls.log.close()
        super().tearDownClass()


class GlanceGuestTestCase(GuestTestCase):
    """GuestTestCase with a real Glance for the class (self.glance)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.glance = GlanceServer()

    @classmethod
    def tearDownClass(cls):
        cls.glance.close()
        super().tearDownClass()

    def assert_in_glance(self, img, disk_path):
        """An image a job reported ({id, sha512, size}) is active in Glance, with
        that hash, and holds what the guest's disk holds."""
        meta = self.glance.api("GET", "/v2/images/" + img["id"])
        self.assertEqual(meta["status"], "active")
        self.assertEqual(meta["os_hash_algo"], "sha512")
        self.assertEqual(meta["os_hash_value"], img["sha512"])
        data = self.glance.download(img["id"])
        self.assertEqual(hashlib.sha512(data).hexdigest(), img["sha512"])
        self.assertEqual(len(data), img["size"])
        path = os.path.join(self.state, "downloaded-" + img["id"])
        with open(path, "wb") as f:
            f.write(data)
        same, why = images_identical(disk_path, path)
        self.assertTrue(same, why)
        os.unlink(path)

    def images_of(self, *guests):
        """Glance's images of these guests (named {domain}-...)."""
        return [i for i in self.glance.images() if any(i["name"].startswith(g.name + "-")
                                                       for g in guests)]


class KeystoneServer:
    """A real Keystone (Debian's package) on 127.0.0.1: sqlite in WAL mode,
    fernet tokens, bootstrap admin, served by one single-threaded WSGI process
    (HTTP/1.0: every response closes its connection)."""

    PASSWORD = "hotsnap-test-secret"

    def __init__(self, token_expiration=3600):
        self.dir = tempfile.mkdtemp(prefix="hstest-keystone-")
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.conf = os.path.join(self.dir, "keystone.conf")
        with open(self.conf, "w") as f:
            f.write("""[DEFAULT]
log_file = {d}/keystone.log
[database]
connection = sqlite:///{d}/keystone.sqlite
[token]
provider = fernet
expiration = {exp}
[fernet_tokens]
key_repository = {d}/fernet-keys/
[fernet_receipts]
key_repository = {d}/fernet-keys/
[credential]
key_repository = {d}/credential-keys/
""".format(d=self.dir, exp=token_expiration))
        km = ["keystone-manage", "--config-file", self.conf]
        sh(*km, "db_sync")
        import sqlite3
        db = sqlite3.connect(os.path.join(self.dir, "keystone.sqlite"))
        db.execute("pragma journal_mode=WAL")
        db.close()
        sh(*km, "fernet_setup", "--keystone-user", "root", "--keystone-group", "root")
        sh(*km, "credential_setup", "--keystone-user", "root", "--keystone-group", "root")
        v3 = self.url + "/v3"
        sh(*km, "bootstrap", "--bootstrap-password", self.PASSWORD,
           "--bootstrap-admin-url", v3, "--bootstrap-public-url", v3,
           "--bootstrap-internal-url", v3, "--bootstrap-region-id", "RegionOne")
        self.log = os.path.join(self.dir, "requests.log")
        self.proc = subprocess.Popen(
            ["keystone-wsgi-public", "--host", "127.0.0.1", "--port", str(self.port), "--",
             "--config-file", self.conf],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                self.token()
                return
            except OSError:
                time.sleep(0.3)
        self.close()
        raise RuntimeError("keystone did not come up")

    def env(self):
        return {"OS_AUTH_URL": self.url + "/v3", "OS_USERNAME": "admin",
                "OS_PASSWORD": self.PASSWORD, "OS_PROJECT_NAME": "admin",
                "OS_USER_DOMAIN_NAME": "Default", "OS_PROJECT_DOMAIN_NAME": "Default",
                "OS_REGION_NAME": "RegionOne", "OS_INTERFACE": "public"}

    def token(self):
        import urllib.request
        body = json.dumps({"auth": {"identity": {"methods": ["password"], "password": {
            "user": {"name": "admin", "domain": {"name": "Default"},
                     "password": self.PASSWORD}}},
            "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}}).encode()
        req = urllib.request.Request(self.url + "/v3/auth/tokens", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.headers["X-Subject-Token"]

    def register_image_service(self, glance_url):
        import urllib.request
        tok = self.token()

        def post(path, obj):
            req = urllib.request.Request(self.url + "/v3" + path, method="POST",
                                         data=json.dumps(obj).encode(),
                                         headers={"Content-Type": "application/json",
                                                  "X-Auth-Token": tok})
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())
        svc = post("/services", {"service": {"type": "image", "name": "glance"}})["service"]
        for iface in ("public", "internal", "admin"):
            post("/endpoints", {"endpoint": {"service_id": svc["id"], "interface": iface,
                                             "url": glance_url, "region_id": "RegionOne"}})

    def authtoken_conf(self):
        return """[keystone_authtoken]
www_authenticate_uri = {u}
auth_url = {u}
auth_type = password
username = admin
password = {p}
project_name = admin
user_domain_name = Default
project_domain_name = Default
""".format(u=self.url, p=self.PASSWORD)

    def token_requests(self):
        with open(self.log) as f:
            return sum(1 for l in f if "POST /v3/auth/tokens" in l)

    def close(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def restart_libvirtd(sig=signal.SIGTERM, down_s=0):
    """Stop libvirtd with sig (guests keep running), wait down_s seconds and
    start it again, by its PID. The new daemon is left running for the rest
    of the suite; when the suite runs under scripts/test its PID is added to
    the ones stopped at the end."""
    with open("/run/libvirtd.pid") as f:
        pid = int(f.read().strip())
    os.kill(pid, sig)
    for _ in range(300):
        if not os.path.exists("/proc/%d" % pid):
            break
        time.sleep(0.1)
    time.sleep(down_s)
    if os.path.exists("/run/libvirtd.pid"):
        os.unlink("/run/libvirtd.pid")  # a killed daemon leaves it behind
    sh("libvirtd", "-d")
    for _ in range(600):  # a first start probes QEMU: seconds
        if sh("virsh", "-c", URI, "version", check=False).returncode == 0:
            break
        time.sleep(0.1)
    started = os.environ.get("HS_STARTED_PIDS")
    if started:
        with open("/run/libvirtd.pid") as f, open(started, "a") as out:
            out.write(f.read().strip() + "\n")


class RabbitServer:
    """A private RabbitMQ node (Debian's rabbitmq-server, started directly, no
    systemd) on 127.0.0.1 with its own epmd, ports, data and cookie; started,
    restarted and stopped by PID. The guest user may connect from loopback.
    With @pki (a TestPKI) it serves AMQP over TLS alone, and asks every client
    for a certificate of the test CA; self.url is then oslo.messaging's TLS
    form, with the client's certificate."""

    def __init__(self, pki=None):
        self.dir = tempfile.mkdtemp(prefix="hstest-rabbit-")
        self.port, self.dist, self.epmd_port = free_port(), free_port(), free_port()
        self.node = "hstest%d%s@localhost" % (os.getpid(), "tls" if pki else "")
        self.url = "rabbit://guest:guest@127.0.0.1:%d/" % self.port
        with open(os.path.join(self.dir, "rabbitmq.conf"), "w") as f:
            if pki:
                f.write("listeners.tcp = none\n"
                        "listeners.ssl.default = 127.0.0.1:%d\n"
                        "ssl_options.cacertfile = %s\nssl_options.certfile = %s\n"
                        "ssl_options.keyfile = %s\nssl_options.verify = verify_peer\n"
                        "ssl_options.fail_if_no_peer_cert = true\nloopback_users = none\n"
                        % (self.port, pki.ca, pki.server, pki.server_key))
                self.url = ("rabbit://guest:guest@localhost:%d/?ssl=true&ssl_ca_file=%s"
                            "&ssl_cert_file=%s&ssl_key_file=%s"
                            % (self.port, pki.ca, pki.client, pki.client_key))
            else:
                f.write("listeners.tcp.default = 127.0.0.1:%d\nloopback_users = none\n"
                        % self.port)
        with open(os.path.join(self.dir, "enabled_plugins"), "w") as f:
            f.write("[].\n")
        self.env = dict(os.environ, HOME=self.dir, RABBITMQ_NODENAME=self.node,
                        RABBITMQ_DIST_PORT=str(self.dist),
                        RABBITMQ_MNESIA_BASE=os.path.join(self.dir, "mnesia"),
                        RABBITMQ_LOG_BASE=os.path.join(self.dir, "log"),
                        RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(self.dir, "enabled_plugins"),
                        RABBITMQ_PID_FILE=os.path.join(self.dir, "pid"),
                        RABBITMQ_CONFIG_FILE=os.path.join(self.dir, "rabbitmq"),
                        ERL_EPMD_PORT=str(self.epmd_port), ERL_EPMD_ADDRESS="127.0.0.1",
                        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=(
                            "-kernel inet_dist_use_interface {127,0,0,1}"))
        if not pki:
            self.env["RABBITMQ_NODE_PORT"] = str(self.port)
        self.epmd = subprocess.Popen(["epmd", "-port", str(self.epmd_port),
                                      "-address", "127.0.0.1"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proc = None
        self.start()

    def ctl(self, *args, timeout=120):
        return subprocess.run(["/usr/lib/rabbitmq/bin/rabbitmqctl", "-n", self.node] +
                              list(args), env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def start(self):
        if self.proc:
            return
        self.proc = subprocess.Popen(["/usr/lib/rabbitmq/bin/rabbitmq-server"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     cwd=self.dir)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("rabbitmq-server exited")
            if self.ctl("await_startup", "--timeout", "10").returncode == 0:
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("rabbitmq-server did not come up")

    def stop(self):
        """Stop the node: by the PID it wrote, then its start script."""
        if not self.proc:
            return
        pidfile = os.path.join(self.dir, "pid")
        try:
            with open(pidfile) as f:
                pid = int(f.read().strip())
            os.kill(pid, signal.SIGTERM)
            for _ in range(300):
                os.kill(pid, 0)
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        try:
            os.unlink(pidfile)
        except OSError:
            pass

    def close(self):
        self.stop()
        self.epmd.kill()
        self.epmd.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


TOKEN = "s3cret-token-for-the-agent-tests"


class TestPKI:
    """A certificate authority made for a test with openssl, and certificates
    it signed: a server's for localhost and 127.0.0.1, and a client's. Files
    are readable by all (a broker running as its own user reads them) but for
    the keys, which only root and @key_group may read."""

    def __init__(self, d, key_group=None, server_san="DNS:localhost,IP:127.0.0.1"):
        self.dir = os.path.join(d, "pki")
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.ca, self.ca_key = self.path("ca.pem"), self.path("ca.key")
        sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
           "-subj", "/CN=hotsnap test CA", "-keyout", self.ca_key, "-out", self.ca)
        self.server, self.server_key = self.sign("server", "localhost",
                                                 "subjectAltName=" + server_san, key_group)
        self.client, self.client_key = self.sign("client", "hotsnap test client",
                                                 "extendedKeyUsage=clientAuth", None)
        # another CA, whose certificates nobody here trusts
        self.other_ca, other_key = self.path("other-ca.pem"), self.path("other-ca.key")
        sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
           "-subj", "/CN=somebody else's CA", "-keyout", other_key, "-out", self.other_ca)

    def path(self, name):
        return os.path.join(self.dir, name)

    def sign(self, name, cn, ext, key_group):
        key, csr, crt, extfile = (self.path(name + s) for s in (".key", ".csr", ".pem", ".ext"))
        with open(extfile, "w") as f:
            f.write(ext + "\n")
        sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + cn,
           "-keyout", key, "-out", csr)
        sh("openssl", "x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
           "-CAcreateserial", "-days", "2", "-extfile", extfile, "-out", crt)
        os.chmod(key, 0o640 if key_group else 0o600)
        if key_group:
            import grp
            os.chown(key, 0, grp.getgrnam(key_group).gr_gid)
        for f in (crt, self.ca):
            os.chmod(f, 0o644)
        return crt, key


class TrapServer:
    """An HTTP server on 127.0.0.1 that records every request it gets (method,
    path, headers) and answers 404: where a credential must never arrive."""

    def __init__(self):
        import http.server
        import threading
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self):
                outer.requests.append((self.command, self.path, dict(self.headers)))
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def gated_qemu_img(d):
    """An environment whose qemu-img holds every convert until the file
    GATE exists (creating GATE.waiting first): a job stays in extract for as
    long as a test needs, whatever the machine's speed. Returns (env, gate)."""
    bindir = os.path.join(d, "gated-bin")
    os.makedirs(bindir, exist_ok=True)
    gate = os.path.join(d, "gate")
    with open(os.path.join(bindir, "qemu-img"), "w") as f:
        f.write('#!/bin/sh\n'
                'if [ "$1" = convert ]; then\n'
                '  : > "%s.waiting"\n'
                '  while [ ! -e "%s" ]; do sleep 0.05; done\n'
                'fi\n'
                'exec /usr/bin/qemu-img "$@"\n' % (gate, gate))
    os.chmod(os.path.join(bindir, "qemu-img"), 0o755)
    env = dict(os.environ, PATH=bindir + ":" + os.environ.get("PATH", "/usr/bin:/bin"))
    return env, gate


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=30):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Agent:
    """A `hotsnap agent` process, started and stopped by its PID."""

    def __init__(self, state, *args, port=None, env=None, home=None):
        """@home: where its socket, token and log go (default @state)."""
        self.state = state
        self.env = env
        home = home or state
        self.sock = os.path.join(home, "agent.sock")
        self.port = port or free_port()
        self.token_file = os.path.join(home, "token")
        with open(self.token_file, "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(self.token_file, 0o600)
        self.log = os.path.join(home, "agent.log")
        self.args = [HOTSNAP, "agent", "--state-dir", state, "--socket", self.sock,
                     "--listen", "127.0.0.1:%d" % self.port, "--token-file", self.token_file,
                     "--log", self.log] + list(args)
        self.start()

    def start(self):
        self.p = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, env=self.env)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.p.poll() is not None:
                raise AssertionError("the agent exited: %s" % self.p.stderr.read())
            try:
                status, body, _ = self.request("GET", "/healthz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("the agent did not become healthy: %s" % self.read_log())

    def read_log(self):
        with open(self.log) as f:
            return f.read()

    def request(self, method, path, body=None, headers=None, tcp=False, token=TOKEN):
        if tcp:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        else:
            c = UnixHTTPConnection(self.sock)
        h = dict(headers or {})
        if tcp and token:
            h["Authorization"] = "Bearer " + token
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            h["Content-Type"] = "application/json"
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            hdrs = {k.lower(): v for k, v in r.getheaders()}
            ctype = hdrs.get("content-type", "")
            return r.status, json.loads(data) if "json" in ctype else data.decode(), hdrs
        finally:
            c.close()

    def job(self, job_id):
        status, body, _ = self.request("GET", "/v1/snapshots/" + job_id)
        assert status == 200, (status, body)
        return body

    def wait_job(self, job_id, pred, timeout=240):
        deadline = time.time() + timeout
        while time.time() < deadline:
            j = self.job(job_id)
            if pred(j):
                return j
            time.sleep(0.2)
        raise AssertionError("job %s: condition not met; last %s" % (job_id, j))

    def wait_ended(self, job_id, timeout=240):
        return self.wait_job(job_id, lambda j: j["state"] in ("done", "failed"), timeout)

    def kill(self, sig=signal.SIGKILL):
        self.p.send_signal(sig)
        rc = self.p.wait(timeout=120)
        self.p.stderr.close()
        return rc

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
            self.p.stderr.close()
