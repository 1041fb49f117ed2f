"""Jobs, their attempts, and what the attempts said (log lines, metric points, artifacts)."""

from django.conf import settings
from django.db import models
from django.utils import timezone


class JobState(models.TextChoices):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class Job(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                              related_name="jobs")
    # Whose job it is: the team's members see it, and it counts against the team's quota.
    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, related_name="jobs")
    kind = models.CharField(max_length=100)
    name = models.CharField(max_length=200, blank=True)
    params = models.JSONField(default=dict, blank=True)
    queue = models.CharField(max_length=50)
    priority = models.SmallIntegerField(default=0)
    # What it holds while queued or running, counted against its team's quota.
    cpus = models.PositiveSmallIntegerField(default=1)
    gpus = models.PositiveSmallIntegerField(default=0)
    # Node labels it needs ({"gpu": "a100"}): only a node with all of them runs it.
    labels = models.JSONField(default=dict, blank=True)
    # A gang: one rank per slot on `nodes` distinct nodes, admitted all together (1 x 1: a
    # plain job in one slot).
    nodes = models.PositiveSmallIntegerField(default=1)
    slots_per_node = models.PositiveSmallIntegerField(default=1)
    # Pending because a job in `after` has not succeeded yet (else pending means: waiting for
    # admission, under its team's quota and the cluster's free slots).
    blocked = models.BooleanField(default=False)
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.PENDING)
    progress = models.FloatField(null=True, blank=True)
    message = models.CharField(max_length=500, blank=True)
    # The current attempt and its fencing token: events of any other attempt change nothing.
    attempt = models.PositiveIntegerField(default=0)
    token = models.CharField(max_length=32, blank=True)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    timeout_s = models.PositiveIntegerField()
    node = models.CharField(max_length=100, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)
    # A partition of another job's fan-out: its parent, and its index there.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE,
                               related_name="children")
    partition = models.PositiveIntegerField(null=True, blank=True)
    # Jobs that must succeed before this one is queued (it is pending until then).
    after = models.ManyToManyField("self", symmetrical=False, related_name="dependents",
                                   blank=True)
    # The latest progress as reported (progress is done/total): a parent sums its children's.
    done = models.FloatField(null=True, blank=True)
    total = models.FloatField(null=True, blank=True)
    unit = models.CharField(max_length=20, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["owner", "-id"], name="job_owner_newest"),
            models.Index(fields=["team", "-id"], name="job_team_newest"),
            models.Index(fields=["team", "-priority", "id"], name="job_pending_line",
                         condition=models.Q(state="pending", blocked=False)),
            models.Index(fields=["state", "lease_expires_at"], name="job_state_lease"),
            models.Index(fields=["finished_at"], name="job_finished_at"),
            # The job list (jobs as submitted, newest first) by kind and state: read in order
            # and stopped after a page, however rare the pair; the team last, so that a
            # member's teams are checked in the index, not in a second bitmap of every job of
            # theirs. A kind alone reads its rows here when it is rare; a state alone uses
            # job_state_lease, no filter the primary key. `q` (the name, any case) has a
            # trigram index, PostgreSQL only: migration 0008. bench/joblist.py measures them.
            models.Index(fields=["kind", "state", "-id", "team"], name="job_list_kind_state",
                         condition=models.Q(parent__isnull=True)),
        ]
        permissions = [("run_shell", "Can submit shell jobs")]
        constraints = [
            models.UniqueConstraint(fields=["owner", "idempotency_key"],
                                    condition=models.Q(idempotency_key__isnull=False),
                                    name="job_owner_idempotency_key"),
            models.UniqueConstraint(fields=["parent", "partition"],
                                    condition=models.Q(parent__isnull=False),
                                    name="job_parent_partition"),
        ]

    def __str__(self):
        return f"job {self.pk} ({self.kind}, {self.state})"

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def world_size(self) -> int:
        return self.nodes * self.slots_per_node

    @property
    def is_gang(self) -> bool:
        return self.world_size > 1


class AttemptState(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"


class Attempt(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    token = models.CharField(max_length=32)
    state = models.CharField(max_length=16, choices=AttemptState.choices,
                             default=AttemptState.QUEUED)
    node = models.CharField(max_length=100, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["job", "number"]
        constraints = [
            models.UniqueConstraint(fields=["job", "number"], name="attempt_job_number"),
        ]

    def __str__(self):
        return f"job {self.job_id} attempt {self.number} ({self.state})"


class AttemptRank(models.Model):
    """One rank of a gang job's attempt: the node it was placed on, and how it went. A gang's
    ranks are placed together when it is admitted; rank r runs on the (r // slots_per_node)th
    node of the placement."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="ranks")
    attempt = models.PositiveIntegerField()
    rank = models.PositiveSmallIntegerField()
    node = models.CharField(max_length=100)
    state = models.CharField(max_length=16, choices=AttemptState.choices,
                             default=AttemptState.QUEUED)
    # Rank 0's rendezvous, "address:port", as its node reported it.
    address = models.CharField(max_length=120, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["job", "attempt", "rank"]
        constraints = [models.UniqueConstraint(fields=["job", "attempt", "rank"],
                                               name="attemptrank_once")]
        indexes = [models.Index(fields=["state", "node"], name="attemptrank_state_node")]

    def __str__(self):
        return f"job {self.job_id} attempt {self.attempt} rank {self.rank} ({self.state})"


class LogLine(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="log_lines")
    attempt = models.PositiveIntegerField()
    # Which rank of a gang said it (0 for a job of one rank).
    rank = models.PositiveSmallIntegerField(default=0)
    seq = models.PositiveIntegerField(help_text="Order within the attempt, set by the worker.")
    ts = models.DateTimeField()
    level = models.CharField(max_length=10, default="info")
    text = models.TextField()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["job", "attempt", "rank", "seq"],
                                    name="logline_rank_once"),
        ]

    def __str__(self):
        return f"job {self.job_id} #{self.attempt}.{self.seq}"


class MetricPoint(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="metric_points")
    attempt = models.PositiveIntegerField()
    name = models.CharField(max_length=100)
    step = models.PositiveIntegerField()
    value = models.FloatField()
    ts = models.DateTimeField()

    class Meta:
        ordering = ["job", "name", "step"]
        constraints = [
            models.UniqueConstraint(fields=["job", "attempt", "name", "step"],
                                    name="metricpoint_once"),
        ]

    def __str__(self):
        return f"job {self.job_id} {self.name}[{self.step}]"


class Artifact(models.Model):
    """A file a job produced, kept in ARTIFACTS_DIR by the worker and served by the portal."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="artifacts")
    attempt = models.PositiveIntegerField()
    name = models.CharField(max_length=200)
    path = models.CharField(max_length=500, help_text="Relative to ARTIFACTS_DIR.")
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["job", "name"]
        constraints = [models.UniqueConstraint(fields=["job", "attempt", "name"],
                                               name="artifact_once")]

    def __str__(self):
        return f"{self.job_id}/{self.name}"
