"""Cold snapshots of running and paused guests, faults in the middle, and recovery."""
import os
import unittest

import libvirt

from hsfix import (GuestTestCase, Run, assert_sidecar_digest, hotsnap, images_identical, sh,
                   state_event)


class ColdTest(GuestTestCase):

    def test_running_guest_is_restored_and_image_matches(self):
        g = self.guest("cold-run").start()
        run = Run(self.state, "snapshot", "--to", "dir:" + self.store, "--mode", "cold",
                  "--name", "snap-{domain}", g.name)
        run.until(state_event("extract"))
        # the domain is saved now: take the reference copy of its disk
        self.assertEqual(g.dom.state()[0], libvirt.VIR_DOMAIN_SHUTOFF)
        self.assertEqual(g.dom.hasManagedSaveImage(), 1)
        ref = os.path.join(self.state, "ref.raw")
        sh("qemu-img", "convert", "-O", "raw", g.disks[0].path, ref)
        run.finish()
        self.assertEqual(run.rc, 0, run.stderr)
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assertEqual(g.dom.hasManagedSaveImage(), 0)
        # the downtime: a managed save and a restore, within the job's time
        [res] = run.summary()["results"]
        self.assertGreater(res["stall_ms"], 50)
        self.assertLess(res["stall_ms"], res["seconds"] * 1000)
        [(img, meta)] = self.image_files(run)
        path = os.path.join(self.store, meta["file"])
        same, out = images_identical(path, ref)
        self.assertTrue(same, out)
        # a standalone image: the backing chain was flattened
        info = sh("qemu-img", "info", "--output=json", path).stdout
        self.assertNotIn("backing-filename", info)
        # metadata as Nova puts it on a snapshot, with the digest of the stored bytes
        assert_sidecar_digest(self, meta, path)
        self.assertEqual(meta["size"], os.path.getsize(path))
        self.assertEqual(meta["name"], "snap-" + g.name)
        self.assertEqual(meta["image_type"], "snapshot")
        self.assertEqual(meta["instance_uuid"], g.dom.UUIDString())
        self.assertEqual(meta["container_format"], "bare")
        self.assertEqual(meta["disk_format"], "qcow2")
        self.assertEqual(meta["min_disk"], 1)
        self.assertEqual(meta["min_ram"], 32)
        # Nova's task states, in order
        tasks = [e["task_state"] for e in run.events if e.get("event") == "state"]
        self.assertEqual([t for i, t in enumerate(tasks) if i == 0 or tasks[i - 1] != t],
                         ["image_snapshot_pending", "image_pending_upload", "image_uploading",
                          "done"])
        self.assert_nothing_left()

    def test_paused_guest_stays_paused(self):
        g = self.guest("cold-paused").start(paused=True)
        run = self.snapshot("--mode", "cold", "--format", "raw", g.name)
        self.assertEqual(run.rc, 0, run.stderr)
        self.assertEqual(run.summary()["results"][0]["mode"], "cold")
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_PAUSED)
        [(img, meta)] = self.image_files(run)
        self.assertEqual(meta["disk_format"], "raw")
        same, out = images_identical(os.path.join(self.store, meta["file"]), g.disks[0].path)
        self.assertTrue(same, out)
        self.assert_nothing_left()

    def test_guest_destroyed_during_the_save(self):
        g = self.guest("cold-destroyed").start()
        run = Run(self.state, "snapshot", "--to", "dir:" + self.store, "--mode", "cold", g.name)
        run.until(state_event("capture"))
        # wait for libvirt's save job to be under way, then pull the plug
        self.wait_for_save_job(g)
        g.dom.destroy()
        run.finish()
        self.assertEqual(run.rc, 1)
        err = run.summary()["results"][0]["error"]
        self.assertIn("destroyed", err)
        self.assertIn(g.name, err)
        # someone else stopped it: hotsnap does not start it again, and saved nothing
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_SHUTOFF)
        self.assertEqual(g.dom.hasManagedSaveImage(), 0)
        self.assertEqual(os.listdir(self.store), [])
        self.assert_nothing_left()

    def test_killed_after_the_save_next_run_restores(self):
        # a disk with enough data that the copy outlasts the kill
        g = self.guest("cold-killed", size_mb=1024, data_mb=384).start()
        self.kill_after_the_save(g)
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_SHUTOFF)
        self.assertEqual(g.dom.hasManagedSaveImage(), 1)
        self.assertEqual(len(os.listdir(os.path.join(self.state, "journal"))), 2)
        # any command restores what the dead run left
        nxt = hotsnap(self.state, "list")
        self.assertEqual(nxt.rc, 0, nxt.stderr)
        rec = [e for e in nxt.events if isinstance(e, dict) and e.get("event") == "recovered"]
        self.assertEqual(len(rec), 1, nxt.events)
        self.assertEqual(rec[0]["action"], "restored, running")
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assertEqual(g.dom.hasManagedSaveImage(), 0)
        self.assert_nothing_left()


if __name__ == "__main__":
    unittest.main()
