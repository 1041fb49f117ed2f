"""portalctl, the installed console script, as a user runs it: a subprocess against the real
cluster (web server with websockets, two workers, ingester, reconciler), logged in to a config
directory of its own."""

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.models import Job
from portal.cluster import free_port
from tests.integration.conftest import wait_for_job

pytestmark = pytest.mark.integration

PORTALCTL = Path(sys.executable).parent / "portalctl"


class Cli:
    def __init__(self, home: Path, url: str):
        self.url = url
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("PORTAL_URL", "PORTAL_TOKEN")}
        self.env["XDG_CONFIG_HOME"] = str(home)

    def __call__(self, *argv, input=None, timeout=90, env=None):
        result = subprocess.run([str(PORTALCTL), *argv], input=input, capture_output=True,
                                text=True, timeout=timeout, env={**self.env, **(env or {})})
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def start(self, *argv):
        return subprocess.Popen([str(PORTALCTL), *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env)


@pytest.fixture
def cli(live, user_key, tmp_path):
    assert PORTALCTL.is_file(), "pip install -e . installs the portalctl script"
    cli = Cli(tmp_path / "config", live.url(""))
    # The token from stdin, as `echo "$TOKEN" | portalctl login` does: it is in no argv.
    result = cli("login", "--url", cli.url, input=f"{user_key}\n")
    assert result.returncode == 0, result.stderr
    return cli


def test_login_saves_the_token_privately_and_refuses_a_bad_one(live, user_key, tmp_path):
    cli = Cli(tmp_path / "config", live.url(""))
    bad = cli("login", "--url", cli.url, "--token", "not-a-token")
    assert bad.returncode == 2 and "refused the token (401)" in bad.stderr
    path = tmp_path / "config" / "portalctl" / "config.json"
    assert not path.exists()

    good = cli("login", "--url", cli.url + "/", input=f"{user_key}\n")
    assert good.returncode == 0 and str(path) in good.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"url": cli.url, "token": user_key}
    assert cli("kinds").returncode == 0
    # The environment overrides the saved token.
    refused = cli("list", env={"PORTAL_TOKEN": "revoked"})
    assert refused.returncode == 2 and "401" in refused.stderr


def test_a_job_submitted_listed_followed_and_shown(cli):
    submitted = cli("submit", "diag.sleep", "--param", "seconds=3", "--param", "fail=false",
                    "--param", "note=hello from cli", "--name", "cli one")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id.isdigit() and Job.objects.get(pk=job_id).params["seconds"] == 3

    listed = cli("list")
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "STATE", "TEAM", "KIND", "NAME", "PROGRESS", "NODE",
                               "CREATED"]
    row = next(r for r in rows if r.split()[0] == job_id)
    assert "diag.sleep" in row and "cli one" in row
    assert [j["id"] for j in json.loads(cli("list", "--json").stdout)] == [job_id]

    followed = cli("logs", "-f", job_id)
    assert followed.returncode == 0, followed.stderr
    texts = [line.split(" ", 2)[2] for line in followed.stdout.splitlines()]
    assert texts == ["hello from cli", "sleeping 3 s", "done"]  # each once, in order
    assert followed.stderr.strip() == f"job {job_id} succeeded"
    assert Job.objects.get(pk=job_id).state == "succeeded"

    shown = cli("status", job_id)
    assert shown.returncode == 0
    assert re.search(r"^  state +succeeded$", shown.stdout, re.M)
    assert re.search(r"^  result +\{\"slept\": 3\.0\}$", shown.stdout, re.M)
    attempt_row = shown.stdout.splitlines()[-1].split()
    assert attempt_row[:3] in (["1", "succeeded", "w1"], ["1", "succeeded", "w2"])

    detail = json.loads(cli("status", job_id, "--json").stdout)
    assert detail["state"] == "succeeded" and len(detail["attempts"]) == 1
    lines = [json.loads(line) for line in cli("logs", job_id, "--json").stdout.splitlines()]
    assert [(r["attempt"], r["line"], r["text"]) for r in lines] == [
        (1, 1, "hello from cli"), (1, 2, "sleeping 3 s"), (1, 3, "done")]
    assert cli("wait", job_id).returncode == 0


def test_wait_exits_1_for_a_failed_job_with_its_error(cli):
    job_id = cli("submit", "diag.sleep", "-p", "seconds=1", "-p", "fail=true").stdout.strip()
    waited = cli("wait", job_id, "--timeout", "60")
    assert waited.returncode == 1, waited.stderr
    assert waited.stdout.strip() == \
        f"job {job_id} failed: RuntimeError: failed as asked (fail=true)"
    followed = cli("logs", "-f", job_id)
    assert followed.returncode == 1 and "Traceback" in followed.stdout  # the job's, logged


def test_cancel_stops_a_running_job_and_its_waiter_exits_3(cli):
    job_id = cli("submit", "diag.sleep", "-p", "seconds=60").stdout.strip()
    wait_for_job(job_id, states={"running"}, timeout=30)
    waiter = cli.start("wait", job_id, "--timeout", "60")
    follower = cli.start("logs", "-f", job_id, "--json")
    time.sleep(1)  # both are on the job's websocket

    cancelled = cli("cancel", job_id)
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"cancelling job {job_id}"
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 3, err
    assert out.strip() == f"job {job_id} cancelled"
    assert Job.objects.get(pk=job_id).state == "cancelled"
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 3, err
    assert json.loads(out.splitlines()[0])["text"] == "sleeping 60 s"

    again = cli("cancel", job_id)
    assert again.returncode == 1 and f"job {job_id} already cancelled" in again.stderr
    assert cli("wait", job_id).returncode == 3


def test_wait_gives_up_after_its_timeout_with_124(cli):
    job_id = cli("submit", "diag.sleep", "-p", "seconds=30").stdout.strip()
    started = time.monotonic()
    waited = cli("wait", job_id, "--timeout", "2", "--json")
    assert waited.returncode == 124 and 2 <= time.monotonic() - started < 15
    assert json.loads(waited.stdout)["state"] in ("queued", "running")
    assert cli("cancel", job_id).returncode == 0


def test_submit_from_a_yaml_file_and_wait_with_json(cli, tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("kind: diag.sleep\nname: from yaml\nparams:\n  seconds: 1\n")
    done = cli("submit", "-f", str(spec), "--wait", "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)  # the final job only: one JSON document
    assert job["state"] == "succeeded" and job["name"] == "from yaml"
    assert job["result"] == {"slept": 1.0}


def test_a_job_submitted_after_another_waits_for_it_to_succeed(cli):
    first = cli("submit", "diag.sleep", "-p", "seconds=4").stdout.strip()
    second = cli("submit", "diag.noop", "--after", first).stdout.strip()
    shown = cli("status", second)
    assert re.search(rf"^  after +{first}$", shown.stdout, re.M)
    assert re.search(r"^  state +pending$", shown.stdout, re.M)
    assert cli("wait", second, "--timeout", "60").returncode == 0
    first_job, second_job = Job.objects.get(pk=first), Job.objects.get(pk=second)
    assert second_job.started_at >= first_job.finished_at

    failing = cli("submit", "diag.sleep", "-p", "seconds=0", "-p", "fail=true").stdout.strip()
    never = cli("submit", "diag.noop", "--after", failing).stdout.strip()
    waited = cli("wait", never, "--timeout", "60")
    assert waited.returncode == 3 and waited.stdout.strip() == f"job {never} cancelled"


def test_a_bad_param_exits_2_naming_the_field(cli):
    bad = cli("submit", "diag.sleep", "--param", "seconds=-1")
    assert bad.returncode == 2 and bad.stdout == ""
    assert "params.seconds: must be at least 0" in bad.stderr
    unknown = cli("submit", "diag.sleep", "--param", "bogus=1", "--json")
    assert unknown.returncode == 2
    assert json.loads(unknown.stderr)["errors"] == {
        "params": {"bogus": ["is not a parameter of this kind"]}}
    assert not Job.objects.exists()


def test_nodes_lists_both_workers(cli):
    table = cli("nodes")
    assert table.returncode == 0
    header, *rows = table.stdout.splitlines()
    assert header.split()[:6] == ["NAME", "STATE", "CPU%", "MEM%", "GPU", "RUNNING"]
    states = {row.split()[0]: row.split()[1] for row in rows}
    assert states["w1"] == "online" and states["w2"] == "online"
    nodes = json.loads(cli("nodes", "--json").stdout)
    assert {"w1", "w2"} <= {n["name"] for n in nodes}
    assert all(isinstance(n["utilization"].get("cpu"), float)
               for n in nodes if n["name"] in ("w1", "w2"))


def test_an_unknown_job_and_an_unreachable_portal_are_one_line_each(cli):
    missing = cli("status", "424242")
    assert missing.returncode == 1 and missing.stderr.strip() == \
        "portalctl: error: no such job: 424242"
    down = cli("list", env={"PORTAL_URL": f"http://127.0.0.1:{free_port()}"})
    assert down.returncode == 2 and len(down.stderr.strip().splitlines()) == 1
    assert "connection refused" in down.stderr


def test_the_follower_survives_a_dropped_websocket_without_repeating_lines(live, user_key):
    """In-process: the websocket is cut under the follower mid-job, after its first frame; it
    reconnects, reloads the snapshot and prints every line exactly once."""
    from cli.api import Api
    from cli.follow import Follower, ws_connect

    class Dropped:
        """The first connection closes itself once it has handed over one frame."""

        def __init__(self, ws, drop):
            self.ws, self.drop = ws, drop

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.ws.close()

        def recv(self, timeout=None):
            raw = self.ws.recv(timeout=timeout)
            if self.drop and json.loads(raw)["type"] == "batch":
                self.drop = False
                self.ws.close()  # as a proxy or a restarting web server would
            return raw

    api = Api(live.url(""), user_key)
    job = api.submit({"kind": "diag.sleep", "params": {"seconds": 4, "note": "first"}})
    sockets = []

    def connect(url, token):
        sockets.append(Dropped(ws_connect(url, token), drop=not sockets))
        return sockets[-1]

    lines = []
    follower = Follower(api, job["id"], timeout=60, connect=connect,
                        on_log=lambda line: lines.append(
                            (line["attempt"], line["line"], line["text"])))
    final = follower.run()
    assert final["state"] == "succeeded" and follower.mode == "websocket"
    assert len(sockets) == 2 and not sockets[0].drop  # it was cut, and came back once
    assert lines == [(1, 1, "first"), (1, 2, "sleeping 4 s"), (1, 3, "done")]
