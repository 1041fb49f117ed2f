"""Where jobs read and write: files under DATA_ROOT, tables in the warehouse at WAREHOUSE_URL.

Both are the workers' own data (the portal's database is not among them), and both are split
into team spaces. A job of team T names paths relative to its team's folder,
DATA_ROOT/teams/T; `@shared/...` names the read-only shared area (DATA_ROOT/shared, the demo
data), and `@U/...` a path of team U's that U granted T read access to. Anything else, another
team's file included, is reported exactly as a file that does not exist. Its tables live in its
team's PostgreSQL schema (team_T), reached as the team's own role (portal_team_T), so
PostgreSQL itself refuses the rest.

A job's paths and table names are checked when it is submitted, by the same validators the
workers run, inside the same team space, so a path outside it, `..`, a symlink that leads out,
or a URL with another scheme is a 400 with the field that is wrong, and never reaches a worker.
Code that runs outside any team space (management commands, the operator's own tools) sees the
whole DATA_ROOT.
"""

from __future__ import annotations

import contextvars
import fcntl
import glob as globlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator

from workers import config
from workers.config import env_str

WAREHOUSE_SCHEMES = ("postgres", "postgresql")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
SHARED = "@shared"
TEAMS_FOLDER = "teams"
SHARED_FOLDER = "shared"
SCHEMA_PREFIX = "team_"
ROLE_PREFIX = "portal_team_"
RESERVED_TABLE_PREFIX = "_portal"
FENCE_TABLE = "_portal_fence"


@dataclass(frozen=True)
class Space:
    """A team's view of the data: its own folder and schema, the shared area, and what other
    teams granted it (path prefixes "@U/prefix" and tables "U.table")."""

    team: str
    paths: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()


_space: contextvars.ContextVar[Space | None] = contextvars.ContextVar("data_space",
                                                                      default=None)


@contextmanager
def team_space(space: Space | None) -> Iterator[Space | None]:
    """Resolve every path and table inside this team's space while the block runs."""
    token = _space.set(space)
    try:
        yield space
    finally:
        _space.reset(token)


def space_of(team: str | None, grants: dict | None = None) -> Space:
    """The space an attempt message names (a message without a team gets none at all)."""
    if not team:
        raise LookupError("the attempt names no team, so it has no data space")
    grants = grants or {}
    return Space(team, tuple(grants.get("paths", ())), tuple(grants.get("tables", ())))


def current_space() -> Space | None:
    return _space.get()


class NotFound(ValueError):
    """A path or table the job may not see: said exactly as one that does not exist."""


def data_root() -> Path:
    return config.data_root().resolve()


def team_root(team: str) -> Path:
    return data_root() / TEAMS_FOLDER / team


def shared_root() -> Path:
    return data_root() / SHARED_FOLDER


def warehouse_url() -> str | None:
    url = env_str("WAREHOUSE_URL")
    if url and urlsplit(url).scheme not in WAREHOUSE_SCHEMES:
        raise ValueError(f"WAREHOUSE_URL must be a {' or '.join(WAREHOUSE_SCHEMES)}:// URL")
    return url or None


def _checked(path: str) -> Path:
    if not isinstance(path, str) or not path.strip():
        raise ValueError("must be a path")
    if "\x00" in path:
        raise ValueError("must not contain NUL")
    candidate = Path(path)
    if candidate.is_absolute() or ".." in candidate.parts or "://" in path:
        raise ValueError("must be a path relative to your team's space, without '..'")
    return candidate


def _granted(space: Space, candidate: Path) -> Path | None:
    """The folder (or file) of another team's grant that holds this path, if any."""
    team, rest = candidate.parts[0][1:], candidate.parts[1:]
    for grant in space.paths:
        granted = Path(grant)
        if granted.parts[0] != f"@{team}":
            continue
        prefix = granted.parts[1:]
        if tuple(rest[:len(prefix)]) == tuple(prefix):
            return team_root(team).joinpath(*prefix)
    return None


def _base(candidate: Path, write: bool) -> tuple[Path, Path]:
    """The folder a path may not leave, and the path below it."""
    space = _space.get()
    first = candidate.parts[0]
    if not first.startswith("@"):
        return (data_root() if space is None else team_root(space.team)), candidate
    if space is not None and write:
        raise ValueError("is read-only: write into your team's space (a path without '@')")
    if first == SHARED:
        return shared_root(), Path(*candidate.parts[1:])
    if space is None:  # the operator names any team's space
        return team_root(first[1:]), Path(*candidate.parts[1:])
    base = _granted(space, candidate)
    if base is None:
        raise NotFound("no such file or folder")
    team = first[1:]
    below = Path(*candidate.parts[1:]).relative_to(base.relative_to(team_root(team)))
    return base, below


def resolve(path: str, *, write: bool = False) -> Path:
    """An absolute path inside the current team's space (or, outside any, DATA_ROOT) for a
    path relative to it; symlinks are followed before the check, so one that leads out is
    refused like a path that does not exist. With write, only the team's own space."""
    candidate = _checked(path)
    base, below = _base(candidate, write)
    resolved = (base / below).resolve()
    real_base = base.resolve()
    if resolved != real_base and real_base not in resolved.parents:
        if _space.get() is None:
            raise ValueError("leads outside DATA_ROOT")
        raise NotFound("no such file or folder")
    return resolved


def expand(pattern: str) -> list[Path]:
    """The files a glob in the team's space matches, sorted, each checked like a path (a
    symlink among them that leads out is refused, not skipped)."""
    check_glob(pattern)
    candidate = _checked(pattern)
    space = _space.get()
    prefix = Path()
    if candidate.parts[0].startswith("@"):
        prefix = Path(candidate.parts[0])
        named_root = (shared_root() if candidate.parts[0] == SHARED
                      else team_root(candidate.parts[0][1:]))
        below = Path(*candidate.parts[1:])
    elif space is None:
        named_root, below = data_root(), candidate
    else:
        named_root, below = team_root(space.team), candidate
    files = []
    for match in sorted(globlib.glob(str(named_root / below), recursive=True)):
        named = str(prefix / os.path.relpath(match, named_root))
        try:
            path = resolve(named)
        except NotFound:
            continue  # outside what was granted: not listed
        if path.is_file():
            files.append(path)
    return files


def relative(path: Path) -> str:
    """A path as the job names it: in its team's space, "@shared/..." or "@U/..."."""
    space = _space.get()
    if space is None:
        return str(path.relative_to(data_root()))
    own = team_root(space.team).resolve()
    if path == own or own in path.parents:
        return str(path.relative_to(own))
    shared = shared_root().resolve()
    if path == shared or shared in path.parents:
        return str(Path(SHARED) / path.relative_to(shared))
    teams = (data_root() / TEAMS_FOLDER).resolve()
    rest = path.relative_to(teams)
    return str(Path(f"@{rest.parts[0]}", *rest.parts[1:]))


def check_path(value: str) -> str:
    resolve(value)
    return value


def check_output(value: str) -> str:
    resolve(value, write=True)
    return value


def check_glob(value: str) -> str:
    resolve(value.replace("*", "x").replace("?", "x"))
    return value


def check_table(value: str) -> str:
    """A table name: lower-case letters, digits and underscores. Outside team spaces (the
    operator's own tools) it may be schema-qualified."""
    parts = value.split(".")
    limit = 1 if _space.get() is not None else 2
    if len(parts) > limit or not all(_IDENT.match(part) for part in parts):
        example = "'flights'" if limit == 1 else "'flights' or 'staging.flights'"
        raise ValueError(f"must be a table name like {example} (lower-case letters, digits, "
                         "underscores)")
    if parts[-1].startswith(RESERVED_TABLE_PREFIX):
        raise ValueError(f"names starting with {RESERVED_TABLE_PREFIX} are the portal's own")
    return value


def check_table_input(value: str) -> str:
    """A table a job reads: its team's own ("flights"), or one another team granted it
    ("@etl.flights"); any other is said not to exist."""
    if value.startswith("@"):
        owner, _, table = value[1:].partition(".")
        space = _space.get()
        if not owner or not _IDENT.match(table):
            raise ValueError("must be a table name like 'flights' or '@team.flights'")
        if space is not None and f"{owner}.{table}" not in space.tables:
            raise NotFound(f"table {value!r}: no such table")
        return value
    return check_table(value)


def table_input_ident(value: str):
    """The qualified name of a table a job reads (check_table_input's)."""
    from psycopg import sql

    if value.startswith("@"):
        owner, _, table = value[1:].partition(".")
        return sql.Identifier(schema_name(owner), table)
    return sql.Identifier(*value.split("."))


DataPath = Annotated[str, AfterValidator(check_path)]
OutputPath = Annotated[str, AfterValidator(check_output)]
DataGlob = Annotated[str, AfterValidator(check_glob)]
TableName = Annotated[str, AfterValidator(check_table)]


# --- the warehouse, one schema and one role per team ---------------------------------------


def schema_name(team: str) -> str:
    return f"{SCHEMA_PREFIX}{team}"


def role_name(team: str) -> str:
    return f"{ROLE_PREFIX}{team}"


def connect_warehouse(**kwargs):
    """A psycopg 3 connection to the warehouse (not the portal's database). Inside a team
    space it acts as the team's role, its search path the team's schema (both made on first
    use), so an unqualified table name is the team's own and PostgreSQL refuses any other
    team's. TLS settings are those of the URL (sslmode=verify-full, sslrootcert=...)."""
    import psycopg

    url = warehouse_url()
    if not url:
        raise RuntimeError("no warehouse: set WAREHOUSE_URL to a PostgreSQL URL")
    conn = psycopg.connect(url, **kwargs)
    space = _space.get()
    if space is not None:
        try:
            enter_team(conn, space)
        except BaseException:
            conn.close()
            raise
    return conn


def ensure_team(conn, team: str) -> None:
    """In the caller's transaction: the team's role (the login a member of it) and its
    schema, owned by the role, with the fence table; made if missing."""
    from psycopg import sql

    role, schema = sql.Identifier(role_name(team)), sql.Identifier(schema_name(team))
    # One worker at a time makes a role: CREATE ROLE has no IF NOT EXISTS.
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (role_name(team),))
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                    (role_name(team),)).fetchone() is None:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(role))
    if conn.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')",
                    (role_name(team),)).fetchone()[0] is False:
        conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(role))
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
        schema, role))
    fence = sql.SQL("{}.{}").format(schema, sql.Identifier(FENCE_TABLE))
    if conn.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))",
                    (schema_name(team), FENCE_TABLE)).fetchone()[0] is None:
        conn.execute(sql.SQL("CREATE TABLE {} (job bigint NOT NULL, part integer NOT NULL, "
                             "attempt integer NOT NULL, PRIMARY KEY (job, part))").format(fence))
        conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(fence, role))


_made: set[str] = set()  # teams whose role and schema this process has seen made


def enter_team(conn, space: Space) -> None:
    """Make the team's role and schema if missing, keep the table grants it holds in step
    with the portal's, then act as that role."""
    from psycopg import sql

    role, schema = sql.Identifier(role_name(space.team)), sql.Identifier(schema_name(space.team))
    autocommit = conn.autocommit
    conn.autocommit = False
    with conn.transaction():
        if space.team not in _made:
            ensure_team(conn, space.team)
            _made.add(space.team)
        _sync_table_grants(conn, space)
    conn.autocommit = autocommit
    conn.execute(sql.SQL("SET ROLE {}").format(role))
    conn.execute(sql.SQL("SET search_path = {}, pg_catalog").format(schema))
    if not autocommit:
        conn.commit()


def _sync_table_grants(conn, space: Space) -> None:
    from psycopg import sql

    role = role_name(space.team)
    wanted = set()
    for grant in space.tables:
        owner, _, table = grant.partition(".")
        wanted.add((schema_name(owner), table))
    held = {(s, t) for s, t in conn.execute(
        "SELECT table_schema, table_name FROM information_schema.role_table_grants "
        "WHERE grantee = %s AND privilege_type = 'SELECT' AND table_schema <> %s",
        (role, schema_name(space.team))).fetchall()}
    for schema, table in held - wanted:
        conn.execute(sql.SQL("REVOKE SELECT ON {}.{} FROM {}").format(
            sql.Identifier(schema), sql.Identifier(table), sql.Identifier(role)))
    for schema, table in wanted - held:
        exists = conn.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))",
                              (schema, table)).fetchone()[0]
        if exists is None:
            continue  # granted before the table was made: granted once it exists
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
            sql.Identifier(schema), sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON {}.{} TO {}").format(
            sql.Identifier(schema), sql.Identifier(table), sql.Identifier(role)))


class Superseded(RuntimeError):
    """A later attempt of the same job (or partition) has already written its output: this
    attempt's write is refused, and nothing of it lands."""


def claim_fence(conn, job: int, part: int, attempt: int) -> None:
    """In the caller's transaction: record that this attempt writes (job, part), or raise
    Superseded if a later attempt already has. The row stays locked to the commit, so a
    lower attempt can never commit after a higher one."""
    if _space.get() is None:  # the operator's own runs: the fence table of the login's schema
        conn.execute(f"CREATE TABLE IF NOT EXISTS {FENCE_TABLE} (job bigint NOT NULL, "
                     "part integer NOT NULL, attempt integer NOT NULL, PRIMARY KEY (job, part))")
    row = conn.execute(
        f"INSERT INTO {FENCE_TABLE} AS f (job, part, attempt) VALUES (%s, %s, %s) "
        "ON CONFLICT (job, part) DO UPDATE SET attempt = EXCLUDED.attempt "
        "WHERE f.attempt <= EXCLUDED.attempt RETURNING attempt",
        (job, part, attempt)).fetchone()
    if row is None:
        raise Superseded(f"attempt {attempt} of job {job} partition {part} was superseded by "
                         "a later attempt: its rows were not written")


@contextmanager
def file_fence(target: Path, job: int, attempt: int) -> Iterator[None]:
    """Held around renaming a job's file into place: a flock'ed fence file beside it keeps
    the highest attempt of that job that has written it; a lower attempt is refused
    (Superseded). Another job may always replace the file."""
    fence = target.parent / f".{target.name}.fence"
    fd = os.open(fence, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.pread(fd, 256, 0)
        try:
            held = json.loads(raw) if raw else {}
        except ValueError:
            held = {}
        if held.get("job") == job and int(held.get("attempt", 0)) > attempt:
            raise Superseded(f"attempt {attempt} of job {job} was superseded by attempt "
                             f"{held['attempt']}: {target.name} was not replaced")
        yield
        record = json.dumps({"job": job, "attempt": attempt}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
    finally:
        os.close(fd)
