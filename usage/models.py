"""What the cluster was used for: one row per ended attempt, folded into per-day figures.

Neither refers to the job by a foreign key: usage outlives the jobs it came from."""

from django.db import models


class Outcome(models.TextChoices):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # Its node went silent (or came back too late: the attempt was superseded by a new one).
    LOST = "lost"
    # Stopped to give its slot back to a team under its fair share, and queued again.
    PREEMPTED = "preempted"


class AttemptUsage(models.Model):
    """One attempt that ran: how long, on how much, after how long a wait."""

    job_id = models.BigIntegerField()
    attempt = models.PositiveIntegerField()
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="+")
    # By name: a user's usage stays theirs in the figures after the account is gone.
    user = models.CharField(max_length=150)
    kind = models.CharField(max_length=100)
    queue = models.CharField(max_length=50)
    node = models.CharField(max_length=100, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    # The attempt ended the job (its last one): the job counts once, here.
    final = models.BooleanField(default=False)
    cpus = models.PositiveSmallIntegerField()
    gpus = models.PositiveSmallIntegerField()
    created_at = models.DateTimeField(help_text="When the attempt was made (submitted, or "
                                      "queued again).")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    wall_s = models.FloatField()
    core_s = models.FloatField()
    gpu_s = models.FloatField()
    wait_s = models.FloatField()
    # Folded into UsageDay yet (services.roll_up).
    rolled = models.BooleanField(default=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job_id", "attempt"],
                                               name="attemptusage_once")]
        indexes = [models.Index(fields=["finished_at"], name="attemptusage_finished"),
                   models.Index(fields=["id"], name="attemptusage_unrolled",
                                condition=models.Q(rolled=False))]

    def __str__(self):
        return f"job {self.job_id} attempt {self.attempt} ({self.outcome})"


class UsageDay(models.Model):
    """The attempts that ended on one day (UTC), per team, user, kind and queue."""

    day = models.DateField()
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="+")
    user = models.CharField(max_length=150)
    kind = models.CharField(max_length=100)
    queue = models.CharField(max_length=50)
    jobs = models.PositiveIntegerField(default=0, help_text="Jobs whose last attempt ended.")
    attempts = models.PositiveIntegerField(default=0)
    lost = models.PositiveIntegerField(default=0)
    preempted = models.PositiveIntegerField(default=0)
    wall_s = models.FloatField(default=0.0)
    core_s = models.FloatField(default=0.0)
    gpu_s = models.FloatField(default=0.0)
    wait_s = models.FloatField(default=0.0)
    # Attempts by wait, one count per bucket of usage.services.WAIT_BUCKETS: percentiles merge.
    wait_hist = models.JSONField(default=list)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["day", "team", "user", "kind", "queue"],
                                               name="usageday_once")]
        indexes = [models.Index(fields=["day", "team"], name="usageday_day_team")]

    def __str__(self):
        return f"{self.day} {self.team_id} {self.user} {self.kind}"
