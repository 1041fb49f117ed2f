"""GET /api/v1/usage/: what the cluster was used for, grouped, as JSON or CSV."""

from __future__ import annotations

import csv
import io

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
)
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from usage import selectors

FORMATS = ("json", "csv")
MAX_DAYS = 3660


class CsvRenderer(BaseRenderer):
    """The report's rows, one line each, with a header; an error as field,message lines."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        if isinstance(data, dict) and "rows" in data:
            columns = [c for c in selectors.COLUMNS
                       if any(c in row for row in data["rows"]) or c in data["group_by"]]
            writer.writerow(columns)
            for row in data["rows"]:
                writer.writerow([row.get(c, "") for c in columns])
        else:
            writer.writerow(["field", "error"])
            for field, errors in (data or {}).items():
                for error in errors if isinstance(errors, list) else [errors]:
                    writer.writerow([field, error])
        return buffer.getvalue().encode()


def parse_query(params) -> dict:
    """since, until and group_by from the query, or a 400 naming the field."""
    now = timezone.now()
    since = selectors.parse_day(params.get("since", f"{selectors.DEFAULT_DAYS}d"), now)
    if since is None:
        raise ValidationError({"since": ["must be like 7d, 12h, 2w or an ISO date"]})
    until = selectors.parse_day(params["until"], now) if "until" in params else now.date()
    if until is None:
        raise ValidationError({"until": ["must be like 7d, 12h, 2w or an ISO date"]})
    if until < since:
        raise ValidationError({"until": ["must not be before since"]})
    if (until - since).days > MAX_DAYS:
        raise ValidationError({"since": [f"at most {MAX_DAYS} days before until"]})
    group_by = [g.strip() for g in params.get("group_by", "team").split(",") if g.strip()]
    bad = [g for g in group_by if g not in selectors.GROUPS]
    if bad or not group_by or len(set(group_by)) != len(group_by):
        raise ValidationError({"group_by": [
            f"must be one or more of {', '.join(selectors.GROUPS)}, comma-separated, each "
            "once"]})
    return {"since": since, "until": until, "group_by": group_by}


class UsageReport(APIView):
    renderer_classes = [JSONRenderer, CsvRenderer]

    def perform_content_negotiation(self, request, force=False):
        fmt = request.query_params.get("format")
        if not force and fmt is not None and fmt not in FORMATS:
            raise ValidationError({"format": ["must be json or csv"]})
        return super().perform_content_negotiation(request, force)

    @extend_schema(
        parameters=[
            OpenApiParameter("since", OpenApiTypes.STR, description="first day: 7d, 12h, 2w "
                             "back from now, or an ISO date (default 30d)"),
            OpenApiParameter("until", OpenApiTypes.STR, description="last day, same forms "
                             "(default today)"),
            OpenApiParameter("group_by", OpenApiTypes.STR, description="team, user, kind, "
                             "queue, day, or several comma-separated (default team)"),
            OpenApiParameter("format", OpenApiTypes.STR, enum=list(FORMATS))],
        responses=OpenApiTypes.OBJECT)
    def get(self, request):
        """Usage of the attempts that ended in the period, for the teams you may see."""
        report = selectors.report(request.user, **parse_query(request.query_params))
        headers = {}
        if request.accepted_renderer.format == "csv":
            headers["Content-Disposition"] = (
                f'attachment; filename="usage-{report["since"]}-{report["until"]}.csv"')
        return Response(report, headers=headers)
