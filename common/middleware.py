"""Refuse text PostgreSQL cannot hold before anything reads it (an oversized body never gets
here: portal.bodylimit and portal.web refuse it first)."""

from django.http import JsonResponse
from django.http.multipartparser import MultiPartParserError
from rest_framework.views import APIView

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
NUL_MESSAGE = "must not contain NUL characters"


class NulCharacterMiddleware:
    """PostgreSQL refuses text with a NUL character in it: a path with one names nothing (404);
    a query parameter, or a field of a posted form (a browser's, url-encoded or multipart),
    with one gets 400 naming it, before a view puts any of them in a query, so nothing is
    changed. JSON bodies are checked by their parser (common.parsers); the API's views, which
    take nothing else (a form gets 415 there), are left to it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if "\x00" in request.path:
            return JsonResponse({"detail": "Not found."}, status=404)
        if (name := nul_field(request.GET)) is not None:
            return JsonResponse({name: [NUL_MESSAGE]}, status=400)
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.method != "POST" or request.content_type not in FORM_TYPES \
                or is_api_view(view_func):
            return None
        try:
            name = nul_field(request.POST)
            if name is None:  # an uploaded file's own name has no NUL: Django drops them
                name = next((name for name in request.FILES if "\x00" in name), None)
        except MultiPartParserError as exc:
            return JsonResponse({"detail": f"Malformed form data: {exc}"}, status=400)
        if name is not None:
            return JsonResponse({name: [NUL_MESSAGE]}, status=400)
        return None


def is_api_view(view_func) -> bool:
    """A DRF view: it reads its body with its own parsers (and would find a multipart body
    already read here)."""
    cls = getattr(view_func, "cls", None)
    return isinstance(cls, type) and issubclass(cls, APIView)


def nul_field(data) -> str | None:
    """The name of the first field with a NUL character in its name or a value, or None (a
    field may be named "")."""
    for name, values in data.lists():
        if "\x00" in name or any("\x00" in value for value in values):
            return name
    return None
