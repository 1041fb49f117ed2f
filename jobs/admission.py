"""Admission: the one place where a pending job becomes queued (is sent to the workers).

A submitted job waits in `pending` until its team's quota (jobs, CPU slots, GPUs held at once)
has room for it and, when the pool's nodes are known, until the pool has a free slot. Teams that
compete for free slots take turns by fair share: the team holding the fewest jobs for its
`share` goes next, so a team with a thousand pending jobs does not starve a team with one.
Within a team, higher priority first, then first come first served.

A pass runs after every submit (in its transaction), after the ingester ends jobs, and on each
reconciler pass (quota edits, nodes coming and going). Passes are serialized by an advisory lock
on PostgreSQL, so fifty simultaneous submits cannot overshoot a quota; each waiting job's
message says why it waits, and `place_in_line` says how many go before it.
"""

from __future__ import annotations

from collections import defaultdict, deque
from math import inf

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from accounts.models import Team
from jobs.broadcast import Outbox
from jobs.dispatch import dispatch_on_commit
from jobs.models import Job, JobState, Node, NodeState

LOCK_KEY = 0x706F7274  # "port"
WINDOW = 100  # pending jobs looked at per team and pass
HELD = (JobState.QUEUED, JobState.RUNNING)


def _lock() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])


def waiting() -> Q:
    """Pending jobs that wait for admission only (not for other jobs to succeed)."""
    return Q(state=JobState.PENDING, blocked=False, parent__isnull=True)


def quota_reason(team: Team, usage: dict, job) -> str:
    """Why the team cannot start this job now, or "" if its quota has room."""
    limits = (("max_running_jobs", "jobs", 1, "running jobs"),
              ("max_cpus", "cpus", job.cpus, "CPU slots"),
              ("max_gpus", "gpus", job.gpus, "GPUs"))
    for field, used, wants, what in limits:
        limit = getattr(team, field)
        if limit is not None and usage[used] + wants > limit:
            return f"team {team.name}: {usage[used]} of {limit} {what}"
    return ""


def team_usage(team_ids) -> dict[int, dict]:
    usage = {team_id: {"jobs": 0, "cpus": 0, "gpus": 0} for team_id in team_ids}
    rows = (Job.objects.filter(team_id__in=list(team_ids), state__in=HELD, parent__isnull=True)
            .values("team_id").annotate(jobs=Count("id"), cpus=Sum("cpus"), gpus=Sum("gpus"))
            .order_by())
    for row in rows:
        usage[row["team_id"]] = {"jobs": row["jobs"], "cpus": row["cpus"] or 0,
                                 "gpus": row["gpus"] or 0}
    return usage


def pool_room() -> dict[str, float]:
    """Free places per queue: its online nodes' slots (and as many again waiting in the broker,
    so a worker never idles between two passes) less the jobs queued or running there. A queue
    that no online node serves is not limited here: its jobs wait in the broker for a node."""
    capacity: dict[str, int] = defaultdict(int)
    for node in Node.objects.filter(state=NodeState.ONLINE).only("queues", "concurrency"):
        for queue in node.queues or []:
            capacity[queue] += node.concurrency
    if not capacity:
        return defaultdict(lambda: inf)
    busy = dict(Job.objects.filter(state__in=HELD, queue__in=list(capacity))
                .values_list("queue").annotate(n=Count("id")).order_by())
    room = defaultdict(lambda: inf)
    for queue, slots in capacity.items():
        room[queue] = slots * (1 + settings.ADMIT_AHEAD) - busy.get(queue, 0)
    return room


def admit() -> list[int]:
    """One admission pass, in the caller's transaction (or its own). Returns the admitted ids."""
    from jobs.services import state_event

    with transaction.atomic():
        _lock()
        team_ids = list(Job.objects.filter(waiting()).order_by().values_list("team_id", flat=True)
                        .distinct())
        if not team_ids:
            return []
        teams = Team.objects.in_bulk(team_ids)
        lines = {team_id: deque(Job.objects.filter(waiting(), team_id=team_id)
                                .order_by("-priority", "id")
                                .only("id", "team_id", "queue", "cpus", "gpus", "message")
                                [:WINDOW])
                 for team_id in team_ids}
        usage = team_usage(team_ids)
        room = pool_room()
        admitted, reasons = [], {}
        while lines:
            team_id = min(lines, key=lambda t: (usage[t]["jobs"] / max(teams[t].share, 1), t))
            line = lines[team_id]
            job = line[0]
            reason = quota_reason(teams[team_id], usage[team_id], job)
            if reason:  # the team is at its quota: its whole line waits behind this job
                reasons.update((other.pk, reason) for other in line)
                del lines[team_id]
                continue
            line.popleft()
            if not line:
                del lines[team_id]
            if room[job.queue] < 1:
                reasons[job.pk] = f"queue {job.queue}: every slot is taken"
                continue
            room[job.queue] -= 1
            used = usage[team_id]
            used["jobs"] += 1
            used["cpus"] += job.cpus
            used["gpus"] += job.gpus
            admitted.append(job.pk)
        now = timezone.now()
        if admitted:
            Job.objects.filter(pk__in=admitted, state=JobState.PENDING).update(
                state=JobState.QUEUED, dispatched_at=now, message="")
        by_reason = defaultdict(list)
        for job_id, reason in reasons.items():
            by_reason[reason].append(job_id)
        for reason, ids in by_reason.items():
            Job.objects.filter(pk__in=ids, state=JobState.PENDING).exclude(
                message=reason).update(message=reason)
        jobs = list(Job.objects.filter(pk__in=admitted))
        dispatch_on_commit(jobs)
        outbox = Outbox()
        for job in jobs:
            outbox.job(job.pk, job.team_id, state_event(job))
        outbox.publish_on_commit()
    return admitted


def admit_on_commit() -> None:
    """Run a pass once the current transaction commits (it freed quota or slots)."""
    transaction.on_commit(admit)


def place_in_line(job: Job) -> int | None:
    """How many of its team's waiting jobs go before it (1 = next), or None if it is not
    waiting for admission."""
    if job.state != JobState.PENDING or job.blocked or job.parent_id:
        return None
    ahead = Job.objects.filter(waiting(), team_id=job.team_id).filter(
        Q(priority__gt=job.priority) | Q(priority=job.priority, id__lt=job.pk)).count()
    return ahead + 1
