"""etl.clickstream on the real cluster, loading the real warehouse PostgreSQL."""

import os
import signal
import time

import psycopg
import pytest

from jobs.models import Job
from tests.integration.conftest import LIVE_TEAM, wait_for_job
from tests.integration.test_fanout_live import wait_for_children
from tests.integration.test_jobs_live import submit
from workers import data
from workers.kinds.clickstream import ClickstreamParams, generate

pytestmark = pytest.mark.integration


def warehouse(query, *args):
    with psycopg.connect(os.environ["WAREHOUSE_URL"]) as conn:
        conn.execute(f"SET search_path = {data.schema_name(LIVE_TEAM)}")
        return conn.execute(query, args).fetchone()


def clickstream(table, **params):
    return {"kind": "etl.clickstream", "name": f"clickstream {table}",
            "params": {"target": "warehouse", "table": table, **params}}


def expected(**params):
    p = ClickstreamParams(target="parquet", **params)
    parts = [generate(p, i) for i in range(p.partitions)]
    return parts, sum(t.num_rows for t in parts), sum(sum(t["user_id"].to_pylist())
                                                      for t in parts)


def test_the_loaded_tables_add_up_to_the_generated_events(live, http):
    spec = {"events": 120_000, "users": 3_000, "skew": 1.2, "partitions": 4, "seed": 11}
    parts, rows, user_sum = expected(**spec)
    job = submit(live, http, clickstream("cs_sums", **spec))
    done = wait_for_job(job["id"], timeout=180)
    assert done.state == "succeeded", done.error
    assert done.result["rows"] == rows == 120_000
    count, users, distinct = warehouse(
        "SELECT count(*), sum(user_id), count(DISTINCT user_id) FROM cs_sums_events "
        "WHERE _job = %s", done.pk)
    assert (count, users) == (rows, user_sum)
    sessions, session_events = warehouse(
        "SELECT count(*), sum(events) FROM cs_sums_sessions WHERE _job = %s", done.pk)
    assert sessions == done.result["sessions"] and session_events == rows
    hourly_events, hourly_sessions, hourly_users = warehouse(
        "SELECT sum(events), sum(sessions), sum(users) FROM cs_sums_hourly WHERE _job = %s",
        done.pk)
    assert (hourly_events, hourly_sessions) == (rows, sessions)
    (user_hours,) = warehouse("SELECT count(*) FROM (SELECT DISTINCT date_trunc('hour', ts), "
                              "user_id FROM cs_sums_events WHERE _job = %s) h", done.pk)
    assert hourly_users == user_hours and distinct <= 3_000
    per_part = [p["rows"] for p in sorted(done.result["per_partition"],
                                          key=lambda p: p["partition"])]
    assert per_part == [t.num_rows for t in parts]
    # The job page's partitions carry their rows, for skew and stragglers.
    detail = http.get(live.url(f"/api/v1/jobs/{done.pk}/"), timeout=10).json()
    assert [p["done"] for p in detail["partitions"]] == per_part


def test_a_node_killed_mid_load_leaves_every_row_exactly_once(live, http):
    spec = {"events": 600_000, "users": 8_000, "skew": 0.8, "partitions": 6, "seed": 5}
    parts, rows, user_sum = expected(**spec)
    job = submit(live, http, clickstream("cs_kill", **spec))
    running = wait_for_children(job["id"], 6, {"queued", "running", "succeeded"}, timeout=60)
    deadline = time.monotonic() + 60
    victim = None
    while victim is None and time.monotonic() < deadline:
        busy = [c for c in Job.objects.filter(parent_id=job["id"], state="running") if c.node]
        victim = busy[0].node if busy else None
        time.sleep(0.1)
    assert victim, [(c.partition, c.state) for c in running]
    live.cluster.kill(victim, signal.SIGKILL)

    done = wait_for_job(job["id"], timeout=240)
    assert done.state == "succeeded", done.error
    count, users = warehouse("SELECT count(*), sum(user_id) FROM cs_kill_events WHERE _job = %s",
                             done.pk)
    assert (count, users) == (rows, user_sum)
    for index, table in enumerate(parts):
        (n,) = warehouse("SELECT count(*) FROM cs_kill_events WHERE _job = %s AND _part = %s",
                         done.pk, index)
        assert n == table.num_rows, index
    (sessions,) = warehouse("SELECT sum(events) FROM cs_kill_sessions WHERE _job = %s", done.pk)
    assert sessions == rows
    retried = Job.objects.filter(parent_id=done.pk, attempt__gt=1).count()
    assert retried >= 1  # at least the partitions on the killed node ran again
