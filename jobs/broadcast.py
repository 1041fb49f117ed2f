"""Sends updates to websocket groups, only after the transaction that made them commits.

Each group is a stream with its own sequence number (kept in Redis), so a client that sees a gap,
or reconnects, knows to reload its snapshot. One message per group per batch: fewer, larger frames.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from collections import defaultdict

import redis
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

from workers import wire
from workers.protocol import PREFIX, redis_client

log = logging.getLogger(__name__)


def seq_key(group: str) -> str:
    return f"{PREFIX}:seq:{group}"


def current_seq(group: str) -> int:
    """Where a stream stands; 0 while Redis is away: a Redis that comes back empty numbers
    from 0 again, and a page must still load (a snapshot with no stream behind it yet)."""
    try:
        value = redis_client().get(seq_key(group))
    except redis.RedisError as exc:
        log.warning("stream %s: position unknown, Redis unreachable (%s)", group, exc)
        return 0
    return int(value) if value else 0


team_group = wire.team_group


class Outbox:
    """Updates gathered while a transaction runs, to publish once it commits."""

    def __init__(self):
        self.groups: dict[str, list[dict]] = defaultdict(list)

    def add(self, groups: list[str], event: dict) -> None:
        if wire.checking():
            wire.check_live(event)
        for group in groups:
            self.groups[group].append(event)

    def job(self, job_id: int, team_id: int, event: dict, *, lists: bool = True,
            parent: int | None = None) -> None:
        """A job's update, to its own stream, and with `lists` to the job lists of its team
        and of staff; a partition's also to its parent's stream (the parent's page shows it)."""
        groups = [wire.job_group(job_id)]
        if lists:
            groups += [team_group(team_id), wire.STAFF_JOBS]
        if parent:
            groups.append(wire.job_group(parent))
        self.add(groups, {**event, "job": str(job_id)})

    def node(self, event: dict) -> None:
        """A node's health: whole (every figure, each core) to its own stream, which its page
        follows; to every dashboard (`cluster`) only what a card shows, and only once it has
        moved (the broadcaster drops the rest: Cards)."""
        self.add([wire.node_group(event["node"])], event)
        self.add([wire.CLUSTER], card(event))

    def __bool__(self):
        return bool(self.groups)

    def publish_on_commit(self) -> None:
        if self:
            transaction.on_commit(self.publish)

    def publish(self) -> None:
        if self:
            broadcaster().publish(dict(self.groups))
            self.groups = defaultdict(list)


class Broadcaster:
    """Owns one event loop in a thread, so that sync code (the ingester, the web's services)
    sends group messages without an async_to_sync round trip per event.

    Each group is throttled: its first update goes out at once, and whatever arrives within
    `interval` after a frame waits and goes out as one frame, with repeated node health and job
    progress folded to their latest. So a thousand heartbeats a second make a few frames a
    second per dashboard. A frame is encoded once, not once per connected client.

    On the `cluster` stream a node's card goes out only when it moved (Cards): a thousand
    dashboards do not get two hundred unchanged nodes every second."""

    def __init__(self, interval: float | None = None, cluster_interval: float | None = None,
                 cards: Cards | None = None):
        self.interval = settings.LIVE_COALESCE_S if interval is None else interval
        # Node health comes from every node every few seconds, to every dashboard: once a
        # second is plenty for a card or a chart, and keeps a thousand dashboards cheap.
        self.cluster_interval = (settings.LIVE_CLUSTER_COALESCE_S if cluster_interval is None
                                 else cluster_interval)
        self.cards = cards or Cards()
        self.loop = asyncio.new_event_loop()
        self.layer = get_channel_layer()
        self.pending: dict[str, list[dict]] = {}  # touched only on the loop's thread
        self.last_sent: dict[str, float] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}  # one per stream that waits
        threading.Thread(target=self.loop.run_forever, name="broadcaster", daemon=True).start()

    def publish(self, groups: dict[str, list[dict]]) -> None:
        self.loop.call_soon_threadsafe(self._take, groups)

    def _take(self, groups: dict[str, list[dict]]) -> None:
        now = self.loop.time()
        due = []
        if wire.CLUSTER in groups:
            groups = dict(groups)
            groups[wire.CLUSTER] = [event for event in groups[wire.CLUSTER]
                                    if event.get("type") != "node.health"
                                    or self.cards.moved(event, now)]
            if not groups[wire.CLUSTER]:
                del groups[wire.CLUSTER]
        for name, events in groups.items():
            if name in self.pending:  # a frame for it is already waiting
                self.pending[name].extend(events)
                continue
            self.pending[name] = list(events)
            interval = self.cluster_interval if name == "cluster" else self.interval
            wait = self.last_sent.get(name, -math.inf) + interval - now
            if wait <= 0:
                due.append(name)
            else:
                self.timers[name] = self.loop.call_later(wait, self._flush, [name])
        # A node changing state goes out at once, with whatever waits on its stream: two
        # processes' windows must not swap "offline" and "back online".
        for name, events in groups.items():
            if name not in due and name in self.pending and any(
                    event.get("changed") for event in events):
                due.append(name)
        if due:
            self._flush(due)

    def _flush(self, names: list[str]) -> None:
        now = self.loop.time()
        for name in names:  # sent now: its timer, if it had one, must not send again early
            timer = self.timers.pop(name, None)
            if timer is not None:
                timer.cancel()
        names = [name for name in names if name in self.pending]
        if not names:
            return
        batches = {name: coalesce(self.pending.pop(name)) for name in names}
        for name in names:
            self.last_sent[name] = now
        # Numbered and published in one step in Redis: frames of a stream that several
        # processes publish to (web, ingester, reconciler) arrive in the order of their seq.
        keys, args = [], []
        for name in names:
            head = f'{{"type":"batch","stream":{json.dumps(name)},"seq":'
            tail = f',"events":{json.dumps(batches[name], separators=(",", ":"))}}}'
            payload = self.layer.serialize({"type": "portal.frame", "stream": name,
                                            "text": head + SEQ_MARK + tail})
            at = payload.index(SEQ_MARK.encode())
            keys.append(seq_key(name))
            args += [group_channel(name), payload[:at], payload[at + len(SEQ_MARK):]]
        try:
            redis_client().eval(_NUMBER_AND_PUBLISH, len(keys), *keys, *args)
        except Exception as exc:  # Redis away: clients will resync from their snapshot
            log.warning("broadcast skipped, Redis unreachable: %s", exc)


# The frame's seq is written in place of a mark of fixed width (a number padded with spaces,
# which JSON allows), so the serialized message keeps its length and is spliced in Redis.
SEQ_MARK = "@" * 15
_NUMBER_AND_PUBLISH = """
for i, key in ipairs(KEYS) do
  local seq = redis.call('INCR', key)
  local base = (i - 1) * 3
  redis.call('PUBLISH', ARGV[base + 1],
             ARGV[base + 2] .. string.format('%-15d', seq) .. ARGV[base + 3])
end
return #KEYS
"""


CARD_FIGURES = ("cpu", "mem")


def card(event: dict) -> dict:
    """A node.health event as a dashboard's card shows it: state, jobs, CPU, memory and each
    GPU's use; no per-core list, disks or network (the node page has those)."""
    util = event.get("utilization") or {}
    slim = {key: util[key] for key in CARD_FIGURES if key in util}
    if util.get("gpus"):
        slim["gpus"] = [{"util": gpu["util"]} for gpu in util["gpus"]
                        if isinstance(gpu, dict) and "util" in gpu]
    return {**event, "utilization": slim}


def _figures(event: dict) -> list[float | None]:
    util = event.get("utilization") or {}
    gpus = [gpu.get("util") for gpu in util.get("gpus") or ()]
    return [util.get(key) for key in CARD_FIGURES] + gpus


class Cards:
    """What each node's card last showed, to send a node's health to the dashboards only when
    it says something new: a state change, other running or slot counts, a figure moved by
    `delta` percentage points or more, or `refresh` seconds since the last (so that "seen"
    stays recent). Kept per process: each publisher decides for what it publishes."""

    def __init__(self, delta: float | None = None, refresh: float | None = None):
        self.delta = settings.LIVE_NODE_DELTA if delta is None else delta
        self.refresh = settings.LIVE_NODE_REFRESH_S if refresh is None else refresh
        self.shown: dict[str, tuple[tuple, list, float]] = {}

    def moved(self, event: dict, now: float) -> bool:
        node = event.get("node")
        fixed = (event.get("state"), event.get("running"), event.get("concurrency"))
        figures = _figures(event)
        last = self.shown.get(node)
        if not (event.get("changed") or last is None or last[0] != fixed
                or now - last[2] >= self.refresh or len(figures) != len(last[1])
                or any(self._apart(a, b) for a, b in zip(figures, last[1], strict=True))):
            return False
        self.shown[node] = (fixed, figures, now)
        return True

    def _apart(self, a, b) -> bool:
        if a is None or b is None:
            return (a is None) != (b is None)
        try:
            return abs(a - b) >= self.delta
        except TypeError:
            return a != b


def group_channel(group: str) -> str:
    """The Redis channel that channels_redis's pubsub layer uses for a group."""
    return f"{settings.CHANNEL_LAYERS['default']['CONFIG']['prefix']}__group__{group}"


def coalesce(events: list[dict]) -> list[dict]:
    """The latest health of a node and the latest progress of a job replace earlier ones (in
    the later one's place); everything else (states, log lines, metric points) is kept."""
    latest: dict[tuple, int] = {}
    for index, event in enumerate(events):
        kind = event.get("type")
        if kind == "node.health":
            latest[(kind, event.get("node"))] = index
        elif kind == "job.progress":
            latest[(kind, event.get("job"))] = index
    if len(latest) == sum(1 for e in events if e.get("type") in ("node.health", "job.progress")):
        return events
    out = []
    changed: set = set()
    for index, event in enumerate(events):
        kind = event.get("type")
        key = (kind, event.get("node") if kind == "node.health" else event.get("job"))
        if key in latest and latest[key] != index:
            if event.get("changed"):
                changed.add(key)
            continue
        if key in changed:
            event = {**event, "changed": True}
        out.append(event)
    return out


_broadcaster: Broadcaster | None = None
_lock = threading.Lock()


def broadcaster() -> Broadcaster:
    global _broadcaster
    with _lock:
        if _broadcaster is None:
            _broadcaster = Broadcaster()
    return _broadcaster
