"""Recovery on the portal side: it repairs what dying parts leave behind (portal.reconciler
runs it in a loop of its own).

- A running attempt whose lease expired (its node stopped heartbeating) is lost: the job goes
  back to queued as a new attempt while attempts remain, else it fails saying the node was lost.
- A queued job whose task message is gone from Redis (a restart) is sent again.
- A cancel that Redis forgot is raised again from the database; silent nodes go offline.

Each repair is a guarded claim, so two reconcilers, or a late worker, cannot both win.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import timedelta

import redis
from django.conf import settings

from jobs import admission, dependencies, dispatch, fanout, lifecycle, selectors
from jobs.broadcast import Outbox
from jobs.ingest import ALIVE_KEY, node_event
from jobs.models import Job, JobState, Node, NodeState
from jobs.services import signal_cancel, signal_drain
from workers import protocol, wire
from workers.celery import app

log = logging.getLogger(__name__)
BATCH = 500
MAX_INGEST_BACKLOG = 1000


def ingester_caught_up(client: redis.Redis) -> bool:
    """Leases are only as fresh as the ingester: never expire them while it lags or is down."""
    alive = client.get(ALIVE_KEY)
    if not alive or time.time() - float(alive) > 10:
        return False
    for group in client.xinfo_groups(protocol.EVENTS_STREAM):
        name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
        if name == protocol.INGEST_GROUP:
            backlog = (group.get("lag") or 0) + (group.get("pending") or 0)
            return backlog < MAX_INGEST_BACKLOG
    return False


def recover_lost(now) -> int:
    expired = list(Job.objects.filter(state=JobState.RUNNING, lease_expires_at__lt=now)
                   .order_by("lease_expires_at")[:BATCH])
    for job in expired:
        recover_one(job, now)
    return len(expired)


def recover_one(job: Job, now) -> bool:
    return lifecycle.lose(job, now)


def redispatch_missing(client: redis.Redis, now, suspects: dict[int, int]) -> int:
    """Queued jobs whose message is not marked in Redis any more are sent again, once they have
    been seen so on two passes in a row: a job that has just started has lost its marker too,
    and the ingester needs a moment to record it as running."""
    cutoff = now - timedelta(seconds=settings.DISPATCH_GRACE_S)
    queued = list(Job.objects.filter(state=JobState.QUEUED, dispatched_at__lt=cutoff)
                  .order_by("dispatched_at")[:BATCH])
    seen_before = dict(suspects)
    suspects.clear()
    if not queued:
        return 0
    scores = client.zmscore(protocol.DISPATCHED,
                            [protocol.dispatch_member(job.pk, job.attempt) for job in queued])
    resend = []
    stale = now - timedelta(seconds=VISIBILITY_TIMEOUT_S + settings.DISPATCH_GRACE_S)
    in_broker = None
    for job, score in zip(queued, scores, strict=True):
        if score is not None:
            # Marked, but a message can still vanish: one a node popped as its link was cut
            # never reached it. Past the broker's visibility timeout, a message that is in no
            # queue and that no worker holds is sent again.
            if job.dispatched_at < stale:
                in_broker = broker_task_ids(client) if in_broker is None else in_broker
                if task_id(job) not in in_broker:
                    resend.append(job)
            continue
        if seen_before.get(job.pk) != job.attempt:
            suspects[job.pk] = job.attempt
        else:
            resend.append(job)
    if resend:
        log.warning("sending %d queued jobs again: their messages were lost", len(resend))
    return lifecycle.resend(resend, now)


VISIBILITY_TIMEOUT_S = app.conf.broker_transport_options["visibility_timeout"]
SCAN_LIMIT = 20_000


def task_id(job: Job) -> str:
    return dispatch.task_id(job.pk, job.attempt, job.token)


def broker_task_ids(client: redis.Redis) -> set[str]:
    """The task ids of every attempt message in the broker: waiting in a queue, or taken by a
    worker and not yet acknowledged (kombu's `unacked` hash). At most SCAN_LIMIT of each."""
    ids: set[bytes] = set()
    names = {dispatch.route(job) for job in Job.objects.filter(state=JobState.QUEUED)
             .only("queue", "labels")[:SCAN_LIMIT]}
    names |= {protocol.node_queue(name) for name in Node.objects.values_list("name", flat=True)}
    pipe = client.pipeline(transaction=False)
    for name in sorted(names):
        pipe.lrange(name, 0, SCAN_LIMIT)
    pipe.hvals("unacked")
    for reply in pipe.execute():
        for raw in reply or []:
            ids.update(TASK_ID.findall(raw if isinstance(raw, bytes) else raw.encode()))
    return {item.decode() for item in ids}


TASK_ID = re.compile(rb'"id": ?"(\d+-\d+-[^"]{1,8})"')


def reraise_cancels() -> None:
    ids = list(Job.objects.filter(state=JobState.RUNNING, cancel_requested_at__isnull=False)
               .values_list("pk", flat=True)[:BATCH])
    signal_cancel(*ids)


def reassert_drains() -> None:
    """Redis keeps nothing across a restart: the database says which nodes drain."""
    for name in Node.objects.filter(state=NodeState.DRAINING).values_list("name", flat=True):
        signal_drain(name, True)


def mark_offline(now) -> int:
    cutoff = now - timedelta(seconds=settings.NODE_OFFLINE_S)
    silent = list(Node.objects.filter(last_heartbeat__lt=cutoff)
                  .exclude(state=NodeState.OFFLINE))
    outbox = Outbox()
    for node in silent:
        if Node.objects.filter(pk=node.pk, last_heartbeat=node.last_heartbeat).update(
                state=NodeState.OFFLINE):
            node.state = NodeState.OFFLINE
            outbox.node(node_event(node, changed=True))
            resend_reserved(node, now)
    outbox.publish()
    return len(silent)


def resend_reserved(node: Node, now) -> int:
    """Messages a node had taken but not started die with it (the broker would give them back
    only after its visibility timeout): send those attempts again. Should the node return, the
    old copy finds the attempt started (or ended) and is dropped."""
    waiting = {(job, attempt) for job, attempt in node.reserved or []}
    if not waiting:
        return 0
    resend = [job for job in Job.objects.filter(pk__in={job for job, _ in waiting},
                                                state=JobState.QUEUED)
              if (job.pk, job.attempt) in waiting]
    if resend:
        log.warning("node %s lost with %d unstarted jobs: sending them again", node.name,
                    len(resend))
    return lifecycle.resend(resend, now)


def publish_summary(now) -> None:
    """Every dashboard's jobs-by-state, queue and throughput charts, computed once a pass here
    rather than once per open dashboard."""
    outbox = Outbox()
    outbox.add([wire.CLUSTER], {"type": "cluster.summary", **selectors.cluster_summary(now)})
    outbox.publish()


def recover(client: redis.Redis, now, suspects: dict[int, int]) -> dict:
    """One recovery pass: what dead nodes, a restarted Redis or a crashed process left."""
    done = {"lost": 0, "resent": 0, "offline": 0}
    try:
        caught_up = ingester_caught_up(client)
    except redis.RedisError:
        caught_up = False
    if caught_up:
        done["lost"] = recover_lost(now) + lifecycle.lose_lost_ranks(now)
        done["resent"] = redispatch_missing(client, now, suspects)
        reraise_cancels()
        reassert_drains()
        fanout.reassert_outcomes(client)
        dependencies.settle_all()
        lifecycle.cancel_children(*lifecycle.orphans())
    done["admitted"] = len(admission.admit().admitted)
    done["offline"] = mark_offline(now)
    return done
