from django.urls import path

from jobs.api import views

urlpatterns = [
    path("kinds/", views.KindList.as_view(), name="api-kinds"),
    path("jobs/", views.JobList.as_view(), name="api-jobs"),
    path("jobs/<str:job_id>/", views.JobDetail.as_view(), name="api-job"),
    path("jobs/<str:job_id>/cancel/", views.JobCancel.as_view(), name="api-job-cancel"),
    path("jobs/<str:job_id>/retry/", views.JobRetry.as_view(), name="api-job-retry"),
    path("jobs/<str:job_id>/logs/", views.JobLogs.as_view(), name="api-job-logs"),
    path("jobs/<str:job_id>/metrics/", views.JobMetrics.as_view(), name="api-job-metrics"),
    path("cluster/", views.ClusterSummary.as_view(), name="api-cluster"),
    path("events/", views.FeedList.as_view(), name="api-events"),
    path("jobs/<str:job_id>/artifacts/", views.JobArtifacts.as_view(), name="api-job-artifacts"),
    path("jobs/<str:job_id>/artifacts/<str:name>", views.JobArtifactFile.as_view(),
         name="api-job-artifact"),
]
