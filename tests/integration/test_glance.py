"""Snapshots published to a real Glance (Debian's glance-api on 127.0.0.1)."""
import hashlib
import json
import os
import signal
import threading
import time
import unittest

import libvirt

from hsfix import (GlanceGuestTestCase, GlanceServer, Run, hotsnap, images_identical, job_active,
                   state_event)


class GlanceTest(GlanceGuestTestCase):

    def setUp(self):
        super().setUp()
        for img in self.glance.images():
            self.glance.api("DELETE", "/v2/images/" + img["id"])

    def to_glance(self, *args, glance=None):
        return hotsnap(self.state, "snapshot", "--to", "glance:" + (glance or self.glance).url,
                       *args)

    def assert_published(self, run, guest, disk=None):
        [res] = [r for r in run.summary()["results"] if r["domain"] == guest.name]
        self.assertEqual(res["result"], "ok", res)
        [img] = res["images"]
        meta = self.glance.api("GET", "/v2/images/" + img["id"])
        data = self.glance.download(img["id"])
        self.assertEqual(meta["status"], "active")
        self.assertEqual(meta["size"], len(data))
        self.assertEqual(meta["os_hash_value"], hashlib.sha512(data).hexdigest())
        self.assertEqual(meta["checksum"], hashlib.md5(data).hexdigest())
        path = os.path.join(self.state, img["id"] + ".img")
        with open(path, "wb") as f:
            f.write(data)
        same, out = images_identical(path, (disk or guest.disks[0]).path)
        self.assertTrue(same, out)
        return meta

    def test_snapshot_published_and_downloaded_back(self):
        g = self.guest("gl-one").start()
        run = self.to_glance("--name", "snap-{domain}", g.name)
        self.assertEqual(run.rc, 0, run.stderr)
        meta = self.assert_published(run, g)
        self.assertEqual(meta["name"], "snap-" + g.name)
        self.assertEqual(meta["disk_format"], "qcow2")
        self.assertEqual(meta["container_format"], "bare")
        self.assertEqual(meta["visibility"], "private")
        self.assertEqual(meta["image_type"], "snapshot")
        self.assertEqual(meta["instance_uuid"], g.dom.UUIDString())
        self.assertEqual(meta["image_location"], "snapshot")
        self.assertEqual(meta["image_state"], "available")
        self.assertEqual(meta["min_disk"], 1)
        self.assertEqual(meta["min_ram"], 32)
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assert_nothing_left()

    def test_rotation_keeps_exactly_n_backups_of_the_instance_and_type(self):
        g, other = self.guest("gl-rot").start(), self.guest("gl-rot2").start()

        def backup(guest, n, kind):
            run = self.to_glance("--rotation", str(n), "--backup-type", kind, guest.name)
            self.assertEqual(run.rc, 0, run.stderr)
            return run.summary()["results"][0]["images"][0]["id"]

        def backups(guest, kind):
            return sorted(i["id"] for i in self.glance.images()
                          if i.get("instance_uuid") == guest.dom.UUIDString() and
                          i.get("image_type") == "backup" and i.get("backup_type") == kind)

        # what a daily rotation of g must not touch: a weekly backup, a plain
        # snapshot of g, another instance's daily backup
        weekly = backup(g, 1, "weekly")
        snap = self.to_glance(g.name).summary()["results"][0]["images"][0]["id"]
        theirs = backup(other, 5, "daily")
        daily = []
        for i in range(4):
            daily.append(backup(g, 2, "daily"))
            self.assertEqual(backups(g, "daily"), sorted(daily[-2:]), i)
        meta = self.glance.api("GET", "/v2/images/" + daily[-1])
        self.assertEqual((meta["image_type"], meta["backup_type"]), ("backup", "daily"))
        self.assertEqual(backups(g, "weekly"), [weekly])
        self.assertEqual(backups(other, "daily"), [theirs])
        self.assertEqual(self.glance.api("GET", "/v2/images/" + snap)["image_type"], "snapshot")
        # a rotation of 1 leaves the new backup alone
        last = backup(g, 1, "daily")
        self.assertEqual(backups(g, "daily"), [last])
        # refused, with one line, and nothing made
        n = len(self.glance.images())
        for args, words in ((("--rotation", "2"), "go together"),
                            (("--backup-type", "daily"), "go together"),
                            (("--rotation", "0", "--backup-type", "daily"), "--rotation"),
                            (("--rotation", "2", "--backup-type", "hourly"), "daily or weekly")):
            run = self.to_glance(*args, g.name)
            self.assertEqual(run.rc, 2, run.stderr)
            self.assertIn(words, run.stderr)
        run = hotsnap(self.state, "snapshot", "--to", "dir:" + self.store, "--rotation", "2",
                      "--backup-type", "daily", g.name)
        self.assertNotEqual(run.rc, 0)
        self.assertIn("hotsnap prune", run.stderr)
        self.assertEqual(len(self.glance.images()), n)
        self.assert_nothing_left()

    def test_eight_at_once(self):
        guests = [self.guest("gl-many-%d" % i, size_mb=64, data_mb=8) for i in range(8)]
        run = self.to_glance(*[g.name for g in guests])
        self.assertEqual(run.rc, 0, run.stderr)
        for g in guests:
            self.assert_published(run, g)
        self.assertEqual(len(self.glance.images()), 8)
        self.assert_nothing_left()

    def test_batch_of_six_with_one_destroyed(self):
        run_a = self.guest("gl-b-run", size_mb=64, data_mb=8).start()
        doomed = self.guest("gl-b-doomed", size_mb=1024, data_mb=1000).start()
        paused = [self.guest("gl-b-paused-%d" % i, size_mb=64, data_mb=8).start(paused=True)
                  for i in range(2)]
        off = [self.guest("gl-b-off-%d" % i, size_mb=64, data_mb=8) for i in range(2)]
        everyone = [run_a, doomed] + paused + off
        run = Run(self.state, "snapshot", "--to", "glance:" + self.glance.url,
                  *[g.name for g in everyone])
        run.until(lambda ev: ev.get("event") == "state" and ev.get("state") == "capture" and
                  ev.get("domain") == doomed.name)
        for _ in range(5000):
            if job_active(doomed.dom):
                break
            time.sleep(0.001)
        doomed.dom.destroy()
        run.finish()
        self.assertEqual(run.rc, 1)
        res = {r["domain"]: r for r in run.summary()["results"]}
        self.assertEqual(len(res), 6)
        self.assertEqual(res[doomed.name]["result"], "failed")
        self.assertIn("destroyed", res[doomed.name]["error"])
        for g in everyone:
            if g is not doomed:
                self.assert_published(run, g)
        self.assertEqual(run.summary()["failed"], 1)
        # the guests it touched were held a short while; the shut-off ones never
        for g in [run_a] + paused:
            self.assertEqual(res[g.name]["mode"], "stream")
            self.assertLess(res[g.name]["stall_ms"], 5000)
        for g in off:
            self.assertNotIn("stall_ms", res[g.name])
        self.assertEqual(sorted(i["status"] for i in self.glance.images()), ["active"] * 5)
        self.assertEqual(run_a.state(), libvirt.VIR_DOMAIN_RUNNING)
        for g in paused:
            self.assertEqual(g.state(), libvirt.VIR_DOMAIN_PAUSED)
        for g in off:
            self.assertEqual(g.state(), libvirt.VIR_DOMAIN_SHUTOFF)
        self.assert_nothing_left()

    def test_two_gib_image_in_bounded_memory(self):
        g = self.guest("gl-big", size_mb=2048, data_mb=2048)
        run = self.to_glance("--format", "raw", g.name)
        self.assertEqual(run.rc, 0, run.stderr)
        [res] = run.summary()["results"]
        self.assertGreaterEqual(res["images"][0]["size"], 2 << 30)
        # hotsnap's own peak memory, whatever the image's size
        self.assertLess(run.summary()["peak_rss_kib"], 64 * 1024)
        meta = self.glance.api("GET", "/v2/images/" + res["images"][0]["id"])
        self.assertEqual(meta["status"], "active")
        self.assertEqual(meta["size"], 2 << 30)
        self.assert_nothing_left()

    def test_glance_restarted_mid_upload_the_job_retries(self):
        g = self.guest("gl-restart", size_mb=256, data_mb=200)
        run = Run(self.state, "snapshot", "--to", "glance:" + self.glance.url, "--format", "raw",
                  "--max-rate", "40M", "--attempts", "8", g.name)
        run.until(lambda ev: ev.get("phase") == "upload" and ev.get("percent", 0) > 5)
        self.glance.stop()
        time.sleep(1.0)
        self.glance.start()
        run.finish()
        self.assertEqual(run.rc, 0, run.stderr + str(run.summary()))
        self.assert_published(run, g)
        # the record of the broken attempt was deleted once Glance was back
        self.assertEqual(len(self.glance.images()), 1)
        self.assert_nothing_left()

    def test_glance_stopped_mid_upload_the_same_record_takes_the_data(self):
        # a Glance that stops answering (SIGSTOP) mid-transfer: after the stall
        # timeout the transfer counts as failed; once Glance answers again the
        # record is still queued and the data goes into it again
        g = self.guest("gl-stall", size_mb=128, data_mb=100)
        run = Run(self.state, "snapshot", "--to", "glance:" + self.glance.url, "--format", "raw",
                  "--max-rate", "20M", "--stall-timeout", "2", "--attempts", "8", g.name)
        run.until(lambda ev: ev.get("phase") == "upload" and ev.get("percent", 0) > 10)
        os.kill(self.glance.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(7)
        finally:
            os.kill(self.glance.proc.pid, signal.SIGCONT)
        run.finish()
        self.assertEqual(run.rc, 0, run.stderr + str(run.summary()))
        meta = self.assert_published(run, g)
        # one record in all: no second record, nothing orphaned
        self.assertEqual([i["id"] for i in self.glance.images()], [meta["id"]])
        self.assert_nothing_left()

    def test_glance_stopped_for_good_the_upload_gives_up_and_says_what_is_left(self):
        # with Glance stopped for good hotsnap must not hang: it gives up after
        # its attempts, and the record it could not delete is reported without -v
        g = self.guest("gl-stopped").start()
        run = Run(self.state, "snapshot", "--to", "glance:" + self.glance.url, "--format", "raw",
                  "--max-rate", "4M", "--stall-timeout", "2", "--attempts", "2", g.name)
        run.until(lambda ev: ev.get("phase") == "upload" and ev.get("percent", 0) > 2)
        os.kill(self.glance.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.time()
            run.finish(timeout=90)
            ended = time.time() - t0
        finally:
            os.kill(self.glance.proc.pid, signal.SIGCONT)
        self.assertEqual(run.rc, 1, run.stderr)
        self.assertLess(ended, 60)
        [res] = run.summary()["results"]
        self.assertIn("failed after 2 attempts", res["error"])
        self.assertIn("no progress for 2 s", res["error"])
        [left] = [i["id"] for i in self.glance.images()]
        self.assertIn("image record %s is left behind" % left, res["error"])
        # the operator sees it without -v: on stderr and as a JSON event
        self.assertIn("warning: ", run.stderr)
        self.assertIn(left, run.stderr)
        warnings = [ev for ev in run.events if ev.get("event") == "warning"]
        self.assertTrue(any(left in ev["message"] for ev in warnings), warnings)
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assert_nothing_left()

    def test_records_of_a_killed_run_are_removed_by_the_next(self):
        # the command SIGKILLed while its image is saving: its record is the
        # dead run's to remove; `recover` (any next run) deletes it
        g = self.guest("gl-killed", size_mb=128, data_mb=100).start()
        other = self.glance.api("POST", "/v2/images", json.dumps({
            "name": "not-ours", "disk_format": "raw", "container_format": "bare"}).encode())
        run = Run(self.state, "snapshot", "--to", "glance:" + self.glance.url, "--format", "raw",
                  "--max-rate", "10M", g.name)
        run.until(lambda ev: ev.get("phase") == "upload" and ev.get("percent", 0) > 5)
        run.p.send_signal(signal.SIGKILL)
        run.finish()
        [dead] = [i for i in self.glance.images() if i["id"] != other["id"]]
        self.assertIn(dead["status"], ("saving", "queued"))
        rec = hotsnap(self.state, "recover")
        self.assertEqual(rec.rc, 0, rec.stderr)
        [entry] = [e for e in rec.events if e.get("event") == "recovered"]
        self.assertEqual(entry["glance_removed"], [dead["id"]], entry)
        self.assertNotIn("error", entry)
        # the dead run's record is gone; another's, never touched, stays
        self.assertEqual([i["id"] for i in self.glance.images()], [other["id"]])
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assert_nothing_left()

    def test_glance_down_fails_after_bounded_attempts(self):
        g = self.guest("gl-down").start()
        down = GlanceServer()
        down.stop()
        try:
            t0 = time.time()
            run = self.to_glance("--attempts", "3", "--glance-outage", "0", g.name, glance=down)
            self.assertEqual(run.rc, 1)
            err = run.summary()["results"][0]["error"]
            self.assertIn("failed after 3 attempts", err)
            self.assertIn("onnect", err)  # curl's "Couldn't connect" / "Connection refused"
            self.assertLess(time.time() - t0, 60)
        finally:
            down.close()
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assert_nothing_left()

    def test_glance_down_is_waited_out_for_the_outage_window_only(self):
        g = self.guest("gl-away").start()
        down = GlanceServer()
        down.stop()
        try:
            t0 = time.time()
            run = self.to_glance("--attempts", "1", "--glance-outage", "5", g.name, glance=down)
            took = time.time() - t0
            self.assertEqual(run.rc, 1)
            err = run.summary()["results"][0]["error"]
            # one attempt allowed, yet tried for the whole window: an outage's
            # tries are not attempts
            self.assertIn("Glance did not answer for 5 s", err)
            self.assertGreaterEqual(took, 5)
        finally:
            down.close()
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assert_nothing_left()

    def test_size_cap_is_reported_and_record_deleted(self):
        capped = GlanceServer(image_size_cap=8 << 20)
        try:
            g = self.guest("gl-cap", size_mb=64, data_mb=32)
            run = self.to_glance("--format", "raw", g.name, glance=capped)
            self.assertEqual(run.rc, 1)
            err = run.summary()["results"][0]["error"]
            self.assertIn("HTTP 413", err)
            self.assertIn("image size cap", err)
            self.assertIn("request req-", err)
            self.assertEqual(capped.images(), [])  # no half-created record
        finally:
            capped.close()
        self.assert_nothing_left()

    def test_existing_image_id_is_a_conflict(self):
        g = self.guest("gl-conflict", size_mb=64, data_mb=4)
        run = self.to_glance(g.name)
        self.assertEqual(run.rc, 0, run.stderr)
        taken = run.summary()["results"][0]["images"][0]["id"]
        run = self.to_glance("--image-id", taken, g.name)
        self.assertEqual(run.rc, 1)
        err = run.summary()["results"][0]["error"]
        self.assertIn("HTTP 409", err)
        # the image that was there is untouched
        self.assertEqual(self.glance.api("GET", "/v2/images/" + taken)["status"], "active")
        self.assert_nothing_left()


if __name__ == "__main__":
    unittest.main()
