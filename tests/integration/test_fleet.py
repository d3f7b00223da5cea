"""The agent on the control plane's bus: two real agents serve oslo.messaging
RPC on a real RabbitMQ, driven by oslo.messaging's own RPCClient and heard by
its NotificationListener, as Nova drives its compute hosts; real libvirtd,
QEMU guests and the local Glance."""
import json
import os
import signal
import threading
import time
import unittest

import libvirt

from hsfix import Agent, GlanceGuestTestCase, RabbitServer, TestPKI, gated_qemu_img

import oslo_messaging as om  # noqa: E402 (after hsfix: it sets up nothing of oslo's)
from oslo_config import cfg  # noqa: E402

# oslo.messaging's metrics collector is set up once, from the global CONF
CONF = cfg.CONF
CONF([], project="hstest")


class Notifications:
    """A NotificationListener on the notifications topic, on its own thread."""

    def __init__(self, url):
        self.events = []
        self.lock = threading.Lock()
        outer = self

        class Endpoint:
            def info(self, ctxt, publisher_id, event_type, payload, metadata):
                with outer.lock:
                    outer.events.append(("info", publisher_id, event_type, payload))

            def error(self, ctxt, publisher_id, event_type, payload, metadata):
                with outer.lock:
                    outer.events.append(("error", publisher_id, event_type, payload))

        self.transport = om.get_notification_transport(CONF, url=url)
        self.listener = om.get_notification_listener(
            self.transport, [om.Target(topic="notifications")], [Endpoint()],
            executor="threading")
        self.listener.start()

    def wait(self, pred, timeout=240):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                for ev in self.events:
                    if pred(ev):
                        return ev
            time.sleep(0.2)
        raise AssertionError("no such notification; got %s" % [e[:3] for e in self.events])

    def close(self):
        self.listener.stop()
        self.listener.wait()
        self.transport.cleanup()


class FleetTest(GlanceGuestTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.rabbit = RabbitServer()

    @classmethod
    def tearDownClass(cls):
        cls.rabbit.close()
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        url_file = os.path.join(self.state, "transport-url")
        with open(url_file, "w") as f:
            f.write(self.rabbit.url + "\n")
        os.chmod(url_file, 0o600)
        self.agents = {}
        for name in ("host-a", "host-b"):
            state = os.path.join(self.state, name)
            os.makedirs(state)
            self.agents[name] = Agent(state, "--to", "glance:" + self.glance.url,
                                      "--transport-url-file", url_file, "--rpc-server", name)
        self.notes = self.transport = None
        try:
            self.notes = Notifications(self.rabbit.url)
            self.transport = om.get_rpc_transport(CONF, url=self.rabbit.url)
            self.client = om.get_rpc_client(self.transport, om.Target(topic="hotsnap"),
                                            timeout=60)
            for name in self.agents:  # each has its queues before a test casts to it
                self.wait_served(name)
        except BaseException:
            self.tearDown()
            raise

    def tearDown(self):
        self.rabbit.start()  # back, if a test stopped it (no-op when running)
        if self.notes:
            self.notes.close()
        if self.transport:
            self.transport.cleanup()
        for a in self.agents.values():
            a.stop()
        super().tearDown()

    def rpc(self, server, method, **kw):
        return self.client.prepare(server=server).call({}, method, **kw)

    def wait_served(self, server, timeout=60):
        deadline = time.time() + timeout
        while True:
            try:
                return self.rpc(server, "list")
            except om.MessagingTimeout:
                if time.time() > deadline:
                    raise

    def wait_job(self, server, job_id, pred, timeout=240):
        deadline = time.time() + timeout
        while time.time() < deadline:
            j = self.rpc(server, "get", id=job_id)
            if pred(j):
                return j
            time.sleep(0.3)
        raise AssertionError("job %s never met the condition; last %s" % (job_id, j))

    def ended(self, server, job_id):
        return self.wait_job(server, job_id, lambda j: j["state"] in ("done", "failed"))

    def test_call_reaches_the_right_agent(self):
        ga, gb = self.guest("fl-a").start(), self.guest("fl-b").start()
        job = self.rpc("host-a", "snapshot", domain=ga.name, target=None, mode=None,
                       quiesce=None, format=None, compress=None, name=None, image_id=None,
                       priority=None, idempotency_key=None)
        self.assertEqual(job["domain"], ga.name)
        self.assertIn(job["state"], ("queued", "inspect", "prepare", "capture"))
        # host-a runs it; host-b knows nothing of it
        with self.assertRaises(om.RemoteError) as e:
            self.rpc("host-b", "get", id=job["id"])
        self.assertEqual(e.exception.exc_type, "NotFound")
        j = self.ended("host-a", job["id"])
        self.assertEqual(j["state"], "done", j.get("error"))
        img = j["images"][0]
        self.assert_in_glance(img, ga.disks[0].path)
        # the start and the end were published, by host-a
        start = self.notes.wait(lambda e: e[2] == "hotsnap.snapshot.start" and
                                e[3]["id"] == job["id"])
        self.assertEqual(start[1], "hotsnap.host-a")
        end = self.notes.wait(lambda e: e[2] == "hotsnap.snapshot.end" and
                              e[3]["id"] == job["id"])
        self.assertEqual(end[0], "info")
        self.assertEqual(end[3]["images"][0]["id"], img["id"])
        # and a second agent serves its own guest the same way
        jb = self.rpc("host-b", "snapshot", domain=gb.name)
        self.assertEqual(self.ended("host-b", jb["id"])["state"], "done")
        self.assertEqual([x["id"] for x in self.rpc("host-b", "list")], [jb["id"]])
        self.assertEqual([x["id"] for x in self.rpc("host-a", "list")], [job["id"]])
        self.assertIn(ga.name, [d["name"] for d in self.rpc("host-a", "domains")])

    def test_cast_errors_and_cancel(self):
        g = self.guest("fl-cast").start()
        self.client.prepare(server="host-a").cast({}, "snapshot", domain=g.name, mode="cold")
        deadline = time.time() + 60
        while not self.rpc("host-a", "list", domain=g.name):
            self.assertLess(time.time(), deadline, "the cast started no job")
            time.sleep(0.1)
        job = self.rpc("host-a", "list", domain=g.name)[0]
        # a call to an unknown method and one with a bad argument fail in the
        # client with the agent's message, and start nothing
        with self.assertRaises(om.RemoteError) as e:
            self.rpc("host-a", "resize", id=job["id"])
        self.assertIn("unknown method 'resize'", e.exception.value)
        with self.assertRaises(om.RemoteError) as e:
            self.rpc("host-a", "snapshot", domain=g.name, format="vmdk")
        self.assertIn("field 'format'", e.exception.value)
        with self.assertRaises(om.RemoteError) as e:
            self.rpc("host-a", "snapshot", domain=g.name, colour="red")
        self.assertIn("unknown field 'colour'", e.exception.value)
        with self.assertRaises(om.RemoteError) as e:
            self.rpc("host-a", "get")
        self.assertIn("needs an argument 'id'", e.exception.value)
        # a target is named, never given: no URL of a message's reaches the token
        for target in ("glance:http://127.0.0.1:9/x", "dir:/etc", "nosuch"):
            with self.assertRaises(om.RemoteError) as e:
                self.rpc("host-a", "snapshot", domain=g.name, target=target)
            self.assertEqual(e.exception.exc_type, "BadRequest")
            self.assertIn("field 'target'", e.exception.value)
        self.assertEqual([t["name"] for t in self.rpc("host-a", "targets")], ["default"])
        # a prune names a configured dir: store
        for kw, (kind, words) in (({}, ("BadRequest", "needs an argument 'target'")),
                                  ({"target": "nosuch", "keep_last": 1}, ("NotFound", "nosuch")),
                                  ({"target": "default", "keep_last": 1},
                                   ("BadRequest", "is a Glance")),
                                  ({"target": "default"}, ("BadRequest", "needs keep_last"))):
            with self.assertRaises(om.RemoteError) as e:
                self.rpc("host-a", "prune", **kw)
            self.assertEqual(e.exception.exc_type, kind, e.exception.value)
            self.assertIn(words, e.exception.value)
        self.assertEqual(len(self.rpc("host-a", "list", domain=g.name)), 1)
        # cancel it while it runs: the guest as it was
        self.wait_job("host-a", job["id"], lambda j: j["state"] in ("capture", "extract",
                                                                     "upload", "done",
                                                                     "failed"))
        c = self.rpc("host-a", "cancel", id=job["id"])
        self.assertTrue(c["cancel_requested"])
        j = self.ended("host-a", job["id"])
        self.assertEqual(j["state"], "failed")
        self.assertIn("canceled", j["error"])
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        self.assertFalse(g.dom.hasManagedSaveImage())
        self.assertEqual(self.images_of(g), [])
        err = self.notes.wait(lambda e: e[2] == "hotsnap.snapshot.error" and
                              e[3]["id"] == job["id"])
        self.assertEqual(err[0], "error")

    def test_broker_restart_during_a_job(self):
        g = self.guest("fl-restart").start()
        job = self.rpc("host-a", "snapshot", domain=g.name, mode="cold")
        self.rabbit.stop()
        a = self.agents["host-a"]
        # the job goes on without the broker, to its end
        deadline = time.time() + 240
        while True:
            j = a.job(job["id"])
            if j["state"] in ("done", "failed"):
                break
            self.assertLess(time.time(), deadline)
            time.sleep(0.3)
        self.assertEqual(j["state"], "done", j.get("error"))
        outbox = os.path.join(a.state, "agent", "outbox.jsonl")
        with open(outbox) as f:
            kept = [json.loads(line) for line in f]
        self.assertTrue(any(job["id"] in k.get("body", "") and "snapshot.end" in k["body"]
                            for k in kept), kept)
        inode = os.stat(outbox).st_ino
        self.rabbit.start()
        # the end notification arrives once the broker is back, and leaves the outbox
        end = self.notes.wait(lambda e: e[2] == "hotsnap.snapshot.end" and
                              e[3]["id"] == job["id"])
        self.assertEqual(end[3]["images"][0]["id"], j["images"][0]["id"])
        deadline = time.time() + 60
        while os.path.getsize(outbox):
            self.assertLess(time.time(), deadline, "the outbox was never emptied")
            time.sleep(0.2)
        # a confirm is a line, or the emptying of the file: never a rewrite of it
        self.assertEqual(os.stat(outbox).st_ino, inode)
        # the agent serves again, and counts the reconnect
        self.wait_served("host-a")
        _, text, _ = a.request("GET", "/metrics")
        self.assertIn("hotsnap_bus_connected 1\n", text)
        self.assertIn("hotsnap_bus_reconnects_total 1\n", text)
        # a request delivered twice starts one job
        self.publish_twice("hotsnap.host-a", {"method": "snapshot",
                                              "args": {"domain": g.name},
                                              "_unique_id": "5e1f0c4b9d0d4f7a8a2b7c1d0e9f8a7b"})
        deadline = time.time() + 60
        while len(self.rpc("host-a", "list", domain=g.name)) < 2:
            self.assertLess(time.time(), deadline, "the request started no job")
            time.sleep(0.2)
        # both deliveries acked (a snapshot's only once it is accepted and
        # in the history): the second has been handled too
        while True:
            out = self.rabbit.ctl("list_queues", "-q", "--no-table-headers", "name",
                                  "messages_ready", "messages_unacknowledged").stdout
            row = [l.split() for l in out.splitlines() if l.split()[:1] == ["hotsnap.host-a"]]
            if row and row[0][1:] == ["0", "0"]:
                break
            self.assertLess(time.time(), deadline, "the deliveries were never acked: %s" % out)
            time.sleep(0.2)
        jobs = self.rpc("host-a", "list", domain=g.name)
        self.assertEqual(len(jobs), 2, jobs)  # the first job and one more, not two
        self.ended("host-a", jobs[0]["id"])

    def test_a_killed_agents_job_gets_its_error(self):
        # every job that had its start gets one end: killed mid-job (held in
        # extract), the agent's next start fails the job and says so on the bus
        g = self.guest("fl-killed").start()
        a = self.agents["host-a"]
        a.stop()
        a.env, gate = gated_qemu_img(a.state)
        a.start()
        self.wait_served("host-a")
        job = self.rpc("host-a", "snapshot", domain=g.name, mode="cold")
        self.notes.wait(lambda e: e[2] == "hotsnap.snapshot.start" and e[3]["id"] == job["id"])
        deadline = time.time() + 120
        while not os.path.exists(gate + ".waiting"):
            self.assertLess(time.time(), deadline, "the convert never started")
            time.sleep(0.05)
        a.kill()
        a.env = None
        a.start()
        err = self.notes.wait(lambda e: e[2] == "hotsnap.snapshot.error" and
                              e[3]["id"] == job["id"])
        self.assertEqual(err[0], "error")
        self.assertIn("the agent stopped while this snapshot was in state 'extract'",
                      err[3]["error"])
        self.assertEqual(g.state(), libvirt.VIR_DOMAIN_RUNNING)
        # exactly one end for it
        ends = [e for e in self.notes.events if e[3].get("id") == job["id"] and
                e[2] in ("hotsnap.snapshot.end", "hotsnap.snapshot.error")]
        self.assertEqual(len(ends), 1, ends)

    def test_a_cast_that_comes_while_the_agent_stops_is_not_lost(self):
        g1, g2 = self.guest("fl-stop-1").start(), self.guest("fl-stop-2").start()
        a = self.agents["host-a"]
        first = self.rpc("host-a", "snapshot", domain=g1.name, mode="cold")
        self.wait_job("host-a", first["id"], lambda j: j["state"] in ("capture", "extract"))
        a.p.send_signal(signal.SIGTERM)  # it cancels, restores, and goes
        deadline = time.time() + 60
        while "and stopping" not in a.read_log():
            self.assertLess(time.time(), deadline)
            time.sleep(0.05)
        self.client.prepare(server="host-a").cast({}, "snapshot", domain=g2.name)
        self.assertEqual(a.p.wait(timeout=120), 0)
        a.p.stderr.close()
        a.start()
        deadline = time.time() + 120
        while not self.rpc("host-a", "list", domain=g2.name):
            self.assertLess(time.time(), deadline, "the cast was lost with the agent's stop")
            time.sleep(0.2)
        [j] = self.rpc("host-a", "list", domain=g2.name)
        self.assertEqual(self.ended("host-a", j["id"])["state"], "done")
        self.assertEqual(g1.state(), libvirt.VIR_DOMAIN_RUNNING)

    def publish_twice(self, routing_key, msg):
        """The same oslo.messaging cast delivered twice, as a redelivery would be."""
        import kombu
        body = {"oslo.version": "2.0", "oslo.message": json.dumps(msg)}
        with kombu.Connection(self.rabbit.url.replace("rabbit://", "amqp://")) as conn:
            ex = kombu.Exchange("openstack", type="topic", durable=False)
            producer = conn.Producer(serializer="json")
            for _ in range(2):
                producer.publish(body, exchange=ex, routing_key=routing_key)


class FleetTLSTest(GlanceGuestTestCase):
    """The bus over TLS: a RabbitMQ with a TLS listener alone that asks for
    client certificates, the agent and oslo.messaging both configured by the
    same transport URL, in oslo.messaging's terms."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        import tempfile
        cls.pki_dir = tempfile.mkdtemp(prefix="hstest-pki-")
        # the broker's certificate names localhost only: 127.0.0.1 is not its name
        cls.pki = TestPKI(cls.pki_dir, server_san="DNS:localhost")
        cls.rabbit = RabbitServer(pki=cls.pki)

    @classmethod
    def tearDownClass(cls):
        cls.rabbit.close()
        import shutil
        shutil.rmtree(cls.pki_dir, ignore_errors=True)
        super().tearDownClass()

    def agent_with(self, name, url):
        state = os.path.join(self.state, name)
        os.makedirs(state)
        url_file = os.path.join(state, "transport-url")
        with open(url_file, "w") as f:
            f.write(url + "\n")
        os.chmod(url_file, 0o600)
        a = Agent(state, "--to", "glance:" + self.glance.url, "--transport-url-file", url_file,
                  "--rpc-server", name)
        self.addCleanup(a.stop)
        return a

    def wait_log(self, agent, words, timeout=60):
        deadline = time.time() + timeout
        while words not in agent.read_log():
            self.assertLess(time.time(), deadline, "never logged %r: %s" % (words,
                                                                           agent.read_log()))
            time.sleep(0.2)

    def test_rpc_and_notifications_over_tls(self):
        g = self.guest("fl-tls").start()
        a = self.agent_with("host-tls", self.rabbit.url)
        notes = Notifications(self.rabbit.url)
        transport = om.get_rpc_transport(CONF, url=self.rabbit.url)
        try:
            client = om.get_rpc_client(transport, om.Target(topic="hotsnap"), timeout=60)
            deadline = time.time() + 60
            while True:
                try:
                    client.prepare(server="host-tls").call({}, "list")
                    break
                except om.MessagingTimeout:
                    self.assertLess(time.time(), deadline)
            job = client.prepare(server="host-tls").call({}, "snapshot", domain=g.name)
            end = notes.wait(lambda e: e[2] == "hotsnap.snapshot.end" and e[3]["id"] == job["id"])
            self.assertEqual(end[3]["state"], "done", end[3].get("error"))
            self.assert_in_glance(end[3]["images"][0], g.disks[0].path)
            self.assertIn("over TLS", a.read_log())
        finally:
            notes.close()
            transport.cleanup()
        base = self.rabbit.url.split("?")[0]
        query = self.rabbit.url.split("?")[1]
        # the broker's name is checked: by its address it is not the certificate's
        b = self.agent_with("host-ip", self.rabbit.url.replace("localhost", "127.0.0.1"))
        self.wait_log(b, "amqp: not connected")
        # a broker whose CA is not the one given is not trusted
        c = self.agent_with("host-ca", self.rabbit.url.replace(self.pki.ca, self.pki.other_ca))
        self.wait_log(c, "verification failed")
        # and a client without a certificate is turned away by the broker
        no_cert = "&".join(o for o in query.split("&") if not o.startswith(("ssl_cert", "ssl_key")))
        d = self.agent_with("host-nocert", base + "?" + no_cert)
        self.wait_log(d, "amqp: not connected")
        # plain AMQP to a TLS listener goes nowhere either
        e = self.agent_with("host-plain", base)
        self.wait_log(e, "amqp: not connected")
        for x in (b, c, d, e):
            _, text, _ = x.request("GET", "/metrics")
            self.assertIn("hotsnap_bus_connected 0\n", text)
            self.assertNotIn("guest:guest", x.read_log())


if __name__ == "__main__":
    unittest.main()
