"""Teams: who belongs where and with what role. `selectors.visible_jobs` builds on these."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils.text import slugify

from accounts.models import ACTING_ROLES, Invitation, Membership, Role, Team
from audit.log import record
from common.errors import DomainError


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


def personal_team_names(user):
    """The names a user's team of their own may take, in order: theirs, then theirs-2, ..."""
    base = slugify(user.get_username())[:40] or f"user-{user.pk}"
    return [f"{base}{suffix}" for suffix in ["", *(f"-{n}" for n in range(2, 50))]]


def personal_team_name(user) -> str:
    """The name the user's team of their own would take now (the first one free)."""
    taken = set(Team.objects.filter(name__in=personal_team_names(user))
                .values_list("name", flat=True))
    return next(name for name in personal_team_names(user) if name not in taken)


def personal_team(user) -> Team:
    """A user in no team works in one of their own, named after them, as its admin. Made by
    team_for_work only, inside the transaction that saves their first job or schedule."""
    for name in personal_team_names(user):
        try:
            with transaction.atomic():
                team = Team.objects.create(name=name,
                                           title=f"{user.get_username()}'s own work")
                Membership.objects.create(team=team, user=user, role=Role.ADMIN)
                return team
        except IntegrityError:
            continue
    raise RuntimeError(f"no free team name for {user}")


def default_team(user) -> Team | None:
    """Where the user's jobs go when they name no team: the first team they joined among those
    in which they may submit. Joining another (accepting an invitation) leaves it as it is, so
    nobody else's act moves the user's work. None for a user in no team, or a viewer only.
    Reads only: see team_for_work."""
    # One filter() call: the role must be that of the user's own membership (staff act in any).
    roles = {} if user.is_staff else {"memberships__role__in": ACTING_ROLES}
    return (Team.objects.filter(memberships__user=user, **roles)
            .order_by("memberships__pk").first())


def in_no_team(user) -> bool:
    return not Membership.objects.filter(user=user).exists()


def team_for_work(user) -> Team | None:
    """The default team; for a user in no team, a new one of their own. Call it inside the
    transaction that saves the job or schedule, so a refused request leaves no team behind."""
    team = default_team(user)
    if team is None and in_no_team(user):
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


class MembershipRefused(DomainError):
    """A change to a team's members that is refused; the message says why, for the user (under
    the field it is about, for the API)."""

    def __init__(self, message: str, field: str | None = None, status: int | None = None):
        super().__init__({field: [message]} if field else message, status)
        self.message = message

    def __str__(self) -> str:
        return self.message


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
        raise MembershipRefused(f"The role must be one of {', '.join(Role.values)}.", "role")
    return Role(role)


def _active_user(username: str):
    username = username.strip() if isinstance(username, str) else ""
    if not username:
        raise MembershipRefused("Give the username of the person to invite.", "username")
    user = get_user_model().objects.filter(
        **{get_user_model().USERNAME_FIELD: username}, is_active=True).first()
    if user is None:
        raise MembershipRefused(f"There is no user named “{username}”.", "username")
    return user


def invite(actor, team: Team, username: str, role: str, *, via: str) -> Invitation:
    """Invite the active user named `username` to the team with `role`: they join only if they
    accept. Audited."""
    role = _role(role)
    user = _active_user(username)
    username = user.get_username()
    with transaction.atomic():
        _locked(team)
        if membership := Membership.objects.filter(team=team, user=user).first():
            raise MembershipRefused(f"{username} is already in the team "
                                    f"({membership.role}): change their role below.", "username")
        invitation, created = Invitation.objects.get_or_create(
            team=team, user=user, defaults={"role": role, "invited_by": actor})
        if not created:
            raise MembershipRefused(f"{username} is already invited ({invitation.role}).",
                                    "username")
        record(actor, "team.invite", team, via=via, user=username, role=role.value)
    return invitation


def invitations_for(user):
    """The invitations waiting for the user's answer, oldest first."""
    return Invitation.objects.filter(user=user).select_related("team", "invited_by")


def pending_invitations(team_ids):
    """The invitations not yet answered, per team, for the teams' admins to see."""
    found: dict[int, list[Invitation]] = {}
    for invitation in (Invitation.objects.filter(team_id__in=team_ids).select_related("user")
                       .order_by("team_id", "user__username")):
        found.setdefault(invitation.team_id, []).append(invitation)
    return found


def _own_invitation(user, invitation_id) -> Invitation:
    invitation = (Invitation.objects.select_related("team").filter(pk=invitation_id, user=user)
                  .first())
    if invitation is None:
        raise MembershipRefused("There is no such invitation (it may have been answered).",
                                status=404)
    return invitation


def accept(user, invitation_id: int, *, via: str) -> Membership:
    """The user accepts their invitation and joins the team with its role; audited."""
    with transaction.atomic():
        team = _own_invitation(user, invitation_id).team
        _locked(team)
        invitation = _own_invitation(user, invitation_id)  # as it is now the team is locked
        membership, _ = Membership.objects.get_or_create(
            team=team, user=user, defaults={"role": invitation.role})
        invitation.delete()
        record(user, "team.invite_accept", team, via=via, user=user.get_username(),
               role=membership.role)
    return membership


def decline(user, invitation_id: int, *, via: str) -> None:
    """The user declines their invitation: nothing changes but that it is gone; audited."""
    with transaction.atomic():
        invitation = _own_invitation(user, invitation_id)
        invitation.delete()
        record(user, "team.invite_decline", invitation.team, via=via,
               user=user.get_username(), role=invitation.role)


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
