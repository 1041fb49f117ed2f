"""etl.ingest and etl.sql on the real cluster: partitions spread over the worker nodes, the
warehouse PostgreSQL loaded with COPY, Parquet datasets and quarantine files under DATA_ROOT,
submitted over REST and checked against the input."""

import os
import shutil

import pandas as pd
import psycopg
import pyarrow.dataset as ds
import pytest

from jobs.models import Job
from tests.integration.conftest import LIVE_TEAM, wait_for_job
from tests.integration.test_jobs_live import submit
from tests.test_etl import ROOT as DATA_ROOT
from tests.test_etl import SCHEMA, delays_by_weather, demo_subset, planted_csvs
from workers import data
from workers.etl.output import read_quarantine
from workers.kinds.etl import DELAYS_BY_WEATHER, EXAMPLES

ROOT = data.team_root(LIVE_TEAM)  # the jobs' paths are in their team's space


def into_team(folder: str) -> None:
    """Move what the unit tests' helpers wrote under DATA_ROOT into the team's space."""
    target = ROOT / folder
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(DATA_ROOT / folder), str(target))


pytestmark = pytest.mark.integration


def warehouse(query, *args):
    with psycopg.connect(os.environ["WAREHOUSE_URL"]) as conn:
        conn.execute(f"SET search_path = {data.schema_name(LIVE_TEAM)}")
        return conn.execute(query, args).fetchall()


def run(live, http, kind, params, name, timeout=240):
    job = submit(live, http, {"kind": kind, "name": name, "params": params})
    done = wait_for_job(job["id"], timeout=timeout)
    assert done.state == "succeeded", done.error
    return done


def test_csv_files_load_into_the_warehouse_counted_summed_and_quarantined(live, http):
    count, id_sum, amount_sum, bad = planted_csvs("live_wh", files_rows=(1500, 1100, 900),
                                                  bad_every=89)
    into_team("live_wh")
    done = run(live, http, "etl.ingest", {
        "input": "live_wh/*.csv", "columns": SCHEMA, "target": "warehouse",
        "table": "live_load", "chunk_rows": 600}, "load live_wh")
    result = done.result
    assert result["rows"] == count and result["quarantined"] == len(bad) > 30
    assert result["files"] == 3 and result["partitions"] == 3 + 2 + 2
    assert result["table"] == "live_load" and result["rows_per_s"] > 0
    [(n, ids, amounts)] = warehouse(
        "SELECT count(*), sum(id), sum(amount) FROM live_load WHERE _job = %s", done.pk)
    assert (n, ids) == (count, id_sum) and amounts == pytest.approx(amount_sum)
    # Every partition ran as its own job and loaded its own rows once.
    children = list(Job.objects.filter(parent=done).order_by("partition"))
    assert [c.partition for c in children] == list(range(7))
    assert all(c.state == "succeeded" for c in children)
    per_part = dict(warehouse("SELECT _part, count(*) FROM live_load WHERE _job = %s "
                              "GROUP BY 1", done.pk))
    assert [per_part.get(c.partition, 0) for c in children] == [c.result["rows"]
                                                                for c in children]
    # The quarantined rows are exactly the planted ones, with their lines and reasons.
    rejected = read_quarantine(ROOT / f"quarantine/live_load/job-{done.pk}")
    assert sorted((r["file"], r["line"]) for r in rejected) == sorted(bad)
    assert result["quarantine"] == f"quarantine/live_load/job-{done.pk}"
    assert all(r["reason"] for r in rejected)
    # Shown on the job: a metric and a warning in its log; rows per second charted live.
    metrics = http.get(live.url(f"/api/v1/jobs/{done.pk}/metrics/"), timeout=10).json()
    assert metrics["series"]["quarantined"][0]["value"] == len(bad)
    assert metrics["series"]["rows_per_s"][0]["value"] > 0
    lines = http.get(live.url(f"/api/v1/jobs/{done.pk}/logs/"), timeout=10).json()["lines"]
    assert any(f"{len(bad)} rows quarantined" in line["text"] for line in lines)
    child = http.get(live.url(f"/api/v1/jobs/{children[0].pk}/metrics/"), timeout=10).json()
    assert child["series"]["rows_per_s"]
    assert children[0].unit == "rows" and children[0].done == children[0].total


def test_demo_flights_load_to_parquet_and_delays_by_weather_match_pandas(live, http):
    flights, weather = demo_subset("live_demo", month=1, days=range(10, 21))
    into_team("live_demo")
    loaded = run(live, http, "etl.ingest", {
        "input": "live_demo/flights.csv", "output": "live_demo/flights", "chunk_rows": 2500},
        "load flights")
    assert loaded.result["rows"] == len(flights) and loaded.result["quarantined"] == 0
    assert loaded.result["partitions"] == -(-len(flights) // 2500)
    assert loaded.result["columns"]["dep_delay"] == "int"
    assert loaded.result["columns"]["time_hour"] == "timestamp"
    table = ds.dataset(ROOT / "live_demo/flights", format="parquet").to_table()
    assert table.num_rows == len(flights)
    assert table["dep_delay"].to_pandas().sum() == flights.dep_delay.sum()
    assert table["dep_delay"].null_count == flights.dep_delay.isna().sum()
    assert sorted(set(table["tailnum"].drop_null().to_pylist())) == sorted(
        flights.tailnum.dropna().unique())
    weather_params = {**EXAMPLES[1]["params"], "input": "live_demo/weather.csv",
                      "output": "live_demo/weather"}
    loaded = run(live, http, "etl.ingest", weather_params, "load weather")
    assert loaded.result["rows"] == len(weather)

    # The transform over the loaded Parquet datasets, and over the CSV into the warehouse.
    done = run(live, http, "etl.sql", {
        "inputs": {"flights": "live_demo/flights/*.parquet",
                   "weather": "live_demo/weather/*.parquet"},
        "sql": DELAYS_BY_WEATHER, "output": "live_demo/delays.parquet"}, "delays")
    want = delays_by_weather(flights, weather).reset_index(drop=True)
    got = pd.read_parquet(ROOT / "live_demo/delays.parquet")
    assert done.result == {**done.result, "rows": len(want), "output": "live_demo/delays.parquet"}
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    done = run(live, http, "etl.sql", {
        "inputs": {"flights": "live_demo/flights.csv", "weather": "live_demo/weather.csv"},
        "sql": DELAYS_BY_WEATHER, "target": "warehouse", "table": "delays_by_weather"},
        "delays into the warehouse")
    assert done.result["rows"] == len(want) and done.result["output"] == "delays_by_weather"
    rows = warehouse("SELECT origin, precipitation, visibility, flights, mean_dep_delay "
                     "FROM delays_by_weather ORDER BY 1, 2, 3")
    assert [r[:4] for r in rows] == [tuple(r) for r in want[
        ["origin", "precipitation", "visibility", "flights"]].itertuples(index=False)]
    assert [r[4] for r in rows] == pytest.approx(want.mean_dep_delay.tolist())


def test_bad_paths_tables_and_sql_are_refused_at_submission(live, http):
    (ROOT / "live_ok").mkdir(exist_ok=True)
    (ROOT / "live_ok/a.csv").write_text("a\n1\n")
    cases = [
        ("etl.ingest", {"input": "../*.csv", "output": "x"}, "input"),
        ("etl.ingest", {"input": "/etc/passwd", "output": "x"}, "input"),
        ("etl.ingest", {"input": "live_ok/a.csv", "target": "warehouse",
                        "table": "a; DROP TABLE jobs_job"}, "table"),
        ("etl.sql", {"inputs": {"a": "live_ok/a.csv"}, "sql": "DROP TABLE a",
                     "output": "x.parquet"}, "sql"),
        ("etl.sql", {"inputs": {"a": "live_ok/a.csv"}, "sql": "SELECT 1; SELECT 2",
                     "output": "x.parquet"}, "sql"),
    ]
    for kind, params, field in cases:
        response = http.post(live.url("/api/v1/jobs/"), json={"kind": kind, "params": params},
                             timeout=10)
        assert response.status_code == 400, (kind, params, response.text)
        assert field in response.json()["params"], response.text
    assert not Job.objects.exists()
