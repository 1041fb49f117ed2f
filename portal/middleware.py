"""Refuse an oversized body with 413 before anything reads it."""

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
