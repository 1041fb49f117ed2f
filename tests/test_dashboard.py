"""The cluster overview and job pages' data: aggregates, attempts, log download, artifacts."""

from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.staticfiles import finders
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from jobs.ingest import apply_events
from jobs.models import Job, JobState, LogLine
from nodes.models import Node
from tests.factories import make_job


def test_the_summary_counts_every_state_queue_and_finished_minute(api, cast):
    now = timezone.now()
    make_job(cast.alice, JobState.QUEUED, created_at=now - timedelta(minutes=5))
    make_job(cast.bob, JobState.QUEUED, queue="etl", created_at=now - timedelta(seconds=30))
    make_job(cast.bob, JobState.PENDING, queue="etl", created_at=now - timedelta(minutes=2))
    make_job(cast.alice, JobState.RUNNING)
    make_job(cast.bob, JobState.SUCCEEDED, finished_at=now - timedelta(minutes=3))
    make_job(cast.bob, JobState.SUCCEEDED, finished_at=now - timedelta(minutes=3))
    make_job(cast.alice, JobState.FAILED, finished_at=now - timedelta(seconds=5))
    make_job(cast.alice, JobState.FAILED, finished_at=now - timedelta(hours=3))  # too old
    Node.objects.create(name="w1", utilization={"cpu": 12.5})

    body = api.get("/api/v1/cluster/").json()
    assert body["jobs_by_state"] == {"pending": 1, "queued": 2, "running": 1, "succeeded": 2,
                                     "failed": 1, "cancelled": 0}
    queues = {q["name"]: q for q in body["queues"]}
    assert (queues["cpu"]["queued"], queues["cpu"]["running"]) == (1, 1)
    assert (queues["etl"]["queued"], queues["etl"]["pending"]) == (1, 1)
    assert 290 <= queues["cpu"]["oldest_wait_s"] <= 400
    assert 110 <= queues["etl"]["oldest_wait_s"] <= 200
    assert queues["gpu"]["oldest_wait_s"] is None
    minutes = body["finished_per_minute"]
    assert len(minutes["t"]) == 61 and sum(minutes["succeeded"]) == 2
    assert sum(minutes["failed"]) == 1 and minutes["failed"][-1] + minutes["failed"][-2] == 1
    assert [n["name"] for n in body["nodes"]] == ["w1"]
    assert isinstance(body["stream_seq"], int)


def test_a_job_shows_each_attempt_and_its_node(api, cast):
    job = make_job(cast.alice, JobState.QUEUED)
    apply_events([{"t": "started", "job": job.pk, "a": 1, "k": job.token,
                   "ts": timezone.now().timestamp(), "node": "w3", "worker": "w3@box"}])
    attempts = api.get(f"/api/v1/jobs/{job.pk}/").json()["attempts"]
    assert [(a["number"], a["state"], a["node"]) for a in attempts] == [(1, "running", "w3")]
    assert attempts[0]["started_at"] is not None


def test_the_log_downloads_whole_as_text_and_only_for_who_may_see_it(alice, cast):
    job = make_job(cast.alice, JobState.RUNNING)
    LogLine.objects.bulk_create(LogLine(job=job, attempt=1, seq=i, ts=timezone.now(),
                                        text=f"line {i} <b>x</b>") for i in range(2500))
    response = alice.get(f"/jobs/{job.pk}/log.txt")
    text = b"".join(response.streaming_content).decode()
    assert response["Content-Type"].startswith("text/plain")
    assert "attachment" in response["Content-Disposition"]
    assert text.count("\n") == 2500 and "line 2499 <b>x</b>" in text
    bob = Client()
    bob.force_login(cast.bob)
    assert bob.get(f"/jobs/{job.pk}/log.txt").status_code == 404


def test_the_dashboard_pages_load_plotly_from_this_server(alice):
    html = alice.get("/cluster/").content.decode()
    assert 'src="/static/vendor/plotly.min.js"' in html and "http" not in html.split(
        "<script")[1].split(">")[0]
    found = finders.find("vendor/plotly.min.js")
    assert found and Path(found).stat().st_size > 1_000_000
    assert finders.find("vendor/widgetbundle.js") is None  # only the one file of the package
    listed = [path for finder in finders.get_finders() for path, _ in finder.list([])]
    assert "plotly.min.js" in listed  # so collectstatic copies it (under vendor/)


def test_staff_dashboards_join_the_alerts_stream(cast):
    from jobs.consumers import ClusterConsumer

    consumer = ClusterConsumer()
    assert consumer.allowed_streams(cast.admin) == ["jobs-staff", "cluster", "alerts"]
    assert consumer.allowed_streams(cast.alice) == [f"jobs-team-{cast.ml.pk}", "cluster"]


def test_a_page_gets_the_streams_of_what_it_shows_and_no_others(cast):
    from jobs.consumers import ClusterConsumer, NodeConsumer

    def cluster(query):
        consumer = ClusterConsumer()
        consumer.scope = {"query_string": query.encode()}
        return consumer

    team = f"jobs-team-{cast.ml.pk}"
    assert cluster("show=jobs").allowed_streams(cast.alice) == [team]  # the job list
    assert cluster("show=nodes,jobs,alerts").allowed_streams(cast.alice) == [team, "cluster"]
    assert cluster("show=nodes,alerts").allowed_streams(cast.admin) == ["cluster", "alerts"]
    assert cluster("").allowed_streams(cast.admin) == ["jobs-staff", "cluster", "alerts"]
    with pytest.raises(ValueError, match="show: everything is not one of nodes, jobs, alerts"):
        cluster("show=everything").shown()

    Node.objects.create(name="w1")

    def node(name, query=""):
        consumer = NodeConsumer()
        consumer.scope = {"query_string": query.encode(),
                          "url_route": {"kwargs": {"name": name}}}
        return consumer

    # Its page: that node's whole health, and the states of the jobs the user may see.
    assert node("w1").allowed_streams(cast.alice) == ["node-w1", team]
    assert node("w1", "show=").allowed_streams(cast.alice) == ["node-w1", team]
    assert node("nope").allowed_streams(cast.alice) is None


def test_the_api_needs_a_login_for_the_cluster():
    assert APIClient().get("/api/v1/cluster/").status_code in (401, 403)


def test_an_example_runs_in_one_click(alice, cast):
    from workers.kinds import examples

    index = next(i for i, ex in enumerate(examples()) if ex["kind"] == "etl.clickstream")
    response = alice.post(f"/jobs/examples/{index}/")
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"
    assert job.kind == "etl.clickstream" and job.owner == cast.alice
    assert job.params["target"] == "parquet" and job.state == "queued"
    assert alice.post("/jobs/examples/999/").status_code == 404
    assert alice.get(f"/jobs/examples/{index}/").status_code == 405


def test_artifacts_are_listed_and_served_only_to_who_may_see_the_job(api, cast, tmp_path,
                                                                      settings):
    from jobs.models import Artifact
    from workers.context import artifacts_dir

    job = make_job(cast.alice, JobState.SUCCEEDED)
    folder = artifacts_dir() / str(job.pk) / "1"
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(b"\x00weights")
    Artifact.objects.create(job=job, attempt=1, name="model.bin", size=8, sha256="ab",
                            path=f"{job.pk}/1/model.bin")
    listed = api.get(f"/api/v1/jobs/{job.pk}/artifacts/").json()
    assert [(a["name"], a["size"]) for a in listed] == [("model.bin", 8)]
    response = api.get(listed[0]["url"])
    assert response.status_code == 200 and b"".join(response.streaming_content) == b"\x00weights"
    assert "attachment" in response["Content-Disposition"]
    assert api.get(f"/api/v1/jobs/{job.pk}/artifacts/nope.bin").status_code == 404
    bob = APIClient()
    bob.credentials(HTTP_AUTHORIZATION=f"Token {cast.bob_key}")
    assert bob.get(f"/api/v1/jobs/{job.pk}/artifacts/").status_code == 404
    assert bob.get(listed[0]["url"]).status_code == 404


def test_a_partition_kind_cannot_be_submitted_directly(api):
    response = api.post("/api/v1/jobs/", {"kind": "diag.part", "params": {"index": 0,
                                                                         "seconds": 1}},
                        format="json")
    assert response.status_code == 400 and "kind" in response.json()
    names = [k["name"] for k in api.get("/api/v1/kinds/").json()]
    assert "diag.fanout" in names and "diag.part" not in names
