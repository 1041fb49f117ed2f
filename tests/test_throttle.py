"""Request rates: 429 with Retry-After past them, counted per user in the shared cache (Redis)."""

import json

import pytest
import redis
from django.conf import settings
from django.core.cache import cache
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from jobs.models import Job
from workers.config import env_rate

SLEEP = {"kind": "diag.sleep", "params": {"seconds": 1}}
GENEROUS = "1000000/min"


@pytest.fixture(autouse=True)
def empty_cache():
    """Counts live in Redis and outlive a test: each test starts and ends with none."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def rates(monkeypatch):
    """Set rates for this test. DRF reads them into a class attribute when it is imported, so
    override_settings would not reach them: the attribute is patched instead."""

    def set_rates(**low):
        monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES",
                            {"user": GENEROUS, "anon": GENEROUS, "submit": GENEROUS, **low})

    return set_rates


@pytest.fixture
def bob(cast):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {cast.bob_key}")
    return client


def submit(client, body=SLEEP):
    return client.post("/api/v1/jobs/", data=json.dumps(body), content_type="application/json")


def assert_throttled(response):
    assert response.status_code == 429
    assert "throttled" in response.json()["detail"]
    assert 1 <= int(response["Retry-After"]) <= 60


def test_the_submission_past_the_rate_gets_429_with_retry_after_and_creates_nothing(api, rates):
    rates(submit="3/min")
    for _ in range(3):
        assert submit(api).status_code == 201
    response = submit(api)
    assert_throttled(response)
    assert response["Content-Type"] == "application/json"
    assert Job.objects.count() == 3


def test_a_list_of_jobs_counts_as_one_submission(api, rates):
    rates(submit="1/min")
    assert submit(api, [SLEEP, SLEEP, SLEEP]).status_code == 201
    assert_throttled(submit(api, [SLEEP]))
    assert Job.objects.count() == 3


def test_a_throttled_user_does_not_slow_down_another_and_may_still_read(api, bob, rates):
    rates(submit="2/min")
    for _ in range(2):
        submit(api)
    assert_throttled(submit(api))
    assert submit(bob).status_code == 201
    # Reads are not submissions: alice still lists her jobs.
    assert api.get("/api/v1/jobs/").status_code == 200
    assert Job.objects.filter(owner__username="alice").count() == 2


def test_a_retry_is_a_submission(api, rates):
    rates(submit="2/min")
    job_id = submit(api).json()["id"]
    assert api.post(f"/api/v1/jobs/{job_id}/retry/").status_code == 201
    assert_throttled(api.post(f"/api/v1/jobs/{job_id}/retry/"))
    assert Job.objects.count() == 2


def test_every_request_counts_toward_the_user_rate(api, bob, rates):
    rates(user="4/min")
    assert submit(api).status_code == 201
    for _ in range(3):
        assert api.get("/api/v1/kinds/").status_code == 200
    assert_throttled(api.get("/api/v1/jobs/"))
    assert_throttled(submit(api))
    assert Job.objects.count() == 1
    assert bob.get("/api/v1/jobs/").status_code == 200


def test_requests_without_a_user_are_counted_by_address(db, rates):
    rates(anon="2/min")
    client = APIClient(HTTP_ACCEPT="application/json")
    for _ in range(2):
        assert client.get("/api/schema/").status_code == 200
    assert_throttled(client.get("/api/schema/"))
    assert client.get("/api/v1/jobs/").status_code == 401  # refused before it is counted


def test_the_counts_are_in_redis_where_every_web_process_sees_them(api, cast, rates):
    rates(submit="5/min")
    submit(api)
    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = [key.decode() for key in client.keys("*throttle_submit*")]
    assert keys == [f"{settings.CACHES['default']['KEY_PREFIX']}:1:throttle_submit_{cast.alice.pk}"]


def test_without_the_cache_requests_are_let_through(api, rates, monkeypatch):
    rates(submit="1/min", user="1/min")

    class Away:
        def get(self, *args, **kwargs):
            raise redis.ConnectionError("Redis is restarting")

    monkeypatch.setattr(SimpleRateThrottle, "cache", Away())
    assert submit(api).status_code == 201
    assert submit(api).status_code == 201


@pytest.mark.parametrize(("value", "rate"), [
    ("", "1200/min"), ("30/s", "30/s"), ("5000/hour", "5000/hour"), ("off", None),
    (" 10/day ", "10/day"),
])
def test_rates_come_from_the_environment(monkeypatch, value, rate):
    monkeypatch.setenv("THROTTLE_TEST_RATE", value)
    assert env_rate("THROTTLE_TEST_RATE", "1200/min") == rate


@pytest.mark.parametrize("value", ["many", "10", "10/fortnight", "-1/min", "1.5/s"])
def test_a_rate_that_does_not_parse_is_refused_at_start(monkeypatch, value):
    monkeypatch.setenv("THROTTLE_TEST_RATE", value)
    with pytest.raises(ValueError, match="THROTTLE_TEST_RATE"):
        env_rate("THROTTLE_TEST_RATE", "1200/min")
