"""`make run`'s supervision, on plain processes: what dies is started again with backoff, what
is killed on purpose is left to its killer; and the fault campaign's plan."""

import os
import random
import signal
import sys
import threading
import time
from collections import Counter

from chaos.campaign import KINDS, plan
from portal.cluster import ROOT, Cluster, Supervisor, node_restart_delay


def sleeper(cluster: Cluster, name: str):
    cluster.starters[name] = lambda: cluster.spawn(
        name, [sys.executable, "-c", "import time; time.sleep(60)"])
    return cluster.starters[name]()


def wait(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_a_part_that_dies_is_started_again_and_one_killed_on_purpose_is_not():
    said = []
    cluster = Cluster(dict(os.environ), quiet=True)
    stopping = threading.Event()
    try:
        first = sleeper(cluster, "ingester")
        sleeper(cluster, "reconciler")
        supervisor = Supervisor(cluster, say=said.append)
        threading.Thread(target=supervisor.run, args=(stopping, 0.05), daemon=True).start()
        os.killpg(first.pid, signal.SIGKILL)
        assert wait(lambda: cluster.procs["ingester"].pid != first.pid
                    and cluster.procs["ingester"].poll() is None)
        assert said[0] == "[ingester] exited with -9; starting it again in 1 s"
        assert said[1] == "[ingester] started again (restart 1)"
        # A second quick death waits twice as long.
        second = cluster.procs["ingester"]
        os.killpg(second.pid, signal.SIGKILL)
        assert wait(lambda: len(said) >= 3)
        assert said[2] == "[ingester] exited with -9; starting it again in 2 s"
        # Killed through the cluster (as a test or the campaign does): left alone.
        cluster.kill("reconciler")
        time.sleep(1.5)
        assert "reconciler" not in cluster.procs
        assert not any("reconciler" in line for line in said)
    finally:
        stopping.set()
        cluster.stop()


def test_a_node_comes_back_only_after_the_portal_could_show_it_offline():
    cluster = Cluster(dict(os.environ), quiet=True)
    supervisor = Supervisor(cluster, node_delay=12.0, nodes=("w1",))
    assert supervisor.delay("w1", uptime=0.0) == 12.0
    assert supervisor.delay("ingester", uptime=0.0) == 1.0
    assert node_restart_delay({"NODE_OFFLINE_S": "5", "RECONCILE_EVERY_S": "0.5"}) == 6.0
    assert node_restart_delay({"NODE_RESTART_S": "3"}) == 3.0


def test_a_hundred_faults_hold_every_kind_and_the_asked_minimums_in_a_seeded_order():
    faults = plan(100, random.Random(1), min_redis=15, min_cuts=10)
    counts = Counter(faults)
    assert len(faults) == 100 and set(counts) == set(KINDS)
    assert counts["redis_kill"] >= 15 and counts["net_cut"] >= 10
    assert faults == plan(100, random.Random(1), min_redis=15, min_cuts=10)
    assert Counter(plan(7, random.Random(2))) == Counter(KINDS)
    heavy = Counter(plan(20, random.Random(3), min_redis=8, min_cuts=6))
    assert sum(heavy.values()) == 20 and heavy["redis_kill"] == 8 and heavy["net_cut"] == 6


def test_a_start_that_fails_is_tried_again_with_the_failed_copy_put_down():
    said = []
    cluster = Cluster(dict(os.environ), quiet=True)
    tries = []

    def start():
        proc = cluster.spawn("web", [sys.executable, "-c", "import time; time.sleep(60)"])
        tries.append(proc)
        if len(tries) == 2:  # the first restart never listens
            raise TimeoutError("nothing listens on port 1 after 0 s")
        return proc

    cluster.starters["web"] = start
    stopping = threading.Event()
    try:
        start()
        supervisor = Supervisor(cluster, say=said.append)
        threading.Thread(target=supervisor.run, args=(stopping, 0.05), daemon=True).start()
        os.killpg(tries[0].pid, signal.SIGKILL)
        assert wait(lambda: len(tries) == 3, timeout=15), said
        assert tries[1].poll() is not None and tries[2].poll() is None
        assert said[1] == "[web] did not start again (nothing listens on port 1 after 0 s)"
        assert wait(lambda: said[-1] == "[web] started again (restart 1)")
    finally:
        stopping.set()
        cluster.stop()


def test_sigint_and_sigterm_stop_the_cluster_even_when_sigint_came_in_ignored():
    import subprocess

    script = (
        "import os, signal, sys, threading\n"
        "from portal.cluster import install_stop_handlers\n"
        "assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN\n"
        "stopping, supervising = threading.Event(), threading.Event()\n"
        "supervising.set()\n"
        "install_stop_handlers(stopping, supervising)\n"
        "os.kill(os.getpid(), getattr(signal, sys.argv[1]))\n"
        "print('stopping' if stopping.wait(5) else 'running')\n")
    for sig in ("SIGINT", "SIGTERM"):
        done = subprocess.run([sys.executable, "-c", script, sig], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        assert done.stdout.strip() == "stopping", (sig, done.stderr)
