"""Cron expressions: five fields (minute hour day-of-month month day-of-week), read in UTC."""

from __future__ import annotations

from datetime import UTC, datetime

from croniter import CroniterBadDateError, croniter
from django.core.exceptions import ValidationError

HELP = "minute hour day-of-month month day-of-week, in UTC: 0 3 * * * is 03:00 every day"
# The `cron` column's width (schedules.models.Schedule.cron).
MAX_LENGTH = 100


def cron_errors(expression) -> list[str]:
    """What is wrong with a cron expression (nothing: an empty list)."""
    if not isinstance(expression, str):
        return ["must be a string"]
    if not expression.strip():
        return ["is required"]
    if len(expression) > MAX_LENGTH:
        return [f"must be at most {MAX_LENGTH} characters, not {len(expression)}"]
    fields = expression.split()
    if len(fields) != 5:
        return [f"must have 5 fields (minute hour day-of-month month day-of-week), not "
                f"{len(fields)}"]
    if not croniter.is_valid(expression):
        return ["is not a valid cron expression"]
    try:
        next_after(expression, datetime(2000, 1, 1, tzinfo=UTC))
    except CroniterBadDateError:
        return ["never matches a date"]
    return []


def shortest_interval_s(expression: str, runs: int = 200) -> float:
    """The shortest time between two of the expression's runs over its next `runs` (from a
    fixed moment, so the answer does not depend on the day it is asked)."""
    times = croniter(" ".join(expression.split()), datetime(2000, 1, 1, tzinfo=UTC))
    moments = [times.get_next(datetime) for _ in range(runs)]
    return min((b - a).total_seconds() for a, b in zip(moments, moments[1:], strict=False))


def interval_errors(expression: str, minimum_s: float) -> list[str]:
    """A valid expression that runs more often than every `minimum_s` seconds is refused."""
    if minimum_s > 60 and shortest_interval_s(expression) < minimum_s:
        return [f"runs more often than every {minimum_s:g} seconds, the shortest interval "
                "this portal allows"]
    return []


def validate_cron(expression) -> None:
    """A model field validator."""
    errors = cron_errors(expression)
    if errors:
        raise ValidationError(errors)


def next_after(expression: str, moment: datetime) -> datetime:
    """The first time the expression names strictly after `moment`, in UTC."""
    start = moment.astimezone(UTC)
    return croniter(" ".join(expression.split()), start).get_next(datetime)
