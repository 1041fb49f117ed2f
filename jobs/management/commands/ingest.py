"""Run the ingester: the workers' event stream into the database, then out to the websockets."""

import signal

from django.core.management.base import BaseCommand

from jobs.ingest import Ingester


class Command(BaseCommand):
    help = "Read the workers' event stream and write it to the database (runs until stopped)."

    def handle(self, *args, **options):
        stopping = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stopping.append(True))
        self.stdout.write("ingester running")
        Ingester().run(stop=lambda: bool(stopping))
