from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts.api import TeamList
from alerts.api import AlertList
from audit.api import AuditList
from spaces.api import GrantDetail, GrantList

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/v1/", include("jobs.api.urls")),
    path("api/v1/", include("schedules.api_urls")),
    path("api/v1/audit/", AuditList.as_view(), name="api-audit"),
    path("api/v1/alerts/", AlertList.as_view(), name="api-alerts"),
    path("api/v1/teams/", TeamList.as_view(), name="api-teams"),
    path("api/v1/teams/<slug:team>/grants/", GrantList.as_view(), name="api-team-grants"),
    path("api/v1/teams/<slug:team>/grants/<str:grant_id>/", GrantDetail.as_view(),
         name="api-team-grant"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("", include("accounts.urls")),
    path("", include("jobs.urls")),
    path("", include("schedules.urls")),
]
