"""Sends updates to websocket groups, only after the transaction that made them commits.

Each group is a stream with its own sequence number (kept in Redis), so a client that sees a gap,
or reconnects, knows to reload its snapshot. One message per group per batch: fewer, larger frames.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict

from channels.layers import get_channel_layer
from django.db import transaction

from workers.protocol import PREFIX, redis_client

log = logging.getLogger(__name__)


def seq_key(group: str) -> str:
    return f"{PREFIX}:seq:{group}"


def current_seq(group: str) -> int:
    value = redis_client().get(seq_key(group))
    return int(value) if value else 0


class Outbox:
    """Updates gathered while a transaction runs, to publish once it commits."""

    def __init__(self):
        self.groups: dict[str, list[dict]] = defaultdict(list)

    def add(self, groups: list[str], event: dict) -> None:
        for group in groups:
            self.groups[group].append(event)

    def job(self, job_id: int, owner_id: int, event: dict, *, lists: bool = True) -> None:
        groups = [f"job-{job_id}"]
        if lists:
            groups += [f"jobs-owner-{owner_id}", "jobs-staff"]
        self.add(groups, {**event, "job": str(job_id)})

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
    sends group messages without an async_to_sync round trip per event."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.layer = get_channel_layer()
        threading.Thread(target=self.loop.run_forever, name="broadcaster", daemon=True).start()

    def publish(self, groups: dict[str, list[dict]]) -> None:
        names = list(groups)
        try:
            pipe = redis_client().pipeline(transaction=False)
            for name in names:
                pipe.incr(seq_key(name))
            seqs = pipe.execute()
        except Exception as exc:  # Redis away: clients will resync from their snapshot
            log.warning("broadcast skipped, Redis unreachable: %s", exc)
            return
        messages = [
            (name, {"type": "portal.events", "stream": name, "seq": seq, "events": groups[name]})
            for name, seq in zip(names, seqs, strict=True)
        ]
        asyncio.run_coroutine_threadsafe(self._send(messages), self.loop)

    async def _send(self, messages) -> None:
        results = await asyncio.gather(
            *(self.layer.group_send(name, message) for name, message in messages),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, Exception):
                log.warning("group_send failed: %s", result)


_broadcaster: Broadcaster | None = None
_lock = threading.Lock()


def broadcaster() -> Broadcaster:
    global _broadcaster
    with _lock:
        if _broadcaster is None:
            _broadcaster = Broadcaster()
    return _broadcaster
