"""In a real browser (Debian's Chromium driven by Playwright) against the live cluster: logging
in, submitting through the form, watching a job run live, cancelling it, updates that race a
page's snapshot, inline form errors, pages that load nothing from elsewhere, and user-supplied
text that stays text; and what a first-time user meets: no page wider than a phone, the form's
defaults without a warehouse, errors summed up at the top, a sane ETA, the 7 d chart inside its
window, the token page safe to reload, Retry and a Cancel that asks first.

Screenshots land in test-artifacts/ for a person to look at."""

import os
import re
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db.models import F
from playwright.sync_api import expect, sync_playwright

from accounts.models import ApiToken
from alerts.models import AlertRule
from jobs import services
from jobs.lifecycle import TransitionRefused
from jobs.models import Job
from nodes.models import NodeSample
from portal.cluster import BIN, free_port, wait_for_port
from tests.integration.conftest import ARTIFACTS, wait_for_job

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-gpu"]
PASSWORD = "a browser's password"
# The box has two shared cores: a 3 s job can take a while to be picked up and reported.
JOB_MS = 30_000
XSS_NAME = '<img src=x onerror="window.__xss=1">'
XSS_LOG = '<script>window.__xss=2</script><img src=x onerror="window.__xss=3"> & done'
JOB_URL = re.compile(r"/jobs/(\d+)/$")
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def browser(live_cluster):
    # Playwright's sync API keeps its event loop running on a greenlet of this thread, which
    # Django takes for async code and refuses the ORM: allowed here, for this module only and
    # after the cluster has started, so no server process inherits the setting.
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Traffic:
    """Everything one tab asked for (requests and websockets), every uncaught script error and
    everything the Content-Security-Policy refused."""

    def __init__(self, page, live):
        self.live = live
        self.urls: list[str] = []
        self.script_errors: list[str] = []
        page.on("request", lambda request: self.urls.append(request.url))
        page.on("websocket", lambda socket: self.urls.append(socket.url))
        page.on("pageerror", lambda error: self.script_errors.append(str(error)))
        page.on("console", lambda message: self.script_errors.append(message.text)
                if "Content Security Policy" in message.text else None)

    def foreign(self) -> list[str]:
        local = (f"{self.live.base}/", self.live.ws_url("/"), "data:")
        return [url for url in self.urls if not url.startswith(local)]

    def assert_clean(self) -> None:
        assert self.urls, "the tab made no requests at all"
        assert self.foreign() == []
        assert self.script_errors == []


@pytest.fixture
def tab(live, browser):
    context = browser.new_context(base_url=live.base, viewport={"width": 1280, "height": 800})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.traffic = Traffic(page, live)
    yield page
    context.close()


def log_in(page, username="browser", *, staff=False):
    user = get_user_model().objects.create_user(username, password=PASSWORD, is_staff=staff)
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/jobs/$"))
    expect(page.locator(".topbar .who")).to_have_text(username)
    return user


def submit(owner, **spec):
    job, _ = services.submit_job(owner=owner, spec=services.validate_spec(spec))
    return job


def attempt_row(page, number: int):
    return page.locator("#attempts tbody tr").filter(
        has=page.locator("td:first-child", has_text=re.compile(rf"^{number}$")))


def rendered_state(html: str) -> str:
    return re.search(r'id="job-state">([^<]*)<', html)[1]


def test_a_job_submitted_through_the_form_is_watched_live_to_success_without_a_reload(tab):
    user = log_in(tab)
    tab.get_by_role("link", name="Submit", exact=True).click()
    expect(tab.get_by_role("heading", name="Submit a job")).to_be_visible()
    tab.wait_for_load_state()  # the picker's script is in: a choice made before it is lost
    tab.get_by_label("Kind").select_option("diag.sleep")  # the picker reloads the form
    expect(tab).to_have_url(re.compile(r"/jobs/new/\?kind=diag\.sleep$"))
    tab.get_by_label("Seconds").fill("3")
    with tab.expect_navigation(url=JOB_URL) as landed:
        tab.get_by_role("button", name="Submit", exact=True).click()
    tab.evaluate("window.__marker = 1")
    # The server drew the page before the job ended: what follows arrives over the websocket.
    assert rendered_state(landed.value.text()) in {"pending", "queued", "running"}
    job_id = int(JOB_URL.search(tab.url)[1])

    state = tab.locator("#job-state")
    expect(state).to_have_text("succeeded", timeout=JOB_MS)
    expect(state).to_have_class("state state-succeeded")
    expect(tab.locator("#job-progress")).to_have_js_property("value", 1)
    expect(tab.locator("#job-progress-text")).to_have_text("100 %")
    expect(tab.locator("#job-log")).to_contain_text("done")
    # Each line once, whether it came with the snapshot or live.
    expect(tab.locator("#job-log .line")).to_have_text([
        "── attempt 1 ──", re.compile(r"^\d\d:\d\d:\d\d sleeping 3 s\s*$"),
        re.compile(r"^\d\d:\d\d:\d\d done\s*$")])
    expect(tab.locator("#job-node")).to_have_text(re.compile(r"^w[12]$"))
    expect(tab.locator("#job-result")).to_contain_text('"slept": 3')
    expect(tab.locator("#cancel-form")).to_be_hidden()
    expect(attempt_row(tab, 1)).to_have_text(re.compile(r"^1succeededw[12]"))
    expect(tab.locator("#live-indicator")).to_have_attribute("data-state", "live")
    expect(tab.locator("#live-indicator .live-text")).to_have_text("live")
    assert tab.evaluate("window.__marker") == 1, "the job page reloaded"
    tab.screenshot(path=ARTIFACTS / "job-succeeded.png", full_page=True)

    job = Job.objects.get(pk=job_id)
    assert (job.owner, job.kind, job.params["seconds"], job.state) == (
        user, "diag.sleep", 3, "succeeded")
    tab.traffic.assert_clean()


def test_a_negative_duration_is_shown_next_to_its_field_and_creates_no_job(tab):
    log_in(tab)
    tab.goto("/jobs/new/?kind=diag.sleep")
    # A number input takes no letters, so the bad value is a number out of range.
    tab.get_by_label("Seconds").fill("-5")
    with tab.expect_navigation() as posted:
        tab.get_by_role("button", name="Submit", exact=True).click()
    assert posted.value.status == 400

    field = tab.locator(".field", has=tab.locator('input[name="param-seconds"]'))
    expect(field).to_have_class(re.compile(r"\bhas-error\b"))
    error = field.locator('[data-error="seconds"]')
    expect(error).to_be_visible()
    expect(error).to_have_text("must be at least 0")
    expect(tab.locator("[data-error]")).to_have_count(1)  # no other field complains
    assert float(tab.get_by_label("Seconds").input_value()) == -5  # what was typed stays
    expect(tab.locator('input[name="kind"]')).to_have_value("diag.sleep")
    tab.screenshot(path=ARTIFACTS / "submit-errors.png", full_page=True)

    assert Job.objects.count() == 0
    tab.traffic.assert_clean()


def test_the_cancel_button_ends_a_running_job_cancelled_and_then_hides(tab):
    user = log_in(tab)
    job = submit(user, kind="diag.sleep", params={"seconds": 30}, name="long sleep")
    tab.goto(f"/jobs/{job.pk}/")
    state = tab.locator("#job-state")
    expect(state).to_have_text("running", timeout=JOB_MS)
    cancel = tab.get_by_role("button", name="Cancel")
    expect(cancel).to_be_visible()

    asked = []
    tab.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    cancel.click()  # dismissed: nothing happens
    tab.wait_for_timeout(500)
    assert asked and asked[0].startswith(f"Cancel job {job.pk}?")
    assert Job.objects.get(pk=job.pk).cancel_requested_at is None
    tab.once("dialog", lambda dialog: dialog.accept())
    with tab.expect_navigation(url=JOB_URL):  # the button posts a form, then comes back
        cancel.click()
    tab.evaluate("window.__marker = 1")
    expect(state).to_have_text("cancelled", timeout=JOB_MS)
    expect(state).to_have_class("state state-cancelled")
    expect(cancel).to_be_hidden()
    expect(attempt_row(tab, 1)).to_have_text(re.compile(r"^1cancelledw[12]"))
    expect(tab.locator("#job-cancelled-by")).to_contain_text(f"by {user.username}")
    retry = tab.get_by_role("button", name="Retry")
    expect(retry).to_be_visible()  # shown live, once the job is cancelled
    assert tab.evaluate("window.__marker") == 1, "the job page reloaded"
    tab.screenshot(path=ARTIFACTS / "job-cancelled.png", full_page=True)

    done = wait_for_job(job.pk, timeout=15)
    assert done.state == "cancelled" and done.cancel_requested_at is not None
    tab.traffic.assert_clean()


def test_a_state_change_arriving_while_the_page_loads_its_snapshot_is_not_lost(tab):
    user = log_in(tab)
    job = submit(user, kind="diag.sleep", params={"seconds": 3})
    # Hold the page's snapshot half-way (the job is read, its log not yet) ...
    held = []
    tab.route(re.compile(r"/api/v1/jobs/\d+/logs/"),
              lambda route: route.continue_() if held else held.append(route))
    with tab.expect_websocket() as opened:
        tab.goto(f"/jobs/{job.pk}/")
    frames = []
    opened.value.on("framereceived", lambda frame: frames.append(frame))
    while not held:
        tab.wait_for_timeout(50)
    snapshot = tab.locator("#job-state").text_content()
    assert snapshot not in TERMINAL, f"the job ended before the page read it ({snapshot})"
    # ... until the job has ended and its last frame has reached the page.
    assert wait_for_job(job.pk, timeout=JOB_MS / 1000).state == "succeeded"
    while not any('"succeeded"' in frame for frame in frames):
        tab.wait_for_timeout(100)
    held[0].continue_()

    expect(tab.locator("#job-state")).to_have_text("succeeded", timeout=10_000)
    expect(tab.locator("#job-progress-text")).to_have_text("100 %")
    expect(tab.locator("#cancel-form")).to_be_hidden()
    tab.traffic.assert_clean()


def test_a_job_ending_while_the_list_loads_its_snapshot_is_shown_ended(tab):
    user = log_in(tab)
    job = submit(user, kind="diag.sleep", params={"seconds": 3})
    wait_for_job(job.pk, states={"running"}, timeout=JOB_MS / 1000)
    # The list's snapshot is read now, while the job runs, and handed over only later.
    held = []

    def read_now(route):
        if held:
            route.continue_()
        else:
            held.append((route, route.fetch()))

    tab.route(re.compile(r"/api/v1/jobs/\?"), read_now)
    with tab.expect_websocket() as opened:
        tab.goto("/jobs/")
    frames = []
    opened.value.on("framereceived", lambda frame: frames.append(frame))
    while not held:
        tab.wait_for_timeout(50)
    route, snapshot = held[0]
    assert snapshot.json()["results"][0]["state"] == "running"
    assert wait_for_job(job.pk, timeout=JOB_MS / 1000).state == "succeeded"
    while not any('"succeeded"' in frame for frame in frames):
        tab.wait_for_timeout(100)
    route.fulfill(response=snapshot)

    row = tab.locator(f'tr[data-job="{job.pk}"]')
    expect(row.locator('[data-field="state"]')).to_have_text("succeeded", timeout=10_000)
    expect(row.locator('[data-field="progress"]')).to_have_js_property("value", 1)
    tab.traffic.assert_clean()


def test_every_page_loads_its_assets_and_data_from_the_portal_alone(tab, live):
    user = log_in(tab)
    job = submit(user, kind="diag.sleep", params={"seconds": 1})
    tab.goto("/jobs/")
    expect(tab.locator("#live-indicator")).to_have_attribute("data-state", "live")
    tab.goto("/jobs/new/?kind=diag.noop")
    expect(tab.get_by_label("Kind")).to_have_value("diag.noop")
    tab.goto(f"/jobs/{job.pk}/")
    expect(tab.locator("#job-state")).to_have_text("succeeded", timeout=JOB_MS)
    tab.goto("/api/docs/")
    expect(tab.locator(".swagger-ui .info")).to_be_visible()  # drawn from the fetched schema

    urls = tab.traffic.urls
    for needed in ("/static/portal/app.css", "/static/portal/live.js", "/api/schema/"):
        assert any(needed in url for url in urls), f"{needed} was never requested"
    assert live.ws_url("/ws/cluster/?show=jobs") in urls  # the job list: job states only
    assert live.ws_url(f"/ws/jobs/{job.pk}/") in urls
    tab.traffic.assert_clean()


def test_a_job_name_made_of_html_is_shown_as_text_and_never_runs_as_script(tab):
    user = log_in(tab)
    job = submit(user, kind="diag.noop", name=XSS_NAME)
    submit(user, kind="diag.sleep", params={"seconds": 30}, name="a plain neighbour")

    tab.goto("/jobs/")
    row = tab.locator(f'tr[data-job="{job.pk}"]')
    expect(row.locator("td.name")).to_have_text(XSS_NAME)
    expect(row.locator('[data-field="state"]')).to_have_text("succeeded", timeout=JOB_MS)
    expect(tab.locator("main img")).to_have_count(0)
    tab.screenshot(path=ARTIFACTS / "job-list.png", full_page=True)

    tab.goto(f"/jobs/{job.pk}/")
    expect(tab.locator("h1 .name")).to_have_text(XSS_NAME)
    expect(tab.locator("#job-state")).to_have_text("succeeded", timeout=JOB_MS)
    expect(tab.locator("main img")).to_have_count(0)

    assert tab.evaluate("typeof window.__xss") == "undefined"
    assert not [url for url in tab.traffic.urls if url.endswith("/x")]  # the img never loaded
    tab.traffic.assert_clean()
    for other in Job.objects.exclude(state__in=TERMINAL):
        services.cancel_job(job=other)  # leave the workers free for the next test


def test_a_job_submitted_elsewhere_appears_on_the_open_list_live_as_text(tab):
    user = log_in(tab)
    tab.goto("/jobs/")
    expect(tab.locator("#live-indicator")).to_have_text(re.compile("live"))
    tab.evaluate("window.__marker = 1")
    job = submit(user, kind="diag.noop", name=XSS_NAME)
    row = tab.locator(f'tr[data-job="{job.pk}"]')
    expect(row.locator("td.name")).to_have_text(XSS_NAME, timeout=JOB_MS)
    expect(row.locator('[data-field="state"]')).to_have_text("succeeded", timeout=JOB_MS)
    expect(row.locator("a")).to_have_attribute("href", f"/jobs/{job.pk}/")
    expect(tab.locator("main img")).to_have_count(0)
    assert tab.evaluate("window.__marker") == 1  # no reload
    assert tab.evaluate("typeof window.__xss") == "undefined"
    tab.traffic.assert_clean()


def test_the_cluster_overview_draws_two_live_nodes_and_their_charts(tab, live):
    user = log_in(tab, "operator", staff=True)
    done = [submit(user, kind="diag.noop") for _ in range(3)]
    running = submit(user, kind="diag.sleep", params={"seconds": 20})
    for job in done:
        wait_for_job(job.pk, timeout=JOB_MS / 1000)
    wait_for_job(running.pk, states={"running"}, timeout=JOB_MS / 1000)
    tab.goto("/cluster/")
    for name in ("w1", "w2"):
        card = tab.locator(f'.node-card[data-node="{name}"]')
        expect(card.locator("[data-field=state]")).to_have_text("online")
        expect(card.locator(".meter")).to_have_count(3)  # CPU, memory, GPU (none here)
    expect(tab.locator("#live-indicator")).to_have_attribute("data-state", "live")
    # The cards follow the heartbeats without a reload.
    seen = tab.locator('.node-card[data-node="w1"] [data-field=seen]')
    first = seen.get_attribute("data-at")
    expect(seen).not_to_have_attribute("data-at", first, timeout=JOB_MS)
    # Plotly drew every chart; the utilization chart has its cpu and memory lines.
    expect(tab.locator("#chart-util .scatterlayer .trace")).to_have_count(2)
    for chart in ("#chart-finished", "#chart-states", "#chart-queues"):
        expect(tab.locator(f"{chart} .main-svg").first).to_be_visible()
    expect(tab.locator("#queue-table tbody tr")).to_have_count(4)  # cpu, etl, train, gpu
    # The summary counts this run's jobs: three finished, one running.
    expect(tab.locator("#queue-table tbody tr").first).to_contain_text("cpu")
    expect(tab.locator("#queue-table tbody tr").first.locator("td").nth(2)).to_have_text("1")
    tab.wait_for_timeout(4000)  # a few live points on the chart for the picture
    tab.screenshot(path=ARTIFACTS / "cluster-overview.png", full_page=True)
    tab.locator('#windows button[data-window="3600"]').click()
    expect(tab.locator('#windows button[data-window="3600"]')).to_have_class("on")
    expect(tab.locator("#chart-util .scatterlayer .trace")).to_have_count(2)

    # A node's page follows the node's own stream: its whole health at each heartbeat.
    tab.goto("/nodes/w1/")
    expect(tab.locator("#live-indicator")).to_have_attribute("data-state", "live")
    seen = tab.locator("#node-seen")
    expect(seen).not_to_have_attribute("data-at", "")
    first = seen.get_attribute("data-at")
    expect(seen).not_to_have_attribute("data-at", first, timeout=JOB_MS)
    expect(tab.locator("#chart-cores .main-svg").first).to_be_visible()
    urls = tab.traffic.urls
    assert live.ws_url("/ws/cluster/?show=nodes,jobs,alerts") in urls
    assert live.ws_url("/ws/nodes/w1/?show=jobs") in urls
    tab.traffic.assert_clean()


def test_html_in_a_job_name_and_a_log_line_stays_text_on_the_dashboards(tab):
    user = log_in(tab, "ops", staff=True)
    AlertRule.objects.create(name="failed jobs", kind="job_failed", threshold_minutes=60)
    tab.goto("/cluster/")
    expect(tab.locator("#live-indicator")).to_have_attribute("data-state", "live")
    job = submit(user, kind="diag.sleep", name=XSS_NAME,
                 params={"seconds": 1, "fail": True, "note": XSS_LOG})
    # The failure reaches the feed, the alerts box and a toast, each as text.
    expect(tab.locator("#notices")).to_contain_text(f"({XSS_NAME}) failed", timeout=JOB_MS)
    expect(tab.locator("#alert-list")).to_contain_text(XSS_NAME, timeout=JOB_MS)
    expect(tab.locator(".toast").filter(has_text=XSS_NAME).first).to_be_visible()
    assert tab.locator("#notices img, #alert-list img, .toasts img").count() == 0
    assert tab.evaluate("typeof window.__xss") == "undefined"
    tab.screenshot(path=ARTIFACTS / "cluster-alert.png", full_page=True)

    tab.goto(f"/jobs/{job.pk}/")
    log = tab.locator("#job-log")
    expect(log).to_contain_text(XSS_LOG)
    assert log.locator("img, script").count() == 0
    # The log's search keeps the matching line; the download has every line, as text.
    tab.locator("#log-search").fill("onerror")
    expect(tab.locator("#log-hits")).to_have_text("1 matching")
    expect(log.locator(".line:visible")).to_have_count(1)
    with tab.expect_download() as download:
        tab.locator("#log-download").click()
    text = open(download.value.path(), encoding="utf-8").read()
    assert XSS_LOG in text and "sleeping 1 s" in text
    # The attempt's timeline and the job's metric chart are drawn.
    expect(tab.locator("#job-timeline .main-svg").first).to_be_visible()
    expect(tab.locator("#job-metrics figcaption")).to_have_text(["remaining_s"])
    assert tab.evaluate("typeof window.__xss") == "undefined"
    tab.screenshot(path=ARTIFACTS / "job-failed-html.png", full_page=True)
    tab.traffic.assert_clean()


def test_the_token_page_copies_the_new_key_and_asks_before_revoking(tab):
    from accounts.models import ApiToken

    log_in(tab)
    tab.goto("/tokens/")
    tab.get_by_label("Name").fill("laptop")
    tab.get_by_role("button", name="Create").click()
    key = tab.locator("#new-key").input_value()
    tab.context.grant_permissions(["clipboard-read", "clipboard-write"])
    tab.locator("#copy-key").click()
    expect(tab.locator("#copy-key")).to_have_text("Copied")

    tab.goto("/tokens/")
    tab.once("dialog", lambda dialog: dialog.dismiss())
    tab.get_by_role("button", name="Revoke").click()
    assert ApiToken.objects.get(name="laptop").revoked_at is None  # asked, and told no
    tab.once("dialog", lambda dialog: dialog.accept())
    with tab.expect_navigation():
        tab.get_by_role("button", name="Revoke").click()
    assert ApiToken.objects.get(name="laptop").revoked_at is not None
    assert key
    tab.traffic.assert_clean()


def test_an_invitation_is_accepted_on_the_teams_page(tab):
    from accounts import teams
    from accounts.models import Membership, Team

    user = log_in(tab)
    team = Team.objects.create(name="lab")
    admin = get_user_model().objects.create_user("lab-admin")
    Membership.objects.create(team=team, user=admin, role="admin")
    teams.invite(admin, team, user.username, "member", via="page")
    tab.goto("/teams/")
    expect(tab.locator("#invitations")).to_contain_text("lab")
    with tab.expect_navigation():
        tab.get_by_role("button", name="Accept").click()
    expect(tab.locator("#team-lab")).to_be_visible()
    assert teams.role_in(user, team.pk) == "member"


# What a first-time user meets: no page wider than a phone, the submit form's defaults on
# `make run`'s settings (no warehouse), errors summed up at the top, a sane ETA from the first
# seconds of a job, the 7 d chart inside its window, and the token page safe to reload.

PHONE = {"width": 390, "height": 844}
WIDE = {"width": 1440, "height": 900}


def as_time(text: str) -> datetime:
    """A time as Plotly keeps it ("2026-12-04 20:15:28.123", in UTC here) or as ISO."""
    moment = datetime.fromisoformat(str(text).replace("Z", "+00:00").replace(" ", "T"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def page_width(page) -> int:
    return page.evaluate("document.documentElement.scrollWidth")


def test_no_page_is_wider_than_a_phone(tab):
    user = log_in(tab, "phone", staff=True)
    job = submit(user, kind="diag.fanout", params={"parts": 3, "seconds": 0}, name="wide?")
    wait_for_job(job.pk, timeout=JOB_MS / 1000 * 2)
    pages = ["/jobs/", "/jobs/new/", "/jobs/new/?kind=etl.sql", "/jobs/new/?kind=train.sweep",
             f"/jobs/{job.pk}/", "/cluster/", "/nodes/w1/", "/schedules/", "/schedules/new/",
             "/teams/", "/tokens/", "/api/docs/", "/no/such/page/"]
    wide = {}
    for viewport in (WIDE, PHONE):
        tab.set_viewport_size(viewport)
        for path in pages:
            tab.goto(path)
            tab.wait_for_load_state("networkidle")
            tab.wait_for_timeout(300)  # charts draw after their data arrives
            name = re.sub(r"[^a-z0-9]+", "-", path.strip("/")) or "root"
            tab.screenshot(path=ARTIFACTS / f"width-{viewport['width']}-{name}.png",
                           full_page=True)
            if page_width(tab) > viewport["width"]:
                wide[f"{path} at {viewport['width']}"] = page_width(tab)
    assert wide == {}
    # On a phone the top bar's links stay reachable: they scroll inside the bar.
    nav = tab.locator(".topbar nav")
    assert nav.evaluate("el => el.getBoundingClientRect().right") <= PHONE["width"]
    tab.traffic.assert_clean()


@pytest.fixture
def no_warehouse_web(live):
    """A second web server on `make run`'s settings: no WAREHOUSE_URL (the same database,
    Redis and workers)."""
    port = free_port()
    env = {k: v for k, v in live.cluster.env.items() if k != "WAREHOUSE_URL"}
    proc = live.cluster.spawn("web-plain", [str(BIN / "daphne"), "-b", "127.0.0.1", "-p",
                                            str(port), "portal.asgi:application"], env=env)
    wait_for_port(port, proc=proc)
    yield f"http://127.0.0.1:{port}"
    try:
        live.cluster.kill("web-plain", signal.SIGTERM)
    except subprocess.TimeoutExpired:  # as portal.web ends a server that does not stop
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_the_clickstream_form_submits_as_it_opens_without_a_warehouse(tab, no_warehouse_web):
    log_in(tab, "clicks")
    tab.goto(f"{no_warehouse_web}/jobs/new/?kind=etl.clickstream")
    target = tab.locator('select[name="param-target"]')
    expect(target).to_have_value("parquet")
    expect(tab.locator("#field-table")).to_be_hidden()  # a warehouse-only field
    expect(tab.locator("#field-output")).to_be_visible()
    tab.screenshot(path=ARTIFACTS / "clickstream-form.png", full_page=True)
    with tab.expect_navigation(url=JOB_URL):
        tab.get_by_role("button", name="Submit", exact=True).click()
    job = Job.objects.get(pk=int(JOB_URL.search(tab.url)[1]))
    assert job.kind == "etl.clickstream" and job.params["target"] == "parquet"
    wait_for_job(job.pk, states={"running", "succeeded"}, timeout=60)
    try:  # frees the workers for the next test; it may have ended already (then refused)
        services.cancel_job(job=job, via="api")
    except TransitionRefused:
        pass
    wait_for_job(job.pk, timeout=60)


def test_an_error_of_the_whole_form_is_at_the_top_and_in_view(tab, no_warehouse_web):
    log_in(tab, "summary")
    tab.set_viewport_size(PHONE)
    tab.goto(f"{no_warehouse_web}/jobs/new/?kind=etl.clickstream")
    tab.locator('select[name="param-target"]').select_option("warehouse")
    expect(tab.locator("#field-table")).to_be_visible()
    expect(tab.locator("#field-output")).to_be_hidden()
    with tab.expect_navigation() as posted:
        tab.get_by_role("button", name="Submit", exact=True).click()
    assert posted.value.status == 400
    summary = tab.locator("#error-summary")
    expect(summary).to_contain_text("target 'warehouse' needs WAREHOUSE_URL")
    expect(summary).to_be_in_viewport()  # scrolled to, below the examples
    tab.screenshot(path=ARTIFACTS / "form-error-summary-390.png")
    assert Job.objects.count() == 0


def test_the_eta_is_sane_from_the_first_seconds_of_a_job(tab):
    user = log_in(tab, "eta")
    job = submit(user, kind="diag.sleep", params={"seconds": 60}, name="eta")
    wait_for_job(job.pk, states={"running"}, timeout=JOB_MS / 1000)
    time.sleep(3)  # the page opens on a job some way in, as the report had it
    tab.goto(f"/jobs/{job.pk}/")
    shown, deadline = [], time.monotonic() + 12
    while time.monotonic() < deadline:
        text = tab.locator("#job-rate").text_content()
        if text:
            shown.append(text)
        tab.wait_for_timeout(250)
    assert shown, "no rate or ETA within 12 s of opening a running job"
    for text in shown:
        match = re.fullmatch(r"([\d.]+) s/s · ETA (\d+):(\d\d)", text)
        assert match, text
        rate, eta = float(match[1]), int(match[2]) * 60 + int(match[3])
        assert 0.5 <= rate <= 2.0, shown  # one second of sleep per second
        assert 20 <= eta <= 75, shown
    tab.screenshot(path=ARTIFACTS / "job-eta.png", full_page=True)
    tab.once("dialog", lambda dialog: dialog.accept())
    tab.get_by_role("button", name="Cancel").click()
    wait_for_job(job.pk, timeout=60)


def test_the_seven_day_chart_draws_its_points_inside_its_window(tab, live):
    log_in(tab, "week")
    deadline = time.monotonic() + 20
    while not NodeSample.objects.exists():  # the tables were emptied for this test
        assert time.monotonic() < deadline, "the nodes have reported no utilization"
        time.sleep(0.2)
    started = NodeSample.objects.order_by("ts").values_list("ts", flat=True).first()
    tab.goto("/cluster/")
    with tab.expect_response(re.compile(r"/api/v1/cluster/metrics/\?window=604800")):
        tab.get_by_role("button", name="7 d").click()
    tab.wait_for_timeout(500)
    drawn = tab.evaluate("""() => { const el = document.getElementById("chart-util");
        return {x: el.data[0].x, range: el.layout.xaxis.range}; }""")
    now = datetime.now(UTC)
    stamps = [as_time(x) for x in drawn["x"]]
    assert stamps, "the 7 d chart has no points"
    assert all(started - timedelta(seconds=1) <= t <= now + timedelta(seconds=5)
               for t in stamps), (started, stamps)
    low, high = (as_time(r) for r in drawn["range"])
    assert timedelta(days=6.9) <= high - low <= timedelta(days=7.1)  # a week, not milliseconds
    tab.screenshot(path=ARTIFACTS / "cluster-7d.png", full_page=True)


def test_reloading_the_token_page_after_a_create_makes_no_second_token(tab):
    user = log_in(tab, "tokens")
    tab.goto("/tokens/")
    tab.get_by_label("Name").fill("laptop")
    tab.get_by_role("button", name="Create token").click()
    expect(tab).to_have_url(re.compile(r"/tokens/$"))
    key = tab.locator("#new-key").input_value()
    assert key
    tab.reload()
    expect(tab.locator("#new-key")).to_have_count(0)
    assert key not in tab.content()
    assert ApiToken.objects.filter(user=user, name="laptop").count() == 1
    tab.traffic.assert_clean()


def test_retry_on_a_failed_jobs_page_opens_a_new_job_with_its_parameters(tab):
    user = log_in(tab, "retry")
    job = submit(user, kind="diag.sleep", params={"seconds": 0, "fail": True}, name="fails")
    tab.goto(f"/jobs/{job.pk}/")
    expect(tab.locator("#job-state")).to_have_text("failed", timeout=JOB_MS)
    retry = tab.get_by_role("button", name="Retry")
    expect(retry).to_be_visible()
    with tab.expect_navigation(url=JOB_URL):
        retry.click()
    again = Job.objects.get(pk=int(JOB_URL.search(tab.url)[1]))
    assert again.pk != job.pk and (again.kind, again.params) == (job.kind, job.params)
    expect(tab.locator("#job-state")).to_have_text("failed", timeout=JOB_MS)  # it ran again
    tab.traffic.assert_clean()


def test_the_dashboard_shows_what_happened_before_it_opened_then_follows_live(tab):
    user = log_in(tab, "watcher")
    fine = submit(user, kind="diag.noop", name="fine")
    broken = submit(user, kind="diag.sleep", name="broken", params={"seconds": 1, "fail": True})
    busy = submit(user, kind="diag.sleep", name="busy", params={"seconds": 60})
    for job in (fine, broken):
        wait_for_job(job.pk, timeout=JOB_MS / 1000)
    busy = wait_for_job(busy.pk, states={"running"}, timeout=JOB_MS / 1000)
    tab.goto("/cluster/")
    feed = tab.locator("#notices")
    # From the page's snapshot: each job's end once, linked to its page.
    failed = feed.locator("li", has_text=f"job {broken.pk} (broken) failed")
    expect(failed).to_have_count(1)
    expect(failed.locator("a")).to_have_attribute("href", f"/jobs/{broken.pk}/")
    expect(feed.locator("li", has_text=f"job {fine.pk} (fine) succeeded")).to_have_count(1)
    # The node running the busy job names it.
    card = tab.locator(f'.node-card[data-node="{busy.node}"]')
    expect(card.locator(f'a[href="/jobs/{busy.pk}/"]')).to_have_text(f"{busy.pk} · busy")
    expect(tab.locator("#live-indicator")).to_have_attribute("data-state", "live")
    # Then live: its cancel reaches the feed once and takes it off its node's card.
    services.cancel_job(job=busy, actor=user)
    expect(feed.locator("li", has_text=f"job {busy.pk} (busy) cancelled")).to_have_count(
        1, timeout=JOB_MS)
    expect(card.locator(f'a[href="/jobs/{busy.pk}/"]')).to_have_count(0)
    tab.screenshot(path=ARTIFACTS / "cluster-feed.png", full_page=True)
    # The whole feed, a page at a time, from the same lines.
    tab.locator("#feed-older").click()
    expect(tab).to_have_url(re.compile(r"/events/"))
    expect(tab.locator("#feed li", has_text=f"job {broken.pk} (broken) failed")).to_have_count(1)
    tab.traffic.assert_clean()


def test_a_fan_out_whose_partitions_took_no_time_draws_a_bar_for_each(tab):
    user = log_in(tab, "fanner")
    job = submit(user, kind="diag.fanout", params={"parts": 4, "seconds": 0}, name="instant")
    assert wait_for_job(job.pk, timeout=JOB_MS / 1000 * 2).state == "succeeded"
    # Done within the same millisecond, as they often are on an idle node.
    assert Job.objects.filter(parent=job).update(finished_at=F("started_at")) == 4
    tab.goto(f"/jobs/{job.pk}/")
    expect(tab.locator("#partitions-summary")).to_have_text("4 of 4 ended")
    bars = tab.locator("#partitions-chart .barlayer .point path")
    expect(bars).to_have_count(4)
    heights = [bars.nth(i).bounding_box()["height"] for i in range(4)]
    assert all(height >= 1 for height in heights), heights
    tab.traffic.assert_clean()
