from django.urls import path

from nodes.api import views

urlpatterns = [
    path("cluster/metrics/", views.ClusterMetrics.as_view(), name="api-cluster-metrics"),
    path("nodes/", views.NodeList.as_view(), name="api-nodes"),
    path("nodes/<str:name>/metrics/", views.NodeMetrics.as_view(), name="api-node-metrics"),
    path("nodes/<str:name>/drain/", views.NodeDrain.as_view(draining=True), name="api-node-drain"),
    path("nodes/<str:name>/undrain/", views.NodeDrain.as_view(draining=False),
         name="api-node-undrain"),
]
