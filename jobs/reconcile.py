"""The periodic loop on the portal side: it repairs what dying parts leave behind.

- A running attempt whose lease expired (its node stopped heartbeating) is lost: the job goes
  back to queued as a new attempt while attempts remain, else it fails saying the node was lost.
- A queued job whose task message is gone from Redis (a restart) is sent again.
- A cancel that Redis forgot is raised again from the database; silent nodes go offline.

Each repair is a guarded claim, so two reconcilers, or a late worker, cannot both win.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from alerts.evaluate import evaluate as evaluate_alerts
from jobs import admission, dependencies, fanout, history, selectors, states
from jobs.broadcast import Outbox
from jobs.dispatch import attempt_spec, dispatch_on_commit, route, send
from jobs.ingest import ALIVE_KEY, node_event
from jobs.models import Attempt, Job, JobState, Node, NodeState
from jobs.services import new_token, signal_cancel, signal_drain, state_event
from schedules.services import tick as tick_schedules
from workers import protocol

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
    number = job.attempt
    guard = {"attempt": number, "token": job.token, "lease_expires_at__lt": now}
    node = job.node or "its node"
    lost = f"node {node} lost"
    timed_out = job.started_at and job.started_at + timedelta(seconds=job.timeout_s) < now
    with transaction.atomic():
        if job.cancel_requested_at:
            won = states.claim(job.pk, JobState.CANCELLED, guard=guard, finished_at=now,
                               lease_expires_at=None, message=f"cancelled ({lost})")
            attempt_state = "cancelled"
        elif timed_out:
            won = states.claim(job.pk, JobState.FAILED, guard=guard, finished_at=now,
                               lease_expires_at=None, message="failed",
                               error=f"timed out after {job.timeout_s} s ({lost})")
            attempt_state = "failed"
        elif job.attempt < job.max_attempts:
            token = new_token()
            message = (f"{lost}; moved back to the queue as attempt {job.attempt + 1} "
                       f"of {job.max_attempts}")
            won = states.claim(job.pk, JobState.QUEUED, guard=guard, attempt=job.attempt + 1,
                               token=token, node="", lease_expires_at=None, dispatched_at=now,
                               progress=None, message=message)
            if won:
                Attempt.objects.create(job=job, number=job.attempt + 1, token=token,
                                       created_at=now)
                job.refresh_from_db()
                dispatch_on_commit([job])
            attempt_state = "lost"
        else:
            won = states.claim(job.pk, JobState.FAILED, guard=guard, finished_at=now,
                               lease_expires_at=None, message="failed",
                               error=f"{lost} during attempt {job.attempt} of "
                                     f"{job.max_attempts}")
            attempt_state = "lost"
        if not won:
            return False
        Attempt.objects.filter(job=job, number=number).update(
            state=attempt_state, finished_at=now, error=lost)
        job.refresh_from_db()
        log.warning("job %s: %s", job.pk, job.message or job.error)
        outbox = Outbox()
        outbox.job(job.pk, job.team_id, state_event(job))
        if job.state in (JobState.FAILED, JobState.CANCELLED):
            transaction.on_commit(lambda: dependencies.after_ended([job.pk]))
        what = f"failed: {job.error}" if job.state == JobState.FAILED else job.message
        outbox.job(job.pk, job.team_id, {"type": "job.notice", "text": f"job {job.pk}: {what}"})
        outbox.publish_on_commit()
    return True


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
    for job, score in zip(queued, scores, strict=True):
        if score is not None:
            continue
        if seen_before.get(job.pk) != job.attempt:
            suspects[job.pk] = job.attempt
        elif Job.objects.filter(pk=job.pk, state=JobState.QUEUED, attempt=job.attempt,
                                dispatched_at=job.dispatched_at).update(dispatched_at=now):
            resend.append((attempt_spec(job), route(job)))
    if resend:
        log.warning("sending %d queued jobs again: their messages were lost", len(resend))
        send(resend)
    return len(resend)


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
            outbox.add(["cluster"], node_event(node, changed=True))
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
    resend = []
    for job in Job.objects.filter(pk__in={job for job, _ in waiting}, state=JobState.QUEUED):
        if (job.pk, job.attempt) in waiting and Job.objects.filter(
                pk=job.pk, state=JobState.QUEUED, attempt=job.attempt).update(dispatched_at=now):
            resend.append((attempt_spec(job), route(job)))
    if resend:
        log.warning("node %s lost with %d unstarted jobs: sending them again", node.name,
                    len(resend))
        send(resend)
    return len(resend)


def publish_summary(now) -> None:
    """Every dashboard's jobs-by-state, queue and throughput charts, computed once a pass here
    rather than once per open dashboard."""
    outbox = Outbox()
    outbox.add(["cluster"], {"type": "cluster.summary", **selectors.cluster_summary(now)})
    outbox.publish()


class Reconciler:
    def __init__(self, client: redis.Redis | None = None):
        self.client = client or protocol.redis_client()
        self.suspects: dict[int, int] = {}  # queued jobs seen without a marker: id -> attempt
        self.rolled_minute = None

    def once(self) -> dict:
        now = timezone.now()
        done = {"lost": 0, "resent": 0, "offline": 0}
        try:
            caught_up = ingester_caught_up(self.client)
        except redis.RedisError:
            caught_up = False
        if caught_up:
            done["lost"] = recover_lost(now)
            done["resent"] = redispatch_missing(self.client, now, self.suspects)
            reraise_cancels()
            reassert_drains()
            fanout.reassert_outcomes(self.client)
            dependencies.settle_all()
        done["scheduled"] = tick_schedules(now)  # cron schedules that are due
        done["admitted"] = len(admission.admit().admitted)
        done["offline"] = mark_offline(now)
        done.update(evaluate_alerts(now))  # alerts_fired, alerts_resolved
        publish_summary(now)
        if self.rolled_minute != history.minute_of(now):  # once a minute
            done["rolled_up"] = history.roll_up(now)
            done["pruned"] = sum(history.prune(now))
            self.rolled_minute = history.minute_of(now)
        return done
