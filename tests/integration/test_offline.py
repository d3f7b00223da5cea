"""Offline snapshots, several disks, and bad input that must change nothing."""
import hashlib
import json
import os
import subprocess
import time
import unittest

import libvirt

from hsfix import (HOTSNAP, IMAGES, GuestTestCase, assert_sidecar_digest, hotsnap, images_identical,
                   job_active, proc_alive, sh)


class OfflineTest(GuestTestCase):

    def test_shut_off_guest_with_a_backing_chain_is_flattened(self):
        g = self.guest("off-chain", chain=3)  # base.raw <- 0.qcow2 <- 1.qcow2 <- 2.qcow2
        run = self.snapshot(g.name)
        self.assertEqual(run.rc, 0, run.stderr)
        self.assertEqual(run.summary()["results"][0]["mode"], "offline")
        [(img, meta)] = self.image_files(run)
        path = os.path.join(self.store, meta["file"])
        info = json.loads(sh("qemu-img", "info", "--output=json", path).stdout)
        self.assertNotIn("backing-filename", info)
        self.assertEqual(info["virtual-size"], meta["virtual_size"])
        same, out = images_identical(path, g.disks[0].path)
        self.assertTrue(same, out)
        # and it differs from the base alone: every layer made it in
        same, _ = images_identical(path, g.disks[0].base)
        self.assertFalse(same)
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_SHUTOFF)
        self.assert_nothing_left()

    def test_a_run_killed_before_its_export_is_read_leaves_no_server(self):
        # hotsnap SIGKILLed while its qemu-nbd starts, before the connection:
        # a qemu-nbd that never had a client would wait for one forever, so
        # it dies with hotsnap. The qemu-nbd here is held at its start.
        g = self.guest("off-orphan")
        bindir = os.path.join(self.state, "bin")
        os.makedirs(bindir)
        pidf = os.path.join(self.state, "nbd.pid")
        with open(os.path.join(bindir, "qemu-nbd"), "w") as f:
            f.write('#!/bin/sh\necho $$ > "%s.tmp" && mv "%s.tmp" "%s"\n'
                    'while :; do sleep 0.05; done\n' % (pidf, pidf, pidf))
        os.chmod(os.path.join(bindir, "qemu-nbd"), 0o755)
        env = dict(os.environ, PATH=bindir + ":" + os.environ.get("PATH", "/usr/bin:/bin"))
        p = subprocess.Popen([HOTSNAP, "--state-dir", self.state, "snapshot", "--to",
                              "dir:" + self.store, g.name], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not os.path.exists(pidf):
            self.assertLess(time.time(), deadline, "the export server never started")
            self.assertIsNone(p.poll(), "hotsnap ended first")
            time.sleep(0.05)
        with open(pidf) as f:
            pid = int(f.read())
        p.kill()
        p.wait()
        deadline = time.time() + 30
        while proc_alive(pid):
            if time.time() > deadline:
                os.kill(pid, 9)
                self.fail("the export server outlived hotsnap")
            time.sleep(0.05)
        self.assertEqual(hotsnap(self.state, "recover").rc, 0)
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_SHUTOFF)
        self.assert_nothing_left()

    def test_each_byte_hashed_once_and_verify_finds_what_changed(self):
        g = self.guest("off-verify", disks=3)
        # the default digest, and each one a store may choose instead
        run = self.snapshot("--all-disks", g.name)
        self.assertEqual(run.rc, 0, run.stderr)
        imgs = self.image_files(run)
        self.assertEqual(len(imgs), 3)
        for img, meta in imgs:
            path = os.path.join(self.store, meta["file"])
            assert_sidecar_digest(self, meta, path, "xxh128")
            self.assertEqual((img["hash_algo"], img["hash"]), ("xxh128", meta["os_hash_value"]))
            self.assertNotIn("sha512", img)
        for algo in ("sha256", "sha512"):
            run = self.snapshot("--store-digest", algo, "--format", "raw", g.name)
            self.assertEqual(run.rc, 0, run.stderr)
            [(img, meta)] = self.image_files(run)
            assert_sidecar_digest(self, meta, os.path.join(self.store, meta["file"]), algo)
        bad = hotsnap(self.state, "snapshot", "--to", "dir:" + self.store, "--store-digest",
                      "md5", g.name)
        self.assertEqual(bad.rc, 2)
        self.assertIn("--store-digest 'md5' is not one of xxh128, sha256 or sha512", bad.stderr)
        # intact: all five pass
        ok = hotsnap(self.state, "--to", "dir:" + self.store, "verify")
        self.assertEqual(ok.rc, 0, ok.stderr)
        self.assertEqual(sorted(e["ok"] for e in ok.events if e.get("event") == "verified"),
                         [True] * 5)
        # one byte flipped in one image, another image cut short
        (flip, fmeta), (cut, cmeta) = imgs[0], imgs[1]
        with open(os.path.join(self.store, fmeta["file"]), "r+b") as f:
            f.seek(fmeta["size"] // 2)
            b = f.read(1)
            f.seek(fmeta["size"] // 2)
            f.write(bytes([b[0] ^ 0x01]))
        os.truncate(os.path.join(self.store, cmeta["file"]), cmeta["size"] - 1)
        res = hotsnap(self.state, "--to", "dir:" + self.store, "verify")
        self.assertEqual(res.rc, 1)
        got = {e["id"]: e for e in res.events if e.get("event") == "verified"}
        self.assertEqual(len(got), 5)
        self.assertIn("xxh128 of '%s' is not the one its sidecar records" % fmeta["file"],
                      got[flip["id"]]["error"])
        self.assertIn("has %d bytes, its sidecar says %d" % (cmeta["size"] - 1, cmeta["size"]),
                      got[cut["id"]]["error"])
        self.assertEqual(sum(1 for e in got.values() if e["ok"]), 3)
        self.assertEqual([e for e in res.events if e.get("event") == "summary"][0]["bad"], 2)
        # what is not a store is named
        res = hotsnap(self.state, "--to", "dir:" + self.store + "/none", "verify")
        self.assertEqual(res.rc, 2)
        self.assertIn("cannot open image store", res.stderr)

    def test_stores_with_and_without_direct_writes_keep_every_byte(self):
        # ext4 takes O_DIRECT, ramfs does not; the raw image's size is not a
        # multiple of the 4 KiB the direct writes are aligned to
        g = self.guest("off-direct", size_mb=64, data_mb=40)
        sh("qemu-img", "resize", "-q", g.disks[0].path, str((70 << 20) + 512))
        img = os.path.join(IMAGES, "hstest-storefs.img")
        stores = {"ext4": os.path.join(IMAGES, "hstest-store-ext4"),
                  "ramfs": os.path.join(IMAGES, "hstest-store-ramfs")}
        sh("truncate", "-s", "256M", img)
        sh("mkfs.ext4", "-q", "-F", img)
        mounted = []
        try:
            for kind, d in stores.items():
                os.makedirs(d, exist_ok=True)
                if kind == "ext4":
                    sh("mount", "-o", "loop", img, d)
                else:
                    sh("mount", "-t", "ramfs", "-o", "mode=0700", "ramfs", d)
                mounted.append(d)
                os.chmod(d, 0o700)
            for kind, d in stores.items():
                for fmt in ("raw", "qcow2"):
                    run = hotsnap(self.state, "snapshot", "--to", "dir:" + d, "--format", fmt,
                                  g.name)
                    self.assertEqual(run.rc, 0, run.stderr)
                    [im] = run.summary()["results"][0]["images"]
                    with open(os.path.join(d, im["id"] + ".json")) as f:
                        meta = json.load(f)
                    path = os.path.join(d, meta["file"])
                    if kind == "ext4":
                        # written past the page cache: next to nothing of it
                        # stays (looked at before anything here reads it)
                        res = int(sh("fincore", "-b", "-n", "-o", "RES", path).stdout.split()[0])
                        self.assertLess(res, 1 << 20, "%s: %d bytes cached" % (fmt, res))
                    if fmt == "raw":
                        self.assertEqual(os.path.getsize(path), (70 << 20) + 512)
                    same, out = images_identical(path, g.disks[0].path)
                    self.assertTrue(same, "%s %s: %s" % (kind, fmt, out))
                    assert_sidecar_digest(self, meta, path)
                ok = hotsnap(self.state, "--to", "dir:" + d, "verify")
                self.assertEqual(ok.rc, 0, ok.stderr)
                self.assertEqual([e for e in ok.events if e.get("event") == "summary"][0]
                                 ["checked"], 2)
            self.assert_nothing_left()
        finally:
            for d in mounted:
                subprocess.run(["umount", d], check=False)
            for d in stores.values():
                if os.path.isdir(d):
                    os.rmdir(d)
            os.unlink(img)

    def test_managed_saved_guest_stays_suspended(self):
        g = self.guest("off-saved").start()
        g.dom.managedSave()
        run = self.snapshot(g.name)
        self.assertEqual(run.rc, 0, run.stderr)
        self.assertEqual(run.summary()["results"][0]["mode"], "offline")
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_SHUTOFF)
        self.assertEqual(g.dom.hasManagedSaveImage(), 1)
        self.assert_nothing_left()

    def test_all_disks_one_image_each(self):
        g = self.guest("off-multi", disks=2).start()
        run = self.snapshot("--all-disks", "--name", "{domain}-{disk}", g.name)
        self.assertEqual(run.rc, 0, run.stderr)
        imgs = self.image_files(run)
        self.assertEqual(sorted(m["name"] for _, m in imgs),
                         [g.name + "-vda", g.name + "-vdb"])
        for img, meta in imgs:
            disk = [d for d in g.disks if d.target == img["disk"]][0]
            same, out = images_identical(os.path.join(self.store, meta["file"]), disk.path)
            self.assertTrue(same, out)
        # the two disks hold different data, so each image came from its own disk
        a, b = (os.path.join(self.store, m["file"]) for _, m in imgs)
        self.assertFalse(images_identical(a, b)[0])
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assert_nothing_left()

    def test_a_store_others_can_write_is_refused(self):
        g = self.guest("off-unsafe").start()
        os.chmod(self.store, 0o777)
        run = self.snapshot(g.name)
        self.assertEqual(run.rc, 1, run.stderr)
        [res] = run.summary()["results"]
        self.assertIn("can be written by users other than root (mode 0777)", res["error"])
        self.assertIn("sticky", res["error"])
        self.assertEqual(os.listdir(self.store), [])
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assertFalse(job_active(g.dom))  # refused before anything was touched
        # with the sticky bit nobody can move root's files: it is a store
        os.chmod(self.store, 0o1777)
        run = self.snapshot(g.name)
        self.assertEqual(run.rc, 0, run.stderr)
        self.assert_nothing_left()

    def test_an_image_id_names_the_stored_files_once(self):
        g = self.guest("off-id")
        image_id = "0b8fd3f6-7b43-4d5c-9d0e-6a3e2b1c4f50"
        run = self.snapshot("--image-id", image_id, g.name)
        self.assertEqual(run.rc, 0, run.stderr)
        [(img, meta)] = self.image_files(run)
        self.assertEqual(img["id"], image_id)
        self.assertEqual(meta["file"], image_id + ".qcow2")
        path = os.path.join(self.store, meta["file"])
        with open(path, "rb") as f:
            before = hashlib.sha512(f.read()).hexdigest()
        # the same id again: refused, and the first image stays as it was
        run = self.snapshot("--image-id", image_id, g.name)
        self.assertEqual(run.rc, 1)
        self.assertIn("has an image of id %s already" % image_id,
                      run.summary()["results"][0]["error"])
        with open(path, "rb") as f:
            self.assertEqual(hashlib.sha512(f.read()).hexdigest(), before)
        self.assertTrue(os.path.exists(os.path.join(self.store, image_id + ".json")))
        # an id that is not a UUID is bad input: nothing starts
        run = self.snapshot("--image-id", "../../etc/x", g.name)
        self.assertEqual(run.rc, 2)
        self.assertIn("not a UUID", run.stderr)
        self.assert_nothing_left()

    def test_reader_failure_carries_its_stderr(self):
        g = self.guest("off-broken")
        os.unlink(g.disks[0].base)  # the overlay's backing file is gone
        run = self.snapshot(g.name)
        self.assertEqual(run.rc, 1)
        err = run.summary()["results"][0]["error"]
        self.assertIn("disk 'vda' of domain '%s': the NBD server failed: qemu-nbd:" % g.name, err)
        self.assertIn(g.disks[0].base, err)  # qemu-nbd's own words name the missing file
        self.assertEqual(os.listdir(self.store), [])
        self.assert_nothing_left()

    def test_unknown_domain_changes_nothing(self):
        g = self.guest("off-bystander").start()
        run = self.snapshot(g.name, "hstest-no-such-domain")
        self.assertEqual(run.rc, 2)
        self.assertEqual(run.stderr.strip(), "hotsnap: domain 'hstest-no-such-domain' not found")
        self.assertEqual(os.listdir(self.store), [])
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assertEqual(g.dom.hasManagedSaveImage(), 0)

    def test_unsupported_disk_is_named_and_guest_untouched(self):
        extra = ("<disk type='block' device='disk'><driver name='qemu' type='raw'/>"
                 "<source dev='/dev/null'/><target dev='vdz' bus='virtio'/></disk>")
        g = self.guest("off-block", extra_disk_xml=extra)
        run = self.snapshot("--all-disks", g.name)
        self.assertEqual(run.rc, 1)
        err = run.summary()["results"][0]["error"]
        self.assertIn("disk 'vdz' is a block device disk ('/dev/null')", err)
        self.assertEqual(os.listdir(self.store), [])
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_SHUTOFF)
        # the root disk alone is fine
        run = self.snapshot(g.name)
        self.assertEqual(run.rc, 0, run.stderr)
        self.assert_nothing_left()

    def test_bad_targets_and_uri_change_nothing(self):
        g = self.guest("off-bad-input").start()
        cases = [
            (["snapshot", "--to", "dir:/nonexistent/store", g.name],
             "image store '/nonexistent/store' does not exist"),
            (["snapshot", "--to", "dir:" + self.store, "--scratch-dir", "/proc/hotsnap",
              g.name], "cannot create scratch directory '/proc/hotsnap'"),
            (["snapshot", "--name", "{oops}", g.name], "unknown placeholder '{oops}'"),
            (["snapshot", "--mode", "offline", "--to", "dir:" + self.store, g.name],
             "mode 'offline' needs a shut-off domain"),
            (["-c", "qemu:///nowhere", "list"], "cannot connect to libvirt at 'qemu:///nowhere'"),
        ]
        for args, message in cases:
            run = hotsnap(self.state, *args)
            self.assertNotEqual(run.rc, 0, args)
            text = run.stderr + json.dumps(run.events)
            self.assertIn(message, text, args)
            self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING, args)
            self.assertEqual(g.dom.hasManagedSaveImage(), 0, args)
        self.assertEqual(os.listdir(self.store), [])
        self.assert_nothing_left()


if __name__ == "__main__":
    unittest.main()
