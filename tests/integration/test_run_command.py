"""`make run`'s cluster as a new user gets it: SQLite, its own Redis, two workers, Ctrl-C."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from portal.cluster import ROOT, free_port

pytestmark = pytest.mark.integration


def read_until(proc, pattern, timeout=90):
    deadline = time.monotonic() + timeout
    seen = []
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
            continue
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    raise AssertionError(f"no {pattern!r} in:\n{''.join(seen[-40:])}")


def test_the_run_command_serves_a_working_cluster_and_ctrl_c_stops_all_of_it(tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE"}}
    env.update(DATA_DIR=str(tmp_path / "data"), PORT=str(port), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "portal.cluster"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = read_until(proc, r"Cluster portal is up: (http://\S+)").group(1)
        login = read_until(proc, r"login: (\S+) / (\S+)")
        assert url == f"http://127.0.0.1:{port}/"
        assert (tmp_path / "data" / "portal.sqlite3").exists()
        children = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        for part in ("redis-server", "portal.web", "ingest", "reconcile", "-n w1@", "-n w2@"):
            assert part in names

        session = requests.Session()
        page = session.get(f"{url}accounts/login/", timeout=10)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        session.post(f"{url}accounts/login/", timeout=10, headers={"Referer": url},
                     data={"username": login.group(1), "password": login.group(2),
                           "csrfmiddlewaretoken": token})
        response = session.post(f"{url}api/v1/jobs/", json={"kind": "diag.sleep",
                                                           "params": {"seconds": 1}},
                                headers={"X-CSRFToken": session.cookies["csrftoken"]},
                                timeout=10)
        assert response.status_code == 201, response.text
        job_url = f"{url}api/v1/jobs/{response.json()['id']}/"
        deadline = time.monotonic() + 60
        while session.get(job_url, timeout=10).json()["state"] != "succeeded":
            assert time.monotonic() < deadline, session.get(job_url, timeout=10).json()
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
