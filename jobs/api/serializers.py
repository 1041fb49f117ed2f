"""How jobs and log lines look on the wire (read-only: writes go through services)."""

from rest_framework import serializers

from audit import feed
from jobs import admission, gangs
from jobs.models import Artifact, Attempt, AttemptRank, Job, LogLine


class JobSerializer(serializers.ModelSerializer):
    id = serializers.CharField(read_only=True)
    owner = serializers.CharField(source="owner.username", read_only=True)
    team = serializers.CharField(source="team.name", read_only=True)
    cancel_requested = serializers.SerializerMethodField()
    parent = serializers.CharField(source="parent_id", read_only=True, allow_null=True,
                                   help_text="For a partition of a fan-out: the job that made it")
    after = serializers.SerializerMethodField(help_text="Jobs that must succeed before this one")

    class Meta:
        model = Job
        fields = ["id", "kind", "name", "params", "state", "progress", "message", "attempt",
                  "max_attempts", "node", "queue", "priority", "owner", "timeout_s",
                  "cancel_requested", "created_at", "started_at", "finished_at", "result",
                  "error", "parent", "partition", "done", "total", "unit", "after", "team",
                  "cpus", "gpus", "labels", "nodes", "slots_per_node"]
        read_only_fields = fields

    def get_cancel_requested(self, job) -> bool:
        return job.cancel_requested_at is not None

    def get_after(self, job) -> list[str]:
        ids = getattr(job, "after_ids", None)  # a job just submitted knows them
        if ids is None:
            ids = [other.pk for other in job.after.all()]
        return [str(pk) for pk in sorted(ids)]


class AttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = Attempt
        fields = ["number", "state", "node", "created_at", "started_at", "finished_at", "error"]


class RankSerializer(serializers.ModelSerializer):
    class Meta:
        model = AttemptRank
        fields = ["attempt", "rank", "node", "state", "address", "started_at", "finished_at",
                  "error"]


class PartitionSerializer(serializers.ModelSerializer):
    id = serializers.CharField(read_only=True)

    class Meta:
        model = Job
        fields = ["id", "partition", "state", "attempt", "node", "progress", "done", "total",
                  "unit", "started_at", "finished_at", "error"]


class JobDetailSerializer(JobSerializer):
    """One job with its attempts (where and when each ran, how it ended) and, for a fan-out,
    its partitions."""

    attempts = AttemptSerializer(many=True, read_only=True)
    ranks = serializers.SerializerMethodField(help_text="For a gang: each attempt's ranks, "
                                              "the node each ran on, and how it went")
    partitions = serializers.SerializerMethodField()
    speedup = serializers.SerializerMethodField(help_text="For a gang that timed its epochs: "
                                                "times faster than the latest same job on one "
                                                "rank, if any")
    place_in_line = serializers.SerializerMethodField(
        help_text="For a job waiting for admission: its place among its team's waiting jobs "
        "(1 = next); `message` says what it waits for")

    class Meta(JobSerializer.Meta):
        fields = [*JobSerializer.Meta.fields, "attempts", "ranks", "partitions", "speedup",
                  "place_in_line"]
        read_only_fields = fields

    def get_place_in_line(self, job) -> int | None:
        return admission.place_in_line(job)

    def get_speedup(self, job) -> float | None:
        return gangs.speedup(job)

    def get_ranks(self, job) -> list[dict]:
        return RankSerializer(job.ranks.order_by("-attempt", "rank")[:1000], many=True).data

    def get_partitions(self, job) -> list[dict]:
        return PartitionSerializer(job.children.order_by("partition")[:1000], many=True).data


class ArtifactSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()

    class Meta:
        model = Artifact
        fields = ["name", "attempt", "size", "sha256", "created_at", "url"]

    def get_url(self, artifact) -> str:
        return f"/api/v1/jobs/{artifact.job_id}/artifacts/{artifact.name}"


class LogLineSerializer(serializers.ModelSerializer):
    seq = serializers.IntegerField(source="id", help_text="Pass as ?after= for what follows.")
    line = serializers.IntegerField(source="seq", help_text="The line's number in its attempt.")

    class Meta:
        model = LogLine
        fields = ["seq", "attempt", "rank", "line", "ts", "level", "text"]


class FeedEventSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="Newer events have higher ids")
    at = serializers.DateTimeField()
    kind = serializers.ChoiceField(choices=feed.KINDS)
    level = serializers.ChoiceField(choices=["good", "info", "warn", "bad"])
    text = serializers.CharField()
    job = serializers.CharField(allow_null=True, help_text="The job it is about, if any")
    node = serializers.CharField(help_text="The node it is about, if any (else empty)")

    def to_representation(self, instance):
        return feed.as_dict(instance)


class KindSerializer(serializers.Serializer):
    name = serializers.CharField()
    title = serializers.CharField()
    description = serializers.CharField()
    queue = serializers.CharField()
    params_schema = serializers.DictField(source="schema")
    unavailable = serializers.CharField(help_text="Why the workers cannot run it (a missing "
                                        "package), or empty")
