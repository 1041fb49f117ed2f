"""Run the periodic loop: lost attempts, lost messages, forgotten cancels, silent nodes."""

import logging
import signal
import threading

from django import db
from django.conf import settings
from django.core.management.base import BaseCommand

from jobs.reconcile import Reconciler

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
        while not stop.is_set():
            try:
                done = reconciler.once()
                if any(done.values()):
                    log.info("reconciled: %s", done)
            except Exception:  # keep looping: the next pass may find Redis or the database back
                log.exception("reconcile pass failed")
                db.connection.close()
            if once:
                return
            stop.wait(settings.RECONCILE_EVERY_S)
