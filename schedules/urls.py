from django.urls import path

from schedules import views

urlpatterns = [
    path("schedules/", views.schedule_list, name="schedule-list"),
    path("schedules/new/", views.schedule_new, name="schedule-new"),
    path("schedules/<int:schedule_id>/", views.schedule_detail, name="schedule-detail"),
    path("schedules/<int:schedule_id>/delete/", views.schedule_delete, name="schedule-delete"),
]
