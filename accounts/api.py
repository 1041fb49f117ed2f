"""GET /api/v1/teams/: the caller's teams (staff: all) with their quota, what they hold now,
how many jobs wait for admission and, for the caller's own teams, their members. Invitations:
a team's admins invite (POST /api/v1/teams/{name}/invitations/), the invited user accepts or
declines (/api/v1/invitations/)."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import teams
from accounts.models import Role, Team


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


class InvitationSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    team = serializers.CharField(source="team.name")
    role = serializers.ChoiceField(choices=Role.choices)
    invited_by = serializers.CharField(source="invited_by.username", allow_null=True,
                                       default=None)
    created_at = serializers.DateTimeField()


class InviteSerializer(serializers.Serializer):
    username = serializers.CharField(help_text="Who to invite (an active user).")
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)


def managed_team(request, name: str) -> Team:
    """The team, if the caller may invite to it: 404 unless they are in it (or staff), 403
    unless they are its admin (or staff)."""
    team = Team.objects.filter(name=name).first() if "\x00" not in name else None
    role = teams.role_in(request.user, team.pk) if team else None
    if team is None or (role is None and not request.user.is_staff):
        raise NotFound("No such team.")
    if role != Role.ADMIN and not request.user.is_staff:
        raise PermissionDenied("Only the team's admins invite members.")
    return team


class TeamInvite(APIView):
    @extend_schema(request=InviteSerializer, responses={201: InvitationSerializer})
    def post(self, request, name):
        """Invite a user to the team (its admins and staff): they join only when they accept
        (POST /api/v1/invitations/{id}/accept/)."""
        team = managed_team(request, name)
        data = InviteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        invitation = teams.invite(request.user, team, data.validated_data["username"],
                                  data.validated_data["role"], via="api")
        return Response(InvitationSerializer(invitation).data, status=status.HTTP_201_CREATED)


class InvitationList(APIView):
    @extend_schema(responses=InvitationSerializer(many=True))
    def get(self, request):
        """The invitations waiting for your answer, oldest first."""
        return Response(InvitationSerializer(teams.invitations_for(request.user),
                                             many=True).data)


class InvitationAccept(APIView):
    @extend_schema(request=None, responses={200: TeamMemberSerializer})
    def post(self, request, invitation_id):
        """Join the team with the invitation's role. Where your jobs go when you name no team
        stays as it was (unless you were in no team)."""
        membership = teams.accept(request.user, invitation_id, via="api")
        return Response({"team": membership.team.name,
                         **TeamMemberSerializer(membership).data})


class InvitationDecline(APIView):
    @extend_schema(request=None, responses={204: None})
    def post(self, request, invitation_id):
        """Decline the invitation: it is gone, nothing else changes."""
        teams.decline(request.user, invitation_id, via="api")
        return Response(status=status.HTTP_204_NO_CONTENT)
