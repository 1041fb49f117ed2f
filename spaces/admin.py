from django import forms
from django.contrib import admin

from audit.admin import AuditedAdmin
from spaces.models import DataGrant
from spaces.selectors import forget_dispatch_cache
from spaces.services import GrantRefused, clean_target


class DataGrantForm(forms.ModelForm):
    class Meta:
        model = DataGrant
        fields = ["team", "grantee", "kind", "target"]

    def clean(self):
        values = super().clean()
        if values.get("kind") and values.get("target") is not None:
            try:
                values["target"] = clean_target(values["kind"], values["target"])
            except GrantRefused as exc:
                for field, messages in exc.errors.items():
                    self.add_error(field, messages)
        if values.get("team") and values.get("team") == values.get("grantee"):
            self.add_error("grantee", "a team always reads its own data")
        return values


@admin.register(DataGrant)
class DataGrantAdmin(AuditedAdmin, admin.ModelAdmin):
    """Grants given here are audited like every admin change ("datagrant.change")."""

    form = DataGrantForm
    list_display = ["team", "grantee", "kind", "target", "created_by", "created_at"]
    list_filter = ["kind"]
    search_fields = ["team__name", "grantee__name", "target"]
    readonly_fields = ["created_by", "created_at"]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
        forget_dispatch_cache()

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        forget_dispatch_cache()

    def delete_queryset(self, request, queryset):
        super().delete_queryset(request, queryset)
        forget_dispatch_cache()
