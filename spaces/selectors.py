"""Reads of data grants: what a team may read of others', what it gave, and its data space."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import Team
from spaces.models import DataGrant, GrantKind
from workers import data


def grants_held(team_id: int) -> dict:
    """The reads others granted this team, as the attempt message carries them."""
    rows = (DataGrant.objects.filter(grantee_id=team_id)
            .values_list("team__name", "kind", "target").order_by("team__name", "target"))
    paths, tables = [], []
    for owner, kind, target in rows:
        if kind == GrantKind.PATH:
            paths.append(f"@{owner}/{target}")
        else:
            tables.append(f"{owner}.{target}")
    return {"paths": paths, "tables": tables}


def space_for(team: Team) -> data.Space:
    return data.space_of(team.name, grants_held(team.pk))


def grants_of(team: Team) -> QuerySet[DataGrant]:
    """The grants a team gave and holds."""
    from django.db.models import Q

    return (DataGrant.objects.filter(Q(team=team) | Q(grantee=team))
            .select_related("team", "grantee").order_by("team__name", "grantee__name", "kind",
                                                        "target"))
