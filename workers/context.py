"""The small object a job kind's code is handed: progress, log, metric, cancelled?"""

from __future__ import annotations

import time

import redis

from portal.env import env_float
from workers import protocol
from workers.events import EventSink

CANCEL_POLL_S = env_float("CANCEL_POLL_S", 0.5)


class Cancelled(Exception):
    """Raised by ctx.check() once the job's cancellation has been requested."""


class JobContext:
    def __init__(self, spec: protocol.AttemptSpec, sink: EventSink, client: redis.Redis):
        self.job_id = spec.job
        self.attempt = spec.attempt
        self.params = spec.params
        self._spec = spec
        self._sink = sink
        self._redis = client
        self._log_seq = 0
        self._steps: dict[str, int] = {}
        self._cancelled = False
        self._cancel_checked = 0.0

    def _event(self, kind: str, **fields) -> dict:
        return {"t": kind, "job": self.job_id, "a": self.attempt, "k": self._spec.token, **fields}

    def progress(self, done: float, total: float | None = None, *, unit: str = "",
                 message: str = "") -> None:
        """Report how far the job is; the sink sends only the latest per flush, so a tight loop
        cannot flood the stream."""
        fraction = None
        if total:
            fraction = max(0.0, min(1.0, done / total))
        self._sink.emit(self._event(protocol.PROGRESS, p=fraction, done=done, total=total,
                                    unit=unit, msg=message[:500]))

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

    def cancelled(self) -> bool:
        """True once a cancel was requested; asks Redis at most every CANCEL_POLL_S."""
        if self._cancelled:
            return True
        now = time.monotonic()
        if now - self._cancel_checked >= CANCEL_POLL_S:
            self._cancel_checked = now
            try:
                self._cancelled = bool(self._redis.exists(protocol.cancel_key(self.job_id)))
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
