"""The job lifecycle: every allowed and refused move of jobs and attempts, one winner among
racing claims, and what follows a move (fencing, stop signals, partitions)."""

import ast
import re
import threading
import time
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from jobs import lifecycle as states
from jobs.ingest import apply_events
from jobs.models import Attempt, AttemptState, Job, JobState, LogLine
from tests.factories import make_job as make_job_with_attempt
from workers import protocol

S = JobState
ALLOWED = {
    (S.PENDING, S.QUEUED), (S.PENDING, S.CANCELLED), (S.PENDING, S.FAILED),
    (S.QUEUED, S.RUNNING), (S.QUEUED, S.CANCELLED), (S.QUEUED, S.FAILED),
    (S.RUNNING, S.SUCCEEDED), (S.RUNNING, S.FAILED), (S.RUNNING, S.CANCELLED),
    (S.RUNNING, S.QUEUED),
    # A gang whose rank was lost goes back to admission, to be placed again whole; a
    # preempted job goes back to admission too.
    (S.QUEUED, S.PENDING), (S.RUNNING, S.PENDING),
}
ALL_PAIRS = [(a, b) for a in S.values for b in S.values if a != b]


def make_job(owner, state=S.QUEUED, **fields):
    """The job alone, without its attempt's row: what a claim moves."""
    return make_job_with_attempt(owner, state, token="t1", timeout_s=60, attempt_row=False,
                                 **fields)


def test_the_table_allows_exactly_the_documented_moves():
    table = {(a, b) for a in S.values for b in S.values if states.allowed(a, b)}
    assert table == ALLOWED


def test_terminal_states_allow_no_move_at_all():
    for terminal in (S.SUCCEEDED, S.FAILED, S.CANCELLED):
        assert states.ALLOWED[terminal] == frozenset()


@pytest.mark.parametrize(("source", "target"), ALL_PAIRS)
def test_a_claim_succeeds_only_for_an_allowed_move(cast, source, target):
    job = make_job(cast.alice, state=source)
    if not states.sources(target):
        with pytest.raises(ValueError):  # nothing moves to a state no move leads to
            states.claim(job.pk, target)
        won = False
    else:
        won = states.claim(job.pk, target)
    job.refresh_from_db()
    if (source, target) in ALLOWED:
        assert won and job.state == target
    else:
        assert not won and job.state == source


def test_a_claim_with_a_stale_fencing_token_changes_nothing(cast):
    job = make_job(cast.alice, state=S.RUNNING)
    assert not states.claim(job.pk, S.SUCCEEDED, guard={"attempt": 1, "token": "stale"})
    job.refresh_from_db()
    assert job.state == S.RUNNING


def test_a_claim_can_narrow_its_sources(cast):
    job = make_job(cast.alice, state=S.RUNNING)
    assert not states.claim(job.pk, S.CANCELLED, source={S.QUEUED})
    assert states.claim(job.pk, S.CANCELLED, source={S.QUEUED, S.RUNNING})


def test_a_claim_for_a_move_nothing_allows_is_a_programming_error(cast):
    job = make_job(cast.alice)
    with pytest.raises(ValueError):
        states.claim(job.pk, S.SUCCEEDED, source={S.QUEUED})


@pytest.mark.django_db(transaction=True)
def test_of_two_concurrent_claims_exactly_one_wins(django_user_model):
    owner = django_user_model.objects.create_user("racer")
    for _ in range(10):
        job = make_job(owner, state=S.RUNNING)
        barrier = threading.Barrier(2)
        results = []

        def race(target, job_id=job.pk, barrier=barrier, results=results):
            barrier.wait()
            try:
                results.append((target, states.claim(job_id, target)))
            finally:
                connection.close()

        threads = [threading.Thread(target=race, args=(t,)) for t in (S.SUCCEEDED, S.CANCELLED)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [target for target, won in results if won]
        job.refresh_from_db()
        assert len(winners) == 1
        assert job.state == winners[0]


def test_many_jobs_move_in_one_claim_each_with_its_own_fields(cast):
    jobs = [make_job(cast.alice) for _ in range(3)]
    moved_elsewhere = make_job(cast.alice, state=S.CANCELLED)
    rows = {job.pk: {"node": f"w{job.pk}"} for job in jobs + [moved_elsewhere]}
    tokens = {job_id: "t1" for job_id in rows}
    won = states.claim_many(rows, path=[S.QUEUED, S.RUNNING, S.SUCCEEDED], token=tokens)
    assert won == {job.pk for job in jobs}
    for job in jobs:
        job.refresh_from_db()
        assert (job.state, job.node) == (S.SUCCEEDED, f"w{job.pk}")
    moved_elsewhere.refresh_from_db()
    assert (moved_elsewhere.state, moved_elsewhere.node) == (S.CANCELLED, "")


def test_a_batch_claim_refuses_a_path_with_a_forbidden_step(cast):
    job = make_job(cast.alice)
    with pytest.raises(ValueError):
        states.claim_many({job.pk: {}}, path=[S.QUEUED, S.SUCCEEDED], token={job.pk: "t1"})


def test_a_batch_claim_checks_each_rows_token(cast):
    job = make_job(cast.alice)
    assert states.claim_many({job.pk: {}}, path=[S.QUEUED, S.RUNNING],
                             token={job.pk: "stale"}) == set()


# --- attempts, and the moves with what follows them ---------------------------------------

A = AttemptState
ATTEMPT_ALLOWED = {
    (A.QUEUED, A.RUNNING), (A.QUEUED, A.SUCCEEDED), (A.QUEUED, A.FAILED),
    (A.QUEUED, A.CANCELLED), (A.QUEUED, A.LOST),
    (A.RUNNING, A.SUCCEEDED), (A.RUNNING, A.FAILED), (A.RUNNING, A.CANCELLED),
    (A.RUNNING, A.LOST),
}
ATTEMPT_PAIRS = [(a, b) for a in A.values for b in A.values if a != b]


@pytest.mark.parametrize(("source", "target"), ATTEMPT_PAIRS)
def test_an_attempt_moves_only_along_the_attempt_table(cast, source, target):
    job = make_job_with_attempt(cast.alice, state=S.RUNNING)
    Attempt.objects.filter(job=job).update(state=source)
    won = (states.claim_attempt(job.pk, 1, target)
           if states.sources(target, table=states.ATTEMPT_MOVES) else False)
    attempt = Attempt.objects.get(job=job, number=1)
    assert won == ((source, target) in ATTEMPT_ALLOWED)
    assert attempt.state == (target if won else source)


def test_the_attempt_table_is_the_documented_one():
    table = {(a, b) for a in A.values for b in A.values
             if states.allowed(a, b, table=states.ATTEMPT_MOVES)}
    assert table == ATTEMPT_ALLOWED


WRITES = {"update", "create", "bulk_create", "get_or_create", "update_or_create"}


def state_writes(path: Path) -> list[str]:
    """Calls in a module that write a job's or an attempt's state: an update or create on
    Job/Attempt naming `state`, or the lifecycle's own claim primitives."""
    source = path.read_text()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        text = ast.get_source_segment(source, node) or ""
        on_jobs = re.search(r"\b(Job|Attempt)\b", text)
        if node.func.attr in WRITES and on_jobs and any(k.arg == "state" for k in node.keywords):
            found.append(f"{path}:{node.lineno}")
        if node.func.attr in {"claim", "claim_many", "claim_attempt", "update_rows"}:
            found.append(f"{path}:{node.lineno}")
    return found


def test_the_lifecycle_is_the_only_writer_of_job_and_attempt_states():
    root = Path(__file__).resolve().parents[1]
    modules = [path for package in ("jobs", "accounts", "schedules", "alerts", "audit",
                                    "portal", "workers", "cli")
               for path in (root / package).rglob("*.py") if "migrations" not in path.parts]
    assert len(modules) > 50
    writers = [w for path in modules if path.name != "lifecycle.py"
               for w in state_writes(path)]
    assert writers == []
    assert state_writes(root / "jobs" / "lifecycle.py")  # the check does see writes


def test_a_lost_last_attempt_is_fenced_off_even_though_it_was_the_latest(cast, redis_client):
    job = make_job_with_attempt(cast.alice, state=S.RUNNING, lease_ago=5, max_attempts=1)
    assert states.lose(job, timezone.now())
    job.refresh_from_db()
    assert job.state == S.FAILED and job.attempt == 1 and job.token != "tok1"
    apply_events([{"t": "log", "job": job.pk, "a": 1, "k": "tok1", "ts": time.time(),
                   "seq": 9, "text": "done"},
                  {"t": "finished", "job": job.pk, "a": 1, "k": "tok1", "ts": time.time(),
                   "outcome": "succeeded"}])
    assert not LogLine.objects.filter(job=job).exists()
    job.refresh_from_db()
    assert job.state == S.FAILED
    assert Attempt.objects.get(job=job, number=1).state == A.LOST


def test_losing_an_attempt_tells_its_node_to_stop_it(cast, redis_client,
                                                     django_capture_on_commit_callbacks):
    job = make_job_with_attempt(cast.alice, state=S.RUNNING, lease_ago=5)
    with django_capture_on_commit_callbacks(execute=True):
        assert states.lose(job, timezone.now())
    assert redis_client.exists(protocol.stop_key(job.pk, 1))
    assert not redis_client.exists(protocol.stop_key(job.pk, 2))


def test_a_fan_out_parent_failed_by_a_lost_node_cancels_its_partitions(
        cast, redis_client, django_capture_on_commit_callbacks):
    parent = make_job_with_attempt(cast.alice, state=S.RUNNING, lease_ago=5, max_attempts=1,
                                   kind="diag.fanout")
    children = [make_job_with_attempt(cast.alice, state=state, parent=parent, partition=i,
                                      kind="diag.part")
                for i, state in enumerate((S.QUEUED, S.RUNNING, S.SUCCEEDED))]
    with django_capture_on_commit_callbacks(execute=True):
        assert states.lose(parent, timezone.now())
    assert [Job.objects.get(pk=c.pk).state for c in children] == [
        S.CANCELLED, S.RUNNING, S.SUCCEEDED]
    assert Job.objects.get(pk=children[1].pk).cancel_requested_at is not None
    assert redis_client.exists(protocol.cancel_key(children[1].pk))


def test_a_heartbeat_naming_attempts_the_portal_gave_up_tells_the_node_to_stop_them(
        cast, redis_client, django_capture_on_commit_callbacks):
    moved = make_job_with_attempt(cast.alice, state=S.QUEUED, attempt=2)  # attempt 1 was lost
    ended = make_job_with_attempt(cast.alice, state=S.SUCCEEDED)
    current = make_job_with_attempt(cast.alice, state=S.RUNNING, lease_ago=-10)
    beat = {"t": "heartbeat", "node": "w1", "ts": time.time(), "attempts": [
        [moved.pk, 1, "tok1"], [ended.pk, 1, "tok1"], [current.pk, 1, "tok1"]]}
    with django_capture_on_commit_callbacks(execute=True):
        apply_events([beat])
    assert redis_client.exists(protocol.stop_key(moved.pk, 1))
    assert redis_client.exists(protocol.stop_key(ended.pk, 1))
    assert not redis_client.exists(protocol.stop_key(current.pk, 1))


def test_a_stopped_attempt_never_starts_on_any_node(cast, redis_client):
    from workers import runner
    from workers.events import EventSink

    spec = protocol.AttemptSpec(job=1234, attempt=1, token="tok1", kind="diag.noop", params={})
    redis_client.set(protocol.stop_key(1234, 1), 1)
    outcome = runner.run(spec, node="w1", worker="w1@box", sink=EventSink(redis_client),
                         client=redis_client)
    assert outcome == "skipped"
    assert not redis_client.exists(protocol.start_key(1234, 1))


# What an error message may hold: quotes, commas, braces and backslashes (an array literal's own
# syntax), a NULL-looking word, a line break, and text beyond ASCII.
HARD_TEXT = 'a "quoted", {braced} NULL \\ back\nslash, ü'


def test_update_rows_gives_each_row_its_own_values_and_keeps_what_a_row_leaves_out(cast):
    a, b, c = (make_job(cast.alice, S.RUNNING, message="m", progress=0.1) for _ in range(3))
    now = timezone.now()
    moved = states.update_rows(
        Job,
        {a.pk: {"progress": 0.5, "message": HARD_TEXT, "labels": {"gpu": "a100"}},
         b.pk: {"progress": 0.9, "finished_at": now},  # message and labels left as they are
         c.pk: {"progress": 1.0, "message": "other"}},
        where={"state": [S.RUNNING, S.QUEUED]},
        match={"token": {a.pk: a.token, b.pk: b.token, c.pk: "not its token"}})
    assert moved == {a.pk, b.pk}  # c's token does not match: it is left alone
    for job in (a, b, c):
        job.refresh_from_db()
    assert (a.progress, a.message, a.labels, a.finished_at) == \
        (0.5, HARD_TEXT, {"gpu": "a100"}, None)
    assert (b.progress, b.message, b.labels, b.finished_at) == (0.9, "m", {}, now)
    assert (c.progress, c.message) == (0.1, "m")
    # A token compared whole: one past the column's length is not cut down to one that matches.
    full = "x" * Job._meta.get_field("token").max_length
    Job.objects.filter(pk=a.pk).update(token=full)
    assert states.update_rows(Job, {a.pk: {"message": "y"}},
                              match={"token": {a.pk: full + "EXTRA"}}) == set()
    assert states.update_rows(Job, {a.pk: {"message": "y"}}, match={"token": {a.pk: full}}) == \
        {a.pk}
    # A row not in the state `where` names does not move either.
    assert states.update_rows(Job, {a.pk: {"message": "x"}}, where={"state": S.QUEUED}) == set()
    # Another key: the attempts by their token.
    attempt = make_job_with_attempt(cast.alice, state=S.RUNNING).attempts.get()
    assert states.update_rows(Attempt, {attempt.token: {"node": "n9"}}, key="token") == \
        {attempt.token}
    attempt.refresh_from_db()
    assert attempt.node == "n9"


def test_update_rows_says_the_same_statement_for_three_rows_as_for_fifty(cast):
    """The driver parses a statement once per text: the rows' count must not change it."""
    from django.test.utils import CaptureQueriesContext

    jobs = [make_job(cast.alice, S.RUNNING) for _ in range(50)]
    texts = []
    for some in (jobs[:3], jobs):
        with CaptureQueriesContext(connection) as queries:
            moved = states.update_rows(Job, {job.pk: {"progress": 0.5, "message": "x"}
                                             for job in some}, where={"state": S.RUNNING},
                                       match={"token": {job.pk: job.token for job in some}})
        assert moved == {job.pk for job in some}
        texts.append(queries.captured_queries[0]["sql"])
    if connection.vendor == "postgresql":
        # The captured text has the values in it: compare it with them taken out.
        shapes = [re.sub(r"'[^']*'", "?", text) for text in texts]
        assert shapes[0] == shapes[1]
    assert Job.objects.filter(progress=0.5, message="x").count() == 50
