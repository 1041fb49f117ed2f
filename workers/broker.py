"""A worker survives the loss of its Redis broker.

kombu 5.7's Redis transport (with Celery 5.7) crashes the worker when Redis goes away while
messages are prefetched: the consumer closes the broken connection, which detaches the
transport (`transport.client = None`), and closing the channel afterwards tries to put the
prefetched messages back with a new Redis client built from that detached transport. The
`AttributeError: 'NoneType' object has no attribute 'hostname'` escapes `ignore_errors` and
Celery stops with "Unrecoverable error" (the kombu #582 / #970 family, celery #4652).

Putting them back cannot work at that moment anyway, since there is no broker to put them
into, and it is not needed: kombu keeps each delivered message in Redis's unacked hash until
it is acked, and any worker's `restore_visible` returns it to its queue after the visibility
timeout. If Redis itself lost its data, the portal's reconciler sends the attempt again. So
the restore is skipped (and said so in the log) when the transport is already detached; the
consumer then reconnects as it does for any other connection error.
"""

from __future__ import annotations

import logging

from kombu.transport import redis as kombu_redis

log = logging.getLogger("portal.broker")

_original_restore_unacked = kombu_redis.QoS.restore_unacked


def _transport_detached(qos: kombu_redis.QoS) -> bool:
    transport = getattr(qos.channel, "connection", None)
    return transport is None or getattr(transport, "client", None) is None


def restore_unacked(self: kombu_redis.QoS, client=None):
    if client is None and _transport_detached(self):
        log.warning("broker connection closed: %d prefetched message(s) stay in the broker's "
                    "unacked set and return to their queue after the visibility timeout",
                    len(self._delivered))
        self._delivered.clear()
        return None
    return _original_restore_unacked(self, client)


def install() -> None:
    """Idempotent: the Celery app module calls it once on import."""
    kombu_redis.QoS.restore_unacked = restore_unacked
