"""Fan-out: a running job splits its work into partitions that run as child jobs.

The parent's attempt puts a `fanout` event on the stream and waits; the ingester creates the
children (once: a partition is unique per parent), dispatches them, sums their progress into the
parent's, and, as each one ends, writes its outcome into a Redis hash that the parent's attempt
reads. Children are ordinary jobs: a lost node or a failure retries the partition alone, and the
reconciler writes the hash again if Redis forgot it. A parent's next attempt (its node died)
fans out the same partitions and finds them, finished ones with their results.
"""

from __future__ import annotations

import json
import logging

import redis
from django.db.models import Case, Count, F, FloatField, Q, Sum, Value, When
from django.db.models.functions import Coalesce

from jobs import lifecycle
from jobs.broadcast import Outbox
from jobs.models import TERMINAL, Job, JobState
from workers import protocol
from workers.kinds import get_kind

log = logging.getLogger(__name__)
OUTCOME_TTL_S = 7 * 24 * 3600


def outcome_of(job: dict) -> dict:
    return {"state": job["state"], "result": job["result"], "error": job["error"]}


def create_children(parent: dict, event: dict, outbox: Outbox, outcomes: list, now) -> list[Job]:
    """The parent's partitions that do not exist yet, queued and dispatched after the commit;
    those that already ended are reported again (to a parent's new attempt)."""
    parts = event.get("parts") or []
    kind = get_kind(event.get("kind") or "")
    existing = {row["partition"]: row for row in Job.objects.filter(parent_id=parent["id"])
                .values("partition", "state", "result", "error")}
    for index, row in existing.items():
        if row["state"] in TERMINAL:
            outcomes.append((parent["id"], index, outcome_of(row)))
    missing = [i for i in range(len(parts)) if i not in existing]
    if kind is None:
        error = f"job kind {event.get('kind')!r} is not installed"
        outcomes.extend((parent["id"], i, {"state": "failed", "result": None, "error": error})
                        for i in missing)
        return []
    queue = event.get("queue") or kind.queue
    word = getattr(get_kind(parent["kind"]), "part_word", "partition")
    return lifecycle.add_partitions(parent, kind, {i: parts[i] for i in missing}, queue, now,
                                    word=word)


def sum_progress(parent_ids, outbox: Outbox) -> None:
    """A parent's progress is its children's: finished ones count whole."""
    for parent in Job.objects.filter(pk__in=parent_ids, state=JobState.RUNNING).only(
            "id", "team_id"):
        totals = Job.objects.filter(parent=parent).aggregate(
            count=Count("id"), succeeded=Count("id", filter=Q(state=JobState.SUCCEEDED)),
            progress=Sum(Case(When(state=JobState.SUCCEEDED, then=Value(1.0)),
                              default=Coalesce(F("progress"), Value(0.0)),
                              output_field=FloatField())),
            done=Sum("done"), total=Sum("total"))
        unit = (Job.objects.filter(parent=parent).exclude(unit="").values_list("unit", flat=True)
                .first() or "")
        fraction = (totals["progress"] or 0.0) / totals["count"] if totals["count"] else None
        message = f"{totals['succeeded']} of {totals['count']} partitions done"
        if totals["total"]:
            message += f" · {totals['done'] or 0:,.0f} of {totals['total']:,.0f} {unit}".rstrip()
        fields = {"progress": fraction, "done": totals["done"], "total": totals["total"],
                  "unit": unit, "message": message[:500]}
        if Job.objects.filter(pk=parent.pk, state=JobState.RUNNING).update(**fields):
            outbox.job(parent.pk, parent.team_id, {"type": "job.progress", **fields})


def publish_outcomes(outcomes: list[tuple[int, int, dict]]) -> None:
    """Tell waiting parents how their partitions ended (after the commit that recorded it)."""
    try:
        pipe = protocol.redis_client().pipeline(transaction=False)
        for parent, index, outcome in outcomes:
            key = protocol.parts_key(parent)
            pipe.hset(key, str(index), json.dumps(outcome, default=str))
            pipe.expire(key, OUTCOME_TTL_S)
        pipe.execute()
    except redis.RedisError as exc:  # the reconciler writes them again
        log.warning("partition outcomes not published: %s", exc)


def reassert_outcomes(client: redis.Redis) -> int:
    """Redis keeps nothing across a restart: the database says which partitions ended."""
    parents = Job.objects.filter(state=JobState.RUNNING, children__isnull=False).distinct()
    written = 0
    for parent_id in parents.values_list("id", flat=True)[:500]:
        ended = list(Job.objects.filter(parent_id=parent_id, state__in=TERMINAL)
                     .values("partition", "state", "result", "error"))
        if ended and client.hlen(protocol.parts_key(parent_id)) < len(ended):
            publish_outcomes([(parent_id, row["partition"], outcome_of(row)) for row in ended])
            written += len(ended)
    return written
