"""The worker side of the event stream: a buffer that batches events into few XADDs.

State changes are flushed at once; progress is coalesced (the latest of an attempt wins); logs
and metrics ride along with the next flush, at most FLUSH_S later. A Redis outage keeps the
buffer and retries, so a restarted Redis loses no event that was still here.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import redis

from workers import protocol, wire
from workers.config import EVENT_FLUSH_S, EVENT_MAX_BUFFER
from workers.protocol import redis_client

log = logging.getLogger(__name__)

FLUSH_S = EVENT_FLUSH_S
MAX_BUFFER = EVENT_MAX_BUFFER
BATCH = 500

class EventSink:
    def __init__(self, client: redis.Redis | None = None):
        self._client = client
        self._lock = threading.Lock()
        self._events: list[dict] = []
        self._progress: dict[tuple[int, int], dict] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def client(self) -> redis.Redis:
        return self._client or redis_client()

    def emit(self, event: dict, *, now: bool = False) -> None:
        event.setdefault("ts", time.time())
        if wire.checking():
            wire.check_stream(event)
        with self._lock:
            if event["type"] == protocol.PROGRESS:
                self._progress[(event["job"], event["attempt"])] = event
            else:
                self._events.append(event)
                if len(self._events) > MAX_BUFFER:
                    # Only a very long Redis outage gets here; keep the newest lines.
                    self._events = self._events[-MAX_BUFFER:]
        if now:
            self.flush()
        else:
            self._ensure_thread()

    def _take(self) -> list[dict]:
        with self._lock:
            # Progress goes before the events that came after it (a finished event last).
            batch = list(self._progress.values()) + self._events
            self._events, self._progress = [], {}
        return batch

    def _put_back(self, batch: list[dict]) -> None:
        with self._lock:
            self._events = batch + self._events

    def flush(self, retry_for: float = 0.0) -> bool:
        """Send everything buffered; on a Redis error keep it and retry for up to retry_for s."""
        deadline = time.monotonic() + retry_for
        delay = 0.05
        while True:
            batch = self._take()
            if not batch:
                return True
            try:
                pipe = self.client.pipeline(transaction=False)
                for i in range(0, len(batch), BATCH):
                    pipe.xadd(protocol.EVENTS_STREAM, {"v": wire.STREAM_VERSION,
                                                       "b": json.dumps(batch[i : i + BATCH])})
                pipe.execute()
                return True
            except redis.RedisError as exc:
                self._put_back(batch)
                if time.monotonic() + delay > deadline:
                    log.warning("event stream unreachable, %d events kept: %s", len(batch), exc)
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="event-flusher", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(FLUSH_S)
            self.flush()


_sink: EventSink | None = None
_sink_pid: int | None = None


def sink() -> EventSink:
    global _sink, _sink_pid
    if _sink is None or _sink_pid != os.getpid():
        _sink, _sink_pid = EventSink(), os.getpid()
    return _sink
