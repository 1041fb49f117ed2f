from django.contrib import admin, messages

from jobs import services
from jobs.models import Attempt, Job, Node
from jobs.states import TransitionRefused


class AttemptInline(admin.TabularInline):
    model = Attempt
    extra = 0
    can_delete = False
    readonly_fields = ["number", "state", "node", "worker", "created_at", "started_at",
                       "finished_at", "error"]
    exclude = ["token"]


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "kind", "owner", "state", "progress", "attempt", "node",
                    "queue", "created_at"]
    list_filter = ["state", "kind", "queue"]
    search_fields = ["=id", "name", "kind", "owner__username"]
    inlines = [AttemptInline]
    actions = ["cancel_jobs"]
    # The state machine owns these: the admin shows them and changes them only through actions.
    readonly_fields = [f.name for f in Job._meta.fields if f.name not in {"name", "priority"}]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Cancel selected jobs")
    def cancel_jobs(self, request, queryset):
        cancelled = 0
        for job in queryset:
            try:
                services.cancel_job(job=job)
                cancelled += 1
            except TransitionRefused:
                pass
        self.message_user(request, f"Cancel requested for {cancelled} jobs.", messages.SUCCESS)


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "state", "running", "concurrency", "last_heartbeat"]
    list_filter = ["state"]
    readonly_fields = ["name", "state", "worker", "queues", "concurrency", "running",
                       "utilization", "first_seen", "last_heartbeat"]
    actions = ["drain", "undrain"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Drain: finish running jobs, take no new ones")
    def drain(self, request, queryset):
        for node in queryset:
            services.drain_node(node=node, draining=True)
        self.message_user(request, f"Draining {queryset.count()} nodes.", messages.SUCCESS)

    @admin.action(description="Undrain: take jobs again")
    def undrain(self, request, queryset):
        for node in queryset:
            services.drain_node(node=node, draining=False)
        self.message_user(request, f"{queryset.count()} nodes take jobs again.",
                          messages.SUCCESS)
