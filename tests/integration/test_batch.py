"""Batch selection: --match, --from with per-domain options, the summary."""
import json
import os
import signal
import unittest

import libvirt

from hsfix import GuestTestCase, Run, hotsnap, job_active


class BatchTest(GuestTestCase):

    def test_match_and_from(self):
        a = self.guest("batch-web-1").start()
        b = self.guest("batch-web-2").start()
        c = self.guest("batch-db-1").start()
        off = self.guest("batch-web-off")
        run = self.snapshot("--match", "hstest-batch-web-*")
        self.assertEqual(run.rc, 0, run.stderr)
        self.assertEqual(sorted(r["domain"] for r in run.summary()["results"]),
                         [a.name, b.name])  # running ones only, without --include-shutoff
        summ = run.summary()
        self.assertEqual(summ["bytes"], sum(i["size"] for r in summ["results"]
                                            for i in r["images"]))
        lines = os.path.join(self.state, "batch.txt")
        with open(lines, "w") as f:
            f.write("# nightly\n%s\n\n" % c.name)
            f.write(json.dumps({"domain": off.name, "name": "custom-{domain}",
                                "format": "raw"}) + "\n")
        run = self.snapshot("--from", lines)
        self.assertEqual(run.rc, 0, run.stderr)
        res = {r["domain"]: r for r in run.summary()["results"]}
        self.assertEqual(sorted(res), sorted([c.name, off.name]))
        self.assertEqual(res[off.name]["mode"], "offline")
        [img] = res[off.name]["images"]
        self.assertEqual(img["name"], "custom-" + off.name)
        with open(os.path.join(self.store, img["id"] + ".json")) as f:
            self.assertEqual(json.load(f)["disk_format"], "raw")
        self.assert_nothing_left()

    def test_ctrl_c_during_a_batch_puts_everything_back(self):
        live = self.guest("batch-int-live", size_mb=1024, data_mb=900).start()
        cold = self.guest("batch-int-cold", size_mb=1024, data_mb=900).start(paused=True)
        off = self.guest("batch-int-off", size_mb=1024, data_mb=900)
        lines = os.path.join(self.state, "batch.txt")
        with open(lines, "w") as f:
            f.write(live.name + "\n")
            f.write(json.dumps({"domain": cold.name, "mode": "cold"}) + "\n")
            f.write(off.name + "\n")
        run = Run(self.state, "snapshot", "--to", "dir:" + self.store, "--from", lines)
        run.until(lambda ev: ev.get("event") == "state" and ev.get("state") == "extract")
        run.p.send_signal(signal.SIGINT)
        run.finish()
        self.assertNotEqual(run.rc, 0)
        self.assertIn("canceling", run.stderr)
        self.assertEqual(live.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assertEqual(cold.state(), libvirt.VIR_DOMAIN_PAUSED)
        self.assertEqual(off.state(), libvirt.VIR_DOMAIN_SHUTOFF)
        for g in (live, cold, off):
            self.assertFalse(job_active(g.dom), g.name)
            self.assertEqual(g.dom.hasManagedSaveImage(), 0, g.name)
        # whatever finished before the interrupt is complete; nothing half-written
        stored = os.listdir(self.store)
        self.assertEqual([f for f in stored if f.startswith(".")], [])
        self.assertEqual(len([f for f in stored if f.endswith(".json")]) * 2, len(stored))
        self.assert_nothing_left()

    def test_bad_from_file_changes_nothing(self):
        g = self.guest("batch-bad").start()
        lines = os.path.join(self.state, "bad.txt")
        with open(lines, "w") as f:
            f.write("%s\n{\"name\": \"x\"}\n" % g.name)
        run = hotsnap(self.state, "snapshot", "--to", "dir:" + self.store, "--from", lines)
        self.assertEqual(run.rc, 2)
        self.assertIn("bad.txt:2: a JSON line needs a \"domain\" string", run.stderr)
        self.assertEqual(os.listdir(self.store), [])


if __name__ == "__main__":
    unittest.main()
