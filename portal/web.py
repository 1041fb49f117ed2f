"""The web server: WEB_PROCESSES daphne processes (`portal.server`) sharing one port.

    python -m portal.web -b 127.0.0.1 -p 8000 portal.asgi:application

One Python process writes websocket frames one socket after another, on one core. So there are
as many processes as cores (`WEB_PROCESSES`, default: the cores this process may run on), each
with its own socket bound to the port with SO_REUSEPORT: the kernel spreads new connections
over them, and each process has its own relay that joins the live streams once for its sockets.
With one process the server runs here, in this process, as before.

This process only starts the others and waits: it imports neither Django nor daphne, so it adds
little memory. A process that exits is started again (after 1 s, doubling on each quick death,
up to 30 s); SIGTERM or SIGINT stops them all. Each one is started so that it dies with this one.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

from workers.config import env_int

RESTART_MAX_S = 30.0
STABLE_S = 60.0


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def processes() -> int:
    return max(1, env_int("WEB_PROCESSES", 0) or cores())


def _die_with_parent() -> None:
    """Run in each child before it starts: SIGKILL when this process goes, however it goes."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Launcher:
    def __init__(self, argv: list[str], count: int):
        self.argv = [sys.executable, "-m", "portal.server", "--reuse-port", *argv]
        self.count = count
        self.children: dict[int, subprocess.Popen] = {}  # slot -> process
        self.started: dict[int, float] = {}
        self.backoff: dict[int, float] = {}
        self.due: dict[int, float] = {}  # slot -> when to start it again
        self.stopping = False

    def start(self, slot: int) -> None:
        env = {**os.environ, "WEB_PROCESS": str(slot)}
        self.children[slot] = subprocess.Popen(self.argv, env=env, preexec_fn=_die_with_parent)
        self.started[slot] = time.monotonic()

    def stop(self, signum=None, frame=None) -> None:
        self.stopping = True
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)
        for slot in range(self.count):
            self.start(slot)
        while not self.stopping:
            now = time.monotonic()
            for slot, proc in list(self.children.items()):
                if slot in self.due or proc.poll() is None:
                    continue
                quick = now - self.started[slot] < STABLE_S
                wait = min(RESTART_MAX_S, self.backoff.get(slot, 0.5) * 2) if quick else 1.0
                self.backoff[slot] = wait
                self.due[slot] = now + wait
                print(f"web process {slot} exited with {proc.returncode}; starting it again in "
                      f"{wait:.0f} s", file=sys.stderr, flush=True)
            for slot, when in list(self.due.items()):
                if when <= now and not self.stopping:
                    del self.due[slot]
                    self.start(slot)
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        for proc in self.children.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return 0


def main(argv: list[str]) -> int:
    count = processes()
    if count == 1:
        from portal.server import main as serve

        serve(argv)
        return 0
    return Launcher(argv, count).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
