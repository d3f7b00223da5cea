"""libvirtd restarted under running jobs: the jobs learn of it and finish right."""
import os
import time
import unittest

import libvirt

import hsfix
from hsfix import GuestTestCase, Run, images_identical, job_active, state_event


class ReconnectTest(GuestTestCase):

    def reconnect(self, g):
        type(self).c = self.c = hsfix.conn()
        g.c = self.c
        g.dom = self.c.lookupByName(g.name)

    def test_restart_while_a_cold_guest_is_saved(self):
        g = self.guest("rc-cold", size_mb=1024, data_mb=600).start()
        run = Run(self.state, "snapshot", "--to", "dir:" + self.store, "--mode", "cold", g.name)
        run.until(state_event("extract"))
        hsfix.restart_libvirtd()
        run.finish()
        self.reconnect(g)
        self.assertEqual(run.rc, 0, run.stderr + str(run.summary()))
        conn = [e["connection"] for e in run.events if e.get("event") == "libvirt"]
        self.assertEqual(conn[:2], ["down", "up"])
        # restored over the new connection, in the state it had
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assertEqual(g.dom.hasManagedSaveImage(), 0)
        self.assert_nothing_left()

    def test_restart_during_a_backup_finishes_it(self):
        # libvirtd keeps a backup running across its restart: hotsnap looks
        # again on the new connection and waits on for its end
        g = self.guest("rc-live", size_mb=2048, data_mb=2000).start()
        run = Run(self.state, "snapshot", "--to", "dir:" + self.store, g.name)
        run.until(state_event("capture"))
        for _ in range(5000):
            if job_active(g.dom):
                break
            time.sleep(0.001)
        else:
            self.fail("the backup never showed as a libvirt job")
        hsfix.restart_libvirtd()
        run.finish()
        self.reconnect(g)
        self.assertEqual(run.rc, 0, run.stderr + str(run.summary()))
        conn = [e["connection"] for e in run.events if e.get("event") == "libvirt"]
        self.assertEqual(conn[:2], ["down", "up"])
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assertFalse(job_active(g.dom))
        [(img, meta)] = self.image_files(run)
        same, out = images_identical(os.path.join(self.store, meta["file"]), g.disks[0].path)
        self.assertTrue(same, out)
        self.assert_nothing_left()


if __name__ == "__main__":
    unittest.main()
