"""What the portal checks when an ETL job is submitted, without the libraries that run it.

The web imports every kind's parameters to offer and validate them; the readers, the type
parsers and DuckDB's engine load only where a job runs (or, for `check_select`, when an SQL
job is checked).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

ColumnType = Literal["int", "float", "text", "bool", "date", "timestamp"]
TYPES: tuple[str, ...] = ("int", "float", "text", "bool", "date", "timestamp")
DEFAULT_NULLS = ["", "NA", "N/A", "NULL", "null", "None", "\\N"]

FORMATS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}

ALIAS = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_COMMENTS = re.compile(r"(--[^\n]*(\n|$))|(/\*.*?\*/)", re.S)
FIRST_WORDS = ("select", "with", "from", "values")


def format_of(path: Path | str, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"{Path(path).name}: unknown format (name it .csv, .jsonl or .parquet, "
                         "or set format)")
    return fmt


def check_select(text: str) -> str:
    """The SQL if it is exactly one SELECT; else ValueError saying why. DuckDB's own parser
    decides."""
    import duckdb

    try:
        statements = duckdb.extract_statements(text)
    except duckdb.Error as exc:
        raise ValueError(f"is not valid SQL: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1:
        raise ValueError(f"must be a single SELECT statement, not {len(statements)} statements")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise ValueError(f"must be a SELECT (or WITH ... SELECT), not {kind.name}")
    words = _COMMENTS.sub(" ", text).lstrip(" \t\r\n(").split(None, 1)
    if not words or words[0].lower() not in FIRST_WORDS:
        raise ValueError("must be a SELECT (or WITH ... SELECT) statement")
    return text
