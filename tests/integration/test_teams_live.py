"""Teams on a real cluster: fair share over a mixed backlog, quotas holding jobs pending until
places free up, node labels routing a job to the one node that has them, and websockets that
show a team only its own jobs."""

import json
import signal
import time

import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from jobs.models import Job
from tests.integration.conftest import wait_for_job
from tests.integration.test_jobs_live import Frames

pytestmark = pytest.mark.integration


def member(name, team_name, **quota):
    """A user in a team of their own, with its token and an HTTP session."""
    from django.contrib.auth import get_user_model

    from accounts.models import ApiToken, Membership, Team

    user = get_user_model().objects.create_user(name)
    team = Team.objects.create(name=team_name, **quota)
    Membership.objects.create(team=team, user=user, role="member")
    key = ApiToken.issue(user)[1]
    session = requests.Session()
    session.headers["Authorization"] = f"Token {key}"
    return session, key


def submit(live, session, body, expect=201):
    response = session.post(live.url("/api/v1/jobs/"), json=body, timeout=10)
    assert response.status_code == expect, response.text
    return response.json()


def test_fair_share_starts_a_small_teams_jobs_before_a_big_teams_backlog(live):
    big, _ = member("bigco", "big")
    small, _ = member("smallco", "small")
    backlog = submit(live, big, [{"kind": "diag.sleep", "params": {"seconds": 0.5}}] * 40)
    # Two nodes of two slots each: a few of big's jobs are admitted, the rest wait pending.
    assert sum(job["state"] == "pending" for job in backlog) >= 30
    time.sleep(1)
    few = submit(live, small, [{"kind": "diag.sleep", "params": {"seconds": 0.5}}] * 2)
    for job in [*few, *backlog]:
        wait_for_job(job["id"], timeout=120)
    starts = dict(Job.objects.values_list("pk", "started_at"))
    small_started = max(starts[int(job["id"])] for job in few)
    after = sum(starts[int(job["id"])] > small_started for job in backlog)
    # First come, first served would start them after all forty.
    assert after >= 20, f"only {after} of big's 40 jobs started after small's"


def test_a_quota_holds_jobs_pending_and_lets_them_in_as_jobs_end(live):
    session, _ = member("quotaed", "quotaed", max_running_jobs=1)
    jobs = submit(live, session, [{"kind": "diag.sleep", "params": {"seconds": 0.3}}] * 4)
    assert [job["state"] for job in jobs] == ["queued", "pending", "pending", "pending"]
    waiting = session.get(live.url(f"/api/v1/jobs/{jobs[3]['id']}/"), timeout=10).json()
    assert waiting["message"] == "team quotaed: 1 of 1 running jobs"
    assert waiting["place_in_line"] == 3
    done = [wait_for_job(job["id"], timeout=60) for job in jobs]
    assert [job.state for job in done] == ["succeeded"] * 4
    # Never two at once: each started after the one before it finished.
    for before, after in zip(done, done[1:], strict=False):
        assert after.started_at >= before.finished_at


def test_a_job_that_needs_labels_runs_on_the_node_that_has_them(live):
    session, _ = member("gpuser", "gpus")
    live.cluster.start_worker("w8", queues="gpu", concurrency=1, labels="gpu=a100,zone=b")
    try:
        live.wait_for_nodes("w8")
        refused = submit(live, session, {"kind": "diag.noop", "queue": "gpu",
                                         "labels": {"gpu": "h100"}}, expect=400)
        assert refused == {"labels": ["no node serving queue gpu has gpu=h100"]}
        job = submit(live, session, {"kind": "diag.noop", "queue": "gpu",
                                     "labels": {"gpu": "a100"}})
        finished = wait_for_job(job["id"], timeout=60)
        assert finished.state == "succeeded" and finished.node == "w8"
    finally:
        live.cluster.kill("w8", signal.SIGTERM)


def test_websockets_show_a_team_only_its_own_jobs(live):
    alpha, alpha_key = member("alpha-user", "alpha")
    beta, beta_key = member("beta-user", "beta")
    theirs = submit(live, beta, {"kind": "diag.noop"})
    with connect(live.ws_url(f"/ws/jobs/{theirs['id']}/"),
                 additional_headers={"Authorization": f"Token {alpha_key}"}) as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    assert ws.close_code == 4404
    frames = Frames(live.ws_url("/ws/cluster/"), alpha_key)
    mine = submit(live, alpha, {"kind": "diag.noop"})
    again = submit(live, beta, {"kind": "diag.noop"})
    for job in (mine, again):
        wait_for_job(job["id"], timeout=30)
    time.sleep(1.5)
    frames.close()
    seen = {e["job"] for e in frames.events() if e["type"].startswith("job.")}
    assert seen == {mine["id"]}


def test_a_member_taken_out_of_a_team_stops_receiving_its_jobs(live):
    from accounts.models import Membership

    session, key = member("leaver", "leaving")
    with connect(live.ws_url("/ws/cluster/"),
                 additional_headers={"Authorization": f"Token {key}"}) as ws:
        hello = json.loads(ws.recv(timeout=10))
        team_stream = next(s for s in hello["streams"] if s.startswith("jobs-team-"))
        Membership.objects.filter(user__username="leaver").delete()
        with pytest.raises(ConnectionClosed):
            while True:  # frames until the server closes it (it checks every second here)
                ws.recv(timeout=10)
    assert ws.close_code == 4409
    # Connected again, the user is in a team of their own now, not in the one they left.
    with connect(live.ws_url("/ws/cluster/"),
                 additional_headers={"Authorization": f"Token {key}"}) as again:
        assert team_stream not in json.loads(again.recv(timeout=10))["streams"]
