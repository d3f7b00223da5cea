"""Real faults against the promise: whatever happens, a guest hotsnap found
running is left running (or paused, as found at the moment of capture),
thawed, with no job of hotsnap's left in libvirt, no scratch file and no
journal. libvirtd is killed for real (SIGKILL) and started again; hotsnap
itself is interrupted by real signals."""
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
import unittest
import uuid

import libvirt

import hsfix
from hsfix import (GuestTestCase, Run, WriterGuest, check_images, hotsnap, images_identical,
                   job_active, proc_alive, state_event)


class FaultTestCase(GuestTestCase):

    def reconnect(self, *guests):
        type(self).c = self.c = hsfix.conn()
        for g in guests:
            g.c = self.c
            g.dom = self.c.lookupByName(g.name)

    def wait_console(self, g, prefix, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if g.console_lines(prefix):
                return
            time.sleep(0.02)
        self.fail("%s never printed %r" % (g.name, prefix))

    def assert_promise(self, g, state=libvirt.VIR_DOMAIN_RUNNING):
        """The guest as it was, thawed and writing, no job, nothing left."""
        self.assertEqual(g.state(), state)
        self.assertFalse(job_active(g.dom), "a libvirt job was left on %s" % g.name)
        self.assertEqual(g.dom.hasManagedSaveImage(), 0)
        if isinstance(g, WriterGuest) and state == libvirt.VIR_DOMAIN_RUNNING:
            g.assert_fs_writable()
        self.assert_nothing_left()


class LibvirtdKilledTest(FaultTestCase):

    def test_killed_during_the_freeze_of_a_live_snapshot(self):
        # the freeze hook holds the freeze for 3 s: libvirtd dies inside the
        # FSFreeze call, the guest freezes after it is gone
        g = self.writer("kill-freeze", agent=True, freeze_delay=3)
        g.wait_agent()
        run = Run(self.state, "snapshot", "--to", "dir:" + self.store, "--quiesce", "required",
                  g.name)
        self.wait_console(g, "HS-FREEZE-HOOK freeze")
        hsfix.restart_libvirtd(signal.SIGKILL, down_s=1)
        run.finish()
        self.reconnect(g)
        conn = [e["connection"] for e in run.events if e.get("event") == "libvirt"]
        self.assertEqual(conn[:2], ["down", "up"])
        # hotsnap itself thawed the guest once libvirt was back
        self.assertEqual(g.freeze_status(), "thawed")
        if run.rc == 0:  # the backup may have run after all: then it is whole
            [(img, meta)] = self.image_files(run)
            ok, msg = check_images(g.BLOCKS, os.path.join(self.store, meta["file"]))
            self.assertTrue(ok, msg)
        else:
            self.assertEqual(run.rc, 1, run.stderr)
            self.assertIn("libvirt connection was lost", run.summary()["results"][0]["error"])
            self.assertEqual(os.listdir(self.store), [])
        self.assert_promise(g)

    def test_killed_during_a_quiesced_backup(self):
        # libvirtd keeps the backup running across its death and restart:
        # hotsnap looks again and finishes its own run
        g = self.writer("kill-backup", agent=True, size_mb=1024, data_mb=1000, rate=100)
        g.wait_agent()
        run = Run(self.state, "snapshot", "--to", "dir:" + self.store, "--quiesce", "required",
                  g.name)
        run.until(lambda ev: ev.get("event") == "captured" or
                  (ev.get("event") == "progress" and ev.get("phase") == "capture"))
        hsfix.restart_libvirtd(signal.SIGKILL, down_s=1)
        run.finish()
        self.reconnect(g)
        self.assertEqual(run.rc, 0, run.stderr + str(run.summary()))
        [(img, meta)] = self.image_files(run)
        ok, msg = check_images(g.BLOCKS, os.path.join(self.store, meta["file"]))
        self.assertTrue(ok, msg)
        self.assertEqual(g.freeze_status(), "thawed")
        self.assert_promise(g)

    def test_killed_during_a_cold_save(self):
        g = self.guest("kill-cold", size_mb=256, data_mb=64).start()
        run = Run(self.state, "snapshot", "--to", "dir:" + self.store, "--mode", "cold", g.name)
        run.until(state_event("capture"))
        self.wait_for_save_job(g)
        hsfix.restart_libvirtd(signal.SIGKILL, down_s=1)
        run.finish()
        self.reconnect(g)
        conn = [e["connection"] for e in run.events if e.get("event") == "libvirt"]
        self.assertEqual(conn[:2], ["down", "up"])
        # either the save was done while libvirt was away (then the run goes
        # on and publishes), or it was cut short (then it fails cleanly)
        if run.rc == 0:
            [(img, meta)] = self.image_files(run)
            same, out = images_identical(os.path.join(self.store, meta["file"]),
                                         g.disks[0].path)
            self.assertTrue(same, out)
        else:
            self.assertEqual(run.rc, 1, run.stderr)
            self.assertIn("libvirt connection was lost", run.summary()["results"][0]["error"])
        self.assert_promise(g)


def catches(pid, sig):
    """Whether process pid has a handler for sig (SigCgt in /proc)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return (int(line.split()[1], 16) >> (sig - 1)) & 1 == 1
    return False


class SignalTest(FaultTestCase):

    def test_sighup_during_a_cold_snapshot(self):
        # an SSH session that drops: the guest comes back, nothing is left
        g = self.guest("hup-cold", size_mb=1024, data_mb=384).start()
        run = Run(self.state, "snapshot", "--to", "dir:" + self.store, "--mode", "cold", g.name)
        run.until(state_event("extract"))
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_SHUTOFF)  # saved, off for now
        run.p.send_signal(signal.SIGHUP)
        run.finish()
        self.assertEqual(run.rc, 1)
        self.assertIn("canceled", run.summary()["results"][0]["error"])
        self.assertEqual(os.listdir(self.store), [])
        self.assert_promise(g)

    def test_sigterm_during_recovery_starts_nothing(self):
        # a killed run left a guest saved; a signal while the next run
        # recovers lets the recovery finish and starts no snapshot
        g = self.guest("term-recover", size_mb=1024, data_mb=384).start()
        self.kill_after_the_save(g)
        nxt = Run(self.state, "snapshot", "--to", "dir:" + self.store, g.name)
        # once its handler is in place (before recovery starts; the restore
        # of the saved guest takes seconds): not while it is still loading
        for _ in range(500):
            if catches(nxt.p.pid, signal.SIGTERM):
                break
            time.sleep(0.01)
        nxt.p.send_signal(signal.SIGTERM)
        nxt.finish()
        self.assertEqual(nxt.rc, 1, nxt.stderr)
        self.assertEqual([e for e in nxt.events if e.get("event") == "state"], [])
        self.assertEqual(os.listdir(self.store), [])
        self.assert_promise(g)


class GuestStateTest(FaultTestCase):

    def test_the_state_at_the_moment_of_the_save_comes_back(self):
        # jobs that wait for the one capture slot find their guests paused or
        # resumed by the operator meanwhile: each comes back as it was at the
        # moment of its save (hotsnap is held with SIGSTOP while the operator
        # acts, so that the jobs surely wait)
        guests = [self.guest("state-run-%d" % i).start() for i in range(2)] + \
            [self.guest("state-paused-%d" % i).start(paused=True) for i in range(2)]
        run = Run(self.state, "snapshot", "--to", "dir:" + self.store, "--mode", "cold",
                  "--max-captures", "1", *[g.name for g in guests])
        # every job waiting, and the one slot's capture begun: its event can
        # follow the last wait, and a guest hotsnap is saving must not be
        # taken for one that waits (the next capture comes only after this
        # one's save and restore)
        waiting, capturing = set(), set()

        def all_waiting_and_one_captured(ev):
            if ev.get("state") == "waiting" and ev.get("for") == "capture":
                waiting.add(ev["domain"])
            if ev.get("state") == "capture":
                capturing.add(ev["domain"])
            return len(waiting) == len(guests) and capturing

        run.until(all_waiting_and_one_captured)
        run.p.send_signal(signal.SIGSTOP)
        try:
            started = {e["domain"] for e in run.events if e.get("state") == "capture"}
            self.assertEqual(len(started), 1)
            expect = {}
            for g in guests:
                if g.name in started:
                    expect[g.name] = g.state()
                elif g.state() == libvirt.VIR_DOMAIN_RUNNING:
                    g.dom.suspend()
                    expect[g.name] = libvirt.VIR_DOMAIN_PAUSED
                else:
                    g.dom.resume()
                    expect[g.name] = libvirt.VIR_DOMAIN_RUNNING
        finally:
            run.p.send_signal(signal.SIGCONT)
        run.finish()
        self.assertEqual(run.rc, 0, run.stderr + str(run.summary()))
        # both ways were taken, whichever guest went first
        self.assertEqual(set(expect.values()),
                         {libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED})
        for g in guests:
            self.assert_promise(g, expect[g.name])


class RecoveryTest(FaultTestCase):

    def test_list_leaves_another_tools_backup_running(self):
        # a dead run's journal of the domain (killed in its upload, after
        # its push backup ended: a stream's backup runs until its upload
        # ends, and test_live kills that one), then another tool backs the
        # domain up: recovery, run by `hotsnap list`, removes the dead run's
        # image record and leaves that backup alone
        glance = hsfix.GlanceServer()
        self.addCleanup(glance.close)
        g = self.guest("other-backup", size_mb=1024, data_mb=1000).start()
        run = Run(self.state, "snapshot", "--to", "glance:" + glance.url, "--mode", "live", g.name)
        run.until(state_event("upload"))
        run.p.send_signal(signal.SIGKILL)
        run.finish()
        self.assertEqual(len(os.listdir(os.path.join(self.state, "journal"))), 2)
        other = os.path.join(g.dir, "other")  # QEMU binds its socket there
        os.makedirs(other)
        shutil.chown(other, "libvirt-qemu", "libvirt-qemu")
        # pull mode: it runs until its tool ends it, where a push backup
        # could finish on its own before the check
        target = os.path.join(other, "vda.scratch")
        g.dom.backupBegin("<domainbackup mode='pull'><server transport='unix' socket='%s'/>"
                          "<disks><disk name='vda' backup='yes' type='file'>"
                          "<scratch file='%s'/></disk></disks></domainbackup>"
                          % (os.path.join(other, "nbd.sock"), target), None, 0)
        try:
            nxt = hotsnap(self.state, "list")
            self.assertEqual(nxt.rc, 0, nxt.stderr)
            rec = [e for e in nxt.events if isinstance(e, dict) and e.get("event") == "recovered"]
            self.assertEqual(len(rec), 1, nxt.events)
            self.assertTrue(job_active(g.dom), "another tool's backup was aborted")
            self.assertIn(target, g.dom.backupGetXMLDesc())
            self.assertEqual([i for i in glance.images() if i["name"].startswith(g.name)], [])
        finally:
            if job_active(g.dom):
                g.dom.abortJob()
            for _ in range(100):
                if not job_active(g.dom):
                    break
                time.sleep(0.1)
        self.assert_promise(g)

    def test_a_journal_rewrite_cut_short_leaves_nothing(self):
        # a run killed between a journal's write and its rename leaves
        # .<id>.json.<random>.tmp (on its first write, with a lock and no
        # journal): recovery removes them, but not a live run's, whose lock
        # is held
        jdir = os.path.join(self.state, "journal")
        os.makedirs(jdir, mode=0o700)
        dead, nolock, live = (str(uuid.uuid4()) for _ in range(3))
        for name in (dead + ".lock", "." + dead + ".json.0011223344556677.tmp",
                     "." + nolock + ".json.8899aabbccddeeff.tmp",
                     "." + live + ".json.0123456789abcdef.tmp"):
            with open(os.path.join(jdir, name), "w") as f:
                f.write("{}")
        held = open(os.path.join(jdir, live + ".lock"), "w")
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            rec = hotsnap(self.state, "recover")
            self.assertEqual(rec.rc, 0, rec.stderr)
            self.assertEqual(sorted(os.listdir(jdir)),
                             sorted(["." + live + ".json.0123456789abcdef.tmp", live + ".lock"]))
        finally:
            held.close()
        for name in os.listdir(jdir):
            os.unlink(os.path.join(jdir, name))

    def test_a_dead_runs_sidecar_temporaries_go_for_every_disk(self):
        # a run of two disks killed while writing both sidecars into a
        # store: recovery removes each disk's temporary file, and touches
        # nothing else there
        jdir = os.path.join(self.state, "journal")
        os.makedirs(jdir, mode=0o700)
        os.makedirs(self.store, exist_ok=True)
        job, ids = str(uuid.uuid4()), [str(uuid.uuid4()) for _ in range(2)]
        with open(os.path.join(jdir, job + ".json"), "w") as f:
            json.dump({"job": job, "target": "dir:" + self.store,
                       "images": [{"id": i, "format": "qcow2"} for i in ids]}, f)
        tmps = [".%s.json.%016x.tmp" % (i, k) for k, i in enumerate(ids)]
        other = ".%s.json.0123456789abcdef.tmp" % uuid.uuid4()  # no journal's
        for name in tmps + [other]:
            with open(os.path.join(self.store, name), "w") as f:
                f.write("{")
        rec = hotsnap(self.state, "recover")
        self.assertEqual(rec.rc, 0, rec.stderr)
        removed = [f for e in rec.events if isinstance(e, dict) and e.get("event") == "recovered"
                   for f in e.get("store_removed", [])]
        self.assertEqual(sorted(removed), sorted(tmps), rec.events)
        self.assertEqual(os.listdir(self.store), [other])
        self.assertEqual(os.listdir(jdir), [])

    def test_recovery_leaves_another_save_image(self):
        # a killed run left the guest saved; the operator starts it, and
        # later saves it himself: the next run's recovery leaves that alone
        g = self.guest("other-save", size_mb=1024, data_mb=384).start()
        self.kill_after_the_save(g)
        time.sleep(0.5)  # the dead run's qemu-img children go with their locks
        for _ in range(100):
            try:
                g.dom.create()
                break
            except libvirt.libvirtError:
                time.sleep(0.2)  # qemu-img of the dead run still holds the disk
        g.dom.managedSave(0)
        nxt = hotsnap(self.state, "list")
        self.assertEqual(nxt.rc, 0, nxt.stderr)
        rec = [e for e in nxt.events if isinstance(e, dict) and e.get("event") == "recovered"]
        self.assertEqual(len(rec), 1, nxt.events)
        self.assertIn("not left saved by hotsnap", rec[0]["action"])
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_SHUTOFF)
        self.assertEqual(g.dom.hasManagedSaveImage(), 1)  # the operator's, still there
        g.dom.create()
        self.assert_promise(g)


def readable_by_nobody(path):
    """Whether the unprivileged user nobody can open @path for reading."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            with open(path, "rb") as f:
                f.read(1)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, st = os.waitpid(pid, 0)
    return os.WEXITSTATUS(st) == 0


class FilesTest(FaultTestCase):
    """Guests' disks are root's: images, sidecars and scratch copies too."""

    def test_images_and_scratch_are_root_only(self):
        g = self.guest("files", size_mb=512, data_mb=256).start()
        # the default store, made by hotsnap
        run = Run(self.state, "snapshot", "--mode", "live", "--format", "raw", g.name)
        run.until(lambda ev: ev.get("event") == "captured")
        run.p.send_signal(signal.SIGSTOP)  # the copies stay where they are
        try:
            scratch = os.path.join(self.state, "scratch")
            files = [os.path.join(d, f) for d, _, fs in os.walk(scratch) for f in fs]
            self.assertTrue(files, "nothing in the scratch during the job")
            for f in files:
                self.assertFalse(readable_by_nobody(f), f)
        finally:
            run.p.send_signal(signal.SIGCONT)
        run.finish()
        self.assertEqual(run.rc, 0, run.stderr)
        store = os.path.join(self.state, "images")
        self.assertEqual(os.stat(store).st_mode & 0o777, 0o700)
        names = os.listdir(store)
        self.assertEqual(len(names), 2, names)  # the image and its sidecar
        for n in names:
            path = os.path.join(store, n)
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600, n)
            os.chmod(store, 0o755)  # even in a store opened to all, the files stay closed
            self.assertFalse(readable_by_nobody(path), n)
        # an operator who serves the store to a group says so
        run = self.snapshot("--store-mode", "0640", g.name)
        self.assertEqual(run.rc, 0, run.stderr)
        for n in os.listdir(self.store):
            self.assertEqual(os.stat(os.path.join(self.store, n)).st_mode & 0o777, 0o640, n)
        bad = self.snapshot("--store-mode", "0777", g.name)
        self.assertEqual(bad.rc, 2)
        self.assertIn("--store-mode '0777'", bad.stderr)
        self.assert_promise(g)

    def test_quote_and_ampersand_in_the_scratch_path(self):
        # the backup and copy XML carry the scratch path: escaped, it works
        g = self.guest("xml-esc", data_mb=8).start()
        scratch = os.path.join(self.state, "it's & <odd>")
        for mode in ("live", "mirror"):
            run = self.snapshot("--mode", mode, "--scratch-dir", scratch, g.name)
            self.assertEqual(run.rc, 0, mode + ": " + run.stderr)
            [img] = run.summary()["results"][0]["images"]
            same, out = images_identical(os.path.join(self.store, img["id"] + ".qcow2"),
                                         g.disks[0].path)
            self.assertTrue(same, mode + ": " + out)
            self.assertEqual(os.listdir(scratch), [])
        self.assert_promise(g)


class KilledMidUploadTest(FaultTestCase):

    def test_store_files_of_a_killed_run_are_removed(self):
        # the command SIGKILLed while its images are being written into a
        # store: the next run (here `recover`) removes the parts it left
        gs = [self.guest("ku-%d" % i, size_mb=512, data_mb=400).start() for i in range(3)]
        run = Run(self.state, "snapshot", "--to", "dir:" + self.store, *[g.name for g in gs])
        deadline = time.time() + 120
        while True:
            parts = [f for f in os.listdir(self.store) if f.endswith(".part")]
            if parts:
                run.p.send_signal(signal.SIGSTOP)  # held: the part stays as it is
                if [f for f in os.listdir(self.store) if f.endswith(".part")]:
                    break
                run.p.send_signal(signal.SIGCONT)  # it was done a moment ago: the next
            self.assertIsNone(run.p.poll(), "the run ended before it wrote a part")
            self.assertLess(time.time(), deadline)
            time.sleep(0.005)
        run.p.send_signal(signal.SIGKILL)
        run.finish()
        self.assertTrue([f for f in os.listdir(self.store) if f.endswith(".part")])
        rec = hotsnap(self.state, "recover")
        self.assertEqual(rec.rc, 0, rec.stderr)
        removed = [f for e in rec.events if e.get("event") == "recovered"
                   for f in e.get("store_removed", [])]
        self.assertTrue(any(f.endswith(".part") for f in removed), rec.events)
        # what is left in the store is published: each image with its sidecar
        left = os.listdir(self.store)
        self.assertEqual([f for f in left if f.startswith(".")], [])
        for f in left:
            if f.endswith(".qcow2"):
                self.assertIn(f[:-len(".qcow2")] + ".json", left)
        for g in gs:
            self.assert_promise(g)

    def test_a_killed_runs_qemu_img_dies_with_it(self):
        # hotsnap SIGKILLed while its qemu-img converts from the export: the
        # kernel kills the child too (held stopped here, so that only that
        # can end it), and nothing writes beside the next run's recovery
        g = self.guest("ku-conv", size_mb=512, data_mb=400).start()
        run = Run(self.state, "snapshot", "--compress", "--to", "dir:" + self.store, g.name)
        run.until(lambda e: e.get("event") == "progress" and e.get("phase") == "extract")
        deadline = time.time() + 60
        pid = None
        while pid is None:
            r = subprocess.run(["pgrep", "-P", str(run.p.pid), "-x", "qemu-img"],
                               capture_output=True, text=True)
            pid = int(r.stdout.split()[0]) if r.stdout.split() else None
            self.assertIsNone(run.p.poll(), "the run ended before its qemu-img was seen")
            self.assertLess(time.time(), deadline, "no qemu-img child of the run")
        os.kill(pid, signal.SIGSTOP)
        run.p.send_signal(signal.SIGKILL)
        run.finish()
        deadline = time.time() + 30
        while proc_alive(pid):
            self.assertLess(time.time(), deadline, "qemu-img %d outlived hotsnap" % pid)
            time.sleep(0.02)
        rec = hotsnap(self.state, "recover")
        self.assertEqual(rec.rc, 0, rec.stderr)
        self.assertEqual([f for f in os.listdir(self.store) if f.startswith(".")], [])
        self.assert_promise(g)


if __name__ == "__main__":
    unittest.main()
