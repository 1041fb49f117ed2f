"""Request rates for the REST API, counted in the shared cache (Redis) so that every web process
counts together. A throttled request gets 429 with `Retry-After` (see common.errors).

Rates are in settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] (from THROTTLE_* variables); a rate
of None means no limit. If the cache cannot be reached the request is let through: Redis is only
transport, and a Redis restart must not take the API down with it."""

from __future__ import annotations

import logging
import time

from django.core.cache import cache
from rest_framework.permissions import SAFE_METHODS
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle

log = logging.getLogger(__name__)


class CacheTolerant:
    def allow_request(self, request, view):
        try:
            return super().allow_request(request, view)
        except Exception as exc:  # the cache (Redis) is away: serve rather than refuse
            log.warning("throttle %s not checked: %s", self.scope, exc)
            return True


class UserThrottle(CacheTolerant, UserRateThrottle):
    """Every API request of a signed-in user (scope `user`)."""


class AnonThrottle(CacheTolerant, AnonRateThrottle):
    """Requests without a user (scope `anon`): the schema and the docs; by client address."""


class SubmitThrottle(CacheTolerant, SimpleRateThrottle):
    """Job submissions (scope `submit`): POSTs to the views that create jobs, per user. A list
    of jobs in one POST counts once."""

    scope = "submit"

    def allow_request(self, request, view):
        if request.method in SAFE_METHODS:
            return True
        return super().allow_request(request, view)

    def get_cache_key(self, request, view):
        if request.user and request.user.is_authenticated:
            ident = request.user.pk
        else:
            ident = self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


def team_submit_allowed(team_id: int) -> bool:
    """Count one scheduled run against its team's submit rate (THROTTLE_SUBMIT_RATE, per team
    and per window of the rate's length): False once the window's count is past it."""
    rate = SimpleRateThrottle.THROTTLE_RATES.get("submit")
    if rate is None:
        return True
    allowed, seconds = SimpleRateThrottle.parse_rate(None, rate)
    key = f"throttle_team_submit_{team_id}_{int(time.time() // seconds)}"
    try:
        cache.add(key, 0, timeout=seconds + 1)
        return cache.incr(key) <= allowed
    except Exception as exc:  # the cache (Redis) is away: run rather than refuse
        log.warning("team %s submit rate not checked: %s", team_id, exc)
        return True
