"""Giving and taking back read access to a team's data: by the team's admins (or staff),
recorded in the audit trail."""

from __future__ import annotations

from pathlib import PurePosixPath

from django.db import IntegrityError, transaction

from accounts import teams
from accounts.models import Role, Team
from audit.log import entry, record
from spaces.models import DataGrant, GrantKind
from spaces.selectors import forget_dispatch_cache
from workers import data


class GrantRefused(Exception):
    def __init__(self, errors: dict):
        super().__init__(errors)
        self.errors = errors


class NotAdmin(Exception):
    """Only the team's admins (and staff) give or take back its grants."""


def may_manage(actor, team: Team) -> bool:
    return bool(actor and actor.is_authenticated and actor.is_active) and (
        actor.is_staff or teams.role_in(actor, team.pk) == Role.ADMIN)


def clean_target(kind: str, target) -> str:
    if not isinstance(target, str) or not target.strip():
        raise GrantRefused({"target": ["is required"]})
    target = target.strip()
    if kind == GrantKind.TABLE:
        try:
            with data.team_space(data.Space("x")):  # a plain name, of the team's own schema
                data.check_table(target)
        except ValueError as exc:
            raise GrantRefused({"target": [str(exc)]}) from None
        return target
    path = PurePosixPath(target)
    if (path.is_absolute() or ".." in path.parts or target.startswith("@") or "\x00" in target
            or "*" in target or "?" in target or len(target) > 500):
        raise GrantRefused({"target": ["must be a path prefix in the team's own space, like "
                                       "sales/2024 (no '..', '@' or wildcards)"]})
    return str(path)


def give(actor, team: Team, grantee_name, kind, target, *, via: str) -> DataGrant:
    if not may_manage(actor, team):
        raise NotAdmin()
    if kind not in GrantKind.values:
        raise GrantRefused({"kind": [f"must be one of {', '.join(GrantKind.values)}"]})
    target = clean_target(kind, target)
    grantee = Team.objects.filter(name=grantee_name).first() if isinstance(
        grantee_name, str) else None
    if grantee is None:
        raise GrantRefused({"grantee": [f"no team named {grantee_name!r}"]})
    if grantee.pk == team.pk:
        raise GrantRefused({"grantee": ["a team always reads its own data"]})
    try:
        with transaction.atomic():
            grant = DataGrant.objects.create(team=team, grantee=grantee, kind=kind,
                                             target=target, created_by=actor)
            record(actor, "data_grant.give", grant, via=via, team=team.name,
                   grantee=grantee.name, kind=kind, granted=target)
            forget_dispatch_cache()
            transaction.on_commit(forget_dispatch_cache)
    except IntegrityError:
        raise GrantRefused({"target": [f"team {grantee.name} may already read it"]}) from None
    return grant


def take_back(actor, grant: DataGrant, *, via: str) -> None:
    if not may_manage(actor, grant.team):
        raise NotAdmin()
    with transaction.atomic():
        item = entry(actor, "data_grant.take_back", grant, via=via, team=grant.team.name,
                     grantee=grant.grantee.name, kind=grant.kind, granted=grant.target)
        grant.delete()
        item.save()
        forget_dispatch_cache()
        transaction.on_commit(forget_dispatch_cache)
