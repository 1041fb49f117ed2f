"""The Celery app, shared by the portal (which sends) and the workers (which run).

It reads only the environment, never Django's settings or database: a worker needs Redis alone.
"""

from celery import Celery

from workers import broker
from workers.config import (
    BROKER_RESTORE_EVERY_S,
    BROKER_VISIBILITY_TIMEOUT,
    REDIS_URL,
    WORKER_PREFETCH,
)

broker.install()

# No Django fix-up: a worker must never load the portal's settings or touch its database.
app = Celery("portal", broker=REDIS_URL, include=["workers.tasks"], fixups=[])
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_ignore_result=True,
    result_backend=None,
    # Ack on start: a lost attempt comes back through the portal's lease, not a redelivery.
    task_acks_late=False,
    worker_prefetch_multiplier=WORKER_PREFETCH,
    # A message a worker took but had not started comes back to the queue this long after (its
    # worker died, or sat on it): a second copy is harmless, since an attempt starts only once.
    broker_transport_options={
        "visibility_timeout": BROKER_VISIBILITY_TIMEOUT,
        "unacked_restore_interval": BROKER_RESTORE_EVERY_S,
        "unacked_restore_throttle": 1,
    },
    broker_connection_retry_on_startup=True,
    task_default_queue="cpu",
    worker_send_task_events=False,
    task_send_sent_event=False,
    worker_hijack_root_logger=True,
)


def _add_agent():
    from workers.agent import NodeAgentStep

    app.steps["worker"].add(NodeAgentStep)


_add_agent()
