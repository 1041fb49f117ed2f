from django.contrib import admin, messages
from django.db.models import Count

from accounts.models import Membership, Team
from audit.admin import AuditedAdmin, ReadOnlyAdmin
from jobs import admission, services
from jobs.lifecycle import TransitionRefused
from jobs.models import Attempt, Job


class AttemptInline(admin.TabularInline):
    model = Attempt
    extra = 0
    can_delete = False
    readonly_fields = ["number", "state", "node", "worker", "created_at", "started_at",
                       "finished_at", "error"]
    exclude = ["token"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Job)
class JobAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ["id", "name", "kind", "team", "owner", "state", "priority", "percent_done",
                    "attempt", "node", "queue", "created_at"]
    list_filter = ["state", "team", "kind", "queue"]
    list_select_related = ["team", "owner"]
    search_fields = ["=id", "name", "kind", "owner__username", "team__name"]
    inlines = [AttemptInline]
    actions = ["cancel_jobs", "retry_jobs"]
    show_full_result_count = False  # no COUNT(*) over a big table on every page
    # The state machine owns these: the admin shows them and changes them only through actions.
    # `after` too: its widget would list every job there is (the job itself included).
    readonly_fields = [("percent_done" if f.name == "progress" else f.name)
                       for f in Job._meta.fields if f.name not in {"name", "priority"}] + [
        "after_jobs"]
    exclude = ["after", "progress"]  # shown as after_jobs and percent_done instead

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        # Jobs are the record of what ran (attempts, logs, the audit point at them): they are
        # cancelled, never deleted, so no delete action is offered that would fail.
        return False

    @admin.display(description="progress", ordering="progress")
    def percent_done(self, job):
        return "—" if job.progress is None else f"{job.progress * 100:.0f} %"

    @admin.display(description="after")
    def after_jobs(self, job):
        ids = list(job.after.values_list("pk", flat=True)[:50])
        return ", ".join(map(str, ids)) or "—"

    @admin.action(description="Cancel selected jobs")
    def cancel_jobs(self, request, queryset):
        cancelled = 0
        for job in queryset:
            try:
                services.cancel_job(job=job, actor=request.user, via="admin")
                cancelled += 1
            except TransitionRefused:
                pass
        self.message_user(request, f"Cancel requested for {cancelled} jobs.", messages.SUCCESS)

    @admin.action(description="Retry selected jobs (a new job each, same kind and parameters)")
    def retry_jobs(self, request, queryset):
        new = [services.retry_job(job=job, owner=request.user, via="admin").pk
               for job in queryset]
        self.message_user(request, f"Submitted {len(new)} new jobs: "
                          f"{', '.join(map(str, new[:20]))}.", messages.SUCCESS)


@admin.register(Attempt)
class AttemptAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    """Every attempt of every job, where and how it ran: read-only (the state machine owns it)."""

    list_display = ["job", "number", "state", "node", "worker", "created_at", "started_at",
                    "finished_at"]
    list_filter = ["state", "node"]
    list_select_related = ["job"]
    search_fields = ["=job__id", "node", "worker", "error"]
    exclude = ["token"]
    show_full_result_count = False


# Teams are registered here, beside the jobs they hold: their page counts those jobs, and a
# quota saved lets waiting jobs in at once.
class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


@admin.register(Team)
class TeamAdmin(AuditedAdmin, admin.ModelAdmin):
    """Teams and their quotas: a change takes effect on the next admission pass."""

    list_display = ["name", "title", "max_running_jobs", "max_cpus", "max_gpus", "share",
                    "members_count", "pending", "running"]
    search_fields = ["name", "title", "members__username"]
    fieldsets = [(None, {"fields": ["name", "title"]}),
                 ("Quota and fair share", {"fields": ["max_running_jobs", "max_cpus",
                                                      "max_gpus", "share"]})]
    inlines = [MembershipInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_members=Count("memberships"))

    @admin.display(description="members", ordering="n_members")
    def members_count(self, team):
        return team.n_members

    # Per team on the page (few), each an indexed count, not a join over every job.
    @admin.display(description="waiting for admission")
    def pending(self, team):
        return Job.objects.filter(admission.waiting(), team=team).count()

    @admin.display(description="queued or running")
    def running(self, team):
        return Job.objects.filter(team=team, state__in=admission.HELD).count()

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        admission.admit_on_commit()  # a larger quota lets waiting jobs in at once
