from django import forms
from django.contrib import admin, messages
from django.utils import timezone

from audit.admin import AuditedAdmin
from audit.log import record
from jobs import services as job_services
from schedules import services
from schedules.cron import next_after
from schedules.models import Schedule


class ScheduleForm(forms.ModelForm):
    """The cron field checks itself; the job is checked as its owner's, as at every run."""

    class Meta:
        model = Schedule
        fields = ["name", "team", "owner", "cron", "kind", "params", "priority", "enabled"]

    def clean(self):
        data = super().clean()
        needed = ("name", "team", "owner", "kind", "priority")
        if all(data.get(field) is not None for field in needed):
            try:
                job_services.validate_spec(services.spec_data({
                    "kind": data["kind"], "params": data.get("params") or {},
                    "name": data["name"], "priority": data["priority"],
                    "team": data["team"].name}), owner=data["owner"])
            except job_services.InvalidJob as exc:
                for field, messages in exc.errors.items():
                    if field not in self.fields:
                        self.add_error(None, services.describe({field: messages}))
                    elif isinstance(messages, dict):  # the parameters' own messages
                        self.add_error(field, services.describe(messages))
                    else:
                        self.add_error(field, messages)
        return data


@admin.register(Schedule)
class ScheduleAdmin(AuditedAdmin, admin.ModelAdmin):
    form = ScheduleForm
    list_display = ["name", "team", "owner", "cron", "kind", "enabled", "next_run_at",
                    "last_run_at", "last_job", "last_error"]
    list_filter = ["enabled", "team", "kind"]
    search_fields = ["name", "kind", "cron", "team__name", "owner__username"]
    list_select_related = ["team", "owner", "last_job"]
    readonly_fields = ["next_run_at", "last_run_at", "last_job", "last_error", "created_at"]
    actions = ["run_now", "enable", "disable"]

    def get_changeform_initial_data(self, request):
        return {"owner": request.user.pk, **super().get_changeform_initial_data(request)}

    def save_model(self, request, obj, form, change):
        """The next run counts from now when the schedule is new, its cron changed, or it is
        enabled again; a disabled one has none."""
        fields = list(form.changed_data)
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
               fields=list(form.changed_data), created=not change)

    @admin.action(description="Run now: submit the job of each selected schedule",
                  permissions=["change"])
    def run_now(self, request, queryset):
        for schedule in queryset:
            try:
                job = services.run_now(schedule)
            except job_services.InvalidJob as exc:
                self.message_user(request, f"{schedule.name}: nothing submitted: "
                                  f"{services.describe(exc.errors)}", messages.ERROR)
            else:
                self.message_user(request, f"{schedule.name}: submitted job {job.pk}.",
                                  messages.SUCCESS)

    @admin.action(description="Enable selected schedules", permissions=["change"])
    def enable(self, request, queryset):
        now = timezone.now()
        for schedule in queryset:
            services.set_enabled(schedule, True, now)
        self.message_user(request, f"Enabled {len(queryset)} schedules.", messages.SUCCESS)

    @admin.action(description="Disable selected schedules", permissions=["change"])
    def disable(self, request, queryset):
        for schedule in queryset:
            services.set_enabled(schedule, False)
        self.message_user(request, f"Disabled {len(queryset)} schedules.", messages.SUCCESS)
