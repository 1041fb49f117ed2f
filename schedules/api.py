"""/api/v1/schedules/: the schedules of the user's teams. Thin views over the services: writes
go through `schedules.services`, which check the cron expression and the job as any job is."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from schedules import selectors, services
from schedules.cron import HELP, MAX_LENGTH
from schedules.models import Schedule


class ScheduleSerializer(serializers.ModelSerializer):
    id = serializers.CharField(read_only=True)
    team = serializers.CharField(source="team.name", help_text="The team's name; by default "
                                 "your only (or first) team in which you submit jobs.")
    owner = serializers.CharField(source="owner.username", read_only=True,
                                  help_text="Whose jobs they are: who last changed the job.")
    cron = serializers.CharField(help_text=HELP)
    last_job = serializers.CharField(source="last_job_id", read_only=True, allow_null=True)
    editable = serializers.SerializerMethodField(
        help_text="May you change it (a member or admin of its team)?")

    class Meta:
        model = Schedule
        fields = ["id", "name", "team", "owner", "cron", "kind", "params", "priority", "enabled",
                  "next_run_at", "last_run_at", "last_job", "last_error", "created_at",
                  "editable"]
        read_only_fields = ["id", "owner", "next_run_at", "last_run_at", "last_job",
                            "last_error", "created_at", "editable"]

    def get_editable(self, schedule) -> bool:
        return selectors.can_edit(self.context["request"].user, schedule)


class ScheduleWriteSerializer(serializers.Serializer):
    """What a POST (all but team, params, priority and enabled are required) or a PATCH (any)
    may send."""

    name = serializers.CharField(max_length=200)
    team = serializers.CharField(required=False)
    cron = serializers.CharField(max_length=MAX_LENGTH, help_text=HELP)
    kind = serializers.CharField()
    params = serializers.DictField(required=False)
    priority = serializers.IntegerField(required=False, min_value=-100, max_value=100)
    enabled = serializers.BooleanField(required=False)


# {"cron": ["must have 5 fields ..."], "params": {"seconds": ["must be at least 0"]}}
Errors = OpenApiTypes.OBJECT


def visible_schedule_or_404(request, schedule_id) -> Schedule:
    schedule = selectors.schedule_for(request.user, schedule_id)
    if schedule is None:
        raise NotFound("No such schedule.")
    return schedule


def _saved(request, write):
    """The schedule written, as the caller sees it now."""
    return selectors.schedule_for(request.user, write().pk)


class ScheduleList(APIView):
    @extend_schema(responses=ScheduleSerializer(many=True))
    def get(self, request):
        """The schedules of your teams (staff: all), by team and name."""
        schedules = selectors.visible_schedules(request.user)
        return Response(ScheduleSerializer(schedules, many=True,
                                           context={"request": request}).data)

    @extend_schema(request=ScheduleWriteSerializer, responses={
        201: ScheduleSerializer, 400: OpenApiResponse(Errors, description="per-field errors"),
        403: OpenApiResponse(Errors, description="a kind you may not submit")})
    def post(self, request):
        """Add a schedule: its jobs are yours, checked as a job you submit, at every run."""
        schedule = _saved(request, lambda: services.create_schedule(
            user=request.user, data=request.data))
        return Response(ScheduleSerializer(schedule, context={"request": request}).data,
                        status=status.HTTP_201_CREATED)


class ScheduleDetail(APIView):
    @extend_schema(responses=ScheduleSerializer)
    def get(self, request, schedule_id):
        schedule = visible_schedule_or_404(request, schedule_id)
        return Response(ScheduleSerializer(schedule, context={"request": request}).data)

    @extend_schema(request=ScheduleWriteSerializer(partial=True), responses={
        200: ScheduleSerializer, 400: OpenApiResponse(Errors, description="per-field errors"),
        403: OpenApiResponse(Errors, description="a viewer of the team, or a kind you may "
                                                 "not submit")})
    def patch(self, request, schedule_id):
        """Change some fields. Changing the job (name, team, kind, params, priority) makes
        its jobs yours; a new cron, or enabling again, counts the next run from now."""
        schedule = visible_schedule_or_404(request, schedule_id)
        schedule = _saved(request, lambda: services.update_schedule(
            schedule=schedule, user=request.user, data=request.data))
        return Response(ScheduleSerializer(schedule, context={"request": request}).data)

    @extend_schema(request=None, responses={204: None, 403: OpenApiResponse(
        Errors, description="a viewer of the team")})
    def delete(self, request, schedule_id):
        """Delete a schedule (the jobs it submitted stay)."""
        schedule = visible_schedule_or_404(request, schedule_id)
        services.delete_schedule(schedule=schedule, user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
