"""The raw HTTP peer of bench.run's latency: Django on daphne as their documentation shows them,
nothing of the portal. One synchronous view (run, as the portal's are, on Django's ASGI handler
through its thread hop) reads a JSON body and sends the bare `portal.ping` task to the same
workers; the benchmark's client times POST -> the task's start, as for the portal. What this
adds over raw Celery is what the web stack the portal stands on costs before any of the
portal's own steps (authentication, checks, rows, admission, audit).

    REDIS_URL=redis://... daphne -b 127.0.0.1 -p PORT bench.http_peer:application
"""

from __future__ import annotations

import json
import secrets

import django
from django.conf import settings

if not settings.configured:
    settings.configure(DEBUG=False, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["127.0.0.1"],
                       SECRET_KEY=secrets.token_urlsafe(50), INSTALLED_APPS=[], MIDDLEWARE=[],
                       USE_TZ=True)
    django.setup()

from django.core.asgi import get_asgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from workers.celery import app


@csrf_exempt
def submit(request: HttpRequest) -> JsonResponse:
    if request.method != "POST":
        return JsonResponse({"detail": "POST a JSON object naming reply_to"}, status=405)
    try:
        reply_to = json.loads(request.body)["reply_to"]
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"reply_to": "required: the list the task pushes its start to"},
                            status=400)
    app.send_task("portal.ping", args=[str(reply_to)], queue="cpu")
    return JsonResponse({"sent": True}, status=201)


urlpatterns = [path("submit/", submit)]

application = get_asgi_application()
