"""The job-kind registry: a kind is one module in this package (or an installed entry point)
that defines ``KINDS``, a list of :class:`JobKind`."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ConfigDict

ENTRY_POINT_GROUP = "portal.kinds"


class Params(BaseModel):
    """Base of every kind's parameter model: unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class JobKind:
    name: str
    title: str
    description: str
    params: type[Params]
    run: Callable[[Any, Any], Any]
    queue: str = "cpu"
    # Run only as a partition of another job's fan-out: not offered, not submitted directly.
    internal: bool = False
    # A Django permission ("app_label.codename") a user needs to submit it; None: anyone.
    permission: str | None = None
    # Why this node cannot run it (a missing package), or "": it is listed but not offered.
    unavailable: str = ""
    # May be stopped and queued again to give its slot to a team under its fair share
    # (PREEMPTION=1): for work that loses little by starting over, or that resumes.
    preemptible: bool = False
    # What its fan-out's children are called on its pages and in their names ("trial").
    part_word: str = "partition"

    def schema(self) -> dict:
        return self.params.model_json_schema()


def _modules():
    for info in pkgutil.iter_modules(__path__):
        yield importlib.import_module(f"{__name__}.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        yield ep.load()


@cache
def registry() -> dict[str, JobKind]:
    kinds: dict[str, JobKind] = {}
    for module in _modules():
        for kind in getattr(module, "KINDS", []):
            if kind.name in kinds:
                raise ValueError(f"job kind {kind.name!r} is defined twice")
            kinds[kind.name] = kind
    return kinds


@cache
def examples() -> list[dict]:
    """Ready-made jobs that kind modules offer (`EXAMPLES`): the submit page's one-click
    examples. Each is {"title", "description", "kind", "name", "params"}."""
    found = []
    for module in _modules():
        found.extend(getattr(module, "EXAMPLES", []))
    return found


def get_kind(name: str) -> JobKind | None:
    return registry().get(name)


def all_kinds(*, internal: bool = False) -> list[JobKind]:
    """The kinds users submit (and, with internal=True, the partition kinds too)."""
    return sorted((kind for kind in registry().values() if internal or not kind.internal),
                  key=lambda kind: kind.name)
