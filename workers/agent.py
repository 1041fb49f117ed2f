"""The node agent: a thread in each worker's main process.

Every HEARTBEAT_S it reports the node's utilization and the attempts it runs (which renews their
leases). It is also the backstop for cancellation: an attempt whose job was cancelled and that has
not stopped by itself within CANCEL_GRACE_S is reported cancelled and its pool process killed,
which ends that job alone.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import redis
from celery import bootsteps
from celery.worker import state as worker_state

from workers import protocol
from workers.config import CANCEL_GRACE_S, HEARTBEAT_S, node_labels
from workers.events import EventSink
from workers.protocol import redis_client
from workers.runner import finished_event
from workers.utilization import Sampler

log = logging.getLogger(__name__)
TICK_S = min(0.5, HEARTBEAT_S)


def active_attempts() -> list[tuple[protocol.AttemptSpec, int | None]]:
    """The attempts this worker's pool is running, with the pid of the process running each."""
    found = []
    for request in list(worker_state.active_requests):
        if request.name != protocol.TASK_NAME or not request.args:
            continue
        found.append((protocol.AttemptSpec.from_message(request.args[0]), request.worker_pid))
    return found


def waiting_attempts() -> list[list[int]]:
    """Attempts this worker took from the broker but has not started ([job, attempt]): if the
    node dies, their messages die with it, and the portal sends them again."""
    active = {id(request) for request in list(worker_state.active_requests)}
    return [[spec["job"], spec["attempt"]] for request in list(worker_state.reserved_requests)
            if id(request) not in active and request.name == protocol.TASK_NAME and request.args
            for spec in [request.args[0]]]


class Agent:
    def __init__(self, hostname: str, queues: list[str], concurrency: int, worker=None,
                 labels: dict[str, str] | None = None):
        self.worker = worker
        self.hostname = hostname
        self.node = protocol.node_name(hostname)
        self.labels = labels or {}
        self.pools = [queue for queue in queues if "@" not in queue]
        # Its pools; for jobs that ask for labels, a queue per pool and subset of its own; and
        # its node's queue, where the gang ranks placed on it are sent (all taken up on the
        # first tick like an undrained node's queues).
        self.queues = [*self.pools, *protocol.label_queues(self.pools, self.labels),
                       protocol.node_queue(self.node)]
        self.concurrency = concurrency
        self.sink = EventSink()
        self.sampler = Sampler()
        self._stop = threading.Event()
        self._cancel_seen: dict[tuple[int, int], float] = {}

    def heartbeat(self) -> None:
        attempts = [[spec.job, spec.attempt, spec.token, *([] if spec.rank is None
                                                           else [spec.rank])]
                    for spec, _ in active_attempts()]
        self.sink.emit({"type": protocol.HEARTBEAT, "node": self.node, "worker": self.hostname,
                        "attempts": attempts, "reserved": waiting_attempts(),
                        "queues": self.pools, "labels": self.labels,
                        "consuming": sorted(q for q in self.consuming() if "@" not in q),
                        "concurrency": self.concurrency, "util": self.sampler.sample()},
                       now=True)

    def enforce_cancels(self, client: redis.Redis) -> None:
        """Attempts whose job was cancelled, or that the portal no longer gives this node (it
        declared them lost and moved on, or ended them), are asked to stop at once (the job's
        context sees the flag) and, if still running after CANCEL_GRACE_S, killed, so that
        their slots come free."""
        running = active_attempts()
        if not running:
            self._cancel_seen.clear()
            return
        flags = client.mget([key for spec, _ in running for key in (
            protocol.cancel_key(spec.job), protocol.stop_key(spec.job, spec.attempt))])
        now = time.monotonic()
        live = set()
        for (spec, pid), cancel, stop in zip(running, flags[::2], flags[1::2], strict=True):
            if not (cancel or stop):
                continue
            key = (spec.job, spec.attempt)
            live.add(key)
            if key not in self._cancel_seen and stop:
                log.warning("node %s: job %s attempt %s is no longer this node's: stopping it",
                            self.node, spec.job, spec.attempt)
                self.sink.emit({"type": protocol.STOPPED, "node": self.node, "job": spec.job,
                                "attempt": spec.attempt,
                                "reason": "superseded: its slot is freed"},
                               now=True)
            first = self._cancel_seen.setdefault(key, now)
            if now - first >= CANCEL_GRACE_S and pid:
                log.warning("job %s attempt %s still running %.0f s after it was told to stop: "
                            "killing process %s", spec.job, spec.attempt, CANCEL_GRACE_S, pid)
                if cancel and not stop:
                    self.sink.emit(finished_event(spec, "cancelled",
                                                  error="stopped by force after the cancel"))
                    self.sink.flush(retry_for=5)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._cancel_seen = {k: v for k, v in self._cancel_seen.items() if k in live}

    def consuming(self) -> set[str]:
        consumer = getattr(self.worker, "consumer", None)
        task_consumer = getattr(consumer, "task_consumer", None)
        if task_consumer is None:
            return set(self.queues)
        return {queue.name for queue in task_consumer.queues}

    def follow_drain(self, client: redis.Redis) -> None:
        """A draining node finishes what it runs and takes nothing new: it stops consuming its
        queues, and starts again when undrained. The remote-control commands it sends itself
        run in the worker's own loop; checked again each tick, since they travel by pub/sub."""
        if self.worker is None:
            return
        draining = bool(client.exists(protocol.drain_key(self.node)))
        consuming = self.consuming()
        control = self.worker.app.control
        if draining:
            for queue in consuming:
                control.cancel_consumer(queue, destination=[self.hostname], reply=False)
        else:
            for queue in set(self.queues) - consuming:
                control.add_consumer(queue, destination=[self.hostname], reply=False)

    def run(self) -> None:
        last_beat = 0.0
        while not self._stop.is_set():
            try:
                client = redis_client()
                self.follow_drain(client)
                if time.monotonic() - last_beat >= HEARTBEAT_S:
                    last_beat = time.monotonic()
                    self.heartbeat()
                self.enforce_cancels(client)
            except Exception:  # the agent must outlive any one bad tick
                log.exception("node agent tick failed")
            self._stop.wait(TICK_S)

    def stop(self) -> None:
        self._stop.set()


class NodeAgentStep(bootsteps.StartStopStep):
    """Starts the agent beside the worker's pool."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.agent: Agent | None = None
        self.thread: threading.Thread | None = None

    def start(self, worker):
        queues = [q.name for q in worker.app.amqp.queues.consume_from.values()] \
            if worker.app.amqp.queues.consume_from else []
        self.agent = Agent(worker.hostname, queues, worker.concurrency, worker=worker,
                           labels=protocol.parse_labels(node_labels()))
        self.thread = threading.Thread(target=self.agent.run, name="node-agent", daemon=True)
        self.thread.start()

    def stop(self, worker):
        if self.agent:
            self.agent.stop()
