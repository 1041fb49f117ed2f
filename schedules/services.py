"""Writes for schedules, and the reconciler's `tick` that submits what is due.

Every job a schedule makes goes the way any other job does: `jobs.services.validate_spec`
with the schedule's owner, then `jobs.services.submit_jobs` (audited as the owner's
"job.submit" via "system", beside the system's "schedule.run", or "schedule.run_now" by who
ran it, naming the schedule and the job). Its rights are checked again at
every run, so a schedule whose kind was removed or whose owner lost the right records why in
`last_error` and submits nothing, and the others go on.

A run is claimed with a conditional UPDATE (due at the time this pass read, still enabled,
same cron) that also moves `next_run_at` to the first cron time after now: two reconcilers
cannot both submit it, and runs missed while the portal was down make one job, not one each.
The claim and the job commit together, so a crash between them loses or repeats nothing.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from accounts.models import Membership, Team
from accounts.teams import can_act, default_team, in_no_team, personal_team
from audit.log import record
from common.errors import DomainError, describe
from common.throttling import team_submit_allowed
from jobs import services as jobs
from schedules.cron import cron_errors, interval_errors, next_after
from schedules.models import Schedule

log = logging.getLogger(__name__)
BATCH = 100
FIELDS = ("name", "team", "cron", "kind", "params", "priority", "enabled")
# What the submitted job is made of: who changes one of these becomes the schedule's owner.
JOB_FIELDS = ("name", "team", "kind", "params", "priority")
# What the last run left: another team's job, once the schedule moves to a new team.
LAST_RUN_FIELDS = ("last_run_at", "last_job", "last_error")


class InvalidSchedule(DomainError):
    """The schedule is not valid; `errors` maps each wrong field to its messages (`params` to
    a dict of the parameters' messages, as the job API does)."""


def spec_data(values: dict) -> dict:
    """The job a schedule submits, as `validate_spec` takes it."""
    return {"kind": values["kind"], "params": values["params"], "name": values["name"],
            "priority": values["priority"], "team": values["team"]}


def job_spec(schedule: Schedule) -> jobs.JobSpec:
    """The schedule's job, checked now, with its owner's rights now."""
    if not can_act(schedule.owner, schedule.team_id):
        raise jobs.InvalidJob({"team": [f"{schedule.owner} may not submit jobs for team "
                                        f"{schedule.team.name} any more"]})
    return jobs.validate_spec(spec_data({
        "kind": schedule.kind, "params": schedule.params, "name": schedule.name,
        "priority": schedule.priority, "team": schedule.team.name}), owner=schedule.owner)


# Creating, changing, deleting.

def _team(value, user, errors) -> Team | None:
    if not isinstance(value, str) or not value:
        errors["team"] = ["must be a team's name"]
        return None
    team = Team.objects.filter(name=value).first() if "\x00" not in value else None
    if team is None or not (user.is_staff or Membership.objects.filter(team=team, user=user)
                            .exists()):
        errors["team"] = [f"no such team: {value}"]
        return None
    if not can_act(user, team.pk):
        errors["team"] = [f"you may only view team {value}'s jobs and schedules"]
        return None
    return team


def _clean(data, *, user, schedule: Schedule | None) -> tuple[dict, set[str]]:
    """The schedule's values after `data` (all fields when creating, some when changing) and
    the fields that changed; raise InvalidSchedule with every wrong field's messages."""
    if not isinstance(data, dict):
        raise InvalidSchedule({"non_field_errors": ["a schedule must be a JSON object"]})
    errors: dict = {}
    for field in sorted(set(data) - set(FIELDS)):
        errors[field] = ["cannot be set on a schedule"]
    if schedule is None:
        current = {"name": "", "team": None, "cron": "", "kind": "", "params": {},
                   "priority": 0, "enabled": True}
    else:
        current = {field: getattr(schedule, field) for field in FIELDS if field != "team"}
        current["team"] = schedule.team.name
    values = {**current, **{k: v for k, v in data.items() if k in FIELDS}}
    if isinstance(values["name"], str):
        values["name"] = values["name"].strip()
    if isinstance(values["cron"], str):
        values["cron"] = " ".join(values["cron"].split())
    changed = {field for field in FIELDS if schedule is None or values[field] != current[field]}

    if not isinstance(values["name"], str) or not values["name"]:
        errors["name"] = ["is required"]
    elif len(values["name"]) > 200:
        errors["name"] = ["must be at most 200 characters"]
    team = None
    if schedule is None and not values["team"]:
        team = default_team(user)
        if team is not None:
            values["team"] = team.name
        elif not in_no_team(user):  # a viewer only; one in no team gets their own on saving
            errors["team"] = ["is required"]
    elif "team" in changed:
        team = _team(values["team"], user, errors)
    else:
        team = schedule.team
    if messages := cron_errors(values["cron"]):
        errors["cron"] = messages
    elif "cron" in changed and (messages := interval_errors(
            values["cron"], settings.SCHEDULE_MIN_INTERVAL_S)):
        errors["cron"] = messages
    if not isinstance(values["enabled"], bool):
        errors["enabled"] = ["must be true or false"]

    status = 400
    if changed & set(JOB_FIELDS):
        # Checked as the user's job: they become its owner, so nobody submits as another.
        data = spec_data(values)
        if "team" in errors:
            del data["team"]
        try:
            jobs.validate_spec(data, owner=user)
        except jobs.InvalidJob as exc:
            for field, messages in exc.errors.items():
                errors.setdefault(field, messages)
            if set(errors) == set(exc.errors):  # nothing but a kind the user may not submit
                status = exc.status
    if errors:
        raise InvalidSchedule(errors, status)
    values["team"] = team
    return values, changed


def create_schedule(*, user, data: dict, via: str = "api") -> Schedule:
    """A new schedule of the user's (they own its jobs); its first run is the first cron time
    from now."""
    values, _ = _clean(data, user=user, schedule=None)
    now = timezone.now()
    with transaction.atomic():
        if values["team"] is None:  # a user in no team: their own, saved with the schedule
            values["team"] = personal_team(user)
        _has_room(values["team"])
        schedule = Schedule.objects.create(
            owner=user, created_at=now,
            next_run_at=next_after(values["cron"], now) if values["enabled"] else None,
            **values)
        record(user, "schedule.change", schedule, via=via, created=True,
               fields=sorted(values))
    return schedule


def update_schedule(*, schedule: Schedule, user, data: dict, via: str = "api") -> Schedule:
    """Change some fields. Who changes what the job is becomes the owner of its jobs; a new
    cron, or enabling again, counts from now (runs missed while disabled are not made up)."""
    if not can_act(user, schedule.team_id):
        raise PermissionDenied("you may only view this team's schedules")
    values, changed = _clean(data, user=user, schedule=schedule)
    fields = list(changed)
    for field in changed:
        setattr(schedule, field, values[field])
    if changed & set(JOB_FIELDS):
        schedule.owner = user
        fields.append("owner")
    if "team" in changed:
        fields.extend(forget_last_run(schedule))
    if not schedule.enabled:
        schedule.next_run_at = None
        fields.append("next_run_at")
    elif {"cron", "enabled"} & changed or schedule.next_run_at is None:
        schedule.next_run_at = next_after(schedule.cron, timezone.now())
        fields.append("next_run_at")
    # Only what changed: a run the reconciler claims meanwhile (it moves next_run_at on) is not
    # put back to be run twice.
    if fields:
        with transaction.atomic():
            if "team" in changed:
                _has_room(schedule.team)
            schedule.save(update_fields=fields)
            record(user, "schedule.change", schedule, via=via, fields=sorted(changed))
    return schedule


def _has_room(team: Team) -> None:
    """A team holds at most SCHEDULES_PER_TEAM schedules. Its row is locked for the rest of the
    transaction, so two additions at once cannot both take the last place."""
    Team.objects.select_for_update().filter(pk=team.pk).values_list("pk", flat=True).first()
    limit = settings.SCHEDULES_PER_TEAM
    if Schedule.objects.filter(team=team).count() >= limit:
        raise InvalidSchedule({"team": [f"team {team.name} already has {limit} schedules, "
                                        "the most a team may have"]})


def forget_last_run(schedule: Schedule) -> list[str]:
    """A schedule moved to another team: its last run was the old team's, whose job (its id,
    its state) the new team must not see. Returns the fields to save."""
    schedule.last_run_at, schedule.last_job, schedule.last_error = None, None, ""
    return list(LAST_RUN_FIELDS)


def delete_schedule(*, schedule: Schedule, user, via: str = "api") -> None:
    if not can_act(user, schedule.team_id):
        raise PermissionDenied("you may only view this team's schedules")
    with transaction.atomic():
        record(user, "schedule.delete", schedule, via=via)
        schedule.delete()


def set_enabled(schedule: Schedule, enabled: bool, now=None) -> bool:
    """Enable (the next run is the first cron time from now) or disable a schedule. One that
    already is as asked is left alone: enabling an enabled schedule does not skip a run that
    is due. Returns whether it changed."""
    if enabled:
        # Conditional, so a schedule enabled meanwhile (or claimed by a run) keeps its next run.
        changed = Schedule.objects.filter(pk=schedule.pk, enabled=False).update(
            enabled=True, next_run_at=next_after(schedule.cron, now or timezone.now()))
    else:
        changed = Schedule.objects.filter(pk=schedule.pk).exclude(
            enabled=False, next_run_at=None).update(enabled=False, next_run_at=None)
    schedule.refresh_from_db(fields=["enabled", "next_run_at"])
    return bool(changed)


def run_now(schedule: Schedule, now=None, *, actor=None, via: str = "system"):
    """Submit the schedule's job at once (its next run stays when it was), audited as
    "schedule.run_now" by `actor` via `via`; raise InvalidJob, recorded in `last_error`, if it
    cannot be submitted."""
    now = now or timezone.now()
    with transaction.atomic():
        schedule = (Schedule.objects.select_for_update().select_related("team", "owner")
                    .get(pk=schedule.pk))
        try:
            job = _submit(schedule)
        except jobs.InvalidJob as exc:
            Schedule.objects.filter(pk=schedule.pk).update(last_error=describe(exc.errors))
            refused = exc
        else:
            Schedule.objects.filter(pk=schedule.pk).update(last_run_at=now, last_job=job,
                                                           last_error="")
            record(actor, "schedule.run_now", schedule, via=via, job=job.pk)
            return job
    raise refused


# The reconciler's pass.

def _submit(schedule: Schedule):
    """One job, through the one path every job takes (its "job.submit" entry the owner's, via
    "system": the schedule submitted it, not the owner); inside a savepoint, so a refusal
    leaves the caller's transaction (and its claim) as it was."""
    with transaction.atomic():
        spec = job_spec(schedule)
        [job] = jobs.submit_jobs(owner=schedule.owner, specs=[spec], via="system")
    return job


def due(now) -> list[tuple[int, object, str]]:
    """(id, next_run_at, cron) of enabled schedules due at `now`, the longest overdue first."""
    return list(Schedule.objects.filter(enabled=True, next_run_at__lte=now)
                .order_by("next_run_at", "pk").values_list("pk", "next_run_at", "cron")[:BATCH])


def run_due(pk: int, due_at, cron: str, now) -> bool:
    """Claim one due run and submit its job: False if another pass claimed it first, or it was
    changed or disabled since it was read."""
    with transaction.atomic():
        claimed = Schedule.objects.filter(pk=pk, enabled=True, next_run_at=due_at,
                                          cron=cron).update(next_run_at=next_after(cron, now))
        if not claimed:
            return False
        schedule = Schedule.objects.select_related("team", "owner").get(pk=pk)
        if not team_submit_allowed(schedule.team_id):
            error = (f"team {schedule.team.name} is over its submit rate: this run submitted "
                     "nothing")
            log.warning("schedule %s (%s): %s", pk, schedule.name, error)
            Schedule.objects.filter(pk=pk).update(last_error=error)
            return False
        try:
            job = _submit(schedule)
        except jobs.InvalidJob as exc:
            error = describe(exc.errors)
            log.warning("schedule %s (%s) submitted nothing: %s", pk, schedule.name, error)
            Schedule.objects.filter(pk=pk).update(last_error=error)
            return False
        Schedule.objects.filter(pk=pk).update(last_run_at=now, last_job=job, last_error="")
        record(None, "schedule.run", schedule, via="system", job=job.pk)
        log.info("schedule %s (%s) submitted job %s", pk, schedule.name, job.pk)
        return True


def _failed(pk: int, due_at, cron: str, now, error: str) -> None:
    """A run that broke unexpectedly is skipped (with why), unless another pass has it."""
    try:
        next_run = next_after(cron, now)
    except Exception:  # a cron expression put in behind the checks: never runs until fixed
        next_run = None
    Schedule.objects.filter(pk=pk, enabled=True, next_run_at=due_at).update(
        next_run_at=next_run, last_error=error[:2000])


def tick(now=None) -> int:
    """Submit one job for every enabled schedule due at `now` (however many of its runs were
    missed) and move each to its first cron time after `now`. Returns the jobs submitted.
    A schedule that cannot submit records why and the others go on."""
    now = now or timezone.now()
    submitted = 0
    for pk, due_at, cron in due(now):
        try:
            submitted += run_due(pk, due_at, cron, now)
        except (OperationalError, InterfaceError):
            raise  # the database is gone: this pass fails like the reconciler's others
        except Exception as exc:
            log.exception("schedule %s failed", pk)
            _failed(pk, due_at, cron, now, f"{type(exc).__name__}: {exc}")
    return submitted
