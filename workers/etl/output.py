"""Where loaded rows go, written so that running a partition twice leaves them once.

- Parquet: each partition writes `part-NNNNN.parquet` under a temporary name in the target
  folder and renames it into place (os.replace), so a file is whole or absent and a second run
  replaces the first. The rename is fenced: under a flock'ed fence file beside it that keeps
  the highest attempt of the job that renamed it, an attempt older than that one (superseded
  while it ran) renames nothing.
- Warehouse: one transaction per partition claims its fence (the warehouse's _portal_fence row
  of (job, partition) holds the highest attempt that wrote; a lower one is refused and rolled
  back), deletes the rows of (_job, _part), then COPYs.
- Quarantine: the rows that failed, one JSON object per line (`file`, `line`, `reason`,
  `values`), in `part-NNNNN.jsonl` of the quarantine folder, renamed into place the same way
  (and removed when a rerun of the partition finds no bad rows).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from psycopg import sql

from workers import data
from workers.etl.types import POSTGRES

PART_FILE = re.compile(r"^part-(\d{5,})\.(parquet|jsonl)$")
SAMPLES = 5


def part_name(part: int, suffix: str) -> str:
    return f"part-{part:05d}{suffix}"


def remove_parts_from(folder: Path, first: int, suffix: str) -> list[str]:
    """Delete part files numbered `first` and above (left by an earlier, larger load into
    the same folder); returns their names."""
    removed = []
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            match = PART_FILE.match(path.name)
            if match and f".{match[2]}" == suffix and int(match[1]) >= first:
                path.unlink(missing_ok=True)
                removed.append(path.name)
    return removed


class Quarantine:
    """One partition's rejected rows, each with its file, line number and reason."""

    def __init__(self, folder: Path, part: int, fence: tuple[int, int] | None = None):
        self.folder = folder
        self.fence = fence  # (job, attempt): renamed into place only by the current attempt
        self.path = folder / part_name(part, ".jsonl")
        self.partial = folder / f".{self.path.name}.partial"
        self.count = 0
        self.samples: list[str] = []
        self._file = None

    def add(self, file: str, line: int, reason: str, values) -> None:
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._file = open(self.partial, "w", encoding="utf-8")
        self._file.write(json.dumps({"file": file, "line": line, "reason": reason,
                                     "values": values}, default=str, ensure_ascii=False))
        self._file.write("\n")
        self.count += 1
        if len(self.samples) < SAMPLES:
            self.samples.append(f"{file} line {line}: {reason}")

    def commit(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif not self.path.exists():
            return
        with _fenced(self.path, self.fence):
            if self.partial.exists():
                os.replace(self.partial, self.path)
            else:
                self.path.unlink(missing_ok=True)  # an earlier run's rejects are not this run's

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.partial.unlink(missing_ok=True)


def read_quarantine(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("part-*.jsonl")):
        with open(path, encoding="utf-8") as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    return rows


@contextmanager
def _fenced(target: Path, fence: tuple[int, int] | None) -> Iterator[None]:
    if fence is None:
        yield
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with data.file_fence(target, *fence):
        yield


@contextmanager
def parquet_part(folder: Path, name: str, schema: pa.Schema,
                 fence: tuple[int, int] | None = None) -> Iterator[Callable]:
    """Yields write(table); the file appears under its name only if the block succeeds (and,
    with fence=(job, attempt), only if no later attempt of the job has renamed it)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    partial = folder / f".{name}.partial"
    writer = pq.ParquetWriter(partial, schema)
    try:
        yield writer.write_table
        writer.close()
        with _fenced(target, fence):
            os.replace(partial, target)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise


# --- the warehouse ---------------------------------------------------------------------------


def table_ident(table: str) -> sql.Composable:
    return sql.Identifier(*table.split("."))


def csv_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False))
    return sink.getvalue()


def keyed(table: pa.Table, job: int, part: int) -> pa.Table:
    n = table.num_rows
    return (table.append_column("_job", pa.array([job] * n, pa.int64()))
            .append_column("_part", pa.array([part] * n, pa.int32())))


def copy_statement(table: str, names: list[str]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
        table_ident(table), sql.SQL(", ").join(map(sql.Identifier, [*names, "_job", "_part"])))


def existing_columns(conn, table: str) -> dict[str, str] | None:
    """The table's columns and their types, or None if there is no such table."""
    oid = conn.execute("SELECT to_regclass(%s)::oid", (table,)).fetchone()[0]
    if oid is None:
        return None
    rows = conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                        "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped "
                        "ORDER BY attnum", (oid,)).fetchall()
    return dict(rows)


def _pg_type_name(pg: str) -> str:
    return {"timestamp": "timestamp without time zone",
            "timestamptz": "timestamp with time zone",
            "time": "time without time zone"}.get(pg, pg)


def ensure_table(conn, table: str, columns: list[tuple[str, str]]) -> bool:
    """Create the table (columns given as (name, PostgreSQL type)) plus `_job bigint, _part
    int` and an index on them, if missing; if it exists, check it has these columns with these
    types. Returns True if it was created."""
    if "." in table:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
            sql.Identifier(table.split(".")[0])))
    found = existing_columns(conn, table)
    if found is None:
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
            table_ident(table), sql.SQL(", ").join(
                [sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(pg))
                 for name, pg in columns]
                + [sql.SQL("_job bigint NOT NULL"), sql.SQL("_part integer NOT NULL")])))
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (_job, _part)").format(
            sql.Identifier(f"{table.split('.')[-1][:50]}__job_part"), table_ident(table)))
        return True
    wrong = []
    for name, pg in [*columns, ("_job", "bigint"), ("_part", "integer")]:
        have = found.get(name)
        if have != _pg_type_name(pg):
            wrong.append(f"{name} {_pg_type_name(pg)} (the table has "
                         f"{have or 'no such column'})")
    if wrong:
        raise ValueError(f"table {table} exists with other columns: needs "
                         + "; ".join(wrong))
    return False


def ingest_columns(columns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ingest schema's columns as PostgreSQL columns."""
    return [(name, POSTGRES[kind]) for name, kind in columns]


@contextmanager
def warehouse_part(table: str, names: list[str], job: int, part: int,
                   attempt: int) -> Iterator[Callable]:
    """Yields write(table) for one partition, in one transaction that claims the partition's
    fence for this attempt (data.Superseded if a later one wrote) and deletes what an earlier
    run of the same partition committed; nothing is visible unless the block ends."""
    with data.connect_warehouse() as conn, conn.cursor() as cursor:
        data.claim_fence(conn, job, part, attempt)
        cursor.execute(sql.SQL("DELETE FROM {} WHERE _job = %s AND _part = %s").format(
            table_ident(table)), (job, part))
        with cursor.copy(copy_statement(table, names)) as copy:
            yield lambda rows: copy.write(csv_bytes(keyed(rows, job, part)))
