"""The ingester: reads the workers' event stream in a consumer group and writes it in batches.

Writes are idempotent (log lines and metric points are keyed by attempt and sequence; state
moves are guarded claims), events of a superseded attempt are dropped by their fencing token,
and updates are broadcast only after the batch commits. Entries are acknowledged after the
commit, so a crash replays them (at least once) and changes nothing twice.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from datetime import UTC, datetime, timedelta
from functools import reduce
from operator import or_

import redis
from django import db
from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Q
from django.utils import timezone

from audit import feed
from jobs import admission, fanout, lifecycle
from jobs.broadcast import Outbox
from jobs.lifecycle import Plan
from jobs.models import (
    TERMINAL,
    Artifact,
    AttemptRank,
    AttemptState,
    Job,
    JobState,
    LogLine,
    MetricPoint,
)
from nodes import history
from nodes.models import Node, NodeSample, NodeState
from nodes.services import node_event
from workers import protocol, wire
from workers.config import LEASE_S, env_float

log = logging.getLogger(__name__)
ALIVE_KEY = f"{protocol.PREFIX}:ingest:alive"
STATS_TTL_S = 24 * 3600
HEARTBEAT_FIELDS = ["worker", "queues", "labels", "concurrency", "running", "reserved",
                    "utilization", "last_heartbeat", "state"]
READ_COUNT = 200
BLOCK_MS = 1000
LIVE_RANK = (AttemptState.QUEUED, AttemptState.RUNNING)  # a gang's ranks that may still write
RECLAIM_IDLE_MS = 15_000
# How long a read of heartbeats alone waits for more to share its batch: 200 nodes at 1 Hz
# arrive spread over the second, and a batch's fixed cost (a transaction, the nodes read, the
# broadcast) is most of its cost. Any other event ends the wait.
HEARTBEAT_GATHER_S = env_float("HEARTBEAT_GATHER_S", 0.1)


def at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


JOB_FIELDS = ("id", "attempt", "token", "owner_id", "team_id", "state", "cancel_requested_at",
              "kind", "name", "node", "message", "progress", "error", "max_attempts", "timeout_s",
              "parent_id", "partition", "done", "total", "queue", "labels",
              "cpus", "gpus", "nodes", "slots_per_node")


class Batch:
    """Applies one batch of events inside one transaction, with a few set-based statements:
    the jobs' rows are locked and read once, each job's events are played on its row in memory
    (the lifecycle's Plan), and the results are written grouped by how the jobs moved."""

    def __init__(self, events: list[dict]):
        self.events = events
        self.outbox = Outbox()
        self.now = timezone.now()
        self.plans: dict[int, Plan] = {}
        self.logs: list[LogLine] = []
        self.metrics: list[MetricPoint] = []
        self.to_stop: set[tuple[int, int]] = set()  # attempts the portal no longer gives out
        self.samples: list = []
        self.nodes: dict[str, Node] = {}  # the nodes heard from in this batch, by name
        self.beaten: dict[str, Node] = {}  # of those, the ones whose heartbeat counted
        self.artifacts: list[Artifact] = []
        self.fanouts: list[tuple[Plan, dict]] = []
        self.parents: set[int] = set()  # whose progress to sum again
        self.handlers = {
            protocol.STARTED: self.started, protocol.PROGRESS: self.progress,
            protocol.LOG: self.log, protocol.METRIC: self.metric,
            protocol.FINISHED: self.finished, protocol.ARTIFACT: self.artifact,
            protocol.LEASE: self.lease, protocol.FANOUT: self.fanout,
            protocol.RENDEZVOUS: self.rendezvous,
        }

    def apply(self) -> Outbox:
        ids = sorted({e["job"] for e in self.events if "job" in e})
        rows = (Job.objects.select_for_update().filter(pk__in=ids).order_by("pk")
                .values(*JOB_FIELDS))
        self.plans = {row["id"]: Plan(row, self.now) for row in rows}
        self.load_ranks()
        names = {e["node"] for e in self.events if e.get("type") == protocol.HEARTBEAT}
        self.nodes = Node.objects.in_bulk(names, field_name="name") if names else {}
        for event in self.events:
            kind = event.get("type")
            if kind == protocol.HEARTBEAT:
                self.heartbeat(event)
            elif kind == protocol.STOPPED:
                self.stopped(event)
            elif kind in self.handlers and "job" in event and self.current(event):
                self.handlers[kind](self.plans[event["job"]], event)
        # Every node that beat, in one statement (200 nodes at 1 Hz are 200 rows a second).
        lifecycle.write_nodes(self.beaten.values(), HEARTBEAT_FIELDS)
        won = lifecycle.write_plans(self.plans, self.now, outbox=self.outbox)
        for job_id, plan in self.plans.items():
            self.publish(job_id, plan, moved=job_id in won)
        outcomes = [(plan.row["parent_id"], plan.row["partition"], plan.outcome)
                    for job_id, plan in self.plans.items() if plan.outcome and job_id in won]
        self.parents |= {plan.row["parent_id"] for job_id, plan in self.plans.items()
                         if job_id in won and plan.row["parent_id"]}
        LogLine.objects.bulk_create(self.logs, ignore_conflicts=True)
        MetricPoint.objects.bulk_create(self.metrics, ignore_conflicts=True)
        NodeSample.objects.bulk_create(self.samples)
        # A file kept again under the same name (a checkpoint each epoch) replaces the last.
        latest = {(a.job_id, a.attempt, a.name): a for a in self.artifacts}  # one per name
        Artifact.objects.bulk_create(list(latest.values()), update_conflicts=True,
                                     unique_fields=["job", "attempt", "name"],
                                     update_fields=["path", "size", "sha256", "created_at"])
        for plan, event in self.fanouts:
            fanout.create_children(plan.row, event, self.outbox, outcomes, self.now)
        fanout.sum_progress(self.parents, self.outbox)
        if outcomes:
            transaction.on_commit(lambda: fanout.publish_outcomes(outcomes))
        lifecycle.stop_on_commit(*sorted(self.to_stop))
        if any(self.plans[job_id].state in TERMINAL for job_id in won):
            # Last, so that the pass lock is held for the pass alone: what the ended jobs
            # freed goes to the next in line in this same transaction.
            admission.admit_now_or_on_commit()
        return self.outbox

    def load_ranks(self) -> None:
        """The rank rows of the gangs' current attempts, for their plans."""
        gangs = {job_id: plan for job_id, plan in self.plans.items() if plan.gang}
        if not gangs:
            return
        for rank in AttemptRank.objects.filter(job_id__in=gangs).values(
                "job_id", "attempt", "rank", "state", "node", "result"):
            plan = gangs[rank["job_id"]]
            if rank["attempt"] == plan.number:
                plan.ranks[rank["rank"]] = rank

    def current(self, event) -> bool:
        """Fencing: only the job's current attempt, with its token, may change anything. A
        lost attempt is fenced off even when it was the job's last (its token changed), and so
        is a gang's rank once it has ended, or its gang has (stopped with a rank that failed,
        it would still write until its node stops it)."""
        plan = self.plans.get(event["job"])
        if plan is None:
            return False
        row = plan.row
        ok = row["attempt"] == event.get("attempt") and row["token"] == event.get("token")
        if event.get("type") == protocol.STARTED and (not ok or plan.state in TERMINAL):
            self.to_stop.add((event["job"], event.get("attempt")))  # a stray copy: stop it
        if ok and plan.gang and event.get("type") != protocol.FINISHED:
            rank = plan.ranks.get(event.get("rank") or 0)
            ok = plan.state not in TERMINAL and (rank is None or rank["state"] in LIVE_RANK)
        return ok

    def started(self, plan: Plan, e) -> None:
        if plan.gang:
            plan.start_rank(e.get("rank") or 0, at=at(e["ts"]), node=e.get("node", ""),
                            worker=e.get("worker", ""))
            return
        plan.start(at=at(e["ts"]), node=e.get("node", ""), worker=e.get("worker", ""))

    def rendezvous(self, plan: Plan, e) -> None:
        if plan.gang and not e.get("rank"):
            plan.rendezvous(str(e.get("address") or ""), int(e.get("port") or 0))

    def progress(self, plan: Plan, e) -> None:
        plan.report(progress=e.get("fraction"),
                    message=(e.get("message") or _progress_text(e))[:500],
                    done=e.get("done"), total=e.get("total"), unit=(e.get("unit") or "")[:20])
        if plan.row["parent_id"]:
            self.parents.add(plan.row["parent_id"])

    def log(self, plan: Plan, e) -> None:
        rank = e.get("rank") or 0
        self.logs.append(LogLine(job_id=e["job"], attempt=e["attempt"], seq=e["seq"],
                                 ts=at(e["ts"]), rank=rank,
                                 level=e.get("level", "info")[:10], text=e.get("text", "")))
        plan.events.append({"type": "job.log", "attempt": e["attempt"], "seq": e["seq"],
                            **({"rank": rank} if plan.gang else {}),
                            "level": e.get("level", "info"), "text": e.get("text", ""),
                            "ts": at(e["ts"]).isoformat()})

    def metric(self, plan: Plan, e) -> None:
        self.metrics.append(MetricPoint(job_id=e["job"], attempt=e["attempt"], name=e["name"],
                                        step=e["step"], value=e["value"], ts=at(e["ts"])))
        plan.events.append({"type": "job.metric", "name": e["name"], "step": e["step"],
                            "value": e["value"]})

    def finished(self, plan: Plan, e) -> None:
        if plan.gang:
            plan.finish_rank(e.get("rank") or 0, e.get("outcome"), at=at(e["ts"]),
                             result=e.get("result"), error=e.get("error", ""))
            return
        plan.finish(e.get("outcome"), at=at(e["ts"]), result=e.get("result"),
                    error=e.get("error", ""))

    def artifact(self, plan: Plan, e) -> None:
        self.artifacts.append(Artifact(job_id=e["job"], attempt=e["attempt"],
                                       name=e["name"][:200],
                                       path=e["path"][:500], size=e.get("size") or 0,
                                       sha256=(e.get("sha256") or "")[:64], created_at=self.now))
        plan.events.append({"type": "job.artifact", "name": e["name"], "size": e.get("size")})

    def lease(self, plan: Plan, e) -> None:
        """A partition run inside its parent's process: its parent renews its lease."""
        plan.renew()

    def fanout(self, plan: Plan, e) -> None:
        if plan.state == JobState.RUNNING:
            self.fanouts.append((plan, e))

    def stopped(self, e) -> None:
        """A node stopped an attempt the portal no longer gave it: the feed says so."""
        plan = self.plans.get(e.get("job"))
        if plan is None:  # a job that is gone: nobody's feed
            return
        text = (f"node {e.get('node') or '?'} stopped job {e.get('job')} attempt "
                f"{e.get('attempt')}: {e.get('reason') or 'superseded'}")
        feed.record([feed.job_entry("job.stopped", text, job_id=plan.row["id"],
                                    team_id=plan.row["team_id"], node=e.get("node") or "")],
                    self.outbox)

    def publish(self, job_id: int, plan: Plan, *, moved: bool) -> None:
        """Log lines and metric points are for the job's own stream; the lists need only
        states and progress."""
        team, parent = plan.row["team_id"], plan.row["parent_id"]
        for event in plan.publishable(moved=moved):
            lists = event["type"] not in ("job.log", "job.metric", "job.artifact")
            self.outbox.job(job_id, team, event, lists=lists, parent=parent if lists else None)

    def heartbeat(self, e) -> None:
        node, created = self.nodes.get(e["node"]), False
        if node is None:  # a node's first heartbeat
            node, created = Node.objects.get_or_create(name=e["node"])
            self.nodes[node.name] = node
        beat = at(e["ts"])
        if node.last_heartbeat and beat <= node.last_heartbeat:
            return  # a replayed or late copy: the node has said something newer
        held = e.get("attempts") or []
        if held:
            lease = self.now + timedelta(seconds=LEASE_S)
            Job.objects.filter(
                reduce(or_, (Q(pk=j, attempt=a, token=k) for j, a, k, *_ in held)),
                state__in=[JobState.QUEUED, JobState.RUNNING],
            ).update(lease_expires_at=lease)
            ranks = [(j, a, r) for j, a, _, *r in held if r]
            if ranks:  # a gang's ranks: each its own lease, so that one lost node shows
                AttemptRank.objects.filter(
                    reduce(or_, (Q(job_id=j, attempt=a, rank=r[0]) for j, a, r in ranks)),
                    state__in=["queued", "running"]).update(lease_expires_at=lease)
            self.to_stop |= superseded(held)
        was = node.state
        node.worker = e.get("worker", "")[:200]
        node.queues = e.get("consuming", e.get("queues")) or []  # what it takes work from now
        node.concurrency = e.get("concurrency") or 0
        node.labels = e.get("labels") or {}
        node.running = len(held)
        node.reserved = e.get("reserved") or []
        node.utilization = e.get("util") or {}
        node.last_heartbeat = beat
        fresh = self.now - beat < timedelta(seconds=settings.NODE_OFFLINE_S)
        if node.state == NodeState.OFFLINE and fresh:
            node.state = NodeState.ONLINE
        self.beaten[node.name] = node  # written with the batch's other nodes
        self.samples.append(history.sample_from(node, node.last_heartbeat, node.utilization))
        changed = created or was != node.state
        self.outbox.node(node_event(node, changed=changed))
        if changed:
            feed.record([feed.node_entry(node.name, "node.online", f"node {node.name} "
                                         f"{'online' if created else 'back online'}")],
                        self.outbox)


def superseded(held) -> set[tuple[int, int]]:
    """Of the attempts a node says it runs, those the portal no longer gives it: moved to
    another attempt, ended, or gone. Its node is told to stop them."""
    current = {(row["pk"], row["attempt"], row["token"]) for row in Job.objects.filter(
        pk__in={j for j, *_ in held}, state__in=[JobState.QUEUED, JobState.RUNNING])
        .values("pk", "attempt", "token")}
    return {(j, a) for j, a, k, *_ in held if (j, a, k) not in current}


def _moves(path: list[str]) -> list[str]:
    """queued, running, running -> queued, running: repeated states collapse."""
    return [state for i, state in enumerate(path) if i == 0 or state != path[i - 1]]


def _progress_text(e) -> str:
    done, total, unit = e.get("done"), e.get("total"), e.get("unit") or ""
    if done is None:
        return ""
    if total:
        return f"{done:g} / {total:g} {unit}".strip()
    return f"{done:g} {unit}".strip()


def decode(fields: dict) -> list[dict]:
    """A stream entry's events; one written before version 2 has one-letter names."""
    raw = fields.get(b"b") or fields.get("b")
    try:
        events = json.loads(raw)
    except (TypeError, ValueError):
        return []
    return normalized(events)


def normalized(events) -> list[dict]:
    events = [e if "type" in e else wire.from_v1(e) for e in events if isinstance(e, dict)]
    return [e for e in events if "type" in e and "ts" in e]


def heartbeats_only(entries) -> bool:
    return all(event["type"] == protocol.HEARTBEAT
               for _, fields in entries if fields for event in decode(fields))


def apply_events(events: list[dict]) -> None:
    """Write a batch in one transaction and broadcast it after the commit."""
    with transaction.atomic():
        outbox = Batch(normalized(events)).apply()
        outbox.publish_on_commit()


class Ingester:
    def __init__(self, client: redis.Redis | None = None, consumer: str | None = None):
        self.client = client or protocol.redis_client()
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.replay = True  # first read what this consumer was given and did not acknowledge
        self._last_reclaim = 0.0
        self.stats = {"since": time.time(), "consumer": self.consumer, "batches": 0,
                      "events": 0, "busy_s": 0.0}

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(protocol.EVENTS_STREAM, protocol.INGEST_GROUP, id="0",
                                      mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self):
        if time.monotonic() - self._last_reclaim > RECLAIM_IDLE_MS / 1000:
            self._last_reclaim = time.monotonic()
            # Entries a crashed ingester took and never acknowledged.
            _, claimed, *_ = self.client.xautoclaim(
                protocol.EVENTS_STREAM, protocol.INGEST_GROUP, self.consumer,
                min_idle_time=RECLAIM_IDLE_MS, start_id="0-0", count=READ_COUNT)
            if claimed:
                return claimed
        start = "0" if self.replay else ">"
        reply = self.client.xreadgroup(protocol.INGEST_GROUP, self.consumer,
                                       {protocol.EVENTS_STREAM: start}, count=READ_COUNT,
                                       block=None if self.replay else BLOCK_MS)
        entries = reply[0][1] if reply else []
        if self.replay and not entries:
            self.replay = False
        if not self.replay:
            entries = self.gather(entries)
        return entries

    def gather(self, entries: list) -> list:
        """Entries of heartbeats alone, with those that follow within HEARTBEAT_GATHER_S: one
        batch for many nodes. A job's event (or a full read) is applied at once."""
        deadline = time.monotonic() + HEARTBEAT_GATHER_S
        more = entries
        while more and len(entries) < READ_COUNT and heartbeats_only(more):
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms < 1:
                break
            reply = self.client.xreadgroup(protocol.INGEST_GROUP, self.consumer,
                                           {protocol.EVENTS_STREAM: ">"},
                                           count=READ_COUNT - len(entries), block=left_ms)
            more = reply[0][1] if reply else []
            entries = entries + more
        return entries

    def step(self) -> int:
        """Read, write and acknowledge one batch; returns how many events it held."""
        entries = [(entry_id, fields) for entry_id, fields in self.read() if fields]
        self.client.set(ALIVE_KEY, time.time(), ex=60)
        if not entries:
            return 0
        began = time.perf_counter()
        events = [event for _, fields in entries for event in decode(fields)]
        # The jobs' events first, in a batch of their own: their broadcast does not wait for
        # the nodes' heartbeats gathered with them.
        beats = [event for event in events if event["type"] == protocol.HEARTBEAT]
        for batch in ([event for event in events if event["type"] != protocol.HEARTBEAT],
                      beats):
            if batch:
                self.apply(batch)
        ids = [entry_id for entry_id, _ in entries]
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(protocol.EVENTS_STREAM, protocol.INGEST_GROUP, *ids)
        pipe.xdel(protocol.EVENTS_STREAM, *ids)
        self.stats["batches"] += 1
        self.stats["events"] += len(events)
        self.stats["busy_s"] += time.perf_counter() - began
        pipe.hset(protocol.INGEST_STATS + self.consumer, mapping=self.stats)
        pipe.expire(protocol.INGEST_STATS + self.consumer, STATS_TTL_S)
        acked, deleted, *counted = pipe.execute(raise_on_error=False)
        for reply in (acked, deleted):
            if isinstance(reply, Exception):
                raise reply
        if any(isinstance(reply, Exception) for reply in counted):  # a counter never stops a batch
            log.debug("ingester stats not written: %s", counted)
        return len(events)

    def apply(self, events: list[dict]) -> None:
        try:
            apply_events(events)
        except DatabaseError:
            self.replay = True  # nothing was acknowledged: read them again
            raise
        except Exception:
            log.exception("a batch failed; applying its %d events one by one", len(events))
            self.apply_one_by_one(events)

    @staticmethod
    def apply_one_by_one(events: list[dict]) -> None:
        for event in events:
            try:
                apply_events([event])
            except DatabaseError:
                raise
            except Exception:
                log.exception("dropping a malformed event: %.500r", event)

    def run(self, stop=lambda: False) -> None:
        delay = 0.1
        while not stop():
            try:
                self.ensure_group() if self.replay else None
                self.step()
                delay = 0.1
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis restarted: the stream and group are new
                    self.replay = True
                    continue
                log.warning("ingester: %s", exc)
                time.sleep(delay)
            except (redis.RedisError, DatabaseError) as exc:
                log.warning("ingester waiting: %s", exc)
                db.connection.close()
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
