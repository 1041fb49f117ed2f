"""Sends attempts to the workers through Celery, only after the transaction commits."""

from __future__ import annotations

import json
import logging
import time

from django.db import transaction

from workers import protocol
from workers.celery import app

log = logging.getLogger(__name__)
# The hard limit leaves the soft one (which the job sees as "timed out") time to be reported.
HARD_LIMIT_MARGIN_S = 15
PART_SPEC_TTL_S = 7 * 24 * 3600


def attempt_spec(job, rank: int | None = None) -> protocol.AttemptSpec:
    from spaces.selectors import team_for_dispatch  # spaces reads jobs' teams

    team, grants = team_for_dispatch(job.team_id)
    return protocol.AttemptSpec(job=job.pk, attempt=job.attempt, token=job.token, kind=job.kind,
                                params=job.params, timeout_s=job.timeout_s,
                                parent=job.parent_id, partition=job.partition,
                                team=team, grants=grants, rank=rank,
                                world_size=job.nodes * job.slots_per_node)


def sends_of(jobs, *, ranks: dict[int, set[int]] | None = None
             ) -> list[tuple[protocol.AttemptSpec, str]]:
    """Each job's current attempt and the queue it goes to: one message for a plain job; for a
    gang, one per rank (or only the ranks `ranks` names for it), to the queue of the node it
    was placed on."""
    from jobs.models import AttemptRank

    gangs = [job for job in jobs if job.nodes * job.slots_per_node > 1]
    placed: dict[tuple[int, int], list[tuple[int, str]]] = {}
    if gangs:
        wanted = {(job.pk, job.attempt) for job in gangs}
        for job_id, attempt, rank, node in AttemptRank.objects.filter(
                job_id__in=[job.pk for job in gangs]).values_list("job_id", "attempt", "rank",
                                                                   "node"):
            if (job_id, attempt) in wanted:
                placed.setdefault((job_id, attempt), []).append((rank, node))
    sends = []
    for job in jobs:
        if job.nodes * job.slots_per_node > 1:
            only = (ranks or {}).get(job.pk)
            sends += [(attempt_spec(job, rank), protocol.node_queue(node))
                      for rank, node in sorted(placed.get((job.pk, job.attempt), []))
                      if only is None or rank in only]
        else:
            sends.append((attempt_spec(job), route(job)))
    return sends


def route(job) -> str:
    """The queue an attempt is sent to: its pool's, or for a job that needs node labels, the
    queue that only nodes with those labels take from."""
    return protocol.label_queue(job.queue, job.labels)


def task_id(job_id: int, attempt: int, token: str, rank: int | None = None) -> str:
    """The Celery task id of an attempt's message: found again in the broker by it."""
    return f"{job_id}-{attempt}-{token[:8]}" + (f"-r{rank}" if rank else "")


def dispatch_on_commit(jobs) -> None:
    """After the current transaction commits, send each job's current attempt."""
    sends = sends_of(jobs)
    transaction.on_commit(lambda: send(sends))


def send_again(jobs, *, ranks: dict[int, set[int]] | None = None) -> int:
    """Send these jobs' current attempts now (their messages were lost; of a gang, the ranks
    `ranks` names for it, else all)."""
    return send(sends_of(jobs, ranks=ranks))


def send(sends: list[tuple[protocol.AttemptSpec, str]]) -> int:
    """Mark then send each attempt; returns how many went out. One that fails stays queued in
    the database without a marker, and the reconciler sends it again."""
    if not sends:
        return 0
    sent = 0
    try:
        client = protocol.redis_client()
        now = time.time()
        pipe = client.pipeline(transaction=False)
        pipe.zadd(protocol.DISPATCHED,
                  {protocol.dispatch_member(spec.job, spec.attempt, spec.rank): now
                   for spec, _ in sends})
        for spec, _ in sends:
            if spec.parent is not None:  # a partition: its waiting parent may run it itself
                key = protocol.part_specs_key(spec.parent)
                pipe.hset(key, str(spec.partition), json.dumps(spec.to_message()))
                pipe.expire(key, PART_SPEC_TTL_S)
        pipe.execute()
        # One pipelined round trip to Redis for the whole list, not one (or two) per message.
        with app.producer_or_acquire() as producer, producer.batch():
            for spec, queue in sends:
                app.send_task(
                    protocol.TASK_NAME,
                    args=[spec.to_message()],
                    # Named here, so Celery need not repr() the parameters of every message.
                    argsrepr=f"job {spec.job} attempt {spec.attempt}"
                    + (f" rank {spec.rank}" if spec.rank is not None else ""),
                    kwargsrepr="{}",
                    queue=queue,
                    task_id=task_id(spec.job, spec.attempt, spec.token, spec.rank),
                    soft_time_limit=spec.timeout_s,
                    time_limit=(spec.timeout_s + HARD_LIMIT_MARGIN_S) if spec.timeout_s else None,
                    producer=producer,
                )
                sent += 1
    except Exception as exc:  # broker away: the reconciler retries from the database
        log.warning("dispatch of %d attempts failed after %d: %s", len(sends), sent, exc)
    return sent
