"""Reads of nodes. Every signed-in user sees every node (their names, state and utilization);
which attempts ran on a node is the jobs app's to say, filtered by what the user may see."""

from __future__ import annotations

from collections.abc import Callable

from django.db.models import QuerySet

from nodes.models import Node

# The jobs app (above this one) provides it when it is ready.
_attempts_on: Callable[..., list] | None = None


def provide_attempts_on(attempts_on: Callable[..., list]) -> None:
    global _attempts_on
    _attempts_on = attempts_on


def nodes() -> QuerySet[Node]:
    return Node.objects.order_by("name")


def attempts_on(user, node: Node) -> list:
    """The attempts that ran on the node, newest first, of the jobs this user may see."""
    return _attempts_on(user, node) if _attempts_on else []
