"""A cron schedule: a job (kind, params, name, priority) that a team runs on a cron expression."""

from django.conf import settings
from django.db import models
from django.utils import timezone

from schedules.cron import HELP, MAX_LENGTH, validate_cron


class Schedule(models.Model):
    name = models.CharField(max_length=200, help_text="Also the name of the jobs it submits.")
    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, related_name="schedules")
    # Whose jobs they are: the member who last set what the job is. Its rights are checked
    # again at every run, so a schedule stops submitting when its owner loses them.
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                              related_name="schedules")
    cron = models.CharField(max_length=MAX_LENGTH, validators=[validate_cron], help_text=HELP)
    kind = models.CharField(max_length=100)
    params = models.JSONField(default=dict, blank=True)
    priority = models.SmallIntegerField(default=0)
    enabled = models.BooleanField(default=True)
    # The next run, always strictly after the last time it was computed: runs missed while the
    # portal was down make one run, not one each.
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_job = models.ForeignKey("jobs.Job", on_delete=models.SET_NULL, null=True, blank=True,
                                 related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True, help_text="Why the last run submitted nothing.")

    class Meta:
        ordering = ["team__name", "name", "id"]
        indexes = [models.Index(fields=["next_run_at"], name="schedule_due",
                                condition=models.Q(enabled=True))]

    def __str__(self):
        return f"{self.name} ({self.cron})"
