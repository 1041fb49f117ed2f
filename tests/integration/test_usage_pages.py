"""The Usage and Planner pages in Chromium against the live cluster, wide and on a phone:
usage stacked by team over days, top users and shares (with a job this cluster really ran),
and the planner answering the seed's example from measured partitions, or naming a bad field.

Screenshots land in test-artifacts/ for a person to look at."""

import re
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from accounts.models import Membership, Team
from accounts.teams import team_for_work
from jobs.models import JobState, MetricPoint
from tests.factories import make_job, make_partitions
from tests.integration.conftest import ARTIFACTS, wait_for_job
from tests.integration.test_browser import (  # noqa: F401 (browser: a fixture)
    Traffic,
    browser,
    log_in,
    submit,
)
from usage.models import UsageDay

pytestmark = [pytest.mark.integration, pytest.mark.browser]

SIZES = {"wide": (1440, 900), "phone": (390, 844)}
TEAMS = {"ml": ("alice", "ana", 3), "etl": ("bob", "bea", 2), "vision": ("carol", "cy", 1)}


@pytest.fixture(params=list(SIZES))
def sized(live, browser, request):  # noqa: F811
    width, height = SIZES[request.param]
    context = browser.new_context(base_url=live.base, viewport={"width": width,
                                                                "height": height})
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.traffic = Traffic(page, live)
    page.size = request.param
    yield page
    context.close()


def seed_days():
    """Two weeks of three teams' usage, each of two users."""
    today = timezone.now().date()
    for name, (first, second, weight) in TEAMS.items():
        team = Team.objects.create(name=name, share=weight)
        for back in range(14):
            for user, part in ((first, 0.7), (second, 0.3)):
                hours = weight * (6 + (back * 7 + len(name)) % 5) * part
                UsageDay.objects.create(
                    team=team, user=user, day=today - timedelta(days=back), kind="diag.sleep",
                    queue="cpu", jobs=3, attempts=4, lost=back % 3 == 0, core_s=hours * 3600,
                    wall_s=hours * 1800, wait_s=40, wait_hist=[1, 1, 2])


def test_the_usage_page_stacks_teams_over_days_with_top_users_and_shares(sized):
    user = log_in(sized, "operator", staff=True)
    seed_days()
    # A job this cluster really runs shows up too, once the reconciler folded its attempt.
    team = Team.objects.create(name="ops")
    Membership.objects.create(team=team, user=user, role="member")
    job = submit(user, kind="diag.sleep", params={"seconds": 1}, team="ops")
    wait_for_job(job.pk, timeout=60)
    deadline = time.monotonic() + 30
    while not UsageDay.objects.filter(team=team).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert UsageDay.objects.get(team=team).attempts == 1
    sized.goto("/usage/")
    expect(sized.locator("body")).to_have_attribute("data-loaded", "30d")
    expect(sized.locator("#chart-days .trace.bars")).to_have_count(4)  # ml, etl, vision, ops
    expect(sized.locator("#chart-shares .trace.bars")).to_have_count(2)  # used, share
    expect(sized.locator("#chart-users .trace.bars")).to_have_count(1)
    rows = sized.locator("#team-table tbody tr")
    expect(rows).to_have_count(4)
    expect(rows.first.locator("td").first).to_have_text("ml")  # the most core-hours first
    expect(sized.locator("#team-table tbody")).to_contain_text("ops")
    expect(sized.locator("#totals")).to_contain_text("Core-hours")
    sized.screenshot(path=ARTIFACTS / f"usage-{sized.size}.png", full_page=True)
    sized.locator('#periods button[data-since="7d"]').click()
    expect(sized.locator("body")).to_have_attribute("data-loaded", "7d")
    expect(sized.locator("#csv")).to_have_attribute("href", re.compile(r"since=7d.*format=csv"))
    sized.traffic.assert_clean()


def seed_clickstream(owner):
    team = Team.objects.get(memberships__user=owner)
    end = timezone.now()
    parent = make_job(owner, JobState.SUCCEEDED, attempt=0, team=team, kind="etl.clickstream",
                      started_at=end - timedelta(seconds=90), finished_at=end,
                      result={"rows": 1_000_000, "rows_per_s": 11_000.0})
    parts = make_partitions(parent, [JobState.SUCCEEDED] * 4, queue="etl",
                            started_at=end - timedelta(seconds=85), finished_at=end)
    for part, rate in zip(parts, [2600.0, 2900.0, 3100.0, 2750.0], strict=True):
        MetricPoint.objects.create(job=part, attempt=1, name="rows_per_s", step=0, value=rate,
                                   ts=end)


def test_the_planner_answers_the_seed_example_and_names_a_bad_field(sized):
    user = log_in(sized, "planner")
    team_for_work(user)  # a team of their own, which the history belongs to
    seed_clickstream(user)
    sized.goto("/planner/")
    expect(sized.locator("#plan-kind")).to_have_value("etl.clickstream")
    expect(sized.locator("#plan-rows")).to_have_value("800000000")
    expect(sized.locator("#plan-window")).to_have_value("21600")
    sized.get_by_role("button", name="Plan").click()
    expect(sized.locator("body")).to_have_attribute("data-planned", "200")
    # The median of 2750 and 2900 rows/s per slot: 37,037 rows/s needs 14 slots.
    expect(sized.locator("#plan-slots")).to_have_text("14")
    expect(sized.locator("#plan-explanation")).to_contain_text("37,037.0 rows/s")
    expect(sized.locator("#plan-bottleneck")).to_have_text("partitions")
    expect(sized.locator("#plan-samples")).to_contain_text("4 samples")
    expect(sized.locator("#plan-spread tbody td").nth(2)).to_have_text("2,825")
    sized.screenshot(path=ARTIFACTS / f"planner-{sized.size}.png", full_page=True)
    sized.locator("#plan-window").fill("0")
    sized.get_by_role("button", name="Plan").click()
    expect(sized.locator("body")).to_have_attribute("data-planned", "400")
    error = sized.locator('[data-field="window_s"] .error')
    expect(error).to_be_visible()
    expect(error).to_contain_text("above 0")
    expect(sized.locator("#plan-answer")).to_be_hidden()
    sized.traffic.assert_clean()
