"""Test set-up: a throwaway PostgreSQL and Redis for the whole run (set TEST_DATABASE_URL to
use a running PostgreSQL instead), fast timings for leases and heartbeats, one shared cast of
users, and a real local cluster (web server, two worker nodes, ingester, reconciler) for the
integration tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.services import PostgresServer, RedisServer

# Fast enough that lost nodes are noticed within seconds, slow enough for a loaded 2-core box.
TIMINGS = {
    "HEARTBEAT_S": "0.5",
    "LEASE_S": "4",
    "CANCEL_GRACE_S": "2",
    "CANCEL_POLL_S": "0.2",
    "DISPATCH_GRACE_S": "2",
    "RECONCILE_EVERY_S": "0.5",
    "NODE_OFFLINE_S": "5",
    "EVENT_FLUSH_S": "0.05",
    "BROKER_VISIBILITY_TIMEOUT": "8",
    "BROKER_RESTORE_EVERY_S": "2",
    "WS_ACCESS_RECHECK_S": "1",
    "LIVE_NODE_REFRESH_S": "2",  # a node's unchanged card is sent again within seconds
}
# Throttled but never reached: tests submit fast, and the counts outlive a test in Redis.
# tests/test_throttle.py sets low rates of its own.
GENEROUS_RATES = {
    "THROTTLE_USER_RATE": "1000000/min",
    "THROTTLE_ANON_RATE": "1000000/min",
    "THROTTLE_SUBMIT_RATE": "1000000/min",
    # Failed sign-ins and bad tokens: tests/test_auth_throttle.py sets a low limit of its own.
    "AUTH_FAILURE_LIMIT": "1000000",
}
_servers: list = []
_cleanups: list = []


def fresh_database(server_url: str, name: str) -> str:
    """An empty database beside the portal's (the jobs' warehouse): dropped first, so nothing
    an earlier run left is seen."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def pytest_configure(config):
    if os.environ.get("PORTAL_TEST_CONFIGURED"):
        return
    os.environ["PORTAL_TEST_CONFIGURED"] = "1"
    database_url = os.environ.get("TEST_DATABASE_URL")
    if not database_url:
        pg = PostgresServer().start()
        _servers.append(pg)
        database_url = pg.url
    # Always a Redis of our own: the integration tests restart it.
    redis = RedisServer().start()
    _servers.append(redis)
    redis_url = redis.url
    config.portal_redis = redis
    data_root = tempfile.mkdtemp(prefix="portal-data-")
    # Pages name their files as a checkout that never ran collectstatic does, whatever a
    # `make run` left in staticfiles/ (tests/test_static.py collects into a folder of its own).
    static_root = tempfile.mkdtemp(prefix="portal-static-")
    artifacts_dir = tempfile.mkdtemp(prefix="portal-artifacts-")
    for folder in (data_root, artifacts_dir, static_root):
        _cleanups.append(lambda folder=folder: shutil.rmtree(folder, ignore_errors=True))
    os.environ.update({
        "PORTAL_WIRE_CHECK": "1",  # every event, in every process, checked against its type
        "DATA_ROOT": data_root,
        "STATIC_ROOT": static_root,
        "ARTIFACTS_DIR": artifacts_dir,
        "SHELL_COMMANDS": "/usr/bin/printf,/usr/bin/env,/bin/sleep",
        "WAREHOUSE_URL": fresh_database(database_url, "portal_test_warehouse"),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": "test-only-secret",
        "DEBUG": "0",
        "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        # Two web processes on one port, whatever the cores: every live test goes through both.
        "WEB_PROCESSES": "2",
        **TIMINGS,
        **GENEROUS_RATES,
    })
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    from portal.cluster import ensure_shell_user

    ensure_shell_user(dict(os.environ))  # the user shell programs run as, as `make run` makes it
    import django

    django.setup()


def pytest_unconfigure(config):
    while _servers:
        _servers.pop().cleanup()
    while _cleanups:
        _cleanups.pop()()


@pytest.fixture
def cast(db):
    """The shared cast: two users who must not see each other's jobs, and a staff member."""
    from django.contrib.auth import get_user_model

    from accounts.models import ApiToken, Membership, Team

    User = get_user_model()

    class Cast:
        # No passwords (hashing one takes a third of a second): tests that log in set their own.
        alice = User.objects.create_user("alice")
        bob = User.objects.create_user("bob")
        admin = User.objects.create_user("admin", is_staff=True, is_superuser=True)
        alice_key = ApiToken.issue(alice)[1]
        bob_key = ApiToken.issue(bob)[1]
        # Each in a team of their own: ml is alice's, etl is bob's.
        ml = Team.objects.create(name="ml")
        etl = Team.objects.create(name="etl")
        Membership.objects.create(team=ml, user=alice, role="member")
        Membership.objects.create(team=etl, user=bob, role="member")

    return Cast


@pytest.fixture
def api(cast):
    """An API client authenticated as alice with her token."""
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {cast.alice_key}")
    return client


@pytest.fixture
def alice(cast):
    """The pages as alice sees them: a browser's client, signed in."""
    from django.test import Client

    client = Client()
    client.force_login(cast.alice)
    return client


@pytest.fixture
def published(monkeypatch):
    """What the broadcaster was asked to publish, one {group: [events]} per call; nothing
    reaches a channel layer."""
    from jobs import broadcast

    calls = []

    class Recorder:
        def publish(self, groups):
            calls.append(groups)

    monkeypatch.setattr(broadcast, "broadcaster", lambda: Recorder())
    return calls


def pytest_collection_modifyitems(config, items):
    """Unit tests first, then those that need the whole cluster (started once, kept to the end)."""
    items.sort(key=lambda item: item.get_closest_marker("integration") is not None)


@pytest.fixture
def redis_client():
    """The run's Redis, emptied for this test."""
    from workers import protocol

    client = protocol.redis_client()
    client.flushdb()
    return client


@pytest.fixture(autouse=True)
def fresh_fair_share():
    """Fair share caches the decayed usage for a few seconds per process: each test reads its
    own."""
    from usage import fairshare

    fairshare.forget()
