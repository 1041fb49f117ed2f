"""Configuration from the environment, read in one place: the typed readers, and every setting
a worker node uses (the portal's own settings.py reads the rest with the same readers, and
takes the shared ones from here). No Django import: a worker needs Redis alone."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


def env_str(name: str, default: str | None = None) -> str | None:
    """A string from NAME, or from the file named by NAME_FILE (for secrets)."""
    value = os.environ.get(name)
    if value is not None:
        return value
    path = os.environ.get(f"{name}_FILE")
    if path:
        return Path(path).read_text().strip()
    return default


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_rate(name: str, default: str) -> str | None:
    """A request rate like `1200/min` (per s, min, hour or day) from NAME; `off` for none."""
    value = (os.environ.get(name) or default).strip()
    if value.lower() == "off":
        return None
    if not re.fullmatch(r"\d+/(s|sec|second|m|min|minute|h|hour|d|day)", value):
        raise ValueError(f"{name}={value!r}: expected a rate like 1200/min, or off")
    return value


ROOT = Path(__file__).resolve().parent.parent


def with_redis_tls(url: str, ca_file: str | None) -> str:
    """A rediss:// URL that checks the server: its certificate must be signed by the CA in
    ca_file (else one the system trusts). Every Redis client of the portal (Celery's broker,
    the event stream, the channel layer, the cache) reads these from the URL."""
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return url
    query = dict(parse_qsl(parts.query))
    query.setdefault("ssl_cert_reqs", "required")
    if ca_file:
        query.setdefault("ssl_ca_certs", ca_file)
    return urlunsplit(parts._replace(query=urlencode(query)))


REDIS_CA_FILE = env_str("REDIS_CA_FILE")
REDIS_URL = with_redis_tls(env_str("REDIS_URL", "redis://127.0.0.1:6379/0"), REDIS_CA_FILE)
# Prefix of the portal's Redis keys.
REDIS_PREFIX = env_str("PORTAL_REDIS_PREFIX", "portal") or "portal"
# Seconds between node-agent heartbeats, and how long an attempt's lease lasts without one.
HEARTBEAT_S = env_float("HEARTBEAT_S", 2.0)
LEASE_S = env_float("LEASE_S", 15.0)
# Seconds a cancelled attempt gets to stop by itself before its process is killed.
CANCEL_GRACE_S = env_float("CANCEL_GRACE_S", 5.0)
# How often a running job looks for its cancel.
CANCEL_POLL_S = env_float("CANCEL_POLL_S", 0.5)
# How often workers flush buffered events, and how many they keep while Redis is away.
EVENT_FLUSH_S = env_float("EVENT_FLUSH_S", 0.1)
EVENT_MAX_BUFFER = env_int("EVENT_MAX_BUFFER", 200_000)
# Celery: prefetch, and when a message a worker took but had not started goes back.
WORKER_PREFETCH = env_int("WORKER_PREFETCH", 4)
BROKER_VISIBILITY_TIMEOUT = env_int("BROKER_VISIBILITY_TIMEOUT", 60)
BROKER_RESTORE_EVERY_S = env_int("BROKER_RESTORE_EVERY_S", 5)


def data_dir() -> Path:
    """Local data (SQLite, the local Redis, the generated secret): one default for all."""
    return Path(env_str("DATA_DIR") or ROOT / "data")


def data_root() -> Path:
    """The jobs' files, shared by the web and the workers."""
    return Path(env_str("DATA_ROOT") or data_dir() / "files")


def artifacts_dir() -> Path:
    """Where workers put what jobs produce and the portal serves it from."""
    return Path(env_str("ARTIFACTS_DIR") or data_dir() / "artifacts")


def node_labels() -> str:
    return os.environ.get("NODE_LABELS", "")
