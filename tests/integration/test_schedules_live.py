"""A cron schedule across a restart, on the real cluster: runs missed while the portal was down
make one job when the reconciler is back, and that job runs to the end on a real worker."""

import signal
import time
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from accounts.models import Membership, Team
from jobs.models import Job
from schedules import services
from schedules.cron import next_after
from schedules.models import Schedule
from tests.integration.conftest import wait_for_job

pytestmark = pytest.mark.integration


def wait_for(condition, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise TimeoutError(f"{what} after {timeout} s")


def test_a_cron_schedule_across_a_restart(live):
    # The portal goes down: no reconciler runs while the schedule's runs come and go.
    if "reconciler" in live.cluster.procs:
        live.cluster.kill("reconciler", signal.SIGTERM)
    user = get_user_model().objects.create_user("cron")
    team = Team.objects.create(name="nightly")
    Membership.objects.create(team=team, user=user, role="member")
    now = timezone.now()
    # Daily at a time half an hour away: no run of its own comes due during the test.
    soon = now + timedelta(minutes=30)
    cron = f"{soon.minute} {soon.hour} * * *"
    schedule = services.create_schedule(user=user, data={
        "name": "daily sleep", "team": "nightly", "cron": cron, "kind": "diag.sleep",
        "params": {"seconds": 1}})
    # Its runs of three days ago, two days ago and yesterday were all missed.
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=soon - timedelta(days=3))
    time.sleep(1)
    assert not Job.objects.filter(owner=user).exists()

    # The portal is back: its first pass submits one job for the three missed runs.
    live.ensure("reconciler")
    job_id = wait_for(lambda: Schedule.objects.get(pk=schedule.pk).last_job_id, timeout=30,
                      what="the schedule submitted nothing")
    done = wait_for_job(job_id, timeout=60)
    assert done.state == "succeeded", (done.state, done.message, done.error)
    assert done.node in {"w1", "w2"} and done.result == {"slept": 1.0}
    assert (done.owner, done.team, done.name) == (user, team, "daily sleep")

    schedule.refresh_from_db()
    assert schedule.last_error == ""
    assert schedule.next_run_at > timezone.now()
    assert schedule.next_run_at == next_after(cron, now)  # the next one, not a missed one
    assert now < schedule.last_run_at < timezone.now()

    # Many reconciler passes later, still one job.
    time.sleep(2)
    assert list(Job.objects.filter(owner=user).values_list("pk", flat=True)) == [job_id]

    # And a reconciler restarted once more submits nothing again.
    live.cluster.kill("reconciler", signal.SIGTERM)
    live.ensure("reconciler")
    time.sleep(2)
    assert Job.objects.filter(owner=user).count() == 1
