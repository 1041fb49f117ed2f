"""The one Celery task: run an attempt described by a plain-JSON message."""

from portal.celery import app
from workers import protocol, runner
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
