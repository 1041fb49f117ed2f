"""Teams: who belongs where and with what role. `selectors.visible_jobs` builds on these."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils.text import slugify

from accounts.models import ACTING_ROLES, Membership, Role, Team


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
    team = acting_teams(user).filter(memberships__user=user).first() if user.is_staff \
        else acting_teams(user).first()
    if team is None and not Membership.objects.filter(user=user).exists():
        team = personal_team(user)
    return team
