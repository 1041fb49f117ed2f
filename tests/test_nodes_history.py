"""Node utilization: the agent's figures, raw samples, minute rollups, retention, series (a
node's, and the whole cluster's)."""

import time
from datetime import datetime, timedelta

import psutil
import pytest
from django.utils import timezone

from jobs.ingest import apply_events
from nodes import history
from nodes.models import Node, NodeMinute, NodeSample
from workers.utilization import Sampler


def test_the_agents_figures_agree_with_psutil_on_this_machine():
    sampler = Sampler()
    sampler.sample()
    time.sleep(0.2)
    figures = sampler.sample()
    assert figures["mem_total"] == psutil.virtual_memory().total
    assert len(figures["cpu_cores"]) == psutil.cpu_count()
    assert figures["disk_total"] == psutil.disk_usage("/").total
    assert 0 <= figures["cpu"] <= 100 and 0 <= figures["mem"] <= 100
    assert abs(figures["mem"] - psutil.virtual_memory().percent) < 10
    assert figures["net_rx_bps"] >= 0 and figures["disk_write_bps"] >= 0
    assert figures["procs"] > 0 and figures["load1"] >= 0


def test_a_node_without_gpus_reports_none_and_no_error():
    assert Sampler().sample()["gpus"] == []


def test_each_heartbeat_is_kept_as_a_sample(db):
    apply_events([{"t": "heartbeat", "node": "w5", "ts": time.time(), "attempts": [],
                   "util": {"cpu": 42.0, "mem": 10.0, "gpus": [{"util": 50.0}, {"util": 70.0}]}}])
    sample = NodeSample.objects.get(node__name="w5")
    assert (sample.cpu, sample.mem, sample.gpu) == (42.0, 10.0, 60.0)


@pytest.fixture
def node(db):
    return Node.objects.create(name="w6", last_heartbeat=timezone.now())


def add_samples(node, start, cpus):
    NodeSample.objects.bulk_create([
        NodeSample(node=node, ts=start + timedelta(seconds=10 * i), cpu=cpu, mem=50.0)
        for i, cpu in enumerate(cpus)])


def test_finished_minutes_roll_up_once_into_mean_and_peak(node):
    now = timezone.now()
    last_minute = history.minute_of(now) - timedelta(minutes=1)
    add_samples(node, last_minute, [10.0, 20.0, 30.0])
    add_samples(node, history.minute_of(now), [99.0])  # this minute is not over yet
    assert history.roll_up(now) == 1
    minute = NodeMinute.objects.get(node=node)
    assert (minute.minute, minute.cpu, minute.cpu_max, minute.samples) == (
        last_minute, 20.0, 30.0, 3)
    assert history.roll_up(now) == 0


def test_retention_keeps_each_tier_for_its_window(node, settings):
    now = timezone.now()
    add_samples(node, now - timedelta(hours=settings.NODE_SAMPLES_RAW_H, minutes=5), [1.0])
    add_samples(node, now - timedelta(hours=1), [2.0])
    NodeMinute.objects.create(node=node, minute=now - timedelta(days=31), cpu=1, cpu_max=1,
                              mem=1, samples=1)
    NodeMinute.objects.create(node=node, minute=now - timedelta(days=29), cpu=2, cpu_max=2,
                              mem=2, samples=1)
    assert history.prune(now) == (1, 1)
    assert list(NodeSample.objects.values_list("cpu", flat=True)) == [2.0]
    assert list(NodeMinute.objects.values_list("cpu", flat=True)) == [2.0]


def test_a_short_window_reads_raw_samples_downsampled_on_the_server(node):
    start = timezone.now() - timedelta(minutes=10)
    add_samples(node, start, [float(i % 100) for i in range(60)])
    out = history.series(node, since=start, points=20)
    assert out["source"] == "raw"
    assert 10 <= len(out["t"]) <= 21 and len(out["cpu"]) == len(out["t"])
    assert all(value is None for value in out["gpu"])


def test_a_long_window_reads_minute_rollups(node):
    start = timezone.now() - timedelta(days=2)
    NodeMinute.objects.bulk_create([
        NodeMinute(node=node, minute=start + timedelta(minutes=i), cpu=float(i % 7),
                   cpu_max=7, mem=1, samples=6) for i in range(2000)])
    out = history.series(node, since=start, points=100)
    assert out["source"] == "minute" and len(out["t"]) <= 101


def test_the_node_metrics_api_answers_series_and_refuses_bad_input(api, node):
    add_samples(node, timezone.now() - timedelta(minutes=5), [5.0, 15.0])
    body = api.get("/api/v1/nodes/w6/metrics/?window=900&points=50").json()
    assert body["source"] == "raw"
    assert body["cpu"] and set(body["cpu"]) <= {5.0, 10.0, 15.0}
    assert api.get("/api/v1/nodes/nope/metrics/").status_code == 404
    assert api.get("/api/v1/nodes/w6/metrics/?since=yesterday").status_code == 400
    assert api.get("/api/v1/nodes/w6/metrics/?window=0").status_code == 400
    assert api.get("/api/v1/nodes/w6/metrics/?since=2026-01-01T00:00:00Z").status_code == 200


def test_a_seven_day_window_has_its_points_inside_it_and_up_to_now(node):
    """A cluster up for the last 20 minutes: the 7 d view's points lie within those minutes
    (none stamped before the first sample), and the minutes not rolled up yet are there too."""
    now = timezone.now()
    first = history.minute_of(now) - timedelta(minutes=20)
    NodeMinute.objects.bulk_create([
        NodeMinute(node=node, minute=first + timedelta(minutes=i), cpu=10.0, cpu_max=10,
                   mem=1, samples=6) for i in range(18)])
    add_samples(node, first + timedelta(minutes=18), [30.0] * 12)  # not rolled up yet
    out = history.series(node, since=now - timedelta(days=7), points=240)
    stamps = [datetime.fromisoformat(t) for t in out["t"]]
    assert stamps and min(stamps) >= first and max(stamps) <= timezone.now()
    assert None not in out["cpu"] and max(out["cpu"]) > 10.0  # the fresh samples count
    day = history.series(node, since=now - timedelta(days=1), points=240)  # 6-minute points
    assert datetime.fromisoformat(day["t"][-1]) >= now - timedelta(minutes=6)
    assert day["cpu"][-1] > 10.0  # the last point holds the minutes not rolled up yet


def test_a_time_the_node_was_down_is_a_gap_not_a_line(node):
    now = timezone.now()
    add_samples(node, now - timedelta(minutes=50), [10.0] * 30)  # 5 minutes of samples
    add_samples(node, now - timedelta(minutes=10), [20.0] * 30)  # then 35 minutes of nothing
    out = history.series(node, since=now - timedelta(hours=1), points=240)
    gaps = [i for i, value in enumerate(out["cpu"]) if value is None]
    assert len(gaps) == 1
    before, after = (datetime.fromisoformat(out["t"][gaps[0] + d]) for d in (-1, 1))
    assert after - before > timedelta(minutes=30)
    assert out["cpu"][:gaps[0]] == [10.0] * gaps[0] and set(out["cpu"][gaps[0] + 1:]) == {20.0}


def test_the_cluster_series_averages_all_nodes_into_few_points(api):
    now = timezone.now()
    for name, cpu in (("w1", 10.0), ("w2", 30.0)):
        node = Node.objects.create(name=name)
        NodeSample.objects.bulk_create(
            NodeSample(node=node, ts=now - timedelta(seconds=s), cpu=cpu, mem=50.0)
            for s in range(1, 600))
    body = api.get("/api/v1/cluster/metrics/?window=900&points=30").json()
    assert body["source"] == "raw" and 10 <= len(body["t"]) <= 31
    assert all(abs(v - 20.0) < 0.01 for v in body["cpu"])
    assert set(body["gpu"]) == {None}
    assert api.get("/api/v1/cluster/metrics/?window=abc").status_code == 400
