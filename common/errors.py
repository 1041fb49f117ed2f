"""One error path. The services raise a DomainError (or a subclass: InvalidJob, NotPermitted,
TransitionRefused, InvalidSchedule, MembershipRefused) with a status and per-field errors; the
API's exception handler and, for the pages, DomainErrorMiddleware turn it into the response.
Every API error is JSON with a status code that says what happened."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.shortcuts import render
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class DomainError(Exception):
    """A request the portal refuses. `errors` maps each wrong field to its messages (a nested
    dict for the fields of a field, as `params`), or "detail" to one message for the whole."""

    status = 400

    def __init__(self, errors: dict | str, status: int | None = None):
        self.errors = {"detail": errors} if isinstance(errors, str) else errors
        if status is not None:
            self.status = status
        super().__init__(self.errors)

    def __str__(self) -> str:
        return describe(self.errors)


def describe(errors) -> str:
    """Per-field messages as one line: "params.seconds: must be at least 0; kind: …"; the
    detail alone as itself."""
    if isinstance(errors, str):
        return errors
    parts = []
    for field, messages in errors.items():
        if isinstance(messages, dict):
            parts.extend(f"{field}.{name}: {describe_messages(inner)}"
                         for name, inner in messages.items())
        elif field == "detail":
            parts.append(describe_messages(messages))
        else:
            parts.append(f"{field}: {describe_messages(messages)}")
    return "; ".join(parts)


def describe_messages(messages) -> str:
    if isinstance(messages, dict):
        return describe(messages)
    if isinstance(messages, list | tuple):
        return "; ".join(map(str, messages))
    return str(messages)


def exception_handler(exc, context):
    if isinstance(exc, DomainError):
        return Response(exc.errors, status=exc.status)
    if isinstance(exc, RequestDataTooBig):
        return Response({"detail": "Request body is over the limit of "
                                   f"{settings.MAX_BODY_BYTES} bytes."},
                        status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    return drf_exception_handler(exc, context)


class DomainErrorMiddleware:
    """The pages' half: a DomainError that no view turned into a form with its errors shows
    as a page saying why, with its status."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exc):
        if not isinstance(exc, DomainError):
            return None
        return render(request, "error.html", {"message": str(exc), "status": exc.status},
                      status=exc.status)
