"""Writes: submit, cancel, retry. Views, the API and the admin call these and nothing else."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from pydantic import ValidationError

from accounts import teams
from accounts.models import Team
from audit.log import record, record_many
from common.errors import DomainError
from jobs import admission, lifecycle
from jobs.broadcast import Outbox
from jobs.lifecycle import (  # noqa: F401  (their long-standing home for callers)
    WAITING_FOR_ADMISSION,
    cancel_children,
    new_token,
    signal_cancel,
    state_event,
)
from jobs.models import Job, JobState
from spaces.selectors import space_for
from workers import data as workers_data
from workers import protocol
from workers.kinds import get_kind

log = logging.getLogger(__name__)
SPEC_FIELDS = {"kind", "params", "name", "priority", "queue", "max_attempts", "timeout_s",
               "after", "team", "cpus", "gpus", "labels", "nodes", "slots_per_node"}
MAX_AFTER = 100
MAX_LABELS = 10
_PYDANTIC_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "is not a parameter of this kind",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "string_type": "must be a string",
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be more than {gt}",
    "less_than_equal": "must be at most {le}",
    "less_than": "must be less than {lt}",
}


class InvalidJob(DomainError):
    """The submitted job is not valid; `errors` maps each wrong field to its messages."""


class NotPermitted(InvalidJob):
    """The user may not submit this kind (403, naming the field)."""

    status = 403


@dataclass(frozen=True)
class JobSpec:
    kind: str
    params: dict
    name: str
    priority: int
    queue: str
    max_attempts: int
    timeout_s: int
    after: tuple[int, ...] = ()  # jobs that must succeed first
    team: Team | None = None  # None: the owner's default team
    cpus: int = 1
    gpus: int = 0
    labels: dict | None = None  # node labels it needs
    nodes: int = 1  # a gang: this many distinct nodes ...
    slots_per_node: int = 1  # ... with this many slots each, one rank per slot


def params_errors(exc: ValidationError) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for err in exc.errors():
        field = ".".join(str(part) for part in err["loc"]) or "params"
        template = _PYDANTIC_MESSAGES.get(err["type"])
        ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in err.get("ctx", {}).items()}
        message = template.format(**ctx) if template else err["msg"]
        errors.setdefault(field, []).append(message)
    return errors


def _int_field(data, field, errors, *, default, low, high) -> int:
    value = data.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int):
        errors[field] = ["must be a whole number"]
    elif not low <= value <= high:
        errors[field] = [f"must be between {low} and {high}"]
    return value


def int_bounds() -> dict[str, tuple[int, int, int]]:
    """(lowest, highest, default) of each whole-number field: validate_spec checks them and the
    OpenAPI schema shows them (a job in the gpu queue holds at least one GPU)."""
    return {"priority": (-100, 100, 0),
            "max_attempts": (1, 20, settings.JOB_DEFAULT_MAX_ATTEMPTS),
            "timeout_s": (1, settings.JOB_MAX_TIMEOUT_S, settings.JOB_DEFAULT_TIMEOUT_S),
            "cpus": (1, 1024, 1),
            "gpus": (0, 64, 0)}


def validate_spec(data, *, owner=None) -> JobSpec:
    """Check one submitted job; raise InvalidJob with per-field messages. With the submitting
    user, a kind they may not submit is refused first, before its parameters say anything."""
    if not isinstance(data, dict):
        raise InvalidJob({"non_field_errors": ["a job must be a JSON object"]})
    errors: dict = {}
    for field in sorted(set(data) - SPEC_FIELDS):
        errors[field] = ["cannot be set when submitting a job"]
    kind_name = data.get("kind")
    kind = None
    if not kind_name:
        errors["kind"] = ["is required"]
    elif not isinstance(kind_name, str):
        errors["kind"] = ["must be a string"]
    elif (kind := get_kind(kind_name)) is None or kind.internal:
        errors["kind"] = [f"unknown kind {kind_name!r}"]
        kind = None
    if kind is not None and owner is not None and kind.permission \
            and not owner.has_perm(kind.permission):
        raise NotPermitted({"kind": [f"you may not submit {kind.name} jobs: ask an admin for "
                                     "the permission"]})
    # The team first: its paths and tables are checked inside its data space.
    team = _team_field(data.get("team"), owner, errors) if owner is not None else None
    params = data.get("params", {})
    if not isinstance(params, dict):
        errors["params"] = {"non_field_errors": ["must be a JSON object"]}
    elif kind is not None and not ("team" in errors and team is None):
        try:
            with workers_data.team_space(_space_to_check(team, owner)):
                params = kind.params.model_validate(params, strict=True).model_dump(
                    mode="json")
        except ValidationError as exc:
            errors["params"] = params_errors(exc)
    name = data.get("name", "")
    if not isinstance(name, str) or len(name) > 200:
        errors["name"] = ["must be a string of at most 200 characters"]
    queue = data.get("queue") or (kind.queue if kind else "")
    if not isinstance(queue, str) or (queue and queue not in settings.JOB_QUEUES):
        errors["queue"] = [f"must be one of {', '.join(settings.JOB_QUEUES)}"]
    bounds = int_bounds()

    def whole(field, *, at_least=None):
        low, high, default = bounds[field]
        if at_least is not None:
            low, default = max(low, at_least), max(default, at_least)
        return _int_field(data, field, errors, default=default, low=low, high=high)

    priority = whole("priority")
    max_attempts = whole("max_attempts")
    timeout_s = whole("timeout_s")
    after = _after_field(data.get("after", []), errors)
    cpus = whole("cpus")
    # A job in the gpu queue holds at least one GPU: its team's GPU quota counts it.
    gpus = whole("gpus", at_least=int(queue == "gpu"))
    labels = _labels_field(data.get("labels", {}), queue, errors)
    nodes = _int_field(data, "nodes", errors, default=1, low=1, high=MAX_NODES)
    slots_per_node = _int_field(data, "slots_per_node", errors, default=1, low=1,
                                high=MAX_SLOTS_PER_NODE)
    if not errors and nodes > 1:
        _nodes_field(nodes, queue, labels, errors)
    if team is not None and not errors:
        _fits_quota(team, cpus * nodes * slots_per_node, gpus * nodes * slots_per_node, errors)
    if errors:
        raise InvalidJob(errors)
    return JobSpec(kind=kind_name, params=params, name=name or kind_name, priority=priority,
                   queue=queue, max_attempts=max_attempts, timeout_s=timeout_s, after=after,
                   team=team, cpus=cpus, gpus=gpus, labels=labels, nodes=nodes,
                   slots_per_node=slots_per_node)


MAX_NODES = 64
MAX_SLOTS_PER_NODE = 64


def _nodes_field(nodes: int, queue: str, labels: dict, errors) -> None:
    """A gang bigger than the nodes its queue has (with its labels) could never start."""
    from jobs.models import Node

    wanted = set(labels.items())
    known = sum(1 for node in Node.objects.only("labels", "queues")
                if queue in (node.queues or []) and wanted <= set((node.labels or {}).items()))
    if nodes > known:
        which = f"queue {queue}" + (" with " + ", ".join(f"{k}={v}" for k, v in labels.items())
                                    if labels else "")
        errors["nodes"] = [f"{which} has {known} node{'s' if known != 1 else ''}, fewer than "
                           f"{nodes}"]


def _space_to_check(team: Team | None, owner) -> workers_data.Space | None:
    """Where the job's paths are looked up: its team's space; for a user in no team, the
    space of the team of their own that their first job makes."""
    if team is not None:
        return space_for(team)
    return workers_data.space_of(teams.personal_team_name(owner)) if owner is not None else None


def _team_field(value, owner, errors) -> Team | None:
    """The team the job is for: one the owner may submit to (any, for staff); by default the
    first they joined. None for a user in no team: their own is made when the job is saved."""
    if value is None or value == "":
        team = teams.default_team(owner)
        if team is None and not teams.in_no_team(owner):
            errors["team"] = ["you may only view your teams' jobs: ask a team admin to make "
                              "you a member"]
        return team
    if not isinstance(value, str):
        errors["team"] = ["must be a team's name"]
        return None
    team = teams.acting_teams(owner).filter(name=value).first()
    if team is None:
        errors["team"] = [f"you may not submit jobs to team {value!r}"]
    return team


def _fits_quota(team: Team, cpus: int, gpus: int, errors) -> None:
    """A job bigger than its team's whole quota could never start: refused at once (a gang
    holds its CPU slots and GPUs once per rank)."""
    for field, wanted, limit in (("cpus", cpus, team.max_cpus), ("gpus", gpus, team.max_gpus)):
        if limit is not None and wanted > limit:
            errors[field] = [f"more than team {team.name}'s quota of {limit}"]


def _labels_field(value, queue, errors) -> dict:
    """Node labels a job needs, {"gpu": "a100"}: refused at once if no node has them all."""
    if not isinstance(value, dict) or len(value) > MAX_LABELS or not all(
            isinstance(k, str) and isinstance(v, str) and k and len(k) <= 50 and len(v) <= 100
            for k, v in value.items()):
        errors["labels"] = [f"must be an object of at most {MAX_LABELS} text labels"]
        return {}
    if value:
        from jobs.models import Node

        wanted = set(value.items())
        if not any(wanted <= set((node.labels or {}).items()) and queue in (node.queues or [])
                   for node in Node.objects.only("labels", "queues")):
            text = ", ".join(f"{k}={v}" for k, v in sorted(value.items()))
            errors["labels"] = [f"no node serving queue {queue} has {text}"]
    return dict(sorted(value.items()))


def _after_field(value, errors) -> tuple[int, ...]:
    """A list of job ids (as the API shows them: strings; numbers are accepted too)."""
    if not isinstance(value, list) or len(value) > MAX_AFTER:
        errors["after"] = [f"must be a list of at most {MAX_AFTER} job ids"]
        return ()
    ids = []
    for item in value:
        text = str(item) if isinstance(item, int | str) and not isinstance(item, bool) else ""
        if not (text.isascii() and text.isdigit()):  # "²" is a digit, but no number
            errors["after"] = [f"{item!r} is not a job id"]
            return ()
        ids.append(int(text))
    return tuple(dict.fromkeys(ids))


def _new_job(owner, spec: JobSpec, now, idempotency_key=None) -> Job:
    """A pending job: blocked until the jobs it waits for succeed, then admitted."""
    blocked = bool(spec.after)
    return Job(owner=owner, team=spec.team or teams.team_for_work(owner), kind=spec.kind,
               name=spec.name, params=spec.params, queue=spec.queue, priority=spec.priority,
               cpus=spec.cpus, gpus=spec.gpus, labels=spec.labels or {},
               nodes=spec.nodes, slots_per_node=spec.slots_per_node,
               max_attempts=spec.max_attempts, timeout_s=spec.timeout_s,
               blocked=blocked, created_at=now, idempotency_key=idempotency_key,
               message=(f"waiting for {_jobs_text(spec.after)} to succeed" if blocked
                        else WAITING_FOR_ADMISSION))


def _jobs_text(ids) -> str:
    ids = list(ids)
    return (f"job {ids[0]}" if len(ids) == 1 else
            f"jobs {', '.join(map(str, ids[:5]))}{' and more' if len(ids) > 5 else ''}")


def _check_after(owner, specs: list[JobSpec]) -> None:
    """A job may wait only for jobs of its own team that its owner may see: any other id is as
    unknown as one that does not exist (the job's team would learn of it otherwise)."""
    from jobs.selectors import visible_jobs

    for spec in specs:
        if not spec.after:
            continue
        team = spec.team or teams.default_team(owner)
        seen = set(visible_jobs(owner).filter(pk__in=spec.after, team=team)
                   .values_list("pk", flat=True)) if team else set()
        missing = sorted(set(spec.after) - seen)
        if missing:
            where = f"in team {team}" if team else "of yours"
            raise InvalidJob({"after": [f"no such job {where}: "
                                        f"{', '.join(map(str, missing))}"]})


def _create(owner, specs: list[JobSpec], now, idempotency_key=None) -> list[Job]:
    """The jobs and their first attempts, inside the caller's transaction, pending: admission
    queues those it can at once (they are dispatched after the commit); those that wait for
    others stay blocked until they move on."""
    from jobs import dependencies

    jobs = lifecycle.create([_new_job(owner, spec, now, idempotency_key) for spec in specs],
                            now, one_by_one=bool(idempotency_key))
    links = [Job.after.through(from_job_id=job.pk, to_job_id=other)
             for job, spec in zip(jobs, specs, strict=True) for other in spec.after]
    Job.after.through.objects.bulk_create(links)
    blocked = [job.pk for job in jobs if job.blocked]
    if blocked:  # those whose jobs already ended move on at once
        dependencies.settle(blocked)
    if len(blocked) < len(jobs):
        done = admission.admit()
        for job in jobs:  # as the pass left them
            if job.pk in done.admitted:
                job.state, job.dispatched_at, job.message = JobState.QUEUED, done.at, ""
            elif job.pk in done.reasons:
                job.message = done.reasons[job.pk]
    for job, spec in zip(jobs, specs, strict=True):
        job.after_ids = list(spec.after)  # for the answer, without a query
    return jobs


def authorize(owner, specs: list[JobSpec]) -> None:
    """Kinds that need a permission (shell commands) are refused to users without it."""
    for spec in specs:
        kind = get_kind(spec.kind)
        if kind and kind.permission and not owner.has_perm(kind.permission):
            raise NotPermitted({"kind": [f"you may not submit {spec.kind} jobs: ask an "
                                         "admin for the permission"]})


def submit_jobs(*, owner, specs: list[JobSpec], via: str = "api") -> list[Job]:
    """Admit and queue jobs; each is dispatched once the transaction commits."""
    authorize(owner, specs)
    _check_after(owner, specs)
    with transaction.atomic():
        jobs = _create(owner, specs, timezone.now())
        record_many(owner, "job.submit", jobs, via=via)
    return moved_on(jobs)


MOVED_ON = ("state", "message", "dispatched_at", "finished_at", "blocked")


def moved_on(jobs: list[Job]) -> list[Job]:
    """The new jobs as they are now: those that waited for others may have moved on at once
    (one query for the lot; their owner and team stay known)."""
    if any(job.blocked for job in jobs):
        rows = {row["pk"]: row for row in Job.objects.filter(pk__in=[job.pk for job in jobs])
                .values("pk", *MOVED_ON)}
        for job in jobs:
            for name in MOVED_ON:
                setattr(job, name, rows[job.pk][name])
    return jobs


def submit_job(*, owner, spec: JobSpec, idempotency_key: str | None = None,
               via: str = "api") -> tuple[Job, bool]:
    """Submit one job; with an idempotency key, a repeat returns the first job (created=False)."""
    authorize(owner, [spec])
    if not idempotency_key:
        return submit_jobs(owner=owner, specs=[spec], via=via)[0], True
    if existing := _first_with_key(owner, idempotency_key):
        return existing, False
    _check_after(owner, [spec])
    try:
        with transaction.atomic():
            [job] = _create(owner, [spec], timezone.now(), idempotency_key)
            record(owner, "job.submit", job, via=via)
    except IntegrityError:  # a repeat raced this one, or the first is no longer visible
        if existing := _first_with_key(owner, idempotency_key):
            return existing, False
        raise InvalidJob({"Idempotency-Key": ["already used"]}) from None
    return moved_on([job])[0], True


def _first_with_key(owner, key: str) -> Job | None:
    """The job first submitted with this key, while its submitter may still see it."""
    from jobs.selectors import visible_jobs

    return visible_jobs(owner).filter(owner=owner, idempotency_key=key).first()


def check_acts(actor, job: Job) -> None:
    """A viewer of the team sees its jobs but may not change them."""
    if actor is not None and not teams.can_act(actor, job.team_id):
        raise NotPermitted({"detail": [f"you may only view team {job.team}'s jobs"]})


def cancel_job(*, job: Job, actor=None, via: str = "api") -> Job:
    """Cancel a job: at once if it has not started, else by asking its running attempt to stop."""
    check_acts(actor, job)
    return lifecycle.cancel(job, actor=actor, via=via)


def retry_job(*, job: Job, owner, via: str = "api") -> Job:
    """A new job with the same kind and parameters, for the same team."""
    check_acts(owner, job)
    # Checked as a new submission is: the kind, its parameters, the labels and the quota now.
    spec = validate_spec({
        "kind": job.kind, "params": job.params, "name": job.name, "priority": job.priority,
        "queue": job.queue, "max_attempts": job.max_attempts, "timeout_s": job.timeout_s,
        "team": job.team.name, "cpus": job.cpus, "gpus": job.gpus, "labels": job.labels,
        "nodes": job.nodes, "slots_per_node": job.slots_per_node}, owner=owner)
    with transaction.atomic():
        new = submit_jobs(owner=owner, specs=[spec], via=via)[0]
        record(owner, "job.retry", job, via=via, new_job=new.pk)
    return new


def drain_node(*, node, draining: bool = True, actor=None, via: str = "admin"):
    """Drain a node (it finishes what it runs and takes nothing new), or put it back to work."""
    from jobs.ingest import node_event
    from jobs.models import Node, NodeState

    with transaction.atomic():
        if draining:
            Node.objects.filter(pk=node.pk).update(state=NodeState.DRAINING)
        else:
            Node.objects.filter(pk=node.pk, state=NodeState.DRAINING).update(
                state=NodeState.ONLINE)
        node.refresh_from_db()
        if actor is not None:
            record(actor, "node.drain" if draining else "node.undrain", node, via=via)
        transaction.on_commit(lambda: signal_drain(node.name, draining))
        outbox = Outbox()
        outbox.node(node_event(node, changed=True))
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
