"""Node utilization history: raw samples, one-minute rollups, retention, downsampled series."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from nodes.models import Node, NodeMinute, NodeSample
from workers.config import HEARTBEAT_S

SERIES = ("cpu", "mem", "gpu")


def sample_from(node: Node, ts: datetime, util: dict) -> NodeSample:
    gpus = [g["util"] for g in util.get("gpus") or [] if "util" in g]
    return NodeSample(node=node, ts=ts, cpu=float(util.get("cpu") or 0.0),
                      mem=float(util.get("mem") or 0.0),
                      gpu=sum(gpus) / len(gpus) if gpus else None, data=util)


def minute_of(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)


def roll_up(now: datetime | None = None) -> int:
    """Fold every finished minute not yet rolled up into NodeMinute rows (idempotent)."""
    now = now or timezone.now()
    current = minute_of(now)
    last = NodeMinute.objects.order_by("-minute").values_list("minute", flat=True).first()
    start = last + timedelta(minutes=1) if last else current - timedelta(
        hours=settings.NODE_SAMPLES_RAW_H)
    rows = (NodeSample.objects.filter(ts__gte=start, ts__lt=current)
            .values_list("node_id", "ts", "cpu", "mem", "gpu").iterator(chunk_size=5000))
    buckets: dict[tuple[int, datetime], list] = defaultdict(list)
    for node_id, ts, cpu, mem, gpu in rows:
        buckets[(node_id, minute_of(ts))].append((cpu, mem, gpu))
    minutes = []
    for (node_id, minute), values in buckets.items():
        gpus = [g for _, _, g in values if g is not None]
        minutes.append(NodeMinute(
            node_id=node_id, minute=minute, samples=len(values),
            cpu=sum(v[0] for v in values) / len(values), cpu_max=max(v[0] for v in values),
            mem=sum(v[1] for v in values) / len(values),
            gpu=sum(gpus) / len(gpus) if gpus else None))
    NodeMinute.objects.bulk_create(minutes, ignore_conflicts=True)
    return len(minutes)


def prune(now: datetime | None = None) -> tuple[int, int]:
    """Raw samples past their window and rollups past theirs are deleted."""
    now = now or timezone.now()
    raw, _ = NodeSample.objects.filter(
        ts__lt=now - timedelta(hours=settings.NODE_SAMPLES_RAW_H)).delete()
    minutes, _ = NodeMinute.objects.filter(
        minute__lt=now - timedelta(days=settings.NODE_MINUTES_DAYS)).delete()
    return raw, minutes


def _rows(node: Node | None, since: datetime, now: datetime) -> tuple[str, list]:
    """(ts, cpu, mem, gpu) in time order: raw samples for a window of an hour or less; beyond,
    minute rollups, then the raw samples of the minutes not rolled up yet (up to now)."""
    raw = NodeSample.objects.order_by("ts")
    if node is not None:
        raw = raw.filter(node=node)
    if now - since <= timedelta(hours=1):
        return "raw", list(raw.filter(ts__gte=since).values_list("ts", "cpu", "mem", "gpu")
                           .iterator(chunk_size=5000))
    minutes = NodeMinute.objects.filter(minute__gte=since).order_by("minute")
    if node is not None:
        minutes = minutes.filter(node=node)
    rows = list(minutes.values_list("minute", "cpu", "mem", "gpu").iterator(chunk_size=5000))
    # A minute's rollup is stamped with its start; its samples span the whole minute.
    rows = [(ts + timedelta(seconds=30), *values) for ts, *values in rows]
    rolled = minutes.values_list("minute", flat=True).last()
    fresh = raw.filter(ts__gte=max(since, rolled + timedelta(minutes=1)) if rolled else since)
    return "minute", rows + list(fresh.values_list("ts", "cpu", "mem", "gpu")
                                 .iterator(chunk_size=5000))


def series(node: Node | None, *, since: datetime, points: int = 300) -> dict:
    """cpu/mem/gpu over [since, now] of one node, or averaged over every node when `node` is
    None, at most `points` points (plus one empty point per gap), averaged into equal buckets
    on the server. Each point is stamped with the mean time of what it averages, so none lies
    before the first sample; where nothing was sampled for three buckets or more (the cluster,
    or the node, was down) an empty point makes the chart show a gap, not a straight line."""
    now = timezone.now()
    points = max(10, min(points, 1000))
    source, rows = _rows(node, since, now)
    width = max((now - since) / points, timedelta(seconds=1))
    gap = max(3 * width, timedelta(seconds=5 * HEARTBEAT_S),
              timedelta(minutes=3) if source == "minute" else timedelta(0))
    buckets: dict[int, list] = defaultdict(list)
    for ts, *values in rows:
        buckets[int((ts - since) / width)].append((ts, *values))
    out = {"source": source, "t": [], **{name: [] for name in SERIES}}
    previous = None
    for index in sorted(buckets):
        values = buckets[index]
        at = since + sum((ts - since for ts, *_ in values), timedelta(0)) / len(values)
        if previous is not None and at - previous > gap:
            out["t"].append((previous + (at - previous) / 2).isoformat())
            for name in SERIES:
                out[name].append(None)
        previous = at
        out["t"].append(at.isoformat())
        for position, name in enumerate(SERIES, start=1):
            present = [v[position] for v in values if v[position] is not None]
            out[name].append(round(sum(present) / len(present), 2) if present else None)
    return out
