"""Runs a whole local cluster in the foreground: Redis (unless REDIS_URL is set), the web
server, worker nodes, the ingester and the reconciler. Ctrl-C stops all of it.

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
        proc = self.spawn("redis", [server, "--port", str(port), "--bind", "127.0.0.1",
                                    "--save", "", "--appendonly", "no", "--dir", str(data_dir)])
        wait_for_port(port, proc=proc)
        url = f"redis://127.0.0.1:{port}/0"
        self.env["REDIS_URL"] = url
        return url

    def start_web(self, port: int) -> subprocess.Popen:
        proc = self.spawn("web", [PYTHON, "-m", "portal.web", "-b", "127.0.0.1", "-p",
                                  str(port), "portal.asgi:application"])
        wait_for_port(port, proc=proc)
        return proc

    def worker_env(self) -> dict[str, str]:
        # Workers need Redis only: they get no database credentials.
        return {k: v for k, v in self.env.items()
                if k not in {"DATABASE_URL", "SECRET_KEY", "SECRET_KEY_FILE",
                             "DJANGO_SETTINGS_MODULE"}}

    def start_worker(self, node: str, *, concurrency: int = 2,
                     queues: str = "cpu,etl,train,gpu", extra: list[str] | None = None,
                     labels: str = ""):
        """A worker node; `labels` ("gpu=a100,zone=b") is its NODE_LABELS."""
        argv = [str(BIN / "celery"), "-A", "workers.celery", "worker", "-n", f"{node}@%h",
                "-Q", queues, "-c", str(concurrency), "-l", "warning", "--without-gossip",
                "--without-mingle", "--without-heartbeat", *(extra or [])]
        return self.spawn(node, argv, env={**self.worker_env(), "NODE_LABELS": labels})

    def start_ingester(self, name: str = "ingester"):
        return self.spawn(name, [PYTHON, "manage.py", "ingest"])

    def start_reconciler(self):
        return self.spawn("reconciler", [PYTHON, "manage.py", "reconcile"])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
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


def main() -> None:
    env = local_env()
    ensure_shell_user(env)
    port = int(env.get("PORT", "8000"))
    cluster = Cluster(env)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
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
        for node in ("w1", "w2"):
            cluster.start_worker(node)
        db = env.get("DATABASE_URL") or f"SQLite under {env['DATA_DIR']}"
        print(f"\n  Cluster portal is up: http://127.0.0.1:{port}/\n"
              f"  {login}\n  database: {db}; Redis: {cluster.env['REDIS_URL']}\n"
              f"  Ctrl-C stops everything.\n", flush=True)
        while not stopping.is_set():
            for name, proc in list(cluster.procs.items()):
                if proc.poll() is not None:
                    print(f"[{name}] exited with {proc.returncode}; stopping", flush=True)
                    stopping.set()
            stopping.wait(1)
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping…", flush=True)
        cluster.stop()


if __name__ == "__main__":
    main()
