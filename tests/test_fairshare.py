"""Fair share with memory (decayed usage against share) and preemption back to it."""

from datetime import UTC, datetime, time, timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEntry
from jobs import admission, lifecycle
from jobs.models import Attempt, Job, JobState
from nodes.models import Node
from tests.factories import make_job
from usage import fairshare
from usage.models import AttemptUsage, UsageDay
from workers import protocol
from workers.kinds import get_kind

HALF_LIFE = 168.0
START = datetime(2026, 3, 1, tzinfo=UTC).date()


def used(team, day, core_hours):
    return UsageDay.objects.create(team=team, user="someone", day=day, kind="diag.sleep",
                                   queue="cpu", attempts=1, core_s=core_hours * 3600)


def by_hand(history: dict, now: datetime) -> dict:
    """The formula, written out: 2^(-U/S) with U the team's part of the decayed usage."""
    decayed = {}
    for team, days in history.items():
        decayed[team] = sum(
            hours * 3600 * 2 ** (-max((now - datetime.combine(day, time(12), tzinfo=UTC))
                                      .total_seconds() / 3600, 0) / HALF_LIFE)
            for day, hours in days)
    total = sum(decayed.values())
    return {team: 2 ** (-(value / total) / 0.5) for team, value in decayed.items()}


def test_the_factor_follows_the_formula_and_orders_the_teams_over_simulated_days(cast):
    # ml works hard for the first week; etl starts in the second and works harder.
    history = {"ml": [(START + timedelta(days=d), 20) for d in range(7)],
               "etl": [(START + timedelta(days=d), 35) for d in range(7, 14)]}
    team = {"ml": cast.ml, "etl": cast.etl}
    for name, days in history.items():
        for day, hours in days:
            used(team[name], day, hours)
    order, formula = [], []
    for day in (6, 9, 13, 20, 40):
        now = datetime.combine(START + timedelta(days=day), time(18), tzinfo=UTC)
        visible = {t: [(d, h) for d, h in days if d <= now.date()]
                   for t, days in history.items()}
        expected = by_hand({t: days for t, days in visible.items() if days}, now)
        standing = fairshare.standings([cast.ml.pk, cast.etl.pk], now, half_life=HALF_LIFE)
        got = {s.name: s.factor for s in standing.values()}
        for name, factor in expected.items():
            assert got[name] == pytest.approx(factor, rel=1e-9)
        # The one with the higher factor goes first.
        order.append(max(got, key=got.get))
        formula.append(max(expected, key=expected.get) if len(expected) > 1 else "etl")
    assert order == formula
    # Day 6: only ml used anything, so etl goes first; by day 40 etl's heavier and later
    # fortnight outweighs ml's older week, and ml goes first.
    assert order[0] == "etl" and order[-1] == "ml"
    # A half-life of 0 keeps no memory at all.
    assert fairshare.standings([cast.ml.pk], now, half_life=0) == {}


def waiting(owner, team, n=1, kind="diag.noop"):
    return [make_job(owner, state=JobState.PENDING, team=team, kind=kind, message="")
            for _ in range(n)]


def test_admission_puts_a_team_over_its_share_behind_and_says_why(cast, settings):
    settings.ADMIT_AHEAD = 0
    Node.objects.create(name="w1", queues=["cpu"], concurrency=1)
    today = timezone.now().date()
    used(cast.ml, today, 31)
    used(cast.etl, today, 1)
    [ml_job] = waiting(cast.alice, cast.ml)  # first in, but ml used 31 of the 32 core-hours
    [etl_job] = waiting(cast.bob, cast.etl)
    admission.admit()
    ml_job.refresh_from_db()
    assert Job.objects.get(pk=etl_job.pk).state == JobState.QUEUED
    assert ml_job.state == JobState.PENDING
    assert ml_job.message == ("queue cpu: every slot is taken; team ml used 1.9× its share over "
                              "the last week: teams under their share go first")


def test_without_memory_the_first_come_goes_first_as_before(cast, settings):
    settings.ADMIT_AHEAD = 0
    settings.FAIR_SHARE_HALF_LIFE_H = 0
    Node.objects.create(name="w1", queues=["cpu"], concurrency=1)
    used(cast.ml, timezone.now().date(), 31)
    [ml_job] = waiting(cast.alice, cast.ml)
    [etl_job] = waiting(cast.bob, cast.etl)
    admission.admit()
    assert Job.objects.get(pk=ml_job.pk).state == JobState.QUEUED
    etl_job.refresh_from_db()
    assert etl_job.state == JobState.PENDING
    assert etl_job.message == "queue cpu: every slot is taken"


# Preemption --------------------------------------------------------------------------------


def running(owner, team, kind, ran_s, **fields):
    job = make_job(owner, state=JobState.RUNNING, team=team, kind=kind, lease_ago=-60,
                   **fields)
    started = timezone.now() - timedelta(seconds=ran_s)
    Job.objects.filter(pk=job.pk).update(started_at=started)
    Attempt.objects.filter(job=job).update(started_at=started)
    job.refresh_from_db()
    return job


@pytest.fixture
def full_cluster(cast, settings):
    """ml, far over its share, fills every slot of queue cpu; etl, under it, has a job in."""
    settings.ADMIT_AHEAD = 0
    settings.PREEMPTION = True
    settings.PREEMPT_MIN_RUN_S = 60
    Node.objects.create(name="w1", queues=["cpu"], concurrency=4)
    used(cast.ml, timezone.now().date(), 100)
    jobs = {
        "old": running(cast.alice, cast.ml, "diag.sleep", 600),
        "young": running(cast.alice, cast.ml, "diag.sleep", 300),
        "not_preemptible": running(cast.alice, cast.ml, "train.tabular", 120),
        "too_young": running(cast.alice, cast.ml, "diag.sleep", 10),
    }
    return jobs


def test_a_preemption_requeues_exactly_the_chosen_job_and_keeps_its_attempts(
        cast, full_cluster, redis_client, django_capture_on_commit_callbacks, client):
    assert not get_kind("train.tabular").preemptible and get_kind("diag.sleep").preemptible
    [etl_job] = waiting(cast.bob, cast.etl)
    with django_capture_on_commit_callbacks(execute=True):
        admission.admit()
    states = {name: Job.objects.get(pk=job.pk) for name, job in full_cluster.items()}
    # The youngest preemptible job that has run long enough, and only it.
    young = states.pop("young")
    assert {name: (j.state, j.attempt) for name, j in states.items()} == {
        "old": ("running", 1), "not_preemptible": ("running", 1), "too_young": ("running", 1)}
    assert young.state == JobState.PENDING and young.attempt == 2 and young.node == ""
    # A preemption does not count against max_attempts: as many attempts left as before.
    assert young.max_attempts - young.attempt == 3 - 1
    # Back in line, it says what holds it back now; its first attempt says why it ended.
    assert young.message.startswith("queue cpu: every slot is taken; team ml used 2.0×")
    first, second = Attempt.objects.filter(job=young).order_by("number")
    assert first.state == "cancelled" and first.error.startswith(
        "preempted for team etl (under its share): team ml used 2.0× its share")
    assert second.state == "queued" and second.token == young.token
    assert AttemptUsage.objects.get(job_id=young.pk).outcome == "preempted"
    entry = AuditEntry.objects.get(action="job.preempt")
    assert entry.target_id == str(young.pk) and entry.detail["attempt"] == 1
    assert redis_client.get(protocol.stop_key(young.pk, 1)) == b"1"
    # Its page says so, in its attempts.
    client.force_login(cast.alice)
    page = client.get(f"/jobs/{young.pk}/").content.decode()
    assert "preempted for team etl (under its share)" in page
    # The slot it gave back went to etl's job, in the pass that followed.
    assert Job.objects.get(pk=etl_job.pk).state == JobState.QUEUED
    # Nothing more to preempt for: a second pass leaves every job alone.
    with django_capture_on_commit_callbacks(execute=True):
        admission.admit()
    assert Job.objects.filter(state=JobState.RUNNING).count() == 3
    assert AuditEntry.objects.filter(action="job.preempt").count() == 1


def test_only_preemptible_kinds_that_ran_long_enough_are_ever_preempted(
        cast, full_cluster, django_capture_on_commit_callbacks):
    Job.objects.filter(pk__in=[full_cluster["old"].pk, full_cluster["young"].pk]).update(
        kind="train.tabular")
    waiting(cast.bob, cast.etl, 3)
    with django_capture_on_commit_callbacks(execute=True):
        admission.admit()
    assert Job.objects.filter(state=JobState.RUNNING, team=cast.ml).count() == 4
    assert not AuditEntry.objects.filter(action="job.preempt").exists()


def test_preemption_is_off_unless_asked_for(cast, full_cluster, settings,
                                            django_capture_on_commit_callbacks):
    settings.PREEMPTION = False
    waiting(cast.bob, cast.etl)
    with django_capture_on_commit_callbacks(execute=True):
        admission.admit()
    assert Job.objects.filter(state=JobState.RUNNING).count() == 4


def test_a_job_that_moved_meanwhile_is_not_preempted(cast, full_cluster):
    job = full_cluster["young"]
    Job.objects.filter(pk=job.pk).update(token="newer")
    assert not lifecycle.preempt(job, "preempted for a test", timezone.now())
    assert Job.objects.get(pk=job.pk).state == JobState.RUNNING
    assert not AttemptUsage.objects.exists()
