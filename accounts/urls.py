from django.urls import path

from accounts import views

urlpatterns = [
    path("tokens/", views.token_list, name="token-list"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke, name="token-revoke"),
    path("teams/", views.team_list, name="team-list"),
    path("teams/<slug:name>/members/", views.team_member_add, name="team-member-add"),
    path("teams/invitations/<int:invitation_id>/accept/", views.invitation_accept,
         name="invitation-accept"),
    path("teams/invitations/<int:invitation_id>/decline/", views.invitation_decline,
         name="invitation-decline"),
    path("teams/<slug:name>/members/<str:username>/role/", views.team_member_role,
         name="team-member-role"),
    path("teams/<slug:name>/members/<str:username>/remove/", views.team_member_remove,
         name="team-member-remove"),
]
