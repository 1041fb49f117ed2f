"""The shell kind: its allow-list and argument checks at submission, the permission, and real
runs of real programs through the worker's runner (events read back from Redis): output as the
log, arguments passed literally, a minimal environment, exit codes, time and memory limits,
cancel, and nothing of the program left running afterwards."""

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from django.contrib.auth.models import Permission
from pydantic import ValidationError
from rest_framework.test import APIClient

from jobs.models import Job
from workers import data, protocol, runner
from workers.context import Cancelled, JobContext
from workers.events import EventSink
from workers.kinds import get_kind, shell
from workers.kinds.shell import Lines, ShellParams

ALLOWED = "/usr/bin/printf,/usr/bin/env,/bin/sleep"
PYTHON = sys.executable
# The programs run as SHELL_USER, who may not reach this test run's own interpreter: the
# system's, where there is one.
PROGRAM = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else PYTHON
TEAM = "ml"  # the team whose space the programs run in


@pytest.fixture(autouse=True)
def allow(monkeypatch):
    monkeypatch.setenv("SHELL_COMMANDS", ALLOWED)


@pytest.fixture
def allow_python(monkeypatch):
    monkeypatch.setenv("SHELL_COMMANDS", f"{ALLOWED},{PROGRAM}")


def post_json(client, body):
    return client.post("/api/v1/jobs/", data=json.dumps(body), content_type="application/json")


def shell_job(*argv, **params):
    return {"kind": "shell", "params": {"argv": list(argv), **params}}


def grant(user):
    user.user_permissions.add(Permission.objects.get(codename="run_shell"))


# --- checked at submission ------------------------------------------------------------------


def test_an_allowed_command_is_accepted_with_its_defaults():
    params = ShellParams.model_validate({"argv": ["/usr/bin/printf", "%s\n", "a b"]},
                                        strict=True)
    assert params.model_dump(mode="json") == {
        "argv": ["/usr/bin/printf", "%s\n", "a b"], "timeout_s": 600, "memory_mb": 1024,
        "cwd": None}
    assert get_kind("shell").permission == "jobs.run_shell"
    assert get_kind("shell").schema()["properties"]["argv"]["type"] == "array"


@pytest.mark.parametrize(("argv", "message"), [
    (["/bin/sh", "-c", "id"], "/bin/sh is not among the programs the admin allows"),
    (["/usr/bin/python3", "-c", "print(1)"], "is not among the programs the admin allows"),
    (["printf", "x"], "absolute path of an allowed program"),
    (["./printf", "x"], "absolute path of an allowed program"),
    (["/usr/bin/../bin/printf", "x"], "absolute path of an allowed program"),
    (["/usr/bin/printf;", "touch", "/tmp/pwned"], "shell characters"),
    (["/usr/bin/printf; touch /tmp/pwned"], "shell characters"),
    (["$(touch /tmp/pwned)"], "shell characters"),
    (["`touch /tmp/pwned`"], "shell characters"),
    (["/usr/bin/printf|/bin/sh"], "shell characters"),
    (["/usr/bin/printf&&/bin/sh"], "shell characters"),
    (["/usr/bin/printf\n/bin/sh"], "shell characters"),
])
def test_a_command_off_the_allow_list_or_with_shell_syntax_is_refused(argv, message):
    with pytest.raises(ValidationError, match=message) as caught:
        ShellParams.model_validate({"argv": argv}, strict=True)
    assert [error["loc"] for error in caught.value.errors()] == [("argv",)]


@pytest.mark.parametrize(("params", "loc"), [
    ({"argv": []}, ("argv",)),
    ({"argv": ["/usr/bin/printf"] + ["x"] * 100}, ("argv",)),
    ({"argv": ["/usr/bin/printf", "a\x00b"]}, ("argv", 1)),
    ({"argv": ["/usr/bin/printf", "x" * 4097]}, ("argv", 1)),
    ({"argv": ["/usr/bin/printf", 7]}, ("argv", 1)),
    ({"argv": ["/usr/bin/printf"], "timeout_s": 0}, ("timeout_s",)),
    ({"argv": ["/usr/bin/printf"], "timeout_s": 86_401}, ("timeout_s",)),
    ({"argv": ["/usr/bin/printf"], "memory_mb": 8}, ("memory_mb",)),
    ({"argv": ["/usr/bin/printf"], "cwd": "../etc"}, ("cwd",)),
    ({"argv": ["/usr/bin/printf"], "cwd": "/etc"}, ("cwd",)),
    ({"argv": ["/usr/bin/printf"], "shell": True}, ("shell",)),
])
def test_bad_arguments_and_limits_are_refused_naming_the_field(params, loc):
    with pytest.raises(ValidationError) as caught:
        ShellParams.model_validate(params, strict=True)
    assert loc in [error["loc"] for error in caught.value.errors()]


def test_the_kind_is_off_until_the_admin_lists_programs(monkeypatch):
    monkeypatch.setenv("SHELL_COMMANDS", "")
    with pytest.raises(ValidationError, match="shell commands are off"):
        ShellParams.model_validate({"argv": ["/usr/bin/printf", "x"]}, strict=True)
    monkeypatch.delenv("SHELL_COMMANDS")
    with pytest.raises(ValidationError, match="shell commands are off"):
        ShellParams.model_validate({"argv": ["/usr/bin/env"]}, strict=True)


def test_a_command_line_given_as_text_is_split_into_words_or_read_as_json_never_expanded():
    words = ShellParams.model_validate(
        {"argv": "/usr/bin/printf '%s\\n' 'a b' ';' '$(id)'"}, strict=True)
    assert words.argv == ["/usr/bin/printf", "%s\\n", "a b", ";", "$(id)"]
    as_json = ShellParams.model_validate({"argv": '["/usr/bin/printf", "%s\\n", "x y"]'},
                                         strict=True)
    assert as_json.argv == ["/usr/bin/printf", "%s\n", "x y"]
    with pytest.raises(ValidationError, match="JSON array"):
        ShellParams.model_validate({"argv": '["/usr/bin/printf", '}, strict=True)
    with pytest.raises(ValidationError, match="not among the programs"):
        ShellParams.model_validate({"argv": "/bin/sh -c id"}, strict=True)


@pytest.mark.parametrize(("argv", "message"), [
    (["/bin/sh", "-c", "touch /tmp/pwned"], "/bin/sh is not among the programs"),
    (["/usr/bin/printf; touch /tmp/pwned"], "shell characters"),
    (["$(touch /tmp/pwned)"], "shell characters"),
])
def test_the_api_answers_a_refused_command_with_400_naming_params_argv(api, cast, argv,
                                                                      message):
    grant(cast.alice)
    response = post_json(api, shell_job(*argv))
    assert response.status_code == 400, response.content
    errors = response.json()["params"]["argv"]
    assert len(errors) == 1 and message in errors[0]
    assert not Job.objects.exists()


# --- the permission -------------------------------------------------------------------------


def test_a_user_without_the_permission_gets_403_and_no_job(api):
    response = post_json(api, shell_job("/usr/bin/printf", "hello\n"))
    assert response.status_code == 403, response.content
    assert "you may not submit shell jobs" in response.json()["kind"][0]
    assert not Job.objects.exists()
    # Nor inside a batch: the whole batch is refused, the allowed job in it too, and the
    # errors, one per item as for any batch, say which.
    response = post_json(api, [{"kind": "diag.noop"}, shell_job("/usr/bin/printf", "x")])
    assert response.status_code == 403 and response.json()[0] == {}
    assert "kind" in response.json()[1]
    # The permission is checked first: a refused user learns nothing of the allow-list.
    assert post_json(api, shell_job("/not/allowed")).status_code == 403
    assert not Job.objects.exists()


def test_a_user_granted_the_permission_submits_and_a_superuser_may_too(api, cast):
    grant(cast.alice)
    response = post_json(api, shell_job("/usr/bin/printf", "%s\n", "; id", timeout_s=5))
    assert response.status_code == 201, response.content
    job = Job.objects.get(pk=int(response.json()["id"]))
    assert job.owner == cast.alice and job.kind == "shell" and job.queue == "cpu"
    assert job.params == {"argv": ["/usr/bin/printf", "%s\n", "; id"], "timeout_s": 5,
                          "memory_mb": 1024, "cwd": None}

    admin = APIClient()
    admin.force_authenticate(cast.admin)
    assert post_json(admin, shell_job("/usr/bin/env")).status_code == 201
    assert Job.objects.count() == 2


def test_bob_is_still_refused_after_alice_was_granted(cast):
    grant(cast.alice)
    bob = APIClient()
    bob.credentials(HTTP_AUTHORIZATION=f"Token {cast.bob_key}")
    assert post_json(bob, shell_job("/usr/bin/env")).status_code == 403
    assert not Job.objects.exists()


# --- real runs through the worker's runner --------------------------------------------------


def events_of(client, job_id):
    found = []
    for _, fields in client.xrange(protocol.EVENTS_STREAM):
        found.extend(e for e in json.loads(fields[b"b"]) if e["job"] == job_id)
    return found


def settled_events(client, job_id):
    """The job's events once the sink's flusher thread has sent its last batch too (it may
    still be sending one when the runner's own final flush returns, so batches can also land
    out of order): every log line 1..N there, and nothing more coming."""
    end = time.monotonic() + 10
    events = events_of(client, job_id)
    while time.monotonic() < end:
        time.sleep(0.3)
        again = events_of(client, job_id)
        seqs = sorted(e["seq"] for e in again if e["type"] == protocol.LOG)
        if len(again) == len(events) and seqs == list(range(1, len(seqs) + 1)):
            break
        events = again
    return events


class Run:
    def __init__(self, client, job_id, params, *, cancel_after=None):
        spec = protocol.AttemptSpec(job=job_id, attempt=1, token="tok", kind="shell",
                                    params=params, team=TEAM)
        if cancel_after is not None:
            threading.Timer(cancel_after, client.set,
                            (protocol.cancel_key(job_id), 1)).start()
        started = time.monotonic()
        self.outcome = runner.run(spec, node="t", worker="t", sink=EventSink(client),
                                  client=client)
        self.seconds = time.monotonic() - started
        events = settled_events(client, job_id)
        self.logs = [(e["level"], e["text"]) for e in sorted(
            (e for e in events if e["type"] == protocol.LOG), key=lambda e: e["seq"])]
        finished = [e for e in events if e["type"] == protocol.FINISHED]
        assert len(finished) == 1
        self.result, self.error = finished[0]["result"], finished[0]["error"]

    def lines(self, level=None):
        """What the program wrote (the command line first and the exit note last left out)."""
        texts = [(lv, text) for lv, text in self.logs
                 if not text.startswith("$ ") and not text.startswith("exited with 0")
                 and not text.startswith("Traceback")]
        return [text for lv, text in texts if level is None or lv == level]


def running(*cmdline):
    return [p for p in psutil.process_iter(["cmdline", "status"])
            if p.info["cmdline"] == list(cmdline) and p.info["status"] != psutil.STATUS_ZOMBIE]


def gone(*cmdline, within=5.0):
    end = time.monotonic() + within
    while running(*cmdline):
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


def test_stdout_lines_stream_in_order_and_the_result_counts_them(redis_client):
    run = Run(redis_client, 701, {"argv": ["/usr/bin/printf", "%s\n", "one", "two", "three",
                                           "héllo wörld"]})
    assert run.outcome == "succeeded", run.error
    assert run.logs[0] == ("info", "$ /usr/bin/printf '%s\n' one two three 'héllo wörld'")
    assert run.logs[1:4] == [("info", "one"), ("info", "two"), ("info", "three")]
    assert run.logs[4] == ("info", "héllo wörld")
    assert run.logs[-1][1].startswith("exited with 0 after ")
    assert run.result["exit_code"] == 0 and run.result["stdout_lines"] == 4
    assert run.result["stderr_lines"] == 0 and 0 <= run.result["seconds"] < 10


def test_arguments_reach_the_program_literally_and_no_shell_runs_them(redis_client, tmp_path):
    pwned = tmp_path / "pwned"
    hostile = [f"; touch {pwned}", f"$(touch {pwned})", f"`touch {pwned}`",
               f"| touch {pwned}", f"&& touch {pwned}", f"\n touch {pwned}", "$HOME", "*"]
    run = Run(redis_client, 702, {"argv": ["/usr/bin/printf", "[%s]\n", *hostile]})
    assert run.outcome == "succeeded", run.error
    assert run.lines() == [
        f"[; touch {pwned}]", f"[$(touch {pwned})]", f"[`touch {pwned}`]",
        f"[| touch {pwned}]", f"[&& touch {pwned}]", "[", f" touch {pwned}]", "[$HOME]", "[*]"]
    assert not pwned.exists()


def test_the_program_gets_a_minimal_environment_and_no_secrets_of_the_worker(redis_client):
    run = Run(redis_client, 703, {"argv": ["/usr/bin/env"]})
    assert run.outcome == "succeeded", run.error
    assert sorted(run.lines()) == sorted(["PATH=/usr/bin:/bin", "LANG=C.UTF-8",
                                          f"HOME={data.team_root(TEAM)}"])


def test_stderr_lines_are_warnings_and_a_non_zero_exit_fails_the_job(redis_client):
    run = Run(redis_client, 704, {"argv": ["/usr/bin/printf", "%d\n", "x"]})
    assert run.outcome == "failed" and run.error == "CommandFailed: exited with 1"
    assert run.lines("info") == ["0"]
    assert len(run.lines("warning")) == 1 and "x" in run.lines("warning")[0]
    assert run.result is None


def test_the_exit_code_is_the_jobs_error(redis_client, allow_python):
    run = Run(redis_client, 705, {"argv": [PROGRAM, "-c", "import sys; print('bye'); "
                                           "sys.exit(3)"]})
    assert run.outcome == "failed" and run.error == "CommandFailed: exited with 3"
    assert run.lines("info") == ["bye"]


def test_a_program_that_runs_too_long_is_killed_at_its_timeout(redis_client):
    run = Run(redis_client, 706, {"argv": ["/bin/sleep", "30.706"], "timeout_s": 1})
    assert run.outcome == "failed" and run.error == "TimeoutError: timed out after 1 s"
    assert run.seconds < 10
    assert gone("/bin/sleep", "30.706")


def test_a_cancel_stops_the_program_within_seconds(redis_client):
    run = Run(redis_client, 707, {"argv": ["/bin/sleep", "60.707"]}, cancel_after=1.0)
    assert run.outcome == "cancelled"
    assert 1.0 <= run.seconds < 6
    assert gone("/bin/sleep", "60.707")
    assert run.logs[-1] == ("warning", "cancelled")


def test_a_program_that_ignores_sigterm_is_killed_after_the_grace(redis_client, allow_python):
    code = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('stubborn', flush=True); time.sleep(60.708)")
    run = Run(redis_client, 708, {"argv": [PROGRAM, "-c", code]}, cancel_after=1.0)
    assert run.outcome == "cancelled" and run.seconds < 8
    assert run.lines("info") == ["stubborn"]
    assert gone(PROGRAM, "-c", code)


def test_what_the_program_left_running_in_its_group_is_killed_with_it(redis_client,
                                                                     allow_python):
    code = ("import subprocess; subprocess.Popen(['/bin/sleep', '97.709'], "
            "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print('left one')")
    run = Run(redis_client, 709, {"argv": [PROGRAM, "-c", code]})
    assert run.outcome == "succeeded", run.error
    assert run.lines() == ["left one"]
    assert gone("/bin/sleep", "97.709")


def test_the_memory_limit_stops_an_allocation_beyond_it(redis_client, allow_python):
    grab = "x = bytearray(200 * 1024 * 1024); print('got', len(x) >> 20, 'MiB')"
    small = Run(redis_client, 710, {"argv": [PROGRAM, "-c", grab], "memory_mb": 64})
    assert small.outcome == "failed" and small.error == "CommandFailed: exited with 1"
    assert small.lines("warning")[-1] == "MemoryError"
    big = Run(redis_client, 711, {"argv": [PROGRAM, "-c", grab], "memory_mb": 1024})
    assert big.outcome == "succeeded", big.error
    assert big.lines("info") == ["got 200 MiB"]


def test_the_limiter_sets_the_address_space_and_cpu_limits_of_the_child():
    import subprocess

    code = ("import resource; print(*resource.getrlimit(resource.RLIMIT_AS), "
            "*resource.getrlimit(resource.RLIMIT_CPU), *resource.getrlimit(resource.RLIMIT_CORE))")
    out = subprocess.run([PYTHON, "-c", code], preexec_fn=shell.limiter(96, 30),
                         capture_output=True, text=True, check=True).stdout.split()
    assert [int(n) for n in out] == [96 << 20, 96 << 20, 30, 35, 0, 0]


def test_the_working_folder_is_in_the_teams_space(redis_client, allow_python):
    folder = data.team_root(TEAM) / "shell-cwd"
    folder.mkdir(parents=True, exist_ok=True)
    code = "import os; print(os.getcwd()); print(os.environ['HOME'])"
    run = Run(redis_client, 712, {"argv": [PROGRAM, "-c", code], "cwd": "shell-cwd"})
    assert run.outcome == "succeeded", run.error
    assert run.lines() == [str(folder), str(folder)]
    missing = Run(redis_client, 713, {"argv": ["/usr/bin/env"], "cwd": "no-such-folder"})
    assert missing.outcome == "failed" and "no-such-folder': no such folder" in missing.error


def test_the_worker_checks_its_own_allow_list_again_before_it_runs_anything(
        redis_client, monkeypatch, tmp_path):
    monkeypatch.setenv("SHELL_COMMANDS", "/usr/bin/env")  # this node allows less
    run = Run(redis_client, 714, {"argv": ["/usr/bin/printf", "ran\n"]})
    assert run.outcome == "failed"
    assert "/usr/bin/printf is not among the programs the admin allows" in run.error
    assert not [text for _, text in run.logs if text.startswith("$ ")]

    # run() itself refuses, even handed parameters that were never validated.
    spec = protocol.AttemptSpec(job=715, attempt=1, token="tok", kind="shell", params={},
                                team=TEAM)
    ctx = JobContext(spec, EventSink(redis_client), redis_client)
    marker = tmp_path / "ran"
    unchecked = ShellParams.model_construct(argv=["/usr/bin/touch", str(marker)], timeout_s=5,
                                            memory_mb=64, cwd=None)
    with pytest.raises(ValueError, match="not among the programs"):
        shell.run(ctx, unchecked)
    monkeypatch.setenv("SHELL_COMMANDS", "")
    with pytest.raises(ValueError, match="shell commands are off"):
        shell.run(ctx, ShellParams.model_construct(argv=["/usr/bin/env"], timeout_s=5,
                                                   memory_mb=64, cwd=None))
    assert not marker.exists()


def test_a_long_output_is_capped_in_the_log_but_counted(redis_client, monkeypatch):
    monkeypatch.setattr(shell, "MAX_LOG_LINES", 10)
    run = Run(redis_client, 716, {"argv": ["/usr/bin/printf", "%s\n", *map(str, range(30))]})
    assert run.outcome == "succeeded", run.error
    assert run.result["stdout_lines"] == 30
    assert run.lines("info") == [str(i) for i in range(10)]
    assert ("warning", "the log keeps the first 10 lines: later output is counted, not "
            "kept") in run.logs


def test_lines_are_split_across_reads_and_a_too_long_one_is_cut():
    lines = Lines("info")
    assert lines.feed(b"ab") == []
    assert lines.feed(b"c\r\nd\n\ne") == ["abc", "d", ""]
    assert lines.feed(b"x" * (shell.MAX_LINE_BYTES + 10)) == [
        "e" + "x" * (shell.MAX_LINE_BYTES - 1) + " [line cut]"]
    assert lines.feed(b"yyy\nnext") == []  # the rest of the cut line is dropped
    assert lines.end() == ["next"]
    assert lines.count == 5
    assert Lines("info").feed(b"\xff\xfeok\n") == ["\ufffd\ufffdok"]


def test_cancelled_is_raised_from_run_itself(redis_client):
    spec = protocol.AttemptSpec(job=717, attempt=1, token="tok", kind="shell", params={},
                                team=TEAM)
    sink = EventSink(redis_client)
    ctx = JobContext(spec, sink, redis_client)
    redis_client.set(protocol.cancel_key(717), 1)
    with pytest.raises(Cancelled):
        shell.run(ctx, ShellParams(argv=["/bin/sleep", "60.717"]))
    assert gone("/bin/sleep", "60.717")


def test_the_browser_form_submits_a_command_line_and_shows_a_refusal(cast):
    from django.test import Client

    grant(cast.alice)
    browser = Client()
    browser.force_login(cast.alice)
    assert 'name="param-argv"' in browser.get("/jobs/new/?kind=shell").content.decode()
    # The form takes a list's items separated by commas.
    response = browser.post("/jobs/new/", {"kind": "shell", "param-argv":
                                           "/usr/bin/printf, %s!, a b; id",
                                           "param-timeout_s": "30", "param-memory_mb": "64"})
    assert response.status_code == 302, response.content.decode()[-2000:]
    job = Job.objects.get()
    assert job.params["argv"] == ["/usr/bin/printf", "%s!", "a b; id"]
    assert job.params["timeout_s"] == 30 and job.params["memory_mb"] == 64

    refused = browser.post("/jobs/new/", {"kind": "shell", "param-argv": "/bin/sh, -c, id"})
    assert refused.status_code == 400
    assert "/bin/sh is not among the programs" in refused.content.decode()
    assert Job.objects.count() == 1


def test_the_program_dies_with_the_process_that_started_it():
    """The node agent's forced stop SIGKILLs a pool process: its program must not live on."""
    import subprocess
    from pathlib import Path

    code = ("import subprocess, time; from workers.kinds.shell import limiter; "
            "subprocess.Popen(['/bin/sleep', '90.718'], start_new_session=True, "
            "preexec_fn=limiter(64, 100)); print('started', flush=True); time.sleep(60)")
    pool = subprocess.Popen([PYTHON, "-c", code], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert pool.stdout.readline() == "started\n"
        assert running("/bin/sleep", "90.718")
    finally:
        pool.kill()
        pool.wait()
        pool.stdout.close()
    assert gone("/bin/sleep", "90.718")


def test_programs_run_as_the_shell_user_who_cannot_read_the_workers_secrets(
        redis_client, monkeypatch):
    """The worker here is this process: its environment holds the warehouse URL and the Redis
    URL, as a real worker's does."""
    monkeypatch.setenv("SHELL_COMMANDS", "/usr/bin/head,/usr/bin/id")
    whoami = Run(redis_client, 730, {"argv": ["/usr/bin/id", "-un"]})
    assert whoami.outcome == "succeeded", whoami.error
    assert whoami.lines() == [shell.shell_user()] and shell.shell_user() == "portal-shell"
    environ = f"/proc/{os.getpid()}/environ"
    run = Run(redis_client, 731, {"argv": ["/usr/bin/head", "-c", "1000", environ]})
    assert run.outcome == "failed" and run.error == "CommandFailed: exited with 1"
    assert run.lines("warning") == [f"/usr/bin/head: cannot open '{environ}' for reading: "
                                    "Permission denied"]
    assert not any("WAREHOUSE_URL" in text or "REDIS_URL" in text for _, text in run.logs)
    folder = Path(tempfile.mkdtemp())  # a folder anyone may enter, holding the key file
    folder.chmod(0o755)
    key = folder / "secret_key"  # as portal/cluster.py writes data/secret_key
    key.write_text("the-portal-secret")
    key.chmod(0o600)
    readable = folder / "readable"
    readable.write_text("open\n")
    readable.chmod(0o644)
    assert Run(redis_client, 733, {"argv": ["/usr/bin/head", str(readable)]}).lines() == ["open"]
    secret = Run(redis_client, 732, {"argv": ["/usr/bin/head", str(key)]})
    assert secret.outcome == "failed"
    assert "Permission denied" in " ".join(secret.lines("warning"))
    assert not any("the-portal-secret" in text for _, text in secret.logs)


def test_a_worker_that_cannot_switch_users_says_so(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 12345)
    with pytest.raises(shell.CommandFailed, match="not root"):
        shell.identity()
    monkeypatch.setenv("SHELL_USER", "")
    assert shell.identity() is None  # the operator's choice: the worker's own user
    monkeypatch.setenv("SHELL_USER", "no-such-user-here")
    with pytest.raises(shell.CommandFailed, match="is not a user on this node"):
        shell.identity()


def test_a_program_writes_nothing_in_its_own_or_another_teams_space(redis_client, monkeypatch):
    monkeypatch.setenv("SHELL_COMMANDS", "/usr/bin/touch")
    other = data.team_root("etl")
    other.mkdir(parents=True, exist_ok=True)
    for job_id, target in ((740, "here.txt"), (741, str(other / "planted.txt"))):
        run = Run(redis_client, job_id, {"argv": ["/usr/bin/touch", target]})
        assert run.outcome == "failed" and "Permission denied" in " ".join(run.lines("warning"))
    assert not (data.team_root(TEAM) / "here.txt").exists()
    assert not (other / "planted.txt").exists()
