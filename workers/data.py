"""Where jobs read and write: files under DATA_ROOT, tables in the warehouse at WAREHOUSE_URL.

Both are the workers' own data (the portal's database is not among them). A job's paths and
table names are checked when it is submitted, by the same validators the workers run, so a path
outside the root, `..`, a symlink that leads out, or a URL with another scheme is a 400 with the
field that is wrong, and never reaches a worker.
"""

from __future__ import annotations

import glob as globlib
import os
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator

from workers import config
from workers.config import env_str

WAREHOUSE_SCHEMES = ("postgres", "postgresql")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def data_root() -> Path:
    return config.data_root().resolve()


def warehouse_url() -> str | None:
    url = env_str("WAREHOUSE_URL")
    if url and urlsplit(url).scheme not in WAREHOUSE_SCHEMES:
        raise ValueError(f"WAREHOUSE_URL must be a {' or '.join(WAREHOUSE_SCHEMES)}:// URL")
    return url or None


def resolve(path: str) -> Path:
    """An absolute path inside DATA_ROOT for a path relative to it; symlinks are followed
    before the check, so one that leads out is refused like `..`."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError("must be a path")
    if "\x00" in path:
        raise ValueError("must not contain NUL")
    candidate = Path(path)
    if candidate.is_absolute() or ".." in candidate.parts or "://" in path:
        raise ValueError("must be a path relative to DATA_ROOT, without '..'")
    root = data_root()
    resolved = (root / candidate).resolve()
    if resolved != root and root not in resolved.parents:
        raise ValueError("leads outside DATA_ROOT")
    return resolved


def expand(pattern: str) -> list[Path]:
    """The files a glob under DATA_ROOT matches, sorted, each checked like a path (a symlink
    among them that leads out is refused, not skipped)."""
    check_glob(pattern)
    root = data_root()
    files = []
    for match in sorted(globlib.glob(str(root / pattern), recursive=True)):
        path = resolve(os.path.relpath(match, root))
        if path.is_file():
            files.append(path)
    return files


def relative(path: Path) -> str:
    return str(path.relative_to(data_root()))


def check_path(value: str) -> str:
    resolve(value)
    return value


def check_glob(value: str) -> str:
    resolve(value.replace("*", "x").replace("?", "x"))
    return value


def check_table(value: str) -> str:
    """A table name: lower-case letters, digits and underscores, optionally schema-qualified."""
    parts = value.split(".")
    if len(parts) > 2 or not all(_IDENT.match(part) for part in parts):
        raise ValueError("must be a table name like 'flights' or 'staging.flights' "
                         "(lower-case letters, digits, underscores)")
    return value


DataPath = Annotated[str, AfterValidator(check_path)]
DataGlob = Annotated[str, AfterValidator(check_glob)]
TableName = Annotated[str, AfterValidator(check_table)]


def connect_warehouse(**kwargs):
    """A psycopg 3 connection to the warehouse (not the portal's database)."""
    import psycopg

    url = warehouse_url()
    if not url:
        raise RuntimeError("no warehouse: set WAREHOUSE_URL to a PostgreSQL URL")
    return psycopg.connect(url, **kwargs)
