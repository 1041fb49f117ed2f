"""The wire contract: every event that crosses a process, typed, in one place.

- Stream events: what workers put on the Redis Stream for the ingester (version 2: full field
  names; version 1 entries, with one-letter names, are still read).
- Live events: what the portal sends to websocket groups after a commit.
- Group names: who hears what.

With PORTAL_WIRE_CHECK=1 (the tests set it, for every process they start) each event is checked
against its type where it is built, and a mismatch raises. Importable without Django.
"""

from __future__ import annotations

import os
import re
from functools import cache
from typing import (
    Any,
    Literal,
    NotRequired,  # pydantic reads these on Python 3.11
)

from pydantic import ConfigDict, TypeAdapter, ValidationError
from typing_extensions import TypedDict

STREAM_VERSION = 2
STRICT = ConfigDict(extra="forbid")

# --- group names --------------------------------------------------------------------------

CLUSTER = "cluster"  # node health, the summary, the feed: every dashboard
STAFF_JOBS = "jobs-staff"  # every job's state, for staff's lists
ALERTS = "alerts"  # incidents, staff only


def job_group(job_id: int | str) -> str:
    return f"job-{job_id}"


def node_group(name: str) -> str:
    """One node's whole health (every figure, each core), for its page."""
    return "node-" + re.sub(r"[^A-Za-z0-9._-]", "_", name)[:90]


def team_group(team_id: int) -> str:
    """The state of a team's jobs, for the lists of its members."""
    return f"jobs-team-{team_id}"


# --- stream events (worker -> ingester) ---------------------------------------------------

class _AttemptEvent(TypedDict):
    __pydantic_config__ = STRICT  # type: ignore[misc]
    job: int
    attempt: int
    token: str
    ts: float
    rank: NotRequired[int]  # which rank of a gang said it


class Started(_AttemptEvent):
    type: Literal["started"]
    node: str
    worker: str


class Progress(_AttemptEvent):
    type: Literal["progress"]
    fraction: float | None
    done: float | None
    total: float | None
    unit: str
    message: str


class Log(_AttemptEvent):
    type: Literal["log"]
    seq: int
    level: str
    text: str


class Metric(_AttemptEvent):
    type: Literal["metric"]
    name: str
    value: float
    step: int


class Finished(_AttemptEvent):
    type: Literal["finished"]
    outcome: Literal["succeeded", "failed", "cancelled"]
    result: Any
    error: str


class Artifact(_AttemptEvent):
    type: Literal["artifact"]
    name: str
    path: str
    size: int
    sha256: str


class FanOut(_AttemptEvent):
    type: Literal["fanout"]
    kind: str
    parts: list[dict]
    queue: str | None


class Lease(_AttemptEvent):
    type: Literal["lease"]


class Rendezvous(_AttemptEvent):
    type: Literal["rendezvous"]
    address: str
    port: int


class Stopped(TypedDict):
    __pydantic_config__ = STRICT  # type: ignore[misc]
    type: Literal["stopped"]
    node: str
    job: int
    attempt: int
    reason: str
    ts: float


class Heartbeat(TypedDict):
    __pydantic_config__ = STRICT  # type: ignore[misc]
    type: Literal["heartbeat"]
    node: str
    worker: str
    attempts: list[list[Any]]  # [job, attempt, token(, rank)] of each attempt it runs
    reserved: list[list[int]]  # [job, attempt] of each message it took and has not started
    queues: list[str]
    labels: dict[str, str]
    consuming: list[str]
    concurrency: int
    util: dict
    ts: float


STREAM_EVENTS: dict[str, type] = {
    "started": Started, "progress": Progress, "log": Log, "metric": Metric,
    "finished": Finished, "artifact": Artifact, "fanout": FanOut, "lease": Lease,
    "stopped": Stopped, "heartbeat": Heartbeat, "rendezvous": Rendezvous,
}
# Version 1 names, as entries written before the upgrade still say them.
V1_NAMES = {"t": "type", "a": "attempt", "k": "token", "p": "fraction", "msg": "message"}


def from_v1(event: dict) -> dict:
    return {V1_NAMES.get(key, key): value for key, value in event.items()}


# --- live events (portal -> websockets) ---------------------------------------------------

class _LiveJobEvent(TypedDict):
    __pydantic_config__ = STRICT  # type: ignore[misc]
    job: str


class JobStateEvent(_LiveJobEvent):
    type: Literal["job.state"]
    state: str
    attempt: int
    node: str
    message: str
    progress: float | None
    error: str
    kind: str
    name: str
    result: Any
    started_at: NotRequired[str | None]
    finished_at: NotRequired[str | None]


class JobProgressEvent(_LiveJobEvent):
    type: Literal["job.progress"]
    progress: float | None
    message: str
    done: float | None
    total: float | None
    unit: str


class JobLogEvent(_LiveJobEvent):
    type: Literal["job.log"]
    attempt: int
    rank: NotRequired[int]
    seq: int
    level: str
    text: str
    ts: str


class JobMetricEvent(_LiveJobEvent):
    type: Literal["job.metric"]
    name: str
    step: int
    value: float


class JobArtifactEvent(_LiveJobEvent):
    type: Literal["job.artifact"]
    name: str
    size: int | None


class JobNoticeEvent(_LiveJobEvent):
    type: Literal["job.notice"]
    text: str


class NodeHealthEvent(TypedDict):
    __pydantic_config__ = STRICT  # type: ignore[misc]
    type: Literal["node.health"]
    node: str
    state: str
    running: int
    concurrency: int
    utilization: dict
    changed: bool
    last_heartbeat: str | None


class ClusterSummaryEvent(TypedDict):
    __pydantic_config__ = STRICT  # type: ignore[misc]
    type: Literal["cluster.summary"]
    at: str
    jobs_by_state: dict[str, int]
    queues: list[dict]
    finished_per_minute: dict[str, list]


class AlertEvent(TypedDict):
    __pydantic_config__ = STRICT  # type: ignore[misc]
    type: Literal["alert.fired", "alert.resolved"]
    id: int
    rule: str
    kind: str
    subject: str
    message: str
    fired_at: str
    resolved_at: str | None


class FeedEvent(TypedDict):
    """A line of the cluster's feed, as recorded (audit.feed): to a job's team and staff, or,
    for a node, to every dashboard. `id` orders the lines and tells a copy seen before."""

    __pydantic_config__ = STRICT  # type: ignore[misc]
    type: Literal["feed.event"]
    id: int
    at: str
    kind: str
    level: str
    text: str
    job: str | None
    node: str


LIVE_EVENTS: dict[str, type] = {
    "job.state": JobStateEvent, "job.progress": JobProgressEvent, "job.log": JobLogEvent,
    "job.metric": JobMetricEvent, "job.artifact": JobArtifactEvent,
    "job.notice": JobNoticeEvent, "node.health": NodeHealthEvent,
    "cluster.summary": ClusterSummaryEvent, "alert.fired": AlertEvent,
    "alert.resolved": AlertEvent, "feed.event": FeedEvent,
}


class WireError(ValueError):
    """An event that does not match its type."""


@cache
def _adapter(kind: type) -> TypeAdapter:
    return TypeAdapter(kind)


def check(event: dict, table: dict[str, type]) -> dict:
    """Raise WireError unless `event` is one of `table`'s types, exactly."""
    kind = table.get(event.get("type")) if isinstance(event, dict) else None
    if kind is None:
        raise WireError(f"unknown event type: {event!r:.300}")
    try:
        _adapter(kind).validate_python(event, strict=False)
    except ValidationError as exc:  # only that: a job's time limit may strike in here
        raise WireError(f"{event.get('type')} event does not match its type: {exc}") from None
    return event


def checking() -> bool:
    return os.environ.get("PORTAL_WIRE_CHECK") == "1"


def check_stream(event: dict) -> dict:
    return check(event, STREAM_EVENTS)


def check_live(event: dict) -> dict:
    return check(event, LIVE_EVENTS)
