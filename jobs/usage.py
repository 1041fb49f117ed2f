"""What an ended attempt used, read from its rows for the usage app (usage.services.record),
in the lifecycle's transaction that ended it."""

from __future__ import annotations

from jobs.models import TERMINAL, Attempt
from usage import services as usage


def record_ended(attempts: list[tuple[int, str]], *, outcome: str | None = None) -> int:
    """Usage rows for these ended attempts, each named by (job id, attempt token), as their
    rows now are; an attempt that never started used nothing and gets none. `outcome`
    overrides the attempt's own state (a preemption ends it cancelled). Returns rows made."""
    if not attempts:
        return 0
    wanted = set(attempts)
    rows = (Attempt.objects.filter(job_id__in={job_id for job_id, _ in wanted},
                                   token__in={token for _, token in wanted})
            .values("job_id", "number", "token", "state", "node", "created_at", "started_at",
                    "finished_at", "job__team_id", "job__owner__username", "job__kind",
                    "job__queue", "job__cpus", "job__gpus", "job__state", "job__attempt",
                    "job__started_at"))
    made = []
    for row in rows:
        if (row["job_id"], row["token"]) not in wanted:
            continue
        started = row["started_at"] or row["job__started_at"]
        finished = row["finished_at"]
        if started is None or finished is None:
            continue
        wall = max((finished - started).total_seconds(), 0.0)
        made.append(dict(
            job_id=row["job_id"], attempt=row["number"], team_id=row["job__team_id"],
            user=row["job__owner__username"], kind=row["job__kind"], queue=row["job__queue"],
            node=row["node"], outcome=outcome or row["state"],
            final=(row["job__state"] in TERMINAL and row["job__attempt"] == row["number"]),
            cpus=row["job__cpus"], gpus=row["job__gpus"], created_at=row["created_at"],
            started_at=started, finished_at=finished, wall_s=wall,
            core_s=wall * row["job__cpus"], gpu_s=wall * row["job__gpus"],
            wait_s=max((started - row["created_at"]).total_seconds(), 0.0)))
    return usage.record(made)
