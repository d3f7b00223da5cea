"""Incremental chains (--incremental) against the real libvirtd and QEMU: a
checkpoint made with each pull backup, the next image a qcow2 overlay of
the last one read from the checkpoint's dirty bitmap, and each disk's chain
checked on its own (a disk that cannot go on is read in full, saying why)."""
import json
import os
import signal
import subprocess
import time
import unittest

import libvirt

import hsfix
from hsfix import GuestTestCase, Run, hotsnap, job_active, state_event


def checkpoints(g):
    return sorted(cp.getName() for cp in g.dom.listAllCheckpoints())


def qemu_pid(g):
    with open("/run/libvirt/qemu/%s.pid" % g.name) as f:
        return int(f.read().strip())


class IncrementalTestCase(GuestTestCase):

    def incremental(self, g, *args):
        run = self.snapshot("--incremental", *args, g.name)
        self.assertEqual(run.rc, 0, run.stderr)
        return run

    def images(self, run):
        return [img for r in run.summary()["results"] for img in r["images"]]

    def sidecar(self, img):
        with open(os.path.join(self.store, img["id"] + ".json")) as f:
            return json.load(f)

    def chain_file(self, g):
        with open(os.path.join(self.store, "chain-" + g.dom.UUIDString())) as f:
            return json.load(f)

    def assert_chain_reads_as(self, top, disk_path):
        """qemu-img check passes on the overlay, and the chain reads as the disk."""
        path = os.path.join(self.store, top["id"] + ".qcow2")
        subprocess.run(["qemu-img", "check", "-q", "-f", "qcow2", path], check=True)
        r = subprocess.run(["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", disk_path,
                            path], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


class ChainTest(IncrementalTestCase):

    def test_the_next_image_holds_only_what_the_guest_wrote(self):
        g = self.writer("in-write", size_mb=256, data_mb=96)
        first = self.images(self.incremental(g, "--store-digest", "sha512"))[0]
        self.assertFalse(first.get("incremental", False))
        self.assertNotIn("parent", first)
        self.assertEqual(len(checkpoints(g)), 1)
        parent = first
        # two incrementals while the writer writes: each chain holds the
        # writer's rings as of one instant (the checker reads the chain
        # through its backing files), and the guest is never paused
        for _ in range(2):
            g.assert_beats_after(g.heartbeats()[-1] + 5)
            top = self.images(self.incremental(g, "--store-digest", "sha512"))[0]
            self.assertTrue(top["incremental"])
            self.assertEqual(top["parent"], parent["id"])
            # only what changed is read: the writer's ring (16 MiB) and its
            # heartbeats, not the 96 MiB of data
            self.assertLess(top["read_bytes"], 24 << 20)
            self.assertGreater(top["read_bytes"], 0)
            self.assertLess(top["size"], first["size"] // 3)
            path = os.path.join(self.store, top["id"] + ".qcow2")
            meta = self.sidecar(top)
            self.assertEqual(meta["os_hash_algo"], "sha512")
            hsfix.assert_sidecar_digest(self, meta, path, "sha512")
            self.assertEqual(meta["hotsnap_parent"], parent["id"])
            self.assertEqual(meta["hotsnap_backing_file"], parent["id"] + ".qcow2")
            subprocess.run(["qemu-img", "check", "-q", "-f", "qcow2", path], check=True)
            ok, msg = hsfix.check_images(g.BLOCKS, path)
            self.assertTrue(ok, msg)
            self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
            # one checkpoint per chain: the new one
            self.assertEqual(checkpoints(g), [self.chain_file(g)["checkpoint"]])
            self.assertEqual(self.chain_file(g)["disks"]["vda"]["image"], top["id"])
            parent = top
        # held still, the chain reads exactly as the disk (QEMU writes what
        # it holds as it exits)
        g.dom.suspend()
        top = self.images(self.incremental(g))[0]
        self.assertEqual(top["parent"], parent["id"])
        g.dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL)
        self.assert_chain_reads_as(top, g.disks[0].path)
        v = hotsnap(self.state, "--to", "dir:" + self.store, "verify")
        self.assertEqual(v.rc, 0, v.stderr)
        self.assert_nothing_left()

    def test_a_chain_survives_a_restart_of_the_guest(self):
        # destroyed (QEMU saves its bitmaps as it exits) and started again
        g = self.guest("in-restart").start()
        first = self.images(self.incremental(g))[0]
        g.dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL)
        g.start()
        top = self.images(self.incremental(g))[0]
        self.assertTrue(top.get("incremental"), top)
        self.assertEqual(top["parent"], first["id"])
        g.dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL)
        self.assert_chain_reads_as(top, g.disks[0].path)

    def test_a_pruned_chain_goes_on(self):
        # full, two overlays; prune keeps the last, made self-contained; the
        # next incremental reads through it and the chain is the disk
        g = self.guest("in-prune").start()
        imgs = [self.images(self.incremental(g))[0] for _ in range(3)]
        p = hotsnap(self.state, "--to", "dir:" + self.store, "prune", "--keep-last", "1")
        self.assertEqual(p.rc, 0, p.stderr)
        acts = {e["id"]: e["action"] for e in p.events if e.get("event") == "pruned"}
        self.assertEqual([acts[i["id"]] for i in imgs], ["remove", "remove", "flatten"])
        for gone in imgs[:2]:
            self.assertFalse(os.path.exists(os.path.join(self.store, gone["id"] + ".json")))
            self.assertFalse(os.path.exists(os.path.join(self.store, gone["id"] + ".qcow2")))
        self.assertNotIn("hotsnap_parent", self.sidecar(imgs[2]))
        g.dom.suspend()
        top = self.images(self.incremental(g))[0]
        self.assertTrue(top.get("incremental"), top)
        self.assertEqual(top["parent"], imgs[2]["id"])
        g.dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL)
        self.assert_chain_reads_as(top, g.disks[0].path)
        v = hotsnap(self.state, "--to", "dir:" + self.store, "verify")
        self.assertEqual(v.rc, 0, v.stderr)
        self.assert_nothing_left()

    def test_checkpoints_lost_with_the_domain_are_redefined(self):
        # what undefine and define do: libvirt forgets the checkpoint, the
        # bitmap stays in the qcow2; it is redefined from the chain file
        g = self.guest("in-redefine").start()
        first = self.images(self.incremental(g))[0]
        xml = g.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        g.dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL)
        g.dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        g.dom = self.c.defineXML(xml)
        g.start()
        self.assertEqual(checkpoints(g), [])
        top = self.images(self.incremental(g))[0]
        self.assertTrue(top.get("incremental"), top)
        self.assertEqual(top["parent"], first["id"])
        self.assertEqual(len(checkpoints(g)), 1)

    def test_two_stores_keep_chains_of_their_own(self):
        g = self.guest("in-stores").start()
        other = os.path.join(self.state, "other")
        os.makedirs(other)
        a1 = self.images(self.incremental(g))[0]
        b = hotsnap(self.state, "snapshot", "--to", "dir:" + other, "--incremental", g.name)
        self.assertEqual(b.rc, 0, b.stderr)
        self.assertEqual(len(checkpoints(g)), 2)
        # a plain snapshot takes and deletes no checkpoint
        self.assertEqual(self.snapshot(g.name).rc, 0)
        self.assertEqual(len(checkpoints(g)), 2)
        a2 = self.images(self.incremental(g))[0]
        self.assertEqual(a2["parent"], a1["id"])
        self.assertEqual(len(checkpoints(g)), 2)
        b2 = hotsnap(self.state, "snapshot", "--to", "dir:" + other, "--incremental", g.name)
        self.assertEqual(b2.rc, 0, b2.stderr)
        self.assertTrue(self.images(b2)[0]["incremental"])
        self.assertEqual(self.images(b2)[0]["parent"], self.images(b)[0]["id"])


class HealTest(IncrementalTestCase):

    def full_reasons(self, run):
        return {img["disk"]: img.get("full_reason", "") for img in self.images(run)
                if not img.get("incremental")}

    def test_each_disk_that_cannot_go_on_is_read_in_full_with_the_reason(self):
        g = self.guest("in-heal", disks=2).start()
        self.incremental(g, "--all-disks")
        # vdb's last image no longer matches its sidecar
        vdb = self.chain_file(g)["disks"]["vdb"]
        with open(os.path.join(self.store, vdb["file"]), "r+b") as f:
            f.seek(100)
            b = f.read(1)
            f.seek(100)
            f.write(bytes([b[0] ^ 0xff]))
        run = self.incremental(g, "--all-disks")
        reasons = self.full_reasons(run)
        self.assertEqual(list(reasons), ["vdb"])
        self.assertIn("vdb: the last image", reasons["vdb"])
        self.assertIn("full copy", reasons["vdb"])
        self.assertTrue([e for e in run.events if e.get("event") == "warning" and
                         "vdb" in e.get("message", "")], run.events)
        # the checkpoint and its bitmaps gone: both in full, and why
        for cp in g.dom.listAllCheckpoints():
            cp.delete()
        run = self.incremental(g, "--all-disks")
        reasons = self.full_reasons(run)
        self.assertEqual(sorted(reasons), ["vda", "vdb"])
        self.assertIn("missing", reasons["vda"])
        # and from there on, incremental again
        run = self.incremental(g, "--all-disks")
        self.assertEqual(self.full_reasons(run), {})

    def test_a_bitmap_qemu_did_not_save_is_not_trusted(self):
        # QEMU killed while the guest ran: its bitmap is marked in use in the
        # qcow2, inconsistent once QEMU opens it again
        g = self.guest("in-qemukill").start()
        self.incremental(g)
        os.kill(qemu_pid(g), signal.SIGKILL)
        deadline = time.time() + 30
        while g.state() != libvirt.VIR_DOMAIN_SHUTOFF:
            self.assertLess(time.time(), deadline)
            time.sleep(0.1)
        g.start()
        run = self.incremental(g)
        reasons = self.full_reasons(run)
        self.assertIn("inconsistent", reasons.get("vda", ""), run.events)
        self.assertEqual(len(checkpoints(g)), 1)

    def test_a_new_disk_starts_its_own_chain(self):
        g = self.guest("in-newdisk", disks=2).start()
        self.incremental(g)  # the root disk only
        run = self.incremental(g, "--all-disks")
        reasons = self.full_reasons(run)
        self.assertEqual(list(reasons), ["vdb"])
        self.assertIn("new disk", reasons["vdb"])
        self.assertTrue([i for i in self.images(run) if i["disk"] == "vda"][0]["incremental"])


class RefusedAndRecoveredTest(IncrementalTestCase):

    def test_refused_where_it_cannot_be(self):
        g = self.guest("in-refused")
        for args, want in ((["--to", "glance:http://127.0.0.1:9"], "Glance keeps whole images"),
                           (["--format", "raw"], "qcow2 overlay"),
                           (["--compress"], "qcow2 overlay"),
                           (["--mode", "cold"], "mode cold")):
            r = hotsnap(self.state, "snapshot", "--incremental", *args, g.name)
            self.assertNotEqual(r.rc, 0)
            self.assertIn(want, r.stderr)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)

    def test_a_chain_file_not_hotsnap_s_is_not_read(self):
        # a store others may write to (sticky): a file planted under the
        # chain's name is refused, not followed
        g = self.guest("in-planted").start()
        os.chmod(self.store, 0o1777)
        planted = os.path.join(self.store, "chain-" + g.dom.UUIDString())
        with open(planted, "w") as f:
            json.dump({"prefix": "hotsnap-x-", "checkpoint": "hotsnap-x-y", "disks": {}}, f)
        os.chown(planted, 65534, 65534)
        run = self.snapshot("--incremental", g.name)
        self.assertEqual(run.rc, 1)
        self.assertIn("not a regular file of hotsnap's user", run.summary()["results"][0]["error"])
        self.assertEqual(checkpoints(g), [])
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assert_nothing_left()

    def test_a_shut_off_guest_gets_a_full_image_outside_the_chain(self):
        g = self.guest("in-off")
        run = self.incremental(g)
        self.assertTrue([e for e in run.events if e.get("event") == "warning" and
                         "outside its incremental chain" in e.get("message", "")], run.events)
        self.assertFalse(os.path.exists(os.path.join(self.store, "chain-" + g.dom.UUIDString())))

    def test_a_killed_incremental_leaves_the_chain_as_it_was(self):
        g = self.guest("in-kill", size_mb=256, data_mb=64).start()
        first = self.images(self.incremental(g))[0]
        head = self.chain_file(g)["checkpoint"]
        run = Run(self.state, "snapshot", "--to", "dir:" + self.store, "--incremental",
                  "--max-rate", "1M", g.name)
        run.until(state_event("upload"))
        self.assertEqual(len(checkpoints(g)), 2)  # the dead run's, made with its backup
        run.p.send_signal(signal.SIGKILL)
        run.finish()
        rec = hotsnap(self.state, "recover")
        self.assertEqual(rec.rc, 0, rec.stderr)
        deleted = [n for e in rec.events if e.get("event") == "recovered"
                   for n in e.get("checkpoints_deleted", [])]
        self.assertEqual(len(deleted), 1, rec.events)
        self.assertNotEqual(deleted[0], head)
        self.assertEqual(checkpoints(g), [head])
        self.assertFalse(job_active(g.dom))
        # the next incremental goes on from the last published image
        top = self.images(self.incremental(g))[0]
        self.assertEqual(top["parent"], first["id"])
        g.dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL)
        self.assert_chain_reads_as(top, g.disks[0].path)
        self.assert_nothing_left()


class IncrementalLibvirtdTest(IncrementalTestCase):
    """Apart: libvirtd's restart ends the other classes' connection."""

    def test_libvirtd_killed_as_the_incremental_backup_began(self):
        # the incremental backup and its checkpoint have begun, and the call
        # has not returned (the thaw hook holds it), when libvirtd is killed:
        # on the new connection the backup is found running on, the overlay
        # is read from it, the chain goes on from the new checkpoint alone
        g = self.writer("in-began", size_mb=256, data_mb=64, agent=True, thaw_delay=8)
        g.wait_agent()
        first = self.images(self.incremental(g, "--quiesce", "off"))[0]
        run = Run(self.state, "snapshot", "--to", "dir:" + self.store, "--incremental", g.name)
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
        self.assertIn("down", [e.get("connection") for e in run.events])
        [top] = self.images(run)
        self.assertTrue(top.get("incremental"), top)
        self.assertEqual(top["parent"], first["id"])
        path = os.path.join(self.store, top["id"] + ".qcow2")
        subprocess.run(["qemu-img", "check", "-q", "-f", "qcow2", path], check=True)
        ok, msg = hsfix.check_images(g.BLOCKS, path)
        self.assertTrue(ok, msg)
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assertFalse(job_active(g.dom))
        g.assert_fs_writable()
        self.assertEqual(checkpoints(g), [self.chain_file(g)["checkpoint"]])
        # and the next one is right: held still, the chain is the disk
        g.dom.suspend()
        last = self.images(self.incremental(g, "--quiesce", "off"))[0]
        self.assertEqual(last["parent"], top["id"])
        g.dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL)
        self.assert_chain_reads_as(last, g.disks[0].path)
        self.assert_nothing_left()


if __name__ == "__main__":
    unittest.main()
