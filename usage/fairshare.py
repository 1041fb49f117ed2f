"""Fair share with memory: each team's core-seconds, decayed with a half-life, against its
share; Slurm's classic factor 2^(-U/S), where U is the team's part of all the decayed usage
and S its part of the shares of the teams in play."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from time import monotonic

from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from accounts.models import Team
from usage.models import UsageDay

HORIZON_HALF_LIVES = 10  # beyond ten half-lives a day weighs less than a thousandth
MIN_WEIGHT = 1e-6


@dataclass(frozen=True)
class Standing:
    team_id: int
    name: str
    share: int
    usage: float  # decayed core-seconds
    usage_fraction: float  # U
    share_fraction: float  # S
    factor: float  # 2^(-U/S): 1 unused, 0.5 exactly at its share, towards 0 beyond

    @property
    def ratio(self) -> float:
        """How many times its share it used (U/S)."""
        return self.usage_fraction / self.share_fraction if self.share_fraction else 0.0

    @property
    def weight(self) -> float:
        """Its share scaled by the factor: the share itself exactly at its share, twice it
        unused, a quarter of it at three times its share. Admission divides by this."""
        return max(self.share * 2 * self.factor, MIN_WEIGHT)


def half_life_h() -> float:
    return settings.FAIR_SHARE_HALF_LIFE_H


def decayed_usage(now: datetime, half_life: float) -> dict[int, float]:
    """Each team's core-seconds, every day's weighed by 2^(-age/half-life), its age counted
    from the middle of the day (never below 0)."""
    horizon = now - timedelta(hours=half_life * HORIZON_HALF_LIVES)
    rows = (UsageDay.objects.filter(day__gte=horizon.date(), day__lte=now.date())
            .values("team_id", "day").annotate(core=Sum("core_s")).order_by())
    used: dict[int, float] = {}
    for row in rows:
        middle = datetime.combine(row["day"], time(12), tzinfo=now.tzinfo)
        age_h = max((now - middle).total_seconds() / 3600, 0.0)
        used[row["team_id"]] = used.get(row["team_id"], 0.0) + row["core"] * 2 ** (
            -age_h / half_life)
    return used


def standings(teams, now: datetime | None = None, *,
              half_life: float | None = None) -> dict[int, Standing]:
    """The standing of these teams (ids, or {id: Team} as admission has them) and of every
    team with decayed usage; {} when the half-life is 0 (fair share by what teams hold now
    only). Without `now`, the decayed usage may be up to CACHE_S old: it moves slowly."""
    half_life = half_life_h() if half_life is None else half_life
    if half_life <= 0:
        return {}
    used, known = _cached(half_life) if now is None else _usage(now, half_life)
    if isinstance(teams, dict):
        known = {**known, **{pk: (team.name, max(team.share, 1)) for pk, team in teams.items()}}
    missing = set(teams) - set(known)
    if missing:
        known = {**known, **_teams(missing)}
    total_used = sum(used.values())
    total_share = sum(share for _, share in known.values()) or 1
    out = {}
    for team_id, (name, share) in known.items():
        u = used.get(team_id, 0.0) / total_used if total_used else 0.0
        s = share / total_share
        out[team_id] = Standing(team_id, name, share, used.get(team_id, 0.0), u, s,
                                2 ** (-u / s))
    return out


def _teams(ids) -> dict[int, tuple[str, int]]:
    return {pk: (name, max(share, 1)) for pk, name, share in
            Team.objects.filter(pk__in=ids).values_list("pk", "name", "share")}


def _usage(now: datetime, half_life: float) -> tuple[dict, dict]:
    used = decayed_usage(now, half_life)
    return used, _teams(used)


CACHE_S = 5.0
_cache: dict[float, tuple[float, tuple[dict, dict]]] = {}


def _cached(half_life: float) -> tuple[dict, dict]:
    """Per process: admission runs after every submit and every batch of ended jobs, and a
    week's half-life does not move in five seconds."""
    at = monotonic()
    hit = _cache.get(half_life)
    if hit is None or at - hit[0] > CACHE_S:
        hit = _cache[half_life] = (at, _usage(timezone.now(), half_life))
    return hit[1]


def forget() -> None:
    """Drop the cached usage (tests that write usage and admit at once)."""
    _cache.clear()


def period() -> str:
    """The half-life in words, for messages."""
    hours = half_life_h()
    for name, length in (("week", 168), ("day", 24), ("hour", 1)):
        if hours == length:
            return f"the last {name}"
    return f"a half-life of {hours:g} h"


def held_back(standing: Standing | None) -> str:
    """Why fair share puts the team behind others, or "" when it is within its share."""
    if standing is None or standing.ratio <= 1:
        return ""
    return (f"team {standing.name} used {standing.ratio:.1f}× its share over {period()}: "
            "teams under their share go first")
