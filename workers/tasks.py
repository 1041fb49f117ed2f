"""The Celery tasks: run an attempt described by a plain-JSON message, and a bare ping."""

import time

from workers import protocol, runner
from workers.celery import app
from workers.events import sink
from workers.protocol import redis_client


@app.task(name=protocol.TASK_NAME, bind=True, ignore_result=True)
def run_attempt(self, message: dict) -> str:
    hostname = self.request.hostname or ""
    return runner.run(
        protocol.AttemptSpec.from_message(message),
        node=protocol.node_name(hostname),
        worker=hostname,
        sink=sink(),
        client=redis_client(),
    )


@app.task(name="portal.ping", ignore_result=True)
def ping(reply_to: str | None = None) -> float:
    """A bare task through the same queues and workers: a health probe, and the baseline that
    the benchmark compares the portal's own path against. Pushes its start time to reply_to."""
    started = time.time()
    if reply_to:
        redis_client().rpush(reply_to, started)
    return started
