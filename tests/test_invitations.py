"""Membership by consent: a team's admin invites, the invited user accepts (the page, the API,
portalctl); a user's default team never moves because someone else acted; a user in no team
gets a team of their own only when their first job or schedule is saved, in the same
transaction, so a refused request leaves nothing behind."""

import json

import pytest
from django.test import Client
from rest_framework.test import APIClient

from accounts import teams
from accounts.models import ApiToken, Invitation, Membership, Role, Team
from audit.models import AuditEntry
from cli.main import main
from jobs.models import Job
from schedules.models import Schedule


@pytest.fixture
def dana(cast, django_user_model):
    """ml's admin."""
    dana = django_user_model.objects.create_user("dana")
    Membership.objects.create(team=cast.ml, user=dana, role=Role.ADMIN)
    return dana


def api_as(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {ApiToken.issue(user)[1]}")
    return client


def page_as(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def submit(user, **fields):
    return api_as(user).post("/api/v1/jobs/", {"kind": "diag.noop", **fields}, format="json")


def test_an_invited_user_joins_only_when_they_accept_and_their_default_team_stays(cast, dana):
    # The capture that was: an admin of ml adds bob, bob's next job without a team lands in ml.
    assert api_as(dana).post("/api/v1/teams/ml/invitations/",
                             {"username": "bob", "role": "member"},
                             format="json").status_code == 201
    assert not Membership.objects.filter(team=cast.ml, user=cast.bob).exists()
    first = submit(cast.bob)
    assert first.status_code == 201 and first.json()["team"] == "etl"

    [invitation] = api_as(cast.bob).get("/api/v1/invitations/").json()
    assert (invitation["team"], invitation["role"], invitation["invited_by"]) == (
        "ml", "member", "dana")
    accepted = api_as(cast.bob).post(f"/api/v1/invitations/{invitation['id']}/accept/")
    assert accepted.status_code == 200
    assert accepted.json() == {"team": "ml", "username": "bob", "role": "member"}
    assert teams.role_in(cast.bob, cast.ml.pk) == Role.MEMBER
    # Joining ml (which sorts before etl) leaves bob's default where it was.
    assert submit(cast.bob).json()["team"] == "etl"
    assert teams.default_team(cast.bob) == cast.etl
    assert AuditEntry.objects.filter(action="team.invite", actor=dana, via="api").exists()
    assert AuditEntry.objects.filter(action="team.invite_accept", actor=cast.bob).exists()


def test_a_declined_invitation_changes_nothing(cast, dana):
    invitation = teams.invite(dana, cast.ml, "bob", "admin", via="page")
    response = page_as(cast.bob).post(f"/teams/invitations/{invitation.pk}/decline/")
    assert response.status_code == 302
    assert not Invitation.objects.exists()
    assert not Membership.objects.filter(team=cast.ml, user=cast.bob).exists()
    assert AuditEntry.objects.filter(action="team.invite_decline", actor=cast.bob).exists()


def test_the_teams_page_invites_and_the_invited_user_accepts_there(cast, dana):
    response = page_as(dana).post("/teams/ml/members/", {"username": "bob", "role": "viewer"})
    assert response.status_code == 302
    text = page_as(dana).get("/teams/").content.decode()
    assert 'data-invited="bob"' in text  # the admin sees it waiting

    text = page_as(cast.bob).get("/teams/").content.decode()
    invitation = Invitation.objects.get()
    assert f'action="/teams/invitations/{invitation.pk}/accept/"' in text
    assert page_as(cast.bob).post(
        f"/teams/invitations/{invitation.pk}/accept/").status_code == 302
    assert teams.role_in(cast.bob, cast.ml.pk) == Role.VIEWER


def test_nobody_answers_someone_elses_invitation(cast, dana):
    invitation = teams.invite(dana, cast.ml, "bob", "member", via="page")
    for user in (cast.alice, dana):
        response = api_as(user).post(f"/api/v1/invitations/{invitation.pk}/accept/")
        assert response.status_code == 404
        assert page_as(user).post(
            f"/teams/invitations/{invitation.pk}/accept/").status_code == 404
    assert not Membership.objects.filter(team=cast.ml, user=cast.bob).exists()


def test_only_a_teams_admins_invite_and_bad_invitations_name_their_field(cast, dana):
    assert api_as(cast.alice).post("/api/v1/teams/ml/invitations/", {"username": "bob"},
                                   format="json").status_code == 403  # a member only
    assert api_as(cast.bob).post("/api/v1/teams/ml/invitations/", {"username": "bob"},
                                 format="json").status_code == 404  # not in ml
    for body, field in [({"username": "nobody"}, "username"),
                        ({"username": "alice"}, "username"),  # already in
                        ({"username": "bob", "role": "owner"}, "role"),
                        ({}, "username")]:
        response = api_as(dana).post("/api/v1/teams/ml/invitations/", body, format="json")
        assert response.status_code == 400 and list(response.json()) == [field], body
    api_as(dana).post("/api/v1/teams/ml/invitations/", {"username": "bob"}, format="json")
    again = api_as(dana).post("/api/v1/teams/ml/invitations/", {"username": "bob"},
                              format="json")
    assert again.status_code == 400 and "already invited" in again.json()["username"][0]


@pytest.mark.django_db(transaction=True)
def test_portalctl_invites_lists_and_accepts(live_server, cast, dana, tmp_path, capsys):
    def run(user, *argv):
        env = {"PORTAL_URL": live_server.url, "PORTAL_TOKEN": ApiToken.issue(user)[1],
               "XDG_CONFIG_HOME": str(tmp_path)}
        capsys.readouterr()
        code = main(list(argv), env=env)
        return code, capsys.readouterr()

    code, out = run(dana, "invite", "ml", "bob", "--role", "viewer")
    assert code == 0 and "invited bob to ml as viewer" in out.out
    code, out = run(cast.bob, "--json", "invitations")
    [invitation] = json.loads(out.out)
    assert code == 0 and invitation["team"] == "ml"
    code, out = run(cast.bob, "accept", str(invitation["id"]))
    assert code == 0 and "joined ml as viewer" in out.out
    assert teams.role_in(cast.bob, cast.ml.pk) == Role.VIEWER
    code, out = run(cast.bob, "accept", str(invitation["id"]))
    assert code == 1 and "no such invitation" in out.err
    code, out = run(cast.alice, "invite", "ml", "bob")
    assert code == 2 and "admins" in out.err


# A team of one's own: only with the first job or schedule actually saved.

@pytest.fixture
def carol(db, django_user_model):
    return django_user_model.objects.create_user("carol")


@pytest.mark.parametrize("body", [
    {"kind": "diag.nope"},
    {"kind": "diag.sleep", "params": {"seconds": -1}},
    {"kind": "diag.noop", "cpus": 0},
    [{"kind": "diag.noop"}, {"kind": "bogus"}],
])
def test_a_refused_job_leaves_no_team_behind(carol, body):
    response = api_as(carol).post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 400
    assert not Team.objects.filter(memberships__user=carol).exists()
    assert not Team.objects.filter(name="carol").exists()


@pytest.mark.parametrize("body", [
    {"name": "x", "cron": "not cron", "kind": "diag.noop"},
    {"name": "x", "cron": "0 3 * * *", "kind": "unknown.kind"},
    {"name": "", "cron": "0 3 * * *", "kind": "diag.noop"},
])
def test_a_refused_schedule_leaves_no_team_behind(carol, body):
    response = api_as(carol).post("/api/v1/schedules/", body, format="json")
    assert response.status_code == 400
    assert not Team.objects.filter(name="carol").exists()


def test_the_first_job_saved_makes_the_team_of_ones_own(carol):
    response = submit(carol)
    assert response.status_code == 201 and response.json()["team"] == "carol"
    assert teams.role_in(carol, Team.objects.get(name="carol").pk) == Role.ADMIN
    assert submit(carol).json()["team"] == "carol"
    assert Team.objects.filter(name__startswith="carol").count() == 1


def test_the_first_schedule_saved_makes_it_too(carol):
    response = api_as(carol).post("/api/v1/schedules/", {
        "name": "nightly", "cron": "0 3 * * *", "kind": "diag.noop"}, format="json")
    assert response.status_code == 201, response.json()
    assert Schedule.objects.get().team.name == "carol"


def test_a_user_in_no_team_only_reading_makes_nothing(carol):
    for path in ("/jobs/", "/jobs/new/", "/teams/", "/cluster/", "/schedules/new/"):
        assert page_as(carol).get(path).status_code == 200, path
    assert api_as(carol).get("/api/v1/jobs/").status_code == 200
    assert not Team.objects.exists() or not Team.objects.filter(name="carol").exists()
    assert not Job.objects.exists()
