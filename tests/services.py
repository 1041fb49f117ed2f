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


class Certificates:
    """A CA of the test's own and a server certificate it signed for 127.0.0.1 and
    localhost, made with openssl."""

    def __init__(self, folder: Path | None = None):
        self.dir = folder or Path(tempfile.mkdtemp(prefix="portal-tls-"))
        self.ca, self.ca_key = self.dir / "ca.pem", self.dir / "ca.key"
        self.cert, self.key = self.dir / "server.pem", self.dir / "server.key"

    def make(self) -> Certificates:
        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)

        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", "/CN=portal test CA", "-keyout", str(self.ca_key), "-out", str(self.ca))
        request = self.dir / "server.csr"
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                "-keyout", str(self.key), "-out", str(request))
        extensions = self.dir / "san.ext"
        extensions.write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
        openssl("x509", "-req", "-in", str(request), "-CA", str(self.ca), "-CAkey",
                str(self.ca_key), "-CAcreateserial", "-days", "2", "-extfile", str(extensions),
                "-out", str(self.cert))
        for path in self.dir.iterdir():
            path.chmod(0o644 if path.suffix == ".pem" else 0o600)
        self.dir.chmod(0o755)
        return self


class RedisServer:
    """With tls (Certificates), it speaks TLS only: its plain-text port is off."""

    def __init__(self, port: int | None = None, tls: Certificates | None = None,
                 bind: tuple[str, ...] = ("127.0.0.1",)):
        self.port = port or free_port()
        self.tls = tls
        self.bind = bind
        self.dir = Path(tempfile.mkdtemp(prefix="portal-redis-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed")
        ports = ["--port", str(self.port)]
        if self.tls:
            ports = ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
                     "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no"]
        self.proc = subprocess.Popen(
            [server, *ports, "--bind", *self.bind, "--save", "",
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
    when run as root, since PostgreSQL refuses to run as root). With tls (Certificates), TCP
    clients must use TLS: a plain-text connection is rejected by pg_hba.conf."""

    def __init__(self, tls: Certificates | None = None, listen: tuple[str, ...] = ("127.0.0.1",),
                 trust: tuple[str, ...] = ()):
        """`listen`: the addresses it listens on; `trust`: more networks (CIDR) let in."""
        self.tls = tls
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
        if self.tls:
            options += self._tls_options()
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-t", "60",
                  "-l", str(self.dir / "log"), "start")
        wait_for_port(self.port)
        return self

    def _tls_options(self) -> str:
        """The server's key and certificate in its data folder (its own, mode 0600, as
        PostgreSQL demands), and TCP connections only over TLS."""
        for name, source in (("server.key", self.tls.key), ("server.crt", self.tls.cert)):
            target = self.data / name
            shutil.copy(source, target)
            target.chmod(0o600)
            if self.prefix:
                owner = pwd.getpwnam("postgres")
                os.chown(target, owner.pw_uid, owner.pw_gid)
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 trust\n"
            "hostnossl all all 0.0.0.0/0 reject\n")
        return " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run([*self.prefix, pg_bin("pg_ctl"), "-D", str(self.data), "-m",
                            "immediate", "stop"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)

    def cleanup(self) -> None:
        self.stop()
        time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)
