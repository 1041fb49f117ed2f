"""A real local cluster for the integration and browser tests: the web server (daphne), two
worker nodes (Celery prefork pools), the ingester and the reconciler, all as subprocesses on the
test database and the run's own Redis. Started once; tests that kill parts put them back."""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from django.core.management.base import CommandError
from django.test import TransactionTestCase

from portal.cluster import Cluster, free_port

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# The `http` fixture's user, whose personal team its jobs (and their files and tables) are in.
LIVE_TEAM = "runner"
TERMINAL = {"succeeded", "failed", "cancelled"}


def _emptied_again_if_deadlocked(teardown):
    """Between tests the tables are emptied (TRUNCATE) while the cluster's processes go on
    writing: the TRUNCATE can be the one PostgreSQL picks to break a deadlock. It is simply
    tried again."""

    def fixture_teardown(self):
        for attempt in range(3):
            try:
                return teardown(self)
            except CommandError:
                if attempt == 2:
                    raise
                time.sleep(0.5)

    return fixture_teardown


TransactionTestCase._fixture_teardown = _emptied_again_if_deadlocked(
    TransactionTestCase._fixture_teardown)


class LiveCluster:
    def __init__(self, cluster: Cluster, port: int, redis_server):
        self.cluster = cluster
        self.port = port
        self.redis_server = redis_server
        self.base = f"http://127.0.0.1:{port}"

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def ensure_workers(self, *names: str) -> None:
        for name in names or ("w1", "w2"):
            proc = self.cluster.procs.get(name)
            if proc is None or proc.poll() is not None:
                # The gpu queue is left to nodes that tests start for it.
                self.cluster.start_worker(name, queues="cpu,etl,train")
        self.wait_for_nodes(*(names or ("w1", "w2")))

    def wait_for_nodes(self, *names: str, timeout: float = 60) -> None:
        from nodes.models import Node

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            online = set(Node.objects.filter(name__in=names, state="online")
                         .values_list("name", flat=True))
            if online == set(names):
                return
            time.sleep(0.2)
        raise TimeoutError(f"nodes {names} did not come online")

    def ensure(self, name: str) -> None:
        proc = self.cluster.procs.get(name)
        if proc is None or proc.poll() is not None:
            {"ingester": self.cluster.start_ingester,
             "reconciler": self.cluster.start_reconciler}[name]()


def wait_for_job(job_id, *, states=TERMINAL, timeout: float = 60.0):
    from jobs.models import Job

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = Job.objects.get(pk=job_id)
        if job.state in states:
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} still {job.state} after {timeout} s: {job.message}")


def test_database_url() -> str:
    from django.db import connection

    parts = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(parts._replace(path=f"/{connection.settings_dict['NAME']}"))


@pytest.fixture(scope="session")
def live_cluster(request, django_db_setup, django_db_blocker):
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "cluster.log", "a", buffering=1)
    with django_db_blocker.unblock():
        env = {**os.environ, "DATABASE_URL": test_database_url()}
    cluster = Cluster(env, log=log)
    port = free_port()
    request.config.portal_redis.restart()  # nothing left over from the unit tests
    try:
        cluster.start_web(port)
        cluster.start_ingester()
        cluster.start_reconciler()
        live = LiveCluster(cluster, port, request.config.portal_redis)
        with django_db_blocker.unblock():
            live.ensure_workers()
        yield live
    finally:
        cluster.stop()
        log.close()


@pytest.fixture
def live(live_cluster, transactional_db):
    """The running cluster, with every part back up and an empty database for this test."""
    from workers import protocol

    protocol.redis_client().delete(*(protocol.drain_key(n) for n in ("w1", "w2", "w9")))
    live_cluster.ensure("ingester")
    live_cluster.ensure("reconciler")
    live_cluster.ensure_workers()
    return live_cluster


@pytest.fixture
def user_key(transactional_db):
    from django.contrib.auth import get_user_model

    from accounts.models import ApiToken

    user = get_user_model().objects.create_user("runner")
    return ApiToken.issue(user)[1]


@pytest.fixture
def http(user_key):
    session = requests.Session()
    session.headers["Authorization"] = f"Token {user_key}"
    return session
