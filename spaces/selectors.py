"""Reads of data grants: what a team may read of others', what it gave, and its data space."""

from __future__ import annotations

import time

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


# A fan-out dispatches hundreds of partitions of one team at once: its name and grants are read
# once a second per process, not once per attempt (two queries each, ~1.3 s per 1000).
DISPATCH_CACHE_S = 1.0
_dispatch_cache: dict[int, tuple[float, str, dict]] = {}


def team_for_dispatch(team_id: int) -> tuple[str, dict]:
    """The team's name and grants as an attempt message carries them, at most
    DISPATCH_CACHE_S old (a grant taken back stops reaching new attempts within that)."""
    now = time.monotonic()
    cached = _dispatch_cache.get(team_id)
    if cached is not None and now - cached[0] < DISPATCH_CACHE_S:
        return cached[1], cached[2]
    name = Team.objects.filter(pk=team_id).values_list("name", flat=True).get()
    grants = grants_held(team_id)
    _dispatch_cache[team_id] = (now, name, grants)
    return name, grants


def forget_dispatch_cache() -> None:
    _dispatch_cache.clear()


def space_for(team: Team) -> data.Space:
    return data.space_of(team.name, grants_held(team.pk))


def space_for_submit(team: Team) -> data.Space:
    """The team's space as its next attempt's message will carry it (team_for_dispatch's,
    at most DISPATCH_CACHE_S old): what a submitted job's paths are checked in."""
    return data.space_of(team.name, team_for_dispatch(team.pk)[1])


def grants_of(team: Team) -> QuerySet[DataGrant]:
    """The grants a team gave and holds."""
    from django.db.models import Q

    return (DataGrant.objects.filter(Q(team=team) | Q(grantee=team))
            .select_related("team", "grantee").order_by("team__name", "grantee__name", "kind",
                                                        "target"))
