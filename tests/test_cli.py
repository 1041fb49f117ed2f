"""portalctl, fast: its parsing and formatting, the follower's stream logic against a scripted
websocket, and its commands in-process against the portal served over real HTTP (pytest-django's
live server: REST only, so waits there fall back to polling). The whole cluster, websockets and
the installed console script are exercised in tests/integration/test_cli_live.py."""

from __future__ import annotations

import json
import os
import re
import stat
from datetime import UTC, datetime, timedelta

import pytest

from cli import config
from cli.errors import CliError, Invalid, flatten_errors
from cli.follow import Follower, TimedOut, ws_url
from cli.format import (
    ago,
    gpu_summary,
    job_block,
    job_row,
    node_row,
    parse_label,
    parse_param,
    parse_value,
    table,
)
from cli.main import build_spec, main, parser

# -- parsing and formatting ---------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ("3", 3), ("2.5", 2.5), ("-1", -1), ("true", True), ("false", False), ("null", None),
    ("[1,2]", [1, 2]), ('{"a": 1}', {"a": 1}), ('"3"', "3"), ("hello", "hello"),
    ("", ""), ("NaN", "NaN"), ("Infinity", "Infinity"), ("books/*.txt", "books/*.txt"),
])
def test_param_values_are_json_when_they_parse_and_text_otherwise(text, value):
    assert parse_value(text) == value
    assert type(parse_value(text)) is type(value)


def test_a_param_is_split_at_its_first_equals_sign():
    assert parse_param("note=a=b") == ("note", "a=b")
    assert parse_param("seconds=3") == ("seconds", 3)
    for bad in ("seconds", "=3"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_param(bad)


def test_field_errors_are_flattened_to_dotted_paths():
    errors = {"params": {"seconds": ["must be at least 0"], "fail": ["must be true or false"]},
              "queue": ["must be one of cpu, etl"], "non_field_errors": ["bad job"]}
    assert flatten_errors(errors) == ["params.seconds: must be at least 0",
                                      "params.fail: must be true or false",
                                      "queue: must be one of cpu, etl", "bad job"]
    assert flatten_errors([{}, {"kind": ["is required"]}]) == ["[1].kind: is required"]
    assert flatten_errors({"detail": "Not found."}) == ["Not found."]


def test_a_table_aligns_its_columns_and_keeps_each_row_on_one_line():
    text = table(["ID", "NAME"], [[1, "short"], [12, "a\nlong name"], [3, None]])
    assert text.splitlines() == ["ID  NAME", "1   short", "12  a long name", "3   -"]


def test_nodes_show_cpu_memory_gpus_slots_and_heartbeat_age():
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    node = {"name": "w1", "state": "online", "running": 1, "concurrency": 2,
            "last_heartbeat": (now - timedelta(seconds=4)).isoformat(),
            "utilization": {"cpu": 12.6, "mem": 40.2,
                            "gpus": [{"util": 50.0}, {"util": 70.0}]}}
    assert node_row(node, now) == ["w1", "online", "13", "40", "2x 60%", "1/2", "4s ago"]
    assert gpu_summary({}) == "-" and gpu_summary({"gpus": [{"error": "gone"}]}) == "1x ?"
    assert ago(None) == "never"
    assert ago((now - timedelta(minutes=3)).isoformat(), now) == "3m ago"


def test_the_status_block_shows_fields_and_attempts():
    job = {"id": "7", "kind": "diag.sleep", "name": "nightly", "state": "failed", "attempt": 2,
           "max_attempts": 3, "node": "w2", "progress": 0.5, "done": 1, "total": 2,
           "unit": "s", "queue": "cpu", "priority": 0, "owner": "alice",
           "params": {"seconds": 2}, "error": "RuntimeError: boom", "result": None,
           "created_at": "2030-01-01T12:00:00Z",
           "attempts": [{"number": 1, "state": "lost", "node": "w1", "error": "node w1 lost"},
                        {"number": 2, "state": "failed", "node": "w2",
                         "error": "RuntimeError: boom"}]}
    text = job_block(job)
    assert text.startswith("job 7  diag.sleep  'nightly'")
    assert re.search(r"^  state +failed$", text, re.M)
    assert "2 of 3" in text and "50%  (1/2 s)" in text
    assert '{"seconds": 2}' in text and "error" in text and "result" not in text
    assert "node w1 lost" in text and "ATTEMPT" in text


def test_the_status_block_shows_team_priority_and_resources():
    job = {"id": "8", "kind": "diag.sleep", "name": "diag.sleep", "state": "running",
           "team": "ml", "priority": 0, "queue": "gpu", "cpus": 2, "gpus": 1,
           "labels": {"zone": "b", "gpu": "a100"}, "message": "step 3",
           "place_in_line": None}
    text = job_block(job)
    assert re.search(r"^  team +ml$", text, re.M)
    assert re.search(r"^  priority +0$", text, re.M)  # 0 is shown, not dropped as empty
    assert re.search(r"^  queue +gpu$", text, re.M)
    assert re.search(r"^  resources +2 cpus, 1 gpu, gpu=a100, zone=b$", text, re.M)
    assert re.search(r"^  message +step 3$", text, re.M) and "place in line" not in text


def test_a_pending_job_says_what_it_waits_for_and_its_place_in_line():
    job = {"id": "9", "kind": "diag.noop", "state": "pending", "team": "ml", "priority": 5,
           "message": "team ml: 4 of 4 running jobs", "place_in_line": 3}
    text = job_block(job)
    lines = text.splitlines()
    assert re.match(r"  state +pending$", lines[1])
    assert re.match(r"  message +team ml: 4 of 4 running jobs$", lines[2])
    assert re.match(r"  place in line +3 \(among its team's waiting jobs\)$", lines[3])
    assert re.search(r"^  priority +5$", text, re.M)
    # Not yet placed (waiting for the jobs it comes after): no place shown.
    assert "place in line" not in job_block({**job, "place_in_line": None})
    # A place is only for a waiting job.
    assert "place in line" not in job_block({**job, "state": "queued"})


def test_a_list_row_shows_the_team():
    row = job_row({"id": "3", "state": "queued", "team": "etl", "kind": "diag.noop",
                   "name": "n", "progress": None, "node": None, "created_at": None})
    assert row == ["3", "queued", "etl", "diag.noop", "n", "-", None, "-"]
    text = table(["ID", "STATE", "TEAM"], [row[:3], ["4", "running", None]])
    assert text.splitlines() == ["ID  STATE    TEAM", "3   queued   etl", "4   running  -"]


def test_websocket_urls_follow_the_portals_scheme_and_path():
    assert ws_url("http://127.0.0.1:8000", "/ws/jobs/3/") == "ws://127.0.0.1:8000/ws/jobs/3/"
    assert ws_url("https://hpc.example/portal", "/ws/jobs/3/") == \
        "wss://hpc.example/portal/ws/jobs/3/"


def test_urls_are_normalized_and_refuse_credentials():
    assert config.normalize_url("127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert config.normalize_url("https://x.example/p/?a=1") == "https://x.example/p"
    for bad in ("ftp://x.example", "https://user:pw@x.example"):
        with pytest.raises(CliError):
            config.normalize_url(bad)


def test_the_config_is_saved_under_xdg_config_home_readable_by_its_owner_only(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    path = config.save("http://portal:8000", "secret", env)
    assert path == tmp_path / "portalctl" / "config.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text()) == {"url": "http://portal:8000", "token": "secret"}
    assert config.resolve(env) == ("http://portal:8000", "secret")
    # The environment wins over the file.
    assert config.resolve({**env, "PORTAL_URL": "http://other/", "PORTAL_TOKEN": "t2"}) == \
        ("http://other", "t2")
    with pytest.raises(CliError, match="not logged in"):
        config.resolve({"XDG_CONFIG_HOME": str(tmp_path / "empty")})


def test_a_relative_xdg_config_home_is_ignored(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config.config_path({"XDG_CONFIG_HOME": "relative"}) == \
        tmp_path / ".config" / "portalctl" / "config.json"


def spec_args(*argv):
    return parser().parse_args(["submit", *argv])


def test_a_spec_comes_from_params_a_file_or_both(tmp_path):
    assert build_spec(spec_args("diag.sleep", "-p", "seconds=3", "--param", "fail=false",
                                "--name", "n", "--priority", "5")) == {
        "kind": "diag.sleep", "params": {"seconds": 3, "fail": False}, "name": "n",
        "priority": 5}
    whole = tmp_path / "job.yaml"
    whole.write_text("kind: diag.sleep\nparams:\n  seconds: 2\n  note: hi\nqueue: cpu\n")
    assert build_spec(spec_args("-f", str(whole), "-p", "seconds=4")) == {
        "kind": "diag.sleep", "params": {"seconds": 4, "note": "hi"}, "queue": "cpu"}
    params = tmp_path / "params.json"
    params.write_text('{"seconds": 1, "fail": true}')
    assert build_spec(spec_args("diag.sleep", "-f", str(params), "--after", "4",
                                "--after", "9")) == {
        "kind": "diag.sleep", "params": {"seconds": 1, "fail": True}, "after": ["4", "9"]}


def test_team_priority_resources_labels_and_after_go_in_the_spec_only_when_given(tmp_path):
    assert build_spec(spec_args("diag.noop")) == {"kind": "diag.noop", "params": {}}
    assert build_spec(spec_args(
        "diag.noop", "--team", "ml", "--priority", "-3", "--cpus", "4", "--gpus", "2",
        "--label", "gpu=a100", "--label", "zone = b", "--label", "note=x=y",
        "--after", "11", "--after", "12")) == {
        "kind": "diag.noop", "params": {}, "team": "ml", "priority": -3, "cpus": 4, "gpus": 2,
        "labels": {"gpu": "a100", "zone": "b", "note": "x=y"}, "after": ["11", "12"]}
    # Zero is a value, not "not given".
    assert build_spec(spec_args("diag.noop", "--gpus", "0", "--cpus", "0",
                                "--priority", "0")) == {
        "kind": "diag.noop", "params": {}, "gpus": 0, "cpus": 0, "priority": 0}
    # Labels are text, whatever they look like.
    assert build_spec(spec_args("diag.noop", "--label", "rack=7"))["labels"] == {"rack": "7"}
    # The command line adds to (and wins over) the file's labels, team and after.
    job = tmp_path / "job.yaml"
    job.write_text("kind: diag.noop\nteam: etl\nlabels: {gpu: v100, zone: a}\nafter: ['1']\n")
    assert build_spec(spec_args("-f", str(job), "--team", "ml", "--label", "gpu=a100",
                                "--after", "2")) == {
        "kind": "diag.noop", "params": {}, "team": "ml",
        "labels": {"gpu": "a100", "zone": "a"}, "after": ["1", "2"]}
    listed = tmp_path / "bad-labels.yaml"
    listed.write_text("kind: diag.noop\nlabels: [gpu]\n")
    with pytest.raises(CliError, match="labels must be an object"):
        build_spec(spec_args("-f", str(listed), "--label", "gpu=a100"))


@pytest.mark.parametrize("argv", [
    ["--label", "gpu"], ["--label", "=a100"], ["--cpus", "-1"], ["--gpus", "two"],
    ["--priority", "high"],
])
def test_bad_submit_options_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as usage:
        spec_args("diag.noop", *argv)
    assert usage.value.code == 2
    assert "portalctl submit: error: argument" in capsys.readouterr().err


def test_a_label_is_split_at_its_first_equals_sign_and_stays_text():
    assert parse_label("gpu=a100") == ("gpu", "a100")
    assert parse_label(" n = 3 ") == ("n", "3")
    assert parse_label("empty=") == ("empty", "")
    for bad in ("gpu", "=a100", " =x"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_label(bad)


class FakeRest:
    """The commands' side of the REST API: records what was sent, answers what it holds."""

    def __init__(self, jobs=()):
        self.submitted: list[dict] = []
        self.jobs_held = {job["id"]: job for job in jobs}

    def submit(self, spec):
        self.submitted.append(spec)
        job = {"id": str(100 + len(self.submitted)), "state": "pending", **spec}
        self.jobs_held[job["id"]] = job
        return job

    def jobs(self, *, limit, page_size=100, **filters):
        return list(self.jobs_held.values())[:limit]

    def job(self, job_id):
        return self.jobs_held[job_id]


@pytest.fixture
def rest(monkeypatch):
    fake = FakeRest()
    monkeypatch.setattr("cli.main.connect", lambda env: fake)
    return fake


def test_submit_posts_the_new_options_only_when_given(rest, capsys):
    assert main(["submit", "diag.noop"], env={}) == 0
    assert main(["submit", "diag.noop", "--team", "ml", "--priority", "7", "--cpus", "2",
                 "--gpus", "1", "--label", "gpu=a100", "--label", "zone=b",
                 "--after", "101"], env={}) == 0
    assert rest.submitted == [
        {"kind": "diag.noop", "params": {}},
        {"kind": "diag.noop", "params": {}, "team": "ml", "priority": 7, "cpus": 2, "gpus": 1,
         "labels": {"gpu": "a100", "zone": "b"}, "after": ["101"]}]
    assert capsys.readouterr().out.split() == ["101", "102"]


def test_list_has_a_team_column_and_status_a_pending_jobs_place(rest, capsys):
    rest.jobs_held.update({
        "7": {"id": "7", "state": "pending", "team": "ml", "kind": "diag.sleep", "name": "a",
              "priority": 5, "queue": "cpu", "message": "team ml: 2 of 2 running jobs",
              "place_in_line": 2, "created_at": "2030-01-01T12:00:00Z"},
        "6": {"id": "6", "state": "running", "team": "etl-nightly", "kind": "diag.noop",
              "name": "b", "progress": 0.5, "node": "w1"}})
    assert main(["list"], env={}) == 0
    header, first, second = capsys.readouterr().out.splitlines()
    assert header.split() == ["ID", "STATE", "TEAM", "KIND", "NAME", "PROGRESS", "NODE",
                              "CREATED"]
    assert first.split()[:4] == ["7", "pending", "ml", "diag.sleep"]
    assert second.split()[:4] == ["6", "running", "etl-nightly", "diag.noop"]
    assert first.index("ml") == header.index("TEAM")

    assert main(["status", "7"], env={}) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  team +ml$", out, re.M) and re.search(r"^  priority +5$", out, re.M)
    assert re.search(r"^  message +team ml: 2 of 2 running jobs$", out, re.M)
    assert re.search(r"^  place in line +2 ", out, re.M)
    assert main(["status", "7", "--json"], env={}) == 0
    assert json.loads(capsys.readouterr().out)["place_in_line"] == 2


def test_a_spec_without_a_kind_or_from_a_bad_file_is_refused(tmp_path):
    with pytest.raises(CliError, match="which kind"):
        build_spec(spec_args("-p", "seconds=1"))
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    with pytest.raises(CliError, match="not valid JSON"):
        build_spec(spec_args("-f", str(broken)))
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(CliError, match="must hold an object"):
        build_spec(spec_args("-f", str(listed)))
    with pytest.raises(CliError, match="cannot read"):
        build_spec(spec_args("-f", str(tmp_path / "missing.yaml")))


# -- the follower against a scripted websocket -------------------------------------------------


class FakeApi:
    """The REST side: a job whose snapshot and log the test moves along."""

    url = "http://portal.test"
    token = "k"

    def __init__(self, state="running", stream_seq=0):
        self.state = {"id": "5", "state": state, "stream_seq": stream_seq, "attempt": 1}
        self.lines: list[dict] = []
        self.job_calls = 0

    def add_line(self, text, attempt=1):
        line = sum(1 for x in self.lines if x["attempt"] == attempt) + 1
        self.lines.append({"seq": len(self.lines) + 1, "attempt": attempt, "line": line,
                           "ts": "2030-01-01T12:00:00Z", "level": "info", "text": text})

    def job(self, job_id):
        self.job_calls += 1
        return dict(self.state)

    def log_lines(self, job_id, after=0):
        return [x for x in self.lines if x["seq"] > after]


class FakeSocket:
    """Hands out scripted frames; a callable in the script runs (to move the REST side) and an
    exception is raised, as the real client does when the connection closes."""

    def __init__(self, script):
        self.script = list(script)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def recv(self, timeout=None):
        while self.script:
            item = self.script.pop(0)
            if callable(item):
                item()
                continue
            if isinstance(item, BaseException):
                raise item
            return json.dumps(item)
        raise TimeoutError


def batch(seq, *events, job="5"):
    return {"type": "batch", "stream": f"job-{job}", "seq": seq,
            "events": [{"job": job, **e} for e in events]}


def log_event(line, text, attempt=1):
    return {"type": "job.log", "attempt": attempt, "seq": line, "level": "info", "text": text,
            "ts": "2030-01-01T12:00:01Z"}


HELLO = {"type": "hello", "streams": ["job-5"]}


def follow(api, sockets, **kwargs):
    printed: list[str] = []
    queue = list(sockets)

    def connect(url, token):
        assert url == "ws://portal.test/ws/jobs/5/" and token == "k"
        if not queue:
            raise OSError("refused")
        return queue.pop(0)

    follower = Follower(api, "5", on_log=lambda line: printed.append(line["text"]),
                        connect=connect, sleep=lambda s: None, **kwargs)
    return follower, printed


def test_the_follower_prints_each_line_once_and_stops_when_the_job_ends():
    api = FakeApi(stream_seq=3)
    api.add_line("first")

    def finish():
        api.add_line("second")
        api.state.update(state="succeeded", stream_seq=5)

    socket = FakeSocket([HELLO, batch(3, log_event(1, "first")),  # already in the snapshot
                         batch(4, log_event(1, "first"), log_event(2, "second")),
                         finish,
                         batch(5, {"type": "job.state", "state": "succeeded"})])
    follower, printed = follow(api, [socket])
    assert follower.run()["state"] == "succeeded"
    assert printed == ["first", "second"] and follower.mode == "websocket"


def test_a_gap_in_seq_reloads_the_snapshot_and_the_missing_lines():
    api = FakeApi(stream_seq=1)

    def lost_frames():  # frames 2 and 3 never arrive; their lines are in the database
        api.add_line("two")
        api.add_line("three")
        api.add_line("four")
        api.state["stream_seq"] = 4

    socket = FakeSocket([HELLO, lost_frames, batch(4, log_event(3, "four")),
                         batch(5, log_event(4, "five")),
                         lambda: api.state.update(state="failed", stream_seq=6),
                         batch(6, {"type": "job.state", "state": "failed"})])
    api_calls_before = api.job_calls
    follower, printed = follow(api, [socket])
    follower.run()
    assert printed == ["two", "three", "four", "five"]
    # The start, the hello, the gap and the end: each read the snapshot, and no more.
    assert api.job_calls - api_calls_before == 4


def test_a_partitions_events_on_its_parents_stream_are_not_the_parents():
    api = FakeApi()
    socket = FakeSocket([HELLO, batch(1, log_event(1, "child line"),
                                      {"type": "job.state", "state": "succeeded"}, job="9"),
                         batch(2, log_event(1, "parent line")),
                         lambda: api.state.update(state="succeeded"),
                         batch(3, {"type": "job.state", "state": "succeeded"})])
    follower, printed = follow(api, [socket])
    assert follower.run()["state"] == "succeeded" and printed == ["parent line"]


def test_a_closed_connection_reconnects_reloads_and_prints_nothing_twice():
    from websockets.exceptions import ConnectionClosedError
    from websockets.frames import Close

    api = FakeApi()
    api.add_line("one")
    first = FakeSocket([HELLO, batch(1, log_event(1, "one"), log_event(2, "two")),
                        ConnectionClosedError(Close(1011, "restart"), None)])

    def more():
        api.add_line("two")
        api.add_line("three")
        api.state.update(state="succeeded", stream_seq=9)

    second = FakeSocket([more, HELLO, batch(9, {"type": "job.state", "state": "succeeded"})])
    follower, printed = follow(api, [first, second])
    assert follower.run()["state"] == "succeeded"
    assert printed == ["one", "two", "three"] and follower.mode == "websocket"


def test_a_refused_token_on_the_websocket_is_an_error_not_a_reconnect_loop():
    from websockets.exceptions import ConnectionClosedError
    from websockets.frames import Close

    socket = FakeSocket([ConnectionClosedError(Close(4401, ""), None)])
    follower, _ = follow(FakeApi(), [socket])
    with pytest.raises(CliError, match="4401"):
        follower.run()


def test_without_a_websocket_the_follower_polls_until_the_end():
    api = FakeApi(state="queued")
    polls = iter(["queued", "running", "cancelled"])

    def job(job_id):
        api.state["state"] = next(polls)
        return dict(api.state)

    api.job = job
    follower, _ = follow(api, [])
    assert follower.run()["state"] == "cancelled" and follower.mode == "polling"


def test_a_wait_past_its_timeout_raises_with_the_latest_job():
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    follower = Follower(FakeApi(state="running"), "5", timeout=3, clock=lambda: now[0],
                        sleep=sleep, connect=lambda url, token: (_ for _ in ()).throw(OSError()))
    with pytest.raises(TimedOut) as timed_out:
        follower.run()
    assert timed_out.value.job["state"] == "running" and 3 <= now[0] < 4


# -- commands against the portal over HTTP ------------------------------------------------------


@pytest.fixture
def portal(live_server, transactional_db, tmp_path):
    """Runs portalctl's main() in-process against the live server, logged in as its user."""
    from django.contrib.auth import get_user_model

    from accounts.models import ApiToken

    user = get_user_model().objects.create_user("cli-user")
    key = ApiToken.issue(user)[1]
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}

    class Portal:
        url = live_server.url
        token = key
        owner = user

        def __init__(self):
            self.env = env

        def run(self, capsys, *argv):
            capsys.readouterr()
            code = main(list(argv), env=self.env)
            captured = capsys.readouterr()
            return code, captured.out, captured.err

    portal = Portal()
    config.save(live_server.url, key, env)
    return portal


def test_login_checks_the_token_before_saving_it(portal, capsys, tmp_path):
    portal.env = {"XDG_CONFIG_HOME": str(tmp_path / "fresh")}
    code, out, err = portal.run(capsys, "login", "--url", portal.url, "--token", "wrong")
    assert code == 2 and "refused the token (401)" in err and "Traceback" not in err
    assert not config.config_path(portal.env).exists()

    code, out, err = portal.run(capsys, "login", "--url", portal.url + "/", "--token",
                                portal.token)
    assert code == 0 and "logged in to" in out
    assert config.load(portal.env) == {"url": portal.url, "token": portal.token}


def test_submit_prints_the_id_and_a_bad_param_names_its_field(portal, capsys):
    from jobs.models import Job

    code, out, err = portal.run(capsys, "submit", "diag.sleep", "--param", "seconds=3",
                                "--param", "fail=false", "--name", "from cli")
    assert code == 0, err
    job = Job.objects.get(pk=int(out.strip()))
    assert job.name == "from cli" and job.params["seconds"] == 3 and job.owner == portal.owner

    code, out, err = portal.run(capsys, "submit", "diag.sleep", "-p", "seconds=-1")
    assert code == 2 and out == ""
    assert "rejected the job" in err and "params.seconds: must be at least 0" in err

    code, out, err = portal.run(capsys, "--json", "submit", "diag.sleep", "-p", "fail=maybe")
    assert code == 2 and out == ""
    assert json.loads(err)["errors"] == {"params": {"fail": ["must be true or false"]}}


def test_submit_with_a_team_resources_and_labels_and_status_shows_them(portal, capsys):
    from accounts.models import Membership, Team
    from jobs.models import Job
    from nodes.models import Node

    team = Team.objects.create(name="cli-team", max_running_jobs=0)  # nothing admitted
    Membership.objects.create(team=team, user=portal.owner, role="member")
    Node.objects.create(name="g1", state="offline", queues=["cpu"], labels={"gpu": "a100"})
    code, out, err = portal.run(capsys, "submit", "diag.noop", "--team", "cli-team",
                                "--priority", "5", "--cpus", "2", "--gpus", "1",
                                "--label", "gpu=a100")
    assert code == 0, err
    job = Job.objects.get(pk=int(out))
    assert (job.team, job.priority, job.cpus, job.gpus, job.labels) == (
        team, 5, 2, 1, {"gpu": "a100"})

    code, out, _ = portal.run(capsys, "status", str(job.pk))
    assert code == 0 and re.search(r"^  team +cli-team$", out, re.M)
    assert re.search(r"^  priority +5$", out, re.M)
    assert re.search(r"^  resources +2 cpus, 1 gpu, gpu=a100$", out, re.M)
    assert re.search(r"^  state +pending$", out, re.M)
    assert re.search(r"^  place in line +1 ", out, re.M)
    assert re.search(r"^  message +team cli-team: .*running jobs$", out, re.M), out

    code, out, err = portal.run(capsys, "submit", "diag.noop", "--team", "nobodys")
    assert code == 2 and "team:" in err


def test_list_follows_the_cursor_past_one_page_and_filters(portal, capsys):
    from jobs.models import Job

    for n in range(5):
        portal.run(capsys, "submit", "diag.noop", "--name", f"job {n}")
    code, out, _ = portal.run(capsys, "--json", "list", "--limit", "4", "--page-size", "2")
    listed = json.loads(out)
    newest = list(Job.objects.order_by("-id").values_list("id", flat=True))
    assert code == 0 and [int(j["id"]) for j in listed] == newest[:4]

    code, out, _ = portal.run(capsys, "list", "-q", "job 3")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATE", "TEAM", "KIND", "NAME", "PROGRESS", "NODE",
                                "CREATED"]
    assert len(lines) == 2 and "job 3" in lines[1] and "queued" in lines[1]
    team = Job.objects.get(name="job 3").team.name
    assert lines[1].split()[2] == team

    code, out, _ = portal.run(capsys, "list", "--state", "running")
    assert code == 0 and out.strip() == "no jobs"


def test_status_cancel_and_wait_report_the_jobs_state_with_their_exit_codes(portal, capsys):
    from jobs.models import Job

    code, out, err = portal.run(capsys, "status", "999999")
    assert code == 1 and "no such job: 999999" in err

    _, out, _ = portal.run(capsys, "submit", "diag.sleep", "-p", "seconds=30")
    job_id = out.strip()
    code, out, _ = portal.run(capsys, "status", job_id)
    assert code == 0 and re.search(r"^  state +queued$", out, re.M) and "ATTEMPT" in out

    # No worker runs here, and the live server has no websockets: wait polls, then gives up.
    code, out, _ = portal.run(capsys, "wait", job_id, "--timeout", "1.5")
    assert code == 124 and f"job {job_id} still queued" in out

    code, out, _ = portal.run(capsys, "cancel", job_id)  # not started: cancelled at once
    assert code == 0 and out.strip() == f"cancelled job {job_id}"
    code, out, err = portal.run(capsys, "cancel", job_id)
    assert code == 1 and f"job {job_id} already cancelled" in err
    code, out, _ = portal.run(capsys, "wait", job_id)
    assert code == 3 and out.strip() == f"job {job_id} cancelled"

    Job.objects.filter(pk=job_id).update(state="failed", error="RuntimeError: boom")
    code, out, _ = portal.run(capsys, "wait", job_id)
    assert code == 1 and out.strip() == f"job {job_id} failed: RuntimeError: boom"
    code, out, _ = portal.run(capsys, "wait", job_id, "--json")
    assert code == 1 and json.loads(out)["error"] == "RuntimeError: boom"


def test_logs_print_every_line_in_order(portal, capsys):
    from django.utils import timezone

    from jobs.models import Job, LogLine

    _, out, _ = portal.run(capsys, "submit", "diag.noop")
    job = Job.objects.get(pk=int(out))
    LogLine.objects.bulk_create([
        LogLine(job=job, attempt=1, seq=n, ts=timezone.now(), level="info", text=f"line {n}")
        for n in range(1, 4)] + [LogLine(job=job, attempt=1, seq=4, ts=timezone.now(),
                                         level="error", text="oops")])
    code, out, _ = portal.run(capsys, "logs", str(job.pk))
    lines = out.splitlines()
    assert code == 0 and [line.split(" ", 2)[2] for line in lines] == [
        "line 1", "line 2", "line 3", "error: oops"]
    code, out, _ = portal.run(capsys, "logs", str(job.pk), "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["attempt"], r["line"], r["text"]) for r in records][-1] == (1, 4, "oops")


def test_nodes_and_kinds_are_tables_or_json(portal, capsys):
    from django.utils import timezone

    from nodes.models import Node

    Node.objects.create(name="w1", state="online", running=1, concurrency=2,
                        last_heartbeat=timezone.now(),
                        utilization={"cpu": 12.5, "mem": 40.0, "gpus": []})
    code, out, _ = portal.run(capsys, "nodes")
    header, row = out.splitlines()
    assert header.split() == ["NAME", "STATE", "CPU%", "MEM%", "GPU", "RUNNING", "LAST",
                              "HEARTBEAT"]
    assert row.split()[:6] == ["w1", "online", "12", "40", "-", "1/2"]
    code, out, _ = portal.run(capsys, "nodes", "--json")
    assert [n["name"] for n in json.loads(out)] == ["w1"]
    code, out, _ = portal.run(capsys, "kinds")
    assert code == 0 and "diag.sleep" in out


def test_an_unreachable_portal_is_one_line_and_exit_2(portal, capsys):
    from portal.cluster import free_port

    portal.env = {**portal.env, "PORTAL_URL": f"http://127.0.0.1:{free_port()}"}
    code, out, err = portal.run(capsys, "list")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"portalctl: error: cannot reach the portal at {portal.env['PORTAL_URL']}: "
        "connection refused"]


def test_invalid_errors_keep_the_servers_fields():
    exc = Invalid({"params": {"seconds": ["must be at least 0"]}})
    assert exc.code == 2 and exc.lines == ["params.seconds: must be at least 0"]


def test_a_piped_token_is_read_from_stdin_and_an_empty_one_refused():
    import io

    from cli.main import read_token

    assert read_token(io.StringIO("  abc123 \n")) == "abc123"
    with pytest.raises(CliError, match="no token given"):
        read_token(io.StringIO(""))


def test_timeouts_only_go_with_waiting(capsys, tmp_path):
    env = {"PORTAL_URL": "http://127.0.0.1:9", "PORTAL_TOKEN": "t"}
    assert main(["submit", "diag.sleep", "--timeout", "5"], env=env) == 2
    assert main(["logs", "1", "--timeout", "5"], env=env) == 2
    err = capsys.readouterr().err
    assert "--timeout applies to --wait" in err and "--timeout applies to -f" in err
    with pytest.raises(SystemExit) as usage:
        main(["wait", "1", "--timeout", "0"], env=env)
    assert usage.value.code == 2 and "must be more than 0" in capsys.readouterr().err


def _response(status, body=None, headers=None):
    import requests

    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body if body is not None else {}).encode()
    response.headers.update(headers or {})
    return response


class _Replies:
    """A session that answers with the given responses in turn, and records the calls."""

    def __init__(self, *responses):
        self.responses = list(responses)
        self.calls = []
        self.headers = {}

    def request(self, method, url, **kwargs):
        self.calls.append((method, url))
        return self.responses.pop(0)


def test_a_throttled_call_waits_as_told_and_tries_again(monkeypatch):
    from cli import api as api_module

    waits = []
    monkeypatch.setattr(api_module.time, "sleep", waits.append)
    session = _Replies(_response(429, {"detail": "throttled"}, {"Retry-After": "2"}),
                       _response(200, [{"name": "diag.noop"}]))
    client = api_module.Api("http://portal", "key", session=session)
    assert client.request("GET", "/api/v1/kinds/").json() == [{"name": "diag.noop"}]
    assert waits == [2.0] and len(session.calls) == 2


def test_a_long_throttle_is_reported_not_waited_out(monkeypatch):
    from cli import api as api_module

    monkeypatch.setattr(api_module.time, "sleep", lambda s: pytest.fail("should not wait"))
    session = _Replies(_response(429, {"detail": "throttled"}, {"Retry-After": "600"}))
    client = api_module.Api("http://portal", "key", session=session)
    with pytest.raises(CliError, match="throttling this token.*600 s"):
        client.request("POST", "/api/v1/jobs/")


def test_nodes_and_slots_per_node_go_in_the_spec_only_when_given():
    assert build_spec(spec_args("train.torch", "--nodes", "2", "--slots-per-node", "3")) == {
        "kind": "train.torch", "params": {}, "nodes": 2, "slots_per_node": 3}
    assert "nodes" not in build_spec(spec_args("train.torch"))
