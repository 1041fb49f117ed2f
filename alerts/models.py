"""Alert rules (what to watch, whom to tell) and the incidents they open."""

from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import models
from django.utils import timezone


class RuleKind(models.TextChoices):
    NODE_OFFLINE = "node_offline", "Node offline"
    JOB_FAILED = "job_failed", "Job failed"
    QUEUE_WAIT = "queue_wait", "Queue wait"
    JOB_DEADLINE = "job_deadline", "Job past its deadline"


class AlertRule(models.Model):
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=20, choices=RuleKind.choices)
    enabled = models.BooleanField(default=True)
    threshold_minutes = models.PositiveIntegerField(
        default=10,
        help_text="queue wait: the oldest waiting job waited longer than this; job deadline: a "
                  "job not finished this long after it was submitted; job failed: how long a "
                  "failed job stays an incident; node offline: not used.")
    email_to = models.CharField(max_length=500, blank=True,
                                help_text="Comma-separated addresses; blank sends no email.")
    webhook_url = models.URLField(max_length=500, blank=True,
                                  help_text="http(s) URL that gets a JSON POST; blank for none.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def recipients(self) -> list[str]:
        return [address.strip() for address in self.email_to.split(",") if address.strip()]

    def clean(self):
        # URLField alone lets ftp:// through; the notifier opens nothing but http(s).
        if self.webhook_url and urlsplit(self.webhook_url).scheme not in {"http", "https"}:
            raise ValidationError({"webhook_url": "Only http:// and https:// URLs are allowed."})
        for address in self.recipients:
            try:
                validate_email(address)
            except ValidationError:
                raise ValidationError({"email_to": f"Not an email address: {address}"}) from None


class Alert(models.Model):
    """One incident: opened when its rule starts firing for a key, resolved when it stops.

    The rule is kept as SET_NULL so that deleting a rule keeps its history; the reconciler then
    resolves the incidents it left open."""

    rule = models.ForeignKey(AlertRule, on_delete=models.SET_NULL, null=True, blank=True,
                             related_name="alerts")
    kind = models.CharField(max_length=20, choices=RuleKind.choices)
    key = models.CharField(max_length=200, help_text='What it is about: "node:w3", "job:123".')
    subject = models.CharField(max_length=200)
    message = models.TextField()
    fired_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    notified_at = models.DateTimeField(null=True, blank=True)
    resolve_notified_at = models.DateTimeField(null=True, blank=True)
    # Channels already told, as "fired:email", "resolved:webhook": a retry after a partial
    # failure sends only what did not get through.
    delivered = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["rule", "key"],
                                    condition=models.Q(resolved_at__isnull=True),
                                    name="alert_one_open_per_key"),
        ]

    def __str__(self):
        return self.subject

    @property
    def firing(self) -> bool:
        return self.resolved_at is None

    def as_dict(self) -> dict:
        """What the dashboard, the REST API and webhooks get."""
        return {"id": self.pk, "rule": self.rule.name if self.rule else "", "kind": self.kind,
                "subject": self.subject, "message": self.message,
                "fired_at": self.fired_at.isoformat(),
                "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None}
