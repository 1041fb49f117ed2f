"""Recovery on the portal side: it repairs what dying parts leave behind (portal.reconciler
runs it in a loop of its own).

- A running attempt whose lease expired (its node stopped heartbeating) is lost: the job goes
  back to queued as a new attempt while attempts remain, else it fails saying the node was lost.
- A message no node got (gone with a restarted Redis, or popped by a node whose link was
  then cut) is sent again: a queued job's, or one rank's of a gang, to its node.
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
from django.db.models import F, Q

from audit import feed
from jobs import admission, dependencies, dispatch, fanout, lifecycle, selectors
from jobs.broadcast import Outbox
from jobs.ingest import ALIVE_KEY
from jobs.models import AttemptRank, AttemptState, Job, JobState
from jobs.services import signal_cancel
from nodes.models import Node, NodeState
from nodes.services import node_event, signal_drain
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


def redispatch_missing(client: redis.Redis, now, suspects: set[str]) -> int:
    """Attempt messages that no node got are sent again: a queued job's, and a gang's rank
    that has not started while its node is still there (a rank whose node went offline loses
    its whole gang instead, lifecycle.lose_lost_ranks). A message is lost when its marker is
    gone from Redis on two passes in a row (a restarted Redis: a rank or job that has just
    started has lost its marker too, and the ingester needs a moment to record it), or when,
    still marked past the broker's visibility timeout, it is in no queue and no worker holds
    it (one a node popped as its link was cut never reached it). What a node's heartbeat says
    it runs is never lost."""
    cutoff = now - timedelta(seconds=settings.DISPATCH_GRACE_S)
    waiting = waiting_messages(cutoff, now)
    seen_before = set(suspects)
    suspects.clear()
    if not waiting:
        return 0
    members = [protocol.dispatch_member(job.pk, job.attempt, rank) for job, rank in waiting]
    scores = client.zmscore(protocol.DISPATCHED, members)
    lost: list[tuple[Job, int | None]] = []
    stale = now - timedelta(seconds=VISIBILITY_TIMEOUT_S + settings.DISPATCH_GRACE_S)
    in_broker = None
    for (job, rank), member, score in zip(waiting, members, scores, strict=True):
        if score is not None:
            if job.dispatched_at < stale:
                in_broker = broker_task_ids(client) if in_broker is None else in_broker
                if task_id(job, rank) not in in_broker:
                    lost.append((job, rank))
        elif member in seen_before:
            lost.append((job, rank))
        else:
            suspects.add(member)
    if not lost:
        return 0
    log.warning("sending %d attempt messages again: they were lost", len(lost))
    jobs = list({job.pk: job for job, _ in lost}.values())
    ranks: dict[int, set[int]] = {}
    for job, rank in lost:
        if rank is not None:
            ranks.setdefault(job.pk, set()).add(rank)
    return lifecycle.resend(jobs, now, ranks=ranks)


def waiting_messages(cutoff, now) -> list[tuple[Job, int | None]]:
    """The messages sent before `cutoff` that no node has started: each queued plain job's
    (rank None), and each rank of a gang's current attempt not started on a node that is not
    offline. Neither one that a node's heartbeat lists (it holds a lease)."""
    unheld = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    plain = Job.objects.filter(unheld, state=JobState.QUEUED, dispatched_at__lt=cutoff,
                               nodes=1, slots_per_node=1)
    waiting: list[tuple[Job, int | None]] = [
        (job, None) for job in plain.order_by("dispatched_at")[:BATCH]]
    offline = Node.objects.filter(state=NodeState.OFFLINE).values("name")
    ranks = (AttemptRank.objects.filter(
        unheld, state=AttemptState.QUEUED, attempt=F("job__attempt"),
        job__state__in=[JobState.QUEUED, JobState.RUNNING], job__dispatched_at__lt=cutoff)
        .exclude(node__in=offline).order_by("job__dispatched_at", "job_id", "rank")
        .values_list("job_id", "rank")[:BATCH])
    gangs = Job.objects.in_bulk({job_id for job_id, _ in ranks})
    return waiting + [(gangs[job_id], rank) for job_id, rank in ranks if job_id in gangs]


VISIBILITY_TIMEOUT_S = app.conf.broker_transport_options["visibility_timeout"]
SCAN_LIMIT = 20_000


def task_id(job: Job, rank: int | None = None) -> str:
    return dispatch.task_id(job.pk, job.attempt, job.token, rank)


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


TASK_ID = re.compile(rb'"id": ?"(\d+-\d+-[^"-]{1,8}(?:-r\d+)?)"')


def reraise_cancels() -> None:
    ids = list(Job.objects.filter(state=JobState.RUNNING, cancel_requested_at__isnull=False)
               .values_list("pk", flat=True)[:BATCH])
    signal_cancel(*ids)


def reassert_rendezvous(client: redis.Redis) -> None:
    """Redis keeps nothing across a restart: where each running gang's rank 0 listens is
    published again from the database, for its ranks still on their way there."""
    found = {protocol.rendezvous_key(job_id, attempt): address
             for job_id, attempt, address in AttemptRank.objects.filter(
                 rank=0, attempt=F("job__attempt"), job__state=JobState.RUNNING,
                 state=AttemptState.RUNNING).exclude(address="")
             .values_list("job_id", "attempt", "address")[:BATCH]}
    if found:
        pipe = client.pipeline(transaction=False)
        for key, address in found.items():
            pipe.set(key, address, ex=protocol.FLAG_TTL_S, nx=True)
        pipe.execute()


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
            since = (f"no heartbeat since {node.last_heartbeat:%H:%M:%S} UTC"
                     if node.last_heartbeat else "no heartbeat")
            feed.record([feed.node_entry(node.name, "node.offline",
                                         f"node {node.name} offline: {since}")], outbox)
            resend_reserved(node, now)
    outbox.publish()
    return len(silent)


def resend_reserved(node: Node, now) -> int:
    """Messages a node had taken but not started die with it (the broker would give them back
    only after its visibility timeout): send those attempts again. Should the node return, the
    old copy finds the attempt started (or ended) and is dropped. A gang's rank is not sent
    again: its node lost, the whole gang is placed anew (lifecycle.lose_lost_ranks)."""
    waiting = {(job, attempt) for job, attempt in node.reserved or []}
    if not waiting:
        return 0
    resend = [job for job in Job.objects.filter(pk__in={job for job, _ in waiting},
                                                state=JobState.QUEUED, nodes=1,
                                                slots_per_node=1)
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


def recover(client: redis.Redis, now, suspects: set[str]) -> dict:
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
        reassert_rendezvous(client)
        fanout.reassert_outcomes(client)
        dependencies.settle_all()
        lifecycle.cancel_children(*lifecycle.orphans())
    done["admitted"] = len(admission.admit().admitted)
    done["offline"] = mark_offline(now)
    return done
