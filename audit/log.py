"""Writing the audit trail.

    from audit.log import record, record_many
    record(request.user, "job.cancel", job, via="api", reason="...")
    record_many(request.user, "node.drain", nodes, via="admin")

Both write in the caller's transaction, on the caller's connection: call them inside the
`transaction.atomic()` that makes the change, and a change that is rolled back leaves no entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import models

from audit.models import AuditEntry, Via

VIAS = frozenset(Via.values)


def actor_or_none(actor):
    """A user; None (the system) for None or an anonymous user."""
    if actor is None or not getattr(actor, "is_authenticated", False) or actor.pk is None:
        return None
    return actor


def entry(actor, action: str, target: models.Model, *, via: str,
          **detail: Any) -> AuditEntry:
    """An unsaved entry, its target named now (before a delete clears the target's pk)."""
    if via not in VIAS:
        raise ValueError(f"via must be one of {', '.join(sorted(VIAS))}, not {via!r}")
    if not isinstance(target, models.Model) or target.pk is None:
        raise ValueError(f"target must be a saved model instance, not {target!r}")
    return AuditEntry(actor=actor_or_none(actor), action=action,
                      target_type=target._meta.model_name, target_id=str(target.pk),
                      target_repr=str(target)[:200], via=via, detail=detail)


def record(actor, action: str, target: models.Model, *, via: str,
           **detail: Any) -> AuditEntry:
    """One entry: `actor` did `action` to `target` (a saved model instance) through `via`
    ("api", "page", "admin", "cli" or "system"); `detail` is stored as JSON."""
    item = entry(actor, action, target, via=via, **detail)
    item.save()
    return item


def record_many(actor, action: str, targets: Iterable[models.Model], *, via: str,
                **detail: Any) -> list[AuditEntry]:
    """One entry per target, in one INSERT; the same `detail` on each."""
    items = [entry(actor, action, target, via=via, **detail) for target in targets]
    return AuditEntry.objects.bulk_create(items) if items else []
