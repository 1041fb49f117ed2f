"""The cluster's feed of events: each move recorded once where it happens, read by who may see
it, a page at a time, kept to its bound, and heard live; and the overview's counts as the job
list shows them, and its nodes naming the jobs they run."""

import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from rest_framework.test import APIClient

from alerts.evaluate import evaluate
from alerts.models import AlertRule
from audit import feed
from audit.models import FeedEvent
from jobs import broadcast, lifecycle, reconcile
from jobs.ingest import apply_events
from jobs.models import JobState
from nodes import services as node_services
from nodes.models import Node, NodeState
from portal.reconciler import Reconciler
from tests.factories import make_job

# Every test here records what would be broadcast instead of sending it.
pytestmark = pytest.mark.usefixtures("published")


def client_for(user, key=None):
    client = APIClient()
    client.force_authenticate(user)
    return client


def texts(client, **params) -> list[str]:
    response = client.get("/api/v1/events/", params)
    assert response.status_code == 200, response.content
    return [event["text"] for event in response.json()["results"]]


def finished(job, outcome="succeeded", error=""):
    """The ingester's batch for a job's whole attempt on w1."""
    now = time.time()
    base = {"job": job.pk, "attempt": job.attempt, "token": job.token, "ts": now}
    apply_events([{**base, "type": "started", "node": "w1", "worker": "w1@box"},
                  {**base, "type": "finished", "outcome": outcome, "result": None,
                   "error": error}])


def silent_node(name="w3"):
    return Node.objects.create(name=name, last_heartbeat=timezone.now() - timedelta(
        seconds=settings.NODE_OFFLINE_S + 60))


def test_each_team_reads_its_own_jobs_events_and_everyone_the_nodes(
        cast, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        mine = make_job(cast.alice, name="alice's")
        lifecycle.cancel(mine, actor=cast.alice)
        theirs = make_job(cast.bob, kind="diag.sleep", state=JobState.QUEUED)
        finished(theirs, "failed", "Traceback\nValueError: no")
        reconcile.mark_offline(timezone.now())
    silent_node()
    reconcile.mark_offline(timezone.now())

    assert texts(client_for(cast.alice)) == [
        "node w3 offline: no heartbeat since "
        f"{Node.objects.get(name='w3').last_heartbeat:%H:%M:%S} UTC",
        f"job {mine.pk} (alice's) cancelled by alice before it started"]
    assert texts(client_for(cast.bob))[1:] == [f"job {theirs.pk} (diag.sleep) failed: Traceback"]
    assert len(texts(client_for(cast.admin))) == 3
    # A job's line names it; a node's, the node.
    first = client_for(cast.alice).get("/api/v1/events/").json()["results"][-1]
    assert (first["kind"], first["level"], first["job"], first["node"]) == (
        "job.cancelled", "info", str(mine.pk), "")
    assert APIClient().get("/api/v1/events/").status_code in (401, 403)


def test_a_silent_node_is_one_offline_line_however_many_passes_and_alerts(
        cast, django_capture_on_commit_callbacks, published):
    AlertRule.objects.filter(kind="node_offline").update(enabled=True)
    silent_node("w3")
    reconciler = Reconciler()
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(3):
            reconciler.recover(timezone.now())
            evaluate(timezone.now())
    assert list(FeedEvent.objects.values_list("kind", "node")) == [("node.offline", "w3")]
    live = [e for groups in published for e in groups.get("cluster", [])
            if e["type"] == "feed.event"]
    assert [e["text"][:16] for e in live] == ["node w3 offline:"]
    # It comes back: one line again.
    apply_events([{"type": "heartbeat", "node": "w3", "worker": "w3@box", "attempts": [],
                   "reserved": [], "queues": ["cpu"], "labels": {}, "consuming": ["cpu"],
                   "concurrency": 2, "util": {}, "ts": time.time()}] * 2)
    assert list(FeedEvent.objects.values_list("text", flat=True))[0] == "node w3 back online"
    assert FeedEvent.objects.count() == 2


def test_the_feed_comes_a_page_at_a_time_newest_first_and_each_line_once(cast):
    for i in range(7):
        feed.record([feed.node_entry("w1", "node.online", f"line {i}")], broadcast.Outbox())
    client = client_for(cast.alice)
    seen, url = [], "/api/v1/events/?limit=3"
    while url:
        page = client.get(url).json()
        seen += [event["text"] for event in page["results"]]
        url = page["next"]
    assert seen == [f"line {i}" for i in reversed(range(7))]
    assert texts(client, kind="node.offline") == []
    refused = client.get("/api/v1/events/?kind=job.exploded")
    assert refused.status_code == 400 and "kind" in refused.json()
    assert client.get("/api/v1/events/?cursor=bogus").status_code == 404


def test_the_feed_keeps_its_newest_lines_and_none_past_its_days(cast, settings):
    settings.FEED_KEEP, settings.FEED_KEEP_DAYS = 4, 2
    old = timezone.now() - timedelta(days=3)
    feed.record([feed.node_entry("w1", "node.offline", "long ago", at=old)], broadcast.Outbox())
    for i in range(6):
        feed.record([feed.node_entry("w1", "node.online", f"line {i}")], broadcast.Outbox())
    done = Reconciler().housekeep(timezone.now(), deliver=lambda *a, **k: None)
    assert done["pruned"] >= 3
    assert list(FeedEvent.objects.values_list("text", flat=True)) == [
        "line 5", "line 4", "line 3", "line 2"]


def test_a_jobs_end_is_recorded_once_and_a_partitions_only_by_its_parent(
        cast, django_capture_on_commit_callbacks, published):
    parent = make_job(cast.alice, kind="diag.fanout", name="flights", state=JobState.RUNNING,
                      node="w1")
    child = make_job(cast.alice, name="flights · part 0", parent=parent, partition=0)
    with django_capture_on_commit_callbacks(execute=True):
        finished(child)
        finished(child)  # replayed: nothing moves, nothing is said
    assert FeedEvent.objects.count() == 0
    job = make_job(cast.alice, name="report")
    with django_capture_on_commit_callbacks(execute=True):
        finished(job)
        finished(job)
    assert texts(client_for(cast.alice)) == [f"job {job.pk} (report) succeeded"]
    live = [e for groups in published for e in groups.get(f"jobs-team-{job.team_id}", [])
            if e["type"] == "feed.event"]
    assert [(e["kind"], e["job"]) for e in live] == [("job.succeeded", str(job.pk))]
    assert [e for groups in published for e in groups.get("jobs-staff", [])
            if e["type"] == "feed.event"] == live


def test_a_lost_attempt_and_a_preemption_say_where_the_job_went(
        cast, django_capture_on_commit_callbacks):
    lost = make_job(cast.alice, state=JobState.RUNNING, name="long", lease_ago=30)
    preempted = make_job(cast.alice, state=JobState.RUNNING, name="greedy", lease_ago=-60)
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.lose(lost, timezone.now())
        lifecycle.preempt(preempted, "preempted for team etl", timezone.now())
    lines = client_for(cast.alice).get("/api/v1/events/").json()["results"]
    assert [(e["kind"], e["text"]) for e in lines] == [
        ("job.preempted", f"job {preempted.pk} (greedy): preempted for team etl; back in line "
                          "as attempt 2 (a preemption does not count against its attempts)"),
        ("job.requeued", f"job {lost.pk} (long): node w1 lost; moved back to the queue as "
                         "attempt 2 of 3")]
    assert lines[1]["node"] == "w1"


def test_draining_a_node_is_a_line_for_everyone_once(cast, django_capture_on_commit_callbacks):
    node = Node.objects.create(name="w2", state=NodeState.ONLINE)
    with django_capture_on_commit_callbacks(execute=True):
        node_services.drain_node(node=node, draining=True, actor=cast.admin, via="api")
        node_services.drain_node(node=node, draining=True, actor=cast.admin, via="api")
        node_services.drain_node(node=node, draining=False, actor=cast.admin, via="api")
    assert texts(client_for(cast.bob)) == [
        "node w2 undrained by admin: it takes work again",
        "node w2 drained by admin: it takes no new work"]


def test_the_overview_snapshot_has_the_newest_lines(cast):
    for i in range(25):
        feed.record([feed.node_entry("w1", "node.online", f"line {i}")], broadcast.Outbox())
    body = client_for(cast.alice).get("/api/v1/cluster/").json()
    assert [e["text"] for e in body["events"]] == [f"line {i}" for i in range(24, 4, -1)]


def test_jobs_by_state_counts_a_fan_out_once_as_the_list_shows_it(cast):
    now = timezone.now()
    parent = make_job(cast.alice, kind="diag.fanout", state=JobState.RUNNING)
    for i, state in enumerate([JobState.RUNNING, JobState.RUNNING, JobState.QUEUED]):
        make_job(cast.alice, state=state, parent=parent, partition=i)
    done = make_job(cast.alice, kind="diag.fanout", state=JobState.SUCCEEDED, finished_at=now)
    for i in range(3):
        make_job(cast.alice, state=JobState.SUCCEEDED, parent=done, partition=i,
                 finished_at=now)
    client = client_for(cast.alice)
    body = client.get("/api/v1/cluster/").json()
    listed = client.get("/api/v1/jobs/").json()["results"]
    by_state = {state: sum(1 for job in listed if job["state"] == state)
                for state in JobState.values}
    assert body["jobs_by_state"] == by_state == {**dict.fromkeys(JobState.values, 0),
                                                 "running": 1, "succeeded": 1}
    assert sum(body["finished_per_minute"]["succeeded"]) == 1
    # The queues hold every partition: the work waiting and running in them.
    cpu = next(q for q in body["queues"] if q["name"] == "cpu")
    assert (cpu["running"], cpu["queued"]) == (3, 1)


def test_a_node_names_the_running_jobs_its_viewer_may_see_and_counts_the_rest(cast):
    Node.objects.create(name="w1", running=3, concurrency=4)
    Node.objects.create(name="w2", running=1, concurrency=4)
    mine = make_job(cast.alice, state=JobState.RUNNING, node="w1", name="mine")
    gang = make_job(cast.alice, state=JobState.RUNNING, node="w1+w2", name="gang", nodes=2)
    make_job(cast.bob, state=JobState.RUNNING, node="w1", name="bob's")
    make_job(cast.alice, state=JobState.SUCCEEDED, node="w1", name="done")
    nodes = {n["name"]: n for n in client_for(cast.alice).get("/api/v1/cluster/").json()["nodes"]}
    assert [j["name"] for j in nodes["w1"]["jobs"]] == ["mine", "gang"]
    assert nodes["w1"]["jobs"][0]["id"] == str(mine.pk)
    assert nodes["w1"]["other_jobs"] == 1
    assert ([j["id"] for j in nodes["w2"]["jobs"]], nodes["w2"]["other_jobs"]) == (
        [str(gang.pk)], 0)
    staff = {n["name"]: n for n in client_for(cast.admin).get("/api/v1/cluster/").json()["nodes"]}
    assert len(staff["w1"]["jobs"]) == 3 and staff["w1"]["other_jobs"] == 0
