"""/api/v1/teams/{team}/grants/: the read access a team gave others and holds from them; its
admins give (POST) and take back (DELETE). A team the caller is not in is a 404."""

from django.db import transaction
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import teams
from accounts.models import Team
from spaces import selectors, services
from spaces.models import DataGrant, GrantKind


class GrantSerializer(serializers.ModelSerializer):
    id = serializers.CharField(read_only=True)
    team = serializers.CharField(source="team.name", read_only=True,
                                 help_text="The team whose data it is.")
    grantee = serializers.CharField(source="grantee.name", help_text="The team that may "
                                    "read it.")
    kind = serializers.ChoiceField(choices=GrantKind.choices)
    target = serializers.CharField(help_text="path: a prefix in the team's space, read by "
                                   "the grantee as @team/prefix; table: a table of its "
                                   "schema.")

    class Meta:
        model = DataGrant
        fields = ["id", "team", "grantee", "kind", "target", "created_at"]
        read_only_fields = ["id", "team", "created_at"]


def _team_or_404(request, name: str) -> Team:
    team = Team.objects.filter(name=name).first()
    if team is None or not (request.user.is_staff or teams.role_in(request.user, team.pk)):
        raise NotFound("No such team.")
    return team


class GrantList(APIView):
    @extend_schema(responses=GrantSerializer(many=True))
    def get(self, request, team: str):
        """The grants the team gave and holds."""
        found = _team_or_404(request, team)
        return Response(GrantSerializer(selectors.grants_of(found), many=True).data)

    @extend_schema(request=GrantSerializer, responses={
        201: GrantSerializer, 400: OpenApiResponse(description="A field is wrong."),
        403: OpenApiResponse(description="Not an admin of the team.")})
    def post(self, request, team: str):
        """Let another team read a path prefix or a table of this team's (admins)."""
        found = _team_or_404(request, team)
        body = request.data if isinstance(request.data, dict) else {}
        try:
            grant = services.give(request.user, found, body.get("grantee"), body.get("kind"),
                                  body.get("target"), via="api")
        except services.NotAdmin:
            return Response({"detail": f"only team {found.name}'s admins give its data"},
                            status=status.HTTP_403_FORBIDDEN)
        except services.GrantRefused as exc:
            return Response(exc.errors, status=status.HTTP_400_BAD_REQUEST)
        return Response(GrantSerializer(grant).data, status=status.HTTP_201_CREATED)


class GrantDetail(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request, team: str, grant_id: str):
        """Take back a grant the team gave (admins)."""
        found = _team_or_404(request, team)
        grant = (DataGrant.objects.select_related("team", "grantee")
                 .filter(pk=int(grant_id) if grant_id.isdigit() else -1, team=found).first())
        if grant is None:
            raise NotFound("No such grant.")
        try:
            with transaction.atomic():
                services.take_back(request.user, grant, via="api")
        except services.NotAdmin:
            return Response({"detail": f"only team {found.name}'s admins take back its "
                             "grants"}, status=status.HTTP_403_FORBIDDEN)
        return Response(status=status.HTTP_204_NO_CONTENT)
