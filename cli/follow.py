"""Following one job until it ends: over its websocket (/ws/jobs/{id}/), with the REST snapshot
as the truth to reload from, or by polling the REST API when no websocket can be opened.

The stream's frames carry a sequence number; the snapshot (GET /api/v1/jobs/{id}/) says where the
stream stood when it was read. So after connecting, frames up to `stream_seq` are already in the
snapshot, the next one must be `stream_seq + 1`, and a gap (a lost frame, frames from two
processes crossing, a Redis restart) or a reconnect means: reload the snapshot and the log lines
after the last one seen. Log lines are printed once each, keyed by (attempt, line)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from cli.api import Api
from cli.errors import CliError, NotFound, Unreachable

TERMINAL = {"succeeded", "failed", "cancelled"}
STATE_FIELDS = ("state", "attempt", "node", "message", "progress", "error", "result",
                "started_at", "finished_at")
PROGRESS_FIELDS = ("progress", "message", "done", "total", "unit")
NOT_AUTHENTICATED, NOT_FOUND = 4401, 4404


class TimedOut(Exception):
    def __init__(self, job: dict):
        super().__init__(f"job {job.get('id')} still {job.get('state')}")
        self.job = job


def ws_url(base: str, path: str) -> str:
    """ws:// for an http:// portal, wss:// for https://, under the portal's own path."""
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme)
    if scheme is None:
        raise CliError(f"not an http(s) URL: {base}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))


def ws_connect(url: str, token: str):
    from websockets.sync.client import connect

    from cli.api import user_agent

    return connect(url, additional_headers={"Authorization": f"Token {token}"},
                   user_agent_header=user_agent(), open_timeout=10, max_size=2**24,
                   legacy=True)


def log_line(line: dict) -> dict:
    """One shape for a line from the REST API and from a job.log event."""
    return {"attempt": line.get("attempt"), "line": line.get("line", line.get("seq")),
            "ts": line.get("ts"), "level": line.get("level", "info"), "text": line.get("text", "")}


class Follower:
    """Follows one job to its end; calls on_log(line) once per log line (when given, the lines
    already written are loaded first) and on_update(job) when what is known of the job changes.
    run() returns the final job (the REST snapshot) or raises TimedOut with the latest one."""

    def __init__(self, api: Api, job_id: str, *, on_log: Callable[[dict], None] | None = None,
                 on_update: Callable[[dict], None] | None = None, timeout: float | None = None,
                 connect: Callable = ws_connect, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, poll_every: float = 1.0,
                 quiet_reload: float = 5.0, unreachable_grace: float = 60.0,
                 use_websocket: bool = True):
        self.api = api
        self.job_id = str(job_id)
        self.on_log = on_log
        self.on_update = on_update
        self.timeout = timeout
        self.connect = connect
        self.clock = clock
        self.sleep = sleep
        self.poll_every = poll_every
        self.quiet_reload = quiet_reload
        self.unreachable_grace = unreachable_grace
        self.use_websocket = use_websocket
        self.seen: set[tuple] = set()
        self.after = 0  # the REST cursor: the last line's seq
        self.job: dict = {}
        self.deadline: float | None = None
        self.reloads = 0
        self.mode = "websocket"
        self.greeted = False

    # -- the snapshot --------------------------------------------------------------------------

    def reload(self) -> dict:
        """The job over REST and, when following the log, the lines not yet printed."""
        job = self.api.job(self.job_id)
        if self.on_log is not None:
            for line in self.api.log_lines(self.job_id, after=self.after):
                self.after = max(self.after, line.get("seq") or 0)
                self.emit(log_line(line))
        self.reloads += 1
        self.update(job, replace=True)
        return job

    def emit(self, line: dict) -> None:
        key = (line["attempt"], line["line"])
        if key in self.seen:
            return
        self.seen.add(key)
        self.on_log(line)

    def update(self, fields: dict, *, replace: bool = False) -> None:
        self.job = dict(fields) if replace else {**self.job, **fields}
        if self.on_update is not None:
            self.on_update(self.job)

    def ended(self) -> bool:
        return self.job.get("state") in TERMINAL

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - self.clock()

    def check_deadline(self) -> None:
        if self.deadline is not None and self.clock() >= self.deadline:
            raise TimedOut(self.job)

    def pause(self, seconds: float) -> None:
        left = self.remaining()
        self.sleep(seconds if left is None else max(0.0, min(seconds, left)))
        self.check_deadline()

    # -- following -----------------------------------------------------------------------------

    def run(self) -> dict:
        self.deadline = None if self.timeout is None else self.clock() + self.timeout
        self.reload()  # a missing job or a refused token fails here, plainly
        if self.ended():
            return self.job
        unanswered = 0  # connections in a row closed before their "hello"
        while self.use_websocket and unanswered < 3:
            self.check_deadline()
            try:
                ws = self.connect(ws_url(self.api.url, f"/ws/jobs/{self.job_id}/"),
                                  self.api.token)
            except Exception:  # refused, no websocket behind this URL, a proxy in the way
                break
            self.greeted = False
            with ws:
                if self.stream(ws):
                    return self.job
            unanswered = 0 if self.greeted else unanswered + 1
            self.pause(1.0)  # closed under us: reconnect (and reload) after a breath
        self.mode = "polling"
        return self.poll()

    def stream(self, ws) -> bool:
        """Reads frames until the job ends (True) or the connection closes (False)."""
        from websockets.exceptions import ConnectionClosed

        try:
            hello = json.loads(ws.recv(timeout=10))
            if not isinstance(hello, dict) or hello.get("type") != "hello":
                return False
            self.greeted = True
            self.reload()  # after joining the stream: nothing published from here is missed
            last = self.job.get("stream_seq", 0)
            while not self.ended():
                left = self.remaining()
                if left is not None and left <= 0:
                    raise TimedOut(self.job)
                wait = self.quiet_reload if left is None else min(self.quiet_reload, left)
                try:
                    raw = ws.recv(timeout=wait)
                except TimeoutError:
                    self.check_deadline()
                    self.reload()  # quiet for a while: make sure nothing was missed
                    last = self.job.get("stream_seq", last)
                    continue
                frame = json.loads(raw)
                if frame.get("type") != "batch":
                    continue
                seq = frame.get("seq", 0)
                if seq <= last:
                    continue  # already in the snapshot
                if seq != last + 1:
                    self.reload()  # a gap: the snapshot covers this frame and the lost ones
                    last = self.job.get("stream_seq", seq)
                    continue
                last = seq
                if self.apply(frame.get("events") or []):
                    self.reload()  # the whole final job, and any line still unseen
            return True
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            if code == NOT_AUTHENTICATED:
                raise CliError("the portal refused the token on the websocket (4401)") from None
            if code == NOT_FOUND:
                raise NotFound(f"no such job: {self.job_id}") from None
            return False
        except (TimeoutError, ValueError):
            return False  # no hello, or a frame that is not JSON: start over

    def apply(self, events: list[dict]) -> bool:
        """A frame's events for this job (a fan-out's stream also carries its partitions');
        True when one says the job ended."""
        ended = False
        for event in events:
            if str(event.get("job", self.job_id)) != self.job_id:
                continue
            kind = event.get("type")
            if kind == "job.log" and self.on_log is not None:
                self.emit(log_line(event))
            elif kind == "job.state":
                self.update({k: event[k] for k in STATE_FIELDS if k in event})
                ended = ended or event.get("state") in TERMINAL
            elif kind == "job.progress":
                self.update({k: event[k] for k in PROGRESS_FIELDS if k in event})
        return ended

    def poll(self) -> dict:
        failing_since = None
        while True:
            try:
                self.reload()
                failing_since = None
            except Unreachable:
                failing_since = failing_since or self.clock()
                if self.clock() - failing_since > self.unreachable_grace:
                    raise
            if self.ended():
                return self.job
            self.pause(self.poll_every)
