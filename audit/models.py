"""The audit trail: who (actor, null for the system) did what (action) to which object
(target_type, target_id), when, and how (via)."""

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils import timezone


class Via(models.TextChoices):
    API = "api", "API"
    PAGE = "page", "Page"
    ADMIN = "admin", "Admin"
    CLI = "cli", "Command line"
    SYSTEM = "system", "System"


class AuditEntry(models.Model):
    at = models.DateTimeField(default=timezone.now, db_index=True)
    # Indexed by the (actor, -id) index below.
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                              blank=True, db_index=False, related_name="audit_entries",
                              help_text="Blank: the system.")
    action = models.CharField(max_length=50, help_text='"<target>.<verb>", e.g. "job.cancel".')
    target_type = models.CharField(max_length=50)
    target_id = models.CharField(max_length=100)
    # What the target was called then: readable after it is renamed or deleted.
    target_repr = models.CharField(max_length=200, blank=True)
    via = models.CharField(max_length=10, choices=Via.choices)
    detail = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)

    class Meta:
        # Newest first: the primary key's order (unique, so a cursor never needs an offset).
        ordering = ["-id"]
        verbose_name_plural = "audit entries"
        indexes = [
            models.Index(fields=["target_type", "target_id", "-id"], name="audit_target"),
            models.Index(fields=["action", "-id"], name="audit_action"),
            models.Index(fields=["actor", "-id"], name="audit_actor"),
        ]

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor or 'system'} {self.action} " \
               f"{self.target_type} {self.target_id}"


class FeedEvent(models.Model):
    """One line of the cluster's feed of events (a job ended or went back to the queue, a node
    went offline...), as the dashboard shows it. Unlike the trail above, which keeps who did
    what for good and shows it to staff, the feed is recent (bounded by FEED_KEEP and
    FEED_KEEP_DAYS) and read by everyone: a job's events by its team's members, a node's by
    all."""

    at = models.DateTimeField(default=timezone.now, db_index=True)
    kind = models.CharField(max_length=30, help_text='"<subject>.<what happened>", e.g. '
                            '"job.failed", "node.offline".')
    text = models.CharField(max_length=500)
    # Whose job it was: its team's members see it (null: a node's event, seen by everyone).
    team_id = models.PositiveBigIntegerField(null=True, blank=True)
    job_id = models.PositiveBigIntegerField(null=True, blank=True)
    node = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["-id"]  # newest first; a cursor on the primary key pages it
        indexes = [models.Index(fields=["team_id", "-id"], name="feed_team")]

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.kind} {self.text[:80]}"
