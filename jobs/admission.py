"""Admission: the one place where a pending job becomes queued (is sent to the workers).

A submitted job waits in `pending` until its team's quota (jobs, CPU slots, GPUs held at once)
has room for it and, when the pool's nodes are known, until the pool has a free slot. Teams that
compete for free slots take turns by fair share: the team holding the fewest jobs for its
`share` goes next, so a team with a thousand pending jobs does not starve a team with one.
With FAIR_SHARE_HALF_LIFE_H, the share is weighed by what the team used before (its decayed
core-seconds, usage.fairshare): a team far over its share waits behind those under theirs,
and with PREEMPTION=1 their jobs may even be given slots back (jobs.preemption).
Within a team, higher priority first, then first come first served.

A pass runs after every submit (in its transaction), when the ingester ends jobs (in the
transaction that records their end, so a job's successor is queued in the same commit), and on
each reconciler pass (quota edits, nodes coming and going). While one team alone waits for a
queue, it may hold a few more of its short jobs in the broker (Room). Passes are serialized
by an advisory lock on PostgreSQL, so fifty simultaneous submits cannot overshoot a quota; each
waiting job's message says why it waits, and `place_in_line` says how many go before it.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from math import inf

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from accounts.models import Team
from jobs import gangs, lifecycle, preemption
from jobs.models import Job, JobState
from nodes.models import Node, NodeState
from usage import fairshare

log = logging.getLogger(__name__)
LOCK_KEY = 0x706F7274  # "port"
WINDOW = 100  # pending jobs looked at per team, queue and pass
HELD = (JobState.QUEUED, JobState.RUNNING)
# The lone team's extra places in a queue (Room.ahead) are at most this many per online slot:
# what a team that comes to wait later may find ahead of it in the broker.
AHEAD_PER_SLOT = 8
# A gang back from a lost rank waits this long, so that its dead node is no longer heard from
# (gangs.FRESH_S) before it is placed again.
SETTLE_S = gangs.FRESH_S + gangs.HEARTBEAT_S


def _lock() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])


def _try_lock() -> bool:
    """The pass lock if it is free now (never waits: a caller holding row locks must not)."""
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [LOCK_KEY])
        return bool(cursor.fetchone()[0])


def waiting() -> Q:
    """Pending jobs that wait for admission only (not for other jobs to succeed)."""
    return Q(state=JobState.PENDING, blocked=False, parent__isnull=True)


LIMITS = (("max_running_jobs", "jobs", "running jobs"), ("max_cpus", "cpus", "CPU slots"),
          ("max_gpus", "gpus", "GPUs"))


def wants(job, what: str) -> int:
    """What the job holds of a quota: a gang, all its ranks' CPU slots and GPUs."""
    return 1 if what == "jobs" else getattr(job, what) * job.nodes * job.slots_per_node


def never_fits(team: Team, job) -> str:
    """Why the job can never start under its team's quota as it stands, or ""."""
    for limit_field, what, label in LIMITS:
        limit = getattr(team, limit_field)
        if limit == 0:
            return f"team {team.name}: paused, with a quota of 0 {label}"
        if limit is not None and wants(job, what) > limit:
            return (f"team {team.name}: needs {wants(job, what)} {label}, more than its quota "
                    f"of {limit}: it waits until an admin raises the quota")
    return ""


def quota_reason(team: Team, usage: dict, job) -> str:
    """Why the team cannot start this job now, or "" if its quota has room."""
    for limit_field, what, label in LIMITS:
        limit = getattr(team, limit_field)
        if limit is not None and usage[what] + wants(job, what) > limit:
            return f"team {team.name}: {usage[what]} of {limit} {label}"
    return ""


def labels_key(labels) -> str:
    return json.dumps(labels or {}, sort_keys=True)


def held() -> tuple[dict[int, dict], dict[str, int], dict[tuple[str, str], int]]:
    """What queued and running jobs hold, in one query: per team (jobs it submitted; CPU slots
    and GPUs of those and of their fan-outs' partitions), per queue, and per queue and labels.
    Written out, as lines() is: each pass runs it, and the ORM's version cost more to build
    than to run (a gang holds a slot, its CPUs and GPUs per rank; the products are computed
    as bigints, which small integers multiplied would overflow)."""
    usage: dict[int, dict] = defaultdict(lambda: {"jobs": 0, "cpus": 0, "gpus": 0})
    busy: dict[str, int] = defaultdict(int)
    routes: dict[tuple[str, str], int] = defaultdict(int)
    ranks = "CAST(nodes AS bigint) * CAST(slots_per_node AS bigint)"
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT team_id, queue, labels, SUM({ranks}), "
            f"SUM(CASE WHEN parent_id IS NULL THEN 1 ELSE 0 END), "
            f"SUM(CAST(cpus AS bigint) * {ranks}), SUM(CAST(gpus AS bigint) * {ranks}) "
            f"FROM {Job._meta.db_table} WHERE state IN (%s, %s) "
            f"GROUP BY team_id, queue, labels", [state.value for state in HELD])
        rows = cursor.fetchall()
    for team_id, queue, labels, n, jobs, cpus, gpus in rows:
        if isinstance(labels, str):  # JSON comes back as its text
            labels = json.loads(labels)
        used = usage[team_id]
        used["jobs"] += int(jobs or 0)
        used["cpus"] += int(cpus or 0)
        used["gpus"] += int(gpus or 0)
        busy[queue] += int(n or 0)
        if labels:
            routes[(queue, labels_key(labels))] += int(n or 0)
    return usage, busy, routes


class Room:
    """Free places: per queue, its online nodes' slots (and ADMIT_AHEAD as many again waiting
    in the broker, so a worker never idles between two passes) less the jobs queued or running
    there; for a job that needs labels, also those of the online nodes that have them. A queue
    that no node has ever served is not limited here (its jobs wait in the broker for one); one
    whose nodes are all offline has no room.

    The lone team's extra (ADMIT_AHEAD_S): for a queue where one team alone waits, there is
    nobody to be fair to, so once its places are taken it may hold a few more in the broker:
    as many as the queue's jobs (not partitions) that ran for at most ADMIT_AHEAD_S seconds and
    ended in the last ADMIT_AHEAD_S seconds (by the portal's clock: a worker's ahead of it does
    not count), at most AHEAD_PER_SLOT per online slot, and only for jobs of those jobs' kinds,
    without labels, not gangs. A burst of short jobs then
    never waits for a pass between two of them, while long jobs wait in pending, where fair
    share can still reorder them; a team that comes to wait later finds at most that much extra
    work ahead of it, and once several teams wait, there is no extra."""

    TAKEN = "is taken"  # how a wait for a free slot ends (and nothing else)

    def __init__(self, busy: dict[str, int], routes: dict[tuple[str, str], int],
                 alone: set[str] | frozenset[str] = frozenset(), now=None):
        self.busy, self.routes = busy, routes
        self.alone, self.now = alone, now
        self.nodes = list(Node.objects.values_list("state", "queues", "labels", "concurrency"))
        self.served = {queue for _, queues, _, _ in self.nodes for queue in queues or []}
        self.free: dict[tuple[str, str], float] = {}
        self.extra: dict[str, tuple[int, set[str]]] = {}  # queue: (places left, kinds)

    def slots(self, queue: str, labels: dict) -> int:
        wanted = set((labels or {}).items())
        return sum(concurrency for state, queues, offered, concurrency in self.nodes
                   if state == NodeState.ONLINE and queue in (queues or [])
                   and wanted <= set((offered or {}).items()))

    def capacity(self, queue: str, labels: dict) -> float:
        return self.slots(queue, labels) * (1 + settings.ADMIT_AHEAD)

    def ahead(self, queue: str) -> tuple[int, set[str]]:
        """The lone team's extra places in the queue, and the kinds they are for: its jobs
        that ran short and ended just now, at most AHEAD_PER_SLOT per online slot (the class)."""
        window = settings.ADMIT_AHEAD_S
        if queue not in self.alone or window <= 0:
            return 0, set()
        now = self.now or timezone.now()
        short = (Job.objects.filter(
            queue=queue, parent__isnull=True, state__in=[JobState.SUCCEEDED, JobState.FAILED],
            finished_at__gte=now - timedelta(seconds=window),
            finished_at__lte=now)
            # ran short (a job that never started has no started_at, and does not count)
            .filter(finished_at__lte=F("started_at") + timedelta(seconds=window))
            .values("kind").annotate(n=Count("id")))
        counts = {row["kind"]: row["n"] for row in short}
        return min(sum(counts.values()), AHEAD_PER_SLOT * self.slots(queue, {})), set(counts)

    def _left(self, queue: str, labels: dict) -> float:
        key = (queue, labels_key(labels))
        if key not in self.free:
            if queue not in self.served:
                self.free[key] = inf
            elif labels:
                self.free[key] = self.capacity(queue, labels) - self.routes.get(key, 0)
            else:
                self.free[key] = self.capacity(queue, {}) - self.busy.get(queue, 0)
        return self.free[key]

    def _extra_for(self, job) -> bool:
        """Whether the job may take one of the lone team's extra places."""
        if job.labels or job.is_gang:
            return False
        if job.queue not in self.extra:
            self.extra[job.queue] = self.ahead(job.queue)
        left, kinds = self.extra[job.queue]
        return left >= 1 and job.kind in kinds

    def why_not(self, job) -> str:
        """Why the job has no place now, or ""."""
        if self._left(job.queue, {}) < 1:
            if not self.capacity(job.queue, {}):
                return f"queue {job.queue}: no node serving it is online"
            if self._extra_for(job):
                return ""
            return f"queue {job.queue}: every slot {self.TAKEN}"
        if job.labels and self._left(job.queue, job.labels) < 1:
            text = ", ".join(f"{k}={v}" for k, v in sorted(job.labels.items()))
            return f"queue {job.queue}: every slot of the nodes with {text} {self.TAKEN}"
        return ""

    def take(self, job) -> None:
        ranks = job.nodes * job.slots_per_node
        key = (job.queue, labels_key({}))
        if self.free.get(key, inf) < 1:  # one of the lone team's extra places
            left, kinds = self.extra[job.queue]
            self.extra[job.queue] = (left - ranks, kinds)
            return
        self.free[key] -= ranks
        if job.labels:
            self.free[(job.queue, labels_key(job.labels))] -= ranks


class GangRoom:
    """Free slots node by node, for gangs: each needs `nodes` distinct online nodes serving its
    queue, with its labels, each with `slots_per_node` free slots. A gang is placed whole in
    one pass or not at all, and holds nothing while it waits: two gangs cannot each hold part
    of what the other needs."""

    def __init__(self, now):
        self.now = now
        self.nodes: dict[str, tuple[int, set[str], dict]] | None = None
        self.placed: dict[int, list[str]] = {}

    def place(self, job) -> str:
        """Place the gang (kept in `placed`), or say why it waits."""
        if self.nodes is None:
            self.nodes = gangs.free_slots(self.now)
        if job.attempt > 1 and job.dispatched_at and \
                (self.now - job.dispatched_at).total_seconds() < SETTLE_S:
            return (f"attempt {job.attempt}: waits {SETTLE_S:g} s for its last gang's nodes "
                    "to report")
        wanted = set((job.labels or {}).items())
        serving = [(free, name) for name, (free, queues, labels) in self.nodes.items()
                   if job.queue in queues and wanted <= set(labels.items())]
        fit = sorted((name for free, name in serving if free >= job.slots_per_node),
                     key=lambda name: (-self.nodes[name][0], name))
        if len(fit) < job.nodes:
            slots = "slot" if job.slots_per_node == 1 else "slots"
            return (f"needs {job.nodes} nodes with {job.slots_per_node} free {slots} each; "
                    f"{len(fit)} {'has' if len(fit) == 1 else 'have'} them")
        chosen = fit[:job.nodes]
        for name in chosen:
            free, queues, labels = self.nodes[name]
            self.nodes[name] = (free - job.slots_per_node, queues, labels)
        self.placed[job.pk] = chosen
        return ""


TEAM_FIELDS = ("name", "max_running_jobs", "max_cpus", "max_gpus", "share")


def lines() -> dict[int, deque[Job]]:
    """Each team's waiting jobs in the order they go, with the team's quota, in one query
    (written out: the ORM's version costs more to build than to run). At most WINDOW per team
    and queue, so a long line for a full queue does not hide a job for an idle one."""
    jobs, teams = Job._meta.db_table, Team._meta.db_table
    ranked = Job.objects.raw(
        f"SELECT ranked.*, {', '.join(f't.{f} AS team_{f}' for f in TEAM_FIELDS)} FROM "
        f"(SELECT {jobs}.*, ROW_NUMBER() OVER (PARTITION BY team_id, queue ORDER BY priority "
        f"DESC, id) AS line_rank FROM {jobs} WHERE state = %s AND NOT blocked AND parent_id "
        f"IS NULL) ranked JOIN {teams} t ON t.id = ranked.team_id WHERE line_rank <= %s "
        f"ORDER BY ranked.team_id, ranked.priority DESC, ranked.id",
        [JobState.PENDING.value, WINDOW])
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


def weights(teams: dict[int, Team], standing: dict[int, fairshare.Standing]) -> dict:
    """What each team's held jobs are divided by to find who goes next: its share, weighed by
    its fair-share factor when usage is remembered (FAIR_SHARE_HALF_LIFE_H > 0)."""
    return {t: standing[t].weight if t in standing else max(team.share, 1)
            for t, team in teams.items()}


def factor(standing: dict[int, fairshare.Standing], team_id: int) -> float:
    """Between teams that hold as much for their weight, the one that used less goes first."""
    return standing[team_id].factor if team_id in standing else 0.0


def with_share(reason: str, standing: fairshare.Standing | None) -> str:
    """A wait for a slot says so when fair share puts the team behind others."""
    behind = fairshare.held_back(standing) if reason.endswith(Room.TAKEN) else ""
    return f"{reason}; {behind}"[:500] if behind else reason


def alone(waiting_lines: dict[int, deque[Job]]) -> set[str]:
    """The queues where one team alone has jobs waiting."""
    teams_by_queue: dict[str, set[int]] = defaultdict(set)
    for team_id, line in waiting_lines.items():
        for job in line:
            teams_by_queue[job.queue].add(team_id)
    return {queue for queue, waiting_teams in teams_by_queue.items() if len(waiting_teams) == 1}


@dataclass
class Pass:
    """What one pass did: the jobs it admitted (queued at `at`), and why the others wait."""

    admitted: list[int] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)
    at: datetime | None = None


def admit(*, locked: bool = False) -> Pass:
    """One admission pass, in the caller's transaction (or its own); `locked`: the caller
    holds the pass lock already."""
    with transaction.atomic(savepoint=False):
        if not locked:
            _lock()
        waiting_lines = lines()
        if not waiting_lines:
            return Pass()
        teams = {team_id: line[0].team for team_id, line in waiting_lines.items()}
        usage, busy, routes = held()
        now = timezone.now()
        room = Room(busy, routes, alone=alone(waiting_lines), now=now)
        gang_room = GangRoom(now)
        standing = fairshare.standings(teams)
        weight = weights(teams, standing)
        chosen: list[Job] = []
        reasons: dict[int, str] = {}
        slot_waits: list[Job] = []  # waiting only for a free slot: preemption may give one
        while waiting_lines:
            team_id = min(waiting_lines, key=lambda t: (usage[t]["jobs"] / weight[t],
                                                         -factor(standing, t), t))
            line = waiting_lines[team_id]
            job = line[0]
            reason = never_fits(teams[team_id], job)
            if not reason:
                reason = quota_reason(teams[team_id], usage[team_id], job)
                if reason:  # the team is at its quota: its whole line waits behind this job
                    reasons.update((other.pk, reason) for other in line)
                    del waiting_lines[team_id]
                    continue
                reason = room.why_not(job)
                if not reason and job.is_gang:
                    reason = gang_room.place(job)
            line.popleft()
            if not line:
                del waiting_lines[team_id]
            if reason:  # this one waits; the next of its team may fit
                reasons[job.pk] = with_share(reason, standing.get(team_id))
                if reason.endswith(Room.TAKEN):
                    slot_waits.append(job)
                continue
            room.take(job)
            used = usage[team_id]
            for what in used:
                used[what] += wants(job, what)
            chosen.append(job)
        now = timezone.now()
        admitted = lifecycle.admit(chosen, now, gangs=gang_room.placed)
        preemption.preempt_for(slot_waits, standing, now)
        by_reason = defaultdict(list)
        for job_id, reason in reasons.items():
            by_reason[reason].append(job_id)
        for reason, ids in by_reason.items():
            Job.objects.filter(pk__in=ids, state=JobState.PENDING).exclude(
                message=reason).update(message=reason)
    return Pass([job.pk for job in admitted], reasons, now)


def admit_on_commit() -> None:
    """Run a pass once the current transaction commits (it freed quota or slots)."""
    transaction.on_commit(admit)


def admit_now_or_on_commit() -> None:
    """A pass in the caller's transaction, so that what it just freed goes to the next in line
    in the same commit (the ingester: a job's end admits its successor, and both are written
    at once); if another pass holds the lock, one once this commits instead. The lock is only
    tried: the caller holds row locks, and a pass that waits for the lock while holding them
    could deadlock with one that holds the lock and updates those rows. The pass runs in a
    savepoint: if it fails, what it wrote is undone, the caller's work stands, and a pass
    runs once that commits (the reconciler's passes, should that one fail too)."""
    try:
        with transaction.atomic():
            if _try_lock():
                admit(locked=True)
                return
    except Exception:
        log.exception("an admission pass in the ingester's transaction failed; one runs after "
                      "its commit")
    transaction.on_commit(admit, robust=True)


def place_in_line(job: Job) -> int | None:
    """How many of its team's waiting jobs go before it (1 = next), or None if it is not
    waiting for admission."""
    if job.state != JobState.PENDING or job.blocked or job.parent_id:
        return None
    ahead = Job.objects.filter(waiting(), team_id=job.team_id).filter(
        Q(priority__gt=job.priority) | Q(priority=job.priority, id__lt=job.pk)).count()
    return ahead + 1
