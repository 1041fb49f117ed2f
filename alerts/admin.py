from django.contrib import admin, messages
from django.db import models, transaction
from django.utils import timezone

from alerts.evaluate import resolve_alert
from alerts.models import Alert, AlertRule
from audit.admin import AuditedAdmin
from audit.log import record_many
from jobs.broadcast import Outbox


@admin.register(AlertRule)
class AlertRuleAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ["name", "kind", "enabled", "threshold_minutes", "email_to", "webhook_url"]
    list_filter = ["kind", "enabled"]
    search_fields = ["name"]
    readonly_fields = ["created_at"]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}


class StateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("firing", "Firing"), ("resolved", "Resolved")]

    def queryset(self, request, queryset):
        if self.value() in {"firing", "resolved"}:
            return queryset.filter(resolved_at__isnull=self.value() == "firing")
        return queryset


@admin.register(Alert)
class AlertAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ["subject", "rule", "fired_at", "resolved_at", "notified_at"]
    list_filter = [StateFilter, "rule"]
    search_fields = ["subject", "message"]
    actions = ["resolve"]
    # The reconciler owns incidents: people read them and may only close them (the action).
    readonly_fields = [f.name for f in Alert._meta.fields]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Resolve selected", permissions=["change"])
    def resolve(self, request, queryset):
        """Closes incidents by hand (a rule that will not clear by itself); a condition that still
        holds opens a new incident on the reconciler's next pass."""
        now = timezone.now()
        outbox = Outbox()
        with transaction.atomic():
            resolved = [alert for alert in queryset.filter(resolved_at__isnull=True)
                        .select_related("rule") if resolve_alert(alert, now, outbox)]
            record_many(request.user, "alert.resolve", resolved, via="admin")
            outbox.publish_on_commit()
        self.message_user(request, f"Resolved {len(resolved)} alerts.", messages.SUCCESS)
