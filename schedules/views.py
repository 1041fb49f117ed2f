"""The browser's schedule pages: the list of the user's teams' schedules, and a form to add,
change or delete one (read-only for a team's viewers). Thin: they call services/selectors."""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from accounts.teams import acting_teams, team_ids
from jobs.forms import fields_for
from schedules import forms, selectors, services
from schedules.cron import HELP, cron_errors, next_after
from workers.kinds import all_kinds

FORM_FIELDS = ("name", "team", "cron", "kind", "params", "priority", "enabled")


@login_required
def schedule_list(request):
    schedules = list(selectors.visible_schedules(request.user))
    acting = set(acting_teams(request.user).values_list("pk", flat=True))
    for schedule in schedules:
        schedule.editable = request.user.is_staff or schedule.team_id in acting
    return render(request, "schedules/list.html", {
        # A user in no team at all gets a team of their own with their first job or schedule.
        "schedules": schedules, "can_create": bool(acting) or not team_ids(request.user)})


def _values(schedule) -> dict:
    if schedule is None:
        return {"name": "", "team": "", "cron": "", "kind": "diag.sleep", "params": "{}",
                "priority": 0, "enabled": True}
    return {"name": schedule.name, "team": schedule.team.name, "cron": schedule.cron,
            "kind": schedule.kind, "params": json.dumps(schedule.params, indent=2),
            "priority": schedule.priority, "enabled": schedule.enabled}


def _next_runs(cron: str, count: int = 5) -> list:
    """The next `count` times the expression names (none while it is not valid)."""
    if not isinstance(cron, str) or cron_errors(cron):
        return []
    runs, moment = [], timezone.now()
    for _ in range(count):
        moment = next_after(cron, moment)
        runs.append(moment)
    return runs


def _form(request, schedule, *, values, errors, editable, status=200):
    teams = list(acting_teams(request.user))
    if schedule is not None and schedule.team not in teams:
        teams.append(schedule.team)
    kinds = all_kinds()
    known = {kind.name for kind in kinds}
    return render(request, "schedules/form.html", {
        "schedule": schedule, "values": values, "errors": errors, "editable": editable,
        "teams": teams, "kinds": kinds, "unknown_kind": values["kind"] not in known
        and values["kind"], "cron_help": HELP, "next_runs": _next_runs(values["cron"]),
        "kind_fields": [(kind, fields_for(kind.schema())) for kind in kinds],
    }, status=status)


def _submitted(request, schedule):
    """Create or change from the posted form: a redirect, or the form again with its errors."""
    data, errors = forms.data_from_post(request.POST)
    values = {**{field: request.POST.get(field, "") for field in FORM_FIELDS},
              "enabled": data["enabled"]}
    status = 400
    if not errors:
        try:
            if schedule is None:
                services.create_schedule(user=request.user, data=data, via="page")
            else:
                services.update_schedule(schedule=schedule, user=request.user, data=data,
                                          via="page")
        except services.InvalidSchedule as exc:
            errors, status = forms.flat_errors(exc.errors), exc.status
        else:
            return redirect("schedule-list")
    return _form(request, schedule, values=values, errors=errors, editable=True, status=status)


@login_required
def schedule_new(request):
    if request.method == "POST":
        return _submitted(request, None)
    return _form(request, None, values=_values(None), errors={}, editable=True)


def _visible_or_404(request, schedule_id):
    schedule = selectors.schedule_for(request.user, schedule_id)
    if schedule is None:
        raise Http404("No such schedule.")
    return schedule


@login_required
def schedule_detail(request, schedule_id):
    schedule = _visible_or_404(request, schedule_id)
    editable = selectors.can_edit(request.user, schedule)
    if request.method == "POST":
        if not editable:
            raise PermissionDenied("you may only view this team's schedules")
        return _submitted(request, schedule)
    return _form(request, schedule, values=_values(schedule), errors={}, editable=editable)


@login_required
@require_POST
def schedule_delete(request, schedule_id):
    schedule = _visible_or_404(request, schedule_id)
    services.delete_schedule(schedule=schedule, user=request.user, via="page")
    return redirect("schedule-list")
