"""Cron schedules: the cron check, the reconciler's tick (one job however many runs were
missed, once however many reconcilers), bad schedules that record why, and the pages, the API
and the admin, each showing a team's schedules to its members only."""

import re
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import Membership
from jobs.models import Job
from portal.reconciler import Reconciler
from schedules import services
from schedules.cron import cron_errors, next_after
from schedules.models import Schedule

EVERY_5 = "*/5 * * * *"


@pytest.fixture
def teams(cast):
    """alice is a member of ml, bob a viewer there (and a member of etl)."""
    Membership.objects.create(team=cast.ml, user=cast.bob, role="viewer")
    return cast


def make(user, *, team="ml", cron=EVERY_5, kind="diag.sleep", params=None, **data):
    return services.create_schedule(user=user, data={
        "name": data.pop("name", "nightly"), "team": team, "cron": cron, "kind": kind,
        "params": {"seconds": 1} if params is None else params, **data})


def overdue(schedule, minutes):
    """As if the portal had been down: its next run was `minutes` ago."""
    due_at = timezone.now() - timedelta(minutes=minutes)
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=due_at)
    return due_at


def client_for(user):
    client = Client()
    client.force_login(user)
    return client


def api_for(user):
    from accounts.models import ApiToken

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {ApiToken.issue(user)[1]}")
    return client


# The cron expression.

@pytest.mark.parametrize(("expression", "message"), [
    ("", "is required"),
    ("* * * *", "must have 5 fields"),
    ("0 0 * * * 0", "must have 5 fields"),
    ("@daily", "must have 5 fields"),
    ("61 * * * *", "is not a valid cron expression"),
    ("* 24 * * *", "is not a valid cron expression"),
    ("every day", "must have 5 fields"),
    ("a b c d e", "is not a valid cron expression"),
    ("0 0 30 2 *", "never matches a date"),
])
def test_a_bad_cron_expression_says_what_is_wrong(expression, message):
    errors = cron_errors(expression)
    assert len(errors) == 1 and errors[0].startswith(message), errors


@pytest.mark.parametrize("expression", [EVERY_5, "0 3 * * *", "30 2 * * mon-fri",
                                        "0 0 1 */3 *", "0  3 *  * *"])
def test_good_cron_expressions_pass(expression):
    assert cron_errors(expression) == []


def test_the_next_run_is_strictly_after_the_moment(db):
    at = timezone.now().replace(minute=10, second=0, microsecond=0)
    assert next_after(EVERY_5, at) == at + timedelta(minutes=5)
    assert next_after(EVERY_5, at + timedelta(seconds=1)) == at + timedelta(minutes=5)


def test_creating_checks_cron_and_job_and_reports_every_field(teams):
    with pytest.raises(services.InvalidSchedule) as caught:
        make(teams.alice, cron="61 * * * *", params={"seconds": -1, "bogus": 1}, name="",
             priority=1000)
    errors = caught.value.errors
    assert caught.value.status == 400
    assert errors["cron"] == ["is not a valid cron expression"]
    assert errors["name"] == ["is required"]
    assert errors["params"] == {"seconds": ["must be at least 0"],
                                "bogus": ["is not a parameter of this kind"]}
    assert errors["priority"] == ["must be between -100 and 100"]
    assert Schedule.objects.count() == 0


def test_a_new_schedule_runs_first_at_its_next_cron_time(teams):
    before = timezone.now()
    schedule = make(teams.alice)
    assert schedule.owner == teams.alice and schedule.team == teams.ml
    assert before < schedule.next_run_at <= next_after(EVERY_5, timezone.now())
    assert schedule.last_run_at is None and schedule.last_job is None


# The reconciler's tick.

def test_three_missed_runs_submit_one_job_and_the_next_run_is_after_now(teams):
    schedule = make(teams.alice, name="every five", priority=7)
    overdue(schedule, 17)  # due 17 minutes ago: three runs missed
    now = timezone.now()

    assert services.tick(now) == 1
    job = Job.objects.get()
    assert (job.kind, job.name, job.params, job.priority) == (
        "diag.sleep", "every five", {"seconds": 1.0, "fail": False, "ignore_cancel": False,
                                     "note": ""}, 7)
    assert job.owner == teams.alice and job.team == teams.ml
    schedule.refresh_from_db()
    assert schedule.next_run_at == next_after(EVERY_5, now) > now
    assert schedule.last_run_at == now and schedule.last_job == job
    assert schedule.last_error == ""

    assert services.tick(now) == 0  # a second pass at the same time: nothing is due
    assert services.tick(now + timedelta(seconds=1)) == 0
    assert Job.objects.count() == 1


def test_a_schedule_not_due_yet_or_disabled_submits_nothing(teams):
    make(teams.alice)
    off = make(teams.alice, name="off", enabled=False)
    assert off.next_run_at is None
    Schedule.objects.filter(pk=off.pk).update(next_run_at=timezone.now() - timedelta(hours=1))
    assert services.tick(timezone.now()) == 0
    assert Job.objects.count() == 0


def test_a_pass_that_read_a_run_another_pass_claimed_submits_nothing(teams):
    schedule = make(teams.alice)
    overdue(schedule, 6)
    now = timezone.now()
    [(pk, due_at, cron)] = services.due(now)  # both passes read the same due run
    assert services.run_due(pk, due_at, cron, now) is True
    assert services.run_due(pk, due_at, cron, now) is False
    assert Job.objects.count() == 1


def test_two_reconcilers_at_once_claim_a_run_once(transactional_db, teams, monkeypatch):
    schedules = [make(teams.alice, name=f"s{i}") for i in range(3)]
    for schedule in schedules:
        overdue(schedule, 11)
    now = timezone.now()
    both_read = threading.Barrier(2)
    read = services.due

    def due_then_wait(at):
        rows = read(at)
        both_read.wait(timeout=10)  # neither claims before both have seen every run due
        return rows

    monkeypatch.setattr(services, "due", due_then_wait)
    submitted, failures = [], []

    def reconciler():
        try:
            submitted.append(services.tick(now))
        except Exception as exc:  # pragma: no cover - shown by the assertion below
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=reconciler) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not failures and sum(submitted) == 3, (submitted, failures)
    assert sorted(Job.objects.values_list("name", flat=True)) == ["s0", "s1", "s2"]


def test_a_bad_schedule_records_why_and_the_others_still_run(teams):
    gone = make(teams.alice, name="kind removed")
    Schedule.objects.filter(pk=gone.pk).update(kind="diag.removed")
    bad_params = make(teams.alice, name="params went bad")
    Schedule.objects.filter(pk=bad_params.pk).update(params={"seconds": -3})
    good = make(teams.alice, name="fine")
    for schedule in (gone, bad_params, good):
        overdue(schedule, 30)
    now = timezone.now()

    assert services.tick(now) == 1
    assert list(Job.objects.values_list("name", flat=True)) == ["fine"]
    gone.refresh_from_db()
    bad_params.refresh_from_db()
    assert gone.last_error == "kind: unknown kind 'diag.removed'"
    assert bad_params.last_error == "params.seconds: must be at least 0"
    for schedule in (gone, bad_params):
        assert schedule.next_run_at == next_after(EVERY_5, now)  # moved on, not retried
        assert schedule.last_run_at is None and schedule.last_job is None
    assert services.tick(now) == 0

    # Once fixed, the next run submits and the error is gone.
    services.update_schedule(schedule=bad_params, user=teams.alice,
                             data={"params": {"seconds": 2}})
    overdue(bad_params, 1)
    assert services.tick(timezone.now()) == 1
    bad_params.refresh_from_db()
    assert bad_params.last_error == "" and bad_params.last_job.params["seconds"] == 2.0


def test_an_owner_who_lost_the_right_submits_nothing(teams):
    schedule = make(teams.alice)
    overdue(schedule, 5)
    Membership.objects.filter(team=teams.ml, user=teams.alice).update(role="viewer")
    assert services.tick(timezone.now()) == 0
    schedule.refresh_from_db()
    assert schedule.last_error.startswith("team: ") and Job.objects.count() == 0


def test_a_kind_that_needs_a_permission_is_refused_to_an_owner_without_it(teams):
    with pytest.raises(services.InvalidSchedule) as caught:
        make(teams.alice, kind="shell", params={"argv": ["/usr/bin/printf", "hi"]})
    assert caught.value.status == 403 and "kind" in caught.value.errors


def test_an_unexpected_error_is_recorded_and_does_not_stop_the_others(teams, monkeypatch):
    first, second = make(teams.alice, name="first"), make(teams.alice, name="second")
    overdue(first, 20)
    overdue(second, 10)
    submit = services._submit

    def broken_for_first(schedule):
        if schedule.name == "first":
            raise RuntimeError("disk on fire")
        return submit(schedule)

    monkeypatch.setattr(services, "_submit", broken_for_first)
    now = timezone.now()
    assert services.tick(now) == 1
    first.refresh_from_db()
    assert first.last_error == "RuntimeError: disk on fire"
    assert first.next_run_at == next_after(EVERY_5, now)
    assert list(Job.objects.values_list("name", flat=True)) == ["second"]


def test_the_reconciler_pass_runs_the_schedules(teams, redis_client):
    overdue(make(teams.alice), 12)
    assert Reconciler(redis_client).once()["scheduled"] == 1
    assert Job.objects.count() == 1


# Changing a schedule.

def test_who_changes_the_job_owns_its_jobs_and_a_new_cron_counts_from_now(teams):
    Membership.objects.filter(team=teams.ml, user=teams.bob).update(role="member")
    schedule = make(teams.alice)
    services.update_schedule(schedule=schedule, user=teams.bob, data={"enabled": False})
    schedule.refresh_from_db()
    assert schedule.owner == teams.alice and schedule.next_run_at is None
    services.update_schedule(schedule=schedule, user=teams.bob,
                             data={"enabled": True, "params": {"seconds": 3}})
    schedule.refresh_from_db()
    assert schedule.owner == teams.bob and schedule.next_run_at > timezone.now()
    services.update_schedule(schedule=schedule, user=teams.alice, data={"cron": "0 3 * * *"})
    schedule.refresh_from_db()
    assert schedule.owner == teams.bob
    assert schedule.next_run_at == next_after("0 3 * * *", timezone.now())


def test_a_change_saved_as_a_run_is_claimed_does_not_bring_the_run_back(teams):
    schedule = make(teams.alice)
    overdue(schedule, 6)
    loaded = Schedule.objects.get(pk=schedule.pk)  # a form opened just before the pass
    assert services.tick(timezone.now()) == 1
    services.update_schedule(schedule=loaded, user=teams.alice, data={"params": {"seconds": 4}})
    assert services.tick(timezone.now()) == 0
    assert Job.objects.count() == 1


def test_a_viewer_may_not_change_or_delete(teams):
    from django.core.exceptions import PermissionDenied

    schedule = make(teams.alice)
    with pytest.raises(PermissionDenied):
        services.update_schedule(schedule=schedule, user=teams.bob, data={"enabled": False})
    with pytest.raises(PermissionDenied):
        services.delete_schedule(schedule=schedule, user=teams.bob)
    with pytest.raises(services.InvalidSchedule) as caught:
        make(teams.bob, team="ml")
    assert caught.value.errors == {"team": ["you may only view team ml's jobs and schedules"]}
    with pytest.raises(services.InvalidSchedule) as caught:
        make(teams.alice, team="etl")
    assert caught.value.errors == {"team": ["no such team: etl"]}


# Pages.

def test_the_list_shows_the_schedules_of_my_teams_only(teams):
    mine = make(teams.alice, name="ml nightly")
    make(teams.bob, team="etl", name="etl hourly")
    overdue(mine, 6)
    services.tick(timezone.now())
    html = client_for(teams.alice).get("/schedules/").content.decode()
    assert "ml nightly" in html and "etl hourly" not in html
    job = Job.objects.get()
    assert f'href="/jobs/{job.pk}/"' in html and EVERY_5 in html
    assert 'href="/schedules/new/"' in html and 'href="/schedules/"' in html  # the nav link


def test_a_schedule_of_another_team_is_not_found(teams):
    theirs = make(teams.bob, team="etl")
    alice = client_for(teams.alice)
    assert alice.get(f"/schedules/{theirs.pk}/").status_code == 404
    assert alice.post(f"/schedules/{theirs.pk}/", {"name": "x"}).status_code == 404
    assert alice.post(f"/schedules/{theirs.pk}/delete/").status_code == 404
    assert Schedule.objects.filter(pk=theirs.pk, name="nightly").exists()


def test_a_viewer_sees_the_form_read_only_and_cannot_post(teams):
    schedule = make(teams.alice)
    bob = client_for(teams.bob)
    html = bob.get("/schedules/").content.decode()
    assert "nightly" in html and "(view only)" in html
    html = bob.get(f"/schedules/{schedule.pk}/").content.decode()
    assert 'id="read-only"' in html and "<fieldset disabled>" in html
    assert "Save</button>" not in html and 'id="delete-form"' not in html
    assert bob.post(f"/schedules/{schedule.pk}/", {"name": "mine now", "cron": EVERY_5,
                                                   "kind": "diag.noop", "team": "ml",
                                                   "enabled": "on"}).status_code == 403
    assert bob.post(f"/schedules/{schedule.pk}/delete/").status_code == 403
    schedule.refresh_from_db()
    assert schedule.name == "nightly" and schedule.owner == teams.alice


def test_the_form_creates_edits_and_deletes(teams):
    alice = client_for(teams.alice)
    html = alice.get("/schedules/new/").content.decode()
    assert 'name="params"' in html and '<option value="ml"' in html and "diag.sleep" in html
    response = alice.post("/schedules/new/", {
        "name": "from the form", "team": "ml", "cron": "0 3 * * *", "kind": "diag.sleep",
        "params": '{"seconds": 2}', "priority": "5", "enabled": "on"})
    assert response.status_code == 302 and response["Location"] == "/schedules/"
    schedule = Schedule.objects.get()
    assert (schedule.params, schedule.priority, schedule.enabled) == ({"seconds": 2}, 5, True)
    assert schedule.next_run_at == next_after("0 3 * * *", timezone.now())

    html = alice.get(f"/schedules/{schedule.pk}/").content.decode()
    assert 'value="from the form"' in html and "&quot;seconds&quot;: 2" in html
    response = alice.post(f"/schedules/{schedule.pk}/", {
        "name": "renamed", "team": "ml", "cron": "0 4 * * *", "kind": "diag.sleep",
        "params": '{"seconds": 2}', "priority": "5"})  # no "enabled": unchecked
    assert response.status_code == 302
    schedule.refresh_from_db()
    assert schedule.name == "renamed" and not schedule.enabled and schedule.next_run_at is None

    assert alice.post(f"/schedules/{schedule.pk}/delete/").status_code == 302
    assert not Schedule.objects.exists()


def test_a_bad_form_shows_each_error_beside_its_field(teams):
    alice = client_for(teams.alice)
    response = alice.post("/schedules/new/", {
        "name": "x", "team": "ml", "cron": "* * *", "kind": "diag.sleep",
        "params": '{"seconds": -1}', "priority": "1", "enabled": "on"})
    assert response.status_code == 400
    html = response.content.decode()
    assert 'data-error="cron">must have 5 fields' in html
    assert 'data-error="params">seconds: must be at least 0' in html
    assert 'value="* * *"' in html  # what was typed is kept
    response = alice.post("/schedules/new/", {"name": "x", "team": "ml", "cron": EVERY_5,
                                              "kind": "diag.sleep", "params": "{nope"})
    assert response.status_code == 400 and 'data-error="params">must be JSON' in \
        response.content.decode()
    assert not Schedule.objects.exists()


def test_user_text_on_the_pages_is_escaped(teams):
    schedule = make(teams.alice, name="<script>alert(1)</script>",
                    params={"note": "</textarea><script>x()</script>"})
    alice = client_for(teams.alice)
    for path in ("/schedules/", f"/schedules/{schedule.pk}/"):
        html = alice.get(path).content.decode()
        assert "<script>alert(1)</script>" not in html and "<script>x()" not in html


# The REST API.

def test_the_api_creates_lists_changes_and_deletes(teams):
    api = api_for(teams.alice)
    response = api.post("/api/v1/schedules/", {
        "name": "api one", "team": "ml", "cron": EVERY_5, "kind": "diag.sleep",
        "params": {"seconds": 1}}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["owner"] == "alice" and body["team"] == "ml" and body["enabled"] is True
    assert body["editable"] is True and body["next_run_at"] and body["last_job"] is None
    sid = body["id"]

    make(teams.bob, team="etl", name="theirs")
    assert [s["name"] for s in api.get("/api/v1/schedules/").json()] == ["api one"]

    response = api.patch(f"/api/v1/schedules/{sid}/", {"enabled": False}, format="json")
    assert response.status_code == 200 and response.json()["next_run_at"] is None
    assert api.get(f"/api/v1/schedules/{sid}/").json()["enabled"] is False
    assert api.delete(f"/api/v1/schedules/{sid}/").status_code == 204
    assert api.get(f"/api/v1/schedules/{sid}/").status_code == 404


def test_the_api_answers_400_with_per_field_errors(teams):
    api = api_for(teams.alice)
    response = api.post("/api/v1/schedules/", {
        "name": "x", "cron": "5 * *", "kind": "diag.sleep", "params": {"seconds": "a"},
        "next_run_at": "2020-01-01T00:00:00Z"}, format="json")
    assert response.status_code == 400
    assert response.json() == {"cron": ["must have 5 fields (minute hour day-of-month month "
                                        "day-of-week), not 3"],
                               "params": {"seconds": ["must be a number"]},
                               "next_run_at": ["cannot be set on a schedule"]}
    schedule = make(teams.alice)
    response = api.patch(f"/api/v1/schedules/{schedule.pk}/", {"kind": "nope"}, format="json")
    assert response.status_code == 400 and response.json() == {"kind": ["unknown kind 'nope'"]}
    assert api.post("/api/v1/schedules/", [1], format="json").status_code == 400
    response = api.post("/api/v1/schedules/", {"name": "a\x00b", "team": "m\x00l",
                                               "cron": EVERY_5, "kind": "diag.noop"},
                        format="json")
    assert response.status_code == 400 and set(response.json()) == {"name", "team"}


def test_the_api_hides_other_teams_schedules_and_keeps_viewers_read_only(teams):
    theirs = make(teams.bob, team="etl", name="etl one")
    alice = api_for(teams.alice)
    for call in (alice.get, alice.patch, alice.delete):
        assert call(f"/api/v1/schedules/{theirs.pk}/").status_code == 404
    assert alice.get("/api/v1/schedules/nope/").status_code == 404

    mine = make(teams.alice, name="ml one")
    bob = api_for(teams.bob)  # a member of etl, a viewer of ml
    listed = {s["name"]: s["editable"] for s in bob.get("/api/v1/schedules/").json()}
    assert listed == {"etl one": True, "ml one": False}
    assert bob.get(f"/api/v1/schedules/{mine.pk}/").json()["editable"] is False
    assert bob.patch(f"/api/v1/schedules/{mine.pk}/", {"enabled": False},
                     format="json").status_code == 403
    assert bob.delete(f"/api/v1/schedules/{mine.pk}/").status_code == 403
    assert Schedule.objects.get(pk=mine.pk).enabled


def test_the_openapi_schema_describes_the_schedule_endpoints(teams):
    schema = api_for(teams.alice).get("/api/schema/?format=json").json()
    assert {"get", "post"} <= set(schema["paths"]["/api/v1/schedules/"])
    assert {"get", "patch", "delete"} <= set(schema["paths"]["/api/v1/schedules/{schedule_id}/"])


# The admin.

def test_the_admin_lists_filters_runs_now_and_disables(teams):
    schedule = make(teams.alice, name="admin one")
    admin = client_for(teams.admin)
    html = admin.get("/admin/schedules/schedule/?enabled__exact=1&kind=diag.sleep").content
    assert b"admin one" in html
    assert admin.get(f"/admin/schedules/schedule/{schedule.pk}/change/").status_code == 200

    response = admin.post("/admin/schedules/schedule/", {
        "action": "run_now", "_selected_action": [schedule.pk]})
    assert response.status_code == 302
    schedule.refresh_from_db()
    job = Job.objects.get()
    assert schedule.last_job == job and job.owner == teams.alice
    next_run = schedule.next_run_at
    assert next_run is not None  # running now does not move the next run

    admin.post("/admin/schedules/schedule/", {"action": "disable",
                                             "_selected_action": [schedule.pk]})
    schedule.refresh_from_db()
    assert not schedule.enabled and schedule.next_run_at is None
    admin.post("/admin/schedules/schedule/", {"action": "enable",
                                             "_selected_action": [schedule.pk]})
    schedule.refresh_from_db()
    assert schedule.enabled and schedule.next_run_at == next_after(EVERY_5, timezone.now())


def test_the_admin_form_checks_cron_and_job_and_computes_the_next_run(teams):
    admin = client_for(teams.admin)
    form = {"name": "from admin", "team": teams.ml.pk, "owner": teams.alice.pk,
            "cron": "0 3 * * *", "kind": "diag.sleep", "params": '{"seconds": 1}',
            "priority": "0", "enabled": "on"}
    response = admin.post("/admin/schedules/schedule/add/", {**form, "cron": "99 * * * *",
                                                            "params": '{"seconds": -1}'})
    assert response.status_code == 200
    html = response.content.decode()
    assert "is not a valid cron expression" in html and "seconds: must be at least 0" in html
    response = admin.post("/admin/schedules/schedule/add/", form)
    assert response.status_code == 302
    schedule = Schedule.objects.get()
    assert schedule.next_run_at == next_after("0 3 * * *", timezone.now())


# Review fixes: the admin's owner, a schedule moved to another team, the audit trail of runs,
# enabling an enabled schedule, cron expressions too long for their column.

LONG_CRON = ",".join(map(str, range(60))) + " * * * *"  # valid, but 178 characters


@pytest.fixture
def staffer(teams):
    """A staff member who may manage schedules in the admin but not run shell commands."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user("staffer", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(
        content_type__app_label="schedules", codename__endswith="_schedule"))
    return user


SHELL = {"kind": "shell", "params": '{"argv": ["/usr/bin/printf", "hi"]}'}


def admin_form(teams, **changes):
    return {"name": "from admin", "team": teams.ml.pk, "cron": "0 3 * * *",
            "kind": "diag.sleep", "params": '{"seconds": 1}', "priority": "0",
            "enabled": "on", **changes}


def test_the_admin_checks_the_job_with_the_rights_of_who_makes_it_not_a_chosen_owner(
        teams, staffer):
    staff = client_for(staffer)
    html = staff.get("/admin/schedules/schedule/add/").content.decode()
    assert 'name="owner"' not in html  # nobody picks another owner
    response = staff.post("/admin/schedules/schedule/add/",
                          admin_form(teams, owner=teams.admin.pk, **SHELL))
    assert response.status_code == 200 and "kind" in response.context["adminform"].form.errors
    assert not Schedule.objects.exists()

    response = staff.post("/admin/schedules/schedule/add/", admin_form(teams,
                                                                     owner=teams.admin.pk))
    assert response.status_code == 302
    assert Schedule.objects.get().owner == staffer


def test_changing_the_job_in_the_admin_makes_it_yours_checked_with_your_rights(
        teams, staffer):
    shell = services.create_schedule(user=teams.admin, data={
        "name": "shell", "team": "ml", "cron": EVERY_5, "kind": "shell",
        "params": {"argv": ["/usr/bin/printf", "hi"]}})
    url = f"/admin/schedules/schedule/{shell.pk}/change/"
    staff = client_for(staffer)
    assert 'name="owner"' not in staff.get(url).content.decode()
    form = admin_form(teams, name="shell", cron=EVERY_5, kind="shell",
                      params='{"argv": ["/usr/bin/env"]}')
    response = staff.post(url, form)  # another command, run as the superuser's: refused
    assert response.status_code == 200 and "kind" in response.context["adminform"].form.errors
    # Not either when the form's hidden initial value claims the params were so already.
    response = staff.post(url, {**form, "initial-params": form["params"]})
    assert response.status_code == 200 and "kind" in response.context["adminform"].form.errors
    shell.refresh_from_db()
    assert shell.params["argv"] == ["/usr/bin/printf", "hi"] and shell.owner == teams.admin

    # Only the cron (or enabled) changed: the job is not, the owner stays.
    response = staff.post(url, {**form, "params": '{"argv": ["/usr/bin/printf", "hi"]}',
                                "cron": "0 4 * * *"})
    assert response.status_code == 302
    shell.refresh_from_db()
    assert shell.cron == "0 4 * * *" and shell.owner == teams.admin

    mine = make(teams.alice)
    response = client_for(teams.admin).post(
        f"/admin/schedules/schedule/{mine.pk}/change/",
        admin_form(teams, name="nightly", cron=EVERY_5, params='{"seconds": 9}',
                   owner=teams.alice.pk))
    assert response.status_code == 302
    mine.refresh_from_db()
    assert mine.owner == teams.admin and mine.params == {"seconds": 9}


def test_a_schedule_moved_to_another_team_forgets_the_old_teams_last_run(teams):
    Membership.objects.create(team=teams.etl, user=teams.alice, role="member")
    schedule = make(teams.alice)
    overdue(schedule, 6)
    assert services.tick(timezone.now()) == 1
    Schedule.objects.filter(pk=schedule.pk).update(last_error="team: once refused")
    schedule.refresh_from_db()
    assert schedule.last_job is not None

    services.update_schedule(schedule=schedule, user=teams.alice, data={"team": "etl"})
    schedule.refresh_from_db()
    assert schedule.team == teams.etl
    assert (schedule.last_job, schedule.last_run_at, schedule.last_error) == (None, None, "")
    body = api_for(teams.bob).get(f"/api/v1/schedules/{schedule.pk}/").json()
    assert body["last_job"] is None and body["last_run_at"] is None

    # Other changes keep the last run.
    overdue(schedule, 6)
    assert services.tick(timezone.now()) == 1
    services.update_schedule(schedule=schedule, user=teams.alice, data={"name": "renamed"})
    schedule.refresh_from_db()
    assert schedule.last_job is not None and schedule.last_run_at is not None


def test_a_schedule_moved_to_another_team_in_the_admin_forgets_its_last_run(teams):
    schedule = make(teams.alice)
    overdue(schedule, 6)
    assert services.tick(timezone.now()) == 1
    response = client_for(teams.admin).post(
        f"/admin/schedules/schedule/{schedule.pk}/change/",
        admin_form(teams, name="nightly", team=teams.etl.pk, cron=EVERY_5))
    assert response.status_code == 302
    schedule.refresh_from_db()
    assert schedule.team == teams.etl and schedule.last_job is None
    assert schedule.last_run_at is None


def test_scheduled_runs_are_audited_as_the_systems_and_run_now_as_the_admins(teams):
    from audit.models import AuditEntry

    schedule = make(teams.alice)
    overdue(schedule, 6)
    assert services.tick(timezone.now()) == 1
    job = Job.objects.get()
    submit = AuditEntry.objects.get(action="job.submit")
    assert (submit.actor, submit.via, submit.target_id) == (teams.alice, "system", str(job.pk))
    run = AuditEntry.objects.get(action="schedule.run")
    assert (run.actor, run.via, run.target_type, run.target_id, run.detail) == (
        None, "system", "schedule", str(schedule.pk), {"job": job.pk})

    response = client_for(teams.admin).post("/admin/schedules/schedule/", {
        "action": "run_now", "_selected_action": [schedule.pk]})
    assert response.status_code == 302
    second = Job.objects.latest("pk")
    assert second != job
    run_now = AuditEntry.objects.get(action="schedule.run_now")
    assert (run_now.actor, run_now.via, run_now.target_id, run_now.detail) == (
        teams.admin, "admin", str(schedule.pk), {"job": second.pk})
    assert AuditEntry.objects.get(action="job.submit", target_id=str(second.pk)).via == "system"
    assert AuditEntry.objects.filter(action="schedule.run").count() == 1


def test_enabling_an_enabled_schedule_in_the_admin_does_not_skip_its_due_run(teams):
    from audit.models import AuditEntry

    schedule = make(teams.alice)
    due_at = overdue(schedule, 3)
    admin = client_for(teams.admin)
    admin.post("/admin/schedules/schedule/", {"action": "enable",
                                             "_selected_action": [schedule.pk]})
    schedule.refresh_from_db()
    assert schedule.next_run_at == due_at
    assert not AuditEntry.objects.filter(action="schedule.change", via="admin").exists()
    assert services.tick(timezone.now()) == 1

    admin.post("/admin/schedules/schedule/", {"action": "disable",
                                             "_selected_action": [schedule.pk]})
    admin.post("/admin/schedules/schedule/", {"action": "enable",
                                             "_selected_action": [schedule.pk]})
    schedule.refresh_from_db()
    assert schedule.enabled and schedule.next_run_at == next_after(EVERY_5, timezone.now())
    assert AuditEntry.objects.filter(action="schedule.change", via="admin").count() == 2


def test_a_cron_expression_longer_than_its_column_gets_400_not_a_server_error(teams):
    assert cron_errors(LONG_CRON) == [f"must be at most 100 characters, not {len(LONG_CRON)}"]
    assert cron_errors(("* " * 50).strip()) != []  # 99 characters: too many fields, not long
    response = api_for(teams.alice).post("/api/v1/schedules/", {
        "name": "long", "team": "ml", "cron": LONG_CRON, "kind": "diag.noop"}, format="json")
    assert response.status_code == 400
    assert response.json() == {"cron": [f"must be at most 100 characters, not "
                                        f"{len(LONG_CRON)}"]}
    schedule = make(teams.alice)
    response = api_for(teams.alice).patch(f"/api/v1/schedules/{schedule.pk}/",
                                          {"cron": LONG_CRON}, format="json")
    assert response.status_code == 400 and list(response.json()) == ["cron"]
    response = client_for(teams.alice).post("/schedules/new/", {
        "name": "long", "team": "ml", "cron": LONG_CRON, "kind": "diag.noop",
        "params": "{}", "priority": "0", "enabled": "on"})
    assert response.status_code == 400
    assert 'data-error="cron">must be at most 100 characters' in response.content.decode()
    assert list(Schedule.objects.values_list("cron", flat=True)) == [EVERY_5]


def test_schedules_made_changed_and_deleted_over_the_api_are_audited(teams):
    from audit.models import AuditEntry

    api = api_for(teams.alice)
    made = api.post("/api/v1/schedules/", {
        "name": "audited", "team": "ml", "cron": EVERY_5, "kind": "diag.sleep",
        "params": {"seconds": 1}}, format="json").json()
    assert api.patch(f"/api/v1/schedules/{made['id']}/", {"cron": "0 * * * *"},
                     format="json").status_code == 200
    assert api.delete(f"/api/v1/schedules/{made['id']}/").status_code == 204
    trail = list(AuditEntry.objects.filter(target_type="schedule", target_id=made["id"])
                 .order_by("id").values_list("action", "via", "actor__username", "detail"))
    assert [(action, via, who) for action, via, who, _ in trail] == [
        ("schedule.change", "api", "alice"), ("schedule.change", "api", "alice"),
        ("schedule.delete", "api", "alice")]
    assert trail[0][3]["created"] is True and trail[1][3] == {"fields": ["cron"]}


# Limits: schedules per team, the shortest interval, runs against the team's submit rate.

def test_a_team_holds_at_most_schedules_per_team(teams, settings):
    settings.SCHEDULES_PER_TEAM = 3
    for n in range(3):
        make(teams.alice, name=f"s{n}")
    with pytest.raises(services.InvalidSchedule) as refused:
        make(teams.alice, name="one too many")
    assert refused.value.errors == {"team": ["team ml already has 3 schedules, the most a "
                                             "team may have"]}
    response = api_for(teams.alice).post("/api/v1/schedules/", {
        "name": "x", "team": "ml", "cron": EVERY_5, "kind": "diag.noop"}, format="json")
    assert response.status_code == 400 and list(response.json()) == ["team"]
    # Moving one in from another team is adding one too.
    Membership.objects.create(team=teams.etl, user=teams.alice, role="member")
    elsewhere = make(teams.alice, team="etl", name="etl's")
    with pytest.raises(services.InvalidSchedule):
        services.update_schedule(schedule=elsewhere, user=teams.alice, data={"team": "ml"})
    assert Schedule.objects.filter(team=teams.ml).count() == 3


@pytest.mark.parametrize("cron", ["* * * * *", "*/2 * * * *", "0,1 3 * * *",
                                  "0-4 * * * *"])
def test_a_schedule_more_often_than_the_minimum_interval_is_refused(teams, cron):
    with pytest.raises(services.InvalidSchedule) as refused:
        make(teams.alice, cron=cron)
    assert refused.value.errors == {"cron": ["runs more often than every 300 seconds, the "
                                             "shortest interval this portal allows"]}


def test_every_five_minutes_is_often_enough_and_the_minimum_is_a_setting(teams, settings):
    make(teams.alice, cron="*/5 * * * *")
    settings.SCHEDULE_MIN_INTERVAL_S = 3600
    with pytest.raises(services.InvalidSchedule):
        make(teams.alice, cron="*/30 * * * *")
    schedule = make(teams.alice, cron="0 * * * *")
    response = api_for(teams.alice).patch(f"/api/v1/schedules/{schedule.pk}/",
                                          {"cron": "*/10 * * * *"}, format="json")
    assert response.status_code == 400 and list(response.json()) == ["cron"]


def test_scheduled_runs_count_against_the_teams_submit_rate(teams, monkeypatch):
    from django.core.cache import cache
    from rest_framework.throttling import SimpleRateThrottle

    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES",
                        {**SimpleRateThrottle.THROTTLE_RATES, "submit": "3/min"})
    cache.clear()
    try:
        schedules = [make(teams.alice, name=f"s{n}") for n in range(5)]
        for schedule in schedules:
            overdue(schedule, 1)
        assert services.tick() == 3
        assert Job.objects.filter(team=teams.ml).count() == 3
        refused = Schedule.objects.exclude(last_error="")
        assert refused.count() == 2
        assert all("over its submit rate" in s.last_error for s in refused)
    finally:
        cache.clear()


def test_the_form_shows_the_next_five_run_times(teams):
    schedule = make(teams.alice, cron="0 3 * * *")
    html = client_for(teams.alice).get(f"/schedules/{schedule.pk}/").content.decode()
    shown = re.findall(r'<time datetime="([^"]+)">', html.split('id="next-runs"')[1]
                       .split("</p>")[0])
    expected, moment = [], timezone.now()
    for _ in range(5):
        moment = next_after("0 3 * * *", moment)
        expected.append(moment.isoformat())
    assert shown == expected
    bad = client_for(teams.alice).post(f"/schedules/{schedule.pk}/", {
        "name": "x", "team": "ml", "cron": "99 * * * *", "kind": "diag.noop", "enabled": "on"})
    assert bad.status_code == 400 and 'id="next-runs"' not in bad.content.decode()
