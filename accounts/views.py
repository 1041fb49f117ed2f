"""The browser's API-token pages: list your tokens, create a named one (its key shown once, in
the response to the POST that made it), revoke one."""

from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from accounts.models import ApiToken
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


@never_cache  # the response to a create holds the key: no browser or proxy may keep it
@login_required
@require_http_methods(["GET", "POST"])
def token_list(request):
    if request.method == "GET":
        return _page(request)
    name = " ".join(request.POST.get("name", "").split())
    if not name:
        return _page(request, status=400, error="Give the token a name, e.g. laptop or ci.")
    if len(name) > NAME_MAX:
        return _page(request, status=400, name=name,
                     error=f"At most {NAME_MAX} characters.")
    with transaction.atomic():
        token, key = ApiToken.issue(request.user, name)
        record(request.user, "apitoken.create", token, via="page", name=name)
    # Rendered here and nowhere else: not in a URL, a redirect or the session.
    return _page(request, new_token=token, new_key=key)


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
