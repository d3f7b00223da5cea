"""Live snapshots streamed from QEMU's pull-mode backup over NBD into the store:
the default for running guests. One read of the data, no image in scratch."""
import contextlib
import hashlib
import os
import signal
import subprocess
import threading
import time
import unittest

import libvirt

import hsfix
from hsfix import (IMAGES, EventLogMixin, GlanceGuestTestCase, Run, assert_sidecar_digest,
                   check_images, job_active, sh)

STOPS = (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_STOPPED)


@contextlib.contextmanager
def small_fs(name, size):
    """A fresh ext4 of @size (e.g. "24M") mounted below IMAGES, where QEMU can
    reach it; unmounted and removed after."""
    mnt = os.path.join(IMAGES, name)
    img = mnt + ".img"
    os.makedirs(mnt, exist_ok=True)
    sh("truncate", "-s", size, img)
    sh("mkfs.ext4", "-q", "-F", img)
    sh("mount", "-o", "loop", img, mnt)
    try:
        os.chmod(mnt, 0o711)
        yield mnt
    finally:
        subprocess.run(["umount", mnt], check=False)
        os.unlink(img)
        os.rmdir(mnt)


class ScratchWatch:
    """Polls, every 20 ms, the bytes allocated below a scratch directory and
    the free space of its filesystem, independently of hotsnap."""

    def __init__(self, path):
        self.path = path
        self.peak = 0
        self.min_free = None
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop.is_set():
            total = 0
            for root, _, files in os.walk(self.path):
                for f in files:
                    try:
                        total += os.lstat(os.path.join(root, f)).st_blocks * 512
                    except OSError:
                        pass
            self.peak = max(self.peak, total)
            if os.path.isdir(self.path):
                st = os.statvfs(self.path)
                free = st.f_bavail * st.f_frsize
                self.min_free = free if self.min_free is None else min(self.min_free, free)
            time.sleep(0.02)

    def close(self):
        self.stop.set()
        self.t.join()


class StreamTest(EventLogMixin, GlanceGuestTestCase):

    def streamed(self, g, run, t0, t1):
        """The run streamed, the guest ran and wrote throughout."""
        self.assertEqual(run.rc, 0, run.stderr + str(run.summary()))
        [res] = run.summary()["results"]
        self.assertEqual(res["mode"], "stream")
        # never paused or stopped: no SUSPENDED event
        self.assertEqual([e for e, _ in self.log.of(g.name, t0, t1 + 0.5) if e in STOPS], [])
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        [done] = [e for e in run.events if e.get("event") == "state" and e["state"] == "done"]
        return res, done

    def assert_in_glance(self, g, image_id):
        """Active, hashed by Glance as sha512 of what it holds, and one instant."""
        meta = self.glance.api("GET", "/v2/images/" + image_id)
        data = self.glance.download(image_id)
        self.assertEqual(meta["status"], "active")
        self.assertEqual(meta["os_hash_value"], hashlib.sha512(data).hexdigest())
        down = os.path.join(self.state, "down.qcow2")
        with open(down, "wb") as f:
            f.write(data)
        ok, msg = check_images(g.BLOCKS, down)
        self.assertTrue(ok, msg)

    def big_writer(self, name, **kw):
        # data enough that the stream takes a while, and the writer's ring
        # (16 MiB) is all the copy-before-write data there can be
        return self.writer(name, size_mb=512, data_mb=160, **kw)

    def test_writer_streamed_to_dir_and_to_glance(self):
        g = self.big_writer("st-writer")
        before = g.heartbeats()[-1]
        watch = ScratchWatch(os.path.join(self.state, "scratch"))
        t0 = time.time()
        run = self.snapshot(g.name)
        t1 = time.time()
        watch.close()
        res, done = self.streamed(g, run, t0, t1)
        [(img, meta)] = self.image_files(run)
        path = os.path.join(self.store, meta["file"])
        # every byte verified: the sidecar's digest is the file's
        assert_sidecar_digest(self, meta, path)
        ok, msg = check_images(g.BLOCKS, path)
        self.assertTrue(ok, msg)
        sh("qemu-img", "check", "-q", path)
        # no image in scratch: at most the overwritten blocks, far below the image
        self.assertGreater(img["size"], 150 << 20)
        self.assertLess(watch.peak, img["size"] / 5, "peak scratch %d" % watch.peak)
        self.assertLessEqual(done["scratch_peak"], 17 << 20)
        self.assert_nothing_left()

        # the same guest into a real Glance
        t0 = time.time()
        run = hsfix.hotsnap(self.state, "snapshot", "--to", "glance:" + self.glance.url, g.name)
        t1 = time.time()
        res, _ = self.streamed(g, run, t0, t1)
        [img] = res["images"]
        self.assert_in_glance(g, img["id"])
        g.assert_beats_after(before)  # it kept writing
        self.assert_nothing_left()

    def test_glance_restarted_mid_stream_reads_the_export_again(self):
        g = self.big_writer("st-glance")
        for img in self.glance.images():
            self.glance.api("DELETE", "/v2/images/" + img["id"])
        run = Run(self.state, "snapshot", "--to", "glance:" + self.glance.url, "--max-rate",
                  "20M", "--attempts", "8", g.name)
        run.until(lambda ev: ev.get("phase") == "upload" and ev.get("percent", 0) > 10)
        self.glance.stop()
        time.sleep(1.0)
        self.glance.start()
        run.finish()
        self.assertEqual(run.rc, 0, run.stderr + str(run.summary()))
        [res] = run.summary()["results"]
        self.assertEqual(res["mode"], "stream")
        [img] = res["images"]
        # one active, verified image, no stray record
        self.assertEqual([i["id"] for i in self.glance.images()], [img["id"]])
        self.assert_in_glance(g, img["id"])
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assert_nothing_left()

    def test_glance_stopped_while_saving_and_started_seconds_later(self):
        # an upgrade's restart, as its service script does it, with the
        # default attempts: the retries outlast it, and the record the dead
        # Glance left saving is replaced by one that takes the image
        g = self.big_writer("st-glance-term")
        for img in self.glance.images():
            self.glance.api("DELETE", "/v2/images/" + img["id"])
        run = Run(self.state, "snapshot", "--to", "glance:" + self.glance.url, "--max-rate",
                  "20M", g.name)
        run.until(lambda ev: ev.get("phase") == "upload" and ev.get("percent", 0) > 10)
        self.assertEqual([i["status"] for i in self.glance.images()], ["saving"])
        self.glance.stop(signal.SIGTERM)
        time.sleep(4)  # the outage itself: Glance is away this long
        self.glance.start()
        run.finish()
        self.assertEqual(run.rc, 0, run.stderr + str(run.summary()))
        [res] = run.summary()["results"]
        [img] = res["images"]
        # one active, verified image: the saving record was deleted
        self.assertEqual([(i["id"], i["status"]) for i in self.glance.images()],
                         [(img["id"], "active")])
        self.assert_in_glance(g, img["id"])
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assert_nothing_left()

    def test_scratch_filesystem_that_fills_ends_the_backup_first(self):
        # a 24 MiB scratch filesystem, a writing guest and a slow upload: the
        # overwritten blocks would fill it; the backup ends before they do
        with small_fs("hstest-scratchfs", "24M") as mnt:
            g = self.writer("st-full", size_mb=512, data_mb=160, rate=1000)
            before = g.heartbeats()[-1]
            watch = ScratchWatch(mnt)
            run = Run(self.state, "snapshot", "--to", "glance:" + self.glance.url,
                      "--scratch-dir", mnt, "--max-rate", "2M", g.name)
            run.finish()
            watch.close()
            self.assertEqual(run.rc, 1, run.stderr)
            err = run.summary()["results"][0]["error"]
            self.assertIn("scratch filesystem", err)
            self.assertIn("nearly full", err)
            # it never filled, and the guest never saw a failed write
            self.assertGreater(watch.min_free, 0)
            self.assertGreater(watch.peak, 4 << 20)
            self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
            self.assertFalse(job_active(g.dom))
            g.assert_beats_after(before)
            self.assertEqual(os.listdir(mnt), ["lost+found"])
            # no half-made record
            self.assertEqual([i for i in self.glance.images() if i["name"].startswith(g.name)], [])
            self.assert_nothing_left()

    def test_a_scratch_filled_at_once_pauses_no_guest_for_good(self):
        # another process takes the scratch filesystem's last byte at once,
        # while hotsnap is stopped (so its watch cannot end the backup
        # first): the guest's next write into the copy-before-write file
        # fails, and QEMU pauses the guest. hotsnap ends the backup and
        # resumes the guest it found running.
        with small_fs("hstest-scratchfull", "64M") as mnt:
            filler = os.path.join(mnt, "filler")
            g = self.writer("st-fillnow", size_mb=512, data_mb=64, rate=1000)
            run = Run(self.state, "snapshot", "--to", "dir:" + self.store, "--scratch-dir", mnt,
                      "--max-rate", "2M", g.name)
            run.until(lambda ev: ev.get("phase") == "upload" and ev.get("percent", 0) > 1)
            run.p.send_signal(signal.SIGSTOP)
            try:
                fd = os.open(filler, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                st = os.statvfs(mnt)
                try:
                    os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize)
                except OSError:
                    pass
                os.close(fd)
                deadline = time.time() + 60
                while g.dom.state() != [libvirt.VIR_DOMAIN_PAUSED,
                                        libvirt.VIR_DOMAIN_PAUSED_IOERROR]:
                    self.assertLess(time.time(), deadline, "the guest never hit the full scratch")
                    time.sleep(0.1)
            finally:
                run.p.send_signal(signal.SIGCONT)
            run.finish()
            # the guest's write failed, not the backup's: whichever comes
            # first once hotsnap runs again, the watch (failed, saying why)
            # or the stream's end (an image of the instant, consistent)
            if run.rc == 0:
                [(_, meta)] = self.image_files(run)
                ok, msg = check_images(g.BLOCKS, os.path.join(self.store, meta["file"]))
                self.assertTrue(ok, msg)
            else:
                self.assertEqual(run.rc, 1, run.stderr)
                self.assertIn("scratch filesystem", run.summary()["results"][0]["error"])
            warnings = [e["message"] for e in run.events if e.get("event") == "warning"]
            self.assertIn("paused by QEMU on a write error of the backup's scratch; resumed "
                          "once the backup ended", warnings, (g.dom.state(), run.stderr))
            self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
            self.assertFalse(job_active(g.dom))
            g.assert_beats_after(g.heartbeats()[-1])
            os.unlink(filler)
            self.assertEqual(os.listdir(mnt), ["lost+found"])
            self.assert_nothing_left()

    def test_shut_off_guest_streamed_through_qemu_nbd(self):
        g = self.guest("st-off", size_mb=256, data_mb=64)
        run = self.snapshot(g.name)
        self.assertEqual(run.rc, 0, run.stderr)
        [res] = run.summary()["results"]
        self.assertEqual(res["mode"], "offline")
        [(img, meta)] = self.image_files(run)
        path = os.path.join(self.store, meta["file"])
        same, out = hsfix.images_identical(path, g.disks[0].path)
        self.assertTrue(same, out)
        assert_sidecar_digest(self, meta, path)
        # qemu-nbd lived only as long as the stream
        self.assertEqual(sh("pgrep", "-x", "qemu-nbd", check=False).stdout, "")
        self.assert_nothing_left()



class NewStateDirTest(GlanceGuestTestCase):
    """A state directory that does not exist yet, or one that systemd made
    0700: a running guest is streamed, by the command and by the agent."""

    def test_the_command_makes_its_state_directory(self):
        g = self.guest("sd-cmd").start()
        for made in (None, 0o700):
            state = os.path.join(self.state, "new-%s" % made, "state")
            if made:
                os.makedirs(state, mode=made)
                os.chmod(state, made)
            run = hsfix.hotsnap(state, "snapshot", "--to", "dir:" + self.store, g.name)
            self.assertEqual(run.rc, 0, run.stderr + str(run.summary()))
            self.assertEqual(run.summary()["results"][0]["mode"], "stream")
            # QEMU's traverse bit and nothing more: nobody may list it
            self.assertEqual(os.stat(state).st_mode & 0o777, 0o701 if made else 0o711)
            self.assertEqual(os.listdir(os.path.join(state, "scratch")), [])
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assertFalse(job_active(g.dom))

    def test_the_agent_makes_its_state_directory(self):
        g = self.guest("sd-agent").start()
        state = os.path.join(self.state, "agent-new", "state")
        os.makedirs(os.path.dirname(state))
        # the socket and the token live beside it, as the unit has them apart
        agent = hsfix.Agent(state, "--to", "dir:" + self.store, home=os.path.dirname(state))
        try:
            status, job, _ = agent.request("POST", "/v1/snapshots", {"domain": g.name})
            self.assertEqual(status, 202, job)
            j = agent.wait_ended(job["id"])
            self.assertEqual(j["state"], "done", j.get("error"))
            self.assertEqual(j["mode"], "stream")
        finally:
            agent.stop()
        self.assertEqual(os.stat(state).st_mode & 0o777, 0o711)
        self.assertFalse(job_active(g.dom))


class StreamLibvirtdTest(GlanceGuestTestCase):
    """Apart: libvirtd's restart ends the other class's event connection."""

    def test_libvirtd_killed_as_the_backup_began(self):
        # the backup has begun, and the call that began it has not returned
        # (the guest agent's thaw hook holds it) when libvirtd is killed: on
        # the new connection the backup is found running on, and the job
        # goes on from its exports (it used to wait for ever, the backup and
        # its copy-before-write data growing)
        g = self.writer("st-began", size_mb=512, data_mb=160, agent=True, thaw_delay=8)
        g.wait_agent()
        run = Run(self.state, "snapshot", "--to", "dir:" + self.store, g.name)
        deadline = time.time() + 120
        while not g.console_lines("HS-THAW-WAITS"):
            self.assertLess(time.time(), deadline, "the thaw never began")
            time.sleep(0.05)
        self.assertTrue(job_active(g.dom))  # the backup runs
        hsfix.restart_libvirtd(signal.SIGKILL, down_s=2)
        type(self).c = self.c = hsfix.conn()
        g.c = self.c
        g.dom = self.c.lookupByName(g.name)
        run.finish(timeout=400)
        self.assertEqual(run.rc, 0, "%s %s" % (run.stderr, run.events[-5:]))
        [res] = run.summary()["results"]
        self.assertEqual(res["mode"], "stream")
        self.assertIn("down", [e.get("connection") for e in run.events])
        [(img, meta)] = self.image_files(run)
        ok, msg = check_images(g.BLOCKS, os.path.join(self.store, meta["file"]))
        self.assertTrue(ok, msg)
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assertFalse(job_active(g.dom))
        g.assert_fs_writable()
        self.assert_nothing_left()

    def test_libvirtd_restarted_mid_stream(self):
        # QEMU serves the export: the stream goes on while libvirtd is away,
        # and the backup is ended once it is back
        g = self.writer("st-libvirtd", size_mb=512, data_mb=160)
        run = Run(self.state, "snapshot", "--to", "glance:" + self.glance.url, "--max-rate",
                  "20M", g.name)
        run.until(lambda ev: ev.get("phase") == "upload" and ev.get("percent", 0) > 10)
        hsfix.restart_libvirtd(signal.SIGKILL, down_s=1)
        type(self).c = self.c = hsfix.conn()
        g.c = self.c
        g.dom = self.c.lookupByName(g.name)
        run.finish()
        self.assertEqual(run.rc, 0, "%s %s" % (run.stderr, run.events[-5:]))
        [res] = run.summary()["results"]
        self.assertEqual(res["mode"], "stream")
        # the stream went on through the restart: one upload, no second attempt
        self.assertIn("down", [e.get("connection") for e in run.events])
        data = self.glance.download(res["images"][0]["id"])
        down = os.path.join(self.state, "down.qcow2")
        with open(down, "wb") as f:
            f.write(data)
        ok, msg = check_images(g.BLOCKS, down)
        self.assertTrue(ok, msg)
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assertFalse(job_active(g.dom))
        self.assert_nothing_left()


if __name__ == "__main__":
    unittest.main()
