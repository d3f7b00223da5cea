"""hotsnap agent: a real agent process on a unix socket and on TCP, driven over
HTTP as a control plane would, against the real libvirtd, QEMU guests and the
local Glance."""
import json
import os
import signal
import socket
import threading
import time
import unittest

import libvirt

from hsfix import (TOKEN, Agent, GlanceGuestTestCase, UnixHTTPConnection, gated_qemu_img,
                   job_active)

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
            self.assertEqual(job["request"]["target"], "glance:" + self.glance.url)
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
