"""Each worker node in a network namespace of its own, joined to the host by a veth pair with
private addresses of this run (10.213.B.4i+1 on the host side, .4i+2 inside, a /30 each), so
that its link can be cut and restored. Nothing is routed beyond those pairs: a node reaches
Redis and the warehouse on its host-side address and nothing else. Needs root."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

NETWORK = "10.213.0.0/16"


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


@dataclass
class Slot:
    """One node's namespace and link."""

    ns: str
    host_if: str
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
        run_id = os.getpid() if run_id is None else run_id
        self.block = run_id % 250 + 1  # 10.213.<block>.x: runs side by side rarely meet
        tag = f"{run_id % 100000}"
        self.slots = [
            Slot(ns=f"pchaos-{tag}-{i}", host_if=f"pc{tag}h{i}",
                 host_ip=f"10.213.{self.block}.{4 * i + 1}",
                 node_ip=f"10.213.{self.block}.{4 * i + 2}")
            for i in range(count)]

    def create(self) -> Namespaces:
        try:
            self._create()
        except BaseException:
            self.remove()
            raise
        return self

    def _create(self) -> None:
        for i, slot in enumerate(self.slots):
            peer = f"{slot.host_if[:-1 - len(str(i))]}n{i}"
            ip("netns", "add", slot.ns)
            ip("link", "add", slot.host_if, "type", "veth", "peer", "name", peer)
            ip("link", "set", peer, "netns", slot.ns)
            ip("addr", "add", f"{slot.host_ip}/30", "dev", slot.host_if)
            ip("link", "set", slot.host_if, "up")
            ip("addr", "add", f"{slot.node_ip}/30", "dev", peer, ns=slot.ns)
            ip("link", "set", peer, "up", ns=slot.ns)
            ip("link", "set", "lo", "up", ns=slot.ns)

    @property
    def host_ips(self) -> tuple[str, ...]:
        return tuple(slot.host_ip for slot in self.slots)

    def remove(self) -> None:
        for slot in self.slots:
            # Deleting the namespace deletes its end of the pair, and with it the host's end.
            subprocess.run(["ip", "netns", "del", slot.ns], capture_output=True)
