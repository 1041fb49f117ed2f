"""Factories for the tests: jobs and their attempts in any state, without the submit path."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from accounts.teams import team_for_work
from jobs.models import Attempt, Job, JobState

ATTEMPT_STATE = {JobState.PENDING: "queued", JobState.QUEUED: "queued",
                 JobState.RUNNING: "running", JobState.SUCCEEDED: "succeeded",
                 JobState.FAILED: "failed", JobState.CANCELLED: "cancelled"}


def make_job(owner, state=JobState.QUEUED, *, attempt: int = 1, token: str | None = None,
             team=None, kind: str = "diag.noop", lease_ago: float | None = None,
             **fields) -> Job:
    """A job in `state` as attempt `attempt` (token `tok<attempt>`), with that attempt's row;
    with `lease_ago`, running on w1 whose lease expired that many seconds ago (negative: it
    still holds)."""
    now = timezone.now()
    token = token or f"tok{attempt}"
    if lease_ago is not None:
        fields = {"node": "w1", "started_at": now,
                  "lease_expires_at": now - timedelta(seconds=lease_ago), **fields}
    fields.setdefault("timeout_s", 600)
    job = Job.objects.create(owner=owner, team=team or team_for_work(owner), kind=kind,
                             queue=fields.pop("queue", "cpu"), state=state, attempt=attempt,
                             token=token, **fields)
    make_attempt(job, attempt, token=token, state=ATTEMPT_STATE[state])
    return job


def make_attempt(job: Job, number: int, *, token: str, state: str = "queued") -> Attempt:
    return Attempt.objects.create(job=job, number=number, token=token, state=state,
                                  node=job.node)


def make_ran(owner, *, seconds: float = 0.01, ended_ago: float = 0.0,
             state=JobState.SUCCEEDED, **fields) -> Job:
    """A job that ran for `seconds` and ended `ended_ago` seconds ago (negative: its worker's
    clock is ahead of the portal's)."""
    finished = timezone.now() - timedelta(seconds=ended_ago)
    return make_job(owner, state, started_at=finished - timedelta(seconds=seconds),
                    finished_at=finished, **fields)
