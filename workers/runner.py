"""Runs one attempt of one job on a worker: claim the start, run the kind's code, report."""

from __future__ import annotations

import json
import logging
import time
import traceback

import redis
from celery.exceptions import SoftTimeLimitExceeded

from workers import data, protocol, wire
from workers.context import Cancelled, JobContext
from workers.events import EventSink
from workers.kinds import get_kind

log = logging.getLogger(__name__)

# Atomically: forget the dispatch marker, refuse a cancelled job, an attempt the portal no
# longer gives out, or a second copy of the same attempt, and put the "started" event on the
# stream.
_CLAIM_START = """
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[3], KEYS[5]) > 0 then return -1 end
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'EX', ARGV[4]) then return 0 end
redis.call('XADD', KEYS[4], '*', 'v', ARGV[5], 'b', ARGV[3])
return 1
"""
START_KEY_TTL_S = 7 * 24 * 3600
FINISH_RETRY_S = 60.0


def claim_start(client: redis.Redis, spec: protocol.AttemptSpec, node: str, worker: str) -> int:
    event = {"type": protocol.STARTED, "job": spec.job, "attempt": spec.attempt,
             "token": spec.token, "node": node, "worker": worker, "ts": time.time(),
             **ranked(spec)}
    if wire.checking():
        wire.check_stream(event)
    keys = [protocol.start_key(spec.job, spec.attempt, spec.rank), protocol.DISPATCHED,
            protocol.cancel_key(spec.job), protocol.EVENTS_STREAM,
            protocol.stop_key(spec.job, spec.attempt)]
    args = [protocol.dispatch_member(spec.job, spec.attempt, spec.rank), node,
            json.dumps([event]),
            START_KEY_TTL_S, wire.STREAM_VERSION]
    return int(client.eval(_CLAIM_START, len(keys), *keys, *args))


def ranked(spec: protocol.AttemptSpec) -> dict:
    """The rank field of a gang rank's events (none for a job of one rank)."""
    return {} if spec.rank is None else {"rank": spec.rank}


def finished_event(spec: protocol.AttemptSpec, outcome: str, *, result=None, error: str = ""):
    return {"type": protocol.FINISHED, "job": spec.job, "attempt": spec.attempt,
            "token": spec.token, **ranked(spec),
            "outcome": outcome, "result": result, "error": error[:5000]}


def run(spec: protocol.AttemptSpec, *, node: str, worker: str, sink: EventSink,
        client: redis.Redis) -> str:
    claimed = claim_start(client, spec, node, worker)
    if claimed != 1:
        log.info("attempt %s/%s not started (%s)", spec.job, spec.attempt,
                 "cancelled or superseded" if claimed < 0 else "already started elsewhere")
        return "skipped"
    ctx = JobContext(spec, sink, client, node=node, worker=worker)
    outcome, result, error = "succeeded", None, ""
    try:
        kind = get_kind(spec.kind)
        if kind is None:
            raise LookupError(f"job kind {spec.kind!r} is not installed on node {node}")
        if kind.unavailable:
            raise LookupError(f"node {node} does not offer {spec.kind}: {kind.unavailable}")
        with data.team_space(data.space_of(spec.team, spec.grants)):
            result = kind.run(ctx, kind.params.model_validate(spec.params))
        json.dumps(result)
    except Cancelled:
        outcome = "cancelled"
        ctx.log("cancelled", level="warning")
    except SoftTimeLimitExceeded:
        outcome, error = "failed", f"timed out after {spec.timeout_s} s"
        ctx.log(error, level="error")
    except Exception as exc:  # the job's own failure, reported rather than raised
        outcome, error = "failed", f"{type(exc).__name__}: {exc}"
        ctx.log(traceback.format_exc(), level="error")
    if outcome != "succeeded":
        result = None
    sink.emit(finished_event(spec, outcome, result=result, error=error))
    sink.flush(retry_for=FINISH_RETRY_S)
    return outcome
