"""The ingester's writes: idempotent, fenced by attempt and token, coalesced, after-commit."""

import json
import threading
import time

import psycopg
import pytest
from django.db import connection

from jobs import admission
from jobs.ingest import Batch, Ingester, apply_events
from jobs.models import Attempt, Job, JobState, LogLine, MetricPoint
from nodes.models import Node
from tests.factories import make_job
from workers import protocol


@pytest.fixture
def job(cast):
    return make_job(cast.alice, team=cast.ml, kind="diag.sleep", timeout_s=60)


def ev(job, kind, attempt=1, token="tok1", **fields):
    return {"type": kind, "job": job.pk, "attempt": attempt, "token": token, "ts": time.time(),
            **fields}


def life(job, **finish):
    return [
        ev(job, "started", node="w1", worker="w1@box"),
        ev(job, "progress", fraction=0.5, done=1, total=2, unit="s", message=""),
        ev(job, "log", seq=1, level="info", text="hello"),
        ev(job, "metric", name="loss", value=0.5, step=0),
        ev(job, "progress", fraction=1.0, done=2, total=2, unit="s", message=""),
        ev(job, "finished", outcome=finish.get("outcome", "succeeded"),
           result={"ok": True}, error=finish.get("error", "")),
    ]


def test_a_job_life_is_written_in_one_batch(job):
    apply_events(life(job))
    job.refresh_from_db()
    assert job.state == "succeeded" and job.progress == 1.0 and job.result == {"ok": True}
    assert job.node == "w1" and job.started_at and job.finished_at
    assert LogLine.objects.get(job=job).text == "hello"
    assert MetricPoint.objects.get(job=job).value == 0.5
    attempt = Attempt.objects.get(job=job, number=1)
    assert attempt.state == "succeeded" and attempt.worker == "w1@box"


def test_the_same_events_applied_twice_change_nothing_more(job):
    events = life(job)
    apply_events(events)
    first = Job.objects.filter(pk=job.pk).values().get()
    apply_events(events)
    assert Job.objects.filter(pk=job.pk).values().get() == first
    assert LogLine.objects.filter(job=job).count() == 1
    assert MetricPoint.objects.filter(job=job).count() == 1


def test_events_of_a_superseded_attempt_change_nothing(job):
    apply_events([ev(job, "started", node="w1")])
    Job.objects.filter(pk=job.pk).update(attempt=2, token="tok2", state=JobState.QUEUED)
    apply_events([ev(job, "log", seq=5, text="stale"),
                  ev(job, "finished", outcome="failed", error="stale failure")])
    apply_events([ev(job, "finished", attempt=2, token="wrong", outcome="succeeded")])
    job.refresh_from_db()
    assert (job.state, job.attempt, job.error) == ("queued", 2, "")
    assert not LogLine.objects.filter(job=job).exists()


def test_a_job_whose_cancel_was_requested_never_ends_succeeded(job):
    apply_events([ev(job, "started", node="w1")])
    Job.objects.filter(pk=job.pk).update(cancel_requested_at=job.created_at)
    apply_events([ev(job, "finished", outcome="succeeded", result={"ok": True})])
    job.refresh_from_db()
    assert job.state == "cancelled" and job.result is None


def test_a_failure_is_recorded_with_its_error(job):
    apply_events(life(job, outcome="failed", error="ValueError: bad row"))
    job.refresh_from_db()
    assert job.state == "failed" and job.error == "ValueError: bad row"
    assert Attempt.objects.get(job=job).state == "failed"


def test_progress_is_coalesced_to_the_latest(job):
    apply_events([ev(job, "started", node="w1")] +
                 [ev(job, "progress", fraction=i / 10, done=i, total=10, unit="", message="")
                  for i in range(11)])
    job.refresh_from_db()
    assert job.progress == 1.0 and job.message == "10 / 10"


def test_a_heartbeat_renews_the_leases_of_the_attempts_it_holds_only(job, cast):
    other = make_job(cast.alice, JobState.RUNNING, team=cast.ml, kind="diag.sleep",
                     timeout_s=60, token="other", attempt_row=False)
    apply_events([ev(job, "started", node="w1")])
    Job.objects.filter(pk=job.pk).update(lease_expires_at=None)
    apply_events([{"t": "heartbeat", "node": "w1", "worker": "w1@box", "ts": time.time(),
                   "attempts": [[job.pk, 1, "tok1"], [other.pk, 1, "forged"]],
                   "queues": ["cpu"], "concurrency": 2, "util": {"cpu": 12.5}}])
    job.refresh_from_db()
    other.refresh_from_db()
    assert job.lease_expires_at is not None and other.lease_expires_at is None
    node = Node.objects.get(name="w1")
    assert node.state == "online" and node.running == 2 and node.utilization == {"cpu": 12.5}


def test_broadcasts_wait_for_the_commit(job, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        outbox = Batch(life(job)).apply()
    # Nothing is published from inside the transaction (apply_events publishes on commit);
    # the callback, once it is committed, lets jobs that waited for this one move on (those
    # that waited for the place it held were admitted in the batch's own transaction).
    assert outbox.groups[f"job-{job.pk}"] and len(callbacks) == 1
    with django_capture_on_commit_callbacks() as callbacks:
        apply_events([ev(job, "log", seq=2, text="more")])
    assert len(callbacks) == 1


def test_a_jobs_end_admits_its_successor_in_the_same_transaction(
        job, successor, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        Batch([ev(job, "finished", outcome="succeeded")]).apply()
        # Before anything runs after the commit, the successor holds the slot the job left:
        # the batch that recorded the end also admitted it.
        successor.refresh_from_db()
        assert successor.state == JobState.QUEUED and successor.dispatched_at is not None
    assert Job.objects.get(pk=job.pk).state == JobState.SUCCEEDED
    assert run_after_commit(callbacks, django_capture_on_commit_callbacks) == [successor.pk]


@pytest.fixture
def successor(job, cast, settings):
    """The job runs on w1's one slot, and another of ml's waits for it."""
    settings.ADMIT_AHEAD = 0
    settings.ADMIT_AHEAD_S = 0
    Node.objects.create(name="w1", queues=["cpu"], concurrency=1)
    apply_events([ev(job, "started", node="w1")])
    return make_job(cast.alice, JobState.PENDING, team=cast.ml, token="t2")


def run_after_commit(callbacks, capture) -> list[int]:
    """Run what waited for the commit (and what that leaves for its own commit): the jobs it
    sent to the workers."""
    sent = []
    with pytest.MonkeyPatch.context() as patch, capture(execute=True):
        patch.setattr("jobs.dispatch.send", sent.append)
        for callback in callbacks:
            callback()
    return [spec.job for batch in sent for spec, _ in batch]


def test_a_pass_that_fails_in_the_batch_leaves_the_end_and_runs_after_the_commit(
        job, successor, monkeypatch, caplog, django_capture_on_commit_callbacks):
    real, calls = admission.held, []

    def fails_once():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in admission")
        return real()

    monkeypatch.setattr(admission, "held", fails_once)
    with django_capture_on_commit_callbacks() as callbacks:
        apply_events([ev(job, "finished", outcome="succeeded")])
        # The end is written; what the failed pass did is undone.
        assert Job.objects.get(pk=job.pk).state == JobState.SUCCEEDED
        assert Job.objects.get(pk=successor.pk).state == JobState.PENDING
    assert "admission pass" in caplog.text
    assert run_after_commit(callbacks, django_capture_on_commit_callbacks) == [successor.pk]
    assert Job.objects.get(pk=successor.pk).state == JobState.QUEUED


def test_while_another_pass_holds_the_lock_the_successor_is_admitted_after_the_commit(
        job, successor, django_capture_on_commit_callbacks):
    db = connection.settings_dict
    with psycopg.connect(dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"],
                         host=db["HOST"], port=db["PORT"], autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", [admission.LOCK_KEY])
        with django_capture_on_commit_callbacks() as callbacks:
            apply_events([ev(job, "finished", outcome="succeeded")])  # does not wait for it
        assert Job.objects.get(pk=job.pk).state == JobState.SUCCEEDED
        assert Job.objects.get(pk=successor.pk).state == JobState.PENDING
        other.execute("SELECT pg_advisory_unlock(%s)", [admission.LOCK_KEY])
    assert run_after_commit(callbacks, django_capture_on_commit_callbacks) == [successor.pk]
    assert Job.objects.get(pk=successor.pk).state == JobState.QUEUED


def test_a_malformed_event_is_dropped_without_blocking_the_others(job, redis_client):
    batch = [{"t": "log", "job": job.pk, "a": 1, "k": "tok1", "ts": time.time()},  # no seq
             ev(job, "started", node="w1")]
    redis_client.xadd(protocol.EVENTS_STREAM, {"b": json.dumps(batch)})
    redis_client.xadd(protocol.EVENTS_STREAM, {"b": "not json"})
    ingester = Ingester(consumer="test")
    ingester.ensure_group()
    while ingester.replay:
        ingester.step()
    ingester.step()
    job.refresh_from_db()
    assert job.state == "running"
    assert redis_client.xlen(protocol.EVENTS_STREAM) == 0


def _beat(name: str) -> dict:
    return {"b": json.dumps([{"type": "heartbeat", "node": name, "worker": f"{name}@box",
                              "ts": time.time(), "attempts": [], "util": {}}])}


def _add_later(redis_client, *entries: tuple[float, dict]) -> threading.Thread:
    def add():
        for delay, fields in entries:
            time.sleep(delay)
            redis_client.xadd(protocol.EVENTS_STREAM, fields)

    thread = threading.Thread(target=add)
    thread.start()
    return thread


def test_heartbeats_wait_a_moment_for_others_and_a_jobs_event_ends_the_wait(
        job, redis_client, monkeypatch, published, django_capture_on_commit_callbacks):
    ingester = Ingester(consumer="test")
    ingester.ensure_group()
    while ingester.replay:
        ingester.step()
    # Nodes beating a few milliseconds apart share one batch.
    monkeypatch.setattr("jobs.ingest.HEARTBEAT_GATHER_S", 0.5)
    redis_client.xadd(protocol.EVENTS_STREAM, _beat("g1"))
    adding = _add_later(redis_client, (0.05, _beat("g2")), (0.05, _beat("g3")))
    assert ingester.step() == 3
    adding.join()
    assert set(Node.objects.values_list("name", flat=True)) == {"g1", "g2", "g3"}
    # A job's event is not held back: it ends the wait, and what comes after is the next batch.
    monkeypatch.setattr("jobs.ingest.HEARTBEAT_GATHER_S", 30)
    redis_client.xadd(protocol.EVENTS_STREAM, _beat("g1"))
    adding = _add_later(redis_client,
                        (0.1, {"b": json.dumps([ev(job, "started", node="g1")])}),
                        (1.0, _beat("g4")))
    published.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert ingester.step() == 2
    # ...and goes out first, in a batch of its own, not after the nodes gathered with it.
    assert [sorted({e["type"] for events in groups.values() for e in events})
            for groups in published] == [["job.state"], ["node.health"]]
    job.refresh_from_db()
    assert job.state == "running"
    assert not Node.objects.filter(name="g4").exists()
    monkeypatch.setattr("jobs.ingest.HEARTBEAT_GATHER_S", 0.1)
    adding.join()
    assert ingester.step() == 1
    assert Node.objects.filter(name="g4").exists()


def test_a_finish_whose_start_was_lost_still_ends_the_job(job):
    apply_events([ev(job, "finished", outcome="succeeded", result=None)])
    job.refresh_from_db()
    assert job.state == "succeeded" and job.started_at is not None


def test_many_jobs_in_one_batch_each_get_their_own_outcome(cast):
    jobs = []
    for i in range(20):
        jobs.append(make_job(cast.alice, team=cast.ml, timeout_s=60, token=f"tok-{i}"))
    events = []
    for i, j in enumerate(jobs):
        events.append(ev(j, "started", token=f"tok-{i}", node=f"w{i % 2}"))
    for i, j in enumerate(jobs):
        outcome = "succeeded" if i % 2 else "failed"
        events.append(ev(j, "finished", token=f"tok-{i}", outcome=outcome, result={"i": i},
                         error="" if i % 2 else f"boom {i}"))
    apply_events(events)
    for i, j in enumerate(jobs):
        j.refresh_from_db()
        if i % 2:
            assert (j.state, j.result, j.node) == ("succeeded", {"i": i}, f"w{i % 2}")
        else:
            assert (j.state, j.error, j.result) == ("failed", f"boom {i}", None)
        assert Attempt.objects.get(job=j).state == j.state


def test_a_jobs_last_progress_goes_out_before_its_end(job):
    outbox = Batch(life(job)).apply()
    kinds = [(e["type"], e.get("state")) for e in outbox.groups[f"job-{job.pk}"]
             if e["type"] in ("job.state", "job.progress")]
    assert kinds == [("job.state", "running"), ("job.progress", None),
                     ("job.state", "succeeded")]


def test_a_late_heartbeat_neither_moves_a_node_back_nor_wakes_it(db):
    now = time.time()
    beat = {"t": "heartbeat", "node": "w5", "worker": "w5@box", "attempts": [], "util": {}}
    apply_events([{**beat, "ts": now}])
    apply_events([{**beat, "ts": now - 30}])  # a replayed copy from before
    node = Node.objects.get(name="w5")
    assert abs(node.last_heartbeat.timestamp() - now) < 0.01
    Node.objects.filter(pk=node.pk).update(state="offline")
    apply_events([{**beat, "ts": now + 0.5}])  # a fresh one: back online
    assert Node.objects.get(pk=node.pk).state == "online"
    Node.objects.filter(pk=node.pk).update(state="offline", last_heartbeat=None)
    apply_events([{**beat, "ts": now - 600}])  # a backlog replayed after an outage
    assert Node.objects.get(pk=node.pk).state == "offline"


def test_a_batch_of_heartbeats_costs_the_same_queries_for_two_nodes_as_for_forty(db):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def beats(count, ts):
        return [{"t": "heartbeat", "node": f"h{i}", "worker": f"h{i}@box", "ts": ts,
                 "attempts": [], "util": {"cpu": float(i)}, "concurrency": 2}
                for i in range(count)]

    now = time.time()
    apply_events(beats(40, now))  # each node's first heartbeat makes its row
    costs = []
    for count in (2, 40):
        with CaptureQueriesContext(connection) as queries:
            apply_events(beats(count, now + count))
        costs.append(len(queries))
    assert costs[0] == costs[1]
    nodes = {node.name: node for node in Node.objects.filter(name__startswith="h")}
    assert len(nodes) == 40
    assert nodes["h1"].last_heartbeat.timestamp() == pytest.approx(now + 40, abs=0.01)
    assert nodes["h39"].utilization == {"cpu": 39.0} and nodes["h39"].concurrency == 2
    assert nodes["h39"].last_heartbeat.timestamp() == pytest.approx(now + 40, abs=0.01)


def test_an_entry_written_before_version_2_is_read_with_its_one_letter_names(job):
    from jobs.ingest import decode

    old = {"b": json.dumps([{"t": "started", "job": job.pk, "a": 1, "k": "tok1",
                             "ts": time.time(), "node": "w1", "worker": "w1@box"},
                            {"t": "progress", "job": job.pk, "a": 1, "k": "tok1",
                             "ts": time.time(), "p": 0.5, "msg": "half", "done": 1,
                             "total": 2, "unit": "s"}])}
    events = decode(old)
    assert [e["type"] for e in events] == ["started", "progress"]
    assert events[1]["fraction"] == 0.5 and events[1]["message"] == "half"
    apply_events(events)
    job.refresh_from_db()
    assert (job.state, job.progress, job.message) == ("running", 0.5, "half")


def test_events_that_do_not_match_their_type_are_refused_where_they_are_built():
    from workers import wire
    from workers.events import EventSink

    assert wire.checking()  # the tests check every event every process builds
    with pytest.raises(wire.WireError):
        EventSink().emit({"type": "log", "job": 1, "attempt": 1, "token": "t", "seq": 1})
    with pytest.raises(wire.WireError):
        wire.check_live({"type": "job.state", "job": "1", "state": "running"})
    with pytest.raises(wire.WireError):
        wire.check_stream({"type": "no.such.event"})
    wire.check_stream({"type": "lease", "job": 1, "attempt": 1, "token": "t", "ts": 1.0})


def test_a_time_limit_striking_while_an_event_is_checked_is_not_taken_for_a_bad_event(
        monkeypatch):
    from celery.exceptions import SoftTimeLimitExceeded

    from workers import wire

    class Interrupted:
        def validate_python(self, *args, **kwargs):
            raise SoftTimeLimitExceeded()  # Celery's signal, raised wherever the job is

    monkeypatch.setattr(wire, "_adapter", lambda kind: Interrupted())
    with pytest.raises(SoftTimeLimitExceeded):
        wire.check_stream({"type": "lease", "job": 1, "attempt": 1, "token": "t", "ts": 1.0})


def test_the_ingester_counts_its_batches_events_and_busy_time_where_a_benchmark_reads_them(
        job, redis_client):
    ingester = Ingester(consumer="counted")
    ingester.ensure_group()
    while ingester.replay:
        ingester.step()
    key = protocol.INGEST_STATS + "counted"
    redis_client.delete(key)
    redis_client.xadd(protocol.EVENTS_STREAM, {"b": json.dumps([ev(job, "started", node="n1")])})
    redis_client.xadd(protocol.EVENTS_STREAM, _beat("n1"))
    first = ingester.step()
    redis_client.xadd(protocol.EVENTS_STREAM, {"b": json.dumps(
        [ev(job, "finished", outcome="succeeded", result=None)])})
    second = ingester.step()
    assert ingester.step() == 0  # an empty read is no batch
    stats = {k.decode(): v.decode() for k, v in redis_client.hgetall(key).items()}
    assert int(stats["batches"]) == 2
    assert int(stats["events"]) == first + second == 3
    assert 0 < float(stats["busy_s"]) < 30
    assert stats["consumer"] == "counted"
    assert 0 < redis_client.ttl(key) <= 24 * 3600
    job.refresh_from_db()
    assert job.state == "succeeded"


def test_a_counter_that_cannot_be_written_never_stops_a_batch(job, redis_client):
    ingester = Ingester(consumer="uncounted")
    ingester.ensure_group()
    while ingester.replay:
        ingester.step()
    redis_client.set(protocol.INGEST_STATS + "uncounted", "not a hash")  # HSET: WRONGTYPE
    redis_client.xadd(protocol.EVENTS_STREAM, {"b": json.dumps([ev(job, "started", node="n1")])})
    assert ingester.step() == 1
    job.refresh_from_db()
    assert job.state == "running"
    # Acknowledged and gone from the stream all the same: nothing is read twice.
    assert redis_client.xlen(protocol.EVENTS_STREAM) == 0
    assert redis_client.xpending(protocol.EVENTS_STREAM, protocol.INGEST_GROUP)["pending"] == 0
