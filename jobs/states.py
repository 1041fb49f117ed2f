"""The job state machine, and the only code that moves a job from one state to another.

Every move is a guarded claim: one conditional UPDATE whose row count says whether it won.
"""

from __future__ import annotations

import itertools

from django.db.models import Case, F, Value, When

from jobs.models import Job, JobState

S = JobState
ALLOWED: dict[str, frozenset[str]] = {
    S.PENDING: frozenset({S.QUEUED, S.CANCELLED, S.FAILED}),
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED, S.FAILED}),
    # Back to queued when an attempt is lost and attempts remain.
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.QUEUED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}


class TransitionRefused(Exception):
    """The job is not in a state from which the asked move is allowed."""


def allowed(source: str, target: str) -> bool:
    return target in ALLOWED.get(source, frozenset())


def sources(target: str) -> frozenset[str]:
    return frozenset(state for state, targets in ALLOWED.items() if target in targets)


def claim(job_id: int, target: str, *, source: set[str] | frozenset[str] | None = None,
          guard: dict | None = None, **fields) -> bool:
    """Move a job to `target` if it is in one of the allowed source states (narrowed by
    `source`) and matches `guard`; set `fields` in the same UPDATE. True if this call won."""
    states = sources(target) if source is None else sources(target) & frozenset(source)
    if not states:
        raise ValueError(f"no state may move to {target!r} from {source!r}")
    return bool(
        Job.objects.filter(pk=job_id, state__in=states, **(guard or {}))
        .update(state=target, **fields)
    )


def claim_many(rows: dict[int, dict], *, path: list[str], token: dict[int, str]) -> set[int]:
    """Move many jobs along `path` (e.g. queued -> running -> succeeded, each step allowed) in
    one guarded UPDATE, setting each row's own fields (`rows[job_id]`). Only rows still in the
    path's first state and holding their token move; returns the ids that moved."""
    for source, target in itertools.pairwise(path):
        if not allowed(source, target):
            raise ValueError(f"{source!r} may not move to {target!r}")
    if not rows:
        return set()
    ids = list(rows)
    updates = per_row_values(Job, rows)
    moved = (Job.objects.filter(pk__in=ids, state=path[0], token__in=[token[i] for i in ids])
             .update(state=path[-1], **updates))
    if moved == len(ids):
        return set(ids)
    # Someone else moved some of them first (the caller normally holds the rows' locks).
    return set(Job.objects.filter(pk__in=ids, state=path[-1]).values_list("pk", flat=True))


def per_row_values(model, rows: dict, key: str = "pk") -> dict:
    """For UPDATE ... SET field = CASE pk WHEN 1 THEN ... END: each row gets its own value."""
    names = {name for fields in rows.values() for name in fields}
    updates = {}
    for name in names:
        field = model._meta.get_field(name)
        whens = [When(**{key: row_id}, then=Value(fields[name], output_field=field))
                 for row_id, fields in rows.items() if name in fields]
        updates[name] = Case(*whens, default=F(name), output_field=field)
    return updates
