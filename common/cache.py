"""The shared cache (Redis) with one client per connection pool.

Django's Redis cache makes a new `redis.Redis` for every call, and redis-py builds its table
of reply parsers in each (~0.15 ms): a REST request checks its rates and the sign-in lockout
in five to seven cache calls, so a millisecond of every request went there. A client is
thread-safe and the pool under it is the one Django keeps, so one per pool is enough."""

from __future__ import annotations

from django.core.cache.backends.redis import RedisCache, RedisCacheClient


class ReusedClientCacheClient(RedisCacheClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._clients: dict[int, object] = {}

    def get_client(self, key=None, *, write=False):
        pool = self._get_connection_pool(write)
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients[id(pool)] = self._client(connection_pool=pool)
        return client


class PortalRedisCache(RedisCache):
    def __init__(self, server, params):
        super().__init__(server, params)
        self._class = ReusedClientCacheClient
