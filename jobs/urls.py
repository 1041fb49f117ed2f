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
    path("events/", views.events, name="events"),
    path("metrics", views.metrics, name="metrics"),
    path("planner/", views.planner_page, name="planner"),
]
