from django.urls import path

from nodes import views

urlpatterns = [
    path("cluster/", views.cluster, name="cluster"),
    path("nodes/<str:name>/", views.node_detail, name="node-detail"),
    path("nodes/<str:name>/drain/", views.node_drain, {"draining": True}, name="node-drain"),
    path("nodes/<str:name>/undrain/", views.node_drain, {"draining": False},
         name="node-undrain"),
]
