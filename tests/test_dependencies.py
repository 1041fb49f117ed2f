"""Jobs that wait for others: pending until those succeed, cancelled when one fails."""

import time

from django.test import TestCase

from jobs import dependencies
from jobs.ingest import apply_events
from jobs.models import Job, JobState


def committed():
    """What waits for a commit runs at the end of the block, as after a real commit (the
    test's own transaction never commits)."""
    return TestCase.captureOnCommitCallbacks(execute=True)


def submit(api, expect=201, **body):
    with committed():
        response = api.post("/api/v1/jobs/", {"kind": "diag.noop", "params": {}, **body},
                            format="json")
    assert response.status_code == expect, response.content
    return response.json()


def end(job_id, outcome="succeeded"):
    job = Job.objects.get(pk=job_id)
    base = {"job": job.pk, "a": job.attempt, "k": job.token}
    with committed():
        apply_events([{"t": "started", **base, "ts": time.time(), "node": "w1"},
                      {"t": "finished", **base, "ts": time.time(), "outcome": outcome,
                       "error": "boom" if outcome == "failed" else "", "result": None}])


def test_a_job_waits_pending_until_the_jobs_it_needs_succeed(api):
    first, second = submit(api), submit(api)
    waiting = submit(api, after=[first["id"], int(second["id"])])
    assert waiting["state"] == "pending" and waiting["after"] == [first["id"], second["id"]]
    assert waiting["message"] == f"waiting for jobs {first['id']}, {second['id']} to succeed"
    end(first["id"])
    assert Job.objects.get(pk=waiting["id"]).state == "pending"
    end(second["id"])
    job = Job.objects.get(pk=waiting["id"])
    assert job.state == "queued" and job.dispatched_at is not None and job.message == ""


def test_a_failure_cancels_what_waits_for_it_and_what_waits_for_that(api):
    first = submit(api)
    second = submit(api, after=[first["id"]])
    third = submit(api, after=[second["id"]])
    end(first["id"], "failed")
    second_job, third_job = Job.objects.get(pk=second["id"]), Job.objects.get(pk=third["id"])
    assert second_job.state == "cancelled"
    assert second_job.message == f"cancelled: job {first['id']} failed"
    assert third_job.state == "cancelled"
    assert third_job.message == f"cancelled: job {second['id']} cancelled"


def test_waiting_for_a_job_that_already_succeeded_queues_at_once(api):
    first = submit(api)
    end(first["id"])
    assert submit(api, after=[first["id"]])["state"] == "queued"


def test_only_visible_jobs_can_be_waited_for_and_ids_must_be_ids(api, cast):
    from jobs import services

    theirs, _ = services.submit_job(owner=cast.bob, spec=services.validate_spec(
        {"kind": "diag.noop", "params": {}}))
    assert submit(api, expect=400, after=[str(theirs.pk)]) == {
        "after": [f"no such job in team ml: {theirs.pk}"]}
    # Nor a job of another of the user's teams: its team would learn how that one went.
    from accounts.models import Membership

    Membership.objects.create(team=cast.etl, user=cast.alice, role="viewer")
    assert submit(api, expect=400, after=[str(theirs.pk)]) == {
        "after": [f"no such job in team ml: {theirs.pk}"]}
    assert "after" in submit(api, expect=400, after=["x"])
    assert "after" in submit(api, expect=400, after="3")
    assert "after" in submit(api, expect=400, after=[True])
    assert Job.objects.filter(owner=cast.alice).count() == 0


def test_the_reconciler_settles_what_a_crash_left_waiting(api):
    first = submit(api)
    waiting = submit(api, after=[first["id"]])
    Job.objects.filter(pk=first["id"]).update(state=JobState.SUCCEEDED)  # no hook ran
    dependencies.settle_all()
    assert Job.objects.get(pk=waiting["id"]).state == "queued"


def test_a_waiting_job_can_be_cancelled(api):
    first = submit(api)
    waiting = submit(api, after=[first["id"]])
    with committed():
        assert api.post(f"/api/v1/jobs/{waiting['id']}/cancel/").status_code == 202
    assert Job.objects.get(pk=waiting["id"]).state == "cancelled"
    end(first["id"])
    assert Job.objects.get(pk=waiting["id"]).state == "cancelled"
