"""Reads, filtered by what the asking user may see. This is the one place that rule lives:
pages, the REST API and the websocket groups all ask here."""

from __future__ import annotations

from django.db.models import QuerySet

from jobs.models import Job, LogLine, MetricPoint, Node

LOG_PAGE = 1000


def visible_jobs(user) -> QuerySet[Job]:
    if not user or not user.is_authenticated or not user.is_active:
        return Job.objects.none()
    if user.is_staff:
        return Job.objects.all()
    return Job.objects.filter(owner=user)


def job_for(user, job_id) -> Job | None:
    try:
        job_id = int(job_id)
    except (TypeError, ValueError):
        return None
    return visible_jobs(user).select_related("owner").filter(pk=job_id).first()


def job_list(user, *, state: str | None = None, kind: str | None = None,
             q: str | None = None) -> QuerySet[Job]:
    jobs = visible_jobs(user).select_related("owner")
    if state:
        jobs = jobs.filter(state=state)
    if kind:
        jobs = jobs.filter(kind=kind)
    if q:
        jobs = jobs.filter(name__icontains=q)
    return jobs.order_by("-id")


def job_logs(job: Job, *, after: int = 0, limit: int = LOG_PAGE) -> list[LogLine]:
    return list(LogLine.objects.filter(job=job, id__gt=after).order_by("id")[:limit])


def job_log_tail(job: Job, *, limit: int = 200) -> list[LogLine]:
    lines = LogLine.objects.filter(job=job).order_by("-id")[:limit]
    return list(reversed(lines))


def job_metrics(job: Job, *, limit: int = 5000) -> dict[str, list[dict]]:
    series: dict[str, list[dict]] = {}
    points = MetricPoint.objects.filter(job=job, attempt=job.attempt).order_by("name", "step")
    for point in points[:limit]:
        series.setdefault(point.name, []).append({"step": point.step, "value": point.value})
    return series


def job_groups(user) -> list[str]:
    """The websocket groups that carry the job updates this user may see."""
    if not user or not user.is_authenticated:
        return []
    return ["jobs-staff"] if user.is_staff else [f"jobs-owner-{user.pk}"]


def job_group(job_id: int) -> str:
    return f"job-{job_id}"


def nodes() -> QuerySet[Node]:
    return Node.objects.order_by("name")
