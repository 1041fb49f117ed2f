"""End to end on a real cluster: a node frozen with SIGSTOP goes offline and comes back with
SIGCONT, seen over REST and the websocket; the websocket streams keep their order, and a client
that loses its connection resyncs from the snapshot without losing anything."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import threading
import time
from datetime import datetime

import pytest
import requests
from django.conf import settings
from websockets.sync.client import connect

from jobs.broadcast import current_seq
from jobs.models import Job
from tests.integration.conftest import TERMINAL, wait_for_job

pytestmark = pytest.mark.integration

NODE = "w7"
QUEUE = "nodes-live"  # a queue no other test sends to: this node takes nobody's jobs


class Client:
    """A websocket client whose frames a thread collects; tests wait on them with deadlines."""

    def __init__(self, url: str, key: str):
        self.ws = connect(url, additional_headers={"Authorization": f"Token {key}"},
                          open_timeout=10, legacy=True)
        self.frames: list[dict] = []
        self.closed = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for raw in self.ws:
                with self.cond:
                    self.frames.append(json.loads(raw))
                    self.cond.notify_all()
        except Exception:
            pass
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    def wait_for(self, check, what: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = check()
                if found:
                    return found
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no {what} after {timeout} s; last frames: " \
                                      f"{self.frames[-5:]}"
                assert not self.closed, f"the websocket closed before {what}"
                self.cond.wait(min(remaining, 0.5))

    def hello(self) -> dict:
        self.wait_for(lambda: self.frames, "hello", timeout=10)
        assert self.frames[0]["type"] == "hello", self.frames[0]
        return self.frames[0]

    def batches(self, stream: str) -> list[dict]:
        with self.cond:
            return [f for f in self.frames if f["type"] == "batch" and f["stream"] == stream]

    def events(self, stream: str) -> list[dict]:
        return [e for f in self.batches(stream) for e in f["events"]]

    def abort(self) -> None:
        """Drop the connection the hard way: no close frame, the TCP connection reset."""
        sock = self.ws.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the reader did not notice the dropped connection"
        sock.close()

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        self.thread.join(timeout=5)


def poll(check, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.1)


def timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def assert_contiguous(frames: list[dict]) -> None:
    seqs = [f["seq"] for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gap or reorder: {seqs}"


def assert_increasing(frames: list[dict]) -> None:
    seqs = [f["seq"] for f in frames]
    assert all(a < b for a, b in zip(seqs, seqs[1:], strict=False)), \
        f"reordered: {seqs}: {[(f['seq'], summary(f['events'])) for f in frames[:6]]}"


def summary(events: list[dict]) -> list[str]:
    return [" ".join(str(e.get(k)) for k in ("type", "job", "node", "state", "progress")
                     if e.get(k) is not None) for e in events]


@pytest.fixture
def staff_key(live):
    from django.contrib.auth import get_user_model

    from accounts.models import ApiToken

    return ApiToken.issue(get_user_model().objects.create_user("ops", is_staff=True))[1]


@pytest.fixture
def staff_http(staff_key):
    session = requests.Session()
    session.headers["Authorization"] = f"Token {staff_key}"
    return session


def test_a_node_stopped_with_sigstop_goes_offline_and_comes_back_online_with_sigcont(
        live, staff_key, staff_http):
    offline_after = float(settings.NODE_OFFLINE_S)

    def node():
        response = staff_http.get(live.url("/api/v1/nodes/"), timeout=10)
        assert response.status_code == 200, response.text
        return next((n for n in response.json() if n["name"] == NODE), None)

    def health():
        """w7's reports as a dashboard applies them: one older (by its last heartbeat) than
        the one shown is stale, as two processes report nodes."""
        shown = []
        for e in cluster.events("cluster"):
            if e["type"] != "node.health" or e["node"] != NODE:
                continue
            if shown and timestamp(e["last_heartbeat"]) < timestamp(shown[-1]["last_heartbeat"]):
                continue
            shown.append(e)
        return shown

    cluster = Client(live.ws_url("/ws/cluster/"), staff_key)
    assert {"jobs-staff", "cluster"} <= set(cluster.hello()["streams"])
    proc = live.cluster.start_worker(NODE, queues=QUEUE, concurrency=1)
    try:
        first = poll(lambda: (n := node()) and n["state"] == "online" and n, "w7 online", 60)
        assert first["queues"] == [QUEUE] and first["concurrency"] == 1
        cluster.wait_for(lambda: any(e["state"] == "online" for e in health()),
                         "node.health online for w7 on the websocket")

        # The agent is a thread of the worker's main process: freezing the process group
        # (main process and pool) silences its heartbeats.
        os.killpg(proc.pid, signal.SIGSTOP)
        stopped_at = time.time()
        assert node()["state"] == "online"  # a moment's silence is not a lost node

        offline = poll(lambda: (n := node())["state"] == "offline" and n,
                       "w7 offline after SIGSTOP", 30)
        offline_seen = time.time()
        last_beat = timestamp(offline["last_heartbeat"])
        assert last_beat <= stopped_at + 0.5, "a heartbeat came from a stopped node"
        # Marked offline only after NODE_OFFLINE_S of silence, and not much later.
        assert offline_seen - last_beat >= offline_after
        assert offline_seen - stopped_at < offline_after + 25

        continued_at = time.time()  # read first: the node may beat before we read the clock
        os.killpg(proc.pid, signal.SIGCONT)
        back = poll(lambda: (n := node())["state"] == "online"
                    and timestamp(n["last_heartbeat"]) >= continued_at - 0.01 and n,
                    "w7 online again after SIGCONT", 30)
        assert back["queues"] == [QUEUE]

        # The websocket told the same story, in order: offline, then online again.
        def went_offline_then_online():
            states = [e["state"] for e in health()]
            return "offline" in states and "online" in states[states.index("offline"):]

        cluster.wait_for(went_offline_then_online, "node.health offline then online for w7")
        events = health()
        went = next(i for i, e in enumerate(events) if e["state"] == "offline")
        returned = next(i for i, e in enumerate(events) if i > went and e["state"] == "online")
        assert all(e["state"] == "online" for e in events[:went])
        assert events[went]["changed"] and events[returned]["changed"]
        assert timestamp(events[went]["last_heartbeat"]) == last_beat
        assert timestamp(events[returned]["last_heartbeat"]) > stopped_at + 0.5
        assert not [e for e in events  # nothing was heard from it while it was stopped
                    if stopped_at + 0.5 < timestamp(e["last_heartbeat"]) < continued_at]
        assert_increasing(cluster.batches("cluster"))
    finally:
        try:
            os.killpg(proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        if NODE in live.cluster.procs:
            live.cluster.kill(NODE, signal.SIGTERM)
        cluster.close()


def replay(snapshot: dict, events: list[dict]) -> dict:
    """What a client shows: the snapshot, then each later event applied on top."""
    view = {k: snapshot[k] for k in ("state", "progress", "message")}
    for event in events:
        if event["type"] == "job.state":
            view.update({k: event[k] for k in ("state", "progress", "message") if k in event})
        elif event["type"] == "job.progress":
            view.update(progress=event["progress"], message=event["message"])
    return view


def assert_causal(events: list[dict]) -> None:
    """running before the end, the end last of the state moves, progress never going back."""
    states = [e["state"] for e in events if e["type"] == "job.state"]
    assert "running" in states and states[-1] == "succeeded", states
    assert states.index("running") < states.index("succeeded"), states
    progress = [e["progress"] for e in events if e["type"] == "job.progress"]
    assert len(progress) >= 2 and progress == sorted(progress), progress


def after_the_end(events: list[dict]) -> list[dict]:
    end = next(i for i, e in enumerate(events)
               if e["type"] == "job.state" and e["state"] in TERMINAL)
    return events[end + 1:]


def test_streams_keep_their_order_and_a_dropped_client_resyncs_from_the_snapshot(
        live, http, user_key, staff_key):
    cluster = Client(live.ws_url("/ws/cluster/"), staff_key)
    assert {"jobs-staff", "cluster"} <= set(cluster.hello()["streams"])
    response = http.post(live.url("/api/v1/jobs/"),
                         json={"kind": "diag.sleep", "params": {"seconds": 8}}, timeout=10)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    stream = f"job-{job_id}"
    first = second = None
    try:
        first = Client(live.ws_url(f"/ws/jobs/{job_id}/"), user_key)
        assert first.hello()["streams"] == [stream]
        first.wait_for(lambda: any(e["type"] == "job.progress" and e["progress"] > 0
                                   for e in first.events(stream)), "a progress frame")
        first.abort()
        seen = first.batches(stream)
        assert_contiguous(seen)
        progress = [e["progress"] for e in first.events(stream) if e["type"] == "job.progress"]
        assert progress == sorted(progress)

        # While the client is away the job moves on: frames it will never get.
        poll(lambda: current_seq(stream) > seen[-1]["seq"], "a frame after the drop", 15)
        second = Client(live.ws_url(f"/ws/jobs/{job_id}/"), user_key)
        assert second.hello()["streams"] == [stream]
        snapshot = http.get(live.url(f"/api/v1/jobs/{job_id}/"), timeout=10).json()
        base = snapshot["stream_seq"]
        assert base > seen[-1]["seq"]
        assert snapshot["state"] == "running" and snapshot["progress"] >= progress[-1]

        def ended():
            return any(e["type"] == "job.state" and e["state"] in TERMINAL
                       for f in second.batches(stream) if f["seq"] > base for e in f["events"])

        second.wait_for(ended, "the job's final state after the resync")
        done = wait_for_job(job_id, timeout=30)
        assert done.state == "succeeded"
        # Frames at or below the snapshot's seq are already in it; the rest follow it with no
        # gap, and applied on the snapshot they give what the database holds.
        assert_contiguous(second.batches(stream))
        later = [f for f in second.batches(stream) if f["seq"] > base]
        assert later[0]["seq"] == base + 1
        view = replay(snapshot, [e for f in later for e in f["events"]])
        assert (view["state"], view["progress"]) == ("succeeded", 1.0)

        # The staff list stream saw the whole run, in causal order.
        cluster.wait_for(lambda: any(e["type"] == "job.state" and e["state"] in TERMINAL
                                     and e.get("job") == str(job_id)
                                     for e in cluster.events("jobs-staff")),
                         "the job's end on the staff stream")
        for name in ("jobs-staff", "cluster"):
            assert_increasing(cluster.batches(name))
        listed = [e for e in cluster.events("jobs-staff") if e.get("job") == str(job_id)]
        assert_causal(listed)
        assert {e["node"] for e in cluster.events("cluster") if e["type"] == "node.health"} \
            >= {"w1", "w2"}
        assert Job.objects.get(pk=job_id).node in {"w1", "w2"}

        # Nothing of the job comes after its end on either stream, so a client that applies
        # the events in order shows exactly what the database holds.
        assert not after_the_end(listed)
        assert not after_the_end([e for f in later for e in f["events"]
                                  if e["type"] in {"job.state", "job.progress"}])
        assert view == {"state": "succeeded", "progress": 1.0, "message": done.message}
    finally:
        for client in (first, second, cluster):
            if client is not None:
                client.close()


def test_two_web_processes_share_the_port_and_both_deliver_a_broadcast(live, staff_key):
    """WEB_PROCESSES=2 (tests/conftest.py): both processes accept websockets on the one port,
    each relays the frames of the streams its sockets joined, and a node's page gets the
    node's whole health while the dashboards get its card."""
    import psutil

    from jobs.broadcast import Outbox

    launcher = psutil.Process(live.cluster.procs["web"].pid)
    servers = launcher.children()
    assert len(servers) == 2, [" ".join(p.cmdline()) for p in servers]

    def served_by(client: Client) -> int:
        port = client.ws.socket.getsockname()[1]
        for server in servers:
            if any(c.raddr and c.raddr.port == port and c.laddr.port == live.port
                   for c in server.net_connections(kind="tcp")):
                return server.pid
        raise AssertionError(f"no web process holds the connection from port {port}")

    clients, by_process = [], {}
    try:
        while len(by_process) < 2:  # the kernel spreads connections over the two
            assert len(clients) < 64, f"every connection went to one process: {by_process}"
            client = Client(live.ws_url("/ws/cluster/?show=nodes"), staff_key)
            assert client.hello()["streams"] == ["cluster"]
            clients.append(client)
            by_process.setdefault(served_by(client), []).append(client)

        outbox = Outbox()
        outbox.add(["cluster"], {"type": "job.notice", "job": "0", "text": "to every dashboard"})
        outbox.publish()
        for client in clients:
            client.wait_for(lambda client=client: any(
                e.get("text") == "to every dashboard" for e in client.events("cluster")),
                "the broadcast on a socket of each web process")

        # The node page's stream carries each core; the dashboards' cards do not.
        page = Client(live.ws_url("/ws/nodes/w1/?show=jobs"), staff_key)
        clients.append(page)
        assert page.hello()["streams"] == ["node-w1", "jobs-staff"]
        whole = page.wait_for(lambda: [e for e in page.events("node-w1")
                                       if e["type"] == "node.health"], "w1's health")[0]
        assert whole["node"] == "w1" and "cpu_cores" in whole["utilization"]
        cards = clients[0].wait_for(lambda: [e for e in clients[0].events("cluster")
                                             if e["type"] == "node.health"], "a node's card")
        assert all("cpu_cores" not in e["utilization"] for e in cards)
    finally:
        for client in clients:
            client.close()


def listeners(port: int) -> int:
    """The sockets listening on `port` (IPv4), whichever process holds them."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(1 for row in rows if row[1].endswith(f":{port:04X}") and row[3] == "0A")


def smaps(pid: int) -> dict[str, int]:
    """/proc/<pid>/smaps_rollup in bytes."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return {line.split(":")[0]: int(line.split()[1]) * 1024
                for line in f if line.rstrip().endswith(" kB")}


def test_web_processes_are_forked_from_one_preloaded_parent(live, staff_key):
    """The launcher loads Django and the application once and forks the servers: they run the
    launcher's program without an exec, and share its memory copy-on-write. A process started
    afresh shares only pages of files (libraries); anonymous pages (Python's objects) are
    shared only with the process it was forked from."""
    import psutil

    launcher = psutil.Process(live.cluster.procs["web"].pid)
    parent = smaps(launcher.pid)
    assert parent["Anonymous"] > 30 * 2**20, parent  # Django and the application, loaded
    client = Client(live.ws_url("/ws/cluster/?show=nodes"), staff_key)  # one of them serves
    try:
        assert client.hello()["streams"] == ["cluster"]
        for server in launcher.children():
            assert server.cmdline() == launcher.cmdline()
            assert server.exe() == launcher.exe()
            memory = smaps(server.pid)
            assert memory["Shared_Dirty"] > 20 * 2**20, memory
            assert memory["Pss"] < memory["Rss"] - 20 * 2**20, memory
    finally:
        client.close()


def test_a_web_process_that_dies_is_started_again_while_the_other_serves(live, staff_key):
    import psutil

    launcher = psutil.Process(live.cluster.procs["web"].pid)
    before = {p.pid for p in launcher.children()}
    victim = min(before)
    os.kill(victim, signal.SIGKILL)

    # The kernel closes its socket a moment later (after the last of its threads): until then
    # a connection may still be queued to it, and is reset when it closes.
    poll(lambda: listeners(live.port) == 1, "end of the killed web process's socket", 10)
    # Meanwhile the port is served: every connection goes to the one left.
    client = Client(live.ws_url("/ws/cluster/?show=nodes"), staff_key)
    try:
        assert client.hello()["streams"] == ["cluster"]
    finally:
        client.close()
    after = poll(lambda: len(now := {p.pid for p in launcher.children()
                                     if p.status() != psutil.STATUS_ZOMBIE}) == 2
                 and victim not in now and now, "a web process started again", 30)
    assert len(after & before) == 1
    new, = after - before
    poll(lambda: any(c.laddr.port == live.port and c.status == psutil.CONN_LISTEN
                     for c in psutil.Process(new).net_connections(kind="tcp")),
         "the new web process listening on the port", 30)
