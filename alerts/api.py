"""GET /api/v1/alerts/: incidents for staff, the same dicts the dashboard gets live."""

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from alerts.models import Alert

PAGE = 200
STATES = {"firing": {"resolved_at__isnull": True}, "resolved": {"resolved_at__isnull": False},
          "all": {}}


class AlertList(APIView):
    """Staff only: firing (the default), resolved or all incidents, newest first, at most 200."""

    permission_classes = [IsAdminUser]

    @extend_schema(
        parameters=[OpenApiParameter("state", str, enum=list(STATES), default="firing")],
        responses=inline_serializer("Alert", {
            "id": serializers.IntegerField(), "rule": serializers.CharField(),
            "kind": serializers.CharField(), "subject": serializers.CharField(),
            "message": serializers.CharField(), "fired_at": serializers.DateTimeField(),
            "resolved_at": serializers.DateTimeField(allow_null=True)}, many=True))
    def get(self, request):
        state = request.query_params.get("state", "firing")
        if state not in STATES:
            raise ValidationError({"state": [f"must be one of {', '.join(STATES)}"]})
        alerts = Alert.objects.filter(**STATES[state]).select_related("rule").order_by("-id")
        return Response([alert.as_dict() for alert in alerts[:PAGE]])
