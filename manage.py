#!/usr/bin/env python
import os
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent


def use_local_secret(env: dict, base: Path = BASE_DIR) -> None:
    """With no secret configured, use the one `make run` keeps in DATA_DIR (`./data` by
    default), so that a second terminal's `manage.py` works beside it. It is never made here:
    without one, settings say what to set."""
    if env.get("SECRET_KEY") or env.get("SECRET_KEY_FILE"):
        return
    key_file = Path(env.get("DATA_DIR") or base / "data") / "secret_key"
    if key_file.is_file():
        env["SECRET_KEY_FILE"] = str(key_file)


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    use_local_secret(os.environ)
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
