"""Fenced on the worker: a node that comes back after its attempts were given up stops them,
frees their slots, and nothing they say lands (real workers frozen with SIGSTOP)."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime

import pytest
from django.conf import settings

from jobs.models import Attempt, Job, LogLine, MetricPoint
from tests.integration.conftest import wait_for_job

pytestmark = pytest.mark.integration

NODE = "w8"
LABELS = {"fence": "w8"}  # only w8 has them: its jobs run nowhere else


def start_node(live):
    proc = live.cluster.start_worker(NODE, concurrency=1, queues="cpu", labels="fence=w8")
    live.wait_for_nodes(NODE)
    deadline = time.monotonic() + 30
    from nodes.models import Node

    while not Node.objects.filter(name=NODE, labels=LABELS).exists():
        assert time.monotonic() < deadline, "w8 never reported its labels"
        time.sleep(0.2)
    return proc


def submit(http, live, **spec) -> int:
    body = {"kind": "diag.sleep", "labels": LABELS, **spec}
    response = http.post(live.url("/api/v1/jobs/"), json=body, timeout=10)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def wait_running(job_id: int, attempt: int, timeout: float = 60) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = Job.objects.get(pk=job_id)
        if job.state == "running" and job.attempt == attempt:
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} attempt {attempt} not running: {job.state} "
                       f"{job.attempt} {job.message}")


@pytest.fixture
def frozen_node(live):
    proc = start_node(live)
    yield proc
    try:
        os.killpg(proc.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
    if NODE in live.cluster.procs:
        live.cluster.kill(NODE, signal.SIGKILL)


def test_a_resumed_node_stops_its_superseded_attempt_and_frees_the_slot(live, http,
                                                                          frozen_node):
    """The node's only slot holds attempt 1 when it freezes; the portal gives the job out again
    as attempt 2, which can run only there: it starts once the node stops attempt 1."""
    job_id = submit(http, live, params={"seconds": 600}, max_attempts=2)
    wait_running(job_id, 1)
    os.killpg(frozen_node.pid, signal.SIGSTOP)
    wait_for_job(job_id, states={"queued"}, timeout=60)
    assert Job.objects.get(pk=job_id).attempt == 2
    resumed = time.monotonic()
    os.killpg(frozen_node.pid, signal.SIGCONT)
    wait_running(job_id, 2, timeout=60)
    freed_after = time.monotonic() - resumed
    # Its heartbeat says it still runs attempt 1; told to stop, it stops (ctx.sleep sees the
    # flag) or is killed after CANCEL_GRACE_S. A loaded machine gets a few seconds more.
    bound = float(os.environ["LEASE_S"]) + float(os.environ["CANCEL_GRACE_S"])
    assert freed_after < bound + 10, f"slot freed {freed_after:.1f} s after SIGCONT"
    first = Attempt.objects.get(job_id=job_id, number=1)
    assert first.state == "lost" and first.error == f"node {NODE} lost"
    job = Job.objects.get(pk=job_id)
    assert job.node == NODE and job.state == "running"
    assert frozen_node.poll() is None


def test_a_lost_last_attempt_writes_nothing_after_it_was_given_up(live, http, frozen_node):
    job_id = submit(http, live, params={"seconds": 3}, max_attempts=1)
    wait_running(job_id, 1)
    os.killpg(frozen_node.pid, signal.SIGSTOP)
    job = wait_for_job(job_id, timeout=60)
    given_up = job.finished_at
    assert job.state == "failed" and job.error == f"node {NODE} lost during attempt 1 of 1"
    os.killpg(frozen_node.pid, signal.SIGCONT)
    # Within its 3 s it would have logged "done", charted every second and finished: none of
    # it may land. A fresh job shows the node is working (and its slot free) again.
    after = submit(http, live, params={"seconds": 0})
    assert wait_for_job(after, timeout=60).state == "succeeded"
    time.sleep(float(settings.RECONCILE_EVERY_S) * 2)
    late_logs = LogLine.objects.filter(job_id=job_id, ts__gt=given_up)
    late_points = MetricPoint.objects.filter(job_id=job_id, ts__gt=given_up)
    assert not late_logs.exists(), list(late_logs.values_list("text", flat=True))
    assert not late_points.exists()
    assert not LogLine.objects.filter(job_id=job_id, text="done").exists()
    job.refresh_from_db()
    assert job.state == "failed" and job.finished_at == given_up
    assert isinstance(given_up, datetime)
