"""The teams page and GET /api/v1/teams/: your teams with their quota, what they hold and who
is in them; a team's admins (and staff) add, re-role and remove members, audited, never leaving
the team without an admin."""

import html
import re

import pytest
from rest_framework.test import APIClient

from accounts.models import ApiToken, Invitation, Membership, Role
from audit.models import AuditEntry
from jobs.models import JobState
from tests.factories import make_job


def logged_in(client, user):
    client.force_login(user)
    return client


def api_as(user) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {ApiToken.issue(user)[1]}")
    return api


def roles(team) -> dict[str, str]:
    return dict(Membership.objects.filter(team=team).values_list("user__username", "role"))


def page(client) -> str:
    response = client.get("/teams/")
    assert response.status_code == 200
    return html.unescape(response.content.decode())


@pytest.fixture
def ml_admin(cast, django_user_model):
    """Dana, ml's admin (alice is a member of it)."""
    dana = django_user_model.objects.create_user("dana")
    Membership.objects.create(team=cast.ml, user=dana, role=Role.ADMIN)
    return dana


@pytest.fixture
def carol(cast, django_user_model):
    """In no team yet."""
    return django_user_model.objects.create_user("carol")


def visible_text(markup: str) -> str:
    """What the page says: no tags, runs of white space as one space."""
    return " ".join(re.sub(r"<[^>]+>", " ", markup).split())


def audited(action, team, **detail):
    return AuditEntry.objects.filter(action=action, target_type="team",
                                     target_id=str(team.pk), via="page",
                                     detail__contains=detail)


# Seeing -----------------------------------------------------------------------------------


def test_the_page_needs_a_login(client, cast):
    response = client.get("/teams/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_the_page_lists_only_my_teams_with_quota_usage_and_members(client, cast):
    cast.ml.title, cast.ml.max_running_jobs, cast.ml.max_cpus = "Machine learning", 4, 16
    cast.ml.save()
    make_job(cast.alice, JobState.RUNNING, team=cast.ml, cpus=4)
    make_job(cast.alice, JobState.QUEUED, team=cast.ml, cpus=1)
    make_job(cast.alice, JobState.PENDING, team=cast.ml)
    make_job(cast.alice, JobState.PENDING, team=cast.ml)
    make_job(cast.alice, JobState.SUCCEEDED, team=cast.ml, cpus=8)  # ended: holds nothing
    make_job(cast.bob, JobState.RUNNING, team=cast.etl, cpus=2)

    text = page(logged_in(client, cast.alice))
    assert 'href="/teams/"' in text  # the nav link
    assert 'data-team="ml"' in text and 'data-team="etl"' not in text
    assert "Machine learning" in text
    said = visible_text(text)
    assert "jobs 2 of 4 · CPU slots 5 of 16 · GPUs 0 (no limit) · share 1" in said
    assert "2 jobs waiting for admission" in said
    assert 'data-member="alice"' in text and 'data-member="bob"' not in text
    # A member sees the members but no forms to change them.
    assert "/teams/ml/members/" not in text and "Invite" not in text


def test_staff_see_every_team_and_may_manage_it(client, cast):
    text = page(logged_in(client, cast.admin))
    assert 'data-team="ml"' in text and 'data-team="etl"' in text
    assert 'data-member="alice"' in text and 'data-member="bob"' in text
    assert 'action="/teams/etl/members/"' in text


def test_the_api_lists_my_teams_and_nothing_of_the_others(cast, ml_admin):
    cast.etl.max_gpus = 2
    cast.etl.save()
    make_job(cast.bob, JobState.RUNNING, team=cast.etl, cpus=3, gpus=1)
    make_job(cast.bob, JobState.PENDING, team=cast.etl)

    response = api_as(cast.bob).get("/api/v1/teams/")
    assert response.status_code == 200
    assert response.json() == [{
        "name": "etl", "title": "", "role": "member",
        "quota": {"max_running_jobs": None, "max_cpus": None, "max_gpus": 2, "share": 1},
        "held": {"jobs": 1, "cpus": 3, "gpus": 1}, "waiting": 1,
        "members": [{"username": "bob", "role": "member"}],
    }]
    alice_sees = api_as(cast.alice).get("/api/v1/teams/").json()
    assert [t["name"] for t in alice_sees] == ["ml"]
    assert alice_sees[0]["held"] == {"jobs": 0, "cpus": 0, "gpus": 0}
    assert alice_sees[0]["members"] == [{"username": "alice", "role": "member"},
                                        {"username": "dana", "role": "admin"}]


def test_the_api_shows_staff_every_team_but_members_only_of_their_own(cast):
    Membership.objects.create(team=cast.etl, user=cast.admin, role=Role.VIEWER)
    teams = {t["name"]: t for t in api_as(cast.admin).get("/api/v1/teams/").json()}
    assert set(teams) == {"ml", "etl"}
    assert teams["ml"]["role"] is None and teams["ml"]["members"] is None
    assert teams["etl"]["role"] == "viewer"
    assert {m["username"] for m in teams["etl"]["members"]} == {"admin", "bob"}


def test_the_api_needs_a_login(cast):
    assert APIClient().get("/api/v1/teams/").status_code in (401, 403)


# Managing ---------------------------------------------------------------------------------


def accepted(user, team) -> None:
    """The invited user accepts on their own teams page."""
    from django.test import Client

    invitation = Invitation.objects.get(team=team, user=user)
    response = logged_in(Client(), user).post(f"/teams/invitations/{invitation.pk}/accept/")
    assert response.status_code == 302


def test_a_team_admin_invites_changes_and_removes_members_each_audited(client, cast, ml_admin,
                                                                       carol):
    logged_in(client, ml_admin)
    assert 'action="/teams/ml/members/"' in page(client)

    response = client.post("/teams/ml/members/", {"username": "carol", "role": "viewer"})
    assert response.status_code == 302 and response["Location"] == "/teams/#team-ml"
    assert "carol" not in roles(cast.ml)  # invited, not yet in
    assert audited("team.invite", cast.ml, user="carol", role="viewer").filter(
        actor=ml_admin).exists()
    accepted(carol, cast.ml)
    assert roles(cast.ml)["carol"] == "viewer"
    assert audited("team.invite_accept", cast.ml, user="carol", role="viewer").filter(
        actor=carol).exists()

    response = client.post("/teams/ml/members/carol/role/", {"role": "admin"})
    assert response.status_code == 302
    assert roles(cast.ml)["carol"] == "admin"
    assert audited("team.member_role", cast.ml, user="carol", role="admin").exists()

    response = client.post("/teams/ml/members/alice/remove/")
    assert response.status_code == 302
    assert "alice" not in roles(cast.ml)
    assert audited("team.member_remove", cast.ml, user="alice").exists()
    # Now carol is an admin too, dana may step down.
    assert client.post("/teams/ml/members/dana/role/", {"role": "member"}).status_code == 302
    assert roles(cast.ml) == {"carol": "admin", "dana": "member"}
    assert AuditEntry.objects.filter(action__startswith="team.member_").count() == 3


def test_staff_manage_a_team_they_are_not_in(client, cast, carol):
    logged_in(client, cast.admin)
    response = client.post("/teams/etl/members/", {"username": "carol", "role": "admin"})
    assert response.status_code == 302
    assert audited("team.invite", cast.etl, user="carol", role="admin").filter(
        actor=cast.admin).exists()
    accepted(carol, cast.etl)
    assert roles(cast.etl) == {"bob": "member", "carol": "admin"}


@pytest.mark.parametrize("action", [
    ("/teams/ml/members/dana/remove/", {}),
    ("/teams/ml/members/dana/role/", {"role": "member"}),
], ids=["remove", "demote"])
def test_the_last_admin_can_be_neither_removed_nor_demoted(client, cast, ml_admin, action):
    logged_in(client, ml_admin)
    path, data = action
    response = client.post(path, data)
    assert response.status_code == 400
    assert "dana is the team's last admin" in html.unescape(response.content.decode())
    assert roles(cast.ml) == {"alice": "member", "dana": "admin"}
    assert not AuditEntry.objects.filter(action__startswith="team.member_").exists()


def test_a_member_gets_403_and_a_stranger_404(client, cast, ml_admin, carol):
    logged_in(client, cast.alice)  # a member of ml, not its admin
    for path, data in [("/teams/ml/members/", {"username": "carol", "role": "member"}),
                       ("/teams/ml/members/dana/role/", {"role": "viewer"}),
                       ("/teams/ml/members/dana/remove/", {})]:
        assert client.post(path, data).status_code == 403, path
    Membership.objects.filter(team=cast.ml, user=cast.alice).update(role=Role.VIEWER)
    assert client.post("/teams/ml/members/dana/remove/").status_code == 403

    logged_in(client, cast.bob)  # in etl, not in ml: ml is as absent as a team that is not
    for path, data in [("/teams/ml/members/", {"username": "carol", "role": "member"}),
                       ("/teams/ml/members/dana/role/", {"role": "viewer"}),
                       ("/teams/ml/members/dana/remove/", {}),
                       ("/teams/nope/members/", {"username": "carol"})]:
        assert client.post(path, data).status_code == 404, path
    assert roles(cast.ml) == {"alice": "viewer", "dana": "admin"}
    assert not AuditEntry.objects.filter(action__startswith="team.member_").exists()


def test_the_member_actions_want_a_post(client, cast, ml_admin):
    logged_in(client, ml_admin)
    assert client.get("/teams/ml/members/alice/remove/").status_code == 405
    assert "alice" in roles(cast.ml)


@pytest.mark.parametrize("data, error", [
    ({"username": "nobody", "role": "member"}, "There is no user named “nobody”."),
    ({"username": "alice", "role": "admin"}, "alice is already in the team (member)"),
    ({"username": "bob", "role": "owner"}, "The role must be one of viewer, member, admin."),
    ({"username": "  ", "role": "member"}, "Give the username"),
])
def test_a_bad_add_shows_an_error_and_changes_nothing(client, cast, ml_admin, data, error):
    logged_in(client, ml_admin)
    response = client.post("/teams/ml/members/", data)
    assert response.status_code == 400
    text = html.unescape(response.content.decode())
    assert error in text and 'data-error="members"' in text
    assert roles(cast.ml) == {"alice": "member", "dana": "admin"}
    assert not AuditEntry.objects.filter(action__startswith="team.member_").exists()


def test_an_inactive_user_cannot_be_added_and_an_unknown_member_is_404(client, cast,
                                                                        ml_admin, carol):
    carol.is_active = False
    carol.save()
    logged_in(client, ml_admin)
    response = client.post("/teams/ml/members/", {"username": "carol", "role": "member"})
    assert response.status_code == 400 and "carol" not in roles(cast.ml)
    assert client.post("/teams/ml/members/bob/remove/").status_code == 404  # not in ml
    assert client.post("/teams/ml/members/alice/role/", {"role": "boss"}).status_code == 400
    assert roles(cast.ml) == {"alice": "member", "dana": "admin"}
