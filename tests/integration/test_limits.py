"""The scheduler's limits with real guests: never more at once than allowed."""
import os
import unittest

from hsfix import GuestTestCase


def most_at_once(events, state):
    """The most jobs that were in @state at the same time, from the state events."""
    inside, most = set(), 0
    for e in events:
        if e.get("event") != "state":
            continue
        if e["state"] == state:
            inside.add(e["job"])
        else:
            inside.discard(e["job"])
        most = max(most, len(inside))
    return most


def most_holding_scratch(events):
    """The most jobs at once between the start of their capture and their cleanup."""
    inside, most = set(), 0
    for e in events:
        if e.get("event") != "state":
            continue
        if e["state"] == "capture":
            inside.add(e["job"])
        elif e["state"] in ("cleanup", "done", "failed"):
            inside.discard(e["job"])
        most = max(most, len(inside))
    return most


class LimitsTest(GuestTestCase):

    def test_limits_hold_and_every_snapshot_is_made(self):
        # converted images (--compress): capture, extract and upload each
        # have their slots, and captures are paced to the uploads
        guests = [self.guest("lim-%d" % i, size_mb=64, data_mb=16) for i in range(6)]
        for g in guests[:3]:
            g.start()
        run = self.snapshot("--compress", "--max-captures", "2", "--max-extracts", "1",
                            "--max-uploads", "1", *[g.name for g in guests])
        self.assertEqual(run.rc, 0, run.stderr)
        self.assertEqual(len(run.summary()["results"]), 6)
        self.assertLessEqual(most_at_once(run.events, "capture"), 2)
        self.assertEqual(most_at_once(run.events, "extract"), 1)
        self.assertEqual(most_at_once(run.events, "upload"), 1)
        # paced: the one uploading and the one ready next, never a third
        self.assertEqual(most_holding_scratch(run.events), 2)
        self.assertEqual(len([f for f in os.listdir(self.store) if f.endswith(".json")]), 6)
        self.assert_nothing_left()

    def test_streams_hold_one_upload_slot_until_their_backup_is_gone(self):
        # streamed (the default): a stream's upload slot is taken for its
        # capture and let go once its backup has ended, so no more backups
        # are on the guests than --max-uploads
        guests = [self.guest("lims-%d" % i, size_mb=64, data_mb=16) for i in range(4)]
        for g in guests[:3]:
            g.start()
        run = self.snapshot("--max-uploads", "1", *[g.name for g in guests])
        self.assertEqual(run.rc, 0, run.stderr)
        self.assertEqual(len(run.summary()["results"]), 4)
        self.assertEqual(most_holding_scratch(run.events), 1)
        self.assertEqual(len([f for f in os.listdir(self.store) if f.endswith(".json")]), 4)
        self.assert_nothing_left()

    def test_an_image_that_can_never_fit_is_refused(self):
        # a streamed image needs no scratch; a compressed one is converted into it
        g = self.guest("lim-big", size_mb=64, data_mb=32)
        run = self.snapshot("--scratch-budget", "1M", "--compress", g.name)
        self.assertEqual(run.rc, 1)
        err = run.summary()["results"][0]["error"]
        self.assertIn("more than the budget of 1 MiB", err)
        self.assertEqual(os.listdir(self.store), [])
        self.assert_nothing_left()


if __name__ == "__main__":
    unittest.main()
