from django.contrib import admin, messages

from audit.admin import AuditedAdmin
from nodes import services
from nodes.models import Node


@admin.register(Node)
class NodeAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ["name", "state", "running", "concurrency", "labels", "last_heartbeat"]
    list_filter = ["state"]
    search_fields = ["name"]
    readonly_fields = ["name", "state", "worker", "queues", "labels", "concurrency", "running",
                       "utilization", "reserved", "first_seen", "last_heartbeat"]
    actions = ["drain", "undrain"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Drain: finish running jobs, take no new ones")
    def drain(self, request, queryset):
        for node in queryset:
            services.drain_node(node=node, draining=True, actor=request.user, via="admin")
        self.message_user(request, f"Draining {queryset.count()} nodes.", messages.SUCCESS)

    @admin.action(description="Undrain: take jobs again")
    def undrain(self, request, queryset):
        for node in queryset:
            services.drain_node(node=node, draining=False, actor=request.user, via="admin")
        self.message_user(request, f"{queryset.count()} nodes take jobs again.",
                          messages.SUCCESS)
