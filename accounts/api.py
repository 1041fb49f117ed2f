"""GET /api/v1/teams/: the caller's teams (staff: all) with their quota, what they hold now,
how many jobs wait for admission and, for the caller's own teams, their members."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import teams
from accounts.models import Role


class TeamQuotaSerializer(serializers.Serializer):
    max_running_jobs = serializers.IntegerField(
        allow_null=True, help_text="Jobs queued or running at once; null: no limit.")
    max_cpus = serializers.IntegerField(
        allow_null=True, help_text="CPU slots held at once; null: no limit.")
    max_gpus = serializers.IntegerField(
        allow_null=True, help_text="GPUs held at once; null: no limit.")
    share = serializers.IntegerField(help_text="Fair-share weight among competing teams.")


class TeamHeldSerializer(serializers.Serializer):
    jobs = serializers.IntegerField(help_text="Its jobs queued or running now.")
    cpus = serializers.IntegerField(help_text="CPU slots they hold.")
    gpus = serializers.IntegerField(help_text="GPUs they hold.")


class TeamMemberSerializer(serializers.Serializer):
    username = serializers.CharField(source="user.username")
    role = serializers.ChoiceField(choices=Role.choices)


class TeamSerializer(serializers.Serializer):
    name = serializers.CharField(source="team.name")
    title = serializers.CharField(source="team.title")
    role = serializers.ChoiceField(
        choices=Role.choices, allow_null=True,
        help_text="Your role in the team; null for staff who are not in it.")
    quota = TeamQuotaSerializer(source="team")
    held = TeamHeldSerializer(help_text="What its queued and running jobs hold now.")
    waiting = serializers.IntegerField(help_text="Its jobs pending until admission.")
    members = serializers.ListField(
        child=TeamMemberSerializer(), allow_null=True,
        help_text="By username; only for your own teams (null for the others).")


class TeamList(APIView):
    @extend_schema(responses=TeamSerializer(many=True))
    def get(self, request):
        """Your teams (staff: every team), by name: your role, the quota, what the team's
        queued and running jobs hold now and how many wait for admission, and the members of
        the teams you are in. Members are managed on the /teams/ page."""
        return Response(TeamSerializer(teams.overview(request.user), many=True).data)
