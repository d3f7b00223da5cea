"""libhotsnap as an installed library: cmake --install into a prefix, the
example built against it through pkg-config, embedded on its own loop,
snapshotting a real guest."""
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from hsfix import HOTSNAP, GuestTestCase, images_identical

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
HEADER = os.path.join(ROOT, "include", "hotsnap.h")


class LibraryTest(GuestTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.prefix = tempfile.mkdtemp(prefix="hstest-prefix-")
        build = os.path.dirname(os.path.realpath(HOTSNAP))
        subprocess.run(["cmake", "--install", build, "--prefix", cls.prefix], check=True,
                       stdout=subprocess.DEVNULL)
        cls.lib = os.path.join(cls.prefix, "lib")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.prefix, ignore_errors=True)
        super().tearDownClass()

    def pkg_config(self, *args):
        env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(self.lib, "pkgconfig"))
        return subprocess.run(["pkg-config"] + list(args) + ["hotsnap"], env=env, check=True,
                              capture_output=True, text=True).stdout.split()

    def test_installed_tree(self):
        for path in ("include/hotsnap.h", "lib/pkgconfig/hotsnap.pc", "share/man/man1/hotsnap.1",
                     "lib/libhotsnap.so.0", "bin/hotsnap"):
            self.assertTrue(os.path.exists(os.path.join(self.prefix, path)), path)
        so = os.path.realpath(os.path.join(self.lib, "libhotsnap.so"))
        soname = subprocess.run(["objdump", "-p", so], capture_output=True, text=True).stdout
        self.assertIn("SONAME               libhotsnap.so.0", soname)
        # exactly the functions of hotsnap.h are exported, no internals
        with open(HEADER) as f:
            declared = set(re.findall(r"\b(hs_[a-z_]+)\(", f.read()))
        nm = subprocess.run(["nm", "-D", "--defined-only", so], capture_output=True,
                            text=True).stdout
        exported = {line.split()[-1].split("@")[0] for line in nm.splitlines()
                    if " T " in line}
        self.assertEqual(exported, declared)
        # the installed command runs on the installed library
        ldd = subprocess.run(["ldd", os.path.join(self.prefix, "bin", "hotsnap")],
                             capture_output=True, text=True).stdout
        self.assertIn(os.path.join(self.prefix, "bin", "..", "lib", "libhotsnap.so.0"), ldd)
        r = subprocess.run([os.path.join(self.prefix, "bin", "hotsnap"), "--help"],
                           capture_output=True, text=True)
        self.assertIn("usage: hotsnap", r.stdout + r.stderr)
        with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
            version = re.search(r"set\(HS_VERSION ([0-9.]+)\)", f.read()).group(1)
        self.assertEqual(self.pkg_config("--modversion"), [version])
        # the agent's service unit is installed too
        unit = os.path.join(self.prefix, "lib", "systemd", "system", "hotsnap-agent.service")
        with open(unit) as f:
            self.assertIn("ExecStart=%s agent" % os.path.join(self.prefix, "bin", "hotsnap"),
                          f.read())

    def test_example_embeds_the_engine(self):
        exe = os.path.join(self.prefix, "embed")
        subprocess.run(["cc", os.path.join(ROOT, "examples", "embed.c"), "-o", exe,
                        "-Wl,-rpath," + self.lib] + self.pkg_config("--cflags", "--libs"),
                       check=True)
        g = self.guest("embed", data_mb=8).start()
        r = subprocess.run([exe, g.name, self.state, self.store], capture_output=True, text=True,
                           timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
        states = [e["state"] for e in events if e.get("event") == "state"]
        self.assertEqual(states[-1], "done", states)
        [img] = [f for f in os.listdir(self.store) if f.endswith(".qcow2")]
        same, out = images_identical(os.path.join(self.store, img), g.disks[0].path)
        self.assertTrue(same, out)
        # a bad domain: a one-line error, nothing started
        r = subprocess.run([exe, "hstest-no-such-domain", self.state, self.store],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 1)
        self.assertIn("hstest-no-such-domain", r.stderr)
        self.assert_nothing_left()


if __name__ == "__main__":
    unittest.main()
