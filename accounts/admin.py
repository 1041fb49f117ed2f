from django.contrib import admin
from django.db.models import Count

from accounts.models import ApiToken, Membership, Team
from audit.admin import AuditedAdmin
from jobs import admission
from jobs.models import Job


@admin.register(ApiToken)
class ApiTokenAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ["user", "name", "prefix", "created_at", "last_used_at", "revoked_at"]
    search_fields = ["user__username", "name", "prefix"]
    readonly_fields = ["prefix", "key_hash", "created_at", "last_used_at"]


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


@admin.register(Membership)
class MembershipAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ["team", "user", "role"]
    list_filter = ["role", "team"]
    search_fields = ["team__name", "user__username"]
    autocomplete_fields = ["user", "team"]
