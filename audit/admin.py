from django.contrib import admin
from django.db import router, transaction

from audit.log import entry, record
from audit.models import AuditEntry


class ReadOnlyAdmin:
    """An admin mixin for what only the system writes (the trail, attempts): shown, never
    added, changed or deleted by hand."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    """The trail is written by the code that makes changes; here it is only read."""

    list_display = ["at", "who", "action", "target_type", "target_id", "target_repr", "via"]
    list_filter = ["action", "via", "target_type"]
    search_fields = ["actor__username", "=target_id", "target_repr"]
    date_hierarchy = "at"
    list_select_related = ["actor"]
    readonly_fields = [f.name for f in AuditEntry._meta.fields]

    @admin.display(description="actor", ordering="actor__username")
    def who(self, entry):
        return entry.actor.get_username() if entry.actor else "system"


def inline_changes(formsets) -> list[dict]:
    """What saved inline formsets added, changed and deleted (after formset.save())."""
    changes = []
    for formset in formsets:
        added = [str(obj.pk) for obj in getattr(formset, "new_objects", [])]
        changed = [{"id": str(obj.pk), "fields": list(fields)}
                   for obj, fields in getattr(formset, "changed_objects", [])]
        deleted = [str(obj) for obj in getattr(formset, "deleted_objects", [])]
        if added or changed or deleted:
            changes.append({"model": formset.model._meta.model_name, "added": added,
                            "changed": changed, "deleted": deleted})
    return changes


class AuditedAdmin:
    """A ModelAdmin mixin (put it first: `class FooAdmin(AuditedAdmin, admin.ModelAdmin)`) that
    puts admin saves and deletes in the audit trail: "<model>.change" with the changed fields
    (and `"created": true` for a new object, `"inlines"` for inline changes), "<model>.delete".
    Each entry is written in the admin's transaction. An admin whose save_model or
    delete_model does not call super() (say, one that goes through a service that records its
    own entry) records nothing there."""

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        detail = {"fields": list(form.changed_data) if form is not None else []}
        if not change:
            detail["created"] = True
        item = record(request.user, f"{obj._meta.model_name}.change", obj, via="admin",
                      **detail)
        if form is not None:
            form._audit_entry = item  # a form lives for one request: save_related finds it

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        item = getattr(form, "_audit_entry", None)
        inlines = inline_changes(formsets or [])
        if item is not None and inlines:
            item.detail["inlines"] = inlines
            item.save(update_fields=["detail"])

    def delete_model(self, request, obj):
        item = entry(request.user, f"{obj._meta.model_name}.delete", obj, via="admin")
        super().delete_model(request, obj)
        item.save()

    def delete_queryset(self, request, queryset):
        # The changelist's "delete selected" runs outside a transaction: this one holds both.
        with transaction.atomic(using=router.db_for_write(queryset.model)):
            items = [entry(request.user, f"{obj._meta.model_name}.delete", obj, via="admin")
                     for obj in queryset]
            super().delete_queryset(request, queryset)
            AuditEntry.objects.bulk_create(items)
