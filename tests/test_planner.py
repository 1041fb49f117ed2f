"""The capacity planner: measured throughput per slot from history, a plan consistent with
its samples, its refusals, and the autoscaling signal on /metrics."""

import json
import math
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from jobs import planner
from jobs.models import JobState, MetricPoint
from nodes.models import Node
from tests.factories import make_job

RATES = [1000.0, 1200.0, 800.0, 1100.0]


def succeeded(owner, team, kind, seconds, **fields):
    end = timezone.now()
    return make_job(owner, JobState.SUCCEEDED, team=team, kind=kind,
                    started_at=end - timedelta(seconds=seconds), finished_at=end, **fields)


@pytest.fixture
def clickstream(cast):
    """One run of 4 partitions on queue etl, each reporting its rows_per_s; a node of 4 slots."""
    parent = succeeded(cast.alice, cast.ml, "etl.clickstream", 60,
                       result={"rows": 200_000, "rows_per_s": 3900.0})
    for i, rate in enumerate(RATES):
        part = succeeded(cast.alice, cast.ml, "etl.clickstream.part", 50, queue="etl",
                         parent=parent, partition=i, result={"rows": 50_000})
        # An earlier step says less: the last one is the partition's own figure.
        MetricPoint.objects.create(job=part, attempt=1, name="rows_per_s", step=0,
                                   value=rate / 2, ts=timezone.now())
        MetricPoint.objects.create(job=part, attempt=1, name="rows_per_s", step=1, value=rate,
                                   ts=timezone.now())
    Node.objects.create(name="e1", queues=["etl"], concurrency=4)
    return parent


def post(client, body):
    return client.post("/api/v1/capacity/plan/", data=json.dumps(body),
                       content_type="application/json")


def test_the_seed_example_is_planned_from_the_partitions_measured_rates(api, clickstream):
    answer = post(api, {"kind": "etl.clickstream", "rows": 800_000_000,
                        "window_s": 21_600}).json()
    rate = sorted(RATES)[1:3]  # the median of four
    per_slot = sum(rate) / 2
    assert answer["per_slot_rows_per_s"] == per_slot and answer["samples"] == 4
    assert answer["needed_per_s"] == pytest.approx(37037.037, abs=1e-3)
    slots = answer["slots_needed"]
    # Enough slots, and not one more than needed.
    assert slots * per_slot * 21_600 >= 800_000_000 > (slots - 1) * per_slot * 21_600
    assert answer["nodes_needed"] == math.ceil(slots / 4) and answer["slots_now"] == 4
    assert answer["expected_s_now"] == pytest.approx(800_000_000 / (per_slot * 4), abs=0.1)
    # Its runs had 4 partitions: more slots than that would idle.
    assert answer["bottleneck"] == "partitions" and "at least 36 partitions" in \
        answer["explanation"]
    assert answer["spread"]["min"] == 800 and answer["spread"]["max"] == 1200
    assert answer["whole_run_rows_per_s"] == 3900.0


def test_enough_partitions_leave_compute_and_a_known_warehouse_rate_is_a_ceiling(
        api, clickstream, settings):
    body = {"kind": "etl.clickstream", "rows": 800_000_000, "window_s": 21_600,
            "partitions": 64}
    assert post(api, body).json()["bottleneck"] == "compute"
    settings.WAREHOUSE_MAX_ROWS_PER_S = 20_000
    answer = post(api, body).json()
    assert answer["bottleneck"] == "warehouse" and "20,000 rows/s" in answer["explanation"]


def test_other_kinds_are_planned_in_jobs_per_slot_hour(cast):
    for seconds in (10, 20, 30):
        succeeded(cast.alice, cast.ml, "diag.sleep", seconds)
    Node.objects.create(name="w1", queues=["cpu"], concurrency=2)
    answer = planner.plan("diag.sleep", 1000, 3600)
    assert answer["unit"] == "jobs" and answer["per_slot_jobs_per_hour"] == 180
    assert answer["slots_needed"] == 6 and answer["nodes_needed"] == 3
    assert 6 * 180 >= 1000 > 5 * 180


@pytest.mark.parametrize(("body", "field"), [
    ({"rows": 10, "window_s": 10}, "kind"),
    ({"kind": "no.such", "rows": 10, "window_s": 10}, "kind"),
    ({"kind": "diag.noop", "rows": 10, "window_s": 10}, "kind"),  # no history
    ({"kind": "etl.clickstream", "rows": 0, "window_s": 10}, "rows"),
    ({"kind": "etl.clickstream", "rows": -5, "window_s": 10}, "rows"),
    ({"kind": "etl.clickstream", "rows": "many", "window_s": 10}, "rows"),
    ({"kind": "etl.clickstream", "rows": True, "window_s": 10}, "rows"),
    ({"kind": "etl.clickstream", "window_s": 10}, "rows"),
    ({"kind": "etl.clickstream", "rows": 10, "window_s": 0}, "window_s"),
    ({"kind": "etl.clickstream", "rows": 10, "window_s": -1}, "window_s"),
    ({"kind": "etl.clickstream", "rows": 10, "window_s": 10, "partitions": 1.5}, "partitions"),
    ({"kind": "etl.clickstream", "rows": 10, "window_s": 10, "partitions": 0}, "partitions"),
])
def test_bad_plans_get_a_400_naming_the_field(api, clickstream, body, field):
    response = post(api, body)
    assert response.status_code == 400
    assert list(response.json()) == [field]


def test_metrics_ask_for_the_nodes_that_drain_each_queue_in_the_target(cast, settings):
    from accounts.models import ApiToken

    settings.TARGET_DRAIN_S = 60
    for seconds in (10, 20, 30):
        succeeded(cast.alice, cast.ml, "diag.sleep", seconds)
    Node.objects.create(name="w1", queues=["cpu"], concurrency=4)
    for _ in range(30):  # 30 jobs of 20 s each: 600 s of work, 10 slots for a minute
        make_job(cast.alice, JobState.PENDING, attempt=0, team=cast.ml, kind="diag.sleep",
                 timeout_s=60)
    make_job(cast.alice, JobState.RUNNING, attempt=0, team=cast.ml, kind="diag.sleep", timeout_s=60)
    key = ApiToken.issue(cast.admin)[1]
    text = Client().get("/metrics", HTTP_AUTHORIZATION=f"Token {key}").content.decode()
    family = {f.name: f for f in text_string_to_metric_families(text)}[
        "portal_queue_nodes_wanted"]
    wanted = {s.labels["queue"]: s.value for s in family.samples}
    assert wanted["cpu"] == math.ceil((1 + 10) / 4) and wanted["etl"] == 0
