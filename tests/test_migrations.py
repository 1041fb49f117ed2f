"""The migration that gives every job a team, run on a database with jobs in it (PostgreSQL,
as the suite runs): each owner's jobs go to a team of their own, and jobs that wait for others
are marked blocked."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("accounts", "0001_initial"), ("jobs", "0005_job_after"), ("schedules", None)]


@pytest.mark.django_db(transaction=True)
def test_existing_jobs_get_their_owners_teams_and_waiting_ones_are_blocked():
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate(BEFORE)
    try:
        old = MigrationExecutor(connection).loader.project_state(
            [node for node in BEFORE if node[1]]).apps
        User, Job = old.get_model("auth", "User"), old.get_model("jobs", "Job")
        ann = User.objects.create(username="Ann Lee")
        common = {"kind": "diag.noop", "queue": "cpu", "timeout_s": 60, "token": "t"}
        first = Job.objects.create(owner=ann, state="succeeded", **common)
        waiting = Job.objects.create(owner=ann, state="pending", **common)
        waiting.after.add(first)
        other = Job.objects.create(owner=User.objects.create(username="bo"), state="queued",
                                   **common)
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(latest)
    from accounts.models import Membership
    from jobs.models import Job as NewJob

    jobs = {job.pk: job for job in NewJob.objects.select_related("team")}
    assert jobs[first.pk].team.name == jobs[waiting.pk].team.name == "ann-lee"
    assert jobs[other.pk].team.name == "bo"
    assert jobs[waiting.pk].blocked and not jobs[first.pk].blocked
    assert Membership.objects.get(team__name="ann-lee").role == "admin"
