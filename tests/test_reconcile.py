"""The reconciler: lost attempts, lost messages, forgotten cancels, silent nodes."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.ingest import ALIVE_KEY
from jobs.models import Attempt, Job, JobState
from nodes.models import Node
from portal.reconciler import Reconciler
from tests.factories import make_job
from workers import protocol


def reconcile_once():
    return Reconciler().once()


@pytest.fixture
def caught_up(redis_client):
    """An ingester that is alive and has read everything."""
    redis_client.xgroup_create(protocol.EVENTS_STREAM, protocol.INGEST_GROUP, id="0",
                               mkstream=True)
    redis_client.set(ALIVE_KEY, time.time())
    return redis_client


def test_a_lost_attempt_goes_back_to_the_queue_as_the_next_attempt(
        cast, caught_up, django_capture_on_commit_callbacks):
    job = make_job(cast.alice, JobState.RUNNING, lease_ago=5)
    with django_capture_on_commit_callbacks(execute=True):
        assert reconcile_once()["lost"] == 1
    job.refresh_from_db()
    assert (job.state, job.attempt, job.node) == ("queued", 2, "")
    assert job.token != "tok1"
    assert job.message == "node w1 lost; moved back to the queue as attempt 2 of 3"
    assert Attempt.objects.get(job=job, number=1).state == "lost"
    assert Attempt.objects.get(job=job, number=2).token == job.token
    # The new attempt is on its way: marked and in the cpu queue.
    assert caught_up.zscore(protocol.DISPATCHED, protocol.dispatch_member(job.pk, 2))
    assert caught_up.llen("cpu") == 1


def test_a_lost_last_attempt_fails_the_job_saying_the_node_was_lost(cast, caught_up):
    job = make_job(cast.alice, JobState.RUNNING, lease_ago=5, attempt=3, max_attempts=3)
    reconcile_once()
    job.refresh_from_db()
    assert job.state == "failed"
    assert job.error == "node w1 lost during attempt 3 of 3"


def test_a_lost_attempt_of_a_cancelled_job_ends_it_cancelled(cast, caught_up):
    job = make_job(cast.alice, JobState.RUNNING, lease_ago=5,
                   cancel_requested_at=timezone.now())
    reconcile_once()
    job.refresh_from_db()
    assert job.state == "cancelled"


def test_a_live_lease_is_left_alone(cast, caught_up):
    job = make_job(cast.alice, JobState.RUNNING, lease_ago=-10)
    reconcile_once()
    job.refresh_from_db()
    assert (job.state, job.attempt) == ("running", 1)


def test_no_lease_expires_while_the_ingester_is_down_or_behind(cast, redis_client):
    job = make_job(cast.alice, JobState.RUNNING, lease_ago=5)
    reconcile_once()  # no ingester has ever said it is alive
    redis_client.xgroup_create(protocol.EVENTS_STREAM, protocol.INGEST_GROUP, id="0",
                               mkstream=True)
    redis_client.set(ALIVE_KEY, time.time())
    pipe = redis_client.pipeline()
    for _ in range(1200):
        pipe.xadd(protocol.EVENTS_STREAM, {"b": "[]"})
    pipe.execute()
    reconcile_once()  # alive, but 1200 entries behind
    job.refresh_from_db()
    assert (job.state, job.attempt) == ("running", 1)


def queued_job(owner, *, dispatched_ago):
    return make_job(owner, dispatched_at=timezone.now() - timedelta(seconds=dispatched_ago))


def test_a_queued_job_whose_message_redis_lost_is_sent_again(cast, caught_up):
    lost = queued_job(cast.alice, dispatched_ago=60)
    waiting = queued_job(cast.alice, dispatched_ago=4)  # marked, within the visibility timeout
    fresh = queued_job(cast.alice, dispatched_ago=0)
    caught_up.zadd(protocol.DISPATCHED, {protocol.dispatch_member(waiting.pk, 1): time.time()})
    reconciler = Reconciler()
    assert reconciler.once()["resent"] == 0  # a first sighting might be a job that just started
    assert reconciler.once()["resent"] == 1
    assert caught_up.llen("cpu") == 1
    assert caught_up.zscore(protocol.DISPATCHED, protocol.dispatch_member(lost.pk, 1))
    fresh.refresh_from_db()
    lost.refresh_from_db()
    assert lost.dispatched_at > fresh.dispatched_at - timedelta(seconds=1)
    assert reconciler.once()["resent"] == 0  # now marked again


def test_a_marked_message_that_no_queue_or_worker_holds_is_sent_again_after_the_timeout(
        cast, caught_up):
    """A node that popped a message just as its link was cut never got it: its marker stays,
    but past the broker's visibility timeout it is in no queue and in no worker's hands."""
    from jobs.dispatch import attempt_spec, send

    gone = queued_job(cast.alice, dispatched_ago=60)
    there = queued_job(cast.alice, dispatched_ago=60)
    send([(attempt_spec(there), "cpu")])  # still waiting in its queue
    caught_up.zadd(protocol.DISPATCHED, {protocol.dispatch_member(gone.pk, 1): time.time()})
    assert Reconciler().once()["resent"] == 1
    gone.refresh_from_db()
    there.refresh_from_db()
    assert gone.dispatched_at > timezone.now() - timedelta(seconds=5)
    assert there.dispatched_at < timezone.now() - timedelta(seconds=50)
    assert caught_up.llen("cpu") == 2  # `there`'s message, and `gone`'s sent again


def test_a_queued_job_that_starts_between_two_passes_is_not_sent_again(cast, caught_up):
    job = queued_job(cast.alice, dispatched_ago=60)
    reconciler = Reconciler()
    reconciler.once()
    Job.objects.filter(pk=job.pk).update(state=JobState.RUNNING,
                                         lease_expires_at=timezone.now() + timedelta(minutes=1))
    assert reconciler.once()["resent"] == 0
    assert caught_up.llen("cpu") == 0


def test_a_cancel_that_redis_forgot_is_raised_again(cast, caught_up):
    job = make_job(cast.alice, JobState.RUNNING, lease_ago=-10,
                   cancel_requested_at=timezone.now())
    reconcile_once()
    assert caught_up.exists(protocol.cancel_key(job.pk))


def test_a_silent_node_goes_offline(db, redis_client):
    Node.objects.create(name="w7", last_heartbeat=timezone.now() - timedelta(minutes=5))
    Node.objects.create(name="w8", last_heartbeat=timezone.now())
    assert reconcile_once()["offline"] == 1
    assert dict(Node.objects.values_list("name", "state")) == {"w7": "offline", "w8": "online"}
