"""Factories for the tests: jobs and their attempts in any state, without the submit path.

    make_job(alice)                                  queued, attempt 1 (token tok1) and its row
    make_job(alice, JobState.RUNNING, lease_ago=5)   running on w1, its lease expired 5 s ago
    make_job(alice, JobState.PENDING, attempt=0)     waiting for admission: no attempt yet
    make_job(alice, attempt_row=False)               the job's own fields only
    make_partitions(parent, [JobState.QUEUED, ...])  a fan-out's children, one per state
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from accounts.teams import team_for_work
from jobs.models import Attempt, Job, JobState

ATTEMPT_STATE = {JobState.PENDING: "queued", JobState.QUEUED: "queued",
                 JobState.RUNNING: "running", JobState.SUCCEEDED: "succeeded",
                 JobState.FAILED: "failed", JobState.CANCELLED: "cancelled"}


def make_job(owner, state=JobState.QUEUED, *, attempt: int = 1, token: str | None = None,
             team=None, kind: str = "diag.noop", queue: str = "cpu",
             lease_ago: float | None = None, attempt_row: bool = True, **fields) -> Job:
    """A job of `owner` (in their team for work unless `team` is given) in `state` as attempt
    `attempt` (token `tok<attempt>`), with that attempt's row in the state that goes with the
    job's; attempt 0 (never admitted) has no token and no row, nor has one made with
    `attempt_row=False`. With `lease_ago`, running on w1 whose lease expired that many seconds
    ago (negative: it still holds). Any other field of the job as given."""
    now = timezone.now()
    if token is None:
        token = f"tok{attempt}" if attempt else ""
    if lease_ago is not None:
        fields = {"node": "w1", "started_at": now,
                  "lease_expires_at": now - timedelta(seconds=lease_ago), **fields}
    fields.setdefault("timeout_s", 600)
    job = Job.objects.create(owner=owner, team=team or team_for_work(owner), kind=kind,
                             queue=queue, state=state, attempt=attempt, token=token, **fields)
    if attempt and attempt_row:
        make_attempt(job, attempt, token=token, state=ATTEMPT_STATE[state])
    return job


def make_attempt(job: Job, number: int, *, token: str, state: str = "queued") -> Attempt:
    return Attempt.objects.create(job=job, number=number, token=token, state=state,
                                  node=job.node)


def make_partitions(parent: Job, states, **fields) -> list[Job]:
    """The fan-out's partitions 0, 1, ...: one per state given, each with its attempt row,
    owned as the parent is (`kind`, `queue` and the rest as make_job takes them)."""
    fields = {"team": parent.team, "kind": f"{parent.kind}.part", **fields}
    return [make_job(parent.owner, state, parent=parent, partition=index, **fields)
            for index, state in enumerate(states)]


def make_ran(owner, *, seconds: float = 0.01, ended_ago: float = 0.0,
             state=JobState.SUCCEEDED, **fields) -> Job:
    """A job that ran for `seconds` and ended `ended_ago` seconds ago (negative: its worker's
    clock is ahead of the portal's)."""
    finished = timezone.now() - timedelta(seconds=ended_ago)
    return make_job(owner, state, started_at=finished - timedelta(seconds=seconds),
                    finished_at=finished, **fields)
