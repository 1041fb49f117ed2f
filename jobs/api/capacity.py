"""POST /api/v1/capacity/plan/: what a workload needs, from the portal's measured history."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs import planner

MAX_WINDOW_S = 366 * 24 * 3600
MAX_SIZE = 1e15


def positive(body: dict, name: str, *, most: float, whole: bool = False) -> float:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            0 < value <= most) or (whole and value != int(value)):
        raise ValidationError({name: [f"must be a {'whole ' if whole else ''}number above 0 "
                                      f"and at most {most:g}"]})
    return value


class CapacityPlan(APIView):
    @extend_schema(
        request=inline_serializer("CapacityPlanRequest", {
            "kind": serializers.CharField(),
            "rows": serializers.FloatField(required=False, help_text="rows to load (row "
                                           "kinds) or jobs to run (other kinds)"),
            "jobs": serializers.FloatField(required=False, help_text="for kinds measured "
                                           "in jobs: the same as rows"),
            "window_s": serializers.FloatField(),
            "partitions": serializers.IntegerField(required=False)}),
        responses=OpenApiTypes.OBJECT,
        examples=[OpenApiExample("800 million clickstream events in six hours", request_only=True,
                                 value={"kind": "etl.clickstream", "rows": 800_000_000,
                                        "window_s": 21_600})])
    def post(self, request):
        """Slots and nodes a workload needs to finish inside a window, from measured history."""
        body = request.data if isinstance(request.data, dict) else {}
        if not isinstance(body.get("kind"), str) or not body["kind"]:
            raise ValidationError({"kind": ["required: a kind's name"]})
        size_field = "jobs" if "jobs" in body and "rows" not in body else "rows"
        size = positive(body, size_field, most=MAX_SIZE)
        window = positive(body, "window_s", most=MAX_WINDOW_S)
        parts = (positive(body, "partitions", most=100_000, whole=True)
                 if body.get("partitions") is not None else None)
        try:
            answer = planner.plan(body["kind"], size, window,
                                  partitions=int(parts) if parts else None)
        except planner.PlanRefused as exc:
            raise ValidationError({exc.field: [str(exc)]}) from None
        return Response(answer)
