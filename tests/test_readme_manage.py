"""The README's `manage.py` lines, run as written from a second shell beside `make run`'s data
directory: the secret `make run` keeps there is found, and starting again keeps the demo login's
password (and so everyone's sessions)."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from portal.cluster import ROOT, local_env

README = ROOT / "README.md"
# What a second terminal has: none of the test run's settings, only DATA_DIR for its data/.
FOREIGN = {"DATABASE_URL", "SECRET_KEY", "SECRET_KEY_FILE", "DJANGO_SETTINGS_MODULE", "DEBUG"}


def readme_manage_lines() -> list[str]:
    """Every shell line of the README that runs manage.py, without its trailing comment."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    return [re.sub(r"\s+#.*$", "", line).strip()
            for block in blocks for line in block.splitlines() if "manage.py" in line]


@pytest.fixture
def second_shell(tmp_path: Path, monkeypatch) -> dict:
    """A data directory as `make run` leaves it (its secret, a migrated SQLite, the demo
    login), and the environment of another terminal in a checkout whose .venv is this one."""
    data = tmp_path / "data"
    for name in FOREIGN:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_DIR", str(data))
    made = dict(os.environ)
    cluster_env = local_env()  # makes data/secret_key, as make run does
    monkeypatch.undo()
    for args in (["migrate", "--noinput"], ["demo_user"]):
        subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=cluster_env,
                       check=True, capture_output=True, text=True)
    checkout = tmp_path / "checkout"
    (checkout / ".venv" / "bin").mkdir(parents=True)
    python = checkout / ".venv" / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    (checkout / "manage.py").symlink_to(ROOT / "manage.py")
    return {"env": made, "cwd": checkout, "data": data}


def test_the_readme_shows_its_token_command():
    assert "TOKEN=$(.venv/bin/python manage.py api_token demo)" in readme_manage_lines()


def test_every_readme_manage_line_works_from_a_second_shell(second_shell):
    for line in readme_manage_lines():
        done = subprocess.run(["bash", "-c", f"set -euo pipefail; {line}; echo \"${{TOKEN:-}}\""],
                              cwd=second_shell["cwd"], env=second_shell["env"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{line}\n{done.stderr}"
        if line.startswith("TOKEN="):
            token = done.stdout.strip().splitlines()[-1]
            check = subprocess.run(
                [sys.executable, "manage.py", "shell", "-c",
                 f"from accounts.auth import user_for_key; print(user_for_key({token!r}))"],
                cwd=second_shell["cwd"], env=second_shell["env"], capture_output=True,
                text=True, timeout=120)
            assert check.stdout.strip().splitlines()[-1] == "demo", check.stderr


def test_without_a_secret_anywhere_the_error_says_what_to_set(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
    env["DATA_DIR"] = str(tmp_path)  # no secret_key in it
    done = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "SECRET_KEY (or SECRET_KEY_FILE) must be set" in done.stderr


def _manage_module():
    spec = importlib.util.spec_from_file_location("portal_manage", ROOT / "manage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_secret_is_looked_for_in_data_under_the_checkout_by_default(tmp_path):
    manage = _manage_module()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "secret_key").write_text("k")
    env: dict = {}
    manage.use_local_secret(env, base=tmp_path)
    assert env == {"SECRET_KEY_FILE": str(tmp_path / "data" / "secret_key")}
    configured = {"SECRET_KEY": "set"}
    manage.use_local_secret(configured, base=tmp_path)
    assert configured == {"SECRET_KEY": "set"}  # what is configured wins


def test_starting_again_keeps_the_demo_login_and_its_sessions(second_shell):
    env, cwd = second_shell["env"], second_shell["cwd"]
    show = ("from django.contrib.auth.models import User; u = User.objects.get(username='demo');"
            " print(u.password, u.is_superuser)")

    def manage(*args):
        return subprocess.run([sys.executable, "manage.py", *args], cwd=cwd, env=env,
                              check=True, capture_output=True, text=True,
                              timeout=120).stdout.strip().splitlines()[-1]
    before = manage("shell", "-c", show)
    assert manage("demo_user") == "login: demo / demo-password"
    assert manage("shell", "-c", show) == before  # the same hash: sessions stay valid
    assert before.split()[1] == "True"
    manage("shell", "-c", "from django.contrib.auth.models import User; "
           "u = User.objects.get(username='demo'); u.set_password('mine now'); u.save()")
    assert "kept" in manage("demo_user")
    assert "mine now" not in manage("demo_user")
