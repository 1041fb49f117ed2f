"""What the portal and the workers say to each other through Redis: key names and messages.

Workers hold no database credentials: a task message carries everything an attempt needs, and
everything a worker has to say goes onto one Redis Stream that the portal's ingester reads.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import asdict, dataclass, field

import redis

from workers.config import REDIS_PREFIX, REDIS_URL

PREFIX = REDIS_PREFIX
EVENTS_STREAM = f"{PREFIX}:events"
INGEST_GROUP = "ingest"
# What each ingester has done since it started, a hash per consumer (this + its name):
# batches written, events in them, and seconds spent writing them (from the read's return to
# the acknowledgement). Busy seconds over wall seconds is how near its limit the serial writer
# is: a batch's rows, its admission pass and its broadcast all wait for the one before.
INGEST_STATS = f"{PREFIX}:ingest:stats:"
# Sorted set of "job:attempt" members whose task message is in the broker and not yet started.
DISPATCHED = f"{PREFIX}:dispatched"
TASK_NAME = "portal.run_attempt"


def start_key(job_id: int, attempt: int, rank: int | None = None) -> str:
    """Set once, when one copy of an attempt's message starts (of each rank, for a gang): a
    second copy is then dropped."""
    return f"{PREFIX}:started:{job_id}:{attempt}" + (f":{rank}" if rank else "")


def rendezvous_key(job_id: int, attempt: int) -> str:
    """Where a gang attempt's rank 0 listens, "address:port": set by the portal once it has
    recorded what rank 0 reported, read by the other ranks before they start training."""
    return f"{PREFIX}:rendezvous:{job_id}:{attempt}"


def node_queue(node: str) -> str:
    """The queue only one node takes from: a gang's ranks are sent to the nodes that admission
    placed them on."""
    return f"node@{node}"


def cancel_key(job_id: int) -> str:
    return f"{PREFIX}:cancel:{job_id}"


def stop_key(job_id: int, attempt: int) -> str:
    """Set when the portal no longer gives this attempt to anyone (it was lost, moved or ended
    elsewhere): the node that still runs it stops it, and a copy not yet started never starts."""
    return f"{PREFIX}:stop:{job_id}:{attempt}"


# How long a cancel or stop flag lives: longer than any attempt may run.
FLAG_TTL_S = 8 * 24 * 3600


def parts_key(parent: int) -> str:
    """Hash of a fan-out's finished partitions: index -> {"state", "result", "error"}, written by
    the portal after each partition's end is committed; the parent's attempt waits on it."""
    return f"{PREFIX}:parts:{parent}"


def part_specs_key(parent: int) -> str:
    """Hash of a fan-out's partitions as last dispatched: index -> the attempt's message. A
    parent waiting for them runs one itself when it can claim its start (see ctx.fan_out)."""
    return f"{PREFIX}:part-specs:{parent}"


def drain_key(node: str) -> str:
    """Present while the node is draining: it finishes what it runs and takes nothing new."""
    return f"{PREFIX}:drain:{node}"


MAX_NODE_LABELS = 4


def parse_labels(text: str) -> dict[str, str]:
    """NODE_LABELS, "gpu=a100,zone=b": what a node offers to jobs that ask for labels."""
    labels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        if not key.strip() or not value.strip():
            raise ValueError(f"NODE_LABELS: {item!r} is not key=value")
        labels[key.strip()] = value.strip()
    if len(labels) > MAX_NODE_LABELS:
        raise ValueError(f"NODE_LABELS: at most {MAX_NODE_LABELS} labels")
    return labels


def label_queue(pool: str, labels: dict[str, str]) -> str:
    """The queue of a job that needs labels: "gpu@gpu=a100,zone=b"; a job without is sent to
    its pool's queue."""
    if not labels:
        return pool
    return f"{pool}@{','.join(f'{k}={v}' for k, v in sorted(labels.items()))}"


def label_queues(pools, labels: dict[str, str]) -> list[str]:
    """Every queue a node with these labels serves besides its pools: one per pool and
    non-empty subset of its labels, so a job asking for any of them finds it."""
    items = sorted(labels.items())
    subsets = [dict(c) for n in range(1, len(items) + 1)
               for c in itertools.combinations(items, n)]
    return [label_queue(pool, subset) for pool in pools for subset in subsets]


def dispatch_member(job_id: int, attempt: int, rank: int | None = None) -> str:
    return f"{job_id}:{attempt}" + (f":{rank}" if rank else "")


@dataclass(frozen=True)
class AttemptSpec:
    """One attempt of one job, as the task message carries it (plain JSON)."""

    job: int
    attempt: int
    token: str
    kind: str
    params: dict
    timeout_s: int | None = None
    parent: int | None = None  # for a partition of a fan-out: the job that fanned out
    partition: int | None = None
    # The job's team, whose data space it works in, and the reads other teams granted it:
    # {"paths": ["@u/prefix", ...], "tables": ["u.table", ...]}.
    team: str | None = None
    grants: dict = field(default_factory=dict)
    # For a gang: this message's rank of world_size ranks (None: a job of one rank).
    rank: int | None = None
    world_size: int = 1

    def to_message(self) -> dict:
        return asdict(self)

    @classmethod
    def from_message(cls, message: dict) -> AttemptSpec:
        return cls(**{name: message[name] for name in cls.__dataclass_fields__ if name in message})


# Event types on the stream.
STARTED = "started"
PROGRESS = "progress"
LOG = "log"
METRIC = "metric"
FINISHED = "finished"
HEARTBEAT = "heartbeat"
ARTIFACT = "artifact"
FANOUT = "fanout"
LEASE = "lease"  # renews one attempt's lease (a partition its parent runs inline)
STOPPED = "stopped"  # a node stopped an attempt the portal no longer gave it
RENDEZVOUS = "rendezvous"  # a gang's rank 0 says where it listens


def node_name(hostname: str) -> str:
    """A Celery hostname "w1@box" names node "w1"."""
    return hostname.split("@", 1)[0] if hostname else "unknown"


_client: redis.Redis | None = None
_client_pid: int | None = None


def redis_client() -> redis.Redis:
    """One client per process (a forked pool child makes its own)."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis.from_url(
            REDIS_URL, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30
        )
        _client_pid = os.getpid()
    return _client
