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
from dataclasses import dataclass, field
from datetime import datetime
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
    for limit_field, used, wants, what in limits:
        limit = getattr(team, limit_field)
        if limit is not None and usage[used] + wants > limit:
            return f"team {team.name}: {usage[used]} of {limit} {what}"
    return ""


def held() -> tuple[dict[int, dict], dict[str, int]]:
    """What queued and running jobs hold, in one query: per team (its own jobs, not a fan-out's
    partitions, which run within their parent's place) and per queue (every job)."""
    usage: dict[int, dict] = defaultdict(lambda: {"jobs": 0, "cpus": 0, "gpus": 0})
    busy: dict[str, int] = defaultdict(int)
    own = Q(parent__isnull=True)
    rows = (Job.objects.filter(state__in=HELD).values("team_id", "queue")
            .annotate(n=Count("id"), jobs=Count("id", filter=own),
                      cpus=Sum("cpus", filter=own), gpus=Sum("gpus", filter=own))
            .order_by())
    for row in rows:
        used = usage[row["team_id"]]
        used["jobs"] += row["jobs"]
        used["cpus"] += row["cpus"] or 0
        used["gpus"] += row["gpus"] or 0
        busy[row["queue"]] += row["n"]
    return usage, busy


def pool_room(busy: dict[str, int]) -> dict[str, float]:
    """Free places per queue: its online nodes' slots (and as many again waiting in the broker,
    so a worker never idles between two passes) less the jobs queued or running there. A queue
    that no online node serves is not limited here: its jobs wait in the broker for a node."""
    capacity: dict[str, int] = defaultdict(int)
    for queues, slots in Node.objects.filter(state=NodeState.ONLINE).values_list(
            "queues", "concurrency"):
        for queue in queues or []:
            capacity[queue] += slots
    room: dict[str, float] = defaultdict(lambda: inf)
    for queue, slots in capacity.items():
        room[queue] = slots * (1 + settings.ADMIT_AHEAD) - busy.get(queue, 0)
    return room


TEAM_FIELDS = ("name", "max_running_jobs", "max_cpus", "max_gpus", "share")


def lines() -> dict[int, deque[Job]]:
    """Each team's waiting jobs in the order they go (its first WINDOW), with the team's quota,
    in one query (written out: the ORM's version costs more to build than to run)."""
    jobs, teams = Job._meta.db_table, Team._meta.db_table
    ranked = Job.objects.raw(
        f"SELECT ranked.*, {', '.join(f't.{f} AS team_{f}' for f in TEAM_FIELDS)} FROM "
        f"(SELECT {jobs}.*, ROW_NUMBER() OVER (PARTITION BY team_id ORDER BY priority DESC, "
        f"id) AS line_rank FROM {jobs} WHERE state = %s AND NOT blocked AND parent_id IS NULL"
        f") ranked JOIN {teams} t ON t.id = ranked.team_id WHERE line_rank <= %s "
        f"ORDER BY ranked.team_id, line_rank", [JobState.PENDING.value, WINDOW])
    by_team: dict[int, deque[Job]] = defaultdict(deque)
    teams_by_id: dict[int, Team] = {}
    for job in ranked:
        team = teams_by_id.get(job.team_id)
        if team is None:
            team = teams_by_id[job.team_id] = Team(
                id=job.team_id, **{f: getattr(job, f"team_{f}") for f in TEAM_FIELDS})
        job.team = team
        by_team[job.team_id].append(job)
    return by_team


@dataclass
class Pass:
    """What one pass did: the jobs it admitted (queued at `at`), and why the others wait."""

    admitted: list[int] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)
    at: datetime | None = None


def admit() -> Pass:
    """One admission pass, in the caller's transaction (or its own)."""
    from jobs.services import state_event

    with transaction.atomic(savepoint=False):
        _lock()
        waiting_lines = lines()
        if not waiting_lines:
            return Pass()
        teams = {team_id: line[0].team for team_id, line in waiting_lines.items()}
        usage, busy = held()
        room = pool_room(busy)
        admitted: list[Job] = []
        reasons: dict[int, str] = {}
        while waiting_lines:
            team_id = min(waiting_lines,
                          key=lambda t: (usage[t]["jobs"] / max(teams[t].share, 1), t))
            line = waiting_lines[team_id]
            job = line[0]
            reason = quota_reason(teams[team_id], usage[team_id], job)
            if reason:  # the team is at its quota: its whole line waits behind this job
                reasons.update((other.pk, reason) for other in line)
                del waiting_lines[team_id]
                continue
            line.popleft()
            if not line:
                del waiting_lines[team_id]
            if room[job.queue] < 1:
                reasons[job.pk] = f"queue {job.queue}: every slot is taken"
                continue
            room[job.queue] -= 1
            used = usage[team_id]
            used["jobs"] += 1
            used["cpus"] += job.cpus
            used["gpus"] += job.gpus
            admitted.append(job)
        now = timezone.now()
        if admitted:
            Job.objects.filter(pk__in=[job.pk for job in admitted],
                               state=JobState.PENDING).update(
                state=JobState.QUEUED, dispatched_at=now, message="")
            for job in admitted:  # as the row now is (the pass holds the lock)
                job.state, job.dispatched_at, job.message = JobState.QUEUED, now, ""
        by_reason = defaultdict(list)
        for job_id, reason in reasons.items():
            by_reason[reason].append(job_id)
        for reason, ids in by_reason.items():
            Job.objects.filter(pk__in=ids, state=JobState.PENDING).exclude(
                message=reason).update(message=reason)
        dispatch_on_commit(admitted)
        outbox = Outbox()
        for job in admitted:
            outbox.job(job.pk, job.team_id, state_event(job))
        outbox.publish_on_commit()
    return Pass([job.pk for job in admitted], reasons, now)


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
