"""Reads about gangs: jobs of several ranks placed together on distinct nodes.

A gang asks for `nodes` nodes with `slots_per_node` slots each; admission places it whole or not
at all (jobs.admission), the lifecycle moves it (jobs.lifecycle), and these say what the nodes
have free and which ranks are lost.
"""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, F, Q

from jobs.models import AttemptRank, AttemptState, Job, JobState
from nodes.models import Node, NodeState
from workers.config import HEARTBEAT_S

LIVE = (JobState.QUEUED, JobState.RUNNING)
HELD_RANKS = (AttemptState.QUEUED, AttemptState.RUNNING)
# A node placed in a gang must have been heard from this recently: a node that has just died
# is still "online" until NODE_OFFLINE_S, and a gang placed on it would only wait for it.
FRESH_S = 3 * HEARTBEAT_S


def is_gang(job) -> bool:
    return job.nodes * job.slots_per_node > 1


def held_ranks() -> Q:
    """Ranks that hold a slot: of a gang's current attempt, not ended."""
    return Q(state__in=HELD_RANKS, job__state__in=LIVE, attempt=F("job__attempt"))


def free_slots(now) -> dict[str, tuple[int, set[str], dict]]:
    """Per online node heard from within FRESH_S: its free slots (its concurrency less the
    plain jobs it runs and the gang ranks placed on it), its queues and its labels."""
    fresh = now - timedelta(seconds=FRESH_S)
    nodes = {name: [concurrency, set(queues or []), labels or {}]
             for name, concurrency, queues, labels in Node.objects.filter(
                 state=NodeState.ONLINE, last_heartbeat__gte=fresh).values_list(
                 "name", "concurrency", "queues", "labels")}
    plain = (Job.objects.filter(state=JobState.RUNNING, node__in=list(nodes), nodes=1,
                                slots_per_node=1)
             .values("node").annotate(n=Count("id")).order_by())
    ranks = (AttemptRank.objects.filter(held_ranks(), node__in=list(nodes))
             .values("node").annotate(n=Count("id")).order_by())
    for row in [*plain, *ranks]:
        nodes[row["node"]][0] -= row["n"]
    return {name: (free, queues, labels) for name, (free, queues, labels) in nodes.items()}


def lost_ranks(now, limit: int = 100) -> list[tuple[Job, int, str]]:
    """Gangs with a rank lost: running with its lease expired (its node went silent), or not
    started on a node that went offline. One (job, rank, node) per job."""
    offline = list(Node.objects.filter(state=NodeState.OFFLINE).values_list("name", flat=True))
    rows = (AttemptRank.objects.filter(held_ranks())
            .filter(Q(state=AttemptState.RUNNING, lease_expires_at__lt=now)
                    | Q(state=AttemptState.QUEUED, node__in=offline))
            .order_by("job_id", "rank").values_list("job_id", "rank", "node")[:limit])
    found: dict[int, tuple[int, str]] = {}
    for job_id, rank, node in rows:
        found.setdefault(job_id, (rank, node))
    jobs = Job.objects.in_bulk(list(found))
    return [(jobs[job_id], rank, node) for job_id, (rank, node) in found.items()
            if job_id in jobs]


def attempt_ranks(job: Job) -> list[AttemptRank]:
    """The ranks of each of a gang's attempts, newest attempt first."""
    return list(AttemptRank.objects.filter(job=job).order_by("-attempt", "rank"))


def speedup(job: Job) -> float | None:
    """For a gang that succeeded and timed its epochs (train.torch's `epoch_s`): how many
    times faster an epoch ran than in the latest same job (kind, parameters, team) on one
    rank, when the history has one."""
    mine = (job.result or {}).get("epoch_s") if isinstance(job.result, dict) else None
    if not is_gang(job) or job.state != JobState.SUCCEEDED or not mine:
        return None
    single = (Job.objects.filter(team_id=job.team_id, kind=job.kind, params=job.params,
                                 state=JobState.SUCCEEDED, nodes=1, slots_per_node=1)
              .order_by("-id").values_list("result", flat=True).first())
    base = single.get("epoch_s") if isinstance(single, dict) else None
    return round(base / mine, 3) if base else None
