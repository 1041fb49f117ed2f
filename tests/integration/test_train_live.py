"""train.tabular and train.sweep on the real cluster: a model trained on a worker charts its
loss and validation score while it trains and keeps a model and a report that download and
load; a sweep fans its trials out over the workers and names the best; bad parameters are a 400
and a target the file lacks fails the job."""

import io
import json
import time

import joblib
import numpy as np
import pandas as pd
import pytest

from jobs.models import Job, LogLine, MetricPoint
from tests.integration.conftest import LIVE_TEAM, wait_for_job
from tests.integration.test_jobs_live import submit
from workers import data

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def table():
    """A CSV under DATA_ROOT with a signal: late when x1 is high or the colour is red."""
    rng = np.random.default_rng(11)
    rows = 3000
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    color = rng.choice(["red", "green", "blue"], size=rows)
    delay = 30 * x1 + 25 * (color == "red") + 8 * rng.normal(size=rows)
    frame = pd.DataFrame({"x1": x1, "x2": np.where(rng.random(rows) < 0.05, np.nan, x2),
                          "color": color, "delay": delay})
    folder = data.team_root(LIVE_TEAM) / "train-live"
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "late.csv", index=False)
    return "train-live/late.csv", frame


def train_job(name, **params):
    return {"kind": "train.tabular", "name": "train test", "params": {
        "input": name, "target": "delay", "threshold": 15,
        "features": ["x1", "x2", "color"], **params}}


def test_a_model_trains_on_a_worker_charting_as_it_goes_and_keeps_model_and_report(
        live, http, table):
    name, frame = table
    job = submit(live, http, train_job(name, iterations=150, seed=4))

    # Metric points reach the portal while the job still runs, a few at a time.
    counts_while_running = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = Job.objects.get(pk=job["id"]).state
        if state in {"succeeded", "failed", "cancelled"}:
            break
        if state == "running":
            counts_while_running.add(MetricPoint.objects.filter(job_id=job["id"],
                                                                name="loss").count())
        time.sleep(0.05)
    done = wait_for_job(job["id"], timeout=120)
    assert done.state == "succeeded", done.error
    growing = sorted(count for count in counts_while_running if 0 < count < 150)
    assert len(growing) >= 2, counts_while_running

    result = done.result
    assert result["task"] == "classification" and result["metric"] == "accuracy"
    assert result["model"] == "gradient_boosting" and result["iterations"] == 150
    assert result["rows"] == 3000 and result["features"] == ["x1", "x2", "color"]
    assert result["val_score"] > 0.85 and result["seconds"] > 0 and result["job"] == done.pk
    assert done.progress == 1.0

    series = http.get(live.url(f"/api/v1/jobs/{done.pk}/metrics/"), timeout=10).json()["series"]
    for metric in ("loss", "val_loss", "val_accuracy", "val_auc"):
        assert [p["step"] for p in series[metric]] == list(range(1, 151)), metric
    loss = [p["value"] for p in series["loss"]]
    assert loss[-1] < loss[0] * 0.7
    assert series["val_accuracy"][-1]["value"] == pytest.approx(result["val_score"], abs=1e-6)

    listed = http.get(live.url(f"/api/v1/jobs/{done.pk}/artifacts/"), timeout=10).json()
    assert [a["name"] for a in listed] == ["metrics.json", "model.joblib"]
    files = {}
    for artifact in listed:
        response = http.get(live.url(artifact["url"]), timeout=30)
        assert response.status_code == 200 and len(response.content) == artifact["size"]
        files[artifact["name"]] = response.content
    model = joblib.load(io.BytesIO(files["model.joblib"]))
    predicted = model.predict(frame[["x1", "x2", "color"]].head(500))
    truth = (frame["delay"].head(500) > 15).astype(int)
    assert (predicted == truth).mean() > 0.85
    report = json.loads(files["metrics.json"])
    assert report["val_score"] == pytest.approx(result["val_score"], abs=1e-6)
    assert report["job"] == done.pk and report["target"]["positive"] == "delay > 15"
    matrix = np.array(report["confusion_matrix"]["rows_true_columns_predicted"])
    assert matrix.sum() == report["rows"]["validation"] == 600
    assert report["importance"]["columns"][0]["column"] == "x1"
    logs = list(LogLine.objects.filter(job=done).values_list("text", flat=True))
    assert logs[0] == f"reading {name}" and "validation accuracy" in logs[-1]


def test_a_sweep_fans_its_trials_over_the_workers_and_names_the_best(live, http, table):
    name, _ = table
    body = train_job(name, iterations=20, seed=2)
    body.update(kind="train.sweep", name="sweep test")
    body["params"].update(space={"learning_rate": [0.02, 0.3], "max_depth": [2, 6]},
                          search="grid", trials=4)
    job = submit(live, http, body)
    done = wait_for_job(job["id"], timeout=240)
    assert done.state == "succeeded", done.error

    result = done.result
    trials = result["trials"]
    assert [t["trial"] for t in trials] == [0, 1, 2, 3]
    assert [t["params"] for t in trials] == [
        {"learning_rate": 0.02, "max_depth": 2}, {"learning_rate": 0.02, "max_depth": 6},
        {"learning_rate": 0.3, "max_depth": 2}, {"learning_rate": 0.3, "max_depth": 6}]
    scores = [t["val_score"] for t in trials]
    best = int(np.argmax(scores))
    assert result["best"]["trial"] == best and result["best"]["val_score"] == max(scores)
    assert result["best"]["params"] == trials[best]["params"]
    assert result["metric"] == "accuracy"

    # Each trial was a train.tabular partition with its own result, model and curve.
    children = {c.partition: c for c in Job.objects.filter(parent=done)}
    assert sorted(children) == [0, 1, 2, 3]
    for index, child in children.items():
        assert child.kind == "train.tabular" and child.state == "succeeded"
        assert child.result["val_score"] == scores[index]
        assert child.params["learning_rate"] == trials[index]["params"]["learning_rate"]
        assert child.params["iterations"] == 20 and child.params["seed"] == 2
        assert trials[index]["job"] == child.pk
        assert MetricPoint.objects.filter(job=child, name="val_accuracy").count() == 20
    assert result["best"]["job"] == children[best].pk

    series = http.get(live.url(f"/api/v1/jobs/{done.pk}/metrics/"), timeout=10).json()["series"]
    assert [(p["step"], p["value"]) for p in series["trial_score"]] == list(enumerate(scores))
    assert [p["value"] for p in series["best_so_far"]] == list(np.maximum.accumulate(scores))
    logs = list(LogLine.objects.filter(job=done).values_list("text", flat=True))
    assert any(line.startswith(f"best: trial {best} (") for line in logs)
    listed = http.get(live.url(f"/api/v1/jobs/{done.pk}/artifacts/"), timeout=10).json()
    assert [a["name"] for a in listed] == ["sweep.json"]
    kept = http.get(live.url(listed[0]["url"]), timeout=10).json()
    assert kept["best"]["trial"] == best and len(kept["trials"]) == 4


def test_bad_training_params_are_a_400_and_a_missing_target_fails_the_job(live, http, table):
    name, _ = table
    refused = submit(live, http, train_job(name, model="xgboost"), expect=400)
    assert "model" in refused["params"]
    refused = submit(live, http, train_job("../elsewhere/late.csv"), expect=400)
    assert "relative to your team's space" in refused["params"]["input"][0]
    refused = submit(live, http, train_job(name, task="regression"), expect=400)
    assert "needs task 'classification'" in json.dumps(refused["params"])
    sweep = train_job(name)
    sweep.update(kind="train.sweep")
    sweep["params"]["space"] = {"learning_rate": [0.1, -1]}
    refused = submit(live, http, sweep, expect=400)
    assert "trial 1" in json.dumps(refused["params"])
    assert not Job.objects.exists()

    job = submit(live, http, train_job(name, target="arrival", threshold=None))
    done = wait_for_job(job["id"], timeout=60)
    assert done.state == "failed"
    assert done.error.startswith("TrainingError: column(s) 'arrival' not in late.csv")
    assert not MetricPoint.objects.filter(job=done).exists()


def test_cancelling_a_training_job_stops_it_between_iterations(live, http, table):
    name, _ = table
    job = submit(live, http, train_job(name, iterations=2000, learning_rate=0.01))
    deadline = time.monotonic() + 60
    while not MetricPoint.objects.filter(job_id=job["id"], name="loss").exists():
        assert time.monotonic() < deadline, "no metric point arrived"
        time.sleep(0.1)
    response = http.post(live.url(f"/api/v1/jobs/{job['id']}/cancel/"), timeout=10)
    assert response.status_code == 202
    done = wait_for_job(job["id"], timeout=30)
    assert done.state == "cancelled"
    assert MetricPoint.objects.filter(job=done, name="loss").count() < 200
    response = http.get(live.url(f"/api/v1/jobs/{done.pk}/artifacts/"), timeout=10)
    assert response.json() == []
