"""The live path: a worker's event -> the ingester -> the web process -> 1,000 websocket clients.

    python -m bench.live                 (1,000 clients, 200 nodes, 20 s; about 1-2 minutes)
    python -m bench.live --quick         (200 clients, 50 nodes, 8 s)

It starts what it needs (a throwaway PostgreSQL and Redis, the web server, the ingester and the
reconciler; no Celery workers: the nodes and the worker are simulated here) and stops all of it
at the end, also on Ctrl-C or an error. Then:

1. Baseline: one websocket client on /ws/cluster/ (as a staff user), no nodes; a simulated
   worker sends progress events for a few running jobs (each carries its send time).
2. Loaded: --clients websocket clients (in --client-procs processes), --nodes simulated nodes
   heartbeating at --hz each (the format workers/agent.py sends), the same progress events.

Latency = a client's clock when it has received and parsed the frame carrying a progress event,
minus the event's send time, over every client and every event (so the fan-out is in it).
Also: deliveries expected vs received, frames and node.health deltas per second per client, the
web process's CPU and memory, the ingester's CPU, and the client processes' own CPU and
event-loop lag (to show they are not the bottleneck).

Target (from the issue): p99 < 100 ms with 1,000 clients and 200 nodes at 1 Hz. `--strict`
exits 1 when it is missed; otherwise a completed run exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import multiprocessing
import os
import platform
import random
import re
import resource
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bench.run import (
    TUNING,
    begin,
    cpu_delta,
    cpu_seconds,
    guarded,
    log,
    ms,
    percentile,
    start_portal,
    stop_all,
    verdict,
    wait_until,
)
from portal.cluster import Cluster, free_port
from tests.services import PostgresServer, RedisServer

P99_TARGET_MS = 100.0  # 1,000 clients, 200 nodes; and at most the raw peer's p99
BASE_P99_TARGET_MS = 50.0  # one client
# The web processes together, under load, as the sum of their PSS: RSS counts each page
# they share (the launcher preloads Django and forks them) once in every process.
MEMORY_TARGET_MB = 250.0
PEER_GROUP, PEER_PREFIX = "bench", "peer"  # the raw peer's group and channel-layer prefix
SWEEP_CLIENTS = (100, 300, 1000, 3000)  # at SWEEP_NODES[1] nodes
SWEEP_NODES = (50, 200, 1000)  # at SWEEP_CLIENTS[2] clients
DELIVERED_TARGET = 0.99  # of the deliveries the server broadcast; below it the latency lies
CORES = 32  # per simulated node: the per-core list is most of a heartbeat's size
QUEUES = ["cpu", "etl", "train", "gpu"]
BENCH_MSG = re.compile(r"bench (\d+) ")
BENCH_MSG_BYTES = re.compile(rb"bench (\d+) ")
HEAD = re.compile(rb'"stream"\s*:\s*"([^"]*)"\s*,\s*"seq"\s*:\s*(\d+)')
# Portal settings read from the environment that change what is measured; shown when set.
LIVE_TUNING = (*TUNING, "WEB_PROCESSES", "LIVE_COALESCE_S", "LIVE_CLUSTER_COALESCE_S",
               "LIVE_NODE_DELTA", "LIVE_NODE_REFRESH_S", "NODE_OFFLINE_S", "LEASE_S")


def raise_nofile() -> int:
    """Up to the hard limit: a thousand sockets on each side."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


def machine_cpu() -> dict[str, float]:
    """CPU seconds the whole machine spent busy (all cores), and those the hypervisor took."""
    import psutil

    times = psutil.cpu_times()
    steal = getattr(times, "steal", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return {"busy": sum(times) - idle - steal, "steal": steal}


def tree(pid: int) -> list:
    """A process and its descendants (the web server's launcher and its processes)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def smaps_rollup(pid: int) -> dict[str, int] | None:
    """/proc/<pid>/smaps_rollup in bytes (None where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return {line.split(":")[0]: int(line.split()[1]) * 1024
                    for line in f if line.rstrip().endswith(" kB")}
    except (OSError, ValueError, IndexError):
        return None


def tree_memory(pid: int) -> tuple[float, float, float]:
    """RSS, PSS and USS in MB, summed over a process and its descendants. RSS counts a page that
    several of them share (libraries, and what a forked child still shares with its parent)
    once in each; PSS shares each page out among the processes that map it, so the sum is what
    they take together; USS is what each has alone (what would be freed if it went)."""
    import psutil

    rss = pss = uss = 0.0
    procs = tree(pid)
    for proc in procs:
        rollup = smaps_rollup(proc.pid)
        if rollup is not None:
            rss += rollup.get("Rss", 0)
            pss += rollup.get("Pss", 0)
            uss += rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)
            continue
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        uss += getattr(info, "uss", info.rss)
    mb = 2**20
    return (rss / mb, pss / mb, uss / mb) if procs else (math.nan, math.nan, math.nan)


def web_processes(pid: int) -> int:
    """Serving processes: the launcher's children, or the one process when it serves itself."""
    procs = tree(pid)
    return max(1, len(procs) - 1) if procs else 0


# --- the websocket clients (in child processes) ----------------------------------------------


class ClientSet:
    """`count` websocket clients in one asyncio loop; commands come over a multiprocessing Pipe:
    ("start",) / ("stop",) bracket the counted window, ("report",) sends what was seen,
    ("close",) closes every connection and ends the process."""

    def __init__(self, conn, url: str, key: str, count: int, concurrency: int, first: int):
        self.conn = conn
        self.url, self.key = url, key
        self.count, self.concurrency, self.first = count, concurrency, first
        self.sockets: dict[int, object] = {}
        self.failures: Counter = Counter()
        self.handshakes: list[float] = []
        self.closed: Counter = Counter()  # connections the server closed, by reason
        self.closing = False
        # (client, bench seq, arrival time) for each progress event received, all the time.
        self.arrivals: list[tuple[int, int, float]] = []
        # Counted between "start" and "stop" only.
        self.measuring = False
        self.window = [0.0, 0.0]
        self.cpu = [0.0, 0.0]
        self.frames: Counter = Counter()  # by stream
        self.bytes: Counter = Counter()
        self.health = 0  # node.health events received (all clients)
        self.lag: list[float] = []  # event-loop lag samples, seconds
        self.last_seq: dict[tuple[int, str], int] = {}
        self.gaps = 0  # frames skipped by sequence number, summed over clients
        self.unparsed = 0

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        opened = asyncio.create_task(self.open_all())
        ticker = asyncio.create_task(self.tick())
        while True:
            try:
                command, *_ = await loop.run_in_executor(None, self.conn.recv)
            except (EOFError, OSError):
                command = "close"
            if command == "start":
                self.frames.clear()
                self.bytes.clear()
                self.health = self.gaps = 0
                self.lag.clear()
                self.window[0], self.cpu[0] = time.time(), time.process_time()
                self.measuring = True
            elif command == "stop":
                self.measuring = False
                self.window[1], self.cpu[1] = time.time(), time.process_time()
            elif command == "opened":
                await opened
                self.conn.send({"opened": len(self.sockets), "failures": dict(self.failures),
                                "handshakes": self.handshakes})
            elif command == "report":
                self.conn.send(self.report())
            elif command == "close":
                break
        ticker.cancel()
        opened.cancel()
        self.closing = True
        await self.close_all()
        try:
            self.conn.send({"closed": True})
        except (OSError, BrokenPipeError):
            pass

    async def open_all(self) -> None:
        gate = asyncio.Semaphore(self.concurrency)
        await asyncio.gather(*(self.open_one(self.first + i, gate) for i in range(self.count)))

    async def open_one(self, index: int, gate: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        where = urlsplit(self.url)
        async with gate:
            t0 = time.perf_counter()
            link = None
            try:
                _, link = await asyncio.wait_for(loop.create_connection(
                    lambda: Link(self, index, where, self.key), where.hostname, where.port), 60)
                await asyncio.wait_for(link.handshake, 60)
            except Exception as exc:
                if link is not None:
                    link.transport.close()
                self.failures[f"connect: {type(exc).__name__}: {str(exc)[:80]}"] += 1
                return
            try:
                hello = json.loads(await asyncio.wait_for(link.hello, 30))
                if hello.get("type") != "hello":
                    raise ValueError(f"first frame {str(hello)[:80]}")
            except Exception as exc:
                self.failures[f"hello: {type(exc).__name__}: {str(exc)[:80]}"] += 1
                link.close()
                return
            self.handshakes.append(time.perf_counter() - t0)
            self.sockets[index] = link

    def lost(self, index: int, reason: str) -> None:
        if self.sockets.pop(index, None) is not None and not self.closing:
            self.closed[reason] += 1

    def frame(self, index: int, raw: bytes) -> None:
        head = HEAD.search(raw, 0, 300)
        data = None
        if head is None:  # an unexpected layout: parse it all
            try:
                data = json.loads(raw)
            except ValueError:
                self.unparsed += 1
                return
            if not isinstance(data, dict) or data.get("type") != "batch":
                return
            stream, seq = data.get("stream", "?"), int(data.get("seq") or 0)
        else:
            stream, seq = head.group(1).decode(), int(head.group(2))
        if b'"job.progress"' in raw:
            if data is None:
                data = json.loads(raw)
            now = time.time()  # received and parsed
            for event in data.get("events", ()):
                if event.get("type") == "job.progress":
                    found = BENCH_MSG.match(event.get("message") or "")
                    if found:
                        self.arrivals.append((index, int(found.group(1)), now))
        last = self.last_seq.get((index, stream))
        self.last_seq[(index, stream)] = seq
        if not self.measuring:
            return
        if last is not None and seq > last + 1:
            self.gaps += seq - last - 1
        self.frames[stream] += 1
        self.bytes[stream] += len(raw)
        self.health += raw.count(b'"node.health"')

    async def tick(self) -> None:
        """How late the loop wakes up: a busy client would add this to every latency."""
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(0.05)
            if self.measuring:
                self.lag.append(loop.time() - t0 - 0.05)

    def report(self) -> dict:
        return {"arrivals": self.arrivals, "frames": dict(self.frames),
                "bytes": dict(self.bytes), "health": self.health, "gaps": self.gaps,
                "window": list(self.window), "cpu": self.cpu[1] - self.cpu[0],
                "lag": self.lag, "closed": dict(self.closed), "open": len(self.sockets),
                "unparsed": self.unparsed}

    async def close_all(self) -> None:
        for link in list(self.sockets.values()):
            link.close()
        await asyncio.sleep(0.5)  # the close frames out before the process ends


class Link(asyncio.Protocol):
    """One websocket client, lean: the opening handshake, then the server's frames (never
    masked) cut from the bytes as they come and handed to the ClientSet at once, a ping
    answered, a close noted. A general client library costs tens of microseconds a frame,
    which, with hundreds of clients to a process receiving the same frame at once, became most
    of the latency it measured (as its own event-loop lag); this costs a few."""

    def __init__(self, owner: ClientSet, index: int, where, key: str):
        loop = asyncio.get_running_loop()
        self.owner, self.index = owner, index
        self.handshake, self.hello = loop.create_future(), loop.create_future()
        self.buffer = bytearray()
        self.parts: list[bytes] = []
        self.close_code: int | None = None
        self.transport = None
        path = where.path + (f"?{where.query}" if where.query else "")
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {where.netloc}\r\n"
                        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
                        f"Sec-WebSocket-Version: 13\r\nAuthorization: Token {key}\r\n\r\n"
                        ).encode()

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.handshake.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buffer[:self.buffer.find(b"\r\n")])
            del self.buffer[:end + 4]
            if not status.startswith(b"HTTP/1.1 101"):
                self.handshake.set_exception(ConnectionError(status.decode(errors="replace")))
                self.transport.close()
                return
            self.handshake.set_result(None)
        buffer, at = self.buffer, 0
        while len(buffer) - at >= 2:
            first, length, head = buffer[at], buffer[at + 1] & 0x7F, 2
            if length == 126:
                length, head = int.from_bytes(buffer[at + 2:at + 4], "big"), 4
            elif length == 127:
                length, head = int.from_bytes(buffer[at + 2:at + 10], "big"), 10
            if len(buffer) - at < head + length:
                break
            self.on_frame(first, bytes(buffer[at + head:at + head + length]))
            at += head + length
        del buffer[:at]

    def on_frame(self, first: int, payload: bytes) -> None:
        opcode = first & 0x0F
        if opcode == 0x9:  # ping
            self.send(0xA, payload)
        elif opcode == 0x8:  # close
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.send(0x8, payload[:2])
            self.transport.close()
        elif opcode in (0x0, 0x1, 0x2):  # a message, or a part of one
            self.parts.append(payload)
            if first & 0x80:
                message, self.parts = b"".join(self.parts), []
                if not self.hello.done():
                    self.hello.set_result(message)
                else:
                    self.owner.frame(self.index, message)

    def send(self, opcode: int, payload: bytes) -> None:
        """A control frame (at most 125 bytes), masked as a client's must be."""
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        if not self.transport.is_closing():
            self.transport.write(bytes([0x80 | opcode, 0x80 | len(masked)]) + mask + masked)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.send(0x8, (1000).to_bytes(2, "big"))
            self.transport.close()

    def connection_lost(self, exc) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError("closed during the handshake"))
        elif not self.hello.done():  # awaited once the handshake is through
            self.hello.set_exception(ConnectionError("closed before the first frame"))
        reason = (f"closed by the server: {self.close_code}" if self.close_code is not None
                  else f"{type(exc).__name__}: {str(exc)[:80]}" if exc else "connection closed")
        self.owner.lost(self.index, reason)


def client_process(conn, url: str, key: str, count: int, concurrency: int, first: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us in order
    raise_nofile()
    asyncio.run(ClientSet(conn, url, key, count, concurrency, first).main())


class Clients:
    """The parent's handle on the client processes."""

    def __init__(self, url: str, key: str, count: int, procs: int, concurrency: int):
        ctx = multiprocessing.get_context("spawn")
        procs = max(1, min(procs, count))
        self.count = count
        self.children: list[tuple[multiprocessing.Process, object]] = []
        first = 0
        for i in range(procs):
            share = count // procs + (1 if i < count % procs else 0)
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_process, name=f"bench-clients-{i}", daemon=True,
                               args=(child, url, key, share, max(1, concurrency // procs),
                                     first))
            proc.start()
            child.close()
            self.children.append((proc, parent))
            first += share

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self.children]

    def ask(self, command: str, timeout: float) -> list[dict]:
        for _, conn in self.children:
            conn.send((command,))
        return [self._answer(conn, timeout) for _, conn in self.children]

    def tell(self, command: str) -> None:
        for _, conn in self.children:
            conn.send((command,))

    def _answer(self, conn, timeout: float) -> dict:
        if not conn.poll(timeout):
            raise TimeoutError(f"a client process did not answer within {timeout:.0f} s")
        try:
            return conn.recv()
        except (EOFError, OSError) as exc:
            codes = [proc.exitcode for proc, _ in self.children]
            raise RuntimeError(f"a client process died (exit codes {codes})") from exc

    def close(self) -> None:
        for proc, conn in self.children:
            try:
                if proc.is_alive():
                    conn.send(("close",))
            except (OSError, BrokenPipeError):
                pass
        for proc, conn in self.children:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
        self.children = []


# --- the simulated nodes and worker (threads in this process) --------------------------------


class SimNode:
    """A node whose utilization wanders, reported as workers/utilization.Sampler does."""

    def __init__(self, name: str, rng: random.Random):
        self.name = name
        self.rng = rng
        self.cores = [rng.uniform(2, 90) for _ in range(CORES)]
        self.mem_total = 256 * 2**30
        self.mem_used = int(self.mem_total * rng.uniform(0.1, 0.8))
        self.disk_total = 2 * 2**40
        self.disk_used = int(self.disk_total * rng.uniform(0.2, 0.7))
        self.attempts: list[list] = []

    def util(self) -> dict:
        rng = self.rng
        self.cores = [min(100.0, max(0.0, c + rng.gauss(0, 6))) for c in self.cores]
        cores = [round(c, 1) for c in self.cores]
        self.mem_used = int(min(self.mem_total * 0.98,
                                max(2**30, self.mem_used + rng.gauss(0, 2**28))))
        self.disk_used += int(rng.uniform(0, 2**22))
        return {
            "cpu": sum(cores) / len(cores),
            "cpu_cores": cores,
            "mem": round(100 * self.mem_used / self.mem_total, 1), "mem_used": self.mem_used,
            "mem_total": self.mem_total,
            "swap": 0.0,
            "disk": round(100 * self.disk_used / self.disk_total, 1),
            "disk_used": self.disk_used, "disk_total": self.disk_total,
            "disk_read_bps": rng.uniform(0, 5e7), "disk_write_bps": rng.uniform(0, 2e7),
            "net_rx_bps": rng.uniform(0, 1e8), "net_tx_bps": rng.uniform(0, 5e7),
            "load1": round(sum(cores) / 100 * rng.uniform(0.9, 1.1), 2),
            "procs": rng.randint(300, 900),
            "gpus": [],
        }

    def heartbeat(self) -> dict:
        # As workers/agent.Agent.heartbeat, with the "ts" EventSink.emit adds.
        return {"type": "heartbeat", "node": self.name, "worker": f"{self.name}@bench-sim",
                "attempts": self.attempts, "reserved": [], "queues": QUEUES, "labels": {},
                "consuming": sorted(QUEUES), "concurrency": 8, "util": self.util(),
                "ts": time.time()}


class Loop(threading.Thread):
    def __init__(self, name: str):
        super().__init__(name=name, daemon=True)
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.body()
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def body(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)


class Nodes(Loop):
    """`count` nodes, each heartbeating every 1/hz s, spread evenly over the period; each
    heartbeat is its own stream entry (as an agent's flush(now=True) sends it), pipelined."""

    def __init__(self, redis_url: str, count: int, hz: float, attempts: list[list]):
        super().__init__("sim-nodes")
        import redis

        rng = random.Random(1)
        self.client = redis.Redis.from_url(redis_url)
        self.nodes = [SimNode(f"sim-{i + 1:03d}", rng) for i in range(count)]
        if self.nodes:
            self.nodes[0].attempts = attempts  # the node the running jobs are on
        self.period = 1.0 / hz
        self.sent = 0

    def body(self) -> None:
        from workers import protocol

        start = time.monotonic()
        due = [start + self.period * i / len(self.nodes) for i in range(len(self.nodes))]
        while not self.halt.is_set():
            now = time.monotonic()
            pipe = self.client.pipeline(transaction=False)
            beats = 0
            for i, node in enumerate(self.nodes):
                if due[i] <= now:
                    pipe.xadd(protocol.EVENTS_STREAM, {"b": json.dumps([node.heartbeat()])})
                    due[i] += self.period
                    if due[i] < now:  # fell behind: do not burst to catch up
                        due[i] = now + self.period
                    beats += 1
            if beats:
                pipe.execute()
                self.sent += beats
            self.halt.wait(max(0.0, min(due) - time.monotonic()) if due else 0.05)


class Worker(Loop):
    """Progress events for the running jobs, `rate` per job per second, evenly interleaved;
    each one's message names its sequence number and carries its send time."""

    def __init__(self, redis_url: str, jobs: list[list], rate: float):
        super().__init__("sim-worker")
        import redis

        self.client = redis.Redis.from_url(redis_url)
        self.jobs = jobs
        self.interval = 1.0 / (rate * len(jobs))
        self.sent: dict[int, tuple[float, int]] = {}  # seq -> (send time, job)
        self.seq = 0
        self.lock = threading.Lock()

    def body(self) -> None:
        next_at = time.monotonic()
        while not self.halt.is_set():
            self.halt.wait(max(0.0, next_at - time.monotonic()))
            if self.halt.is_set():
                break
            next_at += self.interval
            with self.lock:
                self.seq += 1
                seq = self.seq
            job_id, token = self.jobs[seq % len(self.jobs)]
            done = seq // len(self.jobs) % 1000
            now = time.time()
            event = {"type": "progress", "job": job_id, "attempt": 1, "token": token,
                     "fraction": done / 1000, "done": done, "total": 1000, "unit": "steps",
                     "message": f"bench {seq} {now:.6f}", "ts": now}
            self.emit(seq, event)
            self.sent[seq] = (now, job_id)

    def emit(self, seq: int, event: dict) -> None:
        from workers import protocol, wire

        self.client.xadd(protocol.EVENTS_STREAM, {"v": wire.STREAM_VERSION,
                                                  "b": json.dumps([event])})


class PeerWorker(Worker):
    """The same events, each sent as the raw peer's publisher would: one `group_send` of a
    frame in the portal's format (so the clients read both alike) to the peer's group."""

    def __init__(self, redis_url: str, jobs: list[list], rate: float):
        super().__init__(redis_url, jobs, rate)
        from channels_redis.pubsub import RedisPubSubChannelLayer

        self.loop = asyncio.new_event_loop()
        self.layer = RedisPubSubChannelLayer(hosts=[redis_url], prefix=PEER_PREFIX)

    def emit(self, seq: int, event: dict) -> None:
        frame = {"type": "batch", "stream": PEER_GROUP, "seq": seq, "events": [
            {"type": "job.progress", "job": str(event["job"]), "progress": event["fraction"],
             "message": event["message"], "done": event["done"], "total": event["total"],
             "unit": event["unit"]}]}
        self.loop.run_until_complete(self.layer.group_send(
            PEER_GROUP, {"type": "bench.frame", "text": json.dumps(frame)}))

    def body(self) -> None:
        try:
            super().body()
        finally:
            self.loop.run_until_complete(self.layer.flush())
            self.loop.close()


class Probe(Loop):
    """Listens to the channel layer's Redis pub/sub for the jobs-staff group: when each progress
    event left the ingester (splits the latency into ingester and web). Best effort: it finds
    the bench's message text in whatever encoding the layer uses."""

    def __init__(self, redis_url: str):
        super().__init__("probe")
        import redis

        self.client = redis.Redis.from_url(redis_url)
        self.published: dict[int, float] = {}

    def body(self) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        pubsub.psubscribe("*jobs-staff*")
        try:
            while not self.halt.is_set():
                message = pubsub.get_message(timeout=0.2)
                if not message:
                    continue
                now = time.time()
                data = message.get("data")
                if isinstance(data, bytes):
                    for found in BENCH_MSG_BYTES.finditer(data):
                        self.published.setdefault(int(found.group(1)), now)
        finally:
            pubsub.close()


class Monitor(Loop):
    """Every 0.5 s: the web processes' CPU seconds, RSS, PSS and USS (summed over all), the
    ingester's CPU, the stream's backlog."""

    def __init__(self, redis_url: str, web: int, ingester: int | None):
        super().__init__("monitor")
        import redis

        self.client = redis.Redis.from_url(redis_url)
        self.web, self.ingester = web, ingester
        self.samples: list[tuple[float, float, float, float, int, float, float]] = []

    def body(self) -> None:
        from workers import protocol

        while not self.halt.is_set():
            try:
                backlog = self.client.xlen(protocol.EVENTS_STREAM)
            except Exception:
                backlog = -1
            rss, pss, uss = tree_memory(self.web)
            self.samples.append((time.time(), cpu_seconds(self.web), rss,
                                 cpu_seconds(self.ingester, children=False)
                                 if self.ingester else 0.0, backlog, pss, uss))
            self.halt.wait(0.5)

    def between(self, t0: float, t1: float) -> list[tuple]:
        return [s for s in self.samples if t0 <= s[0] <= t1]


# --- the benchmark ---------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    clients: int
    nodes: int
    seconds: float = 0.0  # the measured window
    opened: int = 0
    open_seconds: float = 0.0
    failures: Counter = field(default_factory=Counter)
    handshakes: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds, every delivery
    ingest: list[float] = field(default_factory=list)  # send -> published, per event
    fanout: list[float] = field(default_factory=list)  # published -> client, every delivery
    first: list[float] = field(default_factory=list)  # published -> first client, per event
    spread: list[float] = field(default_factory=list)  # first client -> last client, per event
    sent: int = 0  # progress events sent in the window
    broadcast: int = 0  # of them, published by the ingester (or seen by a client)
    broadcast_seen_by: str = ""
    received: int = 0  # deliveries in the window
    duplicates: int = 0
    per_client: list[int] = field(default_factory=list)  # deliveries per connected client
    frames: Counter = field(default_factory=Counter)  # by stream, all clients
    bytes: Counter = field(default_factory=Counter)
    health: int = 0
    heartbeats: int = 0  # sent by the simulated nodes in the window
    gaps: int = 0
    closed: Counter = field(default_factory=Counter)
    client_window: float = 0.0
    client_cpu: float = 0.0  # CPU seconds of the client processes in their window
    client_procs: int = 0
    lag: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    machine: dict[str, float] = field(default_factory=dict)  # busy, steal: CPU seconds, all cores
    web_cpu_peak: float = 0.0  # % of one core, over the busiest second
    web_rss: list[float] = field(default_factory=list)  # MB, summed over the web processes
    web_pss: list[float] = field(default_factory=list)  # the figure judged (see tree_memory)
    web_uss: list[float] = field(default_factory=list)
    web_procs: int = 0
    backlog_peak: int = 0
    unparsed: int = 0

    @property
    def expected(self) -> int:
        return self.sent * self.opened

    def p(self, q: float, values: list[float] | None = None) -> float:
        return percentile(self.latencies if values is None else values, q)

    def pct(self, name: str) -> float:
        return 100 * self.cpu.get(name, 0.0) / self.seconds if self.seconds else math.nan

    def per_client_rate(self, count: float) -> float:
        if not self.opened or not self.client_window:
            return math.nan
        return count / self.opened / self.client_window


class LiveBench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.pg: PostgresServer | None = None
        self.redis_server: RedisServer | None = None
        self.cluster: Cluster | None = None
        self.token = ""
        self.ws_url = ""
        self.jobs: list[list] = []
        self.clients: Clients | None = None
        self.threads: list[Loop] = []

    # Set-up and tear-down.

    def setup(self) -> None:
        t0 = time.monotonic()
        # The simulated jobs run for the whole benchmark: between phases (and while thousands
        # of sockets open) no node heartbeats, and they must not be taken for lost.
        start_portal(self, lambda pg: {name: os.environ.get(name, "86400")
                                       for name in ("LEASE_S", "NODE_OFFLINE_S")})
        self.jobs = self.make_running_jobs(self.args.jobs)

        port = free_port()
        # As the dashboard asks: node cards, the jobs' states and progress, alerts (staff).
        self.ws_url = f"ws://127.0.0.1:{port}/ws/cluster/?show=nodes,jobs,alerts"
        self.cluster.start_web(port)
        self.cluster.start_ingester()
        self.cluster.start_reconciler()

        import redis

        from workers import protocol

        client = redis.Redis.from_url(self.redis_server.url)
        try:
            def ingester_up():
                self.alive()
                return client.exists(f"{protocol.PREFIX}:ingest:alive")

            wait_until(ingester_up, 60, "the ingester to start", interval=0.1)
        finally:
            client.close()
        log(f"ready in {time.monotonic() - t0:.1f} s (web on :{port}, ingester, reconciler; "
            f"{len(self.jobs)} jobs running on sim-001 in the database)")

    def make_running_jobs(self, count: int) -> list[list]:
        """The bench user made staff, and `count` jobs put straight into running (attempt 1,
        a known token, node sim-001) so that the simulated progress events are accepted."""
        code = f"""
import json, secrets
from datetime import timedelta
from django.contrib.auth import get_user_model
from django.utils import timezone
from accounts.teams import team_for_work
from jobs.models import Attempt, Job, JobState
user = get_user_model().objects.get(username="bench")
team = team_for_work(user)
user.is_staff = True
user.save(update_fields=["is_staff"])
now = timezone.now()
out = []
for i in range({count}):
    token = secrets.token_hex(16)
    job = Job.objects.create(owner=user, team=team, kind="diag.sleep", name=f"bench-live-{{i}}",
                             params={{}}, queue="cpu", state=JobState.RUNNING, attempt=1,
                             token=token, timeout_s=86400, node="sim-001", started_at=now,
                             dispatched_at=now, lease_expires_at=now + timedelta(days=1),
                             progress=0.0)
    Attempt.objects.create(job=job, number=1, token=token, state="running", node="sim-001",
                           worker="sim-001@bench-sim", started_at=now)
    out.append([job.pk, token])
print(json.dumps(out))
"""
        return json.loads(self.cluster.manage("shell", "-c", code).splitlines()[-1])

    def alive(self) -> None:
        for name, proc in self.cluster.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} "
                                   "(run with --verbose to see its output)")
        for thread in self.threads:
            if thread.error is not None:
                raise RuntimeError(f"{thread.name} failed: {thread.error!r}")

    def stop_threads(self) -> None:
        for thread in self.threads:
            thread.stop()
        self.threads = []

    def teardown(self) -> None:
        stop_all([
            ("client processes", lambda: self.clients and self.clients.close()),
            ("simulators", self.stop_threads),
            ("cluster", lambda: self.cluster and self.cluster.stop()),
            ("Redis", lambda: self.redis_server and self.redis_server.cleanup()),
            ("PostgreSQL", lambda: self.pg and self.pg.cleanup()),
        ])

    # CPU accounting.

    def start_peer(self) -> str:
        """The raw Channels peer (bench/peer.py): one stock daphne on its own port."""
        from portal.cluster import PYTHON, wait_for_port

        port = free_port()
        proc = self.cluster.spawn("peer", [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p",
                                           str(port), "bench.peer:application"],
                                  env={**self.cluster.env, "PEER_GROUP": PEER_GROUP,
                                       "PEER_PREFIX": PEER_PREFIX,
                                       "PEER_REDIS_URL": self.redis_server.url})
        wait_for_port(port, proc=proc)
        return f"ws://127.0.0.1:{port}/"

    def stop_peer(self) -> None:
        self.cluster.kill("peer", signal.SIGTERM)

    def cpu_snapshot(self) -> dict[str, float]:
        procs = self.cluster.procs
        snap = {
            "web": cpu_seconds(procs["web"].pid),
            **({"peer (daphne)": cpu_seconds(procs["peer"].pid)} if "peer" in procs else {}),
            "ingester": cpu_seconds(procs["ingester"].pid),
            "reconciler": cpu_seconds(procs["reconciler"].pid),
            "postgres": cpu_seconds(int((self.pg.data / "postmaster.pid").read_text()
                                        .split()[0])),
            "redis": cpu_seconds(self.redis_server.proc.pid),
            "bench clients": sum(cpu_seconds(pid, children=False)
                                 for pid in (self.clients.pids if self.clients else [])),
            "bench simulators": cpu_seconds(os.getpid(), children=False),
        }
        return snap

    # One phase: connect, load, measure, collect.

    def phase(self, name: str, clients: int, nodes: int, seconds: float, warmup: float,
              procs: int, *, peer: str | None = None) -> Phase:
        """`peer`: the raw peer's URL, to measure it instead of the portal (its own events,
        through group_send; no ingester)."""
        out = Phase(name, clients, nodes, client_procs=procs)
        url = self.redis_server.url
        web = self.cluster.procs["peer" if peer else "web"].pid
        ingester = None if peer else self.cluster.procs["ingester"].pid
        monitor = Monitor(url, web, ingester)
        probe = Probe(url)
        self.threads = [monitor, probe]
        for thread in self.threads:
            thread.start()

        t_open = time.monotonic()
        self.clients = Clients(peer or self.ws_url, self.token, clients, procs,
                               self.args.open_concurrency)
        answers = self.clients.ask("opened", timeout=max(120, clients / 5))
        out.open_seconds = time.monotonic() - t_open
        for answer in answers:
            out.opened += answer["opened"]
            out.failures.update(answer["failures"])
            out.handshakes += answer["handshakes"]
        log(f"  {out.opened} of {clients} websockets open in {out.open_seconds:.1f} s "
            f"({procs} client process{'es' if procs > 1 else ''}"
            + (f"; {sum(out.failures.values())} failed" if out.failures else "") + ")")
        if not out.opened:
            raise RuntimeError(f"no websocket opened: {dict(out.failures)}")
        self.alive()

        sim = None
        if nodes:
            sim = Nodes(url, nodes, self.args.hz, [[j, 1, k] for j, k in self.jobs])
            self.threads.append(sim)
            sim.start()
        worker = (PeerWorker if peer else Worker)(url, self.jobs, self.args.rate)
        self.threads.append(worker)
        worker.start()
        log(f"  warm-up {warmup:.0f} s"
            + (f" ({nodes} nodes heartbeating at {self.args.hz:g} Hz)" if nodes else ""))
        time.sleep(warmup)
        self.alive()

        beats0 = sim.sent if sim else 0
        cpu0, machine0 = self.cpu_snapshot(), machine_cpu()
        self.clients.tell("start")
        t0 = time.time()
        log(f"  measuring {seconds:.0f} s")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(min(0.5, max(0.0, end - time.monotonic())))
            self.alive()
        worker.stop()  # no event is sent after t1 ...
        t1 = time.time()
        self.clients.tell("stop")
        cpu1, machine1 = self.cpu_snapshot(), machine_cpu()
        out.heartbeats = (sim.sent if sim else 0) - beats0
        out.seconds = t1 - t0
        out.cpu = cpu_delta(cpu0, cpu1)
        out.machine = cpu_delta(machine0, machine1)
        time.sleep(self.args.grace)  # ... while the last ones, and the load, go on arriving
        reports = self.clients.ask("report", timeout=60)
        self.stop_threads()
        self.clients.close()
        self.clients = None

        samples = monitor.between(t0, t1)
        out.web_procs = web_processes(web)
        out.web_rss = [s[2] for s in samples]
        out.web_pss = [s[5] for s in samples]
        out.web_uss = [s[6] for s in samples]
        out.backlog_peak = max((s[4] for s in samples), default=0)
        peaks = [100 * (b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(samples, samples[2:],
                                                                     strict=False)]
        out.web_cpu_peak = max(peaks, default=math.nan)
        self.collect(out, worker, probe, reports, t0, t1)
        return out

    def collect(self, out: Phase, worker: Worker, probe: Probe, reports: list[dict],
                t0: float, t1: float) -> None:
        window = {seq for seq, (sent, _) in worker.sent.items() if t0 <= sent <= t1}
        out.sent = len(window)
        counts: Counter = Counter()
        seen: set[int] = set()
        delivered: set[tuple[int, int]] = set()
        published = probe.published
        arrivals: dict[int, list[float]] = {}
        for report in reports:
            for client, seq, arrived in report["arrivals"]:
                if seq not in window:
                    continue
                if (client, seq) in delivered:
                    out.duplicates += 1
                    continue
                delivered.add((client, seq))
                counts[client] += 1
                seen.add(seq)
                sent = worker.sent[seq][0]
                out.latencies.append(arrived - sent)
                arrivals.setdefault(seq, []).append(arrived)
                if seq in published:
                    out.fanout.append(arrived - published[seq])
            out.frames.update(report["frames"])
            out.bytes.update(report["bytes"])
            out.health += report["health"]
            out.gaps += report["gaps"]
            out.closed.update(report["closed"])
            out.client_cpu += report["cpu"]
            out.client_window = max(out.client_window, report["window"][1] - report["window"][0])
            out.lag += report["lag"]
            out.unparsed += report["unparsed"]
        out.ingest = [published[seq] - worker.sent[seq][0] for seq in window if seq in published]
        out.spread = [max(times) - min(times) for times in arrivals.values()]
        out.first = [min(times) - published[seq] for seq, times in arrivals.items()
                     if seq in published]
        # Broadcast: seen on the channel layer's pub/sub, else (another transport) by a client.
        out.broadcast_seen_by = "pub/sub" if published else "a client"
        out.broadcast = len(window & published.keys()) if published else len(seen)
        out.received = len(delivered)
        out.per_client = sorted(counts.values()) + [0] * (out.opened - len(counts))


# --- output ----------------------------------------------------------------------------------


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def report(args, base: Phase, load: Phase, peer: Phase) -> bool:
    p99 = ms(load.p(99))
    peer_p99 = ms(peer.p(99))
    ratio = p99 / peer_p99 if peer.latencies and peer_p99 > 0 else math.nan
    base_p99 = ms(base.p(99))
    delivered = load.received / (load.broadcast * load.opened) if load.broadcast and \
        load.opened else 0.0
    p99_ok = p99 <= P99_TARGET_MS
    peer_ok = ratio <= 1.0
    base_ok = base_p99 <= BASE_P99_TARGET_MS
    delivered_ok = delivered >= DELIVERED_TARGET
    load_rss = max(load.web_rss, default=math.nan)
    load_pss = max(load.web_pss, default=math.nan)
    load_uss = max(load.web_uss, default=math.nan)
    memory_ok = load_pss <= MEMORY_TARGET_MB
    ok = p99_ok and peer_ok and base_ok and memory_ok and delivered_ok and bool(load.latencies)
    rows: list[tuple[str, str, str, str]] = []

    def latency_rows(phase: Phase, compare: Phase | None) -> None:
        for q, label in ((50, "p50"), (95, "p95"), (99, "p99"), (100, "max")):
            value = ms(phase.p(q))
            note = ""
            if compare is not None and compare.latencies:
                note = f"{value / ms(compare.p(q)):.1f}x baseline"
            if q == 99 and compare is not None:
                note += f"; target <= {P99_TARGET_MS:.0f} ms: {verdict(p99_ok)}"
            elif q == 99:
                note = f"target <= {BASE_P99_TARGET_MS:.0f} ms: {verdict(base_ok)}"
            rows.append((f"  event -> client {label}", f"{value:10.2f}", "ms", note))

    rows.append((f"Baseline: 1 client, no nodes, {base.sent} progress events", "", "", ""))
    latency_rows(base, None)
    if base.ingest:
        rows.append(("  split: event -> published p50", f"{ms(base.p(50, base.ingest)):10.2f}",
                     "ms", f"p99 {ms(base.p(99, base.ingest)):.2f} ms; published -> client p50 "
                     f"{ms(base.p(50, base.fanout)):.2f} ms, p99 "
                     f"{ms(base.p(99, base.fanout)):.2f} ms"))
    rows.append(("  deliveries", f"{base.received:10d}", "",
                 f"of {base.expected} expected"))
    rows.append((f"Loaded: {load.opened} clients, {load.nodes} nodes at {args.hz:g} Hz, "
                 f"{len(args.jobs_list)} jobs x {args.rate:g} progress/s", "", "", ""))
    rows.append(("  websockets opened", f"{load.opened:10d}", "",
                 f"of {load.clients} in {load.open_seconds:.1f} s, {args.open_concurrency} at "
                 f"a time; handshake p50 {ms(load.p(50, load.handshakes)):.0f} ms, p99 "
                 f"{ms(load.p(99, load.handshakes)):.0f} ms; failed "
                 f"{sum(load.failures.values())}"))
    latency_rows(load, base)
    if load.received < load.broadcast * load.opened:
        rows.append(("  (of the deliveries received; the missing ones are later still)", "", "",
                     ""))
    if load.ingest:
        rows.append(("  split: event -> published p50", f"{ms(load.p(50, load.ingest)):10.2f}",
                     "ms", f"p99 {ms(load.p(99, load.ingest)):.2f} ms (stream, ingester, "
                     "commit, group_send; seen on Redis pub/sub)"))
        rows.append(("         published -> first client p50",
                     f"{ms(load.p(50, load.first)):10.2f}", "ms",
                     f"p99 {ms(load.p(99, load.first)):.2f} ms (web: layer receive, dispatch, "
                     "send; per event)"))
        rows.append(("         first -> last client p50", f"{ms(load.p(50, load.spread)):10.2f}",
                     "ms", f"p99 {ms(load.p(99, load.spread)):.2f} ms (the fan-out's spread "
                     "over the clients, per event)"))
        rows.append(("         published -> client p50",
                     f"{ms(load.p(50, load.fanout)):10.2f}", "ms",
                     f"p99 {ms(load.p(99, load.fanout)):.2f} ms (every delivery)"))
    rows.append(("  deliveries received", f"{load.received:10d}", "",
                 f"of {load.expected} expected ({load.sent} events x {load.opened} clients): "
                 f"{100 * load.received / load.expected if load.expected else 0:.2f} %"))
    rows.append(("    of those broadcast", f"{100 * delivered:10.2f}", "%",
                 f"{load.broadcast} of {load.sent} events broadcast (seen by "
                 f"{load.broadcast_seen_by}), {args.grace:g} s grace; target >= "
                 f"{100 * DELIVERED_TARGET:.0f} %: {verdict(delivered_ok)}"))
    if load.per_client:
        rows.append(("    per client, fewest", f"{load.per_client[0]:10d}", "",
                     f"median {load.per_client[len(load.per_client) // 2]}, most "
                     f"{load.per_client[-1]}; duplicates {load.duplicates}; sequence gaps "
                     f"{load.gaps}"))
    if load.closed:
        rows.append(("  connections lost", f"{sum(load.closed.values()):10d}", "",
                     "; ".join(f"{n} x {why}" for why, n in load.closed.most_common(3))))
    frames = sum(load.frames.values())
    rows.append(("  frames / s per client", f"{load.per_client_rate(frames):10.2f}", "",
                 ", ".join(f"{stream} {load.per_client_rate(n):.2f}"
                           for stream, n in sorted(load.frames.items()))))
    total_bytes = sum(load.bytes.values())
    rows.append(("  KB / s per client", f"{load.per_client_rate(total_bytes) / 1024:10.1f}",
                 "", f"{sum(load.bytes.values()) / 2**20 / load.client_window:.1f} MB/s to all "
                 f"clients; mean frame {sum(load.bytes.values()) / max(1, frames) / 1024:.1f} KB"
                 if load.client_window else ""))
    rows.append(("  node.health / s per client", f"{load.per_client_rate(load.health):10.1f}",
                 "", f"the nodes sent {load.heartbeats / load.seconds:.1f} heartbeats/s"))
    rows.append(("  client event-loop lag p50", f"{ms(load.p(50, load.lag)):10.2f}", "ms",
                 f"p99 {ms(load.p(99, load.lag)):.2f} ms, max {ms(load.p(100, load.lag)):.2f} "
                 f"ms ({load.client_procs} process{'es' if load.client_procs > 1 else ''}, "
                 f"{100 * load.client_cpu / load.client_window / load.client_procs:.0f} % of a "
                 "core each)" if load.client_window else ""))
    rows.append((f"Raw peer: {peer.opened} clients on one stock daphne (Channels + "
                 "channels_redis pubsub, group_send), the same progress events, no nodes", "",
                 "", ""))
    for q, label in ((50, "p50"), (95, "p95"), (99, "p99"), (100, "max")):
        rows.append((f"  event -> client {label}", f"{ms(peer.p(q)):10.2f}", "ms",
                     f"portal / peer {ms(load.p(q)) / ms(peer.p(q)):.2f}"
                     if peer.latencies and ms(peer.p(q)) else ""))
    rows.append(("  deliveries received", f"{peer.received:10d}", "",
                 f"of {peer.expected} expected"))
    rows.append(("  CPU", f"{peer.pct('peer (daphne)'):10.1f}", "%",
                 f"of one core; RSS peak {max(peer.web_rss, default=math.nan):.0f} MB"))
    rows.append((f"Web processes (daphne x {load.web_procs}, summed)", "", "", ""))
    rows.append(("  CPU, baseline", f"{base.pct('web'):10.1f}", "%", "of one core"))
    rows.append(("  CPU, loaded", f"{load.pct('web'):10.1f}", "%",
                 f"of one core; busiest second {fmt(load.web_cpu_peak, 0)} %"))
    base_rss = max(base.web_rss, default=math.nan)
    base_pss = max(base.web_pss, default=math.nan)
    rows.append(("  PSS, baseline", f"{base_pss:10.1f}", "MB",
                 f"1 client; RSS {base_rss:.0f} MB, USS "
                 f"{max(base.web_uss, default=math.nan):.0f} MB"))
    rows.append(("  PSS, loaded (peak)", f"{load_pss:10.1f}", "MB",
                 f"{1024 * (load_pss - base_pss) / max(1, load.opened - 1):.0f} KB per extra "
                 f"client; target <= {MEMORY_TARGET_MB:.0f} MB: {verdict(memory_ok)}"))
    rows.append(("  RSS, loaded (peak)", f"{load_rss:10.1f}", "MB",
                 "counts the pages the processes share once in each; USS "
                 f"{load_uss:.0f} MB (each one's own pages)"))
    rows.append(("Ingester", "", "", ""))
    rows.append(("  CPU, loaded", f"{load.pct('ingester'):10.1f}", "%",
                 f"of one core (baseline {base.pct('ingester'):.1f} %); stream backlog peak "
                 f"{load.backlog_peak} entries"))

    width = max(len(r[0]) for r in rows)
    print()
    print("=" * 100)
    print(f"cluster-portal live-path benchmark  ({platform.node()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()})")
    print("=" * 100)
    for label, value, unit, note in rows:
        if not value:
            print(label)
            continue
        print(f"{label:<{width}} {value} {unit:<3} {note}")
    print("-" * 100)
    print("CPU by component over the measured window (% of one core):")
    phases = (base, load, peer)
    print(f"  {'component':<18} {'baseline':>10} {'loaded':>10} {'raw peer':>10}")
    for name in dict.fromkeys(n for phase in phases for n in phase.cpu):
        print(f"  {name:<18}" + "".join(f" {phase.pct(name):9.1f}%" for phase in phases))
    totals = [sum(phase.pct(n) for n in phase.cpu) for phase in phases]
    print(f"  {'total':<18}" + "".join(f" {t:9.1f}%" for t in totals)
          + f"   (the machine has {os.cpu_count()} cores = {100 * (os.cpu_count() or 1)}%)")

    def machine(phase: Phase, name: str) -> float:
        return 100 * phase.machine.get(name, 0.0) / phase.seconds if phase.seconds else math.nan

    others = [max(0.0, machine(phase, "busy") - t) for phase, t in zip(phases, totals,
                                                                         strict=True)]
    print(f"  {'other processes':<18}" + "".join(f" {o:9.1f}%" for o in others)
          + "   (busy on the machine but not this run's: a shared machine skews every figure)")
    if max(machine(phase, "steal") for phase in phases) >= 1:
        print(f"  {'hypervisor steal':<18}"
              + "".join(f" {machine(phase, 'steal'):9.1f}%" for phase in phases))
    if load.failures:
        print("-" * 100)
        for why, n in load.failures.most_common(5):
            print(f"websocket open failed: {n} x {why}")
    if load.unparsed:
        print(f"frames that were not JSON: {load.unparsed}")
    print("=" * 100)
    print(f"RESULT live latency p99: {p99:.2f} ms with {load.opened} clients and {load.nodes} "
          f"nodes (p50 {ms(load.p(50)):.2f} ms) (target <= {P99_TARGET_MS:.0f} ms) "
          f"{verdict(p99_ok)}")
    print(f"RESULT live vs raw Channels peer: portal p99 {p99:.2f} ms, peer p99 "
          f"{peer_p99:.2f} ms with {peer.opened} clients, ratio {ratio:.2f} (target <= 1.00) "
          f"{verdict(peer_ok)}")
    print(f"RESULT live 1 client p99: {base_p99:.2f} ms (p50 {ms(base.p(50)):.2f} ms) (target "
          f"<= {BASE_P99_TARGET_MS:.0f} ms) {verdict(base_ok)}")
    print(f"RESULT live deliveries: {100 * delivered:.2f} % of broadcast events reached every "
          f"client ({load.received} of {load.broadcast * load.opened}) (target >= "
          f"{100 * DELIVERED_TARGET:.0f} %) {verdict(delivered_ok)}")
    print(f"RESULT web processes: {load.web_procs}, {load.pct('web'):.0f} % of one core and "
          f"{fmt(load_pss, 0)} MB PSS summed (the figure judged: RSS counts a shared page once "
          f"in each process; RSS summed {fmt(load_rss, 0)} MB, USS {fmt(load_uss, 0)} MB) "
          f"(target PSS <= {MEMORY_TARGET_MB:.0f} MB) {verdict(memory_ok)}; ingester "
          f"{load.pct('ingester'):.0f} %; clients received {load.per_client_rate(frames):.1f} "
          f"frames/s and {load.per_client_rate(load.health):.0f} node.health/s each",
          flush=True)
    return ok


def sweep(args, bench: LiveBench) -> bool:
    """The scale curve: one loaded phase per point, the same events; a table at the end."""
    points = [(clients, SWEEP_NODES[1]) for clients in SWEEP_CLIENTS]
    points += [(SWEEP_CLIENTS[2], nodes) for nodes in SWEEP_NODES if nodes != SWEEP_NODES[1]]
    results = []
    for clients, nodes in points:
        procs = max(1, math.ceil(clients / 500))
        log(f"sweep: {clients} clients, {nodes} nodes")
        phase = bench.phase(f"sweep {clients}x{nodes}", clients, nodes, args.seconds,
                            warmup=args.warmup, procs=procs)
        log(f"  p50 {ms(phase.p(50)):.1f} ms, p99 {ms(phase.p(99)):.1f} ms, web "
            f"{phase.pct('web'):.0f} %")
        results.append(phase)
    print()
    print("=" * 100)
    print(f"cluster-portal live-path sweep  ({platform.node()}, {os.cpu_count()} CPUs; "
          f"{args.jobs} jobs x {args.rate:g} progress/s, nodes at {args.hz:g} Hz, "
          f"{args.seconds:g} s a point)")
    print("=" * 100)
    print(f"{'clients':>8} {'nodes':>6} {'opened':>7} {'p50 ms':>9} {'p99 ms':>9} "
          f"{'deliv %':>8} {'web CPU %':>10} {'web PSS MB':>11} {'RSS MB':>7} {'frames/s':>9} "
          f"{'KB/s':>7} "
          f"{'ingester %':>11} {'clients %':>10} {'other %':>8}")
    for phase in results:
        delivered = 100 * phase.received / phase.expected if phase.expected else 0.0
        frames = sum(phase.frames.values())
        busy = 100 * phase.machine.get("busy", 0.0) / phase.seconds if phase.seconds else 0.0
        ours = sum(phase.pct(n) for n in phase.cpu)
        print(f"{phase.clients:>8} {phase.nodes:>6} {phase.opened:>7} {ms(phase.p(50)):>9.1f} "
              f"{ms(phase.p(99)):>9.1f} {delivered:>8.2f} {phase.pct('web'):>10.1f} "
              f"{max(phase.web_pss, default=math.nan):>11.0f} "
              f"{max(phase.web_rss, default=math.nan):>7.0f} "
              f"{phase.per_client_rate(frames):>9.2f} "
              f"{phase.per_client_rate(sum(phase.bytes.values())) / 1024:>7.1f} "
              f"{phase.pct('ingester'):>11.1f} {phase.pct('bench clients'):>10.1f} "
              f"{max(0.0, busy - ours):>8.1f}")
    print("=" * 100)
    for phase in results:
        for why, n in phase.failures.most_common(3):
            print(f"{phase.clients} clients: websocket open failed: {n} x {why}")
    for phase in results:
        print(f"RESULT live sweep {phase.clients} clients {phase.nodes} nodes: p50 "
              f"{ms(phase.p(50)):.2f} ms, p99 {ms(phase.p(99)):.2f} ms, web "
              f"{phase.pct('web'):.0f} % of one core, "
              f"{max(phase.web_pss, default=math.nan):.0f} MB PSS "
              f"({max(phase.web_rss, default=math.nan):.0f} MB RSS)", flush=True)
    return True


# --- entry point -----------------------------------------------------------------------------


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """The benchmarks' --help: defaults shown, except where the help text says them."""

    def _get_help_string(self, action):  # no "(default: None)" where the help says it
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__.split(
        "\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--clients", type=int, default=None,
                        help="websocket clients in the loaded phase (default 1000; 200 with "
                             "--quick)")
    parser.add_argument("--nodes", type=int, default=None,
                        help="simulated nodes (default 200; 50 with --quick)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="measured seconds per phase (default 20; 8 with --quick)")
    parser.add_argument("--hz", type=float, default=1.0, help="heartbeats per node per second")
    parser.add_argument("--jobs", type=int, default=4, help="running jobs sending progress")
    parser.add_argument("--rate", type=float, default=2.0, help="progress events per job per s")
    parser.add_argument("--client-procs", type=int, default=None,
                        help="processes the clients run in (default: 1 per 500 clients)")
    parser.add_argument("--open-concurrency", type=int, default=50,
                        help="websocket handshakes in flight at once")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds of load before measuring (default 5; 3 with --quick)")
    parser.add_argument("--grace", type=float, default=3.0,
                        help="seconds to wait for the last events after the window")
    parser.add_argument("--quick", action="store_true", help="smaller counts, under a minute")
    parser.add_argument("--sweep", action="store_true",
                        help=f"the scale curve instead: p50/p99 and web CPU at "
                             f"{', '.join(map(str, SWEEP_CLIENTS))} clients ({SWEEP_NODES[1]} "
                             f"nodes) and at {', '.join(map(str, SWEEP_NODES))} nodes "
                             f"({SWEEP_CLIENTS[2]} clients); --seconds per point (default 10)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if the target is missed")
    parser.add_argument("--verbose", action="store_true",
                        help="show the cluster processes' output")
    args = parser.parse_args(argv)
    if args.clients is None:
        args.clients = 200 if args.quick else 1000
    if args.nodes is None:
        args.nodes = 50 if args.quick else 200
    if args.seconds is None:
        args.seconds = 8.0 if args.quick else 10.0 if args.sweep else 20.0
    if args.warmup is None:
        args.warmup = 3.0 if args.quick else 5.0
    if args.client_procs is None:
        args.client_procs = max(1, math.ceil(args.clients / 500))
    if (args.clients < 1 or args.nodes < 0 or args.seconds <= 0 or args.hz <= 0
            or args.jobs < 1 or args.rate <= 0 or args.client_procs < 1
            or args.open_concurrency < 1):
        parser.error("--clients, --jobs, --client-procs, --open-concurrency >= 1; --seconds, "
                     "--hz, --rate > 0; --nodes >= 0, please")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    limit = raise_nofile()
    started = begin(f"cluster-portal live-path benchmark: {args.clients} websocket clients, "
                    f"{args.nodes} nodes at {args.hz:g} Hz, {args.jobs} jobs x {args.rate:g} "
                    f"progress events/s, {args.seconds:g} s per phase; open files {limit}",
                    LIVE_TUNING)
    if limit < 2 * args.clients + 200:
        print(f"  ! the open-files limit ({limit}) is low for {args.clients} clients",
              flush=True)
    bench = LiveBench(args)

    def measure() -> bool:
        bench.setup()
        args.jobs_list = bench.jobs
        if args.sweep:
            return sweep(args, bench)
        base_seconds = min(args.seconds, 10.0)
        log(f"baseline: 1 client, no nodes, {base_seconds:g} s")
        base = bench.phase("baseline", 1, 0, base_seconds, warmup=2.0, procs=1)
        log(f"  p50 {ms(base.p(50)):.1f} ms, p99 {ms(base.p(99)):.1f} ms")
        log(f"loaded: {args.clients} clients, {args.nodes} nodes")
        load = bench.phase("loaded", args.clients, args.nodes, args.seconds,
                           warmup=args.warmup, procs=args.client_procs)
        log(f"  p50 {ms(load.p(50)):.1f} ms, p99 {ms(load.p(99)):.1f} ms")
        log(f"raw peer: {args.clients} clients on one stock daphne, the same events")
        url = bench.start_peer()
        try:
            peer = bench.phase("peer", args.clients, 0, args.seconds, warmup=args.warmup,
                               procs=args.client_procs, peer=url)
        finally:
            bench.stop_peer()
        log(f"  p50 {ms(peer.p(50)):.1f} ms, p99 {ms(peer.p(99)):.1f} ms")
        return report(args, base, load, peer)

    return guarded(bench, started, measure, strict=args.strict,
                   said=(RuntimeError, TimeoutError))


if __name__ == "__main__":
    sys.exit(main())
