"""The web server: WEB_PROCESSES daphne processes (`portal.server`) sharing one port.

    python -m portal.web -b 127.0.0.1 -p 8000 portal.asgi:application

One Python process writes websocket frames one socket after another, on one core. So there are
as many processes as cores (`WEB_PROCESSES`, default: the cores this process may run on), each
with its own socket bound to the port with SO_REUSEPORT: the kernel spreads new connections
over them, and each process has its own relay that joins the live streams once for its sockets.
With one process the server runs here, in this process, as before.

With several, this process loads Django and the ASGI application once (settings, every app's
models, the URLconf, the job kinds) and then forks the servers, as gunicorn's preload does: the
~100 MB of modules and objects are one copy in memory, shared copy-on-write, not one per
process. As Python's documentation of `gc.freeze()` advises, the collector is off while
loading (so that it leaves no freed holes in those pages for the children to fill) and
everything is frozen before each fork (so that the children's collections do not write to, and
so copy, those pages).
Nothing that must be a process's own exists before the fork: no thread, no database
connection, no Redis client; the event loop and Twisted reactor that importing daphne makes
are replaced in each child by fresh ones, and each child binds its own socket.

A server that exits is forked again (after 1 s, doubling on each quick death, up to 30 s);
SIGTERM or SIGINT stops them all. Each one dies with this one (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import sys
import threading
import time
import traceback

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
    """Run in each child: SIGKILL when this process goes, however it goes."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def load_kinds() -> None:
    """Every kind module, as the first submit would import them (their parameters, not the
    libraries their jobs run on, which load on the workers)."""
    from workers.kinds import examples, registry

    registry()
    examples()


def preload() -> None:
    """What every server needs and may share: Django set up, the ASGI application and the
    URLconf imported. Then nothing a process must own may be open: checked, not assumed."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    from django.db import connections
    from django.urls import get_resolver

    import portal.asgi  # django.setup(), and daphne.server through its app
    import portal.server  # noqa: F401

    _ = get_resolver().url_patterns  # every view module, as a first request would import
    load_kinds()
    connections.close_all()
    if threading.active_count() != 1:
        raise RuntimeError("threads running before the web processes fork: "
                           f"{[t.name for t in threading.enumerate()]}")
    from channels.layers import channel_layers

    if channel_layers.backends:
        raise RuntimeError("a channel layer was made before the web processes fork")


def reactor_holders() -> list[dict]:
    """The module namespaces that hold the installed reactor by the name `reactor` (daphne.server
    and twisted.internet): looked up here, in the parent, since walking every module in a child
    would write to (and so copy) the pages of every module's objects."""
    reactor = sys.modules["twisted.internet.reactor"]
    found = []
    for module in list(sys.modules.values()):
        names = getattr(module, "__dict__", None)
        if isinstance(names, dict) and names.get("reactor") is reactor:
            found.append(names)
    return found


def fresh_reactor(holders: list[dict]) -> None:
    """In a forked child: a new asyncio loop and Twisted reactor in place of those importing
    daphne made in the parent (their epoll and wake-up descriptors are the parent's too, and
    every child's)."""
    import asyncio

    import daphne.server
    from twisted.internet import asyncioreactor

    old = sys.modules.pop("twisted.internet.reactor")
    old_loop = daphne.server.twisted_loop
    loop = asyncio.new_event_loop()
    asyncioreactor.install(loop)
    new = sys.modules["twisted.internet.reactor"]
    daphne.server.twisted_loop = loop
    for names in holders:
        if names.get("reactor") is old:
            names["reactor"] = new
    old_loop.close()


class Launcher:
    def __init__(self, argv: list[str], count: int):
        self.argv = ["--reuse-port", *argv]
        self.count = count
        self.children: dict[int, int] = {}  # slot -> pid
        self.exited: dict[int, int] = {}  # slot -> exit status, until started again
        self.started: dict[int, float] = {}
        self.backoff: dict[int, float] = {}
        self.due: dict[int, float] = {}  # slot -> when to start it again
        self.stopping = False
        self.holders: list[dict] = []

    def start(self, slot: int) -> None:
        gc.freeze()
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            self.child(slot, parent)  # never returns
        self.children[slot] = pid
        self.exited.pop(slot, None)
        self.started[slot] = time.monotonic()

    def child(self, slot: int, parent: int) -> None:
        status = 1
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            gc.enable()
            _die_with_parent()
            if os.getppid() != parent:  # it went before the line above
                os._exit(1)
            os.environ["WEB_PROCESS"] = str(slot)
            fresh_reactor(self.holders)
            from portal.server import main as serve

            serve(self.argv)
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)

    def stop(self, signum=None, frame=None) -> None:
        self.stopping = True
        for pid in self.running():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def running(self) -> list[int]:
        return [pid for slot, pid in self.children.items() if slot not in self.exited]

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for slot, child in self.children.items():
                if child == pid:
                    self.exited[slot] = os.waitstatus_to_exitcode(status)

    def run(self) -> int:
        gc.disable()
        preload()
        self.holders = reactor_holders()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)
        for slot in range(self.count):
            self.start(slot)
        gc.enable()
        while not self.stopping:
            self.reap()
            now = time.monotonic()
            for slot, code in list(self.exited.items()):
                if slot in self.due:
                    continue
                quick = now - self.started[slot] < STABLE_S
                wait = min(RESTART_MAX_S, self.backoff.get(slot, 0.5) * 2) if quick else 1.0
                self.backoff[slot] = wait
                self.due[slot] = now + wait
                print(f"web process {slot} exited with {code}; starting it again in "
                      f"{wait:.0f} s", file=sys.stderr, flush=True)
            for slot, when in list(self.due.items()):
                if when <= now and not self.stopping:
                    del self.due[slot]
                    self.start(slot)
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        while self.running() and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        for pid in self.running():
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        return 0


def main(argv: list[str]) -> int:
    count = processes()
    if count == 1:
        from portal.server import main as serve

        load_kinds()
        serve(argv)
        return 0
    return Launcher(argv, count).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
