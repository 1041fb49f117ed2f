"""Gangs without a cluster: the spec's fields and their 400s, admission all or nothing (placed
on distinct fresh nodes, counted whole against the quota, holding nothing while it waits), the
ranks' moves through the ingester (a failed rank sends the whole gang back to admission; the
last attempt fails), a lost rank's node, and train.torch offered only with torch."""

import json
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import admission, dispatch, ingest, lifecycle
from jobs.models import Attempt, AttemptRank, Job, JobState
from nodes.models import Node, NodeState
from workers import protocol

pytestmark = pytest.mark.django_db


def post(api, body):
    return api.post("/api/v1/jobs/", data=json.dumps(body), content_type="application/json")


def nodes(*names, concurrency=1, queues=("train",), labels=None, heard=0.0):
    at = timezone.now() - timedelta(seconds=heard)
    for name in names:
        Node.objects.update_or_create(name=name, defaults=dict(
            state=NodeState.ONLINE, queues=list(queues), concurrency=concurrency,
            labels=labels or {}, last_heartbeat=at))


def admitted(api, body, *names):
    """A gang submitted and placed on these nodes (heard from again after the request, which
    may be slow: the first of a process)."""
    job = Job.objects.get(pk=post(api, body).json()["id"])
    nodes(*names)
    admission.admit()
    job.refresh_from_db()
    assert job.state == JobState.QUEUED, job.message
    return job


def gang(nodes=2, slots=1, **extra):
    return {"kind": "diag.sleep", "queue": "train", "params": {"seconds": 1}, "nodes": nodes,
            "slots_per_node": slots, **extra}


def test_bad_gang_fields_are_a_400_naming_the_field(api):
    nodes("n1", "n2")
    for body, field in [(gang(nodes=0), "nodes"), (gang(nodes="2"), "nodes"),
                        (gang(slots=0), "slots_per_node"), (gang(nodes=65), "nodes"),
                        (gang(nodes=3), "nodes"),
                        (gang(labels={"zone": "x"}, nodes=2), "labels")]:
        response = post(api, body)
        assert response.status_code == 400, body
        assert field in response.json(), response.json()
    assert "has 2 nodes, fewer than 3" in post(api, gang(nodes=3)).json()["nodes"][0]


def test_the_openapi_schema_documents_nodes_and_slots_per_node(api):
    schema = api.get("/api/schema/?format=json")
    text = schema.content.decode()
    assert schema.status_code == 200 and '"slots_per_node"' in text and '"nodes"' in text


def test_a_gang_is_admitted_whole_on_distinct_nodes_or_waits_holding_nothing(api, cast):
    nodes("n1", "n2", "n3")
    first = post(api, gang(nodes=2, slots=1)).json()
    job = Job.objects.get(pk=first["id"])
    assert job.state == JobState.QUEUED
    ranks = list(AttemptRank.objects.filter(job=job).order_by("rank"))
    assert [r.rank for r in ranks] == [0, 1] and len({r.node for r in ranks}) == 2
    # Each rank goes to its node's own queue.
    sends = dispatch.sends_of([job])
    assert [(spec.rank, spec.world_size, queue) for spec, queue in sends] == [
        (0, 2, protocol.node_queue(ranks[0].node)), (1, 2, protocol.node_queue(ranks[1].node))]
    second = Job.objects.get(pk=post(api, gang(nodes=2)).json()["id"])
    assert second.state == JobState.PENDING
    assert second.message == "needs 2 nodes with 1 free slot each; 1 has them"
    assert not AttemptRank.objects.filter(job=second).exists()
    # A plain job still takes the free node: the waiting gang holds no part of it.
    plain = Job.objects.get(pk=post(api, {"kind": "diag.sleep", "queue": "train",
                                          "params": {"seconds": 1}}).json()["id"])
    assert plain.state == JobState.QUEUED
    # The first gang ends: the second is placed whole.
    lifecycle.claim(job.pk, JobState.RUNNING)
    lifecycle.claim(job.pk, JobState.SUCCEEDED)
    admission.admit()
    second.refresh_from_db()
    assert second.state == JobState.QUEUED and AttemptRank.objects.filter(job=second).count() == 2


def test_slots_per_node_and_stale_nodes(api):
    nodes("n1", concurrency=2)
    nodes("n2", concurrency=1)
    nodes("n3", concurrency=2, heard=60)  # online, but not heard from lately
    job = Job.objects.get(pk=post(api, gang(nodes=2, slots=2)).json()["id"])
    assert job.state == JobState.PENDING
    assert job.message == "needs 2 nodes with 2 free slots each; 1 has them"
    nodes("n2", concurrency=2)
    admission.admit()
    job.refresh_from_db()
    assert job.state == JobState.QUEUED
    placed = dict(AttemptRank.objects.filter(job=job).values_list("rank", "node"))
    assert placed == {0: placed[0], 1: placed[0], 2: placed[2], 3: placed[2]}
    assert {placed[0], placed[2]} == {"n1", "n2"} and job.node in ("n1+n2", "n2+n1")


def test_a_gang_counts_whole_against_its_teams_quota(api, cast):
    nodes("n1", "n2", "n3", concurrency=4)
    cast.ml.max_cpus = 5
    cast.ml.save()
    assert post(api, gang(nodes=3, slots=2)).json() == {
        "cpus": ["more than team ml's quota of 5"]}
    first = post(api, gang(nodes=2, slots=2)).json()  # 4 CPU slots of 5
    assert Job.objects.get(pk=first["id"]).state == JobState.QUEUED
    second = Job.objects.get(pk=post(api, gang(nodes=2)).json()["id"])
    assert second.state == JobState.PENDING and "4 of 5 CPU slots" in second.message


def events_for(job, rank, *kinds, **fields):
    now = time.time()
    out = []
    for kind in kinds:
        event = {"type": kind, "job": job.pk, "attempt": job.attempt, "token": job.token,
                 "rank": rank, "ts": now}
        if kind == "started":
            event.update(node=f"n{rank + 1}", worker=f"n{rank + 1}@h")
        if kind == "finished":
            event.update(outcome=fields.get("outcome", "succeeded"),
                         result=fields.get("result"), error=fields.get("error", ""))
        if kind == "rendezvous":
            event.update(address="10.0.0.1", port=29500)
        out.append(event)
    return out


def test_ranks_start_meet_and_succeed_together(api, redis_client,
                                               django_capture_on_commit_callbacks):
    nodes("n1", "n2")
    job = Job.objects.get(pk=post(api, gang(nodes=2)).json()["id"])
    with django_capture_on_commit_callbacks(execute=True):
        ingest.apply_events(events_for(job, 0, "started", "rendezvous"))
    job.refresh_from_db()
    assert job.state == JobState.RUNNING
    assert redis_client.get(protocol.rendezvous_key(job.pk, 1)) == b"10.0.0.1:29500"
    ingest.apply_events(events_for(job, 1, "started") + events_for(
        job, 1, "finished", result={"rank": 1}))
    job.refresh_from_db()
    assert job.state == JobState.RUNNING  # rank 0 still runs
    ingest.apply_events(events_for(job, 0, "finished", result={"accuracy": 0.9}))
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED and job.result == {"accuracy": 0.9}
    assert set(AttemptRank.objects.filter(job=job).values_list("state", flat=True)) == {
        "succeeded"}


def test_a_failed_rank_stops_the_gang_and_sends_it_back_whole_then_fails_it(
        api, redis_client, django_capture_on_commit_callbacks):
    nodes("n1", "n2", "n3")
    job = Job.objects.get(pk=post(api, gang(nodes=2, max_attempts=2)).json()["id"])
    ingest.apply_events(events_for(job, 0, "started") + events_for(job, 1, "started"))
    with django_capture_on_commit_callbacks(execute=True):
        ingest.apply_events(events_for(job, 1, "finished", outcome="failed",
                                       error="RuntimeError: peer gone"))
    job.refresh_from_db()
    assert job.attempt == 2 and job.state == JobState.PENDING
    # The attempt says why; the job, that it waits a moment for its old nodes to report.
    assert Attempt.objects.get(job=job, number=1).error.startswith("rank 1 on n2 failed: "
                                                                  "RuntimeError: peer gone")
    assert job.message == f"attempt 2: waits {admission.SETTLE_S:g} s for its last gang's " \
        "nodes to report"
    first = dict(AttemptRank.objects.filter(job=job, attempt=1).values_list("rank", "state"))
    assert first == {0: "cancelled", 1: "failed"}
    assert redis_client.exists(protocol.stop_key(job.pk, 1))  # rank 0 is told to stop
    assert Attempt.objects.get(job=job, number=1).state == "failed"
    # It waits for its old nodes to report again before it is placed anew.
    Job.objects.filter(pk=job.pk).update(
        dispatched_at=timezone.now() - timedelta(seconds=admission.SETTLE_S + 1))
    nodes("n1", "n2", "n3")
    admission.admit()
    job.refresh_from_db()
    assert job.state == JobState.QUEUED and AttemptRank.objects.filter(
        job=job, attempt=2).count() == 2
    ingest.apply_events(events_for(job, 0, "started", "finished", outcome="failed",
                                   error="ValueError: bad"))
    job.refresh_from_db()
    assert job.state == JobState.FAILED and job.error == "rank 0: ValueError: bad"
    assert not AttemptRank.objects.filter(job=job, state__in=["queued", "running"]).exists()


def test_a_rank_whose_node_goes_silent_loses_the_whole_gang(api):
    nodes("n1", "n2")
    job = Job.objects.get(pk=post(api, gang(nodes=2)).json()["id"])
    ingest.apply_events(events_for(job, 0, "started") + events_for(job, 1, "started"))
    AttemptRank.objects.filter(job=job, rank=1).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert lifecycle.lose_lost_ranks(timezone.now()) == 1
    job.refresh_from_db()
    assert job.state == JobState.PENDING and job.attempt == 2
    assert job.message.startswith("rank 1 lost with node")
    states = dict(AttemptRank.objects.filter(job=job, attempt=1).values_list("rank", "state"))
    assert states == {0: "cancelled", 1: "lost"}
    assert lifecycle.lose_lost_ranks(timezone.now()) == 0  # once


def test_a_rank_stopped_with_its_gang_writes_nothing_more(api):
    """The last attempt fails with rank 1 (its token stays: nothing moves on): rank 0, still
    running until its node stops it, lands no more log lines, metrics or files."""
    from jobs.models import Artifact, LogLine, MetricPoint

    nodes("n1", "n2")
    job = admitted(api, gang(nodes=2, max_attempts=1), "n1", "n2")
    ingest.apply_events(events_for(job, 0, "started") + events_for(job, 1, "started"))
    line = {"type": "log", "job": job.pk, "attempt": 1, "token": job.token, "rank": 0,
            "level": "info", "ts": time.time()}
    ingest.apply_events([{**line, "seq": 1, "text": "epoch 1"}])
    after = [{**line, "seq": 2, "text": "epoch 2"},
             {**line, "type": "metric", "name": "loss", "step": 2, "value": 0.5},
             {**line, "type": "artifact", "name": "checkpoint.pt", "path": "x", "size": 1}]
    # In the batch that fails the gang, after the failure; and in a batch of its own.
    ingest.apply_events(events_for(job, 1, "finished", outcome="failed", error="boom")
                        + after[:1])
    ingest.apply_events(after[1:])
    job.refresh_from_db()
    assert job.state == JobState.FAILED
    assert list(LogLine.objects.filter(job=job).values_list("text", flat=True)) == ["epoch 1"]
    assert not MetricPoint.objects.filter(job=job).exists()
    assert not Artifact.objects.filter(job=job).exists()


def test_rank_0_listens_where_its_peers_reach_it(monkeypatch):
    """NODE_ADDRESS if set; else the host name's address, unless it is a loopback one (a
    node in a network namespace of its own, or a host whose name maps to 127.0.1.1): then
    the address this node reaches the broker from."""
    from workers import context

    monkeypatch.setenv("NODE_ADDRESS", "10.1.2.3")
    assert context.node_address() == "10.1.2.3"
    monkeypatch.delenv("NODE_ADDRESS")
    monkeypatch.setattr(context.socket, "gethostbyname", lambda name: "192.0.2.7")
    assert context.node_address() == "192.0.2.7"
    monkeypatch.setattr(context.socket, "gethostbyname", lambda name: "127.0.1.1")
    monkeypatch.setattr(context, "REDIS_URL", "redis://127.0.0.1:6379/0")
    assert context.node_address() == "127.0.0.1"  # the route to the broker's, not 127.0.1.1
    # The ranks' own connections (gloo's) use the interface that has the address.
    assert context.interface_of("127.0.0.1") is None
    assert context.interface_of("192.0.2.250") is None  # no interface has it


def test_cancel_of_a_queued_gang_ends_its_ranks(api):
    nodes("n1", "n2")
    job = Job.objects.get(pk=post(api, gang(nodes=2)).json()["id"])
    assert api.post(f"/api/v1/jobs/{job.pk}/cancel/").status_code == 202
    assert set(AttemptRank.objects.filter(job=job).values_list("state", flat=True)) == {
        "cancelled"}


def test_a_worker_without_torch_does_not_offer_train_torch_and_says_why():
    code = ("import importlib.util\n"  # as if torch were not installed
            "real = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda name, *a: None if name.split('.')[0] == "
            "'torch' else real(name, *a)\n"
            "from workers.kinds import get_kind\n"
            "print(get_kind('train.torch').unavailable)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "torch is not installed on this node" in out


def test_the_kinds_api_says_whether_a_kind_is_offered(api):
    kinds = {k["name"]: k for k in api.get("/api/v1/kinds/").json()}
    assert kinds["train.torch"]["unavailable"] == ""  # torch is installed here
    assert kinds["diag.sleep"]["unavailable"] == ""


def test_a_file_kept_twice_in_one_batch_is_one_artifact_the_latest(api):
    from jobs.models import Artifact

    job = Job.objects.get(pk=post(api, {"kind": "diag.sleep", "params": {"seconds": 1}})
                          .json()["id"])
    base = {"type": "artifact", "job": job.pk, "attempt": 1, "token": job.token,
            "name": "checkpoint.pt", "path": f"{job.pk}/1/checkpoint.pt", "ts": time.time()}
    ingest.apply_events([{"type": "started", "job": job.pk, "attempt": 1, "token": job.token,
                          "node": "n1", "worker": "n1@h", "ts": time.time()}])
    ingest.apply_events([{**base, "size": 10, "sha256": "a" * 64},
                         {**base, "size": 20, "sha256": "b" * 64}])
    ingest.apply_events([{**base, "size": 30, "sha256": "c" * 64}])
    assert list(Artifact.objects.filter(job=job).values_list("size", flat=True)) == [30]
