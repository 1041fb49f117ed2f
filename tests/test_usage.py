"""Usage accounting: a row per attempt that ran, from every way an attempt ends (lost and
preempted ones too), folded per day, read back by the API, the CSV and portalctl."""

import csv
import io
import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from cli.main import main
from jobs import lifecycle
from jobs.ingest import apply_events
from jobs.models import Attempt, Job, JobState
from tests.factories import make_job
from usage import services
from usage.models import AttemptUsage, UsageDay
from usage.selectors import percentile


def ev(job, kind, attempt=1, token="tok1", **fields):
    return {"type": kind, "job": job.pk, "attempt": attempt, "token": token, "ts": time.time(),
            **fields}


def run_to_end(job, outcome="succeeded", attempt=1, token="tok1"):
    apply_events([ev(job, "started", attempt, token, node="w1", worker="w1@box"),
                  ev(job, "finished", attempt, token, outcome=outcome, result=None, error="")])


def assert_rows_match_attempts():
    """Every attempt that started has exactly one usage row, with its own figures."""
    started = Attempt.objects.filter(started_at__isnull=False).select_related("job")
    rows = {(u.job_id, u.attempt): u for u in AttemptUsage.objects.all()}
    assert set(rows) == {(a.job_id, a.number) for a in started}
    for attempt in started:
        row = rows[(attempt.job_id, attempt.number)]
        wall = (attempt.finished_at - attempt.started_at).total_seconds()
        assert row.wall_s == pytest.approx(wall)
        assert row.core_s == pytest.approx(wall * attempt.job.cpus)
        assert row.gpu_s == pytest.approx(wall * attempt.job.gpus)
        assert row.wait_s == pytest.approx(
            max((attempt.started_at - attempt.created_at).total_seconds(), 0))
        assert (row.team_id, row.kind, row.queue) == (attempt.job.team_id, attempt.job.kind,
                                                     attempt.job.queue)
    return rows


def test_each_way_an_attempt_ends_leaves_one_row_equal_to_the_attempt(cast):
    done = make_job(cast.alice, kind="diag.sleep", cpus=4, gpus=1)
    run_to_end(done)
    failed = make_job(cast.bob, kind="diag.sleep")
    run_to_end(failed, "failed")
    # A node goes silent: the attempt is lost and the job goes on as attempt 2, which succeeds.
    lost = make_job(cast.alice, state=JobState.RUNNING, lease_ago=5, cpus=2)
    Attempt.objects.filter(job=lost).update(started_at=lost.started_at - timedelta(seconds=30))
    assert lifecycle.lose(lost, timezone.now())
    lost.refresh_from_db()
    run_to_end(lost, attempt=2, token=lost.token)
    # Replayed, the same end makes no second row.
    run_to_end(done)
    # Cancelled before it started: it used nothing, and has no row.
    waiting = make_job(cast.alice)
    lifecycle.cancel(waiting)

    rows = assert_rows_match_attempts()
    assert rows[(lost.pk, 1)].outcome == "lost" and not rows[(lost.pk, 1)].final
    assert rows[(lost.pk, 2)].outcome == "succeeded" and rows[(lost.pk, 2)].final
    assert rows[(failed.pk, 1)].outcome == "failed"
    assert rows[(done.pk, 1)].cpus == 4 and rows[(done.pk, 1)].gpus == 1
    assert len(rows) == 4

    assert services.roll_up() == 4
    assert services.roll_up() == 0  # each row once
    days = UsageDay.objects.all()
    assert sum(d.attempts for d in days) == 4
    assert sum(d.jobs for d in days) == 3  # done, failed, and lost (which ended on attempt 2)
    assert sum(d.lost for d in days) == 1
    assert sum(d.core_s for d in days) == pytest.approx(sum(r.core_s for r in rows.values()))
    assert sum(sum(d.wait_hist) for d in days) == 4


def test_a_preempted_attempt_is_counted_and_marked(cast):
    job = make_job(cast.alice, state=JobState.RUNNING, kind="diag.sleep", lease_ago=-30)
    Attempt.objects.filter(job=job).update(started_at=job.started_at)
    assert lifecycle.preempt(job, "preempted for team etl (under its share)", timezone.now())
    rows = assert_rows_match_attempts()
    assert rows[(job.pk, 1)].outcome == "preempted"
    services.roll_up()
    assert UsageDay.objects.get().preempted == 1


def test_usage_outlives_the_job_and_keeps_its_days_for_usage_keep_days(cast, settings):
    job = make_job(cast.alice, kind="diag.sleep")
    run_to_end(job)
    services.roll_up()
    Job.objects.filter(pk=job.pk).delete()
    assert UsageDay.objects.get().attempts == 1 and AttemptUsage.objects.count() == 1
    now = timezone.now()
    settings.USAGE_ATTEMPTS_KEEP_DAYS = 35
    settings.USAGE_KEEP_DAYS = 400
    assert services.prune(now + timedelta(days=36)) == (1, 0)
    assert services.prune(now + timedelta(days=399)) == (0, 0)
    assert services.prune(now + timedelta(days=402)) == (0, 1)


def test_wait_percentiles_come_from_the_merged_histogram():
    hist = [0] * (len(services.WAIT_BUCKETS) + 1)
    for seconds in [0.5] * 50 + [20] * 45 + [4000] * 5:
        hist[services.wait_bucket(seconds)] += 1
    assert percentile(hist, 0.5) <= 1
    assert 10 <= percentile(hist, 0.95) <= 30
    assert percentile([0] * len(hist), 0.5) is None


# The API, the CSV and portalctl ------------------------------------------------------------


def day_row(team, user, day, **sums):
    return UsageDay.objects.create(team=team, user=user, day=day, kind=sums.pop("kind",
                                   "diag.sleep"), queue="cpu", wait_hist=sums.pop("hist", []),
                                   **sums)


@pytest.fixture
def days(cast):
    today = timezone.now().date()
    day_row(cast.ml, "alice", today, jobs=2, attempts=3, lost=1, core_s=7200, wall_s=3600,
            gpu_s=0, wait_s=30, hist=[3])
    day_row(cast.ml, "alice", today - timedelta(days=3), jobs=1, attempts=1, core_s=3600,
            wall_s=3600, wait_s=5, hist=[0, 0, 1])
    day_row(cast.etl, "bob", today, jobs=5, attempts=5, core_s=36000, wall_s=36000, gpu_s=3600,
            wait_s=100, hist=[0, 0, 0, 5])
    return today


def test_a_member_sees_the_usage_of_their_teams_only_and_staff_sees_all(api, cast, days,
                                                                        client):
    mine = api.get("/api/v1/usage/?since=7d&group_by=team").json()
    assert [r["team"] for r in mine["rows"]] == ["ml"]
    ml = mine["rows"][0]
    assert (ml["jobs"], ml["attempts"], ml["lost"], ml["core_seconds"]) == (3, 4, 1, 10800)
    assert ml["wait_seconds"] == 35 and ml["wait_p50_seconds"] <= 1
    # Its part of the whole cluster's core-seconds, against its part of the shares (1 of 2).
    assert ml["usage_fraction"] == pytest.approx(10800 / 46800, abs=1e-4)
    assert ml["share_fraction"] == 0.5
    client.force_login(cast.admin)
    everyone = client.get("/api/v1/usage/?since=7d&group_by=team").json()
    assert [r["team"] for r in everyone["rows"]] == ["etl", "ml"]
    by_day = client.get("/api/v1/usage/?since=7d&group_by=day,team").json()["rows"]
    assert [(r["day"], r["team"]) for r in by_day] == [
        ((days - timedelta(days=3)).isoformat(), "ml"), (days.isoformat(), "etl"),
        (days.isoformat(), "ml")]
    recent = client.get("/api/v1/usage/?since=1d&group_by=user").json()["rows"]
    assert {r["user"]: r["attempts"] for r in recent} == {"bob": 5, "alice": 3}


def test_usage_downloads_as_csv(api, days):
    response = api.get("/api/v1/usage/?since=7d&group_by=kind,team&format=csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert rows == [{**rows[0], "kind": "diag.sleep", "team": "ml", "attempts": "4"}]
    assert "core_seconds" in rows[0] and "wait_p95_seconds" in rows[0]


@pytest.mark.parametrize(("query", "field"), [
    ("since=yesterday", "since"), ("since=7x", "since"), ("until=2026-13-40", "until"),
    ("since=2d&until=5d", "until"), ("group_by=node", "group_by"), ("group_by=", "group_by"),
    ("group_by=team,team", "group_by"), ("format=xml", "format"), ("since=99999999d", "since"),
])
def test_bad_usage_queries_get_a_400_naming_the_field(api, query, field):
    response = api.get(f"/api/v1/usage/?{query}")
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field]


def test_usage_needs_a_login(client):
    assert client.get("/api/v1/usage/").status_code in (401, 403)


@pytest.mark.django_db(transaction=True)
def test_portalctl_usage_prints_the_teams_figures(live_server, django_user_model, capsys):
    from accounts.models import ApiToken, Membership, Team

    user = django_user_model.objects.create_user("carol")
    team = Team.objects.create(name="vision")
    Membership.objects.create(team=team, user=user, role="member")
    day_row(team, "carol", timezone.now().date(), jobs=4, attempts=6, preempted=2,
            core_s=7200, wall_s=3600, wait_s=60, hist=[0, 0, 6])
    env = {"PORTAL_URL": live_server.url, "PORTAL_TOKEN": ApiToken.issue(user)[1]}
    assert main(["usage", "--since", "7d", "--by", "team"], env=env) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["TEAM", "JOBS", "ATTEMPTS", "LOST", "PREEMPTED", "CORE-H",
                                "GPU-H", "WAIT", "P50", "WAIT", "P95"]
    assert lines[1].split()[:7] == ["vision", "4", "6", "0", "2", "2.0", "0.0"]
    assert main(["usage", "--since", "7d", "--by", "day,team", "--json"], env=env) == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["team"] == "vision"
    assert main(["usage", "--by", "node"], env=env) == 2
    assert "group_by" in capsys.readouterr().err
