"""The small object a job kind's code is handed: progress, log, metric, artifact, cancelled?,
and fan-out of partitions over the cluster."""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
import re
import socket
import struct
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import redis

from workers import protocol
from workers.config import CANCEL_POLL_S, HEARTBEAT_S, REDIS_URL, env_str
from workers.config import artifacts_dir as artifacts_dir
from workers.events import EventSink

RENDEZVOUS_POLL_S = 0.1
FAN_OUT_POLL_S = 0.25
_ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def node_address() -> str:
    """The address this node's ranks listen on for their gang: NODE_ADDRESS; else the host
    name's, unless that is a loopback one (a host whose name maps to 127.0.1.1, or a node in a
    network namespace of its own), since the other ranks could not reach it there; then the
    address this node reaches the broker from, which its peers on that network can reach."""
    if configured := env_str("NODE_ADDRESS"):
        return configured
    try:
        named = socket.gethostbyname(socket.gethostname())
    except OSError:
        named = "127.0.0.1"
    if not ipaddress.ip_address(named).is_loopback:
        return named
    broker = urlsplit(REDIS_URL)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((broker.hostname or "127.0.0.1", broker.port or 6379))  # sends nothing
            return probe.getsockname()[0]
    except OSError:
        return named


def interface_of(address: str) -> str | None:
    """The name of this host's network interface that has `address` (None for none, or for a
    loopback address): a gang's ranks use it for their own connections (gloo's, nccl's), so
    that they too go over the network the rendezvous address is on."""
    try:
        if ipaddress.ip_address(address).is_loopback:
            return None
    except ValueError:  # a host name, not an address
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(probe.fileno(), SIOCGIFADDR,
                                  struct.pack("256s", name[:15].encode()))
            except OSError:  # no IPv4 address
                continue
            if socket.inet_ntoa(raw[20:24]) == address:
                return name
    return None


SIOCGIFADDR = 0x8915


class Cancelled(Exception):
    """Raised by ctx.check() once the job's cancellation has been requested."""


class LeaseKeeper:
    """While a partition runs inside its parent's process (which the node agent reports, not
    the partition), renew the partition's lease from here."""

    def __init__(self, sink: EventSink, spec: protocol.AttemptSpec):
        self.sink, self.spec = sink, spec
        self.done = threading.Event()

    def __enter__(self):
        threading.Thread(target=self._renew, name="lease-keeper", daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.done.set()

    def _renew(self) -> None:
        while not self.done.wait(HEARTBEAT_S):
            self.sink.emit({"type": protocol.LEASE, "job": self.spec.job,
                            "attempt": self.spec.attempt, "token": self.spec.token}, now=True)


class PartitionFailed(Exception):
    """A fan-out partition failed after its own retries: the parent job fails with it."""


class JobContext:
    def __init__(self, spec: protocol.AttemptSpec, sink: EventSink, client: redis.Redis, *,
                 node: str = "", worker: str = ""):
        self.job_id = spec.job
        self.attempt = spec.attempt
        self.params = spec.params
        self.parent = spec.parent  # set when this job is a partition of another's fan-out
        self.partition = spec.partition
        # A gang's rank: rank 0 of 1 for a job that runs in one slot.
        self.rank = spec.rank or 0
        self.world_size = spec.world_size or 1
        self._spec = spec
        self._node, self._worker = node, worker
        self._sink = sink
        self._redis = client
        self._log_seq = 0
        self._steps: dict[str, int] = {}
        self._cancelled = False
        self._cancel_checked = 0.0

    def _event(self, event_type: str, /, **fields) -> dict:
        ranked = {} if self._spec.rank is None else {"rank": self._spec.rank}
        return {"type": event_type, "job": self.job_id, "attempt": self.attempt,
                "token": self._spec.token, **ranked, **fields}

    def progress(self, done: float, total: float | None = None, *, unit: str = "",
                 message: str = "") -> None:
        """Report how far the job is; the sink sends only the latest per flush, so a tight loop
        cannot flood the stream."""
        fraction = None
        if total:
            fraction = max(0.0, min(1.0, done / total))
        self._sink.emit(self._event(protocol.PROGRESS, fraction=fraction, done=done,
                                    total=total, unit=unit, message=message[:500]))

    def log(self, text: str, level: str = "info") -> None:
        self._log_seq += 1
        self._sink.emit(self._event(protocol.LOG, seq=self._log_seq, level=level,
                                    text=str(text)[:10_000]))

    def metric(self, name: str, value: float, step: int | None = None) -> None:
        if step is None:
            step = self._steps.get(name, -1) + 1
        self._steps[name] = step
        self._sink.emit(self._event(protocol.METRIC, name=name[:100], value=float(value),
                                    step=step))

    def artifact(self, path: str | os.PathLike, name: str | None = None) -> str:
        """Keep a file the job produced (a model, a report): copied to the artifact store and
        listed on the job's page and at /api/v1/jobs/{id}/artifacts/. Returns its name."""
        source = Path(path)
        name = name or source.name
        if not _ARTIFACT_NAME.match(name):
            raise ValueError(f"artifact name {name!r}: letters, digits, '.', '_' and '-' only")
        folder = artifacts_dir() / str(self.job_id) / str(self.attempt)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        partial = folder / f".{name}.partial"
        digest = hashlib.sha256()
        with open(source, "rb") as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
        os.replace(partial, target)
        self._sink.emit(self._event(protocol.ARTIFACT, name=name, size=target.stat().st_size,
                                    sha256=digest.hexdigest(),
                                    path=str(target.relative_to(artifacts_dir()))))
        return name

    def fan_out(self, kind: str, partitions: list[dict], *, queue: str | None = None) -> list:
        """Run `kind` once per partition (a dict of its parameters) as child jobs on any worker,
        and return their results in partition order.

        The portal records the children durably: a partition whose node dies, or that fails, is
        retried on its own (up to this job's max_attempts); their progress is summed into this
        job's; cancelling this job cancels them. If this job's own attempt is lost, the next one
        calls fan_out again and finds the same partitions, finished ones included: nothing runs
        twice that had finished. Raises PartitionFailed if a partition fails for good."""
        if not partitions:
            return []
        self._sink.emit(self._event(protocol.FANOUT, kind=kind, parts=list(partitions),
                                    queue=queue), now=True)
        count = len(partitions)
        key = protocol.parts_key(self.job_id)
        while True:
            self.check()
            try:
                finished = self._redis.hgetall(key)
            except redis.RedisError:
                finished = {}
            outcomes = {int(index): json.loads(value) for index, value in finished.items()
                        if int(index) < count}
            if len(outcomes) == count:
                break
            if not self._help(outcomes, count):
                time.sleep(FAN_OUT_POLL_S)
        failed = sorted(i for i, outcome in outcomes.items() if outcome["state"] != "succeeded")
        if failed:
            first = outcomes[failed[0]]
            raise PartitionFailed(f"{len(failed)} of {count} partitions failed; partition "
                                  f"{failed[0]}: {first['state']} {first.get('error') or ''}"
                                  .strip())
        return [outcomes[i].get("result") for i in range(count)]

    def _help(self, finished: dict, count: int) -> bool:
        """Run here one of this fan-out's partitions that no worker has started. A waiting
        parent holds a worker slot: were every slot held by a waiting parent, their partitions
        would never start; this way a parent always gets its own work done. The start is
        claimed like any other, so the partition's queued message, when a worker takes it, is
        dropped. Returns whether it ran one."""
        from workers import runner  # it imports this module

        try:
            specs = self._redis.hgetall(protocol.part_specs_key(self.job_id))
        except redis.RedisError:
            return False
        for index, message in sorted(specs.items(), key=lambda item: int(item[0])):
            if int(index) in finished or int(index) >= count:
                continue
            spec = protocol.AttemptSpec.from_message(json.loads(message))
            if self._redis.exists(protocol.start_key(spec.job, spec.attempt)):
                continue  # running (or ran) elsewhere
            with LeaseKeeper(self._sink, spec):
                outcome = runner.run(spec, node=self._node, worker=self._worker, sink=self._sink,
                                     client=self._redis)
            if outcome != "skipped":
                return True
        return False

    def rendezvous(self, timeout_s: float) -> tuple[str, int]:
        """Where the gang's rank 0 listens. Rank 0 picks a free port on its node's address and
        reports it; the others wait until the portal has recorded it (it publishes only the
        current attempt's), stopping early if the gang is stopped meanwhile."""
        if self.rank == 0:
            address = node_address()
            with socket.socket() as sock:
                sock.bind((address, 0))
                port = sock.getsockname()[1]
            self._sink.emit(self._event(protocol.RENDEZVOUS, address=address, port=port),
                            now=True)
            return address, port
        key = protocol.rendezvous_key(self.job_id, self.attempt)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check()
            try:
                found = self._redis.get(key)
            except redis.RedisError:
                found = None
            if found:
                address, _, port = found.decode().rpartition(":")
                return address, int(port)
            time.sleep(RENDEZVOUS_POLL_S)
        raise TimeoutError(f"rank {self.rank}: rank 0 did not report where it listens within "
                           f"{timeout_s:g} s")

    def cancelled(self) -> bool:
        """True once a cancel was requested, or the portal gave this attempt up (it was lost
        and moved on): asks Redis at most every CANCEL_POLL_S."""
        if self._cancelled:
            return True
        now = time.monotonic()
        if now - self._cancel_checked >= CANCEL_POLL_S:
            self._cancel_checked = now
            try:
                self._cancelled = bool(self._redis.exists(
                    protocol.cancel_key(self.job_id),
                    protocol.stop_key(self.job_id, self.attempt)))
            except redis.RedisError:
                pass  # the agent's hard stop still applies; keep working meanwhile
        return self._cancelled

    def check(self) -> None:
        """Raise Cancelled if the job was cancelled: call it in a loop."""
        if self.cancelled():
            raise Cancelled()

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early (with Cancelled) if the job is cancelled meanwhile."""
        end = time.monotonic() + max(0.0, seconds)
        while True:
            self.check()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, CANCEL_POLL_S))
