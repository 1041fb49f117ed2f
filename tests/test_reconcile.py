"""The reconciler: lost attempts, lost messages (a gang's ranks' too), forgotten cancels,
silent nodes."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import dispatch, ingest
from jobs import reconcile as recovery
from jobs.ingest import ALIVE_KEY
from jobs.models import Attempt, AttemptRank, Job, JobState
from nodes.models import Node, NodeState
from portal.reconciler import Reconciler
from tests.factories import make_job
from tests.test_gangs import admitted, events_for, gang, nodes
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


def gang_started_on_n1(api, *, dispatched_ago=60):
    """A gang of two on n1 and n2 whose rank 0 started (and reported where it listens) and
    whose rank 1 has not."""
    nodes("n1", "n2")
    job = admitted(api, gang(nodes=2), "n1", "n2")
    ingest.apply_events(events_for(job, 0, "started", "rendezvous"))
    Job.objects.filter(pk=job.pk).update(
        dispatched_at=timezone.now() - timedelta(seconds=dispatched_ago))
    job.refresh_from_db()
    assert job.state == JobState.RUNNING, job.message
    assert dict(AttemptRank.objects.filter(job=job).values_list("rank", "node")) == {
        0: "n1", 1: "n2"}
    return job


def task_ids(client, queue):
    return [found for raw in client.lrange(queue, 0, -1)
            for found in recovery.TASK_ID.findall(raw)]


def test_a_lost_rank_message_is_sent_again_to_its_node_alone(api, caught_up):
    """One rank's message went to its node's blocked BRPOP as the link was cut: its marker
    stays, no queue has it and no worker holds it. Past the visibility timeout, that rank
    alone is sent again, to its own node; the rank already running is left alone, and the
    rendezvous that a restarted Redis forgot is published again from the database."""
    job = gang_started_on_n1(api)
    caught_up.zadd(protocol.DISPATCHED, {protocol.dispatch_member(job.pk, 1, 1): time.time()})
    assert Reconciler().once()["resent"] == 1
    assert task_ids(caught_up, protocol.node_queue("n2")) == [
        dispatch.task_id(job.pk, 1, job.token, 1).encode()]
    assert caught_up.llen(protocol.node_queue("n1")) == 0
    job.refresh_from_db()
    assert (job.state, job.attempt) == (JobState.RUNNING, 1)
    assert job.dispatched_at > timezone.now() - timedelta(seconds=5)
    assert dict(AttemptRank.objects.filter(job=job).values_list("rank", "state")) == {
        0: "running", 1: "queued"}
    assert caught_up.get(protocol.rendezvous_key(job.pk, 1)) == b"10.0.0.1:29500"
    assert Reconciler().once()["resent"] == 0  # once: in its queue now


def test_a_rank_message_redis_forgot_is_sent_again_after_two_passes(api, caught_up):
    job = gang_started_on_n1(api)
    reconciler = Reconciler()
    assert reconciler.once()["resent"] == 0  # a first sighting may be a rank just started
    assert reconciler.once()["resent"] == 1
    assert task_ids(caught_up, protocol.node_queue("n2")) == [
        dispatch.task_id(job.pk, 1, job.token, 1).encode()]
    assert caught_up.zscore(protocol.DISPATCHED, protocol.dispatch_member(job.pk, 1, 1))


def test_a_rank_message_in_its_queue_or_held_by_its_node_is_not_sent_again(
        api, cast, caught_up):
    job = gang_started_on_n1(api)
    dispatch.send(dispatch.sends_of([job], ranks={job.pk: {1}}))  # waiting in n2's queue
    assert Reconciler().once()["resent"] == 0
    caught_up.delete(protocol.node_queue("n2"), protocol.DISPATCHED)
    # n2's heartbeat says it runs rank 1 (its "started" went with a restarted Redis); a plain
    # job's node says the same of it.
    held = timezone.now() + timedelta(seconds=30)
    AttemptRank.objects.filter(job=job, rank=1).update(lease_expires_at=held)
    plain = queued_job(cast.alice, dispatched_ago=60)
    Job.objects.filter(pk=plain.pk).update(lease_expires_at=held)
    reconciler = Reconciler()
    assert reconciler.once()["resent"] == 0
    assert reconciler.once()["resent"] == 0
    assert caught_up.llen(protocol.node_queue("n2")) == 0 and caught_up.llen("cpu") == 0


def test_a_lost_rank_message_whose_node_is_offline_sends_the_whole_gang_back(
        api, caught_up, django_capture_on_commit_callbacks):
    """The gang lives and dies together: a rank whose node is gone is not sent anywhere; its
    attempt is given up and the job goes back to admission for a fresh gang."""
    job = gang_started_on_n1(api)
    caught_up.zadd(protocol.DISPATCHED, {protocol.dispatch_member(job.pk, 1, 1): time.time()})
    Node.objects.filter(name="n2").update(state=NodeState.OFFLINE)
    with django_capture_on_commit_callbacks(execute=True):
        done = Reconciler().once()
    assert done["resent"] == 0 and done["lost"] == 1
    job.refresh_from_db()
    assert (job.state, job.attempt) == (JobState.PENDING, 2)
    assert Attempt.objects.get(job=job, number=1).error == "rank 1 lost with node n2"
    assert dict(AttemptRank.objects.filter(job=job, attempt=1).values_list(
        "rank", "state")) == {0: "cancelled", 1: "lost"}
    assert caught_up.llen(protocol.node_queue("n2")) == 0
    assert caught_up.exists(protocol.stop_key(job.pk, 1))  # rank 0's node stops it


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
