"""Reads, filtered by what the asking user may see. This is the one place that rule lives:
pages, the REST API and the websocket groups all ask here."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Count, Min, Prefetch, Q, QuerySet
from django.db.models.functions import TruncMinute
from django.utils import timezone

from accounts import teams
from audit import feed as cluster_feed
from audit.models import FeedEvent
from jobs.broadcast import team_group
from jobs.models import TERMINAL, Artifact, Attempt, Job, JobState, LogLine, MetricPoint
from nodes.models import Node
from workers import wire

LOG_PAGE = 1000
JOB_COLUMNS = [field.name for field in Job._meta.concrete_fields]


def visible_jobs(user) -> QuerySet[Job]:
    """The jobs of the user's teams (any role); staff see all. Anything else is as unknown as
    a job that does not exist."""
    if not user or not user.is_authenticated or not user.is_active:
        return Job.objects.none()
    if user.is_staff:
        return Job.objects.all()
    return Job.objects.filter(team_id__in=teams.team_ids(user))


def job_for(user, job_id) -> Job | None:
    try:
        job_id = int(job_id)
    except (TypeError, ValueError):
        return None
    return visible_jobs(user).select_related("owner", "team").filter(pk=job_id).first()


def job_list(user, *, state: str | None = None, kind: str | None = None,
             q: str | None = None, parent: int | None = None) -> QuerySet[Job]:
    """Jobs as submitted (a fan-out's partitions are listed under their parent: parent=ID)."""
    jobs = (visible_jobs(user).select_related("owner", "team")
            # The owner's and team's names, not whole rows; of `after`, the ids.
            .only(*JOB_COLUMNS, "owner__username", "team__name")
            .prefetch_related(Prefetch("after", queryset=Job.objects.only("id")))
            .filter(parent_id=parent))
    if state:
        jobs = jobs.filter(state=state)
    if kind:
        jobs = jobs.filter(kind=kind)
    if q:
        jobs = jobs.filter(name__icontains=q)
    return jobs.order_by("-id")


def job_artifacts(job: Job) -> list[Artifact]:
    """The job's files, from its latest attempt that made each name."""
    latest: dict[str, Artifact] = {}
    for artifact in Artifact.objects.filter(job=job).order_by("attempt"):
        latest[artifact.name] = artifact
    return sorted(latest.values(), key=lambda a: a.name)


def job_logs(job: Job, *, after: int = 0, limit: int = LOG_PAGE,
             rank: int | None = None) -> list[LogLine]:
    """A job's log lines in the order they came (a gang's ranks merged, or one rank's)."""
    lines = LogLine.objects.filter(job=job, id__gt=after)
    if rank is not None:
        lines = lines.filter(rank=rank)
    return list(lines.order_by("id")[:limit])


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
    if not user or not user.is_authenticated or not user.is_active:
        return []
    if user.is_staff:
        return [wire.STAFF_JOBS]
    # A user in no team has none: their first job makes them one, and the next access check
    # of an open socket (WS_ACCESS_RECHECK_S) finds it.
    return [team_group(t) for t in teams.team_ids(user)]


def job_group(job_id: int) -> str:
    return wire.job_group(job_id)


def node_attempts(user, node: Node, *, limit: int = 50) -> list[Attempt]:
    """The attempts that ran on a node, newest first, of the jobs this user may see."""
    return list(Attempt.objects.filter(node=node.name, job__in=visible_jobs(user))
                .select_related("job").order_by("-created_at", "-id")[:limit])


def feed(user) -> QuerySet[FeedEvent]:
    """The cluster's feed as this user may read it, newest first: the events of their teams'
    jobs (staff: every job's) and every node's."""
    if not user or not user.is_authenticated or not user.is_active:
        return FeedEvent.objects.none()
    return cluster_feed.visible(None if user.is_staff else teams.team_ids(user)).order_by("-id")


def node_jobs(user, nodes: list[dict]) -> None:
    """Each node (a dict with its `name` and `running`, the slots its heartbeat says are busy)
    gets `jobs`: the running jobs on it that this user may see ({"id", "name", "slots"},
    oldest first; a gang's on each of its nodes), and `other_jobs`: the busy slots left, which
    run what the user may not see."""
    on: dict[str, list[dict]] = {node["name"]: [] for node in nodes}
    running = (visible_jobs(user).filter(state=JobState.RUNNING).exclude(node="")
               .order_by("id").values("id", "name", "kind", "node", "slots_per_node"))
    for job in running[:5000]:
        for name in job["node"].split("+"):  # a gang's nodes, as placed
            if name in on:
                on[name].append({"id": str(job["id"]), "name": job["name"] or job["kind"],
                                 "slots": job["slots_per_node"]})
    for node in nodes:
        node["jobs"] = on[node["name"]]
        node["other_jobs"] = max(0, (node.get("running") or 0)
                                 - sum(job["slots"] for job in node["jobs"]))


ACTIVE = (JobState.PENDING, JobState.QUEUED, JobState.RUNNING)
FINISHED_WINDOW = timedelta(hours=1)


def cluster_summary(now=None) -> dict:
    """What the whole cluster is doing, in aggregates only (no job of anyone in particular):
    jobs by state (active ones, and those finished in the last hour) and jobs finished per
    minute over the last hour, counted as the job list shows them (jobs as submitted: a
    fan-out's partitions and a sweep's trials are their parent's), and the depth and oldest
    wait of each queue, where every partition is work waiting or running. Two indexed
    queries."""
    now = now or timezone.now()
    by_state = {state: 0 for state in JobState.values}
    queues: dict[str, dict] = {name: {"name": name, "pending": 0, "queued": 0, "running": 0,
                                      "oldest_wait_s": None} for name in settings.JOB_QUEUES}
    active = (Job.objects.filter(state__in=ACTIVE).values("state", "queue")
              .annotate(n=Count("id"), listed=Count("id", filter=Q(parent__isnull=True)),
                        oldest=Min("created_at")).order_by())
    for row in active:
        by_state[row["state"]] += row["listed"]
        queue = queues.setdefault(row["queue"], {"name": row["queue"], "pending": 0,
                                                 "queued": 0, "running": 0,
                                                 "oldest_wait_s": None})
        queue[row["state"]] = row["n"]
        if row["state"] != JobState.RUNNING:
            wait = round((now - row["oldest"]).total_seconds(), 1)
            queue["oldest_wait_s"] = max(queue["oldest_wait_s"] or 0, wait)
    start = (now - FINISHED_WINDOW).replace(second=0, microsecond=0)
    finished = (Job.objects.filter(finished_at__gte=start, state__in=TERMINAL,
                                   parent__isnull=True)
                .annotate(minute=TruncMinute("finished_at")).values("minute", "state")
                .annotate(n=Count("id")).order_by())
    minutes = [start + timedelta(minutes=i) for i in range(61)]
    per_minute = {state: [0] * len(minutes) for state in TERMINAL}
    for row in finished:
        by_state[row["state"]] += row["n"]
        index = int((row["minute"] - start).total_seconds() // 60)
        if 0 <= index < len(minutes):
            per_minute[row["state"]][index] += row["n"]
    return {
        "at": now.isoformat(),
        "jobs_by_state": by_state,
        "queues": list(queues.values()),
        "finished_per_minute": {"t": [m.isoformat() for m in minutes],
                                **{str(state): counts for state, counts in per_minute.items()}},
    }


def team_load(team_ids: list[int]) -> tuple[dict[int, dict], dict[int, int]]:
    """What each team's queued and running jobs hold, and how many of its jobs wait for
    admission (the teams page and GET /api/v1/teams/ show them; accounts asks through
    accounts.teams.provide_job_load)."""
    from jobs import admission

    usage, *_ = admission.held()
    waiting = dict(Job.objects.filter(admission.waiting(), team_id__in=team_ids)
                   .values_list("team_id").annotate(n=Count("id")).order_by())
    return {team_id: usage[team_id] for team_id in team_ids if team_id in usage}, waiting


def cancelled_by(job: Job):
    """Who asked for the job's cancel, from the audit trail; None when nobody did (a failed
    dependency, or no cancel at all)."""
    from audit.models import AuditEntry

    entry = (AuditEntry.objects.filter(action="job.cancel", target_type="job",
                                       target_id=str(job.pk))
             .select_related("actor").order_by("-id").first())
    return entry.actor if entry else None
