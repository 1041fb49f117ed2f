"""Run the periodic loops: lost attempts, lost messages, forgotten cancels, silent nodes; and
beside them schedules, alerts, the cluster summary and history roll-ups."""

import logging
import signal
import threading

from django.core.management.base import BaseCommand

from portal.reconciler import Reconciler

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Repair what dead workers or a restarted Redis leave behind (runs until stopped)."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="one pass, then exit")

    def handle(self, *args, once, **options):
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.stdout.write("reconciler running")
        reconciler = Reconciler()
        if once:
            log.info("reconciled: %s", reconciler.once())
            return
        reconciler.run(stop)
