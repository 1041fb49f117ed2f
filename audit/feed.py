"""The cluster's feed of events: written where the move happens, in its transaction, and
published live once it commits; read newest first, a page at a time; pruned to its bound.

    entries = record([job_entry(...), node_entry("w1", "offline", "...")], outbox)

`outbox` is anything with `add(groups, event)` (jobs.broadcast.Outbox): a job's event goes to
its team's stream and staff's, a node's to every dashboard's. Who may read which entries is
decided by the caller (jobs.selectors.feed), here only applied.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from audit.models import FeedEvent
from workers import wire

# Every kind of entry, and how it reads: "bad" is shown in red (and as a toast).
LEVELS = {
    "job.succeeded": "good",
    "job.failed": "bad",
    "job.cancelled": "info",
    "job.requeued": "warn",
    "job.preempted": "warn",
    "job.stopped": "info",
    "node.online": "good",
    "node.offline": "bad",
    "node.draining": "warn",
}
KINDS = tuple(LEVELS)


def job_entry(kind: str, text: str, *, job_id: int, team_id: int, node: str = "",
              at=None) -> FeedEvent:
    return _entry(kind, text, team_id=team_id, job_id=job_id, node=node, at=at)


def node_entry(node: str, kind: str, text: str, *, at=None) -> FeedEvent:
    return _entry(kind, text, team_id=None, job_id=None, node=node, at=at)


def _entry(kind, text, *, team_id, job_id, node, at) -> FeedEvent:
    if kind not in LEVELS:
        raise ValueError(f"not a feed kind: {kind!r}")
    return FeedEvent(kind=kind, text=text[:500], team_id=team_id, job_id=job_id,
                     node=(node or "")[:100], at=at or timezone.now())


def record(entries: Iterable[FeedEvent], outbox) -> list[FeedEvent]:
    """Write the entries (one INSERT, in the caller's transaction) and add each, with its id,
    to `outbox` for the streams that may hear of it."""
    entries = [entry for entry in entries if entry is not None]
    if not entries:
        return []
    entries = FeedEvent.objects.bulk_create(entries)
    for entry in entries:
        outbox.add(groups(entry), live(entry))
    return entries


def groups(entry: FeedEvent) -> list[str]:
    if entry.team_id is None:
        return [wire.CLUSTER]
    return [wire.team_group(entry.team_id), wire.STAFF_JOBS]


def as_dict(entry: FeedEvent) -> dict:
    """An entry as the API and the live stream give it."""
    return {"id": entry.pk, "at": entry.at.isoformat(), "kind": entry.kind,
            "level": LEVELS.get(entry.kind, "info"), "text": entry.text,
            "job": None if entry.job_id is None else str(entry.job_id), "node": entry.node}


def live(entry: FeedEvent) -> dict:
    return {"type": "feed.event", **as_dict(entry)}


def visible(team_ids: Iterable[int] | None) -> QuerySet[FeedEvent]:
    """Nodes' entries and those of the jobs of `team_ids`; every entry for None (staff)."""
    entries = FeedEvent.objects.all()
    if team_ids is None:
        return entries
    return entries.filter(Q(team_id__isnull=True) | Q(team_id__in=list(team_ids)))


def prune(now=None) -> int:
    """Entries past FEED_KEEP_DAYS, and all but the newest FEED_KEEP, are deleted."""
    now = now or timezone.now()
    old, _ = FeedEvent.objects.filter(
        at__lt=now - timedelta(days=settings.FEED_KEEP_DAYS)).delete()
    edge = list(FeedEvent.objects.order_by("-id").values_list("id", flat=True)
                [settings.FEED_KEEP:settings.FEED_KEEP + 1])
    over = 0
    if edge:
        over, _ = FeedEvent.objects.filter(id__lte=edge[0]).delete()
    return old + over
