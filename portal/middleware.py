"""Refuse an oversized body with 413, and text PostgreSQL cannot hold, before anything reads
them."""

from django.conf import settings
from django.http import JsonResponse


class BodySizeLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return JsonResponse({"detail": "Content-Length is not a number."}, status=400)
        if length > settings.MAX_BODY_BYTES:
            return JsonResponse(
                {"detail": f"Request body is {length} bytes; the limit is "
                           f"{settings.MAX_BODY_BYTES}."},
                status=413,
            )
        return self.get_response(request)


class NulCharacterMiddleware:
    """PostgreSQL refuses text with a NUL character in it: a path with one names nothing (404),
    a query parameter with one gets 400 naming it, before a view puts either in a query."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if "\x00" in request.path:
            return JsonResponse({"detail": "Not found."}, status=404)
        for name, values in request.GET.lists():
            if "\x00" in name or any("\x00" in value for value in values):
                return JsonResponse({name: ["must not contain NUL characters"]}, status=400)
        return self.get_response(request)
