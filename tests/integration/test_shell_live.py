"""The shell kind on the real cluster (its workers allow /usr/bin/printf, /usr/bin/env and
/bin/sleep through SHELL_COMMANDS): output streamed as the log in order, arguments passed
literally, a non-zero exit, a timeout and a cancel that stop the program for good, and the
permission and allow-list enforced by the live web server."""

import tempfile
import time
from pathlib import Path

import psutil
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from jobs.models import Job, LogLine
from tests.integration.conftest import wait_for_job
from tests.integration.test_jobs_live import submit

pytestmark = pytest.mark.integration


@pytest.fixture
def permitted(user_key):
    """The `runner` user (whose token `http` sends) granted jobs.run_shell."""
    user = get_user_model().objects.get(username="runner")
    user.user_permissions.add(Permission.objects.get(codename="run_shell"))
    return user


def shell_job(*argv, **params):
    return {"kind": "shell", "params": {"argv": list(argv), **params}}


def log_of(job_id, until, timeout=10.0):
    """The job's log lines as (level, text) once `until(lines)` holds: log events may reach
    the ingester just after the job's end."""
    deadline = time.monotonic() + timeout
    while True:
        lines = list(LogLine.objects.filter(job_id=job_id).order_by("seq")
                     .values_list("level", "text"))
        if until(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def running(*cmdline):
    return [p for p in psutil.process_iter(["cmdline", "status"])
            if p.info["cmdline"] == list(cmdline) and p.info["status"] != psutil.STATUS_ZOMBIE]


def wait_until(check, timeout):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_printed_lines_stream_as_the_log_in_order_and_arguments_stay_literal(
        live, http, permitted):
    pwned = Path(tempfile.gettempdir()) / f"portal-shell-pwned-{time.time_ns()}"
    hostile = [f"; touch {pwned}", f"$(touch {pwned})", f"`touch {pwned}`", f"| touch {pwned}"]
    lines = [f"line {i}" for i in range(1, 21)]
    job = submit(live, http, shell_job("/usr/bin/printf", "%s\n", *lines, *hostile,
                                       timeout_s=60))
    done = wait_for_job(job["id"], timeout=60)
    assert done.state == "succeeded", done.error
    assert done.node in {"w1", "w2"}
    assert done.result["exit_code"] == 0 and done.result["stdout_lines"] == 24
    assert done.result["stderr_lines"] == 0 and done.result["seconds"] < 30

    log = log_of(done.pk, lambda got: any(t.startswith("exited with 0") for _, t in got))
    texts = [text for _, text in log]
    assert texts[0].startswith("$ /usr/bin/printf ")
    assert texts[1:-1] == lines + hostile  # in order, and the way they were typed
    assert texts[-1].startswith("exited with 0 after ")
    assert {level for level, _ in log} == {"info"}
    assert not pwned.exists()

    # The API serves the same lines.
    page = http.get(live.url(f"/api/v1/jobs/{done.pk}/logs/"), timeout=10).json()
    assert [line["text"] for line in page["lines"]] == texts


def test_a_non_zero_exit_fails_the_job_with_its_code_and_stderr_as_warnings(
        live, http, permitted):
    job = submit(live, http, shell_job("/bin/sleep", "not-a-number"))
    done = wait_for_job(job["id"], timeout=60)
    assert done.state == "failed" and done.error == "CommandFailed: exited with 1"
    assert done.result is None
    log = log_of(done.pk, lambda got: len([1 for level, _ in got if level == "warning"]) >= 2)
    warnings = [text for level, text in log if level == "warning"]
    assert len(warnings) == 2, log  # sleep's complaint, then its hint, both on stderr
    assert "invalid time interval" in warnings[0] and "not-a-number" in warnings[0]
    assert warnings[1] == "Try '/bin/sleep --help' for more information."
    assert [text for level, text in log if level == "info"] == ["$ /bin/sleep not-a-number"]


def test_a_program_past_its_timeout_is_killed_and_the_job_fails(live, http, permitted):
    job = submit(live, http, shell_job("/bin/sleep", "30.25", timeout_s=2))
    started = time.monotonic()
    done = wait_for_job(job["id"], timeout=60)
    assert done.state == "failed" and done.error == "TimeoutError: timed out after 2 s"
    assert time.monotonic() - started < 25
    assert wait_until(lambda: not running("/bin/sleep", "30.25"), 5)


def test_a_cancel_stops_a_running_program_within_seconds(live, http, permitted):
    job = submit(live, http, shell_job("/bin/sleep", "60.5"))
    wait_for_job(job["id"], states={"running"}, timeout=60)
    assert wait_until(lambda: running("/bin/sleep", "60.5"), 20), "the program never started"

    asked = time.monotonic()
    response = http.post(live.url(f"/api/v1/jobs/{job['id']}/cancel/"), timeout=10)
    assert response.status_code == 202
    done = wait_for_job(job["id"], timeout=30)
    assert done.state == "cancelled"
    assert time.monotonic() - asked < 10
    assert wait_until(lambda: not running("/bin/sleep", "60.5"), 5)
    # The kind stopped its program itself, before the node agent's forced stop.
    assert "by force" not in (done.error or "")
    log = log_of(done.pk, lambda got: ("warning", "cancelled") in got)
    assert log[-1] == ("warning", "cancelled")


def test_the_live_web_refuses_users_without_the_permission_and_commands_off_the_list(
        live, http, user_key):
    refused = submit(live, http, shell_job("/usr/bin/printf", "hi\n"), expect=403)
    assert "you may not submit shell jobs" in refused["kind"][0]
    assert not Job.objects.exists()

    get_user_model().objects.get(username="runner").user_permissions.add(
        Permission.objects.get(codename="run_shell"))
    off_list = submit(live, http, shell_job("/bin/sh", "-c", "id"), expect=400)
    assert "/bin/sh is not among the programs" in off_list["params"]["argv"][0]
    injected = submit(live, http, shell_job("/usr/bin/printf;id"), expect=400)
    assert "shell characters" in injected["params"]["argv"][0]
    assert not Job.objects.exists()
    accepted = submit(live, http, shell_job("/usr/bin/env"))
    assert wait_for_job(accepted["id"], timeout=60).state == "succeeded"
