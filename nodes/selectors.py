"""Reads of nodes. Every signed-in user sees every node (their names, state and utilization);
which attempts ran on a node is the jobs app's to say, filtered by what the user may see."""

from __future__ import annotations

from collections.abc import Callable

from django.db.models import QuerySet

from nodes.models import Node

# The jobs app (above this one) provides them when it is ready.
_attempts_on: Callable[..., list] | None = None
_jobs_on: Callable[..., None] | None = None


def provide_attempts_on(attempts_on: Callable[..., list]) -> None:
    global _attempts_on
    _attempts_on = attempts_on


def provide_jobs_on(jobs_on: Callable[..., None]) -> None:
    global _jobs_on
    _jobs_on = jobs_on


def nodes() -> QuerySet[Node]:
    return Node.objects.order_by("name")


def attempts_on(user, node: Node) -> list:
    """The attempts that ran on the node, newest first, of the jobs this user may see."""
    return _attempts_on(user, node) if _attempts_on else []


def jobs_on(user, nodes: list[dict]) -> None:
    """Gives each node (a dict with its `name` and `running`) `jobs`, the running jobs on it
    this user may see, and `other_jobs`, the busy slots left over."""
    if _jobs_on:
        _jobs_on(user, nodes)
    else:
        for node in nodes:
            node["jobs"], node["other_jobs"] = [], node.get("running") or 0
