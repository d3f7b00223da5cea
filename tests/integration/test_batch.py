"""Batch selection: --match, --from with per-domain options, the summary."""
import json
import os
import unittest

from hsfix import GuestTestCase, hotsnap


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
