"""The reconciler: two loops over the whole portal. Recovery (jobs.reconcile) never waits on
anything slow; beside it run cron schedules, alerts, the cluster summary and history roll-ups,
with notifications sent from a bounded pool of their own."""

from __future__ import annotations

import logging
import threading

import redis
from django import db
from django.conf import settings
from django.utils import timezone

from alerts import notify
from alerts.evaluate import evaluate as evaluate_alerts
from audit import feed
from jobs import reconcile as recovery
from nodes import history
from schedules.services import tick as tick_schedules
from usage import services as usage
from workers import protocol

log = logging.getLogger(__name__)


class Reconciler:
    """Two loops. Recovery (lost leases, lost messages, forgotten cancels and drains, silent
    nodes, admission) waits on nothing slow; housekeeping (cron schedules, alerts, the cluster
    summary, history roll-ups, the feed's bound) runs beside it, and alert mail and webhooks go
    out from a bounded pool of their own, so a slow receiver delays neither. Every repair is a
    guarded claim: two reconcilers at once do each repair once."""

    def __init__(self, client: redis.Redis | None = None):
        self.client = client or protocol.redis_client()
        self.suspects: set[str] = set()  # messages seen without their marker (dispatch members)
        self.rolled_minute = None

    def once(self) -> dict:
        """Both passes, one after the other (`reconcile --once`, and the tests)."""
        done = self.recover(timezone.now())
        done.update(self.housekeep(timezone.now(), deliver=notify.deliver_pending))
        return done

    def recover(self, now) -> dict:
        return recovery.recover(self.client, now, self.suspects)

    def housekeep(self, now, *, deliver=None) -> dict:
        done = {"scheduled": tick_schedules(now)}  # cron schedules that are due
        done.update(evaluate_alerts(now, deliver=deliver or notify.deliver_in_background))
        recovery.publish_summary(now)
        done["usage"] = usage.roll_up(now)
        if self.rolled_minute != history.minute_of(now):  # once a minute
            done["rolled_up"] = history.roll_up(now)
            done["pruned"] = (sum(history.prune(now)) + sum(usage.prune(now))
                              + feed.prune(now))
            self.rolled_minute = history.minute_of(now)
        return done

    def run(self, stop: threading.Event) -> None:
        """Recovery here, housekeeping in a thread beside it, until `stop` is set."""
        side = threading.Thread(target=self._loop, args=(self.housekeep, stop),
                                name="housekeeping", daemon=True)
        side.start()
        self._loop(self.recover, stop)
        side.join(timeout=30)

    @staticmethod
    def _loop(step, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                done = step(timezone.now())
                if any(done.values()):
                    log.info("reconciled: %s", done)
            except Exception:  # keep looping: the next pass may find Redis or the database back
                log.exception("%s pass failed", step.__name__)
                db.connection.close()
            stop.wait(settings.RECONCILE_EVERY_S)
        db.connection.close()
