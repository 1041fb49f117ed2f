"""Migrations run on a database with rows in it (PostgreSQL, as the suite runs). The one that
gives every job a team: each owner's jobs go to a team of their own, and jobs that wait for
others are marked blocked. The one that gives nodes an app of their own: their rows, history
and permissions stay."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

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


# The nodes app's first migration: everything before it is where the schema stood while nodes
# lived in the jobs app.
BEFORE_NODES_APP = [("jobs", "0009_gangs"), ("nodes", None)]


@pytest.mark.django_db(transaction=True)
def test_nodes_keep_their_rows_history_and_permissions_when_they_move_to_their_own_app():
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate(BEFORE_NODES_APP)
    try:
        before = [("jobs", "0009_gangs"),
                  *(leaf for leaf in latest if leaf[0] in {"auth", "contenttypes"})]
        old = MigrationExecutor(connection).loader.project_state(before).apps
        Node = old.get_model("jobs", "Node")
        node = Node.objects.create(name="w9", state="draining", queues=["cpu"],
                                   labels={"gpu": "a100"}, concurrency=4)
        now = timezone.now()
        old.get_model("jobs", "NodeSample").objects.create(node=node, ts=now, cpu=12.5, mem=40)
        old.get_model("jobs", "NodeMinute").objects.create(node=node, minute=now, cpu=12.5,
                                                           cpu_max=20, mem=40, samples=6)
        ContentType = old.get_model("contenttypes", "ContentType")
        node_type = ContentType.objects.get_or_create(app_label="jobs", model="node")[0]
        Permission, User = old.get_model("auth", "Permission"), old.get_model("auth", "User")
        view_nodes = Permission.objects.get_or_create(content_type=node_type,
                                                      codename="view_node",
                                                      defaults={"name": "Can view node"})[0]
        operator = User.objects.create(username="operator", is_staff=True)
        operator.user_permissions.add(view_nodes)
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(latest)
    from django.contrib.auth import get_user_model
    from django.contrib.contenttypes.models import ContentType as NewContentType

    from nodes.models import Node as NewNode
    from nodes.models import NodeMinute, NodeSample

    moved = NewNode.objects.get(pk=node.pk)
    assert (moved.name, moved.state, moved.queues, moved.labels, moved.concurrency) == (
        "w9", "draining", ["cpu"], {"gpu": "a100"}, 4)
    assert [s.cpu for s in moved.samples.all()] == [12.5]
    assert [(m.cpu_max, m.samples) for m in moved.minutes.all()] == [(20, 6)]
    NewContentType.objects.clear_cache()
    assert NewContentType.objects.get_for_model(NewNode).pk == node_type.pk
    assert get_user_model().objects.get(username="operator").has_perm("nodes.view_node")
    # Rows still go into the same tables, their ids following on.
    assert NewNode.objects.create(name="w10").pk > moved.pk
    moved.delete()  # its history goes with it, as the foreign keys say
    assert not NodeSample.objects.filter(node_id=node.pk).exists()
    assert not NodeMinute.objects.filter(node_id=node.pk).exists()
