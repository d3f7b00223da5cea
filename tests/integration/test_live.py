"""Live snapshots of writing guests: one consistent instant, and the guest runs on.
The default for running guests streams (pull mode, test_stream.py has its own
checks); push mode (--mode live) and mirror are tested by name."""
import json
import os
import signal
import time
import unittest

import libvirt
import libvirt_qemu

from hsfix import (EventLogMixin, GuestTestCase, Run, check_images, hotsnap, job_active,
                   sh, state_event)

STOPS = (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_STOPPED)


class LiveTest(EventLogMixin, GuestTestCase):

    def live_snapshot(self, g, *args):
        before = g.heartbeats()[-1]
        t0 = time.time()
        run = self.snapshot(*args, g.name)
        t1 = time.time()
        self.assertEqual(run.rc, 0, run.stderr + str(run.summary()))
        # the guest was never paused or stopped, and it kept writing
        self.assertEqual([e for e, _ in self.log.of(g.name, t0, t1 + 0.5) if e in STOPS], [])
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        g.assert_beats_after(before)
        return run

    def test_push_is_consistent(self):
        g = self.writer("live-1")
        run = self.live_snapshot(g, "--mode", "live")
        self.assertEqual(run.summary()["results"][0]["mode"], "live")
        [(img, meta)] = self.image_files(run)
        ok, msg = check_images(g.BLOCKS, os.path.join(self.store, meta["file"]))
        self.assertTrue(ok, msg)
        self.assert_nothing_left()

    def test_a_careless_copy_fails_the_check(self):
        # what hotsnap must not do: read the live overlay from outside
        g = self.writer("live-careless")
        copy = os.path.join(self.state, "careless.qcow2")
        sh("qemu-img", "convert", "-U", "-O", "qcow2", g.disks[0].path, copy)
        ok, msg = check_images(g.BLOCKS, copy)
        self.assertFalse(ok, msg)

    def test_a_compressed_image_is_converted_from_the_export(self):
        # compressed, qemu-img converts from the pull backup's NBD export
        g = self.writer("live-compress")
        run = self.live_snapshot(g, "--compress")
        self.assertEqual(run.summary()["results"][0]["mode"], "stream")
        [(img, meta)] = self.image_files(run)
        path = os.path.join(self.store, meta["file"])
        ok, msg = check_images(g.BLOCKS, path)
        self.assertTrue(ok, msg)
        check = json.loads(sh("qemu-img", "check", "--output=json", path).stdout)
        self.assertGreater(check.get("compressed-clusters", 0), 0)
        self.assert_nothing_left()

    def test_mirror_is_consistent(self):
        g = self.writer("live-mirror")
        run = self.live_snapshot(g, "--mode", "mirror")
        self.assertEqual(run.summary()["results"][0]["mode"], "mirror")
        [(img, meta)] = self.image_files(run)
        ok, msg = check_images(g.BLOCKS, os.path.join(self.store, meta["file"]))
        self.assertTrue(ok, msg)
        self.assert_nothing_left()

    def test_two_disks_at_one_instant(self):
        g = self.writer("live-two", disks=2, rate=400)
        run = self.live_snapshot(g, "--all-disks")
        imgs = sorted(self.image_files(run), key=lambda im: im[0]["disk"])
        self.assertEqual([im["disk"] for im, _ in imgs], ["vda", "vdb"])
        ok, msg = check_images(g.BLOCKS, *(os.path.join(self.store, m["file"]) for _, m in imgs))
        self.assertTrue(ok, msg)
        self.assert_nothing_left()

    def test_quiesce_with_the_guest_agent(self):
        g = self.writer("live-agent", agent=True)
        for _ in range(60):  # the agent answers a little after the writer starts
            try:
                libvirt_qemu.qemuAgentCommand(g.dom, '{"execute":"guest-ping"}', 5, 0)
                break
            except libvirt.libvirtError:
                time.sleep(0.5)
        run = self.live_snapshot(g, "--quiesce", "required")
        [cap] = [e for e in run.events if e.get("event") == "captured"]
        self.assertTrue(cap["quiesced"])
        self.assertGreaterEqual(cap["frozen_ms"], 0)
        self.assertNotIn("warning", cap)
        # thawed on the way out: the agent says so
        status = libvirt_qemu.qemuAgentCommand(g.dom, '{"execute":"guest-fsfreeze-status"}', 5, 0)
        self.assertIn('"thawed"', status)
        [(img, meta)] = self.image_files(run)
        ok, msg = check_images(g.BLOCKS, os.path.join(self.store, meta["file"]))
        self.assertTrue(ok, msg)
        self.assert_nothing_left()

    def test_quiesce_required_without_an_agent_fails_cleanly(self):
        g = self.writer("live-noagent")
        run = self.snapshot("--quiesce", "required", g.name)
        self.assertEqual(run.rc, 1)
        err = run.summary()["results"][0]["error"]
        self.assertIn("quiesce required", err)
        self.assertIn("could not be frozen", err)
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assertEqual(os.listdir(self.store), [])
        self.assert_nothing_left()


class LiveFaultTest(GuestTestCase):
    """Faults while a backup runs, in the default mode (streaming: the export
    is open until the upload ends). A SeaBIOS guest with 1 GiB of data gives
    the backup time enough to be caught in the middle."""

    ARGS = ()

    def big(self, name):
        g = self.guest(name, size_mb=1024, data_mb=1000).start()
        return g

    def until_job(self, run, g):
        run.until(state_event("capture"))
        for _ in range(5000):
            if job_active(g.dom):
                return
            time.sleep(0.001)
        self.fail("the backup never showed as a libvirt job")

    def test_guest_destroyed_mid_backup(self):
        g = self.big("fault-destroy")
        run = Run(self.state, "snapshot", "--to", "dir:" + self.store, *self.ARGS, g.name)
        self.until_job(run, g)
        g.dom.destroy()
        run.finish()
        self.assertEqual(run.rc, 1)
        err = run.summary()["results"][0]["error"]
        self.assertIn("domain '%s' was destroyed during its snapshot" % g.name, err)
        self.assertEqual(os.listdir(self.store), [])
        self.assert_nothing_left()

    def test_sigint_mid_backup_leaves_nothing(self):
        g = self.big("fault-sigint")
        run = Run(self.state, "snapshot", "--to", "dir:" + self.store, *self.ARGS, g.name)
        self.until_job(run, g)
        run.p.send_signal(signal.SIGINT)
        run.finish()
        self.assertNotEqual(run.rc, 0)
        self.assertIn("canceled", run.summary()["results"][0]["error"])
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assertFalse(job_active(g.dom))
        self.assertEqual(os.listdir(self.store), [])
        self.assert_nothing_left()

    def test_sigkill_mid_backup_next_run_cleans_up(self):
        g = self.big("fault-sigkill")
        run = Run(self.state, "snapshot", "--to", "dir:" + self.store, *self.ARGS, g.name)
        self.until_job(run, g)
        run.p.send_signal(signal.SIGKILL)
        run.finish()
        nxt = hotsnap(self.state, "list")
        self.assertEqual(nxt.rc, 0, nxt.stderr)
        rec = [e for e in nxt.events if isinstance(e, dict) and e.get("event") == "recovered"]
        self.assertEqual(len(rec), 1, nxt.events)
        self.assertNotIn("error", rec[0])
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assertFalse(job_active(g.dom))
        self.assert_nothing_left()


class PushFaultTest(LiveFaultTest):
    """The same faults in push mode: QEMU copying into scratch."""

    ARGS = ("--mode", "live")


if __name__ == "__main__":
    unittest.main()
