from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from accounts.api import InvitationAccept, InvitationDecline, InvitationList, TeamInvite, TeamList
from alerts.api import AlertList
from audit.api import AuditList
from jobs.api.capacity import CapacityPlan
from spaces.api import GrantDetail, GrantList
from usage.api import UsageReport

urlpatterns = [
    # The node pages of the admin lived under the jobs app before nodes had their own: old
    # bookmarks land where they are now.
    re_path(r"^admin/jobs/(?P<model>node|nodesample|nodeminute)/(?P<rest>.*)$",
            RedirectView.as_view(url="/admin/nodes/%(model)s/%(rest)s", permanent=True,
                                 query_string=True)),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/v1/", include("jobs.api.urls")),
    path("api/v1/", include("nodes.api.urls")),
    path("api/v1/", include("schedules.api_urls")),
    path("api/v1/audit/", AuditList.as_view(), name="api-audit"),
    path("api/v1/alerts/", AlertList.as_view(), name="api-alerts"),
    path("api/v1/teams/", TeamList.as_view(), name="api-teams"),
    path("api/v1/teams/<slug:team>/grants/", GrantList.as_view(), name="api-team-grants"),
    path("api/v1/teams/<slug:team>/grants/<str:grant_id>/", GrantDetail.as_view(),
         name="api-team-grant"),
    path("api/v1/teams/<slug:name>/invitations/", TeamInvite.as_view(), name="api-team-invite"),
    path("api/v1/invitations/", InvitationList.as_view(), name="api-invitations"),
    path("api/v1/invitations/<int:invitation_id>/accept/", InvitationAccept.as_view(),
         name="api-invitation-accept"),
    path("api/v1/invitations/<int:invitation_id>/decline/", InvitationDecline.as_view(),
         name="api-invitation-decline"),
    path("api/v1/usage/", UsageReport.as_view(), name="api-usage"),
    path("api/v1/capacity/plan/", CapacityPlan.as_view(), name="api-capacity-plan"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves its start-up script as a file: the Content-Security-Policy allows
    # no inline script.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"),
         name="api-docs"),
    path("", include("accounts.urls")),
    path("", include("jobs.urls")),
    path("", include("nodes.urls")),
    path("", include("schedules.urls")),
    path("", include("usage.urls")),
]
