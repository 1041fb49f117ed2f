"""Turns the state of the cluster into incidents: one pass per reconciler pass.

Each enabled rule computes the keys it fires for now (one query per rule); a key that fires
without an open alert opens one, an open alert whose key stopped firing is resolved, and so is
every open alert of a rule that was disabled or deleted. A partial unique index allows one open
alert per rule and key, so two reconcilers at once cannot open the same incident twice.
Dashboards hear of it after the commit; notify.py tells people after the commit too.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import Min
from django.db.models.functions import Coalesce

from alerts import notify
from alerts.models import Alert, AlertRule, RuleKind
from jobs.broadcast import Outbox
from jobs.models import TERMINAL, Job, JobState
from nodes.models import Node, NodeState

GROUP = "alerts"
LIMIT = 1000  # firing keys per rule and pass: a storm of failures opens the newest ones


def job_label(job: Job) -> str:
    return f"job {job.pk} ({job.name or job.kind})"


def node_offline(rule: AlertRule, now) -> dict[str, tuple[str, str]]:
    firing = {}
    for node in Node.objects.filter(state=NodeState.OFFLINE)[:LIMIT]:
        since = (f"no heartbeat since {node.last_heartbeat:%H:%M:%S}" if node.last_heartbeat
                 else "no heartbeat")
        firing[f"node:{node.name}"] = (f"node {node.name} offline",
                                       f"node {node.name} offline: {since}")
    return firing


def job_failed(rule: AlertRule, now) -> dict[str, tuple[str, str]]:
    """A failure is an incident for threshold_minutes, then resolves by itself: nobody has to
    close it, and a retried job is a new job anyway."""
    since = now - timedelta(minutes=rule.threshold_minutes)
    jobs = (Job.objects.filter(state=JobState.FAILED, finished_at__gte=since)
            .only("id", "name", "kind", "error").order_by("-finished_at")[:LIMIT])
    firing = {}
    for job in jobs:
        error = (job.error.strip().splitlines() or ["no error given"])[0][:300]
        firing[f"job:{job.pk}"] = (f"{job_label(job)} failed", f"{job_label(job)} failed: {error}")
    return firing


def queue_wait(rule: AlertRule, now) -> dict[str, tuple[str, str]]:
    """The wait counts from the last time the job was put in the queue (dispatched_at): a job
    that goes back to the queue after its node was lost has not been waiting since submit."""
    cutoff = now - timedelta(minutes=rule.threshold_minutes)
    rows = (Job.objects.filter(state__in=[JobState.PENDING, JobState.QUEUED])
            .annotate(since=Coalesce("dispatched_at", "created_at"))
            .values("queue").annotate(oldest=Min("since")).filter(oldest__lt=cutoff)
            .order_by("queue"))
    firing = {}
    for row in rows:
        minutes = int((now - row["oldest"]).total_seconds() // 60)
        queue = row["queue"]
        firing[f"queue:{queue}"] = (f"queue {queue} waiting",
                                    f"queue {queue}: oldest job waited {minutes} min")
    return firing


def job_deadline(rule: AlertRule, now) -> dict[str, tuple[str, str]]:
    cutoff = now - timedelta(minutes=rule.threshold_minutes)
    jobs = (Job.objects.exclude(state__in=TERMINAL).filter(created_at__lt=cutoff)
            .only("id", "name", "kind").order_by("created_at")[:LIMIT])
    return {f"job:{job.pk}": (
        f"{job_label(job)} past its deadline",
        f"{job_label(job)} not finished {rule.threshold_minutes} min after submit")
        for job in jobs}


CHECKS = {
    RuleKind.NODE_OFFLINE: node_offline,
    RuleKind.JOB_FAILED: job_failed,
    RuleKind.QUEUE_WAIT: queue_wait,
    RuleKind.JOB_DEADLINE: job_deadline,
}


def event(alert: Alert, kind: str) -> dict:
    return {"type": kind, **alert.as_dict()}


def open_alert(rule: AlertRule, key: str, subject: str, message: str, now) -> Alert | None:
    """The new incident, or None when one is already open for this key (another reconciler
    opened it meanwhile): the savepoint keeps the caller's transaction usable."""
    try:
        with transaction.atomic():
            return Alert.objects.create(rule=rule, kind=rule.kind, key=key, subject=subject[:200],
                                        message=message, fired_at=now)
    except IntegrityError:
        return None


def resolve_alert(alert: Alert, now, outbox: Outbox) -> bool:
    """A guarded update: of two resolvers (two reconcilers, or one and the admin), one wins."""
    if not Alert.objects.filter(pk=alert.pk, resolved_at__isnull=True).update(resolved_at=now):
        return False
    alert.resolved_at = now
    outbox.add([GROUP], event(alert, "alert.resolved"))
    return True


def evaluate(now, *, deliver=None) -> dict:
    """Not one transaction: each incident opens or resolves on its own (a guarded statement),
    so a pass holds no locks across its queries."""
    counts = {"alerts_fired": 0, "alerts_resolved": 0}
    outbox = Outbox()
    open_alerts: dict[int | None, dict[str, Alert]] = defaultdict(dict)
    for alert in Alert.objects.filter(resolved_at__isnull=True).select_related("rule"):
        open_alerts[alert.rule_id][alert.key] = alert
    for rule in AlertRule.objects.filter(enabled=True):
        firing = CHECKS[rule.kind](rule, now)
        still_open = open_alerts.pop(rule.pk, {})
        for key, (subject, message) in firing.items():
            if key in still_open:
                continue
            alert = open_alert(rule, key, subject, message, now)
            if alert is not None:
                outbox.add([GROUP], event(alert, "alert.fired"))
                counts["alerts_fired"] += 1
        for key, alert in still_open.items():
            if key not in firing:
                counts["alerts_resolved"] += resolve_alert(alert, now, outbox)
    # What is left belongs to rules that were disabled or deleted: nothing watches it now.
    for alerts in open_alerts.values():
        for alert in alerts.values():
            counts["alerts_resolved"] += resolve_alert(alert, now, outbox)
    outbox.publish_on_commit()
    transaction.on_commit(deliver or notify.deliver_pending)
    return counts
