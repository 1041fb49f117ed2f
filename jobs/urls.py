from django.urls import path
from django.views.generic import RedirectView

from jobs import views

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="job-list"), name="home"),
    path("jobs/", views.job_list, name="job-list"),
    path("jobs/new/", views.job_new, name="job-new"),
    path("jobs/examples/<int:index>/", views.job_example, name="job-example"),
    path("jobs/<int:job_id>/", views.job_detail, name="job-detail"),
    path("jobs/<int:job_id>/cancel/", views.job_cancel, name="job-cancel"),
    path("jobs/<int:job_id>/retry/", views.job_retry, name="job-retry"),
    path("jobs/<int:job_id>/log.txt", views.job_log_download, name="job-log-download"),
    path("cluster/", views.cluster, name="cluster"),
    path("events/", views.events, name="events"),
    path("nodes/<str:name>/", views.node_detail, name="node-detail"),
    path("nodes/<str:name>/drain/", views.node_drain, {"draining": True}, name="node-drain"),
    path("nodes/<str:name>/undrain/", views.node_drain, {"draining": False},
         name="node-undrain"),
    path("metrics", views.metrics, name="metrics"),
    path("planner/", views.planner_page, name="planner"),
]
