"""Query-string parameters of the REST API: a whole number, a point in time (ISO 8601, or a
window back from now). A bad one is a 400 naming it."""

from datetime import UTC, timedelta

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.exceptions import ValidationError


def int_param(params, name: str, default: int) -> int:
    try:
        return int(params.get(name, default))
    except ValueError:
        raise ValidationError({name: ["must be a whole number"]}) from None


def since_param(params):
    if "since" in params:
        try:
            since = parse_datetime(params["since"])
            # In UTC: PostgreSQL takes offsets up to 15:59 only (Python up to 23:59).
            since = since and (since.astimezone(UTC) if since.tzinfo
                               else since.replace(tzinfo=UTC))
        except (ValueError, OverflowError):  # month 13, an offset of 99 h, before year 1
            since = None
        if since is None:
            raise ValidationError({"since": ["must be an ISO 8601 date and time"]})
        return since
    window = int_param(params, "window", 900)
    if not 1 <= window <= 365 * 86400:
        raise ValidationError({"window": ["must be between 1 and 31536000 seconds"]})
    return timezone.now() - timedelta(seconds=window)
