"""Jobs that wait for others (after-ok): pending and blocked until every job they wait for
succeeded, then up for admission; cancelled, saying which one, as soon as one of them failed
or was cancelled.

Whatever ends a job (the ingester, a cancel, the reconciler) calls after_ended once its
transaction commits; the reconciler also settles every waiting job on each pass, so a crash
between the two loses nothing.
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from jobs import admission, lifecycle
from jobs.models import TERMINAL, Job, JobState

BATCH = 500


def after_ended(job_ids) -> None:
    """Jobs ended: those that waited for them may move on."""
    waiting = (Job.objects.filter(after__in=list(job_ids), state=JobState.PENDING,
                                blocked=True)
               .values_list("pk", flat=True).distinct())
    settle(list(waiting[:BATCH]))


def settle(job_ids) -> None:
    unblocked = False
    now = timezone.now()
    with transaction.atomic():
        for job in Job.objects.filter(pk__in=list(job_ids), state=JobState.PENDING, blocked=True,
                                      after__isnull=False).distinct():
            others = dict(job.after.values_list("pk", "state"))
            broken = sorted((pk, state) for pk, state in others.items()
                            if state in (JobState.FAILED, JobState.CANCELLED))
            if broken:
                pk, state = broken[0]
                lifecycle.skip(job, f"cancelled: job {pk} {state}", now)
            elif all(state == JobState.SUCCEEDED for state in others.values()):
                unblocked = lifecycle.unblock(job) or unblocked
        if unblocked:  # after their "pending" went out, so it goes before their "queued"
            admission.admit()


def settle_all() -> None:
    """The reconciler's pass: every waiting job whose jobs have all ended or one failed."""
    waiting = (Job.objects.filter(state=JobState.PENDING, blocked=True, after__isnull=False)
               .exclude(after__state__in=[s for s in JobState.values if s not in TERMINAL])
               .values_list("pk", flat=True).distinct())
    broken = (Job.objects.filter(state=JobState.PENDING, blocked=True,
                                 after__state__in=[JobState.FAILED, JobState.CANCELLED])
              .values_list("pk", flat=True).distinct())
    settle(set(waiting[:BATCH]) | set(broken[:BATCH]))
