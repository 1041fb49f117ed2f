"""`make run` keeps its cluster up: a part that dies is started again, a killed node shows
offline, its job moves and succeeds, the node comes back, and SIGINT still stops everything
even when `make run` was started with SIGINT ignored (as a script's background job is)."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from portal.cluster import ROOT, free_port
from tests.integration.test_run_command import read_until

pytestmark = pytest.mark.integration

NODE_OFFLINE_S = 5.0
RECONCILE_EVERY_S = 1.0


def login(url: str, username: str, password: str) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{url}accounts/login/", timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    session.post(f"{url}accounts/login/", timeout=10, headers={"Referer": url},
                 data={"username": username, "password": password,
                       "csrfmiddlewaretoken": token})
    session.headers["X-CSRFToken"] = session.cookies["csrftoken"]
    return session


def children(proc: subprocess.Popen, part: str) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if part in " ".join(child.cmdline()) and child.pid == os.getpgid(child.pid):
                found.append(child)
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
    return found


def leader(proc: subprocess.Popen, part: str, timeout: float = 60) -> psutil.Process:
    """The process-group leader whose command line holds `part` (one per supervised part)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := children(proc, part):
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no running {part!r}")


def until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := check():
                return value
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what} after {timeout} s")


class Prober(threading.Thread):
    """Asks the web server for a page five times a second; counts what did not answer 200."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.failures, self.answers = url, [], 0
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            try:
                status = requests.get(f"{self.url}accounts/login/", timeout=5).status_code
                self.answers += 1
                if status != 200:
                    self.failures.append(status)
            except requests.RequestException as exc:
                self.failures.append(type(exc).__name__)
            self.stopped.wait(0.2)


def submit_and_wait(session, url, seconds=1, timeout=60) -> dict:
    job = session.post(f"{url}api/v1/jobs/", json={"kind": "diag.sleep",
                                                   "params": {"seconds": seconds}}, timeout=10)
    assert job.status_code == 201, job.text
    job_url = f"{url}api/v1/jobs/{job.json()['id']}/"
    return until(lambda: (body := session.get(job_url, timeout=10).json())["state"] ==
                 "succeeded" and body, timeout, f"job {job.json()['id']} not succeeded")


def node_state(session, url, name) -> str | None:
    for node in session.get(f"{url}api/v1/nodes/", timeout=10).json():
        if node["name"] == name:
            return node["state"]
    return None


def test_the_run_command_restarts_what_dies_and_sigint_stops_it_even_if_ignored(tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE"}}
    env.update(DATA_DIR=str(tmp_path / "data"), PORT=str(port), PYTHONUNBUFFERED="1",
               HEARTBEAT_S="1", LEASE_S="4", NODE_OFFLINE_S=str(NODE_OFFLINE_S),
               RECONCILE_EVERY_S=str(RECONCILE_EVERY_S), DISPATCH_GRACE_S="3")
    # As a shell script's `make run &` gets it: SIGINT ignored from the start.
    proc = subprocess.Popen([sys.executable, "-m", "portal.cluster"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    prober = None
    try:
        url = read_until(proc, r"Cluster portal is up: (http://\S+)").group(1)
        credentials = read_until(proc, r"login: (\S+) / (\S+)")
        session = login(url, credentials.group(1), credentials.group(2))
        until(lambda: {node_state(session, url, n) for n in ("w1", "w2")} == {"online"}, 60,
              "nodes not online")
        prober = Prober(url)
        prober.start()

        # A node killed under its running job: offline, the job moves and succeeds, it returns.
        job = session.post(f"{url}api/v1/jobs/", json={"kind": "diag.sleep",
                                                       "params": {"seconds": 8}}, timeout=10)
        job_url = f"{url}api/v1/jobs/{job.json()['id']}/"
        running = until(lambda: (body := session.get(job_url, timeout=10).json())["state"] ==
                        "running" and body["node"] and body, 30, "job not running")
        node = running["node"]
        worker = leader(proc, f"-n {node}@")
        os.killpg(worker.pid, signal.SIGKILL)
        killed = time.monotonic()
        until(lambda: node_state(session, url, node) == "offline",
              NODE_OFFLINE_S + 3 * RECONCILE_EVERY_S + 3, f"{node} not shown offline")
        assert time.monotonic() - killed <= NODE_OFFLINE_S + 3 * RECONCILE_EVERY_S + 3
        done = until(lambda: (body := session.get(job_url, timeout=10).json())["state"] ==
                     "succeeded" and body, 60, "the moved job did not succeed")
        assert done["attempt"] >= 2 and done["attempts"][-1]["node"] != node, done["attempts"]
        until(lambda: node_state(session, url, node) == "online", 60, f"{node} not back online")
        assert leader(proc, f"-n {node}@").pid != worker.pid
        assert prober.failures == [], prober.failures

        # Redis (its data gone), the ingester and the reconciler: each started again, and a
        # job submitted after each one succeeds.
        for part in ("redis-server", "manage.py ingest", "manage.py reconcile"):
            before = leader(proc, part)
            os.killpg(before.pid, signal.SIGKILL)
            until(lambda part=part, old=before.pid: (now := children(proc, part))
                  and now[0].pid != old, 60, f"{part} not started again")
            submit_and_wait(session, url)
        assert prober.failures == [], prober.failures

        # The web server: it answers again once started again.
        web = leader(proc, "portal.web")
        os.killpg(web.pid, signal.SIGKILL)
        until(lambda: (now := children(proc, "portal.web")) and now[0].pid != web.pid, 60,
              "web server not started again")
        until(lambda: requests.get(f"{url}accounts/login/", timeout=5).status_code == 200, 30,
              "web server not answering again")
        submit_and_wait(session, url)
        parts = [c for c in psutil.Process(proc.pid).children(recursive=True)]
    finally:
        if prober:
            prober.stopped.set()
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output[-3000:]
    for name in ("w1" if node == "w1" else "w2", "redis", "ingester", "reconciler", "web"):
        assert re.search(rf"\[{name}\] exited with -?\d+; starting it again", output), name
    for child in parts:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
