"""Preemption on the live cluster: the preempted attempt ends, the job goes back in line, runs
again on a real node as a new attempt that did not cost one of its attempts, and succeeds; the
usage of both attempts is recorded and folded by the reconciler."""

import time

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from jobs import lifecycle, services
from jobs.models import Attempt, Job
from tests.integration.conftest import wait_for_job
from usage.models import AttemptUsage, UsageDay

pytestmark = pytest.mark.integration


def wait_running(job_id: int, timeout: float = 60) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = Job.objects.get(pk=job_id)
        if job.state == "running" and Attempt.objects.filter(job=job, number=job.attempt,
                                                              started_at__isnull=False):
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} never ran: {job.state} {job.message}")


def test_a_preempted_job_runs_again_as_a_free_attempt_and_succeeds(live):
    owner = get_user_model().objects.create_user("preempted")
    job, _ = services.submit_job(owner=owner, spec=services.validate_spec(
        {"kind": "diag.sleep", "params": {"seconds": 3}, "max_attempts": 1}))
    job = wait_running(job.pk)
    time.sleep(1)
    assert lifecycle.preempt(job, "preempted for a live test", timezone.now())
    done = wait_for_job(job.pk, timeout=60)
    # Its only attempt was preempted, yet it ran again: a preemption costs no attempt.
    assert (done.state, done.attempt, done.max_attempts) == ("succeeded", 2, 2)
    first, second = Attempt.objects.filter(job=job).order_by("number")
    assert first.state == "cancelled" and first.error == "preempted for a live test"
    assert second.state == "succeeded" and second.started_at > first.finished_at
    usage = {u.attempt: u for u in AttemptUsage.objects.filter(job_id=job.pk)}
    assert usage[1].outcome == "preempted" and not usage[1].final
    assert usage[2].outcome == "succeeded" and usage[2].final
    assert usage[2].wall_s >= 3
    deadline = time.monotonic() + 30
    while not AttemptUsage.objects.filter(job_id=job.pk, rolled=False).count() == 0:
        assert time.monotonic() < deadline, "the reconciler never folded the usage"
        time.sleep(0.2)
    day = UsageDay.objects.get(team=job.team)
    assert (day.jobs, day.attempts, day.preempted) == (1, 2, 1)
