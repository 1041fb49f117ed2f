"""The job state machine, and the only code that moves a job from one state to another.

Every move is a guarded claim: one conditional UPDATE whose row count says whether it won.
"""

from __future__ import annotations

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
