"""What changes a node from the portal's side (draining it), and what a node's change says to
the dashboards."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import transaction

from audit import feed
from audit.log import actor_or_none, record
from nodes.models import Node, NodeState
from workers import protocol

log = logging.getLogger(__name__)

# Where node events go after the commit: the jobs app's outbox (it sits above this app, and
# provides it when it is ready), so that every stream keeps one sequence.
_outbox: Callable[[], object] | None = None


def provide_outbox(outbox: Callable[[], object]) -> None:
    global _outbox
    _outbox = outbox


def drain_node(*, node, draining: bool = True, actor=None, via: str = "admin"):
    """Drain a node (it finishes what it runs and takes nothing new), or put it back to work."""
    with transaction.atomic():
        if draining:
            moved = Node.objects.filter(pk=node.pk).exclude(state=NodeState.DRAINING).update(
                state=NodeState.DRAINING)
        else:
            moved = Node.objects.filter(pk=node.pk, state=NodeState.DRAINING).update(
                state=NodeState.ONLINE)
        node.refresh_from_db()
        if actor is not None:
            record(actor, "node.drain" if draining else "node.undrain", node, via=via)
        transaction.on_commit(lambda: signal_drain(node.name, draining))
        if _outbox is not None:
            outbox = _outbox()
            outbox.node(node_event(node, changed=True))
            if moved:
                by = f" by {actor.get_username()}" if actor_or_none(actor) else ""
                feed.record([feed.node_entry(node.name, "node.draining", f"node {node.name} "
                                             f"drained{by}: it takes no new work") if draining
                             else feed.node_entry(node.name, "node.online", f"node {node.name} "
                                                  f"undrained{by}: it takes work again")],
                            outbox)
            outbox.publish_on_commit()
    return node


def signal_drain(name: str, draining: bool) -> None:
    try:
        client = protocol.redis_client()
        if draining:
            client.set(protocol.drain_key(name), 1)
        else:
            client.delete(protocol.drain_key(name))
    except Exception as exc:  # the reconciler raises it again from the database
        log.warning("drain flag for node %s not set: %s", name, exc)


def node_event(node: Node, *, changed: bool = False) -> dict:
    return {"type": "node.health", "node": node.name, "state": node.state,
            "running": node.running, "concurrency": node.concurrency,
            "utilization": compact(node.utilization or {}), "changed": changed,
            "last_heartbeat": node.last_heartbeat.isoformat() if node.last_heartbeat else None}


def compact(value):
    """Figures to one decimal, byte counts whole: every dashboard gets every node's health,
    and most of a frame is digits no chart shows."""
    if isinstance(value, float):
        return round(value, 1) if abs(value) < 1e6 else round(value)
    if isinstance(value, dict):
        return {key: compact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [compact(item) for item in value]
    return value
