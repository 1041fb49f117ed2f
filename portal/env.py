"""Typed readers for configuration from environment variables (no Django import)."""

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
# Seconds between node-agent heartbeats, and how long an attempt's lease lasts without one.
HEARTBEAT_S = env_float("HEARTBEAT_S", 2.0)
LEASE_S = env_float("LEASE_S", 15.0)
# Seconds a cancelled attempt gets to stop by itself before its process is killed.
CANCEL_GRACE_S = env_float("CANCEL_GRACE_S", 5.0)
