"""The job state machine: every allowed and refused move, and one winner among racing claims."""

import threading

import pytest
from django.db import connection

from accounts.teams import team_for_work
from jobs import states
from jobs.models import Job, JobState

S = JobState
ALLOWED = {
    (S.PENDING, S.QUEUED), (S.PENDING, S.CANCELLED), (S.PENDING, S.FAILED),
    (S.QUEUED, S.RUNNING), (S.QUEUED, S.CANCELLED), (S.QUEUED, S.FAILED),
    (S.RUNNING, S.SUCCEEDED), (S.RUNNING, S.FAILED), (S.RUNNING, S.CANCELLED),
    (S.RUNNING, S.QUEUED),
}
ALL_PAIRS = [(a, b) for a in S.values for b in S.values if a != b]


def make_job(owner, state=S.QUEUED, **fields):
    return Job.objects.create(owner=owner, team=team_for_work(owner),
                             kind="diag.noop", queue="cpu", timeout_s=60,
                              state=state, attempt=1, token="t1", **fields)


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
        with pytest.raises(ValueError):  # nothing moves back to pending
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
