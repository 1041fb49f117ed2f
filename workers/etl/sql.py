"""SQL over files with DuckDB: each input is a view over its files (CSV, Parquet or JSON lines),
then the files are the only ones DuckDB may touch (`allowed_paths`, external access off, the
configuration locked) and the query runs, its result streamed out in Arrow batches.

Only one SELECT (or WITH ... SELECT) statement is accepted: DuckDB's own parser decides, at
submission.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa

from workers.etl.spec import ALIAS, format_of

BATCH_ROWS = 100_000


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _list(paths: list[Path]) -> str:
    return "[" + ", ".join(_literal(str(p)) for p in paths) + "]"


def source(paths: list[Path], nulls: list[str], whole: bool = False) -> str:
    """The DuckDB table function reading these files (all of one format). CSV and JSON
    types come from a sample of the rows, or, with whole, from all of them."""
    formats = {format_of(p) for p in paths}
    if len(formats) != 1:
        raise ValueError(f"mixes formats ({', '.join(sorted(formats))}): one format per input")
    fmt = formats.pop()
    if fmt == "parquet":
        return f"read_parquet({_list(paths)}, union_by_name = true)"
    if fmt == "jsonl":
        return (f"read_json({_list(paths)}, format = 'newline_delimited', "
                f"union_by_name = true{', sample_size = -1' if whole else ''})")
    # An empty field is missing, whatever else is listed (as etl.ingest reads it).
    nullstr = "[" + ", ".join(_literal(n) for n in dict.fromkeys(["", *nulls])) + "]"
    return (f"read_csv({_list(paths)}, header = true, union_by_name = true, "
            f"nullstr = {nullstr}{', sample_size = -1' if whole else ''})")


def sampled(inputs: dict[str, list[Path] | pa.Table]) -> bool:
    """Whether some input's column types are guessed from a sample (CSV, JSON lines)."""
    return any(format_of(p) != "parquet" for paths in inputs.values()
               if not isinstance(paths, pa.Table) for p in paths)


def connect(inputs: dict[str, list[Path] | pa.Table], nulls: list[str],
            whole: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with a view per input (its files, or a table already read), that
    may read those files and nothing else (no other file, no network, no extension to
    install, no setting to change back)."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    allowed = []
    for alias, paths in inputs.items():
        if not ALIAS.match(alias):
            raise ValueError(f"input name {alias!r}: lower-case letters, digits and underscores")
        if isinstance(paths, pa.Table):
            con.register(alias, paths)
            continue
        con.execute(f'CREATE VIEW "{alias}" AS SELECT * FROM {source(paths, nulls, whole)}')
        allowed.extend(str(p) for p in paths)
    con.execute(f"SET allowed_paths = {_list(allowed)}")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


@contextmanager
def interrupt_on(con: duckdb.DuckDBPyConnection, cancelled: Callable[[], bool],
                 every: float = 0.25) -> Iterator[None]:
    """Interrupt DuckDB's running query as soon as cancelled() turns true."""
    stop = threading.Event()

    def watch():
        while not stop.wait(every):
            if cancelled():
                con.interrupt()
                return

    watcher = threading.Thread(target=watch, daemon=True, name="duckdb-cancel")
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()


def batches(con: duckdb.DuckDBPyConnection, query: str,
            batch_rows: int = BATCH_ROWS) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    reader = con.sql(query).to_arrow_reader(batch_rows)
    names = reader.schema.names
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"the query's columns need distinct names: {', '.join(twice)} "
                         "appear more than once (use AS)")
    return reader.schema, iter(reader)


# --- the result's columns in PostgreSQL ------------------------------------------------------


def postgres_type(dtype: pa.DataType) -> str:
    if pa.types.is_boolean(dtype):
        return "boolean"
    if pa.types.is_integer(dtype):
        return "numeric" if dtype == pa.uint64() else "bigint"
    if pa.types.is_floating(dtype):
        return "double precision"
    if pa.types.is_decimal(dtype):
        return "numeric"
    if pa.types.is_date(dtype):
        return "date"
    if pa.types.is_timestamp(dtype):
        return "timestamptz" if dtype.tz else "timestamp"
    if pa.types.is_time(dtype):
        return "time"
    return "text"


def for_copy(batch: pa.RecordBatch) -> pa.Table:
    """A batch that pyarrow's CSV writer can write and PostgreSQL's COPY can read: columns of
    other types (lists, structs, intervals, binary) become text."""
    import json

    columns = []
    for column in batch.columns:
        if postgres_type(column.type) == "text" and not pa.types.is_string(column.type):
            try:
                column = column.cast(pa.string())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                column = pa.array([None if v is None else
                                   json.dumps(v, default=str) if isinstance(v, list | dict)
                                   else str(v) for v in column.to_pylist()], pa.string())
        columns.append(column)
    return pa.Table.from_arrays(columns, names=batch.schema.names)
