"""The capacity planner: each kind's measured throughput per slot, from the portal's own
history, and what a workload of a given size needs to finish inside a window.

Kinds that load rows (their partitions, or the jobs themselves, report `rows_per_s`, or
return `rows`) are measured in rows per second per slot, one sample per succeeded partition;
every other kind in jobs per slot-hour, one sample per succeeded job."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import F

from jobs.models import Job, JobState, MetricPoint
from nodes.models import Node, NodeState
from workers.kinds import get_kind

SAMPLES = 200  # the latest succeeded runs a figure is made from
RATE_METRIC = "rows_per_s"


class PlanRefused(ValueError):
    """Input the planner cannot answer; `field` names what to change."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name


@dataclass
class Measure:
    kind: str
    unit: str  # "rows" or "jobs"
    values: list[float]  # rows/s per slot, or seconds per job
    queue: str  # where its slots are: its partitions' queue, or its own
    partitions: int | None = None  # the most partitions a run of it had
    whole_rows_per_s: list[float] = field(default_factory=list)  # whole runs, all slots

    @property
    def per_slot(self) -> float:
        """Rows per second per slot (rows), or jobs per second per slot (jobs)."""
        middle = statistics.median(self.values)
        return middle if self.unit == "rows" else 1 / middle

    def spread(self) -> dict:
        values = sorted(self.values)
        q = (statistics.quantiles(values, n=10, method="inclusive") if len(values) >= 2
             else [values[0]] * 9)
        return {"min": round(values[0], 3), "p10": round(q[0], 3),
                "median": round(statistics.median(values), 3), "p90": round(q[-1], 3),
                "max": round(values[-1], 3),
                "stdev": round(statistics.stdev(values), 3) if len(values) >= 2 else 0.0}


def _seconds(job) -> float:
    return max((job["finished_at"] - job["started_at"]).total_seconds(), 1e-3)


def _row_rates(jobs: list[dict]) -> list[float]:
    """Rows per second of each run: its last rows_per_s point, else its rows over its time."""
    last: dict[int, float] = {}
    points = (MetricPoint.objects.filter(job_id__in=[j["id"] for j in jobs], name=RATE_METRIC,
                                         attempt=F("job__attempt"))
              .order_by("job_id", "step").values_list("job_id", "value"))
    for job_id, value in points:  # the value at each job's last step wins
        last[job_id] = value
    rates = []
    for job in jobs:
        if job["id"] in last and last[job["id"]] > 0:
            rates.append(float(last[job["id"]]))
        elif isinstance(job["result"], dict) and isinstance(job["result"].get("rows"),
                                                             int | float):
            rates.append(job["result"]["rows"] / _seconds(job))
    return rates


FIELDS = ("id", "kind", "queue", "started_at", "finished_at", "result", "parent_id")


def measure(kind: str) -> Measure | None:
    """What the kind's history says, or None when it has none."""
    done = Job.objects.filter(state=JobState.SUCCEEDED, started_at__isnull=False,
                              finished_at__isnull=False)
    parents = list(done.filter(kind=kind, parent__isnull=True).order_by("-id")
                   .values(*FIELDS)[:SAMPLES])
    parts = list(done.filter(parent__kind=kind).order_by("-id").values(*FIELDS)[:SAMPLES])
    if parts:
        rates = _row_rates(parts)
        if rates:
            queue = Counter(p["queue"] for p in parts).most_common(1)[0][0]
            counts = Counter(p["parent_id"] for p in parts)
            whole = [p["result"]["rows_per_s"] for p in parents
                     if isinstance(p["result"], dict)
                     and isinstance(p["result"].get("rows_per_s"), int | float)]
            return Measure(kind, "rows", rates, queue, max(counts.values()), whole)
    if not parents:
        return None
    rates = _row_rates(parents)
    queue = Counter(p["queue"] for p in parents).most_common(1)[0][0]
    if rates:
        return Measure(kind, "rows", rates, queue)
    return Measure(kind, "jobs", [_seconds(p) for p in parents], queue)


def slots_of(queue: str) -> tuple[int, int]:
    """(slots online now, slots of a typical node) serving the queue."""
    nodes = [(state, concurrency) for state, queues, concurrency in
             Node.objects.values_list("state", "queues", "concurrency")
             if queue in (queues or []) and concurrency]
    online = sum(c for state, c in nodes if state == NodeState.ONLINE)
    typical = int(statistics.median(c for _, c in nodes)) if nodes else 1
    return online, max(typical, 1)


def plan(kind: str, size: float, window_s: float, *, partitions: int | None = None) -> dict:
    """Slots and nodes that finish `size` rows (or jobs) of `kind` inside `window_s`."""
    if not isinstance(kind, str) or get_kind(kind) is None:
        raise PlanRefused("kind", "no such kind: see GET /api/v1/kinds/")
    m = measure(kind)
    if m is None:
        raise PlanRefused("kind", f"{kind} has no succeeded run to measure yet: run it once")
    per_slot = m.per_slot
    unit = m.unit
    needed = size / window_s  # rows or jobs per second
    slots_needed = max(math.ceil(needed / per_slot - 1e-9), 1)
    slots_now, per_node = slots_of(m.queue)
    limit = partitions or m.partitions
    ceiling = settings.WAREHOUSE_MAX_ROWS_PER_S if unit == "rows" else 0.0
    usable_now = min(slots_now, limit) if limit else slots_now
    rate_now = per_slot * usable_now
    if ceiling:
        rate_now = min(rate_now, ceiling)
    expected = round(size / rate_now, 1) if rate_now else None
    if ceiling and needed > ceiling:
        bottleneck = "warehouse"
    elif limit and slots_needed > limit:
        bottleneck = "partitions"
    else:
        bottleneck = "compute"
    what = "rows" if unit == "rows" else "jobs"
    rate_text = (f"{per_slot:,.0f} rows/s per slot" if unit == "rows"
                 else f"{per_slot * 3600:,.2f} jobs per slot-hour")
    lines = [f"{size:,.0f} {what} in {window_s:,.0f} s is {needed:,.1f} {what}/s; measured "
             f"{rate_text} (median of {len(m.values)} runs), so {slots_needed} slots, "
             f"{math.ceil(slots_needed / per_node)} nodes of {per_node} slots in queue "
             f"{m.queue}."]
    if bottleneck == "warehouse":
        lines.append(f"The warehouse loads at most {ceiling:,.0f} rows/s "
                     "(WAREHOUSE_MAX_ROWS_PER_S): more slots do not help past that.")
    elif bottleneck == "partitions":
        lines.append(f"A run has {limit} partitions, one slot each: split it into at least "
                     f"{slots_needed} partitions for the slots to be used.")
    lines.append(f"Today's {slots_now} slots would take {expected:,.0f} s."
                 if expected else f"No node serving queue {m.queue} is online now.")
    return {
        "kind": kind, "unit": unit, "size": size, "window_s": window_s,
        "needed_per_s": round(needed, 3),
        "per_slot_rows_per_s": round(per_slot, 3) if unit == "rows" else None,
        "per_slot_jobs_per_hour": round(per_slot * 3600, 3) if unit == "jobs" else None,
        "samples": len(m.values), "spread": m.spread(), "queue": m.queue,
        "partitions": limit, "warehouse_rows_per_s": ceiling or None,
        "whole_run_rows_per_s": round(max(m.whole_rows_per_s), 1) if m.whole_rows_per_s
        else None,
        "slots_needed": slots_needed, "slots_per_node": per_node,
        "nodes_needed": math.ceil(slots_needed / per_node), "slots_now": slots_now,
        "expected_s_now": expected, "bottleneck": bottleneck,
        "explanation": " ".join(lines),
    }


def seconds_per_job(kind: str) -> float | None:
    """The median run time of the kind's latest succeeded jobs, or None without history."""
    runs = list(Job.objects.filter(kind=kind, state=JobState.SUCCEEDED, started_at__isnull=False,
                                   finished_at__isnull=False).order_by("-id")
                .values("started_at", "finished_at")[:SAMPLES])
    return statistics.median(_seconds(run) for run in runs) if runs else None


def nodes_wanted(target_s: float) -> dict[str, int]:
    """Per queue, the nodes that would run what runs there now and drain what waits within
    `target_s`, at the kinds' measured run times (a kind without history: one slot per job
    for the whole target)."""
    from django.db.models import Count

    waiting = (Job.objects.filter(state__in=[JobState.PENDING, JobState.QUEUED], blocked=False)
               .values("queue", "kind").annotate(n=Count("id")).order_by())
    running = dict(Job.objects.filter(state=JobState.RUNNING).values("queue")
                   .annotate(n=Count("id")).values_list("queue", "n").order_by())
    work: dict[str, float] = {}
    times: dict[str, float | None] = {}
    for row in waiting:
        if row["kind"] not in times:
            times[row["kind"]] = seconds_per_job(row["kind"])
        each = times[row["kind"]] or target_s
        work[row["queue"]] = work.get(row["queue"], 0.0) + row["n"] * min(each, target_s)
    wanted = {}
    for queue in set(settings.JOB_QUEUES) | set(work) | set(running):
        slots = running.get(queue, 0) + math.ceil(work.get(queue, 0.0) / target_s - 1e-9)
        wanted[queue] = math.ceil(slots / slots_of(queue)[1]) if slots else 0
    return wanted
