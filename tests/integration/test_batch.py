"""Batch selection: --match, --from with per-domain options, the summary."""
import fcntl
import json
import os
import signal
import subprocess
import time
import unittest

import libvirt

from hsfix import HOTSNAP, GuestTestCase, Run, hotsnap, job_active


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

    def test_a_stalled_stdout_does_not_hold_the_snapshots(self):
        # a reader that stops reading (a paused terminal, a slow pipe): the
        # jobs go on, and every event reaches it once it reads again
        guests = [self.guest("stdout-%d" % i).start() for i in range(3)]
        r, w = os.pipe()
        fcntl.fcntl(w, 1031, 4096)  # F_SETPIPE_SZ: one page, full after a dozen events
        p = subprocess.Popen([HOTSNAP, "--json", "--state-dir", self.state, "snapshot", "--to",
                              "dir:" + self.store] + [g.name for g in guests],
                             stdout=w, stderr=subprocess.DEVNULL)
        os.close(w)
        try:
            deadline = time.time() + 120
            while time.time() < deadline:
                if len([f for f in os.listdir(self.store) if f.endswith(".json")]) == 3:
                    break
                time.sleep(0.2)
            # every image is published while nobody read a byte
            self.assertEqual(len([f for f in os.listdir(self.store) if f.endswith(".json")]), 3)
        finally:
            with os.fdopen(r) as f:
                out = f.read()
            p.wait(60)
        self.assertEqual(p.returncode, 0)
        events = [json.loads(line) for line in out.splitlines()]
        for g in guests:
            states = [e["state"] for e in events
                      if e.get("event") == "state" and e.get("domain") == g.name]
            self.assertEqual(states[-1], "done", states)
            self.assertIn("upload", states)
        self.assertEqual(events[-1]["event"], "summary")
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
