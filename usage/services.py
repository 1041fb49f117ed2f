"""Writes: ended attempts' usage rows (built by the lifecycle's end paths, in their transaction),
the per-day roll-up and retention (from the reconciler's housekeeping)."""

from __future__ import annotations

import bisect
from collections import defaultdict
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from usage.models import AttemptUsage, Outcome, UsageDay

LOCK_KEY = 0x75736167  # "usag": one roll-up at a time
# Upper edges (seconds) of the wait histogram's buckets; the last bucket has none.
WAIT_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
ROLL_BATCH = 5000
KEY_FIELDS = ("team_id", "user", "kind", "queue")


def wait_bucket(seconds: float) -> int:
    return bisect.bisect_left(WAIT_BUCKETS, seconds)


def record(rows: list[dict]) -> int:
    """Usage rows for ended attempts, each a dict of AttemptUsage's fields (the lifecycle
    builds them from the attempts it ends, in its transaction). A replayed end (the same
    attempt again) changes nothing: its row is there already."""
    AttemptUsage.objects.bulk_create([AttemptUsage(**row) for row in rows],
                                     ignore_conflicts=True)
    return len(rows)


def _lock() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])


def roll_up(now: datetime | None = None) -> int:
    """Fold the attempt rows not yet counted into their days' figures (each row once: it is
    marked in the same transaction). Returns the rows folded."""
    folded = 0
    while True:
        with transaction.atomic():
            _lock()
            batch = list(AttemptUsage.objects.filter(rolled=False).order_by("id")[:ROLL_BATCH])
            if not batch:
                return folded
            _fold(batch)
            AttemptUsage.objects.filter(pk__in=[row.pk for row in batch]).update(rolled=True)
            folded += len(batch)
        if len(batch) < ROLL_BATCH:
            return folded


def _fold(batch: list[AttemptUsage]) -> None:
    groups: dict[tuple, list[AttemptUsage]] = defaultdict(list)
    for row in batch:
        groups[(row.finished_at.date(), *(getattr(row, f) for f in KEY_FIELDS))].append(row)
    days = {day for day, *_ in groups}
    existing = {(d.day, *(getattr(d, f) for f in KEY_FIELDS)): d
                for d in UsageDay.objects.filter(day__in=days,
                                                 team_id__in={k[1] for k in groups})}
    new, changed = [], []
    for key, rows in groups.items():
        day = existing.get(key)
        if day is None:
            day = UsageDay(day=key[0], **dict(zip(KEY_FIELDS, key[1:], strict=True)),
                           wait_hist=[])
            new.append(day)
        else:
            changed.append(day)
        hist = list(day.wait_hist) + [0] * (len(WAIT_BUCKETS) + 1 - len(day.wait_hist))
        for row in rows:
            day.jobs += row.final
            day.attempts += 1
            day.lost += row.outcome == Outcome.LOST
            day.preempted += row.outcome == Outcome.PREEMPTED
            day.wall_s += row.wall_s
            day.core_s += row.core_s
            day.gpu_s += row.gpu_s
            day.wait_s += row.wait_s
            hist[wait_bucket(row.wait_s)] += 1
        day.wait_hist = hist
    UsageDay.objects.bulk_create(new)
    UsageDay.objects.bulk_update(changed, ["jobs", "attempts", "lost", "preempted", "wall_s",
                                           "core_s", "gpu_s", "wait_s", "wait_hist"])


def prune(now: datetime | None = None) -> tuple[int, int]:
    """Attempt rows past USAGE_ATTEMPTS_KEEP_DAYS (once folded) and days past USAGE_KEEP_DAYS
    are deleted; the jobs' own retention has no say here."""
    now = now or timezone.now()
    attempts, _ = AttemptUsage.objects.filter(
        rolled=True,
        finished_at__lt=now - timedelta(days=settings.USAGE_ATTEMPTS_KEEP_DAYS)).delete()
    days, _ = UsageDay.objects.filter(
        day__lt=(now - timedelta(days=settings.USAGE_KEEP_DAYS)).date()).delete()
    return attempts, days
