"""etl.clickstream's own work: deterministic generation, partitions by user, sessions."""

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from workers.kinds.clickstream import (
    ClickstreamParams,
    add_hourly,
    events_per_user,
    generate,
    hour_table,
    hourly,
    sessionize,
    user_partition,
)


def params(**overrides):
    return ClickstreamParams(**{"events": 20_000, "users": 500, "skew": 1.2, "partitions": 4,
                                "target": "parquet", **overrides})


def test_generation_is_deterministic_and_each_user_lands_in_one_partition():
    p = params()
    parts = [generate(p, i) for i in range(p.partitions)]
    assert sum(t.num_rows for t in parts) == 20_000
    users = [set(t["user_id"].to_pylist()) for t in parts]
    assert all(not (users[i] & users[j]) for i in range(4) for j in range(i + 1, 4))
    assert all((user_partition(np.array(sorted(u)), 4) == i).all() for i, u in enumerate(users))
    assert generate(p, 2).equals(parts[2])
    assert not generate(params(seed=8), 2).equals(parts[2])


def test_skew_puts_most_events_on_few_users():
    even, skewed = events_per_user(params(skew=0)), events_per_user(params(skew=1.5))
    top = lambda counts: np.sort(counts)[-5:].sum() / counts.sum()  # noqa: E731
    assert top(skewed) > 0.3 > 0.05 > top(even)


def test_a_session_ends_after_thirty_quiet_minutes_or_at_another_user():
    minute = 60_000
    events = pa.table({
        "user_id": [1, 1, 1, 2, 1, 2],
        "ts": pa.array(np.array([0, 10, 45, 5, 70, 50], dtype="int64") * minute,
                       pa.timestamp("ms")),
        "page": [1, 2, 3, 4, 5, 6]})
    ordered, sessions = sessionize(events, 30, first_session=100)
    assert ordered["user_id"].to_pylist() == [1, 1, 1, 1, 2, 2]
    # user 1: 0, 10 | 45, 70 (35 quiet minutes between 10 and 45); user 2: 5 | 50
    assert ordered["session_id"].to_pylist() == [100, 100, 101, 101, 102, 103]
    assert sessions["events"].to_pylist() == [2, 2, 1, 1]
    assert sessions["user_id"].to_pylist() == [1, 1, 2, 2]
    figures = hourly(ordered, sessions)
    assert sum(v[0] for v in figures.values()) == 6
    assert sum(v[1] for v in figures.values()) == 4
    table = hour_table(add_hourly([figures, figures]))
    assert table["events"].to_pylist() == [2 * v[0] for v in figures.values()]
    assert str(table["hour"][0].as_py()) == "1970-01-01 00:00:00"


def test_a_warehouse_target_needs_a_warehouse(monkeypatch):
    monkeypatch.delenv("WAREHOUSE_URL", raising=False)
    with pytest.raises(ValidationError, match="WAREHOUSE_URL"):
        ClickstreamParams(events=10, target="warehouse")
    with pytest.raises(ValidationError):
        ClickstreamParams(events=10, target="parquet", output="../outside")
