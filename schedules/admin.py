import json

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.utils import timezone

from audit.admin import AuditedAdmin
from audit.log import record
from jobs import services as job_services
from schedules import services
from schedules.cron import next_after
from schedules.models import Schedule


class ScheduleForm(forms.ModelForm):
    """The cron field checks itself. As in the API and the pages, whoever makes or changes the
    job (its name, team, kind, params or priority) becomes its owner, so the job is checked
    with their rights (`user`, the admin's request user), never another's; a change of only
    the cron or `enabled` leaves the owner, whose rights are checked again at every run.

    What changed is what differs from the schedule as loaded (`changed_fields`), not the
    form's `changed_data`: that compares the params with an "initial-params" the browser posts
    back, which a client can make say anything."""

    user = None  # set by ScheduleAdmin.get_form

    class Meta:
        model = Schedule
        fields = ["name", "team", "cron", "kind", "params", "priority", "enabled"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loaded = None if self.instance.pk is None else comparable({
            field: getattr(self.instance, "team_id" if field == "team" else field)
            for field in services.FIELDS})
        self.changed_fields: set[str] = set()

    def changes_job(self) -> bool:
        return bool(self.changed_fields & set(services.JOB_FIELDS))

    def clean(self):
        data = super().clean()
        now = comparable({field: data.get(field) for field in services.FIELDS})
        self.changed_fields = {field for field in services.FIELDS
                               if self.loaded is None or now[field] != self.loaded[field]}
        needed = ("name", "team", "kind", "priority")
        if self.changes_job() and all(data.get(field) is not None for field in needed):
            try:
                job_services.validate_spec(services.spec_data({
                    "kind": data["kind"], "params": data.get("params") or {},
                    "name": data["name"], "priority": data["priority"],
                    "team": data["team"].name}), owner=self.user)
            except job_services.InvalidJob as exc:
                for field, messages in exc.errors.items():
                    if field not in self.fields:
                        self.add_error(None, services.describe({field: messages}))
                    elif isinstance(messages, dict):  # the parameters' own messages
                        self.add_error(field, services.describe(messages))
                    else:
                        self.add_error(field, messages)
        return data


def comparable(values: dict) -> dict:
    """A schedule's field values as compared: the team by id, the params as sorted JSON (so
    true is not 1, and the order of keys does not matter)."""
    team = values["team"]
    return {**values, "team": getattr(team, "pk", team),
            "params": json.dumps(values["params"], sort_keys=True)}


@admin.register(Schedule)
class ScheduleAdmin(AuditedAdmin, admin.ModelAdmin):
    form = ScheduleForm
    list_display = ["name", "team", "owner", "cron", "kind", "enabled", "next_run_at",
                    "last_run_at", "last_job", "last_error"]
    list_filter = ["enabled", "team", "kind"]
    search_fields = ["name", "kind", "cron", "team__name", "owner__username"]
    list_select_related = ["team", "owner", "last_job"]
    readonly_fields = ["owner", "next_run_at", "last_run_at", "last_job", "last_error",
                       "created_at"]
    actions = ["run_now", "enable", "disable"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        return type(form.__name__, (form,), {"user": request.user})

    def save_model(self, request, obj, form, change):
        """Who makes or changes the job owns it (checked so by the form). The next run counts
        from now when the schedule is new, its cron changed, or it is enabled again; a
        disabled one has none. One moved to another team forgets its last run."""
        fields = sorted(form.changed_fields)
        if form.changes_job():
            obj.owner = request.user
            fields.append("owner")
        if change and "team" in form.changed_fields:
            fields.extend(services.forget_last_run(obj))
        if not obj.enabled:
            obj.next_run_at = None
            fields.append("next_run_at")
        elif not change or obj.next_run_at is None or {"cron", "enabled"} & set(fields):
            obj.next_run_at = next_after(obj.cron, timezone.now())
            fields.append("next_run_at")
        if not change:
            obj.save()
        elif fields:  # only what changed: a run the reconciler claims meanwhile stays claimed
            obj.save(update_fields=fields)
        record(request.user, "schedule.change", obj, via="admin",
               fields=sorted(form.changed_fields), created=not change)

    @admin.action(description="Run now: submit the job of each selected schedule",
                  permissions=["change"])
    def run_now(self, request, queryset):
        for schedule in queryset:
            try:
                job = services.run_now(schedule, actor=request.user, via="admin")
            except job_services.InvalidJob as exc:
                self.message_user(request, f"{schedule.name}: nothing submitted: "
                                  f"{services.describe(exc.errors)}", messages.ERROR)
            else:
                self.message_user(request, f"{schedule.name}: submitted job {job.pk}.",
                                  messages.SUCCESS)

    def _set_enabled(self, request, schedule, enabled: bool, now=None) -> bool:
        with transaction.atomic():
            changed = services.set_enabled(schedule, enabled, now)
            if changed:
                record(request.user, "schedule.change", schedule, via="admin",
                       fields=["enabled"], created=False)
        return changed

    @admin.action(description="Enable selected schedules", permissions=["change"])
    def enable(self, request, queryset):
        """Those already enabled keep their next run (a due run is not skipped)."""
        now = timezone.now()
        enabled = sum(self._set_enabled(request, schedule, True, now) for schedule in queryset)
        self.message_user(request, f"Enabled {enabled} schedules ({len(queryset) - enabled} "
                          f"already were).", messages.SUCCESS)

    @admin.action(description="Disable selected schedules", permissions=["change"])
    def disable(self, request, queryset):
        disabled = sum(self._set_enabled(request, schedule, False) for schedule in queryset)
        self.message_user(request, f"Disabled {disabled} schedules ({len(queryset) - disabled} "
                          f"already were).", messages.SUCCESS)
