#!/usr/bin/python3
"""The agent on the bus: how many requests a second one agent accepts through
RabbitMQ (oslo.messaging `call` of `get`), and how long from a `cast` of
`snapshot` to the job starting (its start notification heard by an
oslo.messaging NotificationListener). Side by side, in the same run, the same
requests over the agent's HTTP API on its unix socket (GET of the job; POST
answered 202). A private RabbitMQ on this host, two idle test guests
snapshotted into a dir: store.

usage: bench/bus.py [SECONDS] [CASTS]   (as root; prints Markdown)
"""
import json
import os
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
os.environ.setdefault("HOTSNAP", os.path.join(HERE, "..", "build", "hotsnap"))

import hsfix  # noqa: E402
import oslo_messaging as om  # noqa: E402
from oslo_config import cfg  # noqa: E402

cfg.CONF([], project="hsbench")


def rate(fn, seconds, threads):
    """Calls a second of fn() from `threads` threads, and latency p50/p99 (ms)."""
    lat, stop = [], time.time() + seconds
    lock = threading.Lock()

    def run():
        mine = []
        while time.time() < stop:
            t0 = time.perf_counter()
            fn()
            mine.append((time.perf_counter() - t0) * 1000)
        with lock:
            lat.extend(mine)

    ts = [threading.Thread(target=run) for _ in range(threads)]
    t0 = time.time()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    q = statistics.quantiles(lat, n=100)
    return len(lat) / (time.time() - t0), q[49], q[98]


def main():
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    casts = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    hsfix.ensure_libvirtd()
    c = hsfix.conn()
    hsfix.sweep(c)
    rabbit = hsfix.RabbitServer()
    state = tempfile.mkdtemp(prefix="hsbench-bus-")
    guests = [hsfix.Guest(c, "bus-%d" % i).start() for i in range(2)]
    url_file = os.path.join(state, "url")
    with open(url_file, "w") as f:
        f.write(rabbit.url)
    agent = hsfix.Agent(state, "--to", "dir:" + os.path.join(state, "store"),
                        "--transport-url-file", url_file, "--rpc-server", "bench")
    starts = {}
    lock = threading.Lock()

    class Endpoint:
        def info(self, ctxt, publisher_id, event_type, payload, metadata):
            if event_type == "hotsnap.snapshot.start":
                with lock:
                    starts[payload["domain"] + payload["id"]] = time.perf_counter()

    ntrans = om.get_notification_transport(cfg.CONF, url=rabbit.url)
    listener = om.get_notification_listener(ntrans, [om.Target(topic="notifications")],
                                            [Endpoint()], executor="threading")
    listener.start()
    transport = om.get_rpc_transport(cfg.CONF, url=rabbit.url)
    client = om.get_rpc_client(transport, om.Target(topic="hotsnap"), timeout=60)
    cc = client.prepare(server="bench")
    try:
        job = cc.call({}, "snapshot", domain=guests[0].name)
        jid = job["id"]
        results = {}
        for threads in (1, 8):
            results[("bus", threads)] = rate(lambda: cc.call({}, "get", id=jid), seconds,
                                             threads)
            results[("http", threads)] = rate(lambda: agent.job(jid), seconds, threads)
        # cast -> start notification, and POST -> 202, alternating
        cast_ms, post_ms = [], []
        for i in range(casts):
            g = guests[i % 2]
            while cc.call({}, "list", state="running", domain=g.name):
                time.sleep(0.2)
            with lock:
                before = set(starts)
            t0 = time.perf_counter()
            cc.cast({}, "snapshot", domain=g.name)
            while True:
                with lock:
                    new = [k for k in starts if k not in before]
                if new:
                    cast_ms.append((starts[new[0]] - t0) * 1000)
                    break
                time.sleep(0.001)
            while cc.call({}, "list", state="running", domain=g.name):
                time.sleep(0.2)
            t0 = time.perf_counter()
            status, _, _ = agent.request("POST", "/v1/snapshots", {"domain": g.name})
            post_ms.append((time.perf_counter() - t0) * 1000)
            assert status == 202
    finally:
        listener.stop()
        listener.wait()
        ntrans.cleanup()
        transport.cleanup()
        agent.stop()
        for g in guests:
            g.remove()
        rabbit.close()
        hsfix.sweep(c)
    print("## The agent on the bus (`bench/bus.py %d %d`)\n" % (seconds, casts))
    print("| request | callers | through RabbitMQ (oslo `call`) | through HTTP (unix socket) |")
    print("| --- | ---: | ---: | ---: |")
    for threads in (1, 8):
        b, h = results[("bus", threads)], results[("http", threads)]
        print("| `get` of a job: requests/s, p50 / p99 ms | %d | %.0f, %.1f / %.1f | "
              "%.0f, %.1f / %.1f |" % (threads, b[0], b[1], b[2], h[0], h[1], h[2]))
    print("| snapshot: `cast` to start notification, POST to 202 (median, worst ms) | 1 | "
          "%.1f, %.1f | %.1f, %.1f |" % (statistics.median(cast_ms), max(cast_ms),
                                         statistics.median(post_ms), max(post_ms)))
    print("\n%d casts and %d POSTs, alternating; every figure from this one run." %
          (casts, casts))


if __name__ == "__main__":
    main()
