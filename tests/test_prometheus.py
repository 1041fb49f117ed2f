"""/metrics: Prometheus text for staff only, with jobs, queues, nodes and the ingester's lag."""

from datetime import timedelta

from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from jobs.models import JobState
from nodes.models import Node
from tests.factories import make_job


def scrape(client, **headers):
    return client.get("/metrics", **headers)


def families(response):
    return {f.name: f for f in text_string_to_metric_families(response.content.decode())}


def test_metrics_are_not_public(cast):
    assert scrape(Client()).status_code == 401
    member = Client()
    member.force_login(cast.alice)
    assert scrape(member).status_code == 403
    assert scrape(Client(), HTTP_AUTHORIZATION=f"Token {cast.alice_key}").status_code == 403


def test_a_staff_token_scrapes_jobs_nodes_queues_and_histograms(cast, redis_client):
    from accounts.models import ApiToken

    now = timezone.now()
    for state, kind in [("succeeded", "diag.noop"), ("succeeded", "diag.noop"),
                        ("failed", "diag.sleep")]:
        make_job(cast.alice, state, attempt=0, team=cast.ml, kind=kind, timeout_s=60,
                 created_at=now - timedelta(seconds=3), started_at=now - timedelta(seconds=2),
                 finished_at=now)
    Node.objects.create(name="w1", utilization={"cpu": 12.5, "mem": 40.0,
                                                "gpus": [{"index": 0, "util": 77.0}]})
    redis_client.rpush("cpu", "a", "b")
    key = ApiToken.issue(cast.admin)[1]
    response = scrape(Client(), HTTP_AUTHORIZATION=f"Token {key}")
    assert response.status_code == 200
    found = families(response)
    jobs = {(s.labels["state"], s.labels["kind"]): s.value for s in found["portal_jobs"].samples}
    assert jobs == {("succeeded", "diag.noop"): 2, ("failed", "diag.sleep"): 1}
    assert [s.value for s in found["portal_node_cpu_percent"].samples] == [12.5]
    assert [s.value for s in found["portal_node_gpu_percent"].samples] == [77.0]
    depth = {s.labels["queue"]: s.value for s in found["portal_queue_depth"].samples}
    assert depth["cpu"] == 2 and depth["gpu"] == 0
    duration = {s.labels.get("le"): s.value
                for s in found["portal_job_duration_seconds"].samples if s.name.endswith("bucket")}
    assert duration["1.0"] == 0 and duration["2.5"] == 3 and duration["+Inf"] == 3


def test_a_staff_session_may_scrape(cast):
    client = Client()
    client.force_login(cast.admin)
    make_job(cast.alice, JobState.QUEUED, attempt=0, team=cast.ml, timeout_s=60)
    assert "portal_jobs" in families(scrape(client))
