"""Preemption back to fair share (PREEMPTION=1): which running jobs give their slots back.

When a job of a team under its share waits because every slot of its queue is taken, the
youngest running job of the team most over its share, in that queue, of a kind that may be
preempted, is stopped and put back in line (lifecycle.preempt). A job is never preempted
before it has run PREEMPT_MIN_RUN_S, so each slot sees at most one preemption per that time;
a fan-out (or a partition of one) is never preempted, nor a job whose cancel was asked for."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings

from jobs import lifecycle
from jobs.models import Job, JobState
from nodes.models import Node
from usage.fairshare import Standing, period
from workers.kinds import all_kinds


def preemptible_kinds() -> list[str]:
    return [kind.name for kind in all_kinds(internal=True) if kind.preemptible]


def candidates(queues: set[str], over: set[int], now: datetime) -> list[Job]:
    """Running jobs that may be preempted, in these queues, of these teams, youngest first."""
    ran_since = now - timedelta(seconds=settings.PREEMPT_MIN_RUN_S)
    return list(Job.objects.filter(
        state=JobState.RUNNING, queue__in=queues, team_id__in=over, parent__isnull=True,
        kind__in=preemptible_kinds(), cancel_requested_at__isnull=True,
        started_at__lte=ran_since).order_by("-started_at", "-id"))


def choose(waiting: list[Job], standing: dict[int, Standing],
           now: datetime) -> list[tuple[Job, Job]]:
    """(victim, for whom) pairs: for each waiting job of a team under its share, in the order
    given, one running job of a team further over its share than the waiting job's."""
    def ratio(team_id: int) -> float:
        return standing[team_id].ratio if team_id in standing else 0.0

    waiting = [job for job in waiting if ratio(job.team_id) < 1]
    over = {team_id for team_id, s in standing.items() if s.ratio > 1}
    if not waiting or not over:
        return []
    pool = candidates({job.queue for job in waiting}, over, now)
    # Most over share first; within a team, the youngest (least work lost).
    pool.sort(key=lambda job: (-ratio(job.team_id), -job.started_at.timestamp(), -job.pk))
    offered = dict(Node.objects.values_list("name", "labels"))
    chosen: list[tuple[Job, Job]] = []
    taken: set[int] = set()
    for job in waiting:
        wanted = set((job.labels or {}).items())
        for victim in pool:
            if (victim.pk in taken or victim.queue != job.queue
                    or ratio(victim.team_id) <= ratio(job.team_id)
                    or not wanted <= set((offered.get(victim.node) or {}).items())):
                continue
            taken.add(victim.pk)
            chosen.append((victim, job))
            break
    return chosen


def reason(victim: Job, waiting: Job, standing: dict[int, Standing]) -> str:
    over, under = standing[victim.team_id], standing.get(waiting.team_id)
    under_name = under.name if under else f"of job {waiting.pk}"
    return (f"preempted for team {under_name} (under its share): team {over.name} used "
            f"{over.ratio:.1f}× its share over {period()}")


def preempt_for(waiting: list[Job], standing: dict[int, Standing], now: datetime) -> list[int]:
    """Preempt for these waiting jobs; returns the ids of the jobs preempted."""
    if not settings.PREEMPTION or not standing:
        return []
    return [victim.pk for victim, job in choose(waiting, standing, now)
            if lifecycle.preempt(victim, reason(victim, job, standing), now)]
