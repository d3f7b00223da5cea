"""`hotsnap prune` on stores of qcow2 chains made with qemu-img (the same
files and sidecars an --incremental snapshot writes; a real guest's chain
is pruned in test_incremental): the retention rules, the rewrite of a kept
overlay whose parent goes, and a prune killed at random points, after which
every sidecar is true and every kept image reads as it did."""
import fcntl
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

HOTSNAP = os.environ.get("HOTSNAP", os.path.join(os.path.dirname(__file__), "..", "..",
                                                  "build", "hotsnap"))
MIB = 1024 * 1024
UUID_A = "6f0e3c55-8a4b-4c1e-9d0a-0000000000a1"


def run(*args, **kw):
    return subprocess.run(list(args), capture_output=True, text=True, **kw)


def sha512(path):
    h = hashlib.sha512()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def content(path):
    """What a chain reads as: its flattened raw bytes' sha256."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        raw = os.path.join(d, "flat.raw")
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", path, raw],
                       check=True)
        h = hashlib.sha256()
        with open(raw, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        return h.hexdigest()


def image_id(n, series=0):
    return "0000%04d-0000-4000-8000-%012d" % (series, n)


class Store:
    """A store of one chain per disk: a full image, then overlays, each
    writing its own stretch, with hotsnap's sidecars."""

    def __init__(self, path):
        self.path = path
        os.makedirs(path, mode=0o700)
        self.images = []  # (id, disk), oldest first

    def add(self, n, disk, parent, created, size_mb, write_mb):
        iid = image_id(n, 0 if disk == "vda" else 1)
        f = iid + ".qcow2"
        p = os.path.join(self.path, f)
        if parent:
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", parent + ".qcow2",
                            "-F", "qcow2", p], check=True)
        else:
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", p, "%dM" % size_mb],
                           check=True)
        off = (n * write_mb) % (size_mb - write_mb)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c",
                        "write -P %d %dM %dM" % (n + 1, off, write_mb), p],
                       check=True, capture_output=True)
        os.chmod(p, 0o600)
        meta = {"id": iid, "name": "guest-%d" % n, "status": "active", "disk_format": "qcow2",
                "container_format": "bare", "size": os.path.getsize(p),
                "virtual_size": size_mb * MIB, "os_hash_algo": "sha512",
                "os_hash_value": sha512(p), "created_at": created, "file": f,
                "instance_uuid": UUID_A, "hotsnap_disk": disk,
                "hotsnap_incremental": bool(parent)}
        if parent:
            meta["hotsnap_parent"] = parent
            meta["hotsnap_backing_file"] = parent + ".qcow2"
        self.write_sidecar(iid, meta)
        self.images.append(iid)
        return iid

    def write_sidecar(self, iid, meta):
        p = os.path.join(self.path, iid + ".json")
        with open(p, "w") as f:
            json.dump(meta, f)
        os.chmod(p, 0o600)

    def sidecar(self, iid):
        with open(os.path.join(self.path, iid + ".json")) as f:
            return json.load(f)

    def ids(self):
        return sorted(n[:-5] for n in os.listdir(self.path) if n.endswith(".json"))


def chain_of(store, n, disk="vda", size_mb=64, write_mb=4, day0="2026-11-20", per_day=1):
    """n images of one disk: day0's full image, then overlays, per_day a day."""
    parent = None
    base = time.mktime(time.strptime(day0 + " 12:00:00", "%Y-%m-%d %H:%M:%S"))
    for i in range(n):
        t = base + (i // per_day) * 86400 + (i % per_day) * 600
        created = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))
        parent = store.add(i, disk, parent, created, size_mb, write_mb)
    return list(store.images)


class PruneCase(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="hstest-prune-", dir="/var/tmp")
        self.store = Store(os.path.join(self.tmp, "store"))

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def prune(self, *args, store=None):
        r = run(HOTSNAP, "--json", "--to", "dir:" + (store or self.store.path), "prune", *args)
        events = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
        return r, {e["id"]: e for e in events if e.get("event") == "pruned"}

    def assert_store_true(self, refs, store=None):
        """Every sidecar true (hotsnap verify), every image that has one
        passes qemu-img check and reads as it did; nothing else is left."""
        path = store or self.store.path
        r = run(HOTSNAP, "--to", "dir:" + path, "verify")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for iid in sorted(n[:-5] for n in os.listdir(path) if n.endswith(".json")):
            img = os.path.join(path, iid + ".qcow2")
            c = run("qemu-img", "check", "-q", "-f", "qcow2", img)
            self.assertEqual(c.returncode, 0, iid + ": " + c.stdout + c.stderr)
            self.assertEqual(content(img), refs[iid], iid + " reads other bytes")

    def refs(self):
        return {iid: content(os.path.join(self.store.path, iid + ".qcow2"))
                for iid in self.store.ids()}


class RetentionTest(PruneCase):

    def test_keep_last_flattens_the_oldest_kept_and_removes_the_rest(self):
        ids = chain_of(self.store, 5)
        refs = self.refs()
        r, ev = self.prune("--keep-last", "2")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual([ev[i]["action"] for i in ids],
                         ["remove", "remove", "remove", "flatten", "keep"])
        self.assertEqual(self.store.ids(), ids[3:])
        # the files of the two kept images and their sidecars, nothing else
        self.assertEqual(sorted(os.listdir(self.store.path)),
                         sorted([ids[3] + ".qcow2", ids[3] + ".json",
                                 ids[4] + ".qcow2", ids[4] + ".json"]))
        self.assert_store_true(refs)
        m = self.store.sidecar(ids[3])
        self.assertNotIn("hotsnap_parent", m)
        self.assertIn("pruned", m["hotsnap_pruned"])
        info = json.loads(run("qemu-img", "info", "--output=json",
                              os.path.join(self.store.path, ids[3] + ".qcow2")).stdout)
        self.assertNotIn("backing-filename", info)
        self.assertEqual(os.stat(os.path.join(self.store.path, ids[3] + ".qcow2")).st_mode
                         & 0o777, 0o600)
        # the next overlay still reads through the rewritten one
        self.assertEqual(self.store.sidecar(ids[4])["hotsnap_parent"], ids[3])
        # a second prune with the same rules has nothing to do
        r, ev = self.prune("--keep-last", "2")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual([ev[i]["action"] for i in ids[3:]], ["keep", "keep"])

    def test_daily_keeps_rebase_across_the_gaps(self):
        # two images a day for three days: keep the newest of each day
        ids = chain_of(self.store, 6, per_day=2)
        refs = self.refs()
        r, ev = self.prune("--keep-daily", "3")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual([ev[i]["action"] for i in ids],
                         ["remove", "flatten", "remove", "rebase", "remove", "rebase"])
        self.assertEqual(ev[ids[3]]["onto"], ids[1])
        self.assertEqual(ev[ids[5]]["onto"], ids[3])
        self.assertEqual(self.store.ids(), [ids[1], ids[3], ids[5]])
        self.assert_store_true(refs)
        self.assertEqual(self.store.sidecar(ids[5])["hotsnap_parent"], ids[3])
        self.assertEqual(self.store.sidecar(ids[5])["hotsnap_backing_file"], ids[3] + ".qcow2")

    def test_weekly_and_last_are_a_union(self):
        # 15 images a day apart from a Monday: the newest 2, and the newest of
        # each of the last 3 weeks (the last of which has one image)
        ids = chain_of(self.store, 15, day0="2026-11-02")
        refs = self.refs()
        r, ev = self.prune("--keep-last", "2", "--keep-weekly", "3")
        self.assertEqual(r.returncode, 0, r.stderr)
        kept = [i for i in ids if ev[i]["action"] != "remove"]
        weeks = {time.strftime("%G-W%V", time.localtime(
            time.mktime(time.strptime("2026-11-02 12:00:00", "%Y-%m-%d %H:%M:%S")) + n * 86400))
            for n in range(15)}
        self.assertEqual(len(weeks), 3)
        # the weeks' newest are Nov 16, 15 and 8; the newest two, Nov 16 and 15
        self.assertEqual(kept, [ids[6], ids[13], ids[14]], ev)
        self.assertEqual(ev[ids[6]]["action"], "flatten")
        self.assertEqual(ev[ids[13]]["action"], "rebase")
        self.assert_store_true(refs)

    def test_dry_run_changes_nothing(self):
        ids = chain_of(self.store, 4)
        before = {n: os.stat(os.path.join(self.store.path, n)).st_mtime_ns
                  for n in os.listdir(self.store.path)}
        r, ev = self.prune("--keep-last", "1", "--dry-run")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual([ev[i]["action"] for i in ids], ["remove"] * 3 + ["flatten"])
        self.assertFalse(any(e["done"] for e in ev.values()))
        after = {n: os.stat(os.path.join(self.store.path, n)).st_mtime_ns
                 for n in os.listdir(self.store.path)}
        self.assertEqual(before, after)

    def test_the_chains_last_image_and_other_disks_and_foreign_files_stay(self):
        ids = chain_of(self.store, 3)
        other = chain_of(self.store, 5, disk="vdb")[3:]  # vdb's: a series of its own
        # the chain file names vda's middle image as the chain's last
        chain = os.path.join(self.store.path, "chain-" + UUID_A)
        with open(chain, "w") as f:
            json.dump({"prefix": "hotsnap-0123abcd-", "checkpoint":
                       "hotsnap-0123abcd-" + ids[1],
                       "disks": {"vda": {"image": ids[1], "file": ids[1] + ".qcow2",
                                         "virtual_size": 64 * MIB}}}, f)
        # a sidecar that is no hotsnap snapshot of a disk, and one not root's
        foreign = image_id(77, 5)
        shutil.copy(os.path.join(self.store.path, ids[0] + ".qcow2"),
                    os.path.join(self.store.path, foreign + ".qcow2"))
        m = self.store.sidecar(ids[0])
        m.update({"id": foreign, "file": foreign + ".qcow2"})
        del m["hotsnap_disk"]
        self.store.write_sidecar(foreign, m)
        r, ev = self.prune("--keep-last", "1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(ev[ids[1]]["action"], "flatten")  # its parent goes
        self.assertIn("chain", ev[ids[1]]["reason"])
        self.assertEqual(ev[ids[2]]["action"], "keep")  # its parent is kept
        self.assertEqual(ev[ids[0]]["action"], "remove")
        self.assertEqual(ev[foreign]["action"], "keep")
        self.assertEqual([ev[i]["action"] for i in other], ["remove"] * 4 + ["flatten"])
        self.assertTrue(os.path.exists(os.path.join(self.store.path, foreign + ".qcow2")))
        self.assertTrue(os.path.exists(chain))

    def test_the_qcow2_headers_say_what_reads_through_what_not_the_sidecars(self):
        # a sidecar that lies about its parent (a loop) is not believed:
        # the backing files QEMU reads are
        ids = chain_of(self.store, 4)
        refs = self.refs()
        m = self.store.sidecar(ids[1])
        m["hotsnap_parent"] = ids[2]
        self.store.write_sidecar(ids[1], m)
        r, ev = self.prune("--keep-last", "1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual([ev[i]["action"] for i in ids], ["remove"] * 3 + ["flatten"])
        self.assert_store_true(refs)
        # an overlay reading a file outside the store: its series is left alone
        ids = chain_of(self.store, 3, disk="vdb")[-3:]
        outside = os.path.join(self.tmp, "outside.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", outside, "64M"], check=True)
        top = os.path.join(self.store.path, ids[-1] + ".qcow2")
        subprocess.run(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", outside, top],
                       check=True)
        m = self.store.sidecar(ids[-1])
        m.update({"size": os.path.getsize(top), "os_hash_value": sha512(top)})
        self.store.write_sidecar(ids[-1], m)
        r, ev = self.prune("--keep-last", "1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual([ev[i]["action"] for i in ids], ["keep"] * 3, ev)
        self.assertIn("no image of the store", ev[ids[0]]["reason"])

    def test_bad_requests_are_refused_with_one_line(self):
        chain_of(self.store, 2)
        for args, want in [((), "prune needs --keep-last"),
                           (("--keep-daily", "65"), "--keep-daily"),
                           (("--keep-last", "x"), "--keep-last")]:
            r, _ = self.prune(*args)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(want, r.stderr)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        r = run(HOTSNAP, "--to", "glance:http://127.0.0.1:9/", "prune", "--keep-last", "1")
        self.assertEqual(r.returncode, 2)
        self.assertIn("dir:PATH", r.stderr)
        os.chmod(self.store.path, 0o777)
        r, _ = self.prune("--keep-last", "1")
        self.assertEqual(r.returncode, 1)
        self.assertIn("sticky", r.stderr)
        self.assertEqual(len(self.store.ids()), 2)
        r = run(HOTSNAP, "--keep-last", "1", "list")
        self.assertEqual(r.returncode, 2)
        self.assertIn("options of 'prune'", r.stderr)


class KilledTest(PruneCase):
    """A prune SIGKILLed at random moments: every sidecar true and every
    kept image readable, then the next prune finishes the job."""

    def test_a_dead_prunes_temporary_files_go_and_a_live_prune_is_alone(self):
        ids = chain_of(self.store, 3)
        refs = self.refs()
        before = sorted(os.listdir(self.store.path))
        # a prune killed inside an atomic write: its journal's temporary file,
        # and one of a sidecar its journal rewrites
        with open(os.path.join(self.store.path, "..prune-journal.0123456789abcdef.tmp"),
                  "w") as f:
            f.write("{")
        with open(os.path.join(self.store.path, ".prune-journal"), "w") as f:
            json.dump({"rewrite": [{"id": ids[1], "tmp": ids[1] + ".prune.qcow2",
                                    "file": ids[1] + ".qcow2"}], "remove": []}, f)
        # ... killed after its swap's rename, before the sidecar named the image
        # again: the copy is the image (two links of one file), the sidecar names it
        os.link(os.path.join(self.store.path, ids[1] + ".qcow2"),
                os.path.join(self.store.path, ids[1] + ".prune.qcow2"))
        m = self.store.sidecar(ids[1])
        m["file"] = ids[1] + ".prune.qcow2"
        self.store.write_sidecar(ids[1], m)
        side_tmp = ".%s.json.fedcba9876543210.tmp" % ids[1]
        with open(os.path.join(self.store.path, side_tmp), "w") as f:
            f.write("{")
        # a snapshot's sidecar being written now, of an image no journal names
        live_tmp = ".%s.json.0011223344556677.tmp" % image_id(9)
        with open(os.path.join(self.store.path, live_tmp), "w") as f:
            f.write("{")
        # another prune holds the store: this one is refused, and touches nothing
        fd = os.open(self.store.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            r, _ = self.prune("--keep-last", "3")
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("another prune of it is running", r.stderr)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
            self.assertIn(side_tmp, os.listdir(self.store.path))
            # a dry run only reads: it goes on beside a running prune
            r, _ = self.prune("--keep-last", "3", "--dry-run")
            self.assertEqual(r.returncode, 0, r.stderr)
        finally:
            os.close(fd)
        r, _ = self.prune("--keep-last", "3")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sorted(os.listdir(self.store.path)), sorted(before + [live_tmp]))
        self.assertEqual(self.store.sidecar(ids[1])["file"], ids[1] + ".qcow2")
        self.assert_store_true(refs)

    def test_killed_at_random_points(self):
        ids = chain_of(self.store, 6, size_mb=256, write_mb=24, per_day=2)
        refs = self.refs()
        pristine = os.path.join(self.tmp, "pristine")
        shutil.copytree(self.store.path, pristine)
        # the length of a whole run, to spread the kills over
        work = os.path.join(self.tmp, "work")
        shutil.copytree(pristine, work)
        t0 = time.monotonic()
        r, _ = self.prune("--keep-daily", "2", store=work)
        whole = time.monotonic() - t0
        self.assertEqual(r.returncode, 0, r.stderr)
        final = sorted(os.listdir(work))
        seed = int(os.environ.get("HS_PRUNE_SEED", random.randrange(1 << 30)))
        rnd = random.Random(seed)
        rounds = [("random", rnd.uniform(0, whole)) for _ in range(6)]
        # and at states a random kill might miss: a copy being made, the journal there
        rounds += [("copy", None), ("journal", None)]
        for what, delay in rounds:
            shutil.rmtree(work)
            shutil.copytree(pristine, work)
            p = subprocess.Popen([HOTSNAP, "--to", "dir:" + work, "prune", "--keep-daily", "2"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                if delay is not None:
                    try:
                        p.wait(timeout=delay)
                    except subprocess.TimeoutExpired:
                        pass
                else:
                    want = ".prune." if what == "copy" else ".prune-journal"
                    while p.poll() is None and not any(want in n for n in os.listdir(work)):
                        time.sleep(0.005)
            finally:
                p.kill()
                p.wait()
            msg = "seed %d, kill %s %s" % (seed, what, delay)
            self.assert_store_true(refs, store=work)
            r, _ = self.prune("--keep-daily", "2", store=work)
            self.assertEqual(r.returncode, 0, msg + ": " + r.stderr)
            self.assertEqual(sorted(os.listdir(work)), final, msg)
            self.assert_store_true(refs, store=work)


if __name__ == "__main__":
    unittest.main()
