"""The job lifecycle: every move of a job and of its attempts, and everything that follows it.

Each move is one function here, a guarded claim (a conditional UPDATE whose row count says
whether it won), and in that same function what must follow it: the attempt's row, the
websocket events (sent after the commit), the jobs that wait for it, an admission pass, its
partitions, the cancel or stop signal to the workers, the audit trail and the cluster's feed
of events (audit.feed). Services, admission, the
ingester, the reconciler, fan-out and dependencies ask this module; nothing else writes a job's
or an attempt's state (tests/test_lifecycle.py checks it).

    pending --admit--> queued --start--> running --succeed--> succeeded
       |  ^              ^  |               |  \\--fail-------> failed
       |  |              |  |               |   \\--time out---> failed
       |  |              +--lose/requeue----+    \\--cancel----> cancelled
       |  +--a gang's rank lost or failed: back to admission, whole-+
       +--dependency failed / cancel -----------------------> cancelled
       ^                                    |
       +--------------preempt---------------+  (back in line as a new attempt)

Every attempt that ran leaves a usage row when it ends (jobs.usage.record_ended), in the
same transaction as the move that ended it.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
from collections import defaultdict
from datetime import timedelta

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from audit import feed
from audit.log import actor_or_none, record
from common.errors import DomainError
from jobs import usage
from jobs.broadcast import Outbox
from jobs.dispatch import dispatch_on_commit, send_again
from jobs.models import TERMINAL, Attempt, AttemptRank, AttemptState, Job, JobState
from workers import protocol
from workers.config import LEASE_S

log = logging.getLogger(__name__)
S, A = JobState, AttemptState
JOB_MOVES: dict[str, frozenset[str]] = {
    S.PENDING: frozenset({S.QUEUED, S.CANCELLED, S.FAILED}),
    # A gang goes back to pending (to be placed again, whole) when one of its ranks is lost.
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED, S.FAILED, S.PENDING}),
    # Back to queued when an attempt is lost (or a partition failed) and attempts remain;
    # back to pending when preempted, or a gang's rank was lost (admission decides again).
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.QUEUED, S.PENDING}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}
ATTEMPT_MOVES: dict[str, frozenset[str]] = {
    # A finish whose "started" was lost with a restarted Redis ends a queued attempt directly.
    A.QUEUED: frozenset({A.RUNNING, A.SUCCEEDED, A.FAILED, A.CANCELLED, A.LOST}),
    A.RUNNING: frozenset({A.SUCCEEDED, A.FAILED, A.CANCELLED, A.LOST}),
    A.SUCCEEDED: frozenset(),
    A.FAILED: frozenset(),
    A.CANCELLED: frozenset(),
    A.LOST: frozenset(),
}
# Kept for the names the rest of the code has always used.
ALLOWED = JOB_MOVES
WAITING_FOR_ADMISSION = "waiting for admission"


class TransitionRefused(DomainError):
    """The job is not in a state from which the asked move is allowed."""

    status = 409


def new_token() -> str:
    return secrets.token_hex(16)


def allowed(source: str, target: str, *, table=JOB_MOVES) -> bool:
    return target in table.get(source, frozenset())


def sources(target: str, *, table=JOB_MOVES) -> frozenset[str]:
    return frozenset(state for state, targets in table.items() if target in targets)


# --- the guarded claims -------------------------------------------------------------------

def claim(job_id: int, target: str, *, source=None, guard: dict | None = None,
          **fields) -> bool:
    """Move a job to `target` if it is in one of the allowed source states (narrowed by
    `source`) and matches `guard`; set `fields` in the same UPDATE. True if this call won."""
    states = sources(target) if source is None else sources(target) & frozenset(source)
    if not states:
        raise ValueError(f"no state may move to {target!r} from {source!r}")
    return bool(Job.objects.filter(pk=job_id, state__in=states, **(guard or {}))
                .update(state=target, **fields))


def claim_attempt(job_id: int, number: int, target: str, **fields) -> bool:
    """Move one attempt to `target` along ATTEMPT_MOVES; True if it moved."""
    states = sources(target, table=ATTEMPT_MOVES)
    if not states:
        raise ValueError(f"no attempt state may move to {target!r}")
    return bool(Attempt.objects.filter(job_id=job_id, number=number, state__in=states)
                .update(state=target, **fields))


def claim_many(rows: dict[int, dict], *, path: list[str], token: dict[int, str]) -> set[int]:
    """Move many jobs along `path` (e.g. queued -> running -> succeeded, each step allowed) in
    guarded UPDATEs, setting each row's own fields (`rows[job_id]`). Only rows still in the
    path's first state and holding their token move; returns the ids that moved."""
    for source, target in itertools.pairwise(path):
        if not allowed(source, target):
            raise ValueError(f"{source!r} may not move to {target!r}")
    moved: set[int] = set()
    ids = list(rows)
    for i in range(0, len(ids), CHUNK):
        chunk = {job_id: {**rows[job_id], "state": path[-1]} for job_id in ids[i:i + CHUNK]}
        moved |= update_rows(Job, chunk, where={"state": path[0]},
                             match={"token": {job_id: token[job_id] for job_id in chunk}})
    return moved


CHUNK = 200


def write_nodes(nodes, fields: list[str]) -> None:
    """Nodes' heartbeat fields, one UPDATE per CHUNK of nodes (no job moves here): Django's
    bulk_update builds its CASE expressions at ~3 ms a node, which with 200 nodes at 1 Hz
    was most of the ingester's time."""
    nodes = list(nodes)
    for i in range(0, len(nodes), CHUNK):
        update_rows(type(nodes[i]), {node.pk: {name: getattr(node, name) for name in fields}
                                     for node in nodes[i:i + CHUNK]})


def update_rows(model, rows: dict, *, key: str = "id", where: dict | None = None,
                match: dict[str, dict] | None = None) -> set:
    """One UPDATE that gives each row its own values: SET f = CASE key WHEN k THEN v ... END,
    for the rows whose key is listed, that match `where` (same value for all) and `match`
    (each row its own value). Returns the keys of the rows it changed. Django's Case/When
    costs a quarter of a millisecond per value to build; this costs next to nothing. On
    PostgreSQL the same statement takes its values as arrays (_update_rows_unnest)."""
    if not rows:
        return set()
    if connection.vendor == "postgresql":
        return _update_rows_unnest(model, rows, key=key, where=where, match=match)
    quote = connection.ops.quote_name
    meta = model._meta
    key_field = meta.get_field(key)
    keys = {row_key: key_field.get_db_prep_value(row_key, connection) for row_key in rows}
    sets, params = [], []
    names = sorted({name for fields in rows.values() for name in fields})
    for name in names:
        field = meta.get_field(name)
        when = "WHEN %s THEN %s"
        whens = []
        for row_key, fields in rows.items():
            if name in fields:
                whens.append(when)
                params += [keys[row_key], field.get_db_prep_value(fields[name], connection)]
        column = quote(field.column)
        sets.append(f"{column} = CASE {quote(key_field.column)} {' '.join(whens)} "
                    f"ELSE {column} END")
    conditions = [f"{quote(key_field.column)} IN ({', '.join(['%s'] * len(rows))})"]
    params += list(keys.values())
    for name, value in (where or {}).items():
        field = meta.get_field(name)
        if isinstance(value, list | tuple | set | frozenset):
            conditions.append(f"{quote(field.column)} IN ({', '.join(['%s'] * len(value))})")
            params += [field.get_db_prep_value(item, connection) for item in value]
        else:
            conditions.append(f"{quote(field.column)} = %s")
            params.append(field.get_db_prep_value(value, connection))
    for name, values in (match or {}).items():
        field = meta.get_field(name)
        whens = []
        for row_key, value in values.items():
            whens.append("WHEN %s THEN %s")
            key_value = keys[row_key] if row_key in keys else \
                key_field.get_db_prep_value(row_key, connection)
            params += [key_value, field.get_db_prep_value(value, connection)]
        conditions.append(f"{quote(field.column)} = CASE {quote(key_field.column)} "
                          f"{' '.join(whens)} END")
    sql = (f"UPDATE {quote(meta.db_table)} SET {', '.join(sets)} "
           f"WHERE {' AND '.join(conditions)} RETURNING {quote(key_field.column)}")
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {row[0] for row in cursor.fetchall()}


def _update_rows_unnest(model, rows: dict, *, key: str, where: dict | None,
                        match: dict[str, dict] | None) -> set:
    """update_rows on PostgreSQL: the rows' values go as one array per column, joined back by
    unnest(), so the statement's text depends on which columns it sets, not on how many rows
    it has. The driver then parses it once per shape instead of once per call (a CASE with a
    few hundred parameters took about a millisecond to parse), and the server gets a handful
    of parameters instead of two per value. A column that not every row sets keeps its value
    in the rows that leave it out (a flag array says which)."""
    quote = connection.ops.quote_name
    meta = model._meta
    key_field = meta.get_field(key)
    keys = list(rows)
    names = sorted({name for fields in rows.values() for name in fields})
    columns = [("k", key_field, [key_field.get_db_prep_value(k, connection) for k in keys])]
    sets = []
    for i, name in enumerate(names):
        field = meta.get_field(name)
        column = quote(field.column)
        columns.append((f"v{i}", field, [
            field.get_db_prep_value(rows[k][name], connection) if name in rows[k] else None
            for k in keys]))
        if all(name in rows[k] for k in keys):
            sets.append(f"{column} = v.v{i}")
        else:
            columns.append((f"h{i}", None, [name in rows[k] for k in keys]))
            sets.append(f"{column} = CASE WHEN v.h{i} THEN v.v{i} ELSE t.{column} END")
    conditions = [f"t.{quote(key_field.column)} = v.k"]
    params: list = []
    for i, (name, values) in enumerate(sorted((match or {}).items())):
        field = meta.get_field(name)
        columns.append((f"m{i}", field, [
            field.get_db_prep_value(values[k], connection) if k in values else None
            for k in keys]))
        conditions.append(f"t.{quote(field.column)} = v.m{i}")
    for name, value in (where or {}).items():
        field = meta.get_field(name)
        if isinstance(value, list | tuple | set | frozenset):
            conditions.append(f"t.{quote(field.column)} = ANY(CAST(%s AS "
                              f"{_unbounded(field.db_type(connection))}[]))")
            params.append([field.get_db_prep_value(item, connection) for item in value])
        else:
            conditions.append(f"t.{quote(field.column)} = %s")
            params.append(field.get_db_prep_value(value, connection))
    arrays = ", ".join(f"CAST(%s AS {_array_of(alias, field)}[])" for alias, field, _ in columns)
    sql = (f"UPDATE {quote(meta.db_table)} AS t SET {', '.join(sets)} "
           f"FROM unnest({arrays}) AS v({', '.join(alias for alias, _, _ in columns)}) "
           f"WHERE {' AND '.join(conditions)} RETURNING t.{quote(key_field.column)}")
    with connection.cursor() as cursor:
        cursor.execute(sql, [values for _, _, values in columns] + params)
        return {row[0] for row in cursor.fetchall()}


def _array_of(alias: str, field) -> str:
    """The element type of a column's array: a flag is boolean; a key or a value to match is
    compared whole (a varchar(32) cast would cut a longer token down to one that matches); a
    value to set keeps its column's type, cut to its length as an UPDATE's CAST always did."""
    if field is None:
        return "boolean"
    kind = field.db_type(connection)
    return kind if alias.startswith("v") else _unbounded(kind)


def _unbounded(kind: str) -> str:
    """varchar(32) -> varchar: the same type without its length."""
    return re.sub(r"\(\d+\)$", "", kind)


# --- what follows a move ------------------------------------------------------------------

STATE_EVENT_FIELDS = ("state", "attempt", "node", "message", "progress", "error", "kind",
                      "name", "result")


def state_event(job: Job | dict) -> dict:
    """The job.state message, from a Job or from a row of its values (the ingester's)."""
    get = job.get if isinstance(job, dict) else lambda name: getattr(job, name)
    return {"type": "job.state", **{name: get(name) for name in STATE_EVENT_FIELDS}}


def _publish_state(job: Job, *, notice: str = "") -> None:
    outbox = Outbox()
    outbox.job(job.pk, job.team_id, state_event(job), parent=job.parent_id)
    if notice:
        outbox.job(job.pk, job.team_id, {"type": "job.notice", "text": notice})
    outbox.publish_on_commit()


def job_label(job: Job | dict) -> str:
    get = job.get if isinstance(job, dict) else lambda name: getattr(job, name)
    return f"job {get('id')} ({get('name') or get('kind')})"


def ended_entry(job: Job | dict, *, by=None):
    """The feed's line for a job that ended; None for a partition (its parent's end tells)."""
    get = job.get if isinstance(job, dict) else lambda name: getattr(job, name)
    if get("parent_id"):
        return None
    state, label, message = get("state"), job_label(job), get("message") or ""
    if state == S.SUCCEEDED:
        text = f"{label} succeeded"
    elif state == S.FAILED:
        first = (get("error") or "").strip().splitlines()
        text = f"{label} failed: {first[0]}" if first else f"{label} failed"
    else:
        # "cancelled before it started", "cancelled: job 4 failed", "cancelled (node w1 lost)"
        said = message if message.startswith("cancelled") else "cancelled"
        if by is not None:
            said = said.replace("cancelled", f"cancelled by {by.get_username()}", 1)
        text = f"{label} {said}"
    return feed.job_entry(f"job.{state}", text, job_id=get("id"), team_id=get("team_id"),
                          node=get("node") or "")


def moved_entry(job: Job, kind: str, *, node: str = ""):
    """The feed's line for a job sent back (lost, requeued, preempted): its message says why."""
    return feed.job_entry(kind, f"{job_label(job)}: {job.message}", job_id=job.pk,
                          team_id=job.team_id, node=node)


def to_feed(*entries, outbox: Outbox | None = None) -> None:
    """Feed lines written in this transaction, and heard live once it commits (with what the
    caller's `outbox` publishes, if it has one)."""
    own = outbox is None
    outbox = Outbox() if own else outbox
    feed.record(entries, outbox)
    if own:
        outbox.publish_on_commit()


def _ended(job_ids: list[int], *, parents: list[int] = (), admit: bool = True) -> None:
    """What follows jobs ending, once the transaction commits: the jobs that wait for them move
    on, their quota and slots go to the next in line (unless `admit` is False: the caller runs
    the pass itself), and a parent's partitions end with it."""
    from jobs import admission, dependencies

    if not job_ids:
        return
    ended = list(job_ids)
    transaction.on_commit(lambda: dependencies.after_ended(ended))
    if admit:
        admission.admit_on_commit()
    if parents:
        stopped = list(parents)
        transaction.on_commit(lambda: cancel_children(*stopped))


def signal_cancel(*job_ids: int) -> None:
    """Raise the cancel flag that workers poll; the reconciler raises it again after a Redis
    restart, since the database holds the request."""
    if not job_ids:
        return
    try:
        pipe = protocol.redis_client().pipeline(transaction=False)
        for job_id in job_ids:
            pipe.set(protocol.cancel_key(job_id), 1, ex=protocol.FLAG_TTL_S)
        pipe.execute()
    except Exception as exc:  # the reconciler raises it again from the database
        log.warning("cancel flag for jobs %s not set: %s", job_ids, exc)


def signal_stop(*attempts: tuple[int, int]) -> None:
    """Tell whichever node runs these (job, attempt) pairs that the portal no longer gives them
    that attempt: it stops them and frees their slots. Raised again from every heartbeat that
    still lists one, so a Redis restart forgets nothing for long."""
    if not attempts:
        return
    try:
        pipe = protocol.redis_client().pipeline(transaction=False)
        for job_id, number in attempts:
            pipe.set(protocol.stop_key(job_id, number), 1, ex=protocol.FLAG_TTL_S)
        pipe.execute()
    except Exception as exc:  # the next heartbeat that lists them raises it again
        log.warning("stop flag for attempts %s not set: %s", attempts, exc)


def stop_on_commit(*attempts: tuple[int, int]) -> None:
    pairs = list(attempts)
    if pairs:
        transaction.on_commit(lambda: signal_stop(*pairs))


# --- moves of one job ---------------------------------------------------------------------

def create(jobs: list[Job], now, *, one_by_one: bool = False) -> list[Job]:
    """New jobs, pending, each with its first attempt; their lists hear of them on commit."""
    for job in jobs:
        job.state, job.attempt = S.PENDING, 1
        job.token = job.token or new_token()
    if one_by_one:  # a save, so that a unique key (Idempotency-Key) raises at once
        for job in jobs:
            job.save()
    else:
        jobs = Job.objects.bulk_create(jobs)
    Attempt.objects.bulk_create([Attempt(job=job, number=1, token=job.token, created_at=now)
                                 for job in jobs])
    outbox = Outbox()
    for job in jobs:
        outbox.job(job.pk, job.team_id, state_event(job), lists=True, parent=job.parent_id)
    outbox.publish_on_commit()
    return jobs


def admit(jobs: list[Job], now, *, gangs: dict[int, list[str]] | None = None) -> list[Job]:
    """Pending -> queued for the jobs chosen (one cancelled meanwhile stays cancelled and is
    not sent); each is dispatched once the transaction commits. A gang's ranks are placed on
    the nodes `gangs` names for it, all in the same transaction."""
    if not jobs:
        return []
    moved = update_rows(Job, {job.pk: {"state": S.QUEUED, "dispatched_at": now, "message": ""}
                              for job in jobs}, where={"state": S.PENDING})
    admitted = [job for job in jobs if job.pk in moved]
    for job in admitted:  # as the row now is
        job.state, job.dispatched_at, job.message = S.QUEUED, now, ""
    place_ranks([job for job in admitted if job.is_gang], gangs or {}, now)
    dispatch_on_commit(admitted)
    outbox = Outbox()
    for job in admitted:
        outbox.job(job.pk, job.team_id, state_event(job), parent=job.parent_id)
    outbox.publish_on_commit()
    return admitted


def place_ranks(jobs: list[Job], gangs: dict[int, list[str]], now) -> None:
    """The rank rows of gangs just admitted: rank r on the (r // slots_per_node)th of the nodes
    placed for it; the job's node names them all."""
    ranks = []
    for job in jobs:
        nodes = gangs[job.pk]
        ranks += [AttemptRank(job=job, attempt=job.attempt, rank=rank,
                              node=nodes[rank // job.slots_per_node])
                  for rank in range(job.world_size)]
        job.node = "+".join(nodes)[:100]
    AttemptRank.objects.bulk_create(ranks)
    if jobs:
        update_rows(Job, {job.pk: {"node": job.node} for job in jobs})


def end_ranks(job_id: int, number: int, now, *, why: str, lost: int | None = None) -> None:
    """The ranks of a gang's attempt that had not ended end with it: stopped (lost, for the
    one whose node was lost). Their nodes are told to stop them by stop_on_commit."""
    left = AttemptRank.objects.filter(job_id=job_id, attempt=number,
                                      state__in=[A.QUEUED, A.RUNNING])
    if lost is not None:
        left.filter(rank=lost).update(state=A.LOST, finished_at=now, error=why[:5000],
                                      lease_expires_at=None)
    left.update(state=A.CANCELLED, finished_at=now, lease_expires_at=None,
                error=f"stopped with its gang: {why}"[:5000])


def unblock(job: Job) -> bool:
    """Every job it waited for succeeded: it waits for admission now."""
    won = bool(Job.objects.filter(pk=job.pk, state=S.PENDING, blocked=True)
               .update(blocked=False, message=WAITING_FOR_ADMISSION))
    if won:
        job.blocked, job.message = False, WAITING_FOR_ADMISSION
        _publish_state(job)
    return won


def skip(job: Job, reason: str, now) -> bool:
    """A job it waited for failed or was cancelled: it is cancelled, saying which."""
    won = claim(job.pk, S.CANCELLED, source={S.PENDING}, finished_at=now, message=reason)
    if won:
        claim_attempt(job.pk, job.attempt, A.CANCELLED, finished_at=now)
        job.state, job.message, job.finished_at = S.CANCELLED, reason, now
        _publish_state(job)
        to_feed(ended_entry(job))
        transaction.on_commit(lambda: _dependants_of([job.pk]))
    return won


def _dependants_of(job_ids) -> None:
    from jobs import dependencies

    dependencies.after_ended(job_ids)


def cancel(job: Job, *, actor=None, via: str = "api") -> Job:
    """Cancel a job: at once if it has not started, else by asking its running attempt to stop
    (the request is durable, in the database, and reaches the worker through Redis)."""
    now = timezone.now()
    with transaction.atomic():
        ended = claim(job.pk, S.CANCELLED, source={S.PENDING, S.QUEUED}, finished_at=now,
                      cancel_requested_at=now, message="cancelled before it started",
                      lease_expires_at=None)
        if ended:
            claim_attempt(job.pk, job.attempt, A.CANCELLED, finished_at=now)
            end_ranks(job.pk, job.attempt, now, why="cancelled before it started")
        else:
            asked = bool(Job.objects.filter(pk=job.pk, state=S.RUNNING,
                                            cancel_requested_at__isnull=True)
                         .update(cancel_requested_at=now, message="cancelling…"))
            if not asked and not Job.objects.filter(pk=job.pk, state=S.RUNNING).exists():
                state = (Job.objects.filter(pk=job.pk).values_list("state", flat=True).first()
                         or "gone")
                raise TransitionRefused(f"job {job.pk} is already {state}")
        if actor is not None:
            record(actor, "job.cancel", job, via=via, at_once=ended)
        transaction.on_commit(lambda: signal_cancel(job.pk))
        if ended:
            _ended([job.pk])
        # Each partition in a transaction of its own, after this one: the ingester locks
        # partitions before their parent, so taking them under the parent's lock could deadlock.
        transaction.on_commit(lambda: cancel_children(job.pk))
        job.refresh_from_db()
        _publish_state(job)
        if ended:
            to_feed(ended_entry(job, by=actor_or_none(actor)))
    return job


def cancel_children(*parent_ids: int) -> None:
    """A fan-out's partitions that have not ended are cancelled with their parent."""
    if not parent_ids:
        return
    for child in Job.objects.filter(parent_id__in=parent_ids).exclude(state__in=TERMINAL):
        try:
            cancel(child)
        except TransitionRefused:
            pass  # it ended meanwhile


def orphans() -> list[int]:
    """Parents cancelled, or ended without success, whose partitions still go on (the process
    that ended them died before it cancelled them): the reconciler cancels those."""
    return list(Job.objects.filter(children__state__in=[S.PENDING, S.QUEUED, S.RUNNING],
                                   children__cancel_requested_at__isnull=True)
                .filter(state__in=[S.FAILED, S.CANCELLED]).values_list("pk", flat=True)
                .distinct()[:100])


def lose(job: Job, now) -> bool:
    """The running attempt's lease expired (its node went silent). The job goes back to the
    queue as a new attempt while attempts remain, else it fails saying the node was lost; a
    cancelled one ends cancelled, one past its time limit fails as timed out. Either way the
    lost attempt is fenced off (the job's token changes, so nothing it says later lands) and
    its node, should it come back, is told to stop it."""
    if job.is_gang:  # every rank's node renews the job's lease: all of them went silent
        return lose_gang(job, now, guard={"lease_expires_at__lt": now})
    number, lost_node = job.attempt, job.node
    guard = {"attempt": number, "token": job.token, "lease_expires_at__lt": now}
    lost = f"node {job.node or 'its node'} lost"
    timed_out = job.started_at and job.started_at + timedelta(seconds=job.timeout_s) < now
    token = new_token()
    ended = {"finished_at": now, "lease_expires_at": None, "token": token}
    with transaction.atomic():
        if job.cancel_requested_at:
            won = claim(job.pk, S.CANCELLED, guard=guard, message=f"cancelled ({lost})", **ended)
            attempt_state = A.CANCELLED
        elif timed_out:
            won = claim(job.pk, S.FAILED, guard=guard, message="failed",
                        error=f"timed out after {job.timeout_s} s ({lost})", **ended)
            attempt_state = A.FAILED
        elif job.attempt < job.max_attempts:
            message = (f"{lost}; moved back to the queue as attempt {number + 1} "
                       f"of {job.max_attempts}")
            won = claim(job.pk, S.QUEUED, guard=guard, attempt=number + 1, token=token,
                        node="", lease_expires_at=None, dispatched_at=now, progress=None,
                        message=message)
            if won:
                Attempt.objects.create(job=job, number=number + 1, token=token, created_at=now)
            attempt_state = A.LOST
        else:
            won = claim(job.pk, S.FAILED, guard=guard, message="failed",
                        error=f"{lost} during attempt {number} of {job.max_attempts}", **ended)
            attempt_state = A.LOST
        if not won:
            return False
        claim_attempt(job.pk, number, attempt_state, finished_at=now, error=lost)
        usage.record_ended([(job.pk, guard["token"])])
        stop_on_commit((job.pk, number))
        job.refresh_from_db()
        log.warning("job %s: %s", job.pk, job.message if job.state == S.QUEUED else job.error)
        if job.state == S.QUEUED:
            dispatch_on_commit([job])
            to_feed(moved_entry(job, "job.requeued", node=lost_node))
        else:
            _ended([job.pk], parents=[job.pk])
            to_feed(ended_entry(job))
        what = f"failed: {job.error}" if job.state == S.FAILED else job.message
        _publish_state(job, notice=f"job {job.pk}: {what}")
    return True


def lose_gang(job: Job, now, *, rank: int | None = None, node: str = "",
              guard: dict | None = None) -> bool:
    """A rank of a gang's attempt is lost (its node went silent or offline, before or after it
    started): the whole gang stops (every rank's node is told to) and the job goes back to
    admission as a new attempt, to be placed again on a fresh gang, while attempts remain;
    else it fails. A cancelled one ends cancelled."""
    from jobs import admission

    number = job.attempt
    guard = {"attempt": number, "token": job.token, **(guard or {})}
    lost = (f"rank {rank} lost with node {node}" if rank is not None
            else f"nodes {job.node or '?'} lost")
    ended = {"finished_at": now, "lease_expires_at": None, "token": new_token()}
    live = {S.QUEUED, S.RUNNING}
    with transaction.atomic():
        if job.cancel_requested_at:
            won = claim(job.pk, S.CANCELLED, source=live, guard=guard,
                        message=f"cancelled ({lost})", **ended)
            attempt_state = A.CANCELLED
        elif job.attempt < job.max_attempts:
            again = gang_requeue(job, now, lost)
            won = claim(job.pk, S.PENDING, source=live, guard=guard, **again)
            if won:
                Attempt.objects.create(job=job, number=number + 1, token=again["token"],
                                       created_at=now)
            attempt_state = A.LOST
        else:
            won = claim(job.pk, S.FAILED, source=live, guard=guard, message="failed",
                        error=f"{lost} during attempt {number} of {job.max_attempts}", **ended)
            attempt_state = A.LOST
        if not won:
            return False
        claim_attempt(job.pk, number, attempt_state, finished_at=now, error=lost)
        end_ranks(job.pk, number, now, why=lost, lost=rank)
        stop_on_commit((job.pk, number))
        job.refresh_from_db()
        log.warning("job %s: %s", job.pk, job.message if job.state == S.PENDING else job.error)
        if job.state == S.PENDING:
            admission.admit_on_commit()
            to_feed(moved_entry(job, "job.requeued", node=node))
        else:
            _ended([job.pk])
            to_feed(ended_entry(job))
        what = f"failed: {job.error}" if job.state == S.FAILED else job.message
        _publish_state(job, notice=f"job {job.pk}: {what}")
    return True


def gang_requeue(row, now, why: str) -> dict:
    """A gang's fields as it goes back to admission as its next attempt (with `why`)."""
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
    number = get("attempt") + 1
    return {"attempt": number, "token": new_token(), "node": "", "lease_expires_at": None,
            "dispatched_at": now, "progress": None,
            "message": (f"{why}; the whole gang back to admission as attempt {number} of "
                        f"{get('max_attempts')}")[:500]}


def lose_lost_ranks(now) -> int:
    """Gangs with a rank whose node is lost (its lease expired, or, not started yet, its node
    went offline): each goes back to admission whole (lose_gang)."""
    from jobs import gangs

    lost = gangs.lost_ranks(now)
    for job, rank, node in lost:
        lose_gang(job, now, rank=rank, node=node)
    return len(lost)


def preempt(job: Job, reason: str, now) -> bool:
    """Take a running attempt's slot back for a team under its fair share: the job goes back
    to pending as a new attempt that does not count against its max_attempts (each
    preemption adds one to them), its node is told to stop the old one, and the move is
    audited and shown on the job's page and the feed; `reason` ("preempted for ...") ends
    the old attempt. Claimed on the attempt's token, so a job that ended or moved meanwhile
    is left alone."""
    number, old_token = job.attempt, job.token
    token = new_token()
    message = (f"{reason}; back in line as attempt {number + 1} (a preemption does not count "
               "against its attempts)")[:500]
    with transaction.atomic():
        won = claim(job.pk, S.PENDING, source={S.RUNNING},
                    guard={"attempt": number, "token": old_token,
                           "cancel_requested_at__isnull": True},
                    attempt=number + 1, max_attempts=F("max_attempts") + 1, token=token,
                    node="", lease_expires_at=None, dispatched_at=None, progress=None,
                    blocked=False, message=message)
        if not won:
            return False
        claim_attempt(job.pk, number, A.CANCELLED, finished_at=now, error=reason)
        Attempt.objects.create(job=job, number=number + 1, token=token, created_at=now)
        usage.record_ended([(job.pk, old_token)], outcome="preempted")
        record(None, "job.preempt", job, via="system", attempt=number, reason=reason)
        stop_on_commit((job.pk, number))
        job.refresh_from_db()
        log.info("job %s preempted: %s", job.pk, reason)
        to_feed(moved_entry(job, "job.preempted"))
        _publish_state(job, notice=f"job {job.pk}: {message}")
        _admit_next()
    return True


def _admit_next() -> None:
    """A pass once this commits: the slot given back goes to the next in line."""
    from jobs import admission

    admission.admit_on_commit()


def redispatch(job: Job, now) -> bool:
    """Send a queued job's current attempt again (its message was lost), or ranks of a gang's
    that has not ended (some of its ranks may run already); claimed on the attempt and the
    time it was last sent, so two reconcilers send it once."""
    live = [S.QUEUED, S.RUNNING] if job.is_gang else [S.QUEUED]
    won = bool(Job.objects.filter(pk=job.pk, state__in=live, attempt=job.attempt,
                                  dispatched_at=job.dispatched_at).update(dispatched_at=now))
    if won:
        job.dispatched_at = now
    return won


def resend(jobs: list[Job], now, *, ranks: dict[int, set[int]] | None = None) -> int:
    """Jobs whose messages are lost: those this call wins are sent again at once (of a gang
    named in `ranks`, only those ranks' messages)."""
    again = [job for job in jobs if redispatch(job, now)]
    return send_again(again, ranks=ranks)


def add_partitions(parent: dict, kind, parts: dict[int, dict], queue: str, now, *,
                   word: str = "partition") -> list[Job]:
    """A running fan-out's new partitions: child jobs created and admitted at once (they run
    within their parent's place in its team's quota), dispatched after the commit; each named
    after its parent and its index ("flights · part 3", a sweep's "tuning · trial 3")."""
    label = parent["name"] or parent["kind"]
    word = "part" if word == "partition" else word
    # Partitions hold what their parent asked for, on the same kind of node when they run in
    # its queue (a label means nothing in another pool).
    labels = (parent["labels"] or {}) if queue == parent["queue"] else {}
    children = create([
        Job(owner_id=parent["owner_id"], team_id=parent["team_id"], kind=kind.name,
            name=f"{label} · {word} {i}"[:200], labels=labels, cpus=parent["cpus"],
            gpus=parent["gpus"], params=params, queue=queue,
            max_attempts=parent["max_attempts"], timeout_s=parent["timeout_s"],
            created_at=now, parent_id=parent["id"], partition=i, message="")
        for i, params in parts.items()], now)
    return admit(children, now)


# --- the ingester's moves: a batch of events played on locked rows ------------------------

class Plan:
    """What a batch does to one job: simulated in memory on the locked row, then written with
    the other jobs that move the same way (Moves.write)."""

    def __init__(self, row: dict, now):
        self.row = row
        self.now = now
        self.token = row["token"]  # the attempt's, before a retry gives the job a new one
        self.path = [row["state"]]
        self.fields: dict = {}
        self.attempt: dict = {}
        self.events: list[dict] = []  # for its streams, in the order they happened
        self.progress: dict | None = None
        self.requeued = False
        self.outcome: dict | None = None  # a partition's end, for its waiting parent
        # A gang's ranks of this attempt, as their rows are ({rank: {"state", "node",
        # "result"}}, loaded by the ingester), and what this batch changes on them.
        self.number = row["attempt"]
        self.ranks: dict[int, dict] = {}
        self.rank_fields: dict[int, dict] = defaultdict(dict)
        self.rendezvous_at = ""  # rank 0's "address:port", to publish after the commit
        self.gang_ended = ""  # why the rest of the gang is stopped, once a rank ended it

    @property
    def state(self) -> str:
        return self.path[-1]

    def _move(self, target: str, **fields) -> None:
        if not allowed(self.state, target):
            raise TransitionRefused(f"job {self.row['id']}: {self.state} -> {target}")
        self.path.append(target)
        self.fields.update(fields)
        self.row.update(fields, state=target)

    def start(self, *, at, node: str, worker: str) -> bool:
        """The attempt started on a node (a replayed "started" changes nothing)."""
        if self.state != S.QUEUED:
            return False
        self._move(S.RUNNING, started_at=at, node=node, message="",
                   lease_expires_at=self.now + timedelta(seconds=LEASE_S))
        self.attempt.update(state=A.RUNNING, started_at=at, node=node, worker=worker[:200])
        number = self.row["attempt"]
        self.events.append({**state_event(self.row), "started_at": at.isoformat()})
        if number > 1:
            self.events.append({"type": "job.notice", "text": (
                f"job {self.row['id']} moved to {node or 'a node'}, attempt {number} "
                f"of {self.row['max_attempts']}")})
        return True

    # --- a gang's ranks ---

    @property
    def gang(self) -> bool:
        return (self.row.get("nodes") or 1) * (self.row.get("slots_per_node") or 1) > 1

    def start_rank(self, rank: int, *, at, node: str, worker: str) -> None:
        """A rank of a gang started: the job is running from its first rank's start (its node
        names the gang's nodes, as placed)."""
        if self.state not in (S.QUEUED, S.RUNNING) or rank not in self.ranks:
            return
        self.rank_fields[rank].update(state=A.RUNNING, started_at=at,
                                      lease_expires_at=self.now + timedelta(seconds=LEASE_S))
        self.ranks[rank]["state"] = A.RUNNING
        if self.state == S.QUEUED:
            self.start(at=at, node=self.row["node"], worker=worker)

    def rendezvous(self, address: str, port: int) -> None:
        if self.state == S.RUNNING and 0 in self.ranks:
            self.rendezvous_at = f"{address}:{port}"
            self.rank_fields[0]["address"] = self.rendezvous_at[:120]

    def finish_rank(self, rank: int, outcome: str, *, at, result=None, error: str = "") -> None:
        """A rank ended. The gang succeeds once every rank has (with rank 0's result); a rank
        that failed or stopped ends the attempt for all of them: the job goes back to admission
        as a new attempt while attempts remain, else fails (a cancelled one ends cancelled)."""
        if rank not in self.ranks or self.ranks[rank]["state"] not in (A.QUEUED, A.RUNNING):
            return
        if self.state == S.QUEUED:
            self.start_rank(rank, at=at, node="", worker="")
        if self.state != S.RUNNING:
            return
        row = self.row
        self.rank_fields[rank].update(state=outcome, finished_at=at, error=error[:5000],
                                      result=result, lease_expires_at=None)
        self.ranks[rank].update(state=outcome, result=result)
        if outcome == S.SUCCEEDED and not row["cancel_requested_at"]:
            if all(r["state"] == A.SUCCEEDED for r in self.ranks.values()):
                self.finish(S.SUCCEEDED, at=at, result=self.ranks[0].get("result"))
            return
        first = error.splitlines()[0] if error else outcome
        why = f"rank {rank} on {self.ranks[rank]['node']} {outcome}: {first}"[:400]
        self.gang_ended = why
        if row["cancel_requested_at"]:
            self.finish(S.CANCELLED, at=at)
        elif row["attempt"] < row["max_attempts"] and not error.startswith("timed out"):
            self.attempt.update(state=A.FAILED, finished_at=at, error=why)
            self._move(S.PENDING, **gang_requeue(row, self.now, why))
            self.requeued = True
            self.events.append(state_event(row))
        else:
            self.finish(S.FAILED, at=at, error=f"rank {rank}: {error or outcome}")

    def report(self, **fields) -> None:
        """Progress of a running job (the latest of a batch wins)."""
        if self.state != S.RUNNING:
            return
        self.fields.update(fields)
        self.row.update(fields)
        self.progress = {"type": "job.progress", **{name: fields.get(name) for name in (
            "progress", "message", "done", "total", "unit")}}

    def renew(self) -> None:
        if self.state == S.RUNNING:
            self.fields["lease_expires_at"] = self.now + timedelta(seconds=LEASE_S)

    def finish(self, outcome: str, *, at, result=None, error: str = "") -> None:
        """The attempt ended as the worker says; a job whose cancel was asked for never ends
        as succeeded, and a failed partition runs again while attempts remain."""
        if self.state == S.QUEUED:
            # Its "started" was lost with a restarted Redis: it did start, so pass through.
            self._move(S.RUNNING, started_at=at)
        if self.state != S.RUNNING:
            return
        row = self.row
        ended = {"finished_at": at, "lease_expires_at": None}
        self.attempt.update(state=outcome, finished_at=at, error=error)
        if outcome == S.SUCCEEDED and not row["cancel_requested_at"]:
            self._move(S.SUCCEEDED, result=result, progress=1.0, message="",
                       done=row["total"] if row["total"] is not None else row.get("done"),
                       **ended)
        elif outcome == S.FAILED and not row["cancel_requested_at"]:
            if row["parent_id"] and row["attempt"] < row["max_attempts"]:
                self._requeue_partition(error)
                return
            self._move(S.FAILED, error=error, message="failed", **ended)
        else:
            self.attempt["state"] = A.CANCELLED
            self._move(S.CANCELLED, message="cancelled", **ended)
        self.events.append({**state_event(row), "finished_at": at.isoformat()})
        if row["parent_id"]:
            self.outcome = {"state": str(self.state), "result": row.get("result"),
                            "error": error}

    def _requeue_partition(self, error: str) -> None:
        """A partition that failed runs again as a new attempt, on any node: one partition's
        bad luck does not fail the whole fan-out."""
        row = self.row
        number = row["attempt"] + 1
        message = (f"partition {row['partition']} failed; again as attempt {number} of "
                   f"{row['max_attempts']}: {error.splitlines()[0] if error else ''}")[:500]
        self._move(S.QUEUED, attempt=number, token=new_token(), node="",
                   lease_expires_at=None, dispatched_at=self.now, progress=None,
                   message=message)
        self.requeued = True
        self.events.append(state_event(row))

    def publishable(self, *, moved: bool) -> list[dict]:
        """Its updates in the order they happened: its latest progress before its end; state
        and progress only if its row really moved."""
        events = [e for e in self.events if moved or e["type"] in ("job.log", "job.metric",
                                                                    "job.artifact")]
        if self.progress and moved:
            ends = [i for i, e in enumerate(events) if e.get("state") in TERMINAL]
            events.insert(ends[0] if ends else len(events), self.progress)
        return events


def write_plans(plans: dict[int, Plan], now, *, outbox: Outbox | None = None) -> set[int]:
    """Write a batch's plans grouped by how the jobs moved, each group in guarded UPDATEs, then
    what follows: attempts' rows, partitions sent again, dependants, children of parents that
    ended without success; the feed's lines go out with `outbox`. Returns the ids whose rows
    moved as planned. Admitting the successors of the jobs that ended is the caller's
    (Batch.apply, once it wrote the rest)."""
    groups: dict[tuple[str, ...], dict[int, dict]] = defaultdict(dict)
    for job_id, plan in plans.items():
        if plan.fields or len(plan.path) > 1:
            groups[tuple(_moves(plan.path))][job_id] = plan.fields
    tokens = {job_id: plan.token for job_id, plan in plans.items()}
    won: set[int] = set()
    for path, rows in groups.items():
        if len(path) == 1:  # progress only, no move
            won |= update_rows(Job, rows, where={"state": path[0]},
                               match={"token": {j: tokens[j] for j in rows}})
        else:
            won |= claim_many(rows, path=list(path), token=tokens)
    attempts = {plans[job_id].token: plans[job_id].attempt for job_id in won
                if plans[job_id].attempt}
    if attempts:
        update_rows(Attempt, attempts, key="token",
                    where={"state": [A.QUEUED.value, A.RUNNING.value]})
    usage.record_ended([(job_id, plans[job_id].token) for job_id in won
                        if plans[job_id].attempt.get("finished_at")])
    requeued = [job_id for job_id in won if plans[job_id].requeued]
    again: list[Job] = []
    if requeued:
        again = list(Job.objects.filter(pk__in=requeued))
        Attempt.objects.bulk_create([Attempt(job=job, number=job.attempt, token=job.token,
                                             created_at=now) for job in again])
        dispatch_on_commit([job for job in again if job.state == S.QUEUED])
    write_ranks(plans, won, now)
    ended = [job_id for job_id in won if plans[job_id].state in TERMINAL]
    to_feed(*[ended_entry(plans[job_id].row) for job_id in ended],
            *[moved_entry(job, "job.requeued") for job in again], outbox=outbox)
    parents = [job_id for job_id in ended if not plans[job_id].row["parent_id"]
               and plans[job_id].state != S.SUCCEEDED]
    _ended(ended, parents=parents, admit=False)
    return won


def write_ranks(plans: dict[int, Plan], won: set[int], now) -> None:
    """What a batch did to gangs' ranks: their rows; rank 0's rendezvous published once
    recorded; and a gang that ended (or went back to admission) has its other ranks ended and
    their nodes told to stop them."""
    from jobs import admission

    rendezvous: dict[str, str] = {}
    stop: list[tuple[int, int]] = []
    back = False
    for job_id, plan in plans.items():
        for rank, fields in plan.rank_fields.items():
            AttemptRank.objects.filter(job_id=job_id, attempt=plan.number, rank=rank).update(
                **fields)
        if plan.rendezvous_at and plan.state == S.RUNNING:
            rendezvous[protocol.rendezvous_key(job_id, plan.number)] = plan.rendezvous_at
        if plan.gang and job_id in won and (plan.state in TERMINAL or plan.requeued):
            end_ranks(job_id, plan.number, now, why=plan.gang_ended or str(plan.state))
            stop.append((job_id, plan.number))
            back = back or plan.state == S.PENDING
    stop_on_commit(*stop)
    if back:
        admission.admit_on_commit()
    if rendezvous:
        transaction.on_commit(lambda: _publish_rendezvous(rendezvous))


def _publish_rendezvous(keys: dict[str, str]) -> None:
    try:
        pipe = protocol.redis_client().pipeline(transaction=False)
        for key, value in keys.items():
            pipe.set(key, value, ex=protocol.FLAG_TTL_S)
        pipe.execute()
    except Exception as exc:  # the ranks waiting for it time out, and the gang goes again
        log.warning("rendezvous %s not published: %s", keys, exc)


def _moves(path: list[str]) -> list[str]:
    """queued, running, running -> queued, running: repeated states collapse."""
    return [state for i, state in enumerate(path) if i == 0 or state != path[i - 1]]
