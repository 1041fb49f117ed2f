"""Reads of usage, for the teams the asking user may see (staff: all)."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import date, datetime, timedelta

from django.db.models import Sum
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from accounts import teams
from accounts.models import Team
from usage.models import UsageDay
from usage.services import WAIT_BUCKETS

GROUPS = ("team", "user", "kind", "queue", "day")
SUMS = ("jobs", "attempts", "lost", "preempted", "wall_s", "core_s", "gpu_s", "wait_s")
# The names the API gives the sums.
NAMES = {"wall_s": "wall_seconds", "core_s": "core_seconds", "gpu_s": "gpu_seconds",
         "wait_s": "wait_seconds"}
COLUMNS = [*GROUPS, *(NAMES.get(f, f) for f in SUMS), "wait_p50_seconds",
           "wait_p95_seconds", "usage_fraction", "share", "share_fraction"]
RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([dhw])")
UNITS = {"h": 1 / 24, "d": 1, "w": 7}
DEFAULT_DAYS = 30


def parse_day(text: str, now: datetime | None = None) -> date | None:
    """A day from "7d", "12h", "2w" (back from now), an ISO date or an ISO date and time;
    None if it is none of those."""
    now = now or timezone.now()
    text = (text or "").strip()
    match = RELATIVE.fullmatch(text)
    if match:
        days = float(match[1]) * UNITS[match[2]]
        return (now - timedelta(days=days)).date() if days <= 100_000 else None
    try:
        moment = parse_datetime(text)
        day = parse_date(text) if moment is None else moment.date()
    except ValueError:
        return None
    return day


def visible_days(user):
    if not user or not user.is_authenticated or not user.is_active:
        return UsageDay.objects.none()
    if user.is_staff:
        return UsageDay.objects.all()
    return UsageDay.objects.filter(team_id__in=teams.team_ids(user))


def percentile(hist: list[int], q: float) -> float | None:
    """The q-th quantile of a wait histogram, by linear interpolation inside its bucket (the
    open last bucket answers with its lower edge)."""
    total = sum(hist)
    if not total:
        return None
    rank, seen = q * total, 0
    for index, count in enumerate(hist):
        if count and seen + count >= rank:
            low = WAIT_BUCKETS[index - 1] if index else 0.0
            if index >= len(WAIT_BUCKETS):
                return float(low)
            return round(low + (WAIT_BUCKETS[index] - low) * (rank - seen) / count, 3)
        seen += count
    return float(WAIT_BUCKETS[-1])


def report(user, *, since: date, until: date, group_by: list[str]) -> dict:
    """Usage per group of the days [since, until]: sums, wait percentiles and, by team, the
    team's part of the whole cluster's core-seconds against its part of the shares."""
    days = visible_days(user).filter(day__gte=since, day__lte=until)
    keys = ["team__name" if g == "team" else g for g in group_by]
    rows: dict[tuple, dict] = {}
    hists: dict[tuple, list[int]] = defaultdict(lambda: [0] * (len(WAIT_BUCKETS) + 1))
    for row in days.values(*keys, "team_id", "wait_hist", *SUMS).order_by():
        key = tuple(row[k] for k in keys)
        out = rows.setdefault(key, {**{g: _shown(row[k]) for g, k in zip(group_by, keys,
                                                                           strict=True)},
                                    **{NAMES.get(f, f): 0 for f in SUMS}, "_teams": set()})
        for f in SUMS:
            out[NAMES.get(f, f)] += row[f]
        out["_teams"].add(row["team_id"])
        for index, count in enumerate(row["wait_hist"] or []):
            hists[key][index] += count
    cluster = (UsageDay.objects.filter(day__gte=since, day__lte=until)
               .aggregate(core=Sum("core_s"))["core"] or 0.0)
    active = set(UsageDay.objects.filter(day__gte=since, day__lte=until)
                 .values_list("team_id", flat=True).distinct())
    shares = dict(Team.objects.filter(pk__in=active).values_list("pk", "share"))
    total_share = sum(max(s, 1) for s in shares.values()) or 1
    out_rows = []
    for key, out in rows.items():
        team_ids = out.pop("_teams")
        for name in ("wall_seconds", "core_seconds", "gpu_seconds", "wait_seconds"):
            out[name] = round(out[name], 3)
        out["wait_p50_seconds"] = percentile(hists[key], 0.5)
        out["wait_p95_seconds"] = percentile(hists[key], 0.95)
        if "team" in group_by:
            (team_id,) = team_ids
            share = max(shares.get(team_id, 1), 1)
            out["usage_fraction"] = round(out["core_seconds"] / cluster, 4) if cluster else 0.0
            out["share"] = share
            out["share_fraction"] = round(share / total_share, 4)
        out_rows.append(out)
    out_rows.sort(key=lambda r: (*(str(r[g]) for g in group_by if g == "day"),
                                 -r["core_seconds"]))
    return {"since": since.isoformat(), "until": until.isoformat(), "group_by": group_by,
            "cluster_core_seconds": round(cluster, 3), "rows": out_rows}


def _shown(value):
    return value.isoformat() if isinstance(value, date) else value
