"""Runs a whole local cluster in the foreground: Redis (unless REDIS_URL is set), the web
server (`portal.web`: WEB_PROCESSES processes on one port, one per core unless set), worker
nodes, the ingester and the reconciler. A part that dies is started again, with
backoff; Ctrl-C (SIGINT) or SIGTERM stops all of it.

    python -m portal.cluster            (what `make run` does)
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(PYTHON).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


class Cluster:
    """Starts and stops the cluster's processes; the tests start theirs through it too."""

    def __init__(self, env: dict[str, str], *, quiet: bool = False, log=None):
        self.env = dict(env)
        self.procs: dict[str, subprocess.Popen] = {}
        # How to start each part again, as it was first started: what supervision restarts.
        self.starters: dict[str, Callable[[], subprocess.Popen]] = {}
        # Held while a part is killed or started, so that supervision never starts a second
        # copy of a part that someone else is restarting.
        self.lock = threading.RLock()
        self.quiet = quiet
        self.log = log or sys.stdout

    def spawn(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env or self.env, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self.procs[name] = proc
        threading.Thread(target=self._relay, args=(name, proc), daemon=True).start()
        return proc

    def _relay(self, name: str, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            if not self.quiet:
                self.log.write(f"[{name}] {line.decode(errors='replace')}")
                self.log.flush()

    def manage(self, *args: str) -> str:
        out = subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=self.env, check=True,
                             capture_output=True, text=True)
        return out.stdout.strip()

    def start_redis(self, data_dir: Path, port: int | None = None) -> str:
        port = port or free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        server = shutil.which("redis-server")
        if server is None:
            raise SystemExit("redis-server is not installed (see the README's prerequisites)")
        argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(data_dir)]

        def start() -> subprocess.Popen:
            proc = self.spawn("redis", argv)
            wait_for_port(port, proc=proc)
            return proc

        start()
        self.starters["redis"] = start
        url = f"redis://127.0.0.1:{port}/0"
        self.env["REDIS_URL"] = url
        return url

    def start_web(self, port: int) -> subprocess.Popen:
        def start() -> subprocess.Popen:
            proc = self.spawn("web", [PYTHON, "-m", "portal.web", "-b", "127.0.0.1", "-p",
                                      str(port), "portal.asgi:application"])
            wait_for_port(port, proc=proc)
            return proc

        self.starters["web"] = start
        return start()

    def worker_env(self) -> dict[str, str]:
        # Workers need Redis only: they get no database credentials.
        return {k: v for k, v in self.env.items()
                if k not in {"DATABASE_URL", "SECRET_KEY", "SECRET_KEY_FILE",
                             "DJANGO_SETTINGS_MODULE"}}

    def start_worker(self, node: str, *, concurrency: int = 2,
                     queues: str = "cpu,etl,train,gpu", extra: list[str] | None = None,
                     labels: str = "", prefix: list[str] | None = None,
                     env: dict[str, str] | None = None):
        """A worker node; `labels` ("gpu=a100,zone=b") is its NODE_LABELS. `prefix` runs it
        through another command (`ip netns exec NAME`), `env` overrides its environment."""
        argv = [*(prefix or []), str(BIN / "celery"), "-A", "workers.celery", "worker",
                "-n", f"{node}@%h", "-Q", queues, "-c", str(concurrency), "-l", "warning",
                "--without-gossip", "--without-mingle", "--without-heartbeat", *(extra or [])]
        env = {**self.worker_env(), "NODE_LABELS": labels, **(env or {})}
        self.starters[node] = lambda: self.spawn(node, argv, env=env)
        return self.starters[node]()

    def start_ingester(self, name: str = "ingester"):
        self.starters[name] = lambda: self.spawn(name, [PYTHON, "manage.py", "ingest"])
        return self.starters[name]()

    def start_reconciler(self):
        self.starters["reconciler"] = lambda: self.spawn("reconciler",
                                                         [PYTHON, "manage.py", "reconcile"])
        return self.starters["reconciler"]()

    def restart(self, name: str) -> subprocess.Popen:
        """Start a part again the way it was started (after it died or was killed)."""
        with self.lock:
            return self.starters[name]()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        with self.lock:
            proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def stop(self) -> None:
        # The web server and workers first, Redis last, so nothing loses its broker early.
        order = [n for n in self.procs if n != "redis"] + (["redis"] if "redis" in self.procs
                                                          else [])
        for name in order:
            proc = self.procs[name]
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        for name in order:
            proc = self.procs[name]
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


class Supervisor:
    """Keeps every part of a cluster running: one that exits is logged and started again after
    a backoff that doubles on each quick death (1 s up to MAX_BACKOFF_S) and starts over once
    the part has stayed up for STABLE_S. A worker node is started again no sooner than
    `node_delay` after it died: long enough for the portal to see it offline and move its jobs
    to the other nodes, as it would for a machine that went away."""

    MAX_BACKOFF_S = 30.0
    STABLE_S = 60.0

    def __init__(self, cluster: Cluster, *, node_delay: float = 0.0, say=None,
                 nodes: tuple[str, ...] = ()):
        self.cluster = cluster
        self.node_delay = node_delay
        self.nodes = set(nodes)
        self.say = say or (lambda text: print(text, flush=True))
        self.started = {name: time.monotonic() for name in cluster.procs}
        self.backoff: dict[str, float] = {}
        self.due: dict[str, tuple[float, subprocess.Popen]] = {}  # when, and the dead one
        self.restarts: dict[str, int] = {}

    def delay(self, name: str, uptime: float) -> float:
        quick = uptime < self.STABLE_S
        backoff = min(self.MAX_BACKOFF_S, self.backoff.get(name, 0.5) * 2) if quick else 1.0
        self.backoff[name] = backoff
        return max(backoff, self.node_delay) if name in self.nodes else backoff

    def check(self) -> None:
        """One pass: note the parts that died, start those whose backoff is over."""
        now = time.monotonic()
        for name, proc in list(self.cluster.procs.items()):
            if name in self.due or proc.poll() is None:
                continue
            wait = self.delay(name, now - self.started.get(name, now))
            self.due[name] = (now + wait, proc)
            self.say(f"[{name}] exited with {proc.returncode}; starting it again in {wait:.0f} s")
        for name, (when, dead) in sorted(self.due.items(), key=lambda item: item[1][0]):
            if when > time.monotonic():
                continue
            del self.due[name]
            with self.cluster.lock:
                if self.cluster.procs.get(name) is not dead:
                    continue  # killed on purpose, or already started again by its killer
                try:
                    self.cluster.restart(name)
                except (RuntimeError, TimeoutError, OSError) as exc:
                    self.say(f"[{name}] did not start again ({exc})")
                    self.due[name] = (time.monotonic() + self.delay(name, 0.0),
                                      self._put_down(name) or dead)
                    continue
            self.started[name] = time.monotonic()
            self.restarts[name] = self.restarts.get(name, 0) + 1
            self.say(f"[{name}] started again (restart {self.restarts[name]})")

    def _put_down(self, name: str) -> subprocess.Popen | None:
        """A start that failed half-way (never listened): that process goes too, so that the
        next try is the only copy."""
        proc = self.cluster.procs.get(name)
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
        return proc

    def run(self, stopping: threading.Event, every: float = 0.5) -> None:
        while not stopping.is_set():
            self.check()
            stopping.wait(every)


def local_env() -> dict[str, str]:
    env = dict(os.environ)
    data = Path(env.setdefault("DATA_DIR", str(ROOT / "data")))
    data.mkdir(parents=True, exist_ok=True)
    if not env.get("SECRET_KEY") and not env.get("SECRET_KEY_FILE"):
        key_file = data / "secret_key"
        if not key_file.exists():
            key_file.write_text(secrets.token_urlsafe(50))
            key_file.chmod(0o600)
        env["SECRET_KEY_FILE"] = str(key_file)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def ensure_shell_user(env: dict[str, str]) -> None:
    """Shell jobs' programs run as SHELL_USER: a worker running as root makes it first."""
    name = env.get("SHELL_USER", "portal-shell")
    if name and os.geteuid() == 0:
        subprocess.run([str(ROOT / "scripts" / "shell-user.sh"), name], check=True)


def install_stop_handlers(stopping: threading.Event, supervising: threading.Event) -> None:
    """SIGINT and SIGTERM stop the cluster. Installed explicitly: a process started in the
    background by a shell script inherits SIGINT as ignored, and Python keeps that."""

    def on_signal(signum, frame):
        stopping.set()
        if not supervising.is_set():  # still starting up: leave the start-up at once
            raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)


def node_restart_delay(env: dict[str, str]) -> float:
    """A node comes back after the portal has shown it offline (NODE_OFFLINE_S of silence, then
    the reconciler's next pass): `NODE_RESTART_S` to choose another delay."""
    if env.get("NODE_RESTART_S"):
        return float(env["NODE_RESTART_S"])
    offline = float(env.get("NODE_OFFLINE_S") or 30.0)
    return offline + 2 * float(env.get("RECONCILE_EVERY_S") or 2.0)


def main() -> None:
    env = local_env()
    ensure_shell_user(env)
    port = int(env.get("PORT", "8000"))
    cluster = Cluster(env)
    stopping, supervising = threading.Event(), threading.Event()
    install_stop_handlers(stopping, supervising)
    nodes = ("w1", "w2")
    try:
        if not env.get("REDIS_URL"):
            cluster.start_redis(Path(env["DATA_DIR"]) / "redis")
        cluster.manage("migrate", "--noinput")
        cluster.manage("collectstatic", "--noinput")  # hashed, compressed: cached for good
        login = cluster.manage("demo_user")
        cluster.manage("demo_data")  # the 2013 NYC flights, for the examples
        cluster.start_web(port)
        cluster.start_ingester()
        cluster.start_reconciler()
        for node in nodes:
            cluster.start_worker(node)
        db = env.get("DATABASE_URL") or f"SQLite under {env['DATA_DIR']}"
        print(f"\n  Cluster portal is up: http://127.0.0.1:{port}/\n"
              f"  {login}\n  database: {db}; Redis: {cluster.env['REDIS_URL']}\n"
              f"  A part that dies is started again; Ctrl-C stops everything.\n", flush=True)
        supervising.set()
        if not stopping.is_set():
            Supervisor(cluster, node_delay=node_restart_delay(env), nodes=nodes).run(stopping)
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping…", flush=True)
        cluster.stop()


if __name__ == "__main__":
    main()
