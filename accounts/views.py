"""The browser's account pages. API tokens: list your tokens, create a named one (its key shown
once, on the page the POST redirects to), revoke one. Teams: your teams with their quota,
what they hold and their members; a team's admins (and staff) invite, re-role and remove
members; an invited user accepts or declines."""

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from accounts import teams
from accounts.models import ApiToken, Membership, Role, Team
from audit.log import record

NAME_MAX = ApiToken._meta.get_field("name").max_length


def portal_url(request) -> str:
    """The portal's base URL as this browser reached it, for `portalctl login --url`."""
    return request.build_absolute_uri("/").rstrip("/")


def _page(request, *, status=200, **extra):
    tokens = ApiToken.objects.filter(user=request.user).order_by("-created_at", "-pk")
    context = {"tokens": tokens, "portal_url": portal_url(request), "name": "",
               "error": None, "new_token": None, "new_key": None, "name_max": NAME_MAX,
               **extra}
    return render(request, "accounts/tokens.html", context, status=status)


NEW_KEY = "tokens.new_key"  # session key: the new token's key, until the page has shown it


@never_cache  # the page that shows a new key: no browser or proxy may keep it
@login_required
@require_http_methods(["GET", "POST"])
def token_list(request):
    if request.method == "GET":
        # Shown once: taken out of the session by the one GET that shows it.
        new = request.session.pop(NEW_KEY, None)
        token = new and ApiToken.objects.filter(pk=new["id"], user=request.user).first()
        return _page(request, new_token=token, new_key=token and new["key"])
    name = " ".join(request.POST.get("name", "").split())
    if not name:
        return _page(request, status=400, error="Give the token a name, e.g. laptop or ci.")
    if len(name) > NAME_MAX:
        return _page(request, status=400, name=name,
                     error=f"At most {NAME_MAX} characters.")
    with transaction.atomic():
        token, key = ApiToken.issue(request.user, name)
        record(request.user, "apitoken.create", token, via="page", name=name)
    # Redirected, so that a reload shows the list and makes no second token; never in a URL.
    request.session[NEW_KEY] = {"id": token.pk, "key": key}
    return redirect("token-list")


@login_required
@require_POST
def token_revoke(request, token_id: int):
    # Someone else's token is as absent as one that does not exist.
    token = get_object_or_404(ApiToken, pk=token_id, user=request.user)
    with transaction.atomic():
        revoked = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True) \
            .update(revoked_at=timezone.now())
        if revoked:
            record(request.user, "apitoken.revoke", token, via="page")
    return redirect("token-list")


# Teams ------------------------------------------------------------------------------------

QUOTA = (("jobs", "jobs", "max_running_jobs"), ("CPU slots", "cpus", "max_cpus"),
         ("GPUs", "gpus", "max_gpus"))


def _teams_page(request, *, status=200, error=None, error_team=None, added=None,
                invitation_error=None):
    """The teams page; `error` shown in `error_team`'s card, its add form keeping `added`."""
    rows = teams.overview(request.user, members_of_all=request.user.is_staff)
    invited = teams.pending_invitations([row["team"].pk for row in rows])
    for row in rows:
        team = row["team"]
        row["quota"] = [{"label": label, "used": row["held"][used],
                         "limit": getattr(team, limit),
                         "full": getattr(team, limit) is not None
                         and row["held"][used] >= getattr(team, limit)}
                        for label, used, limit in QUOTA]
        row["manage"] = request.user.is_staff or row["role"] == Role.ADMIN
        row["invited"] = invited.get(team.pk, []) if row["manage"] else []
        row["error"] = error if error_team == team.pk else None
        row["added"] = added if error_team == team.pk else {}
    context = {"rows": rows, "roles": Role.values,
               "invitations": teams.invitations_for(request.user),
               "invitation_error": invitation_error}
    return render(request, "accounts/teams.html", context, status=status)


@login_required
@require_http_methods(["GET"])
def team_list(request):
    return _teams_page(request)


def _managed_team(request, name: str) -> Team:
    """The team, if the user may manage its members: 404 unless they are in it (or staff),
    403 unless they are its admin (or staff)."""
    team = get_object_or_404(Team, name=name)
    if request.user.is_staff:
        return team
    role = teams.role_in(request.user, team.pk)
    if role is None:
        raise Http404("No such team.")
    if role != Role.ADMIN:
        raise PermissionDenied("Only the team's admins manage its members.")
    return team


def _membership_or_404(team: Team, username: str) -> Membership:
    return get_object_or_404(Membership.objects.select_related("team", "user"),
                             team=team, user__username=username)


def _back_to(team: Team):
    return redirect(f"{reverse('team-list')}#team-{team.name}")


@login_required
@require_POST
def team_member_add(request, name: str):
    team = _managed_team(request, name)
    username, role = request.POST.get("username", ""), request.POST.get("role", Role.MEMBER)
    try:
        teams.invite(request.user, team, username, role, via="page")
    except teams.MembershipRefused as exc:
        return _teams_page(request, status=400, error=str(exc), error_team=team.pk,
                           added={"username": username.strip(), "role": role})
    return _back_to(team)


def _change_member(request, name: str, username: str, change):
    """A team admin's change to one member; refused (the team's last admin) with the reason."""
    team = _managed_team(request, name)
    membership = _membership_or_404(team, username)
    try:
        change(membership)
    except teams.MembershipRefused as exc:
        return _teams_page(request, status=400, error=str(exc), error_team=team.pk)
    return _back_to(team)


@login_required
@require_POST
def team_member_role(request, name: str, username: str):
    return _change_member(request, name, username, lambda membership: teams.set_role(
        request.user, membership, request.POST.get("role", ""), via="page"))


@login_required
@require_POST
def team_member_remove(request, name: str, username: str):
    return _change_member(request, name, username, lambda membership: teams.remove_member(
        request.user, membership, via="page"))


def _answer(request, invitation_id: int, answer):
    """The invited user's accept or decline; refused (answered meanwhile) with the reason."""
    try:
        answer(request.user, invitation_id, via="page")
    except teams.MembershipRefused as exc:
        return _teams_page(request, status=exc.status, invitation_error=str(exc))
    return redirect("team-list")


@login_required
@require_POST
def invitation_accept(request, invitation_id: int):
    return _answer(request, invitation_id, teams.accept)


@login_required
@require_POST
def invitation_decline(request, invitation_id: int):
    return _answer(request, invitation_id, teams.decline)
