"""Throwaway Redis and PostgreSQL servers started from the installed binaries, for the tests and
the benchmarks: nothing depends on what an earlier run, or the machine, left behind."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from portal.cluster import free_port, wait_for_port


class RedisServer:
    def __init__(self, port: int | None = None, bind: tuple[str, ...] = ("127.0.0.1",)):
        self.port = port or free_port()
        self.bind = bind
        self.dir = Path(tempfile.mkdtemp(prefix="portal-redis-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed")
        self.proc = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", *self.bind, "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--loglevel", "warning",
             # Addresses beyond loopback are the test's own (see chaos/netns.py).
             "--protected-mode", "yes" if self.bind == ("127.0.0.1",) else "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """A restart of a server that keeps nothing on disk: everything in it is gone."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def pg_bin(name: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    found = shutil.which(name)
    if candidates:
        return candidates[0]
    if found:
        return found
    raise RuntimeError(f"PostgreSQL's {name} is not installed (see the README)")


class PostgresServer:
    """initdb into a temporary folder and start a server on a free port (as the postgres user
    when run as root, since PostgreSQL refuses to run as root)."""

    def __init__(self, listen: tuple[str, ...] = ("127.0.0.1",), trust: tuple[str, ...] = ()):
        """`listen`: the addresses it listens on; `trust`: more networks (CIDR) let in."""
        self.port = free_port()
        self.listen = listen
        self.trust = trust
        self.dir = Path(tempfile.mkdtemp(prefix="portal-pg-"))
        self.data = self.dir / "data"
        self.sock = self.dir / "sock"
        self.prefix: list[str] = []

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        subprocess.run([*self.prefix, *argv], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)

    def start(self) -> PostgresServer:
        self.sock.mkdir()
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (self.dir, self.sock):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self._run(pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync", "--no-instructions")
        with open(self.data / "pg_hba.conf", "a") as hba:
            hba.writelines(f"host all all {net} trust\n" for net in self.trust)
        options = (f"-p {self.port} -k {self.sock} -c listen_addresses={','.join(self.listen)} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=200")
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-t", "60",
                  "-l", str(self.dir / "log"), "start")
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run([*self.prefix, pg_bin("pg_ctl"), "-D", str(self.data), "-m",
                            "immediate", "stop"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)

    def cleanup(self) -> None:
        self.stop()
        time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)
