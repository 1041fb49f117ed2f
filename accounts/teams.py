"""Teams: who belongs where and with what role. `selectors.visible_jobs` builds on these."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils.text import slugify

from accounts.models import ACTING_ROLES, Membership, Role, Team
from audit.log import record


def team_ids(user) -> list[int]:
    """The teams whose jobs the user sees (any role)."""
    if not user or not user.is_authenticated or not user.is_active:
        return []
    return list(Membership.objects.filter(user=user).values_list("team_id", flat=True))


def role_in(user, team_id: int) -> str | None:
    return (Membership.objects.filter(user=user, team_id=team_id)
            .values_list("role", flat=True).first())


def can_act(user, team_id: int) -> bool:
    """May the user submit, cancel and retry the team's jobs? Staff may everywhere."""
    if not user or not user.is_authenticated or not user.is_active:
        return False
    return user.is_staff or role_in(user, team_id) in ACTING_ROLES


def acting_teams(user):
    """The teams the user may submit to, by name."""
    if user.is_staff:
        return Team.objects.order_by("name")
    return Team.objects.filter(memberships__user=user,
                               memberships__role__in=ACTING_ROLES).order_by("name")


def personal_team(user) -> Team:
    """A user in no team works in one of their own, named after them, as its admin."""
    base = slugify(user.get_username())[:40] or f"user-{user.pk}"
    for suffix in ["", *(f"-{n}" for n in range(2, 50))]:
        try:
            with transaction.atomic():
                team = Team.objects.create(name=f"{base}{suffix}",
                                           title=f"{user.get_username()}'s own work")
                Membership.objects.create(team=team, user=user, role=Role.ADMIN)
                return team
        except IntegrityError:
            continue
    raise RuntimeError(f"no free team name for {user}")


def default_team(user) -> Team | None:
    """Where the user's jobs go when they name no team: their only (or first) team in which
    they may submit; a user in no team at all gets their own. None for a viewer only."""
    # One filter() call: the role must be that of the user's own membership (staff act in any).
    roles = {} if user.is_staff else {"memberships__role__in": ACTING_ROLES}
    team = Team.objects.filter(memberships__user=user, **roles).order_by("name").first()
    if team is None and not Membership.objects.filter(user=user).exists():
        team = personal_team(user)
    return team


def visible_teams(user):
    """The teams the user belongs to (staff: all), by name."""
    if user.is_staff:
        return Team.objects.order_by("name")
    return Team.objects.filter(memberships__user=user).order_by("name")


# What each team's jobs hold and how many wait for admission, {team_id: {"jobs", "cpus",
# "gpus"}} and {team_id: count}, for team ids: the jobs app provides it when it is ready
# (jobs.apps), so that accounts, which jobs builds on, never imports jobs.
_job_load: Callable[[list[int]], tuple[dict, dict]] | None = None


def provide_job_load(load: Callable[[list[int]], tuple[dict, dict]]) -> None:
    global _job_load
    _job_load = load


def overview(user, *, members_of_all: bool = False) -> list[dict]:
    """Each of the user's teams (staff: all) as the teams page and GET /api/v1/teams/ show it:
    the team, the user's role in it (None if not in it), what its queued and running jobs hold
    now, how many of its jobs wait for admission, and its members (role, user) for the user's
    own teams, or for every team with `members_of_all` (None where not shown). Five queries."""
    teams = list(visible_teams(user))
    ids = [team.pk for team in teams]
    roles = dict(Membership.objects.filter(user=user, team_id__in=ids)
                 .values_list("team_id", "role"))
    usage, waiting = _job_load(ids) if _job_load else ({}, {})
    shown = ids if members_of_all else list(roles)
    members: dict[int, list[Membership]] = {team_id: [] for team_id in shown}
    for membership in (Membership.objects.filter(team_id__in=shown).select_related("user")
                       .order_by("team_id", "user__username")):
        members[membership.team_id].append(membership)
    return [{"team": team, "role": roles.get(team.pk),
             "held": dict(usage.get(team.pk) or {"jobs": 0, "cpus": 0, "gpus": 0}),
             "waiting": waiting.get(team.pk, 0), "members": members.get(team.pk)}
            for team in teams]


class MembershipRefused(Exception):
    """A change to a team's members that is refused; the message says why, for the user."""


def _locked(team: Team) -> None:
    """Lock the team's row for the rest of the transaction (PostgreSQL): its member changes
    take turns, so two admins cannot demote each other at once and leave it with none."""
    Team.objects.select_for_update().filter(pk=team.pk).values_list("pk", flat=True).first()


def _keeps_an_admin(membership: Membership) -> None:
    if membership.role == Role.ADMIN and not Membership.objects.filter(
            team_id=membership.team_id, role=Role.ADMIN).exclude(pk=membership.pk).exists():
        raise MembershipRefused(f"{membership.user.get_username()} is the team's last admin: "
                                "make someone else an admin first.")


def _current(membership: Membership) -> Membership:
    """The membership as it is now (another admin may have changed or removed it)."""
    current = Membership.objects.select_related("team", "user").filter(pk=membership.pk).first()
    if current is None:
        raise MembershipRefused(f"{membership.user.get_username()} is no longer in the team.")
    return current


def _role(role: str) -> Role:
    if role not in Role.values:
        raise MembershipRefused(f"The role must be one of {', '.join(Role.values)}.")
    return Role(role)


def add_member(actor, team: Team, username: str, role: str, *, via: str) -> Membership:
    """Add the active user named `username` to the team with `role`; audited."""
    role = _role(role)
    username = username.strip()
    if not username:
        raise MembershipRefused("Give the username of the person to add.")
    user = get_user_model().objects.filter(
        **{get_user_model().USERNAME_FIELD: username}, is_active=True).first()
    if user is None:
        raise MembershipRefused(f"There is no user named “{username}”.")
    with transaction.atomic():
        _locked(team)
        membership, created = Membership.objects.get_or_create(
            team=team, user=user, defaults={"role": role})
        if not created:
            raise MembershipRefused(f"{username} is already in the team "
                                    f"({membership.role}): change their role below.")
        record(actor, "team.member_add", team, via=via, user=username, role=role.value)
    return membership


def set_role(actor, membership: Membership, role: str, *, via: str) -> bool:
    """Change a member's role (not the last admin's away from admin); audited. False if it
    was already that role."""
    role = _role(role)
    with transaction.atomic():
        _locked(membership.team)
        membership = _current(membership)
        if membership.role == role:
            return False
        _keeps_an_admin(membership)
        before = membership.role
        membership.role = role
        membership.save(update_fields=["role"])
        record(actor, "team.member_role", membership.team, via=via,
               user=membership.user.get_username(), role=role.value, was=before)
    return True


def remove_member(actor, membership: Membership, *, via: str) -> None:
    """Take a member out of the team (not its last admin); audited."""
    with transaction.atomic():
        _locked(membership.team)
        membership = _current(membership)
        _keeps_an_admin(membership)
        membership.delete()
        record(actor, "team.member_remove", membership.team, via=via,
               user=membership.user.get_username(), role=membership.role)
