"""Redis killed, again and again, under a busy worker node.

Each round fills the node with attempts (two running, more prefetched), kills Redis at a
random moment and starts it again empty, as a Redis without persistence comes back. The node
must then take work again: a probe task sent after the restart has to come back, and a fresh
attempt has to start. The worker runs under the same supervision as `make run`, so a worker
that died anyway is started again, and counted.

    python -m chaos.redis_loss --kills 50 --seed 1        (what `make chaos-redis` runs)
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from portal.cluster import Cluster, Supervisor, free_port
from tests.services import RedisServer

NODE = "rk1"


@dataclass
class Outcome:
    kills: int = 0
    worker_exits: int = 0
    unrecoverable: int = 0
    probes_lost: int = 0
    attempts_not_started: int = 0
    recovery_s: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unrecoverable or self.probes_lost or self.attempts_not_started)

    def table(self) -> str:
        rec = sorted(self.recovery_s) or [0.0]
        rows = [("Redis kills", self.kills),
                ("worker exits (restarted)", self.worker_exits),
                ("'Unrecoverable error' in the worker log", self.unrecoverable),
                ("probes sent after a restart that never came back", self.probes_lost),
                ("attempts sent after a restart that never started", self.attempts_not_started),
                ("recovery p50 / max (s)", f"{statistics.median(rec):.2f} / {max(rec):.2f}")]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


class Node:
    """One worker node on a Redis that this run owns, under supervision."""

    def __init__(self, redis: RedisServer, log_path: Path):
        self.redis = redis
        self.log_path = log_path
        self.log = open(log_path, "w", buffering=1)
        data = Path(tempfile.mkdtemp(prefix="portal-redis-loss-"))
        env = {**os.environ, "REDIS_URL": redis.url, "DATA_DIR": str(data),
               "PYTHONUNBUFFERED": "1", "HEARTBEAT_S": "0.5", "WORKER_PREFETCH": "4",
               "BROKER_VISIBILITY_TIMEOUT": "8", "BROKER_RESTORE_EVERY_S": "2"}
        self.cluster = Cluster(env, log=self.log)
        self.cluster.start_worker(NODE, concurrency=2, queues="cpu")
        self.stopping = threading.Event()
        self.supervisor = Supervisor(self.cluster, say=self._say)
        self.supervisor.MAX_BACKOFF_S = 2.0
        threading.Thread(target=self.supervisor.run, args=(self.stopping, 0.2),
                         daemon=True).start()

    def _say(self, text: str) -> None:
        self.log.write(f"[supervisor] {text}\n")

    def stop(self) -> None:
        self.stopping.set()
        self.cluster.stop()
        self.log.close()


def client():
    from workers.protocol import redis_client

    return redis_client()


def send_attempts(count: int, seconds: float, first: int) -> list[tuple[int, int]]:
    from workers import protocol
    from workers.celery import app

    sent = []
    for job in range(first, first + count):
        spec = {"job": job, "attempt": 1, "token": uuid.uuid4().hex, "kind": "diag.sleep",
                "params": {"seconds": seconds}}
        app.send_task(protocol.TASK_NAME, args=[spec], queue="cpu")
        sent.append((job, 1))
    return sent


def probe(timeout: float) -> float | None:
    """Seconds until a bare task sent now has run on the node (None: it never did)."""
    from workers.celery import app

    reply = f"chaos:probe:{uuid.uuid4().hex}"
    began = time.monotonic()
    deadline = began + timeout
    while time.monotonic() < deadline:
        try:
            app.send_task("portal.ping", args=[reply], queue="cpu")
            if client().blpop([reply], timeout=min(3.0, max(0.1, deadline - time.monotonic()))):
                return time.monotonic() - began
        except Exception:  # Redis still starting: send again
            time.sleep(0.2)
    return None


def started(attempts: list[tuple[int, int]], timeout: float) -> int:
    """How many of these attempts never claimed their start within the timeout."""
    from workers import protocol

    deadline = time.monotonic() + timeout
    left = set(attempts)
    while left and time.monotonic() < deadline:
        left = {a for a in left if not client().exists(protocol.start_key(*a))}
        time.sleep(0.2)
    return len(left)


def run(kills: int, seed: int, log_path: Path, say=print) -> Outcome:
    rng = random.Random(seed)
    redis = RedisServer(free_port()).start()
    os.environ["REDIS_URL"] = redis.url  # this process sends through the same broker
    node = Node(redis, log_path)
    outcome = Outcome()
    job = 1
    try:
        if probe(60) is None:
            raise SystemExit("the worker node never took a first task")
        for round_ in range(kills):
            send_attempts(8, rng.uniform(0.5, 2.0), job)
            job += 8
            time.sleep(rng.uniform(0.1, 1.5))  # two running, the rest prefetched
            redis.restart()
            outcome.kills += 1
            took = probe(60)
            if took is None:
                outcome.probes_lost += 1
                say(f"round {round_}: the node took no task within 60 s of Redis coming back")
                continue
            outcome.recovery_s.append(took)
            fresh = send_attempts(2, 0.1, job)
            job += 2
            outcome.attempts_not_started += started(fresh, 60)
    finally:
        outcome.worker_exits = sum(node.supervisor.restarts.values())
        node.stop()
        redis.cleanup()
    outcome.unrecoverable = log_path.read_text(errors="replace").count("Unrecoverable error")
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log", type=Path, default=Path("test-artifacts/redis-loss.log"))
    args = parser.parse_args(argv)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    outcome = run(args.kills, args.seed, args.log)
    print(f"Redis killed {args.kills} times under a busy worker (seed {args.seed}):")
    print(outcome.table())
    print("OK" if outcome.ok else f"FAILED (worker log: {args.log})")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
