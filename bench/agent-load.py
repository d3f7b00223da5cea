#!/usr/bin/python3
"""The agent under a control plane's load: RATE requests a second for SECONDS.

A `hotsnap agent` (TCP with a token, and its unix socket) serves a steady mix
over keep-alive connections: job lists and lookups, health and metrics, invalid
snapshot requests, event streams opened and dropped, and a few event readers
that never read. Meanwhile two idle test guests are snapshotted into a dir:
store, one job every 3 s, so events flow. Side by side in one run, the same
agent idle for the same time (the baseline). Reported: the agent's RSS over
time, its loop lateness (p50, p99, worst, from /metrics), the clients' latency,
the rate reached, answers by status, readers dropped.

usage: bench/agent-load.py [RATE] [SECONDS]   (as root; prints Markdown)
"""
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
os.environ.setdefault("HOTSNAP", os.path.join(HERE, "..", "build", "hotsnap"))

import hsfix  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
CONNS = 16


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


class Agent:
    def __init__(self, state):
        self.state = state
        self.port = hsfix.free_port()
        tok = os.path.join(state, "token")
        with open(tok, "w") as f:
            f.write(TOKEN)
        os.chmod(tok, 0o600)
        self.p = subprocess.Popen(
            [hsfix.HOTSNAP, "agent", "--state-dir", state, "--socket",
             os.path.join(state, "agent.sock"), "--listen", "127.0.0.1:%d" % self.port,
             "--token-file", tok, "--to", "dir:" + os.path.join(state, "store"),
             "--log", os.path.join(state, "agent.log")])
        for _ in range(600):
            try:
                if asyncio.run(self.once("GET", "/healthz"))[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the agent did not come up")

    async def once(self, method, path, body=b""):
        r, w = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            return await request(r, w, method, path, body)
        finally:
            w.close()

    def metrics(self):
        _, text = asyncio.run(self.once("GET", "/metrics"))
        out = {}
        for line in text.decode().splitlines():
            if line.startswith("hotsnap_loop_lateness_seconds{"):
                q = line.split('"')[1]
                out[q] = float(line.split()[-1]) * 1000
            if line.startswith("hotsnap_event_readers_dropped_total"):
                out["dropped"] = int(float(line.split()[-1]))
        return out

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(timeout=120)


async def request(r, w, method, path, body=b""):
    w.write(("%s %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
             "Content-Length: %d\r\n\r\n" % (method, path, TOKEN, len(body))).encode() + body)
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    data = await r.readexactly(length) if length else b""
    return status, data


async def event_stream_dropped(port):
    """Open /v1/events, read its first chunk, hang up."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(("GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
             % TOKEN).encode())
    await w.drain()
    await r.readuntil(b"\r\n\r\n")
    await r.read(256)
    w.close()
    return 200


async def load(agent, rate, seconds, job_ids, guests):
    lat, statuses, sent = [], {}, [0]
    queue = asyncio.Queue(maxsize=rate)
    rnd = random.Random(7)
    bad_bodies = [b"not json", b'{"domain": 1}', b'{"domain": "x", "colour": "red"}',
                  b'{"domain": "x", "mode": "warp"}', b"[]"]

    def pick():
        x = rnd.random()
        if x < 0.40:
            return ("GET", "/v1/snapshots?limit=20", b"")
        if x < 0.60:
            jid = rnd.choice(job_ids) if job_ids and rnd.random() < 0.7 else "no-such-job"
            return ("GET", "/v1/snapshots/" + jid, b"")
        if x < 0.75:
            return ("GET", "/healthz", b"")
        if x < 0.80:
            return ("GET", "/metrics", b"")
        if x < 0.95:
            return ("POST", "/v1/snapshots", rnd.choice(bad_bodies))
        return ("EVENTS", None, None)

    async def worker():
        r, w = await asyncio.open_connection("127.0.0.1", agent.port)
        while True:
            item = await queue.get()
            if item is None:
                w.close()
                return
            method, path, body = item
            t0 = time.perf_counter()
            try:
                if method == "EVENTS":
                    st = await event_stream_dropped(agent.port)
                else:
                    st, _ = await request(r, w, method, path, body)
            except Exception as e:  # noqa: BLE001 (any failure is counted, the worker goes on)
                st = "error:" + type(e).__name__
                w.close()
                r, w = await asyncio.open_connection("127.0.0.1", agent.port)
            lat.append((time.perf_counter() - t0) * 1000)
            statuses[st] = statuses.get(st, 0) + 1

    async def snapshots():
        i = 0
        while True:
            await asyncio.sleep(3)
            st, body = await agent.once("POST", "/v1/snapshots", json.dumps(
                {"domain": guests[i % len(guests)].name}).encode())
            if st == 202:
                job_ids.append(json.loads(body)["id"])
            i += 1

    async def stuck_readers():
        """Readers that never read: the agent must drop them, not buffer for them."""
        conns = []
        for _ in range(3):
            r, w = await asyncio.open_connection("127.0.0.1", agent.port, limit=1024)
            w.transport.pause_reading()
            w.write(("GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
                     % TOKEN).encode())
            conns.append(w)
        return conns

    workers = [asyncio.create_task(worker()) for _ in range(CONNS)]
    snap = asyncio.create_task(snapshots())
    stuck = await stuck_readers()
    rss = []
    t0 = time.perf_counter()
    next_rss = 0
    while True:
        now = time.perf_counter() - t0
        if now >= seconds:
            break
        if now >= next_rss:
            rss.append((round(now), rss_kib(agent.p.pid)))
            next_rss += 10
        due = int(now * rate)
        while sent[0] < due:
            await queue.put(pick())
            sent[0] += 1
        await asyncio.sleep(0.002)
    rss.append((seconds, rss_kib(agent.p.pid)))
    for _ in workers:
        await queue.put(None)
    await asyncio.gather(*workers)
    snap.cancel()
    for w in stuck:
        w.close()
    return lat, statuses, rss, sent[0] / (time.perf_counter() - t0)


def main():
    rate = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    hsfix.ensure_libvirtd()
    c = hsfix.conn()
    hsfix.sweep(c)
    guests = [hsfix.Guest(c, "load-%d" % i).start() for i in range(2)]
    try:
        # the baseline: the same agent, idle for as long
        state = tempfile.mkdtemp(prefix="hsbench-agent-")
        agent = Agent(state)
        rss0 = rss_kib(agent.p.pid)
        time.sleep(seconds)
        idle = agent.metrics()
        idle_rss = rss_kib(agent.p.pid)
        agent.stop()
        shutil.rmtree(state)

        state = tempfile.mkdtemp(prefix="hsbench-agent-")
        agent = Agent(state)
        job_ids = []
        lat, statuses, rss, reached = asyncio.run(load(agent, rate, seconds, job_ids, guests))
        busy = agent.metrics()
        agent.stop()
        shutil.rmtree(state)
    finally:
        for g in guests:
            g.remove()
        hsfix.sweep(c)
    lat.sort()
    q = statistics.quantiles(lat, n=100)
    print("## The agent under load (`bench/agent-load.py %d %d`)\n" % (rate, seconds))
    print("| | idle agent | agent under load |")
    print("| --- | ---: | ---: |")
    print("| requests a second | 0 | %.0f |" % reached)
    print("| RSS at start, end (MiB) | %.1f, %.1f | %.1f, %.1f |" % (
        rss0 / 1024, idle_rss / 1024, rss[0][1] / 1024, rss[-1][1] / 1024))
    print("| loop lateness p50 / p99 / worst (ms) | %.2f / %.2f / %.1f | %.2f / %.2f / %.1f |" % (
        idle["0.5"], idle["0.99"], idle["1"], busy["0.5"], busy["0.99"], busy["1"]))
    print("| client latency p50 / p99 (ms) | - | %.2f / %.2f |" % (q[49], q[98]))
    print("| snapshot jobs during the run | 0 | %d |" % len(job_ids))
    print("| event readers dropped (of 3 that never read) | - | %d |" % busy.get("dropped", 0))
    print()
    print("RSS every 10 s under load (MiB): " +
          ", ".join("%d s: %.1f" % (t, k / 1024) for t, k in rss))
    print()
    print("Answers: " + ", ".join("%s: %d" % (k, v) for k, v in sorted(
        statuses.items(), key=lambda kv: str(kv[0]))))


if __name__ == "__main__":
    main()
