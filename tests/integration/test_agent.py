"""hotsnap agent: a real agent process on a unix socket and on TCP, driven over
HTTP as a control plane would, against the real libvirtd, QEMU guests and the
local Glance."""
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
import unittest

import libvirt

from hsfix import (HOTSNAP, TOKEN, Agent, GlanceGuestTestCase, GlanceServer, Run, TestPKI,
                   TrapServer, UnixHTTPConnection, gated_qemu_img, job_active)

class EventReader:
    """GET /v1/events read on a thread: the engine's events as they come."""

    def __init__(self, agent, query=""):
        self.conn = UnixHTTPConnection(agent.sock, timeout=300)
        self.conn.request("GET", "/v1/events" + query)
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200
        assert self.resp.getheader("content-type") == "text/event-stream"
        self.events = []
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            while True:
                line = self.resp.fp.readline()
                if not line:
                    return
                if line.startswith(b"data: "):
                    self.events.append(json.loads(line[6:]))
        except (OSError, ValueError):
            return

    def wait(self, pred, timeout=240):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for ev in list(self.events):
                if pred(ev):
                    return ev
            time.sleep(0.1)
        raise AssertionError("no such event; got %s" % self.events[-5:])

    def close(self):
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.conn.close()


class AgentTest(GlanceGuestTestCase):

    def setUp(self):
        super().setUp()
        self.agent = Agent(self.state, "--to", "glance:" + self.glance.url)

    def tearDown(self):
        self.agent.stop()
        super().tearDown()

    def post(self, body, **kw):
        return self.agent.request("POST", "/v1/snapshots", body, **kw)

    def test_snapshot_followed_to_its_verified_image(self):
        g = self.guest("ag-one").start()
        events = EventReader(self.agent)
        try:
            status, job, hdrs = self.post({"domain": g.name, "name": "{domain}-via-agent"})
            self.assertEqual(status, 202, job)
            self.assertEqual(hdrs["location"], "/v1/snapshots/" + job["id"])
            self.assertEqual(job["domain"], g.name)
            self.assertEqual(job["request"]["target"], "default")
            self.assertEqual(job["request"]["to"], "glance:" + self.glance.url)
            # followed through GET: the states it passes
            seen = set()
            j = self.agent.wait_job(job["id"], lambda j: seen.add(j["state"]) or
                                    j["state"] in ("done", "failed"))
            self.assertEqual(j["state"], "done", j.get("error"))
            self.assertEqual(j["task_state"], "done")
            self.assertEqual(j["mode"], "stream")
            self.assertEqual(len(j["images"]), 1)
            img = j["images"][0]
            self.assertEqual(img["name"], g.name + "-via-agent")
            self.assertTrue(img["location"].startswith(self.glance.url))
            # and through the event stream, to the same end
            ev = events.wait(lambda e: e.get("job") == job["id"] and e.get("event") == "state"
                             and e.get("state") == "done")
            self.assertEqual(ev["images"][0]["id"], img["id"])
            self.assertTrue(any(e.get("event") == "accepted" and e["job"] == job["id"]
                                for e in events.events))
            self.assert_in_glance(img, g.disks[0].path)
            self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
            self.assert_nothing_left()
            # listed, filtered
            _, lst, _ = self.agent.request("GET", "/v1/snapshots?state=done&domain=" + g.name)
            self.assertEqual([x["id"] for x in lst], [job["id"]])
            _, lst, _ = self.agent.request("GET", "/v1/snapshots?state=running")
            self.assertEqual(lst, [])
            # the metrics count it
            _, text, _ = self.agent.request("GET", "/metrics")
            self.assertIn('hotsnap_jobs_total{result="done"} 1\n', text)
            self.assertIn("hotsnap_published_bytes_total %d\n" % img["size"], text)
            self.assertIn("hotsnap_libvirt_connected 1\n", text)
        finally:
            events.close()

    def test_a_glance_hashing_with_sha256_is_learned(self):
        """Glance configured for sha256: the first image is checked by size
        with a warning; the next is hashed with sha256 and checked by it."""
        g = self.guest("ag-sha256").start()
        g256 = GlanceServer(hashing_algorithm="sha256")
        try:
            self.restart_agent("--to", "glance:" + g256.url)
            jobs = []
            for _ in range(2):
                status, job, _ = self.post({"domain": g.name})
                self.assertEqual(status, 202, job)
                jobs.append(self.agent.wait_ended(job["id"]))
            first, second = jobs
            for j in jobs:
                self.assertEqual(j["state"], "done", j.get("error"))
            self.assertTrue(any("Glance hashes with sha256, not sha512" in w
                                for w in first.get("warnings", [])), first)
            self.assertFalse(any("hashes with" in w for w in second.get("warnings", [])), second)
            img = second["images"][0]
            self.assertEqual(img["hash_algo"], "sha256")
            rec = g256.api("GET", "/v2/images/" + img["id"])
            self.assertEqual((rec["os_hash_algo"], rec["os_hash_value"]), ("sha256", img["hash"]))
            self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        finally:
            g256.close()

    def test_batch_over_tcp(self):
        gs = [self.guest("ag-b%d" % i).start() for i in range(3)]
        status, jobs, hdrs = self.post([{"domain": g.name, "priority": i}
                                        for i, g in enumerate(gs)], tcp=True)
        self.assertEqual(status, 202, jobs)
        self.assertEqual([j["domain"] for j in jobs], [g.name for g in gs])
        self.assertNotIn("location", hdrs)
        for g, job in zip(gs, jobs):
            j = self.agent.wait_ended(job["id"])
            self.assertEqual(j["state"], "done", j.get("error"))
            self.assert_in_glance(j["images"][0], g.disks[0].path)
        self.assertEqual(len(self.images_of(*gs)), 3)
        self.assert_nothing_left()

    def test_cancel_by_delete_mid_capture(self):
        g = self.guest("ag-cancel").start()
        events = EventReader(self.agent)
        try:
            status, job, _ = self.post({"domain": g.name, "mode": "cold"})
            self.assertEqual(status, 202, job)
            events.wait(lambda e: e.get("job") == job["id"] and e.get("state") == "capture")
            status, body, _ = self.agent.request("DELETE", "/v1/snapshots/" + job["id"])
            self.assertEqual(status, 202, body)
            self.assertTrue(body["cancel_requested"])
            j = self.agent.wait_ended(job["id"])
            self.assertEqual(j["state"], "failed")
            self.assertIn("canceled", j["error"])
            self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
            self.assertFalse(g.dom.hasManagedSaveImage())
            self.assertEqual(self.images_of(g), [])
            self.assert_nothing_left()
            # a second cancel of an ended job is refused, and says why
            status, body, _ = self.agent.request("DELETE", "/v1/snapshots/" + job["id"])
            self.assertEqual(status, 409)
            self.assertIn("already ended", body["error"])
        finally:
            events.close()

    def test_idempotent_retry_returns_the_same_job(self):
        g = self.guest("ag-idem").start()
        key = {"Idempotency-Key": "retry-1"}
        status, first, _ = self.post({"domain": g.name}, headers=key)
        self.assertEqual(status, 202)
        status, again, hdrs = self.post({"domain": g.name}, headers=key)
        self.assertEqual(status, 202)
        self.assertEqual(again["id"], first["id"])
        self.assertEqual(hdrs.get("idempotent-replayed"), "true")
        self.agent.wait_ended(first["id"])
        # also after the agent restarted: the key is kept with the job's history
        self.agent.stop()
        self.agent.start()
        status, later, _ = self.post({"domain": g.name}, headers=key)
        self.assertEqual(later["id"], first["id"])
        self.assertEqual(later["state"], "done")
        _, lst, _ = self.agent.request("GET", "/v1/snapshots?domain=" + g.name)
        self.assertEqual(len(lst), 1)
        self.assertEqual(len(self.images_of(g)), 1)

    def test_bad_requests_start_nothing(self):
        g = self.guest("ag-bad").start()
        cases = [
            ("not json", 400, "not JSON"),
            ({"mode": "live"}, 400, "'domain' is missing"),
            ({"domain": g.name, "mode": "warp"}, 400, "field 'mode'"),
            ({"domain": g.name, "format": "raw", "compress": True}, 400, "compress"),
            ({"domain": g.name, "priority": "high"}, 400, "field 'priority'"),
            ({"domain": g.name, "tagret": "dir:/x"}, 400, "unknown field 'tagret'"),
            ({"domain": g.name, "target": "s3:bucket"}, 400, "field 'target'"),
            ({"domain": g.name, "name": "{nope}"}, 400, "field 'name'"),
            ([{"domain": g.name}, {"domain": g.name}], 400, "asked for twice"),
            ([{"domain": g.name}, {"domain": "hstest-no-such"}], 404,
             "domain 'hstest-no-such' not found"),
            ({"domain": "hstest-no-such"}, 404, "not found"),
            ([], 400, "1 to"),
        ]
        for body, code, words in cases:
            status, resp, _ = self.post(body)
            self.assertEqual(status, code, (body, resp))
            self.assertIn(words, resp["error"], body)
        status, resp, _ = self.post({"domain": g.name}, headers={"Idempotency-Key": "x" * 65})
        self.assertEqual(status, 400)
        self.assertIn("Idempotency-Key", resp["error"])
        # a body over the bound: refused on its Content-Length, before it is read
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(self.agent.sock)
            s.sendall(b"POST /v1/snapshots HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Length: 2097152\r\n\r\n{")
            self.assertTrue(s.recv(4096).startswith(b"HTTP/1.1 413 "))
        status, resp, _ = self.agent.request("GET", "/v1/snapshots/no-such-job")
        self.assertEqual(status, 404)
        status, resp, _ = self.agent.request("GET", "/v2/whatever")
        self.assertEqual(status, 404)
        status, resp, hdrs = self.agent.request("PUT", "/v1/snapshots")
        self.assertEqual(status, 405)
        self.assertEqual(hdrs["allow"], "GET, POST")
        # TCP: no token, a wrong one, and the right one
        status, resp, hdrs = self.agent.request("GET", "/healthz", tcp=True, token=None)
        self.assertEqual(status, 401)
        self.assertEqual(hdrs["www-authenticate"], "Bearer")
        status, resp, _ = self.post({"domain": g.name}, tcp=True, token=TOKEN[:-1] + "X")
        self.assertEqual(status, 401)
        status, resp, _ = self.agent.request("GET", "/healthz", tcp=True)
        self.assertEqual(status, 200)
        # nothing was started, and the agent is as it was
        _, lst, _ = self.agent.request("GET", "/v1/snapshots")
        self.assertEqual(lst, [])
        self.assertEqual(self.images_of(g), [])
        self.assertFalse(job_active(g.dom))
        # the socket is for root and its group only
        self.assertEqual(os.stat(self.agent.sock).st_mode & 0o777, 0o660)

    def restart_agent(self, *args, env=None):
        self.agent.stop()
        self.agent = Agent(self.state, *args, env=env)

    def test_a_request_names_a_configured_target_never_a_url(self):
        g = self.guest("ag-targets").start()
        trap = TrapServer()
        try:
            env = dict(os.environ, OS_TOKEN="os-token-that-stays-home")
            self.restart_agent("--to", "glance:" + self.glance.url,
                               "--allow-target", "local=dir:" + self.store, env=env)
            cases = [
                ({"domain": g.name, "target": "glance:" + trap.url + "/x"}, "field 'target'"),
                ({"domain": g.name, "target": "dir:/etc"}, "field 'target'"),
                ({"domain": g.name, "target": "../etc"}, "field 'target'"),
                ({"domain": g.name, "target": "nosuch"},
                 "no target 'nosuch' (it has: default, local)"),
                ([{"domain": g.name}, {"domain": g.name + "x", "target": "glance"}],
                 "no target 'glance'"),
            ]
            for body, words in cases:
                for tcp in (False, True):
                    status, resp, _ = self.post(body, tcp=tcp)
                    self.assertEqual(status, 400, (body, resp))
                    self.assertIn(words, resp["error"])
            _, lst, _ = self.agent.request("GET", "/v1/snapshots")
            self.assertEqual(lst, [])
            # the targets a control plane may name
            status, targets, _ = self.agent.request("GET", "/v1/targets")
            self.assertEqual(status, 200)
            self.assertEqual(targets, [
                {"name": "default", "to": "glance:" + self.glance.url, "default": True},
                {"name": "local", "to": "dir:" + self.store, "default": False}])
            # one of them by its name
            status, job, _ = self.post({"domain": g.name, "target": "local"})
            self.assertEqual(status, 202, job)
            self.assertEqual(job["request"]["target"], "local")
            self.assertEqual(job["request"]["to"], "dir:" + self.store)
            j = self.agent.wait_ended(job["id"])
            self.assertEqual(j["state"], "done", j.get("error"))
            img = j["images"][0]
            self.assertEqual(img["location"], os.path.join(self.store, img["id"] + ".qcow2"))
            self.assertTrue(os.path.exists(img["location"]))
            self.assertEqual(self.images_of(g), [])
            # the store verified through the agent: intact, then a flipped byte found
            status, v, _ = self.agent.request("POST", "/v1/targets/local/verify")
            self.assertEqual((status, v["checked"], v["bad"], v["images"]), (200, 1, 0, []), v)
            with open(img["location"], "r+b") as f:
                f.seek(-1, os.SEEK_END)
                b = f.read(1)
                f.seek(-1, os.SEEK_END)
                f.write(bytes([b[0] ^ 0x01]))
            status, v, _ = self.agent.request("POST", "/v1/targets/local/verify", tcp=True)
            self.assertEqual((status, v["checked"], v["bad"]), (200, 1, 1), v)
            self.assertEqual(v["images"][0]["id"], img["id"])
            for path, want in (("/v1/targets/default/verify", 400),
                               ("/v1/targets/nosuch/verify", 404),
                               ("/v1/targets/..%2Fetc/verify", 400)):
                status, v, _ = self.agent.request("POST", path)
                self.assertEqual(status, want, (path, v))
            status, _, _ = self.agent.request("GET", "/v1/targets/local/verify")
            self.assertEqual(status, 405)
            # nothing ever reached the trap, the token least of all
            self.assertEqual(trap.requests, [])
        finally:
            trap.close()

    def test_a_store_pruned_through_the_agent(self):
        g = self.guest("ag-prune").start()
        self.restart_agent("--allow-target", "local=dir:" + self.store)
        ids = []
        for _ in range(3):
            status, job, _ = self.post({"domain": g.name, "target": "local",
                                        "incremental": True})
            self.assertEqual(status, 202, job)
            j = self.agent.wait_ended(job["id"])
            self.assertEqual(j["state"], "done", j.get("error"))
            ids.append(j["images"][0]["id"])
        # what would go, then the prune: the last kept, made self-contained
        status, p, _ = self.agent.request("POST", "/v1/targets/local/prune",
                                          {"keep_last": 1, "dry_run": True})
        self.assertEqual((status, p["removed"], p["dry_run"]), (200, 0, True), p)
        self.assertEqual(len(os.listdir(self.store)), 7)  # 3 images, 3 sidecars, the chain
        status, p, _ = self.agent.request("POST", "/v1/targets/local/prune", {"keep_last": 1},
                                          tcp=True)
        self.assertEqual((status, p["kept"], p["removed"], p["rewritten"]), (200, 1, 2, 1), p)
        self.assertEqual({i["id"]: i["action"] for i in p["images"]},
                         {ids[0]: "remove", ids[1]: "remove", ids[2]: "flatten"})
        self.assertEqual(sorted(os.listdir(self.store)),
                         sorted([ids[2] + ".qcow2", ids[2] + ".json",
                                 "chain-" + g.dom.UUIDString()]))
        # the chain goes on from the kept image
        status, job, _ = self.post({"domain": g.name, "target": "local", "incremental": True})
        j = self.agent.wait_ended(job["id"])
        self.assertEqual(j["state"], "done", j.get("error"))
        self.assertEqual(j["images"][0].get("parent"), ids[2], j["images"][0])
        for body, want in (({}, "needs keep_last"), ({"keep_last": -1}, "'keep_last'"),
                           ({"keep_last": 1, "path": "/etc"}, "unknown key 'path'"),
                           ({"keep_daily": 65}, "'keep_daily'"), ([], "JSON object"),
                           ({"keep_last": 1, "dry_run": "yes"}, "'dry_run'")):
            status, resp, _ = self.agent.request("POST", "/v1/targets/local/prune", body)
            self.assertEqual(status, 400, (body, resp))
            self.assertIn(want, resp["error"])
        status, resp, _ = self.agent.request("POST", "/v1/targets/local/prune", "not json")
        self.assertEqual(status, 400, resp)
        for path, want in (("/v1/targets/nosuch/prune", 404), ("/v1/targets/..%2Fetc/prune", 400)):
            status, resp, _ = self.agent.request("POST", path, {"keep_last": 1})
            self.assertEqual(status, want, (path, resp))
        status, _, _ = self.agent.request("GET", "/v1/targets/local/prune")
        self.assertEqual(status, 405)
        self.assertEqual(len(os.listdir(self.store)), 5)

    def test_credentials_are_never_shown(self):
        secret, token = "hs-secret-pw", "os-token-never-shown"
        user_url = self.glance.url.replace("http://", "http://hsuser:%s@" % secret)
        env = dict(os.environ, OS_TOKEN=token)
        self.restart_agent("--to", "glance:" + user_url, env=env)
        g = self.guest("ag-secret").start()
        events = EventReader(self.agent)
        try:
            status, job, _ = self.post({"domain": g.name})
            self.assertEqual(status, 202, job)
            j = self.agent.wait_ended(job["id"])
            self.assertEqual(j["state"], "done", j.get("error"))
            ev = events.wait(lambda e: e.get("job") == job["id"] and e.get("state") == "done")
        finally:
            events.close()
        shown = "glance:" + self.glance.url.replace("http://", "http://***@")
        self.assertEqual(j["request"]["to"], shown)
        self.assertTrue(j["images"][0]["location"].startswith(shown[len("glance:"):]))
        _, lst, _ = self.agent.request("GET", "/v1/snapshots")
        _, targets, _ = self.agent.request("GET", "/v1/targets")
        with open(os.path.join(self.state, "agent", "jobs.jsonl")) as f:
            history = f.read()
        with open("/proc/%d/cmdline" % self.agent.p.pid, "rb") as f:
            cmdline = f.read().decode(errors="replace")
        places = {"job": json.dumps(j), "list": json.dumps(lst), "targets": json.dumps(targets),
                  "events": json.dumps(events.events), "history": history,
                  "cmdline": cmdline, "log": self.agent.read_log()}
        # the command scrubs its --to the same way
        state = os.path.join(self.state, "cmd")
        os.makedirs(state, mode=0o711)
        run = Run(state, "snapshot", "--to", "glance:" + user_url, g.name)
        run.until(lambda e: e.get("event") == "state")
        with open("/proc/%d/cmdline" % run.p.pid, "rb") as f:
            places["command's cmdline"] = f.read().decode(errors="replace")
        run.finish()
        self.assertEqual(run.rc, 0, run.stderr)
        places["command's output"] = json.dumps(run.events) + run.stderr
        for where, text in places.items():
            self.assertNotIn(secret, text, where)
            self.assertNotIn(token, text, where)
        self.assertIn("***@", json.dumps(ev))
        self.assertIn("***@", json.dumps(run.summary()))

    def metric(self, name):
        _, text, _ = self.agent.request("GET", "/metrics")
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        self.fail("no metric %s" % name)

    def test_tcp_clients_never_starve_the_socket(self):
        self.restart_agent("--to", "glance:" + self.glance.url, "--max-connections", "64")
        # more idle TCP connections than TCP may have, none with a token
        idle = [socket.create_connection(("127.0.0.1", self.agent.port)) for _ in range(100)]
        try:
            # the unix socket has a budget of its own: it answers every request
            for _ in range(48):
                status, _, _ = self.agent.request("GET", "/healthz")
                self.assertEqual(status, 200)
            # an idle TCP connection has a few seconds to show its token: then it ends
            for s in idle:
                s.settimeout(60)
                try:
                    self.assertEqual(s.recv(1), b"")
                except ConnectionResetError:
                    pass  # refused at the limit
            self.assertGreaterEqual(self.metric("hotsnap_http_unauthenticated_total"), 64)
            self.assertGreaterEqual(self.metric("hotsnap_http_connections_refused_total"), 36)
        finally:
            for s in idle:
                s.close()
        # a wrong token ends its connection with the 401
        with socket.create_connection(("127.0.0.1", self.agent.port), timeout=30) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n\r\n")
            got = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            self.assertTrue(got.startswith(b"HTTP/1.1 401 "), got)
        # the right one keeps its connection: two requests on one
        c = http.client.HTTPConnection("127.0.0.1", self.agent.port, timeout=30)
        try:
            for _ in range(2):
                c.request("GET", "/healthz", headers={"Authorization": "Bearer " + TOKEN})
                r = c.getresponse()
                r.read()
                self.assertEqual(r.status, 200)
        finally:
            c.close()

    def many_domains(self, n):
        """n defined domains that never run (no disk): names for big batches."""
        doms = []
        for i in range(n):
            doms.append(self.c.defineXML(
                "<domain type='qemu'><name>hstest-many-%d</name><memory unit='MiB'>32</memory>"
                "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>" % i))
        self.addCleanup(lambda: [d.undefine() for d in doms])
        return [d.name() for d in doms]

    def test_the_running_cap_counts_what_is_being_accepted(self):
        names = self.many_domains(205)
        body = json.dumps([{"domain": n, "mode": "live"} for n in names])
        # libvirtd held still: every POST waits for its domain list
        with open("/run/libvirtd.pid") as f:
            libvirtd = int(f.read().strip())
        conns = []
        os.kill(libvirtd, signal.SIGSTOP)
        try:
            for _ in range(5):  # 5 x 205 > 1024: the fifth cannot be accepted
                c = UnixHTTPConnection(self.agent.sock, timeout=60)
                c.request("POST", "/v1/snapshots", body=body,
                          headers={"Content-Type": "application/json"})
                conns.append(c)
            # the one over the cap is answered at once, while libvirt is still held
            first = conns[4].getresponse()
            refused = json.loads(first.read())
            self.assertEqual(first.status, 429, refused)
            self.assertIn("820 being accepted", refused["error"])
        finally:
            os.kill(libvirtd, signal.SIGCONT)
        statuses = [c.getresponse().status for c in conns[:4]]
        for c in conns:
            c.close()
        self.assertEqual(statuses, [202] * 4)
        deadline = time.time() + 240
        while self.agent.request("GET", "/v1/snapshots?state=running")[1]:
            self.assertLess(time.time(), deadline, "the batch never ended")
            time.sleep(0.5)
        _, lst, _ = self.agent.request("GET", "/v1/snapshots?limit=2000")
        self.assertEqual(len(lst), 820)

    def test_sigterm_with_a_libvirt_call_in_flight(self):
        with open("/run/libvirtd.pid") as f:
            libvirtd = int(f.read().strip())
        answer = {}

        def ask():
            try:
                answer["r"] = self.agent.request("GET", "/v1/domains")
            except OSError as e:
                answer["r"] = e
        os.kill(libvirtd, signal.SIGSTOP)
        try:
            t = threading.Thread(target=ask)
            t.start()
            deadline = time.time() + 30
            while self.metric("hotsnap_libvirt_calls") < 1:
                self.assertLess(time.time(), deadline, "the listing never started")
                time.sleep(0.05)
            self.agent.p.send_signal(signal.SIGTERM)
            deadline = time.time() + 30
            while "canceling 0 snapshot(s) and stopping" not in self.agent.read_log():
                self.assertLess(time.time(), deadline, "the agent did not take the SIGTERM")
                time.sleep(0.05)
        finally:
            os.kill(libvirtd, signal.SIGCONT)
        # it waits for the call, answers it, and exits cleanly
        self.assertEqual(self.agent.p.wait(timeout=120), 0)
        t.join(60)
        self.assertIn("r", answer)
        self.assertNotIn("Assertion", self.agent.p.stderr.read() + self.agent.read_log())

    def curl(self, url, *args):
        r = subprocess.run(["curl", "-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}",
                            *args, url], capture_output=True, text=True)
        body, _, code = r.stdout.rpartition("\n")
        return r.returncode, code, body, r.stderr

    def test_tls_on_tcp_checked_by_the_real_curl(self):
        pki = TestPKI(self.state)
        tls = ["--tls-cert", pki.server, "--tls-key", pki.server_key]
        self.restart_agent("--to", "glance:" + self.glance.url, *tls)
        auth = ["-H", "Authorization: Bearer " + TOKEN]
        url = "https://127.0.0.1:%d/healthz" % self.agent.port
        rc, code, body, err = self.curl(url, "--cacert", pki.ca, *auth)
        self.assertEqual((rc, code), (0, "200"), err)
        self.assertEqual(json.loads(body)["status"], "ok")
        # by name too, as the certificate says
        rc, code, _, err = self.curl(url.replace("127.0.0.1", "localhost"), "--cacert", pki.ca,
                                     *auth)
        self.assertEqual((rc, code), (0, "200"), err)
        # no token over TLS is still no token
        rc, code, _, _ = self.curl(url, "--cacert", pki.ca)
        self.assertEqual(code, "401")
        # a client that does not trust the agent's CA, and one that speaks plain HTTP
        rc, _, _, err = self.curl(url, "--cacert", pki.other_ca, *auth)
        self.assertEqual(rc, 60, err)  # the peer's certificate was not accepted
        rc, code, _, _ = self.curl(url.replace("https:", "http:"), *auth)
        self.assertNotEqual(code, "200")
        # mutual TLS: only a client with a certificate of the client CA gets in
        self.restart_agent("--to", "glance:" + self.glance.url, *tls,
                           "--tls-client-ca", pki.ca)
        url = "https://127.0.0.1:%d/healthz" % self.agent.port
        rc, code, _, err = self.curl(url, "--cacert", pki.ca, *auth)
        self.assertNotEqual(code, "200")
        self.assertNotEqual(rc, 0)
        rc, code, _, err = self.curl(url, "--cacert", pki.ca, "--cert", pki.client, "--key",
                                     pki.client_key, *auth)
        self.assertEqual((rc, code), (0, "200"), err)
        # the unix socket is as it was
        self.assertEqual(self.agent.request("GET", "/healthz")[0], 200)

    def test_secrets_in_the_clear_are_refused_at_start(self):
        self.agent.stop()
        r = subprocess.run([HOTSNAP, "agent", "--state-dir", self.state, "--socket",
                            self.agent.sock, "--listen", "0.0.0.0:%d" % self.agent.port,
                            "--token-file", self.agent.token_file], capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("in clear", r.stderr)
        self.assertEqual(r.stderr.count("\n"), 1, r.stderr)
        # a transport URL (its password) in a file others may read is refused too
        url_file = os.path.join(self.state, "bus")
        with open(url_file, "w") as f:
            f.write("rabbit://u:secret@127.0.0.1:1/\n")
        os.chmod(url_file, 0o644)
        r = subprocess.run([HOTSNAP, "agent", "--state-dir", self.state, "--socket",
                            self.agent.sock, "--transport-url-file", url_file],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("can be read by anyone", r.stderr)
        self.assertNotIn("secret", r.stderr)

    def test_sigkill_mid_job_then_restart(self):
        g = self.guest("ag-kill").start()
        # the job's convert waits for a gate: it is in extract, the guest
        # saved (off), when the agent is killed, however fast the machine
        self.agent.stop()
        self.agent.env, gate = gated_qemu_img(self.state)
        self.agent.start()
        status, job, _ = self.post({"domain": g.name, "mode": "cold"})
        self.assertEqual(status, 202, job)
        deadline = time.time() + 120
        while not os.path.exists(gate + ".waiting"):
            self.assertLess(time.time(), deadline, "the convert never started")
            time.sleep(0.05)
        self.assertEqual(self.agent.job(job["id"])["state"], "extract")
        self.agent.kill(signal.SIGKILL)
        # left saved (or still being torn down by libvirt): not running
        self.assertNotEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.agent.env = None
        self.agent.start()  # healthy: recovery has run (and ended the held convert)
        j = self.agent.job(job["id"])
        self.assertEqual(j["state"], "failed")
        self.assertIn("the agent stopped while this snapshot was in state 'extract'", j["error"])
        self.assertIn("on restart: ", j["error"])
        self.assertEqual(len(j["recovered"]), 1)
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assertFalse(g.dom.hasManagedSaveImage())
        self.assertEqual(self.images_of(g), [])
        self.assert_nothing_left()

    def test_connections_bounded_slow_clients_dropped_log_reopened(self):
        self.agent.stop()
        self.agent.args += ["--max-connections", "3"]
        self.agent.start()
        held = []
        while len(held) < 3:
            # each answered once, so it is surely counted (a connection a
            # client just closed may still count for a moment: then retry)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(self.agent.sock)
            try:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                if s.recv(4096).startswith(b"HTTP/1.1 200 "):
                    held.append(s)
                    continue
            except (ConnectionResetError, BrokenPipeError):
                pass
            s.close()
            time.sleep(0.1)
        # a request that never finishes its headers holds one of them
        held[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        # a fourth connection is closed at once, unanswered
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(self.agent.sock)
            try:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = s.recv(100)
            except (ConnectionResetError, BrokenPipeError):
                answer = b""  # closed before or as the request came
            self.assertEqual(answer, b"")
        # the slow client is timed out (10 s), and its place is free again
        held[0].settimeout(20)  # socket.timeout if it is never dropped
        t0 = time.time()
        try:
            while held[0].recv(4096):
                pass
        except ConnectionResetError:
            pass
        self.assertGreater(time.time() - t0, 5)  # held until its time was up
        for s in held:
            s.close()
        time.sleep(0.5)
        status, _, _ = self.agent.request("GET", "/healthz")
        self.assertEqual(status, 200)
        _, text, _ = self.agent.request("GET", "/metrics")
        self.assertNotIn("hotsnap_http_connections_refused_total 0\n", text)
        # SIGHUP reopens the log: a rotated log gets a new file
        os.rename(self.agent.log, self.agent.log + ".1")
        self.agent.p.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while not os.path.exists(self.agent.log):
            self.assertLess(time.time(), deadline, "the log was not reopened")
            time.sleep(0.1)
        with open(self.agent.log) as f:
            self.assertIn("log reopened", f.read())
        self.assertEqual(self.agent.p.poll(), None)

    def test_a_reader_that_stops_reading_is_dropped(self):
        self.agent.stop()
        self.agent.args += ["--event-backlog", "16K"]
        self.agent.start()
        g = self.guest("ag-off")  # shut off: a live snapshot of it fails at once
        reader = EventReader(self.agent)
        stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stuck.connect(self.agent.sock)
        stuck.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(stuck.recv(64).startswith(b"HTTP/1.1 200 "))
        try:
            # events until the kernel's socket buffer (~208 KiB) and then the
            # agent's 16 KiB are full: each failed job is about 1.5 KiB of them
            ids, dropped = [], False
            while not dropped:
                self.assertLess(len(ids), 600, "the reader was never dropped")
                for _ in range(20):
                    status, job, _ = self.post({"domain": g.name, "mode": "live"})
                    self.assertEqual(status, 202, job)
                    ids.append(job["id"])
                self.agent.wait_ended(ids[-1])
                _, text, _ = self.agent.request("GET", "/metrics")
                dropped = "hotsnap_event_readers_dropped_total 1\n" in text
            for i in ids:
                self.assertEqual(self.agent.wait_ended(i)["state"], "failed")
            # the reader that reads has every job's end; the one that does not
            # was dropped, and its connection ends once it reads what was sent
            for i in ids:
                reader.wait(lambda e, i=i: e.get("job") == i and e.get("state") == "failed")
            _, text, _ = self.agent.request("GET", "/metrics")
            self.assertIn("hotsnap_event_readers 1\n", text)
            stuck.settimeout(30)
            try:
                while stuck.recv(65536):
                    pass
            except ConnectionResetError:
                pass
            self.assertIn("dropped an event reader", self.agent.read_log())
        finally:
            stuck.close()
            reader.close()

    def test_sigterm_cancels_and_exits(self):
        g = self.guest("ag-term").start()
        events = EventReader(self.agent)
        status, job, _ = self.post({"domain": g.name, "mode": "cold"})
        events.wait(lambda e: e.get("job") == job["id"] and e.get("state") == "extract")
        events.close()
        self.assertEqual(self.agent.kill(signal.SIGTERM), 0)
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assertFalse(os.path.exists(self.agent.sock))
        self.agent.start()
        j = self.agent.job(job["id"])
        self.assertEqual(j["state"], "failed")
        self.assertIn("canceled", j["error"])
        self.assert_nothing_left()


if __name__ == "__main__":
    unittest.main()
