"""Glance behind Keystone: OS_* credentials, bad tokens, tokens that expire mid-batch."""
import hashlib
import os
import subprocess
import unittest

from hsfix import GlanceServer, GuestTestCase, KeystoneServer, Run


class KeystoneTest(GuestTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # tokens live 15 s: a batch of rate-limited uploads, or one long upload,
        # outlives several
        cls.keystone = KeystoneServer(token_expiration=15)
        try:
            cls.glance = GlanceServer(keystone=cls.keystone)
        except Exception:
            cls.keystone.close()
            raise
        cls.keystone.register_image_service(cls.glance.url)

    @classmethod
    def tearDownClass(cls):
        cls.glance.close()
        cls.keystone.close()
        super().tearDownClass()

    def run_env(self, env, *args):
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return Run(self.state, "snapshot", *args).finish()
        finally:
            for k, v in old.items():
                if v is None:
                    del os.environ[k]
                else:
                    os.environ[k] = v

    def test_os_variables_and_a_batch_that_outlives_its_token(self):
        g = self.guest("ks-batch", disks=3, size_mb=128, data_mb=100)
        before = self.keystone.token_requests()
        # three 100 MiB images one after another at 12 MiB/s: ~25 s, past the 15 s token
        run = self.run_env(self.keystone.env(), "--to", "glance", "--all-disks", "--format",
                           "raw", "--max-rate", "12M", g.name)
        self.assertEqual(run.rc, 0, run.stderr + str(run.summary()))
        imgs = run.summary()["results"][0]["images"]
        self.assertEqual(len(imgs), 3)
        tok = self.keystone.token()
        for img in imgs:
            meta = self.glance.api("GET", "/v2/images/" + img["id"], token=tok)
            self.assertEqual(meta["status"], "active")
            self.assertEqual(meta["size"], 128 << 20)
        # hotsnap authenticated again before its token ran out
        self.assertGreaterEqual(self.keystone.token_requests() - before, 2)
        # no credential on stdout or stderr
        self.assertNotIn(KeystoneServer.PASSWORD, run.stderr)
        self.assertNotIn(KeystoneServer.PASSWORD, str(run.events))
        self.assert_nothing_left()

    def test_one_upload_outlives_its_token(self):
        # 256 MiB at 8 MiB/s: 32 s in one PUT, two tokens' lives; every request
        # after it (the verify) needs a token renewed first
        g = self.guest("ks-long", size_mb=256, data_mb=16)
        before = self.keystone.token_requests()
        run = self.run_env(self.keystone.env(), "--to", "glance", "--format", "raw",
                           "--max-rate", "8M", g.name)
        self.assertEqual(run.rc, 0, run.stderr + str(run.summary()))
        [img] = run.summary()["results"][0]["images"]
        tok = self.keystone.token()
        meta = self.glance.api("GET", "/v2/images/" + img["id"], token=tok)
        self.assertEqual(meta["status"], "active")
        self.assertEqual(meta["size"], 256 << 20)
        raw = os.path.join(self.state, "disk.raw")
        subprocess.run(["qemu-img", "convert", "-O", "raw", g.disks[0].path, raw], check=True)
        with open(raw, "rb") as f:
            self.assertEqual(meta["os_hash_value"], hashlib.sha512(f.read()).hexdigest())
        # exactly one record: no second upload from byte 0, nothing orphaned
        self.assertEqual([i["id"] for i in self.glance.images(token=tok)], [img["id"]])
        self.assertGreaterEqual(self.keystone.token_requests() - before, 2)
        self.glance.api("DELETE", "/v2/images/" + img["id"], token=tok)
        self.assert_nothing_left()

    def test_upload_forbidden_falls_back_to_import(self):
        # Glance refuses plain uploads by policy and offers glance-direct import
        # (an import needs an authenticated owner, hence Keystone here)
        strict = GlanceServer(keystone=self.keystone, import_only=True)
        try:
            g = self.guest("ks-import", size_mb=64, data_mb=8)
            run = self.run_env({}, "--to", "glance:" + strict.url, "--token",
                               self.keystone.token(), g.name)
            self.assertEqual(run.rc, 0, run.stderr + str(run.summary()))
            [img] = run.summary()["results"][0]["images"]
            meta = strict.api("GET", "/v2/images/" + img["id"], token=self.keystone.token())
            self.assertEqual(meta["status"], "active")
            # only an import sets these; hotsnap checked size and sha512 itself
            self.assertIn("os_glance_importing_to_stores", meta)
            self.assertEqual(meta["os_glance_failed_import"], "")
            self.assertEqual(meta["image_type"], "snapshot")
        finally:
            strict.close()
        self.assert_nothing_left()

    def test_bad_token_is_reported(self):
        g = self.guest("ks-badtoken", size_mb=64, data_mb=4)
        run = Run(self.state, "snapshot", "--to", "glance:" + self.glance.url, "--token",
                  "bogus-token", g.name)
        run.until(lambda ev: True)  # options parsed: the token is out of the process title
        with open("/proc/%d/cmdline" % run.p.pid, "rb") as f:
            self.assertNotIn(b"bogus-token", f.read())
        run.finish()
        self.assertEqual(run.rc, 1)
        err = run.summary()["results"][0]["error"]
        self.assertIn("HTTP 401", err)
        self.assertIn("refused the credentials", err)
        self.assertNotIn("bogus-token", err)
        self.assert_nothing_left()

    def test_wrong_password_is_reported(self):
        g = self.guest("ks-badpw", size_mb=64, data_mb=4)
        env = dict(self.keystone.env(), OS_PASSWORD="wrong-password")
        run = self.run_env(env, "--to", "glance", g.name)
        self.assertEqual(run.rc, 1)
        err = run.summary()["results"][0]["error"]
        self.assertIn("HTTP 401", err)
        self.assertNotIn("wrong-password", err + run.stderr)
        self.assert_nothing_left()


if __name__ == "__main__":
    unittest.main()
