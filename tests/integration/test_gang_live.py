"""Gangs on real workers: train.torch across two nodes (the same model as on one), a gang that
waits whole for its nodes, one that loses a node mid-training and resumes from its checkpoint
on a fresh gang, two gangs that share three nodes without a deadlock, and a cancel that stops
every rank. Three one-slot nodes (g1, g2, g3) serve only gang jobs (label gang=yes)."""

from __future__ import annotations

import io
import signal
import time

import pytest
import torch
from django.test import Client

from jobs.models import Attempt, AttemptRank, Job, LogLine, MetricPoint
from nodes.models import Node
from tests.integration.conftest import wait_for_job
from tests.integration.test_jobs_live import submit

pytestmark = pytest.mark.integration

NODES = ("g1", "g2", "g3")
GANG = {"gang": "yes"}


def start_nodes(live, *names):
    for name in names:
        proc = live.cluster.procs.get(name)
        if proc is None or proc.poll() is not None:
            live.cluster.start_worker(name, concurrency=1, queues="train",
                                      labels=f"gang=yes,host={name}")
    deadline = time.monotonic() + 60
    while True:
        ready = {node.name for node in Node.objects.filter(name__in=names, state="online")
                 if node.labels.get("gang") == "yes" and "train" in node.queues}
        if ready == set(names):
            return
        assert time.monotonic() < deadline, f"gang nodes not ready: {ready}"
        time.sleep(0.2)


@pytest.fixture
def gang_nodes(live):
    start_nodes(live, *NODES)
    yield live
    start_nodes(live, *NODES)  # one a test killed comes back for the next


def torch_job(nodes=2, **params):
    return {"kind": "train.torch", "name": "gang test", "labels": GANG, "nodes": nodes,
            "max_attempts": 2, "params": {"dataset": "digits", "epochs": 3,
                                          "batch_size": 64, "seed": 3, **params}}


def blocker(node):
    return {"kind": "diag.sleep", "queue": "train", "labels": {"host": node},
            "params": {"seconds": 600}}


def ranks_of(job_id, attempt=None):
    ranks = AttemptRank.objects.filter(job_id=job_id).order_by("attempt", "rank")
    return list(ranks.filter(attempt=attempt) if attempt else ranks)


def wait_until(check, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise TimeoutError(f"{what} not met after {timeout} s")


def model_of(live, http, job_id):
    response = http.get(live.url(f"/api/v1/jobs/{job_id}/artifacts/model.pt"), timeout=10)
    assert response.status_code == 200
    return torch.load(io.BytesIO(response.content), weights_only=True)


def test_two_ranks_on_two_nodes_train_the_same_model_as_one(gang_nodes, http):
    live = gang_nodes
    two = submit(live, http, torch_job(nodes=2))
    job = wait_for_job(two["id"], timeout=240)
    assert job.state == "succeeded", (job.error, job.message)
    ranks = ranks_of(job.pk)
    assert [r.rank for r in ranks] == [0, 1] and all(r.state == "succeeded" for r in ranks)
    assert len({r.node for r in ranks}) == 2 and {r.node for r in ranks} <= set(NODES)
    assert ranks[0].address.rpartition(":")[2].isdigit()  # where rank 0 listened
    loss = list(MetricPoint.objects.filter(job_id=job.pk, name="loss").order_by("step")
                .values_list("value", flat=True))
    assert len(loss) == 3 and loss[-1] < loss[0]
    for rank in (0, 1):  # each rank charts its own throughput and writes its own log
        assert MetricPoint.objects.filter(job_id=job.pk, name=f"samples_per_s_rank{rank}")\
            .count() == 3
        assert LogLine.objects.filter(job_id=job.pk, rank=rank).exists()
    assert job.result["world_size"] == 2 and job.result["accuracy"] > 0.5
    detail = http.get(live.url(f"/api/v1/jobs/{job.pk}/"), timeout=10).json()
    assert [(r["rank"], r["node"]) for r in detail["ranks"]] == [(r.rank, r.node)
                                                                  for r in ranks]
    only_one = http.get(live.url(f"/api/v1/jobs/{job.pk}/logs/?rank=1"), timeout=10).json()
    assert only_one["lines"] and {line["rank"] for line in only_one["lines"]} == {1}
    browser = Client()
    browser.force_login(job.owner)
    page = browser.get(f"/jobs/{job.pk}/").content.decode()
    assert 'id="ranks"' in page and "[rank 1]" in page and ranks[1].node in page

    one = submit(live, http, torch_job(nodes=1))
    single = wait_for_job(one["id"], timeout=240)
    assert single.state == "succeeded", single.error
    assert not AttemptRank.objects.filter(job_id=single.pk).exists()  # one rank: no gang
    a, b = model_of(live, http, job.pk), model_of(live, http, single.pk)
    assert set(a) == set(b)
    worst = max(float((a[name] - b[name]).abs().max()) for name in a)
    assert worst < 1e-4, f"the 2-rank model differs from the 1-rank one by {worst}"
    # The history now has the same job on one rank: the gang says how it compares.
    speedup = http.get(live.url(f"/api/v1/jobs/{job.pk}/"), timeout=10).json()["speedup"]
    assert speedup == round(single.result["epoch_s"] / job.result["epoch_s"], 3)


def test_a_gang_waits_whole_while_one_node_is_free_and_starts_when_a_second_frees(
        gang_nodes, http):
    live = gang_nodes
    blockers = [submit(live, http, blocker(node))["id"] for node in ("g2", "g3")]
    for job_id in blockers:
        wait_for_job(job_id, states={"running"}, timeout=60)
    gang = submit(live, http, torch_job(nodes=2, epochs=1))
    wait_until(lambda: "needs 2 nodes with 1 free slot each; 1 has them"
               in Job.objects.get(pk=gang["id"]).message, what="the gang's waiting message")
    time.sleep(2)  # passes go on: it still holds nothing, not even g1's slot
    job = Job.objects.get(pk=gang["id"])
    assert job.state == "pending" and not ranks_of(job.pk)
    http.post(live.url(f"/api/v1/jobs/{blockers[0]}/cancel/"), timeout=10)
    job = wait_for_job(gang["id"], timeout=240)
    assert job.state == "succeeded", job.error
    assert {r.node for r in ranks_of(job.pk)} == {"g1", "g2"}
    http.post(live.url(f"/api/v1/jobs/{blockers[1]}/cancel/"), timeout=10)
    wait_for_job(blockers[1], timeout=30)


def test_a_lost_node_stops_the_other_rank_and_the_gang_resumes_from_its_checkpoint(
        gang_nodes, http):
    live = gang_nodes
    gang = submit(live, http, torch_job(nodes=2, epochs=25, batch_size=32))
    job_id = gang["id"]
    # Killed once a checkpoint or two are kept.
    wait_until(lambda: MetricPoint.objects.filter(job_id=job_id, name="loss", step__gte=2)
               .exists(), timeout=240, what="epoch 2")
    first = ranks_of(job_id, 1)
    victim = first[1].node
    live.cluster.kill(victim, signal.SIGKILL)
    job = wait_for_job(job_id, timeout=300)
    assert job.state == "succeeded", (job.error, job.message)
    assert job.attempt == 2
    attempts = {a.number: a.state for a in Attempt.objects.filter(job_id=job_id)}
    assert attempts == {1: attempts[1], 2: "succeeded"} and attempts[1] in {"failed", "lost"}
    # Every rank of attempt 1 ended: the survivor was stopped, none runs on.
    assert all(r.state not in {"queued", "running"} for r in ranks_of(job_id, 1))
    second = ranks_of(job_id, 2)
    assert victim not in {r.node for r in second} and len({r.node for r in second}) == 2
    resumed = job.result["resumed_from_epoch"]
    assert resumed and resumed >= 2
    assert LogLine.objects.filter(job_id=job_id, attempt=2,
                                  text__startswith=f"resumed from epoch {resumed}").exists()
    # Attempt 2 charted only the epochs after its checkpoint.
    assert not MetricPoint.objects.filter(job_id=job_id, attempt=2, name="loss",
                                          step__lte=resumed).exists()
    assert MetricPoint.objects.filter(job_id=job_id, attempt=2, name="loss", step=25).exists()


def test_two_gangs_of_two_on_three_nodes_never_deadlock(gang_nodes, http):
    live = gang_nodes
    ids = [submit(live, http, torch_job(nodes=2, epochs=2))["id"] for _ in range(2)]
    jobs = [wait_for_job(job_id, timeout=300) for job_id in ids]
    assert [job.state for job in jobs] == ["succeeded", "succeeded"], [j.error for j in jobs]
    a, b = (ranks_of(job.pk) for job in jobs)
    assert len(a) == 2 and len(b) == 2
    # Three nodes hold one gang of two at a time: the second started after the first ended.
    first, second = sorted((a, b), key=lambda ranks: min(r.started_at for r in ranks))
    assert min(r.started_at for r in second) >= max(r.finished_at for r in first)


def test_cancel_stops_every_rank(gang_nodes, http):
    live = gang_nodes
    gang = submit(live, http, torch_job(nodes=2, epochs=500, batch_size=32))
    job_id = gang["id"]
    wait_until(lambda: MetricPoint.objects.filter(job_id=job_id, name="loss").exists(),
               timeout=240, what="a first epoch")
    nodes = {r.node for r in ranks_of(job_id, 1)}
    response = http.post(live.url(f"/api/v1/jobs/{job_id}/cancel/"), timeout=10)
    assert response.status_code in (200, 202), response.text
    job = wait_for_job(job_id, timeout=60)
    assert job.state == "cancelled"
    assert all(r.state == "cancelled" for r in ranks_of(job_id, 1))
    # Both nodes' slots come free: their heartbeats list nothing running.
    wait_until(lambda: all(n.running == 0 for n in Node.objects.filter(name__in=nodes)),
               timeout=30, what="both nodes idle")
