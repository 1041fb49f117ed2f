"""Nodes: what each one offers and does now (from its heartbeats), and its utilization history.

The tables keep the names they had when nodes lived in the jobs app."""

from django.db import models
from django.utils import timezone


class NodeState(models.TextChoices):
    ONLINE = "online"
    DRAINING = "draining"
    OFFLINE = "offline"


class Node(models.Model):
    name = models.CharField(max_length=100, unique=True)
    state = models.CharField(max_length=16, choices=NodeState.choices, default=NodeState.ONLINE)
    worker = models.CharField(max_length=200, blank=True)
    queues = models.JSONField(default=list, blank=True)
    labels = models.JSONField(default=dict, blank=True, help_text="What it offers to jobs that "
                              "ask for labels, from its NODE_LABELS.")
    concurrency = models.PositiveIntegerField(default=0)
    running = models.PositiveIntegerField(default=0)
    utilization = models.JSONField(default=dict, blank=True)
    # Attempts it had taken from the broker but not started, as of its last heartbeat.
    reserved = models.JSONField(default=list, blank=True)
    first_seen = models.DateTimeField(default=timezone.now)
    last_heartbeat = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "jobs_node"
        ordering = ["name"]

    def __str__(self):
        return self.name


class NodeSample(models.Model):
    """One heartbeat's utilization, kept raw for NODE_SAMPLES_RAW_H hours."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="samples")
    ts = models.DateTimeField()
    cpu = models.FloatField()
    mem = models.FloatField()
    gpu = models.FloatField(null=True, blank=True, help_text="Mean GPU utilization, if any.")
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "jobs_nodesample"
        indexes = [models.Index(fields=["node", "ts"], name="nodesample_node_ts"),
                   models.Index(fields=["ts"], name="nodesample_ts")]

    def __str__(self):
        return f"{self.node_id} @ {self.ts:%H:%M:%S}"


class NodeMinute(models.Model):
    """A node's utilization over one minute (mean and peak), kept for NODE_MINUTES_DAYS days."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="minutes")
    minute = models.DateTimeField()
    cpu = models.FloatField()
    cpu_max = models.FloatField()
    mem = models.FloatField()
    gpu = models.FloatField(null=True, blank=True)
    samples = models.PositiveIntegerField()

    class Meta:
        db_table = "jobs_nodeminute"
        constraints = [models.UniqueConstraint(fields=["node", "minute"], name="nodeminute_once")]
        indexes = [models.Index(fields=["minute"], name="nodeminute_minute")]

    def __str__(self):
        return f"{self.node_id} @ {self.minute:%Y-%m-%d %H:%M}"
