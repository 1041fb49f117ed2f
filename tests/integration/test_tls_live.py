"""Encryption in transit, end to end: a Redis that speaks only TLS (broker, event stream,
channel layer) and a PostgreSQL that rejects plain-text TCP (the portal's database and the
warehouse), both with certificates this test makes with openssl; a cluster of its own runs a
fanned-out load over them with sslmode=verify-full and REDIS_CA_FILE, and plain-text clients
are refused."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
import redis
import requests

from portal.cluster import Cluster, free_port
from tests.integration.conftest import ARTIFACTS
from tests.services import Certificates, PostgresServer, RedisServer
from workers.config import with_redis_tls

pytestmark = pytest.mark.integration
ROWS = 500


@pytest.fixture(scope="module")
def servers():
    certs = Certificates().make()
    pg = PostgresServer(tls=certs).start()
    cache = RedisServer(tls=certs).start()
    try:
        yield certs, pg, cache
    finally:
        cache.cleanup()
        pg.cleanup()
        shutil.rmtree(certs.dir, ignore_errors=True)


def verified(pg: PostgresServer, certs: Certificates, database: str) -> str:
    return (f"postgres://postgres@127.0.0.1:{pg.port}/{database}"
            f"?sslmode=verify-full&sslrootcert={certs.ca}")


def wait_until_done(session, url: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = session.get(url, timeout=10).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise TimeoutError(f"job still {job['state']}")


def test_a_job_runs_end_to_end_over_tls_and_plain_text_is_refused(servers):
    certs, pg, cache = servers
    with psycopg.connect(verified(pg, certs, "postgres"), autocommit=True) as conn:
        conn.execute("CREATE DATABASE portal")
        conn.execute("CREATE DATABASE warehouse")
    data_root = Path(tempfile.mkdtemp(prefix="portal-tls-data-"))
    artifacts = Path(tempfile.mkdtemp(prefix="portal-tls-artifacts-"))
    env = {**os.environ, "DATABASE_URL": verified(pg, certs, "portal"),
           "WAREHOUSE_URL": verified(pg, certs, "warehouse"), "REDIS_URL": cache.url,
           "REDIS_CA_FILE": str(certs.ca), "DATA_ROOT": str(data_root),
           "ARTIFACTS_DIR": str(artifacts), "PORTAL_REDIS_PREFIX": "tls"}
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "tls-cluster.log", "a", buffering=1)
    cluster = Cluster(env, log=log)
    try:
        cluster.manage("migrate", "--noinput")
        key = cluster.manage("shell", "-c", (
            "from django.contrib.auth import get_user_model;"
            "from accounts.models import ApiToken, Membership, Team;"
            "user = get_user_model().objects.create_user('tls');"
            "team = Team.objects.create(name='tls');"
            "Membership.objects.create(team=team, user=user, role='member');"
            "print(ApiToken.issue(user)[1])")).splitlines()[-1]
        folder = data_root / "teams" / "tls" / "in"
        folder.mkdir(parents=True)
        (folder / "rows.csv").write_text("n\n" + "".join(f"{i}\n" for i in range(ROWS)))
        port = free_port()
        cluster.start_web(port)
        cluster.start_ingester()
        cluster.start_reconciler()
        cluster.start_worker("t1", queues="cpu,etl")
        session = requests.Session()
        session.headers["Authorization"] = f"Token {key}"
        base = f"http://127.0.0.1:{port}"
        # The first request of a fresh web process loads the job kinds (pandas, DuckDB...).
        response = session.post(f"{base}/api/v1/jobs/", timeout=60, json={
            "kind": "etl.ingest", "params": {"input": "in/rows.csv", "target": "warehouse",
                                             "table": "over_tls", "chunk_rows": 200}})
        assert response.status_code == 201, response.text
        job = wait_until_done(session, f"{base}/api/v1/jobs/{response.json()['id']}/")
        assert job["state"] == "succeeded", job
        assert job["result"]["rows"] == ROWS and job["result"]["partitions"] == 3
        with psycopg.connect(verified(pg, certs, "warehouse")) as conn:
            assert conn.execute("SELECT count(*), sum(n) FROM team_tls.over_tls").fetchone() == (
                ROWS, sum(range(ROWS)))
            assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                                ).fetchone() == (True,)
    finally:
        cluster.stop()
        log.close()
        shutil.rmtree(data_root, ignore_errors=True)
        shutil.rmtree(artifacts, ignore_errors=True)

    # The channel layer, configured as the settings do, over the same URL.
    from channels_redis.pubsub import RedisPubSubChannelLayer

    async def round_trip():
        layer = RedisPubSubChannelLayer(hosts=[with_redis_tls(cache.url, str(certs.ca))])
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "tls.check", "n": 1})
        received = await asyncio.wait_for(layer.receive(channel), 10)
        await layer.flush()
        return received

    assert asyncio.run(round_trip()) == {"type": "tls.check", "n": 1}

    # Plain text is refused by both servers; TLS without the CA is refused by the clients.
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host="127.0.0.1", port=cache.port, socket_timeout=3).ping()
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis.Redis.from_url(with_redis_tls(cache.url, None), socket_timeout=3).ping()
    assert redis.Redis.from_url(with_redis_tls(cache.url, str(certs.ca))).ping()
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(f"postgres://postgres@127.0.0.1:{pg.port}/portal?sslmode=disable")
    with pytest.raises(psycopg.OperationalError, match="certificate"):
        psycopg.connect(f"postgres://postgres@127.0.0.1:{pg.port}/portal?sslmode=verify-full"
                        f"&sslrootcert={certs.cert}")  # not the CA that signed it
