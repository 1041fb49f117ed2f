"""Which schedules a user sees (those of their teams; staff: all) and may change."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.teams import can_act, team_ids
from schedules.models import Schedule


def visible_schedules(user) -> QuerySet[Schedule]:
    if not user or not user.is_authenticated or not user.is_active:
        return Schedule.objects.none()
    schedules = Schedule.objects.select_related("team", "owner", "last_job")
    if user.is_staff:
        return schedules.all()
    return schedules.filter(team_id__in=team_ids(user))


def schedule_for(user, schedule_id) -> Schedule | None:
    """A schedule the user sees, or None (no such schedule, or another team's)."""
    try:
        schedule_id = int(schedule_id)
    except (TypeError, ValueError):
        return None
    if not 0 < schedule_id < 2**63:
        return None
    return visible_schedules(user).filter(pk=schedule_id).first()


def can_edit(user, schedule: Schedule) -> bool:
    """Members and admins of the schedule's team (and staff) change it; viewers only see it."""
    return can_act(user, schedule.team_id)
