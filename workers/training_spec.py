"""The tasks, models and inputs the training kinds accept: what the portal checks when one is
submitted, without scikit-learn, pandas or NumPy (workers/training.py, where the job runs)."""

TASKS = ("classification", "regression")
MODELS = ("gradient_boosting", "random_forest", "logistic", "linear")
# Which models fit which task ("logistic" is SGD logistic regression, "linear" SGD least squares).
MODEL_TASKS = {
    "gradient_boosting": TASKS,
    "random_forest": TASKS,
    "logistic": ("classification",),
    "linear": ("regression",),
}
SCORE = {"classification": "accuracy", "regression": "r2"}
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
