"""GET /api/v1/audit/: the audit trail for staff, newest first."""

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.generics import ListAPIView
from rest_framework.permissions import IsAdminUser

from audit.models import AuditEntry
from common.pagination import NewestFirst


class AuditEntrySerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor.username", read_only=True, allow_null=True,
                                  help_text="The user's name; null for the system.")

    class Meta:
        model = AuditEntry
        fields = ["id", "at", "actor", "action", "target_type", "target_id", "target_repr",
                  "via", "detail"]
        read_only_fields = fields


FILTERS = {"action": "action", "target_type": "target_type", "target_id": "target_id",
           "actor": "actor__username"}


@extend_schema_view(get=extend_schema(
    description="Staff only: who changed what, newest first (cursor-paginated).",
    parameters=[
        OpenApiParameter("action", str, description='exactly, e.g. "job.cancel"'),
        OpenApiParameter("target_type", str, description='e.g. "job", "node"'),
        OpenApiParameter("target_id", str, description="the target's primary key"),
        OpenApiParameter("actor", str, description="the acting user's username"),
    ]))
class AuditList(ListAPIView):
    permission_classes = [IsAdminUser]
    serializer_class = AuditEntrySerializer
    pagination_class = NewestFirst

    def get_queryset(self):
        entries = AuditEntry.objects.select_related("actor")
        for param, lookup in FILTERS.items():
            value = self.request.query_params.get(param)
            if value:
                entries = entries.filter(**{lookup: value})
        return entries
