from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts.api import TeamList
from audit.api import AuditList
from usage.api import CapacityPlan, UsageReport

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/v1/", include("jobs.api.urls")),
    path("api/v1/", include("schedules.api_urls")),
    path("api/v1/audit/", AuditList.as_view(), name="api-audit"),
    path("api/v1/teams/", TeamList.as_view(), name="api-teams"),
    path("api/v1/usage/", UsageReport.as_view(), name="api-usage"),
    path("api/v1/capacity/plan/", CapacityPlan.as_view(), name="api-capacity-plan"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("", include("accounts.urls")),
    path("", include("jobs.urls")),
    path("", include("schedules.urls")),
    path("", include("usage.urls")),
]
