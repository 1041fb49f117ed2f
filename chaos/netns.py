"""Each worker node in a network namespace of its own, joined to the host by a veth pair with
private addresses of this run (10.213.B.4i+1 on the host side, .4i+2 inside, a /30 each), so
that its link can be cut and restored. The host forwards between this run's pairs only (on
their host ends, nowhere else): a node reaches Redis and the warehouse on its host-side
address, and the other nodes of the run (a gang's ranks meet across these links) on theirs.
Nothing is routed beyond 10.213.B.0/24. Needs root.

Runs side by side never share a block B: a run holds an exclusive lock on its block's file
under LOCK_DIR for as long as it lives (the kernel drops it when the process dies), and takes
no block whose addresses some interface already has (another run's, whatever code made it).
Namespaces and links are named after the block, so a run's leftovers are found and removed by
the next run that takes its block."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

NETWORK = "10.213.0.0/16"
BLOCKS = range(1, 251)
LOCK_DIR = Path("/run/lock") if Path("/run/lock").is_dir() else Path("/tmp")


def why_not() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "not root: `ip netns` needs root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


def ip(*args: str, ns: str | None = None) -> None:
    argv = ["ip", *(["netns", "exec", ns, "ip"] if ns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


def forward(interface: str) -> None:
    """Let the host forward what arrives on this interface (this one only: the host's other
    interfaces, and its global ip_forward, stay as they are)."""
    Path(f"/proc/sys/net/ipv4/conf/{interface}/forwarding").write_text("1\n")


def blocks_in_use() -> set[int]:
    """The blocks of 10.213.0.0/16 that some interface of the host has an address in."""
    done = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True)
    return {int(b) for b in re.findall(r"inet 10\.213\.(\d+)\.", done.stdout)}


@dataclass
class Slot:
    """One node's namespace and link."""

    ns: str
    host_if: str
    node_if: str
    host_ip: str
    node_ip: str

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]

    def cut(self) -> None:
        ip("link", "set", self.host_if, "down")

    def restore(self) -> None:
        ip("link", "set", self.host_if, "up")


class Namespaces:
    def __init__(self, count: int, run_id: int | None = None):
        self.count = count
        self.first = (os.getpid() if run_id is None else run_id) % len(BLOCKS)
        self.block: int | None = None
        self.slots: list[Slot] = []
        self._lock = None

    @property
    def subnet(self) -> str:
        return f"10.213.{self.block}.0/24"

    def create(self) -> Namespaces:
        try:
            self._take_block()
            self._create()
        except BaseException:
            self.remove()
            raise
        return self

    def _take_block(self) -> None:
        """The first block from this run's own starting point that no live run holds and no
        interface uses; its lock is held until remove()."""
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        for i in range(len(BLOCKS)):
            block = BLOCKS[(self.first + i) % len(BLOCKS)]
            handle = open(LOCK_DIR / f"portal-chaos-net-{block}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            self.block, self._lock = block, handle
            self.slots = [self._slot(i) for i in range(self.count)]
            self._remove_namespaces()  # what a dead run of this block left
            if block not in blocks_in_use():
                return
            self._release()
        raise RuntimeError(f"no free block of {NETWORK} for {self.count} namespaces")

    def _slot(self, i: int) -> Slot:
        b = self.block
        return Slot(ns=f"pcnet{b}-{i}", host_if=f"pcn{b}h{i}", node_if=f"pcn{b}n{i}",
                    host_ip=f"10.213.{b}.{4 * i + 1}", node_ip=f"10.213.{b}.{4 * i + 2}")

    def _create(self) -> None:
        for slot in self.slots:
            ip("netns", "add", slot.ns)
            ip("link", "add", slot.host_if, "type", "veth", "peer", "name", slot.node_if)
            ip("link", "set", slot.node_if, "netns", slot.ns)
            ip("addr", "add", f"{slot.host_ip}/30", "dev", slot.host_if)
            ip("link", "set", slot.host_if, "up")
            forward(slot.host_if)
            ip("addr", "add", f"{slot.node_ip}/30", "dev", slot.node_if, ns=slot.ns)
            ip("link", "set", slot.node_if, "up", ns=slot.ns)
            ip("link", "set", "lo", "up", ns=slot.ns)
            # The run's other nodes through the host (their links, not beyond).
            ip("route", "add", self.subnet, "via", slot.host_ip, ns=slot.ns)

    @property
    def host_ips(self) -> tuple[str, ...]:
        return tuple(slot.host_ip for slot in self.slots)

    def _remove_namespaces(self) -> None:
        for slot in self.slots:
            # Deleting the namespace deletes its end of the pair, and with it the host's end.
            subprocess.run(["ip", "netns", "del", slot.ns], capture_output=True)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
        self._lock, self.block, self.slots = None, None, []

    def remove(self) -> None:
        self._remove_namespaces()
        self._release()
