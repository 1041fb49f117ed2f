"""The REST API under /api/v1/: thin views over the services and selectors."""


from django.conf import settings
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.generics import ListAPIView
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from audit import feed
from common.pagination import NewestFirst
from common.query import int_param
from common.throttling import SubmitThrottle
from jobs import selectors, services
from jobs.api.serializers import (
    ArtifactSerializer,
    FeedEventSerializer,
    JobDetailSerializer,
    JobSerializer,
    KindSerializer,
    LogLineSerializer,
)
from jobs.broadcast import current_seq
from jobs.models import JobState
from nodes import selectors as node_selectors
from nodes.api.serializers import NodeSerializer
from workers.context import artifacts_dir
from workers.kinds import all_kinds

# The views that create jobs: the usual rates, and the one for submissions on POST.
SUBMIT_THROTTLES = [*api_settings.DEFAULT_THROTTLE_CLASSES, SubmitThrottle]
FEED_SNAPSHOT = 20  # the dashboard's newest events; older ones a page at a time


# A submitted job, as services.validate_spec checks it (for the schema only).
def whole_number(field: str) -> dict:
    """A whole-number field of a job as validate_spec bounds it."""
    low, high, default = services.int_bounds()[field]
    return {"type": "integer", "minimum": low, "maximum": high, "default": default}


JOB_SPEC = {
    "type": "object",
    "required": ["kind"],
    "additionalProperties": False,
    "properties": {
        "kind": {"type": "string", "description": "a kind's name, from GET /api/v1/kinds/"},
        "params": {"type": "object", "description": "as the kind's `params_schema` says"},
        "name": {"type": "string", "maxLength": 200},
        "priority": whole_number("priority"),
        "queue": {"type": "string", "enum": settings.JOB_QUEUES,
                  "description": "by default the kind's"},
        "max_attempts": whole_number("max_attempts"),
        "timeout_s": whole_number("timeout_s"),
        "after": {"type": "array", "maxItems": services.MAX_AFTER,
                  "description": "ids of jobs that must succeed before this one",
                  "items": {"type": "string", "pattern": "^[0-9]+$"}},
        "team": {"type": "string", "description": "a team's name; by default the first team "
                 "you joined (yours alone, made with your first job, if you are in none)"},
        "cpus": whole_number("cpus"),
        "gpus": {**whole_number("gpus"), "description": "at least 1 in the gpu queue"},
        "labels": {"type": "object", "maxProperties": services.MAX_LABELS,
                   "description": "node labels it needs",
                   "additionalProperties": {"type": "string", "maxLength": 100}},
        "nodes": {"type": "integer", "minimum": 1, "maximum": services.MAX_NODES,
                  "default": 1, "description": "a gang: this many distinct nodes, admitted "
                  "all together, one rank per slot (at most the nodes its queue has)"},
        "slots_per_node": {"type": "integer", "minimum": 1,
                           "maximum": services.MAX_SLOTS_PER_NODE, "default": 1,
                           "description": "slots (ranks) it takes on each of its nodes"},
    },
}


def visible_job_or_404(request, job_id):
    job = selectors.job_for(request.user, job_id)
    if job is None:
        raise NotFound("No such job.")
    return job


class KindList(APIView):
    @extend_schema(responses=KindSerializer(many=True))
    def get(self, request):
        return Response(KindSerializer(all_kinds(), many=True).data)


@extend_schema_view(get=extend_schema(parameters=[
    OpenApiParameter("state", str, enum=JobState.values), OpenApiParameter("kind", str),
    OpenApiParameter("q", str, description="in the job's name"),
    OpenApiParameter("parent", int, description="the partitions of this fan-out job")]))
class JobList(ListAPIView):
    serializer_class = JobSerializer
    pagination_class = NewestFirst
    throttle_classes = SUBMIT_THROTTLES

    def get_queryset(self):
        state = self.request.query_params.get("state")
        if state and state not in JobState.values:
            raise ValidationError({"state": [f"must be one of {', '.join(JobState.values)}"]})
        parent = self.request.query_params.get("parent")
        if parent is not None:
            parent = int_param(self.request.query_params, "parent", 0)
            if selectors.job_for(self.request.user, parent) is None:
                raise NotFound("No such job.")
        return selectors.job_list(self.request.user, state=state,
                                  kind=self.request.query_params.get("kind"),
                                  q=self.request.query_params.get("q"), parent=parent)

    @extend_schema(
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER,
                                     description="1 to 200 characters: a retry of the submit "
                                                 "with the same key returns the same job")],
        request={"application/json": {"oneOf": [
            JOB_SPEC, {"type": "array", "items": JOB_SPEC, "minItems": 1,
                       "maxItems": settings.JOB_MAX_BATCH}]}},
        # The job, or the list of jobs (the Job component comes from the GET's serializer).
        responses={201: {"oneOf": [{"$ref": "#/components/schemas/Job"}, {
            "type": "array", "items": {"$ref": "#/components/schemas/Job"}}]}},
        examples=[OpenApiExample("one job", request_only=True,
                                 value={"kind": "diag.sleep", "params": {"seconds": 10}}),
                  OpenApiExample("two jobs", request_only=True,
                                 value=[{"kind": "diag.noop"}, {"kind": "diag.noop"}])],
        description="Submit one job (an object) or several at once (a list of objects).",
    )
    def post(self, request):
        data = request.data
        if isinstance(data, list):
            return self.submit_many(request, data)
        spec = services.validate_spec(data, owner=request.user)
        key = request.headers.get("Idempotency-Key")
        if key is not None and (not 0 < len(key) <= 200 or "\x00" in key):
            raise ValidationError({"Idempotency-Key": ["must be 1 to 200 characters, not NUL"]})
        job, created = services.submit_job(owner=request.user, spec=spec, idempotency_key=key)
        response = Response(JobSerializer(job).data, status=status.HTTP_201_CREATED)
        if not created:
            response["Idempotent-Replayed"] = "true"
        return response

    def submit_many(self, request, items):
        if not items or len(items) > settings.JOB_MAX_BATCH:
            raise ValidationError({"non_field_errors": [
                f"a list must hold 1 to {settings.JOB_MAX_BATCH} jobs"]})
        specs, errors, worst = services.validate_specs(items, owner=request.user)
        if any(errors):
            return Response(errors, status=worst)
        jobs = services.submit_jobs(owner=request.user, specs=specs)
        return Response(JobSerializer(jobs, many=True).data, status=status.HTTP_201_CREATED)


class JobDetail(APIView):
    @extend_schema(responses=JobDetailSerializer)
    def get(self, request, job_id):
        job = visible_job_or_404(request, job_id)
        # The websocket stream's position, read before the row: deltas after it apply on top.
        seq = current_seq(selectors.job_group(job.pk))
        job.refresh_from_db()
        return Response({**JobDetailSerializer(job).data, "stream_seq": seq})


class JobCancel(APIView):
    @extend_schema(request=None, responses={202: JobSerializer})
    def post(self, request, job_id):
        job = visible_job_or_404(request, job_id)
        job = services.cancel_job(job=job, actor=request.user)
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class JobRetry(APIView):
    throttle_classes = SUBMIT_THROTTLES

    @extend_schema(request=None, responses={201: JobSerializer})
    def post(self, request, job_id):
        job = visible_job_or_404(request, job_id)
        new = services.retry_job(job=job, owner=request.user)
        return Response(JobSerializer(new).data, status=status.HTTP_201_CREATED)


class JobLogs(APIView):
    @extend_schema(parameters=[OpenApiParameter("after", int), OpenApiParameter("limit", int),
                               OpenApiParameter("rank", int, description="a gang's one rank "
                                                "(by default every rank's lines, merged)")],
                   responses=inline_serializer("JobLogs", {
                       "lines": LogLineSerializer(many=True),
                       "next_after": serializers.IntegerField(help_text="Pass as ?after= for "
                                                                        "the lines that follow.")}))
    def get(self, request, job_id):
        job = visible_job_or_404(request, job_id)
        try:
            after = int(request.query_params.get("after", 0))
            limit = min(int(request.query_params.get("limit", selectors.LOG_PAGE)),
                        selectors.LOG_PAGE)
        except ValueError:
            raise ValidationError({"after": ["must be a whole number"]}) from None
        rank = request.query_params.get("rank")
        if rank is not None:
            rank = int_param(request.query_params, "rank", 0)
        lines = selectors.job_logs(job, after=after, limit=max(limit, 1), rank=rank)
        return Response({"lines": LogLineSerializer(lines, many=True).data,
                         "next_after": lines[-1].id if lines else after})


class JobMetrics(APIView):
    @extend_schema(responses=inline_serializer("JobMetrics", {
        "series": serializers.DictField(help_text="name -> [{step, value}, ...]")}))
    def get(self, request, job_id):
        job = visible_job_or_404(request, job_id)
        return Response({"series": selectors.job_metrics(job)})


class JobArtifacts(APIView):
    @extend_schema(responses=ArtifactSerializer(many=True))
    def get(self, request, job_id):
        job = visible_job_or_404(request, job_id)
        return Response(ArtifactSerializer(selectors.job_artifacts(job), many=True).data)


class JobArtifactFile(APIView):
    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY})
    def get(self, request, job_id, name):
        job = visible_job_or_404(request, job_id)
        artifact = next((a for a in selectors.job_artifacts(job) if a.name == name), None)
        path = artifacts_dir() / artifact.path if artifact else None
        if path is None or not path.is_file():
            raise NotFound("No such artifact.")
        return FileResponse(open(path, "rb"), as_attachment=True, filename=artifact.name)


@extend_schema_view(get=extend_schema(
    description="The cluster's recent events, newest first (cursor-paginated): jobs that "
                "ended, went back to the queue or were preempted, of your teams (staff: of "
                "every team), and nodes that came online, went offline or were drained. Kept "
                "for FEED_KEEP_DAYS, at most FEED_KEEP events. Live on /ws/cluster/ as "
                "`feed.event` messages of the same fields.",
    parameters=[OpenApiParameter("kind", str, enum=list(feed.KINDS),
                                 description="only events of this kind")]))
class FeedList(ListAPIView):
    serializer_class = FeedEventSerializer
    pagination_class = NewestFirst

    def get_queryset(self):
        events = selectors.feed(self.request.user)
        kind = self.request.query_params.get("kind")
        if kind:
            if kind not in feed.KINDS:
                raise ValidationError({"kind": [f"must be one of {', '.join(feed.KINDS)}"]})
            events = events.filter(kind=kind)
        return events


class ClusterSummary(APIView):
    @extend_schema(responses=inline_serializer("ClusterSummary", {
        "at": serializers.DateTimeField(),
        "jobs_by_state": serializers.DictField(help_text="active jobs, and those finished in "
                                                         "the last hour"),
        "queues": serializers.ListField(help_text="name, pending, queued, running, "
                                                  "oldest_wait_s"),
        "finished_per_minute": serializers.DictField(help_text="t, succeeded, failed, "
                                                               "cancelled: the last hour"),
        "nodes": inline_serializer("ClusterNode", {
            **NodeSerializer().get_fields(),
            "jobs": serializers.ListField(help_text="the running jobs on it that you may see: "
                                          "id, name, slots"),
            "other_jobs": serializers.IntegerField(help_text="busy slots running jobs you may "
                                                   "not see")}, many=True),
        "events": FeedEventSerializer(many=True, help_text="the newest events of "
                                      "GET /api/v1/events/"),
        "stream_seq": serializers.IntegerField(help_text="of the websocket stream `cluster`")}))
    def get(self, request):
        """The cluster overview's snapshot: aggregates over every team's jobs, and the nodes."""
        seq = current_seq("cluster")
        nodes = NodeSerializer(node_selectors.nodes(), many=True).data
        selectors.node_jobs(request.user, nodes)
        events = selectors.feed(request.user)[:FEED_SNAPSHOT]
        return Response({**selectors.cluster_summary(), "nodes": nodes,
                         "events": FeedEventSerializer(events, many=True).data,
                         "stream_seq": seq})
