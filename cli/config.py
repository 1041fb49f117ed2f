"""Where portalctl keeps the portal's URL and the user's token, and how the environment
overrides them (PORTAL_URL, PORTAL_TOKEN)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from cli.errors import CliError

DEFAULT_URL = "http://127.0.0.1:8000"


def config_path(env: Mapping[str, str] = os.environ) -> Path:
    """$XDG_CONFIG_HOME/portalctl/config.json, ~/.config/... when it is unset or relative."""
    base = env.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "portalctl" / "config.json"


def normalize_url(url: str) -> str:
    """The portal's base URL: http(s), no trailing slash, no query, no credentials."""
    url = url.strip()
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"not an http(s) URL: {url}")
    if parts.username or parts.password:
        raise CliError("put no credentials in the URL: log in with a token instead")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def load(env: Mapping[str, str] = os.environ) -> dict:
    path = config_path(env)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CliError(f"{path} is not a JSON object: run `portalctl login` again")
    return data


def save(url: str, token: str, env: Mapping[str, str] = os.environ) -> Path:
    """Write the config readable by its owner only (0600, in a 0700 directory), atomically."""
    path = config_path(env)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"url": url, "token": token}, out, indent=2)
            out.write("\n")
        os.chmod(tmp, 0o600)  # whatever the umask said
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def resolve(env: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """The URL and token to use: PORTAL_URL / PORTAL_TOKEN win over the saved config."""
    saved = load(env)
    url = env.get("PORTAL_URL") or saved.get("url")
    token = env.get("PORTAL_TOKEN") or saved.get("token")
    if not url or not token:
        raise CliError("not logged in: run `portalctl login --url URL` "
                       "(or set PORTAL_URL and PORTAL_TOKEN)")
    return normalize_url(url), token
