"""Training a scikit-learn model on a table, step by step, as plain functions.

The job kinds in workers/kinds/train.py read their parameters and hand the work to these: read
the table (CSV or Parquet), make the target (a column, or a numeric column binarized at a
threshold) and the features (dates expanded into parts, categorical columns one-hot encoded,
missing values imputed, in one ColumnTransformer), split it, and train an estimator that grows
in steps (gradient boosting and random forests add trees with warm_start; the linear models run
one SGD epoch per partial_fit), calling back after each step with the train loss and the
validation scores, so a job can chart them while it trains and stop between steps.
"""

from __future__ import annotations

import math
import time
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.inspection import permutation_importance
from sklearn.linear_model import SGDClassifier, SGDRegressor
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from workers.training_spec import MODEL_TASKS, SCORE

DATE_PARTS = ("month", "dayofweek", "hour")
MAX_POINTS = 200  # scored (and charted) iterations per run at most, evenly spread
MAX_FITS = 20  # warm-started fits of a tree model per run at most
MAX_CLASSES = 100
TRAIN_EVAL_ROWS = 5_000  # the train loss is measured on a fixed sample of this many rows
IMPORTANCE_ROWS = 2_000
MISSING = "(missing)"


class TrainingError(ValueError):
    """The data does not fit the request (a column missing, a target that cannot be used)."""


# --- reading and preparing the table ------------------------------------------------------


def table_columns(path: Path) -> list[str]:
    if path.suffix.lower() == ".csv":
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def read_table(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """The table's columns (all when None); a column it lacks is a TrainingError naming it."""
    names = table_columns(path)
    if columns is not None:
        missing = [c for c in columns if c not in names]
        if missing:
            shown = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "")
            raise TrainingError(f"column(s) {', '.join(map(repr, missing))} not in {path.name}; "
                                f"it has: {shown}")
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path, usecols=columns, low_memory=False)
    return pd.read_parquet(path, columns=columns)


def date_parts(values: pd.Series, name: str, timezone: str | None) -> pd.DataFrame:
    """A date or date-time column as numbers: <name>_month, <name>_dayofweek (Monday 0) and
    <name>_hour, in `timezone` when the values carry one (ISO text with Z or an offset)."""
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:
        parsed = pd.to_datetime(values.astype("string"), errors="coerce", format="ISO8601",
                                utc=False)
        if parsed.dtype == object:  # mixed offsets: bring them to one clock first
            parsed = pd.to_datetime(values.astype("string"), errors="coerce",
                                    format="ISO8601", utc=True)
    if values.notna().any() and parsed.notna().sum() == 0:
        raise TrainingError(f"column {name!r} holds no dates (expected ISO dates or times)")
    if timezone and getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert(zoneinfo.ZoneInfo(timezone))
    return pd.DataFrame({
        f"{name}_month": parsed.dt.month.astype("float64"),
        f"{name}_dayofweek": parsed.dt.day_of_week.astype("float64"),
        f"{name}_hour": parsed.dt.hour.astype("float64"),
    }, index=values.index)


def make_target(values: pd.Series, task: str, threshold: float | None) -> tuple[np.ndarray, dict]:
    """The labels (or numbers) to learn, and how they were made."""
    name = str(values.name)
    if threshold is not None:
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.isna().any():
            raise TrainingError(f"target {name!r} must be numeric to compare with a threshold")
        return (numbers > threshold).astype(np.int64).to_numpy(), {
            "target": name, "positive": f"{name} > {threshold:g}", "classes": [0, 1]}
    if task == "regression":
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.isna().any():
            bad = values[numbers.isna()].iloc[0]
            raise TrainingError(f"target {name!r} must be numeric for regression "
                                f"(found {bad!r})")
        return numbers.to_numpy(dtype=np.float64), {"target": name}
    if pd.api.types.is_float_dtype(values) and not (values % 1 == 0).all():
        raise TrainingError(f"target {name!r} holds fractional numbers: use task 'regression', "
                            "or a threshold to make two classes")
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        labels = values.to_numpy()
        if labels.dtype.kind == "f":
            labels = labels.astype(np.int64)
    else:
        labels = values.astype(str).to_numpy(dtype=object)
    classes = np.unique(labels)
    if len(classes) < 2:
        raise TrainingError(f"target {name!r} has a single class ({classes[0]!r}): "
                            "nothing to learn")
    if len(classes) > MAX_CLASSES:
        raise TrainingError(f"target {name!r} has {len(classes)} classes (at most "
                            f"{MAX_CLASSES}): use task 'regression', or a threshold")
    return labels, {"target": name, "classes": [_plain(c) for c in classes]}


@dataclass
class Prepared:
    X: pd.DataFrame
    y: np.ndarray
    numeric: list[str]
    categorical: list[str]
    target: dict
    rows_read: int
    rows_without_target: int
    derived: dict[str, str] = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        return list(self.X.columns)


def prepare(frame: pd.DataFrame, *, target: str, task: str, features: list[str] | None = None,
            threshold: float | None = None, dates: list[str] = (), timezone: str | None = None,
            sample_rows: int = 0, seed: int = 0) -> Prepared:
    """Rows with a target (a sample of them, if capped), the features and the labels."""
    if target not in frame.columns:
        raise TrainingError(f"target {target!r} is not a column of the table")
    absent = [name for name in [*(features or []), *dates] if name not in frame.columns]
    if absent:
        raise TrainingError(f"column(s) {', '.join(map(repr, absent))} not in the table")
    rows_read = len(frame)
    frame = frame[frame[target].notna()]
    without = rows_read - len(frame)
    if sample_rows and len(frame) > sample_rows:
        frame = frame.sample(n=sample_rows, random_state=seed).sort_index()
    if len(frame) < 10:
        raise TrainingError(f"only {len(frame)} rows have a target {target!r}: too few to train")
    names = list(features) if features else [c for c in frame.columns if c != target]
    if not names:
        raise TrainingError("no feature columns: the table has only the target")
    y, target_info = make_target(frame[target], task, threshold)
    columns: dict[str, pd.Series] = {}
    derived: dict[str, str] = {}
    for name in names:
        if name in dates:
            parts = date_parts(frame[name], name, timezone)
            for part in parts.columns:
                columns[part] = parts[part]
                derived[part] = f"{part.rsplit('_', 1)[1]} of {name}" + (
                    f" in {timezone}" if timezone else "")
        else:
            columns[name] = frame[name]
    X = pd.DataFrame(columns, index=frame.index).reset_index(drop=True)
    numeric, categorical = [], []
    for name in X.columns:
        values = X[name]
        if pd.api.types.is_bool_dtype(values):
            X[name] = values.astype("float64")
            numeric.append(name)
        elif pd.api.types.is_numeric_dtype(values):
            X[name] = values.astype("float64")
            numeric.append(name)
        else:
            # Plain Python strings with NaN for missing: what the imputer and encoder expect.
            text = values.astype("string")
            X[name] = pd.Series(np.where(text.isna(), np.nan, text.astype(object)),
                                dtype=object, index=X.index)
            categorical.append(name)
    return Prepared(X=X, y=y, numeric=numeric, categorical=categorical, target=target_info,
                    rows_read=rows_read, rows_without_target=without, derived=derived)


def preprocessor(numeric: list[str], categorical: list[str],
                 max_categories: int = 32) -> ColumnTransformer:
    """Numbers: median-imputed and standardized; categories: a '(missing)' category, then one
    column per frequent value (the rest, and values never seen in training, share one)."""
    steps = []
    if numeric:
        steps.append(("num", Pipeline([("impute", SimpleImputer(strategy="median")),
                                       ("scale", StandardScaler())]), numeric))
    if categorical:
        steps.append(("cat", Pipeline([
            ("impute", SimpleImputer(strategy="constant", fill_value=MISSING)),
            ("onehot", OneHotEncoder(handle_unknown="infrequent_if_exist",
                                     max_categories=max_categories, sparse_output=False)),
        ]), categorical))
    return ColumnTransformer(steps, remainder="drop", verbose_feature_names_out=True)


# --- models that grow step by step --------------------------------------------------------


@dataclass
class Hyper:
    model: str = "gradient_boosting"
    iterations: int = 100
    learning_rate: float = 0.1
    max_depth: int | None = None
    min_samples_leaf: int = 20
    l2_regularization: float = 0.0


class Stepwise:
    """An estimator trained up to a number of iterations at a time, whose outputs can be read
    after every single iteration (boosting stages, each tree of a forest, each epoch)."""

    def __init__(self, task: str, hyper: Hyper, seed: int, classes: np.ndarray | None):
        self.task, self.hyper, self.seed, self.classes = task, hyper, seed, classes
        self.done = 0
        self.family = {"gradient_boosting": "boosting", "random_forest": "forest"}.get(
            hyper.model, "sgd")
        self._rng = np.random.default_rng(seed)
        self._y_shift, self._y_scale = 0.0, 1.0
        self._sums: dict[str, np.ndarray] = {}
        classify = task == "classification"
        if hyper.model == "gradient_boosting":
            cls = HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor
            self.estimator = cls(learning_rate=hyper.learning_rate, max_depth=hyper.max_depth,
                                 min_samples_leaf=hyper.min_samples_leaf,
                                 l2_regularization=hyper.l2_regularization, max_iter=1,
                                 early_stopping=False, warm_start=True, random_state=seed)
        elif hyper.model == "random_forest":
            cls = RandomForestClassifier if classify else RandomForestRegressor
            self.estimator = cls(n_estimators=1, max_depth=hyper.max_depth,
                                 min_samples_leaf=hyper.min_samples_leaf, warm_start=True,
                                 random_state=seed, n_jobs=1)
        elif hyper.model in ("logistic", "linear"):
            common = {"penalty": "l2", "alpha": hyper.l2_regularization or 1e-4,
                      "learning_rate": "invscaling", "eta0": hyper.learning_rate,
                      "power_t": 0.25, "random_state": seed}
            self.estimator = (SGDClassifier(loss="log_loss", **common) if classify
                              else SGDRegressor(loss="squared_error", **common))
        else:
            raise TrainingError(f"unknown model {hyper.model!r}")

    def schedule(self, max_fits: int = MAX_FITS) -> list[int]:
        """The iteration counts to fit up to, one after another. Each warm-started fit of a
        tree model re-bins or re-checks the data, so those grow in at most max_fits fits (the
        outputs of each iteration are still read, see staged); SGD runs one epoch per fit."""
        if self.family == "sgd":
            max_fits = max(max_fits, MAX_POINTS)
        return schedule(self.hyper.iterations, max_fits)

    def advance(self, X: np.ndarray, y: np.ndarray, upto: int) -> None:
        """Train until `upto` iterations (trees, or epochs for the linear models)."""
        if upto <= self.done:
            return
        est = self.estimator
        if self.family == "boosting":
            est.set_params(max_iter=upto)
            est.fit(X, y)
        elif self.family == "forest":
            est.set_params(n_estimators=upto)
            est.fit(X, y)
        else:
            if self.task == "regression" and self.done == 0:
                # SGD on a target in its own units diverges easily: learn it standardized,
                # then fold the scale back into the coefficients (exact for a linear model).
                self._y_shift = float(np.mean(y))
                self._y_scale = float(np.std(y)) or 1.0
            target = (y - self._y_shift) / self._y_scale if self.task == "regression" else y
            for _ in range(self.done, upto):
                order = self._rng.permutation(len(y))
                if self.task == "classification":
                    est.partial_fit(X[order], target[order], classes=self.classes)
                else:
                    est.partial_fit(X[order], target[order])
        self.done = upto

    def output(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (classification) or predictions in the target's units."""
        if self.task == "classification":
            return self.estimator.predict_proba(X)
        return self.estimator.predict(X) * self._y_scale + self._y_shift

    def staged(self, X: np.ndarray, after: int, key: str):
        """(iteration, output) for each iteration after `after` up to the current one: every
        boosting stage, every tree added to the forest; SGD gives the current epoch only.
        `key` names the data set (a forest keeps a running sum per set)."""
        if self.family == "boosting":
            est = self.estimator
            stages = (est.staged_predict_proba(X) if self.task == "classification"
                      else est.staged_predict(X))
            for iteration, out in enumerate(stages, start=1):
                if iteration > after:
                    yield iteration, out
        elif self.family == "forest":
            trees = self.estimator.estimators_
            total = self._sums.get(key)
            if total is None or after == 0:
                total = 0.0
            for iteration in range(after + 1, len(trees) + 1):
                tree = trees[iteration - 1]
                total = total + (tree.predict_proba(X) if self.task == "classification"
                                 else tree.predict(X))
                self._sums[key] = total
                yield iteration, total / iteration
        elif self.done > after:
            yield self.done, self.output(X)

    def finish(self):
        """The estimator as it should be kept: predictions in the target's own units."""
        est = self.estimator
        if isinstance(est, SGDRegressor) and self.task == "regression":
            est.coef_ = est.coef_ * self._y_scale
            est.intercept_ = est.intercept_ * self._y_scale + self._y_shift
            self._y_shift, self._y_scale = 0.0, 1.0
        return est


def schedule(iterations: int, max_steps: int) -> list[int]:
    """Iteration counts after each of at most max_steps even steps, ending at `iterations`."""
    size = max(1, math.ceil(iterations / max_steps))
    return list(range(size, iterations, size)) + [iterations]


def scores_of(task: str, classes, ytr, train_out, yva, val_out) -> dict[str, float]:
    """The train loss and validation scores from the model's outputs, by the names they are
    charted as: loss, val_loss and val_accuracy (and val_auc for two classes) or val_r2."""
    if task == "classification":
        predicted = classes[np.argmax(val_out, axis=1)]
        scores = {"loss": log_loss(ytr, train_out, labels=classes),
                  "val_loss": log_loss(yva, val_out, labels=classes),
                  "val_accuracy": accuracy_score(yva, predicted)}
        if len(classes) == 2 and len(np.unique(yva)) == 2:
            scores["val_auc"] = roc_auc_score(yva, val_out[:, 1])
        return {k: float(v) for k, v in scores.items()}
    return {"loss": float(mean_squared_error(ytr, train_out)),
            "val_loss": float(mean_squared_error(yva, val_out)),
            "val_r2": float(r2_score(yva, val_out))}


def diverged(scores: dict[str, float], task: str, y: np.ndarray) -> bool:
    """No scores (the outputs were not finite), a score that is not, or (regression) a train
    error a thousand times the target's spread."""
    if not scores or not all(math.isfinite(value) for value in scores.values()):
        return True
    return task == "regression" and scores["loss"] > 1e6 * max(float(np.var(y)), 1e-12)


@dataclass
class Trained:
    pipeline: Pipeline
    history: list[dict]
    report: dict
    val_score: float
    iterations: int
    seconds: float


def train(prep: Prepared, *, task: str, hyper: Hyper, test_size: float = 0.2, seed: int = 0,
          max_categories: int = 32,
          on_step: Callable[[int, int, dict[str, float]], None] | None = None,
          check: Callable[[], None] | None = None,
          max_points: int = MAX_POINTS, max_fits: int = MAX_FITS) -> Trained:
    """Split, fit the preprocessing on the training rows, then grow the model step by step:
    on_step(iteration, iterations, scores) follows each iteration (at most max_points of them,
    evenly spread), as soon as the fit that made it is done. check() runs between fits (it
    raises to stop: a cancel)."""
    started = time.monotonic()
    if hyper.model not in MODEL_TASKS or task not in MODEL_TASKS[hyper.model]:
        raise TrainingError(f"model {hyper.model!r} does not do {task}")
    classify = task == "classification"
    stratify = None
    if classify:
        _, counts = np.unique(prep.y, return_counts=True)
        if counts.min() >= 2:
            stratify = prep.y
    X_train, X_val, y_train, y_val = train_test_split(
        prep.X, prep.y, test_size=test_size, random_state=seed, stratify=stratify)
    if len(X_val) < 2 or len(X_train) < 2:
        raise TrainingError("too few rows to split into training and validation")
    prep_step = preprocessor(prep.numeric, prep.categorical, max_categories)
    Xtr = np.ascontiguousarray(prep_step.fit_transform(X_train, y_train), dtype=np.float64)
    Xva = np.ascontiguousarray(prep_step.transform(X_val), dtype=np.float64)
    classes = np.unique(y_train) if classify else None
    if classify and len(classes) < 2:
        raise TrainingError("the training rows hold a single class")
    if classify:
        keep = np.isin(y_val, classes)  # a class only in validation cannot be predicted
        Xva, y_val, X_val = Xva[keep], y_val[keep], X_val[keep]
    sample = np.random.default_rng(seed).permutation(len(Xtr))[:TRAIN_EVAL_ROWS]
    Xtr_eval, ytr_eval = Xtr[sample], y_train[sample]

    model = Stepwise(task, hyper, seed, classes)
    every = max(1, math.ceil(hyper.iterations / max_points))
    history = []
    for upto in model.schedule(max_fits):
        if check:
            check()
        before = model.done
        model.advance(Xtr, y_train, upto)
        for (iteration, train_out), (_, val_out) in zip(
                model.staged(Xtr_eval, before, "train"), model.staged(Xva, before, "val"),
                strict=True):
            if iteration % every and iteration != hyper.iterations:
                continue
            if check:
                check()
            finite = np.isfinite(train_out).all() and np.isfinite(val_out).all()
            scores = scores_of(task, classes, ytr_eval, train_out, y_val, val_out) if finite \
                else {}
            if diverged(scores, task, ytr_eval):
                raise TrainingError(f"the model diverged at iteration {iteration} (its "
                                    f"{'loss' if finite else 'output'} is "
                                    f"{scores.get('loss', 'not finite')}): try a smaller "
                                    "learning_rate")
            history.append({"iteration": iteration, **scores})
            if on_step:
                on_step(iteration, hyper.iterations, scores)
    estimator = model.finish()
    pipeline = Pipeline([("prep", prep_step), ("model", estimator)])
    metric = SCORE[task]
    val_score = history[-1][f"val_{metric}"]
    report = evaluate(pipeline, task, X_val, y_val, classes, seed)
    report.update({
        "task": task, "model": hyper.model, "metric": metric, "val_score": val_score,
        "hyperparameters": {k: getattr(hyper, k) for k in Hyper.__dataclass_fields__},
        "rows": {"read": prep.rows_read, "without_target": prep.rows_without_target,
                 "used": len(prep.X), "train": len(X_train), "validation": len(X_val)},
        "inputs": prep.features, "numeric": prep.numeric, "categorical": prep.categorical,
        "derived": prep.derived, "target": prep.target,
        "encoded_features": len(prep_step.get_feature_names_out()),
        "history": history,
    })
    return Trained(pipeline=pipeline, history=history, report=report, val_score=val_score,
                   iterations=model.done, seconds=time.monotonic() - started)


def evaluate(pipeline: Pipeline, task: str, X_val: pd.DataFrame, y_val: np.ndarray,
             classes: np.ndarray | None, seed: int) -> dict:
    """The final validation report: a confusion matrix (classification) or error sizes
    (regression), a naive baseline to compare with, and each input column's importance: how
    much the validation score drops when that column is shuffled."""
    report: dict = {}
    if task == "classification":
        predicted = pipeline.predict(X_val)
        values, counts = np.unique(y_val, return_counts=True)
        report["baseline"] = {"accuracy": float(counts.max() / counts.sum()),
                              "predicts": _plain(values[np.argmax(counts)])}
        if len(classes) <= 20:
            report["confusion_matrix"] = {
                "labels": [_plain(c) for c in classes],
                "rows_true_columns_predicted": confusion_matrix(
                    y_val, predicted, labels=classes).tolist()}
        if len(classes) == 2 and len(values) == 2:
            report["val_auc"] = float(roc_auc_score(y_val, pipeline.predict_proba(X_val)[:, 1]))
        scoring = "neg_log_loss"
    else:
        predicted = pipeline.predict(X_val)
        report["val_mae"] = float(mean_absolute_error(y_val, predicted))
        report["val_rmse"] = float(math.sqrt(mean_squared_error(y_val, predicted)))
        report["baseline"] = {"r2": 0.0, "predicts": "the mean"}
        scoring = "r2"
    rows = np.random.default_rng(seed).permutation(len(X_val))[:IMPORTANCE_ROWS]
    sample_y = y_val[rows]
    if task != "classification" or len(np.unique(sample_y)) == len(classes):
        found = permutation_importance(pipeline, X_val.iloc[rows], sample_y, scoring=scoring,
                                       n_repeats=3, random_state=seed)
        order = np.argsort(-found.importances_mean)
        report["importance"] = {
            "how": f"drop in validation {scoring.replace('neg_', '')} when the column is "
                   "shuffled",
            "columns": [{"column": str(X_val.columns[i]),
                         "importance": float(found.importances_mean[i])} for i in order]}
    return report


def _plain(value):
    """A numpy scalar as the Python value JSON takes."""
    return value.item() if isinstance(value, np.generic) else value
