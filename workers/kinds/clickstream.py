"""etl.clickstream: sessionize clickstream events per user, spread over the cluster.

The events come from files (CSV or Parquet with user_id, ts and page columns) or from a
deterministic generator (a number of events, users and a skew: a few users make most of the
events, as on a real site). They are partitioned by a hash of the user, so that one user's
events meet in one partition; each partition sorts its events by user and time, cuts sessions at
30 minutes of inactivity, and loads the events (with their session), the sessions and its share
of the per-hour aggregates into the warehouse with COPY (or writes Parquet). The parent sums the
partitions' hourly shares into the hourly table. The job page shows each partition's rows and
duration, so skew and stragglers are visible.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from workers import data
from workers.kinds import JobKind, Params

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

# NumPy and pyarrow load where a partition runs, not in the portal that checks the parameters.
EPOCH = "2026-01-01T00:00:00"  # generated events start here (UTC)
CHUNK_ROWS = 250_000  # rows per COPY statement and per progress report
PARENT_PART = -1  # the fence of the parent's own write (the hourly table), beside its parts'


class ClickstreamParams(Params):
    input: data.DataGlob | None = Field(
        None, description="CSV or Parquet files (in your team's space, @shared/... or a "
        "granted @team/...) with user_id, ts, page; "
        "empty: generate the events.")
    events: int = Field(1_000_000, ge=1, le=2_000_000_000,
                        description="Events to generate (without an input).")
    users: int = Field(10_000, ge=1, le=50_000_000, description="Distinct users (generated).")
    skew: float = Field(1.0, ge=0, le=3, description="Zipf exponent of events per user: 0 is "
                        "even, 1 and more puts most events on a few users.")
    days: float = Field(1.0, gt=0, le=366, description="Time span of the generated events.")
    seed: int = Field(7, ge=0, le=2**31 - 1)
    partitions: int = Field(4, ge=1, le=256, description="Partitions, by a hash of the user.")
    gap_minutes: float = Field(30, gt=0, le=24 * 60, description="Inactivity that ends a "
                               "session.")
    target: Literal["warehouse", "parquet"] = Field(
        "warehouse", description="Load into the warehouse (WAREHOUSE_URL) or write Parquet.")
    table: data.TableName = Field("clickstream", description="Tables <table>_events, "
                                  "<table>_sessions, <table>_hourly (warehouse).")
    output: data.OutputPath = Field("clickstream", description="Folder in your team's space "
                                    "(parquet).")

    @model_validator(mode="after")
    def _target_ready(self):
        if self.target == "warehouse" and not data.warehouse_url():
            raise ValueError("target 'warehouse' needs WAREHOUSE_URL; use target 'parquet'")
        if self.input is not None and not data.expand(self.input):
            raise ValueError(f"input {self.input!r} matches no file")
        return self


class PartParams(ClickstreamParams):
    partition: int = Field(ge=0)
    job: int = Field(ge=0, description="The parent job: its id keys the loaded rows.")


# --- the work of one partition, as plain functions (numpy and pyarrow) -----------------------


def user_partition(user_ids: np.ndarray, partitions: int) -> np.ndarray:
    """A stable hash of the user (a multiplicative hash, not Python's salted one)."""
    import numpy as np

    mixed = (user_ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(33)
    return (mixed % np.uint64(partitions)).astype(np.int64)


def events_per_user(params: ClickstreamParams) -> np.ndarray:
    """How many events each user makes: the same on every worker for the same seed."""
    import numpy as np

    rng = np.random.default_rng(params.seed)
    ranks = np.arange(1, params.users + 1, dtype=np.float64)
    weights = ranks ** -params.skew
    weights /= weights.sum()
    counts = rng.multinomial(params.events, weights)
    return rng.permutation(counts)  # popularity is not ordered by user id


def generate(params: ClickstreamParams, partition: int) -> pa.Table:
    """This partition's events: its users' visits spread over the span, a few minutes apart
    within a visit. Deterministic for (seed, partition)."""
    import numpy as np
    import pyarrow as pa

    counts = events_per_user(params)
    users = np.arange(params.users, dtype=np.int64)
    mine = users[user_partition(users, params.partitions) == partition]
    mine = mine[counts[mine] > 0]
    if not mine.size:
        return pa.table({"user_id": pa.array([], pa.int64()),
                         "ts": pa.array([], pa.timestamp("ms")), "page": pa.array([], pa.int32())})
    n = counts[mine]
    rng = np.random.default_rng([params.seed, partition])
    user_ids = np.repeat(mine, n)
    span_s = params.days * 86400
    visits = np.maximum(1, n // 12)
    visit_starts = rng.uniform(0, span_s, size=int(visits.sum()))
    first_visit = np.concatenate([[0], np.cumsum(visits)[:-1]])
    pick = (rng.random(user_ids.size) * np.repeat(visits, n)).astype(np.int64)
    offsets = rng.exponential(180.0, size=user_ids.size)
    seconds = np.minimum(visit_starts[np.repeat(first_visit, n) + pick] + offsets, span_s - 1)
    ts = np.datetime64(EPOCH, "s") + seconds.astype("timedelta64[s]")
    page = rng.zipf(1.5, size=user_ids.size).clip(1, 5000).astype(np.int32)
    return pa.table({"user_id": user_ids, "ts": ts.astype("datetime64[ms]"), "page": page})


def read_inputs(params: ClickstreamParams, partition: int) -> pa.Table:
    """This partition's users' events from the input files."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    tables = []
    for path in data.expand(params.input):
        table = (pq.read_table(path) if path.suffix == ".parquet"
                 else pacsv.read_csv(path))
        table = table.select(["user_id", "ts", "page"]).cast(pa.schema([
            ("user_id", pa.int64()), ("ts", pa.timestamp("ms")), ("page", pa.int32())]))
        keep = user_partition(table["user_id"].to_numpy(), params.partitions) == partition
        tables.append(table.filter(pa.array(keep)))
    return pa.concat_tables(tables) if tables else generate(params.model_copy(
        update={"events": 0}), partition)


def sessionize(events: pa.Table, gap_minutes: float, first_session: int) -> tuple[pa.Table,
                                                                                   pa.Table]:
    """Events sorted by user and time with a session id; and the sessions. A session ends
    where the user changes or the user was quiet for more than gap_minutes."""
    import numpy as np
    import pyarrow as pa

    user = events["user_id"].to_numpy()
    ts = events["ts"].to_numpy().astype("datetime64[ms]").astype(np.int64)
    order = np.lexsort((ts, user))
    user, ts = user[order], ts[order]
    page = events["page"].to_numpy()[order]
    new = np.ones(user.size, dtype=bool)
    if user.size:
        new[1:] = (user[1:] != user[:-1]) | (ts[1:] - ts[:-1] > gap_minutes * 60_000)
    session = np.cumsum(new) - 1 + first_session
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], user.size) - 1
    sorted_events = pa.table({"user_id": user, "ts": ts.astype("datetime64[ms]"), "page": page,
                              "session_id": session})
    sessions = pa.table({
        "session_id": session[starts], "user_id": user[starts],
        "started_at": ts[starts].astype("datetime64[ms]"),
        "ended_at": ts[ends].astype("datetime64[ms]"),
        "events": (ends - starts + 1).astype(np.int64)})
    return sorted_events, sessions


def hourly(events: pa.Table, sessions: pa.Table) -> dict[str, list[int]]:
    """This partition's share of the per-hour figures. Users do not cross partitions, so the
    parent adds the shares up, distinct users included."""
    import numpy as np

    hour = events["ts"].to_numpy().astype("datetime64[h]").astype(np.int64)
    user = events["user_id"].to_numpy()
    figures: dict[int, list[int]] = {}
    hours, counts = np.unique(hour, return_counts=True)
    for h, c in zip(hours.tolist(), counts.tolist(), strict=True):
        figures[h] = [c, 0, 0]
    if hour.size and 0 <= user.min() and user.max() < 2**32:
        # distinct (hour, user) pairs, packed in one integer: a flat unique, 30 times faster
        pairs = np.unique((hour << np.int64(32)) | user.astype(np.int64))
        pair_hours = pairs >> np.int64(32)
    elif hour.size:
        pair_hours = np.unique(np.stack([hour, user]), axis=1)[0]
    if hour.size:
        for h, c in zip(*np.unique(pair_hours, return_counts=True), strict=True):
            figures[int(h)][2] = int(c)
    started = sessions["started_at"].to_numpy().astype("datetime64[h]").astype(np.int64)
    for h, c in zip(*np.unique(started, return_counts=True), strict=True):
        figures.setdefault(int(h), [0, 0, 0])[1] = int(c)
    return {str(h): v for h, v in sorted(figures.items())}


def add_hourly(shares: list[dict[str, list[int]]]) -> dict[str, list[int]]:
    totals: dict[str, list[int]] = {}
    for share in shares:
        for hour, figures in share.items():
            totals[hour] = [a + b for a, b in zip(totals.get(hour, [0, 0, 0]), figures,
                                                  strict=True)]
    return dict(sorted(totals.items(), key=lambda item: int(item[0])))


def hour_table(totals: dict[str, list[int]]) -> pa.Table:
    import numpy as np
    import pyarrow as pa

    hours = np.array([int(h) for h in totals], dtype=np.int64) * 3600
    return pa.table({
        "hour": pa.array(hours.astype("datetime64[s]"), pa.timestamp("s")),
        "events": pa.array([v[0] for v in totals.values()], pa.int64()),
        "sessions": pa.array([v[1] for v in totals.values()], pa.int64()),
        "users": pa.array([v[2] for v in totals.values()], pa.int64())})


# --- writing, idempotently per partition -----------------------------------------------------

EVENTS_DDL = ("user_id bigint NOT NULL, ts timestamp NOT NULL, page integer NOT NULL, "
              "session_id bigint NOT NULL, _job bigint NOT NULL, _part integer NOT NULL")
SESSIONS_DDL = ("session_id bigint NOT NULL, user_id bigint NOT NULL, started_at timestamp "
                "NOT NULL, ended_at timestamp NOT NULL, events bigint NOT NULL, "
                "_job bigint NOT NULL, _part integer NOT NULL")
HOURLY_DDL = ("hour timestamp NOT NULL, events bigint NOT NULL, sessions bigint NOT NULL, "
              "users bigint NOT NULL, _job bigint NOT NULL")


def csv_bytes(table: pa.Table) -> bytes:
    import pyarrow.csv as pacsv

    sink = io.BytesIO()
    pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False))
    return sink.getvalue()


def copy_table(cursor, name: str, columns: list[str], table: pa.Table, progress=None) -> int:
    """COPY in chunks of CSV made by pyarrow (no Python loop over rows)."""
    with cursor.copy(f"COPY {name} ({', '.join(columns)}) FROM STDIN (FORMAT csv)") as copy:
        for start in range(0, table.num_rows, CHUNK_ROWS):
            copy.write(csv_bytes(table.slice(start, CHUNK_ROWS)))
            if progress:
                progress(min(start + CHUNK_ROWS, table.num_rows))
    return table.num_rows


def ensure_tables(conn, table: str) -> None:
    with conn.cursor() as cursor:
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {table}_events ({EVENTS_DDL})")
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {table}_sessions ({SESSIONS_DDL})")
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {table}_hourly ({HOURLY_DDL})")


def load_partition(params: PartParams, events: pa.Table, sessions: pa.Table, *,
                   retry: bool, progress, attempt: int = 1) -> None:
    """One transaction, fenced for this attempt: a retried partition first removes what an
    earlier attempt of it may have committed, so the output holds each row once, and an
    attempt that a later one superseded writes nothing."""
    import numpy as np
    import pyarrow as pa

    with data.connect_warehouse() as conn:
        ensure_tables(conn, params.table)
        data.claim_fence(conn, params.job, params.partition, attempt)
        with conn.cursor() as cursor:
            if retry:
                for suffix in ("events", "sessions"):
                    cursor.execute(f"DELETE FROM {params.table}_{suffix} WHERE _job = %s AND "
                                   "_part = %s", (params.job, params.partition))
            keyed = {"_job": pa.array(np.full(events.num_rows, params.job)),
                     "_part": pa.array(np.full(events.num_rows, params.partition, np.int32))}
            copy_table(cursor, f"{params.table}_events",
                       [*events.column_names, "_job", "_part"],
                       events.append_column("_job", keyed["_job"]).append_column(
                           "_part", keyed["_part"]), progress)
            copy_table(cursor, f"{params.table}_sessions",
                       [*sessions.column_names, "_job", "_part"],
                       sessions.append_column("_job", pa.array(
                           np.full(sessions.num_rows, params.job))).append_column(
                           "_part", pa.array(np.full(sessions.num_rows, params.partition,
                                                     np.int32))))


def write_parquet(folder: Path, name: str, table: pa.Table,
                  fence: tuple[int, int] | None = None) -> None:
    from workers.etl.output import parquet_part

    with parquet_part(folder, name, table.schema, fence) as write:  # whole, or not at all
        write(table)


def run_partition(ctx, params: PartParams):
    started = time.monotonic()
    events = (read_inputs(params, params.partition) if params.input
              else generate(params, params.partition))
    total = events.num_rows
    ctx.progress(0, total, unit="rows", message=f"partition {params.partition}: sessionizing")
    ctx.check()
    # Session ids are unique across partitions: a partition numbers from its own block.
    events, sessions = sessionize(events, params.gap_minutes, params.partition << 40)
    ctx.check()
    if params.target == "warehouse":
        load_partition(params, events, sessions, retry=ctx.attempt > 1,
                       progress=lambda done: ctx.progress(done, total, unit="rows"),
                       attempt=ctx.attempt)
    else:
        folder = data.resolve(params.output, write=True)
        name = f"part-{params.partition:05d}.parquet"
        write_parquet(folder / "events", name, events, (params.job, ctx.attempt))
        write_parquet(folder / "sessions", name, sessions, (params.job, ctx.attempt))
    figures = hourly(events, sessions)
    seconds = time.monotonic() - started
    ctx.progress(total, total, unit="rows")
    ctx.metric("rows_per_s", total / seconds if seconds else 0.0, step=0)
    return {"partition": params.partition, "rows": total, "sessions": sessions.num_rows,
            "seconds": round(seconds, 3), "hourly": figures}


def run(ctx, params: ClickstreamParams):
    import numpy as np
    import pyarrow as pa

    started = time.monotonic()
    source = params.input or f"{params.events:,} generated events of {params.users:,} users"
    ctx.log(f"clickstream: {source}, {params.partitions} partitions by user, "
            f"{params.gap_minutes:g}-minute sessions, into {params.target}")
    if params.target == "warehouse":
        with data.connect_warehouse() as conn:
            ensure_tables(conn, params.table)
            conn.execute(f"DELETE FROM {params.table}_hourly WHERE _job = %s", (ctx.job_id,))
    parts = ctx.fan_out("etl.clickstream.part", [
        {**params.model_dump(mode="json"), "partition": p, "job": ctx.job_id}
        for p in range(params.partitions)])
    hours = hour_table(add_hourly([part["hourly"] for part in parts]))
    if params.target == "warehouse":
        with data.connect_warehouse() as conn, conn.cursor() as cursor:
            data.claim_fence(conn, ctx.job_id, PARENT_PART, ctx.attempt)
            cursor.execute(f"DELETE FROM {params.table}_hourly WHERE _job = %s", (ctx.job_id,))
            copy_table(cursor, f"{params.table}_hourly", [*hours.column_names, "_job"],
                       hours.append_column("_job", pa.array(np.full(hours.num_rows,
                                                                    ctx.job_id))))
    else:
        write_parquet(data.resolve(params.output, write=True), "hourly.parquet", hours,
                      (ctx.job_id, ctx.attempt))
    rows = sum(part["rows"] for part in parts)
    seconds = time.monotonic() - started
    slowest = max(parts, key=lambda part: part["seconds"])
    ctx.log(f"{rows:,} events in {sum(p['sessions'] for p in parts):,} sessions, "
            f"{rows / seconds:,.0f} rows/s; slowest partition {slowest['partition']} "
            f"({slowest['rows']:,} rows, {slowest['seconds']:.1f} s)")
    return {"rows": rows, "sessions": sum(part["sessions"] for part in parts),
            "hours": hours.num_rows, "partitions": len(parts), "seconds": round(seconds, 3),
            "rows_per_s": round(rows / seconds, 1) if seconds else None,
            "per_partition": [{"partition": p["partition"], "rows": p["rows"],
                               "seconds": p["seconds"]} for p in parts],
            "target": params.target,
            "output": (f"{params.table}_events, {params.table}_sessions, {params.table}_hourly"
                       if params.target == "warehouse" else params.output)}


KINDS = [
    JobKind(
        name="etl.clickstream",
        title="Sessionize a clickstream",
        description="Cuts users' events into sessions (30 minutes of quiet ends one), spread "
                    "over the workers by a hash of the user; loads events, sessions and hourly "
                    "figures into the warehouse or Parquet. Events from files or generated, "
                    "with a chosen skew.",
        params=ClickstreamParams,
        run=run,
        queue="etl",
    ),
    JobKind(
        name="etl.clickstream.part",
        title="Clickstream partition",
        description="One partition of etl.clickstream.",
        params=PartParams,
        run=run_partition,
        queue="etl",
        internal=True,
    ),
]

EXAMPLES = [
    {"title": "Sessionize a million clicks",
     "description": "1,000,000 generated events of 20,000 users, skewed, in 4 partitions by "
                    "user; sessions and hourly figures as Parquet under DATA_ROOT.",
     "kind": "etl.clickstream", "name": "clickstream demo",
     "params": {"events": 1_000_000, "users": 20_000, "skew": 1.1, "partitions": 4,
                "target": "parquet", "output": "demo/clickstream"}},
]
