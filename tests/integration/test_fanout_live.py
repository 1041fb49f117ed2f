"""Fan-out on the real cluster: partitions run as child jobs on any worker, a failing partition
is retried alone, a dead node loses and duplicates nothing, a cancel reaches every partition."""

import signal

import pytest

from jobs.models import Attempt, Job
from tests.integration.conftest import wait_for_job
from tests.integration.test_jobs_live import submit

pytestmark = pytest.mark.integration


def fan_out(parts, seconds, **params):
    return {"kind": "diag.fanout", "params": {"parts": parts, "seconds": seconds, **params},
            "name": "fan-out test"}


def wait_for_children(parent_id, count, states, timeout=60):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = list(Job.objects.filter(parent_id=parent_id))
        if len(children) == count and all(c.state in states for c in children):
            return children
        time.sleep(0.2)
    raise TimeoutError(f"children of {parent_id}: {[(c.partition, c.state) for c in children]}")


def test_a_partition_that_fails_once_is_retried_alone_and_the_job_succeeds(live, http):
    job = submit(live, http, fan_out(4, 0.5, fail_first_attempt=[2]))
    done = wait_for_job(job["id"], timeout=90)
    assert done.state == "succeeded", done.error
    assert done.result == {"parts": 4, "slept": 2.0, "attempts": [1, 1, 2, 1]}
    assert done.progress == 1.0
    children = {c.partition: c for c in Job.objects.filter(parent=done)}
    assert sorted(children) == [0, 1, 2, 3]
    assert all(c.state == "succeeded" for c in children.values())
    failed_once = Attempt.objects.get(job=children[2], number=1)
    assert failed_once.state == "failed" and "fails on its first attempt" in failed_once.error
    # Over REST: the list shows submitted jobs; the partitions are listed under their parent.
    listed = http.get(live.url("/api/v1/jobs/"), timeout=10).json()["results"]
    assert [j["id"] for j in listed] == [str(done.pk)]
    parts = http.get(live.url(f"/api/v1/jobs/?parent={done.pk}"), timeout=10).json()["results"]
    assert sorted(p["partition"] for p in parts) == [0, 1, 2, 3]
    detail = http.get(live.url(f"/api/v1/jobs/{done.pk}/"), timeout=10).json()
    assert [p["partition"] for p in detail["partitions"]] == [0, 1, 2, 3]
    assert http.get(live.url("/api/v1/jobs/?parent=999999"), timeout=10).status_code == 404


def test_a_node_killed_mid_fan_out_loses_no_partition_and_runs_none_twice(live, http):
    job = submit(live, http, fan_out(4, 4))
    parent = wait_for_job(job["id"], states={"running"}, timeout=30)
    wait_for_children(parent.pk, 4, {"queued", "running"}, timeout=30)
    live.cluster.kill(parent.node, signal.SIGKILL)  # the parent's attempt and its partitions

    try:
        done = wait_for_job(job["id"], timeout=120)
    except TimeoutError as exc:
        from nodes.models import Node
        state = [(c.partition, c.pk, c.state, c.attempt, c.node) for c in
                 Job.objects.filter(parent_id=job["id"])]
        nodes = list(Node.objects.values_list("name", "state", "reserved", "running"))
        raise AssertionError(f"{exc}; children {state}; nodes {nodes}") from None
    assert done.state == "succeeded", done.error
    assert done.attempt == 2  # the parent came back and found its partitions
    children = list(Job.objects.filter(parent=done))
    assert sorted(c.partition for c in children) == [0, 1, 2, 3]  # none made twice
    for child in children:
        won = Attempt.objects.filter(job=child, state="succeeded").count()
        assert child.state == "succeeded" and won == 1, (child.partition, child.attempt)
    assert done.result["parts"] == 4 and done.result["slept"] == 16.0


def test_cancelling_a_fan_out_cancels_every_partition(live, http):
    job = submit(live, http, fan_out(4, 60))
    wait_for_children(job["id"], 4, {"queued", "running"}, timeout=30)
    wait_for_job(job["id"], states={"running"})
    response = http.post(live.url(f"/api/v1/jobs/{job['id']}/cancel/"), timeout=10)
    assert response.status_code == 202
    done = wait_for_job(job["id"], timeout=60)
    assert done.state == "cancelled"
    children = wait_for_children(done.pk, 4, {"cancelled"}, timeout=60)
    assert {c.state for c in children} == {"cancelled"}


def test_a_waiting_parent_runs_partitions_that_no_free_worker_takes(live, http):
    # Four parents can hold every slot of the two nodes, leaving no worker for their
    # partitions; here the partitions even go to a queue that no node reads. Each waiting
    # parent runs its own partitions, so all finish.
    jobs = [submit(live, http, fan_out(2, 1, part_queue="gpu")) for _ in range(4)]
    for job in jobs:
        done = wait_for_job(job["id"], timeout=120)
        assert done.state == "succeeded", done.error
        assert done.result["parts"] == 2
        for child in Job.objects.filter(parent=done):
            assert child.state == "succeeded" and child.queue == "gpu"
            assert child.node == done.node  # run by its parent, on the parent's node
            assert Attempt.objects.filter(job=child, state="succeeded").count() == 1
