"""End to end on a real cluster: REST submit, Celery workers, the event stream, the ingester,
the reconciler and the websockets, with parts killed or restarted along the way."""

import json
import signal
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from jobs.models import Attempt, Job, LogLine
from tests.integration.conftest import wait_for_job
from workers import protocol

pytestmark = pytest.mark.integration


def submit(live, http, body, expect=201):
    response = http.post(live.url("/api/v1/jobs/"), json=body, timeout=10)
    assert response.status_code == expect, response.text
    return response.json()


def sleep_job(seconds, **params):
    return {"kind": "diag.sleep", "params": {"seconds": seconds, **params}}


class Frames:
    """Collects a websocket's frames on a thread."""

    def __init__(self, url, key):
        self.url, self.key = url, key
        self.frames = []
        self.ready = threading.Event()
        self.ws = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "websocket did not open"

    def _read(self):
        with connect(self.url, additional_headers={"Authorization": f"Token {self.key}"},
                     open_timeout=10) as ws:
            self.ws = ws
            self.ready.set()
            try:
                for raw in ws:
                    self.frames.append(json.loads(raw))
            except Exception:
                pass

    def events(self):
        return [e for f in self.frames if f["type"] == "batch" for e in f["events"]]

    def close(self):
        self.ws.close()
        self.thread.join(timeout=5)


def test_a_job_submitted_over_rest_runs_on_a_worker_and_streams_live(live, http, user_key):
    job = submit(live, http, {**sleep_job(3), "name": "live one"})
    frames = Frames(live.ws_url(f"/ws/jobs/{job['id']}/"), user_key)
    done = wait_for_job(job["id"], timeout=30)
    time.sleep(0.5)
    frames.close()

    assert done.state == "succeeded" and done.progress == 1.0 and done.result == {"slept": 3.0}
    assert done.node in {"w1", "w2"} and done.started_at and done.finished_at
    assert list(LogLine.objects.filter(job=done).values_list("text", flat=True)) == [
        "sleeping 3 s", "done"]
    assert Attempt.objects.get(job=done, number=1).state == "succeeded"

    assert frames.frames[0]["type"] == "hello"
    seqs = [f["seq"] for f in frames.frames if f["type"] == "batch"]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    events = frames.events()
    progress = [e["progress"] for e in events if e["type"] == "job.progress"]
    assert len(progress) >= 2 and progress == sorted(progress)
    states = [e["state"] for e in events if e["type"] == "job.state"]
    assert states[-1] == "succeeded"
    assert "done" in [e["text"] for e in events if e["type"] == "job.log"]

    # The snapshot over HTTP says where the stream stands.
    snapshot = http.get(live.url(f"/api/v1/jobs/{job['id']}/"), timeout=10).json()
    assert snapshot["state"] == "succeeded" and snapshot["stream_seq"] == seqs[-1]


def test_a_failing_job_ends_failed_with_its_error_and_traceback(live, http):
    job = submit(live, http, sleep_job(0, fail=True))
    done = wait_for_job(job["id"], timeout=30)
    assert done.state == "failed"
    assert done.error == "RuntimeError: failed as asked (fail=true)"
    assert LogLine.objects.filter(job=done, level="error", text__contains="Traceback").exists()


def test_a_worker_killed_mid_job_hands_it_to_the_other_and_late_events_change_nothing(
        live, http):
    job = submit(live, http, sleep_job(6))
    running = wait_for_job(job["id"], states={"running"}, timeout=30)
    first_node = running.node
    first_token = running.token
    live.cluster.kill(first_node, signal.SIGKILL)

    done = wait_for_job(job["id"], timeout=60)
    assert done.state == "succeeded" and done.attempt == 2
    assert done.node != first_node
    attempts = {a.number: a for a in Attempt.objects.filter(job=done)}
    assert attempts[1].state == "lost" and f"node {first_node} lost" in attempts[1].error
    assert attempts[2].state == "succeeded"

    # Attempt 1's worker speaks up late: a failure and a log line with its old token.
    late = [
        {"t": "log", "job": done.pk, "a": 1, "k": first_token, "seq": 99, "level": "info",
         "text": "late line from attempt 1", "ts": time.time()},
        {"t": "finished", "job": done.pk, "a": 1, "k": first_token, "outcome": "failed",
         "error": "late failure", "result": None, "ts": time.time()},
    ]
    client = protocol.redis_client()
    client.xadd(protocol.EVENTS_STREAM, {"b": json.dumps(late)})
    deadline = time.monotonic() + 10
    while client.xlen(protocol.EVENTS_STREAM) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    after = Job.objects.get(pk=done.pk)
    assert (after.state, after.attempt, after.error) == ("succeeded", 2, "")
    assert not LogLine.objects.filter(job=done, text="late line from attempt 1").exists()


def test_jobs_queued_while_redis_restarts_all_reach_a_terminal_state(live, http):
    # With no worker up, the messages wait in Redis, and a restart of Redis loses them all.
    for name in ("w1", "w2"):
        live.cluster.kill(name, signal.SIGTERM)
    jobs = [submit(live, http, sleep_job(1)) for _ in range(5)]
    assert {Job.objects.get(pk=j["id"]).state for j in jobs} == {"queued"}
    live.redis_server.restart()
    client = protocol.redis_client()
    assert client.llen("cpu") == 0 and not client.exists(protocol.DISPATCHED)  # all gone
    live.ensure_workers()
    for job in jobs:
        assert wait_for_job(job["id"], timeout=60).state == "succeeded"


def test_a_job_running_while_redis_restarts_still_finishes(live, http):
    job = submit(live, http, sleep_job(4))
    wait_for_job(job["id"], states={"running"}, timeout=30)
    live.redis_server.restart()
    done = wait_for_job(job["id"], timeout=60)
    assert done.state == "succeeded"


def test_an_ingester_killed_mid_stream_loses_nothing_and_writes_nothing_twice(live, http):
    live.cluster.kill("ingester", signal.SIGKILL)
    job = submit(live, http, sleep_job(2))
    time.sleep(3)  # the job runs and finishes while nobody ingests
    assert Job.objects.get(pk=job["id"]).state == "queued"
    live.ensure("ingester")
    done = wait_for_job(job["id"], timeout=60)
    assert done.state == "succeeded"
    texts = list(LogLine.objects.filter(job=done).values_list("text", flat=True))
    assert texts == ["sleeping 2 s", "done"]


def test_cancelling_a_running_job_ends_it_cancelled_and_never_succeeded(live, http):
    job = submit(live, http, sleep_job(30))
    wait_for_job(job["id"], states={"running"}, timeout=30)
    response = http.post(live.url(f"/api/v1/jobs/{job['id']}/cancel/"), timeout=10)
    assert response.status_code == 202 and response.json()["cancel_requested"]
    done = wait_for_job(job["id"], timeout=15)
    assert done.state == "cancelled"
    assert Attempt.objects.get(job=done, number=1).state == "cancelled"
    again = http.post(live.url(f"/api/v1/jobs/{job['id']}/cancel/"), timeout=10)
    assert again.status_code == 409


def test_cancelling_a_finished_job_answers_409_and_changes_nothing(live, http):
    job = submit(live, http, {"kind": "diag.noop"})
    assert wait_for_job(job["id"], timeout=30).state == "succeeded"
    response = http.post(live.url(f"/api/v1/jobs/{job['id']}/cancel/"), timeout=10)
    assert response.status_code == 409
    assert Job.objects.get(pk=job["id"]).state == "succeeded"


def test_a_job_that_ignores_its_cancel_is_stopped_alone_leaving_its_neighbour_running(
        live, http):
    # A node with two slots that alone serves the gpu queue, so both jobs share its worker.
    live.cluster.start_worker("w9", queues="gpu", concurrency=2)
    live.wait_for_nodes("w9")
    try:
        stubborn = submit(live, http, {**sleep_job(20, ignore_cancel=True), "queue": "gpu"})
        neighbour = submit(live, http, {**sleep_job(6), "queue": "gpu"})
        for job in (stubborn, neighbour):
            assert wait_for_job(job["id"], states={"running"}, timeout=30).node == "w9"
        http.post(live.url(f"/api/v1/jobs/{stubborn['id']}/cancel/"), timeout=10)
        assert wait_for_job(stubborn["id"], timeout=20).state == "cancelled"
        finished = wait_for_job(neighbour["id"], timeout=30)
        assert finished.state == "succeeded" and finished.attempt == 1 and finished.node == "w9"
    finally:
        live.cluster.kill("w9", signal.SIGTERM)


def test_a_job_past_its_time_limit_fails_saying_so(live, http):
    job = submit(live, http, {**sleep_job(30), "timeout_s": 2})
    done = wait_for_job(job["id"], timeout=30)
    assert done.state == "failed" and done.error == "timed out after 2 s"


def test_a_websocket_for_someone_elses_job_is_closed_as_not_found(live, http):
    from django.contrib.auth import get_user_model

    from accounts.models import ApiToken

    job = submit(live, http, sleep_job(0))
    other_key = ApiToken.issue(get_user_model().objects.create_user("other"))[1]
    with connect(live.ws_url(f"/ws/jobs/{job['id']}/"),
                 additional_headers={"Authorization": f"Token {other_key}"}) as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    assert ws.close_code == 4404


def test_a_websocket_without_credentials_is_closed_as_unauthenticated(live):
    with connect(live.ws_url("/ws/cluster/")) as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    assert ws.close_code == 4401


@pytest.mark.parametrize("origin", ["http://evil.example", "http://127.0.0.1:9999",
                                    "https://localhost"])
def test_a_websocket_from_a_foreign_origin_is_refused(live, user_key, origin):
    with pytest.raises(InvalidStatus) as refused:
        connect(live.ws_url("/ws/cluster/"), origin=origin,
                additional_headers={"Authorization": f"Token {user_key}"})
    assert refused.value.response.status_code == 403


def test_the_cluster_stream_carries_node_health_and_my_jobs_only(live, http, user_key):
    from django.contrib.auth import get_user_model

    from accounts.models import Membership, Team

    # In a team before the socket opens: a user in no team has no team stream to join until
    # their first job makes one (the socket's next access check then reconnects it).
    Membership.objects.create(team=Team.objects.create(name="runners"), role="member",
                              user=get_user_model().objects.get(username="runner"))
    frames = Frames(live.ws_url("/ws/cluster/"), user_key)
    mine = submit(live, http, {"kind": "diag.noop"})
    wait_for_job(mine["id"], timeout=30)
    # A node's card is sent when it moved, and at least every LIVE_NODE_REFRESH_S (2 s here).
    time.sleep(2.5)
    frames.close()
    events = frames.events()
    assert {e["node"] for e in events if e["type"] == "node.health"} >= {"w1", "w2"}
    job_events = [e for e in events if e["type"].startswith("job.")]
    assert job_events and {e["job"] for e in job_events} == {mine["id"]}


def test_a_drained_node_finishes_its_job_takes_no_new_one_and_returns_when_undrained(live, http):
    from django.contrib.auth import get_user_model

    from nodes.models import Node
    from nodes.services import drain_node

    running = submit(live, http, sleep_job(3))
    first_node = wait_for_job(running["id"], states={"running"}, timeout=30).node
    other = "w2" if first_node == "w1" else "w1"
    staff = get_user_model().objects.create_user("ops", is_staff=True)
    from accounts.models import ApiToken

    ops = {"Authorization": f"Token {ApiToken.issue(staff)[1]}"}
    assert http.post(live.url(f"/api/v1/nodes/{first_node}/drain/"), timeout=10).status_code \
        == 403
    response = http.post(live.url(f"/api/v1/nodes/{first_node}/drain/"), headers=ops,
                         timeout=10)
    assert response.status_code == 200 and response.json()["state"] == "draining"
    deadline = time.monotonic() + 20
    while Node.objects.get(name=first_node).queues:  # the agent stops consuming
        assert time.monotonic() < deadline, "the drained node kept consuming"
        time.sleep(0.2)

    later = [submit(live, http, sleep_job(1)) for _ in range(4)]
    assert wait_for_job(running["id"], timeout=30).state == "succeeded"  # it finished its job
    assert {wait_for_job(j["id"], timeout=60).node for j in later} == {other}
    assert Node.objects.get(name=first_node).state == "draining"

    drain_node(node=Node.objects.get(name=first_node), draining=False)
    deadline = time.monotonic() + 20
    while not Node.objects.get(name=first_node).queues:
        assert time.monotonic() < deadline, "the undrained node did not consume again"
        time.sleep(0.2)
    assert Node.objects.get(name=first_node).state == "online"
