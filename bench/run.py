"""The portal's own overhead against raw Celery, on the same workers in one run.

    python -m bench.run              (what `make bench` runs; about 2-3 minutes)
    python -m bench.run --quick      (smaller counts; under a minute)

It starts everything it needs (a throwaway PostgreSQL and Redis, the web server, the ingester,
the reconciler and two worker nodes of concurrency 2) and stops all of it at the end, also on
Ctrl-C or an error. Then it measures, on the same workers:

1. Raw Celery throughput: N `portal.ping` tasks sent from here with one producer, until all N
   start times are in a Redis list.
2. Portal throughput: N `diag.noop` jobs submitted over REST (JSON lists of --batch jobs from
   --clients threads), until all N are `succeeded` in the database.
3. Latency on an idle cluster, one request at a time: raw send_task -> task start; the raw
   HTTP peer's POST -> task start (bench/http_peer.py: a bare Django view on daphne that calls
   send_task, so what the web stack alone costs shows apart from the portal's own steps); and
   portal REST POST -> the job's `started_at` (the worker's own start timestamp).

Beside the figures: the CPU each component used during the throughput runs, and how much of
the portal's run the ingester (the one serial writer) spent writing batches, from its own
counters (workers.protocol.INGEST_STATS).

Targets (from the issue): portal throughput >= 0.8x raw; portal p50 latency within 5 ms of raw.
`--strict` exits 1 when a target is missed; otherwise a completed run exits 0.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from portal.cluster import PYTHON, Cluster, free_port
from tests.services import PostgresServer, RedisServer

THROUGHPUT_TARGET = 0.8  # portal jobs/s over raw tasks/s, at least
LATENCY_TARGET_MS = 5.0  # portal p50 minus raw p50, at most
NODES = ("w1", "w2")
# Portal settings read from the environment that change what is measured; shown when set.
TUNING = ("WORKER_PREFETCH", "EVENT_FLUSH_S", "EVENT_MAX_BUFFER", "DB_CONN_MAX_AGE",
          "HEARTBEAT_S", "LEASE_S", "RECONCILE_EVERY_S", "DISPATCH_GRACE_S", "NODE_OFFLINE_S",
          "CANCEL_POLL_S", "CANCEL_GRACE_S", "JOB_MAX_BATCH", "MAX_BODY_BYTES",
          "BROKER_VISIBILITY_TIMEOUT", "PORTAL_REDIS_PREFIX", "THROTTLE_USER_RATE",
          "THROTTLE_SUBMIT_RATE")
TERMINAL = ("succeeded", "failed", "cancelled")


# --- small helpers ---------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"  · {message}", flush=True)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linearly interpolated between the closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def ms(seconds: float) -> float:
    return seconds * 1000


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def chunks(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """User + system CPU seconds of a process, with its live and reaped descendants."""
    import psutil

    try:
        proc = psutil.Process(pid)
        times = proc.cpu_times()
        total = times.user + times.system
        if children:
            total += times.children_user + times.children_system
            for child in proc.children(recursive=True):
                try:
                    child_times = child.cpu_times()
                    total += child_times.user + child_times.system
                except psutil.Error:
                    pass
        return total
    except psutil.Error:
        return 0.0


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: max(0.0, after[name] - before.get(name, 0.0)) for name in after}


# --- what every benchmark does around its measurements ----------------------------------------


def start_portal(bench, extra_env=None, where: str = "") -> dict[str, str]:
    """A throwaway PostgreSQL and Redis, and a Cluster on them (`bench.pg`,
    `bench.redis_server`, `bench.cluster`: set as they start, so a failure half-way still
    stops what started), with the database migrated and a token for the user `bench`
    (`bench.token`). `extra_env(pg)` adds to the processes' environment. The environment is
    set in this process too: workers.config and workers.protocol read it when first imported."""
    bench.pg = PostgresServer()
    bench.pg.start()
    bench.redis_server = RedisServer()
    bench.redis_server.start()
    env = {k: v for k, v in os.environ.items()
           if k not in {"SECRET_KEY_FILE", "DJANGO_SETTINGS_MODULE"}}
    env.update({
        "DATABASE_URL": bench.pg.url,
        "REDIS_URL": bench.redis_server.url,
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "LOG_LEVEL": "WARNING",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "PYTHONUNBUFFERED": "1",
        **(extra_env(bench.pg) if extra_env else {}),
    })
    # Throttled as in production, at rates the benchmarks never reach unless set lower.
    for name in ("THROTTLE_USER_RATE", "THROTTLE_SUBMIT_RATE", "THROTTLE_ANON_RATE"):
        env.setdefault(name, "1000000/min")
    os.environ.update(env)
    bench.cluster = Cluster(env, quiet=not bench.args.verbose)
    log(f"PostgreSQL on :{bench.pg.port}{where}, Redis on :{bench.redis_server.port}; "
        "migrating")
    bench.cluster.manage("migrate", "--noinput")
    bench.token = bench.cluster.manage("api_token", "bench", "--create").splitlines()[-1]
    return env


def stop_all(steps) -> None:
    """Stop each part in turn; one that fails to stop does not keep the others running."""
    for name, step in steps:
        try:
            step()
        except Exception as exc:
            print(f"  ! stopping {name} failed: {exc}", file=sys.stderr, flush=True)


def guarded(bench, started: float, measure, *, strict: bool, said=()) -> int:
    """Run measure() (true when the targets are met), then stop everything the bench started,
    whatever happened. Exit codes: 0 a completed run, 1 a target missed under --strict, 2 a
    part failed (the exceptions in `said` in one line, others with their traceback), 130
    interrupted."""
    try:
        ok = measure()
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr, flush=True)
        return 130
    except subprocess.CalledProcessError as exc:
        print(f"\n{' '.join(map(str, exc.cmd))} failed with {exc.returncode}:\n"
              f"{exc.stdout or ''}{exc.stderr or ''}", file=sys.stderr, flush=True)
        return 2
    except Exception as exc:  # a part failed: say where, then stop everything
        if isinstance(exc, said):
            print(f"\nthe benchmark stopped: {exc}", file=sys.stderr, flush=True)
        else:
            traceback.print_exc()
        return 2
    finally:
        # A second Ctrl-C must not leave servers behind half-stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.teardown()
        print(f"(whole run {time.monotonic() - started:.0f} s; everything stopped)", flush=True)
    return 1 if strict and not ok else 0


@dataclass
class Throughput:
    count: int
    seconds: float  # from the first send to the last one seen done
    send_seconds: float  # from the first send until every send returned
    worker_span: float  # from the first send to the last start (worker clock)
    notes: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by component

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else math.nan


@dataclass
class Latency:
    samples: list[float]  # seconds, send -> task start
    extra: dict[str, list[float]] = field(default_factory=dict)

    def p(self, q: float, name: str | None = None) -> float:
        return percentile(self.extra[name] if name else self.samples, q)


# --- the benchmark ---------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.pg: PostgresServer | None = None
        self.redis_server: RedisServer | None = None
        self.cluster: Cluster | None = None
        self.app = None
        self.redis = None
        self.db = None
        self.token = ""
        self.base_url = ""
        self.peer_url = ""
        self._local = threading.local()

    # Set-up and tear-down.

    def setup(self) -> None:
        t0 = time.monotonic()
        start_portal(self)

        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.cluster.start_web(port)
        if self.args.profile_ingester:
            path = str(Path(self.args.profile_ingester).resolve())
            self.cluster.spawn("ingester", [PYTHON, "-m", "cProfile", "-o", path,
                                            "manage.py", "ingest"])
        else:
            self.cluster.start_ingester()
        self.cluster.start_reconciler()
        for node in NODES:
            self.cluster.start_worker(node)
        self.peer_url = self.start_http_peer()

        import psycopg
        import redis

        from workers.celery import app

        self.app = app
        self.redis = redis.Redis.from_url(self.redis_server.url)
        self.db = psycopg.connect(self.pg.url, autocommit=True)
        self.wait_ready()
        log(f"cluster ready in {time.monotonic() - t0:.1f} s (web on :{port}, nodes "
            f"{', '.join(NODES)} x concurrency 2, ingester, reconciler)")

    def start_http_peer(self) -> str:
        """The raw HTTP peer (bench/http_peer.py): one stock daphne on its own port, sending
        to the same broker and workers."""
        from portal.cluster import wait_for_port

        port = free_port()
        proc = self.cluster.spawn("http-peer", [PYTHON, "-m", "daphne", "-b", "127.0.0.1",
                                                "-p", str(port), "bench.http_peer:application"])
        wait_for_port(port, proc=proc)
        return f"http://127.0.0.1:{port}/submit/"

    def wait_ready(self) -> None:
        def procs_alive():
            for name, proc in self.cluster.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} during start-up "
                                       "(run with --verbose to see its output)")
            return True

        def http_ok():
            procs_alive()
            try:
                return self.session().get(f"{self.base_url}/api/v1/kinds/", timeout=5).ok
            except Exception:
                return False

        wait_until(http_ok, 60, "the web server to answer")

        def nodes_answer():
            procs_alive()
            replies = self.app.control.ping(timeout=0.5)
            names = {name.split("@", 1)[0] for reply in replies for name in reply}
            return set(NODES) <= names

        wait_until(nodes_answer, 60, "both worker nodes to answer a control ping")
        # A task round trip, and the nodes' heartbeats through the ingester to the database.
        self.ping_round_trips(20, timeout=60)
        wait_until(lambda: self.sql("SELECT count(*) FROM jobs_node WHERE name = ANY(%s)",
                                    list(NODES))[0][0] == len(NODES),
                   60, "both nodes' heartbeats in the database", interval=0.2)

    def teardown(self) -> None:
        stop_all([
            ("cluster", lambda: self.cluster and self.cluster.stop()),
            ("celery app", lambda: self.app and self.app.close()),
            ("redis client", lambda: self.redis and self.redis.close()),
            ("database connection", lambda: self.db and self.db.close()),
            ("Redis", lambda: self.redis_server and self.redis_server.cleanup()),
            ("PostgreSQL", lambda: self.pg and self.pg.cleanup()),
        ])

    # Clients.

    def session(self):
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["Authorization"] = f"Token {self.token}"
            self._local.session = session
        return session

    def sql(self, query: str, *params):
        with self.db.cursor() as cur:
            cur.execute(query, params or None)
            return cur.fetchall()

    def post_jobs(self, payload, *, fresh: bool = False) -> list[dict]:
        """fresh: on a connection of its own, not the thread's kept-alive one."""
        import requests

        post = requests.post if fresh else self.session().post
        resp = post(f"{self.base_url}/api/v1/jobs/", json=payload, timeout=120,
                    headers={"Authorization": f"Token {self.token}"})
        if resp.status_code != 201:
            raise RuntimeError(f"POST /api/v1/jobs/ answered {resp.status_code}: "
                               f"{resp.text[:500]}")
        body = resp.json()
        return body if isinstance(body, list) else [body]

    def send_pings(self, key: str, count: int) -> None:
        with self.app.producer_or_acquire() as producer:
            for _ in range(count):
                self.app.send_task("portal.ping", args=[key], queue="cpu", producer=producer)

    def ping_round_trips(self, count: int, timeout: float = 60) -> None:
        key = f"bench:warm:{uuid.uuid4().hex}"
        self.send_pings(key, count)
        wait_until(lambda: self.redis.llen(key) >= count, timeout, f"{count} ping tasks",
                   interval=0.01)
        self.redis.delete(key)

    def max_job_id(self) -> int:
        return self.sql("SELECT coalesce(max(id), 0) FROM jobs_job")[0][0]

    def wait_jobs_done(self, after_id: int, count: int, timeout: float) -> None:
        def done():
            rows = dict(self.sql("SELECT state, count(*) FROM jobs_job WHERE id > %s "
                                 "GROUP BY state", after_id))
            bad = {s: n for s, n in rows.items() if s in ("failed", "cancelled")}
            if bad:
                raise RuntimeError(f"benchmark jobs ended badly: {bad}")
            return rows.get("succeeded", 0) >= count
        wait_until(done, timeout, f"{count} jobs to succeed", interval=0.05)

    def warm_portal(self, count: int) -> None:
        """Jobs through every web process, not only the one the kept-alive connection reached:
        each batch comes on a new connection, which the kernel gives to any of the processes
        sharing the port. With 8 connections per process, each has all but surely answered."""
        from portal import web

        after = self.max_job_id()
        batches = max(8 * web.processes(), math.ceil(count / self.args.batch))
        total = max(count, batches)
        sizes = chunks(total, math.ceil(total / batches))
        for size in sizes:
            self.post_jobs([{"kind": "diag.noop", "name": "bench-warm"}] * size, fresh=True)
        self.wait_jobs_done(after, sum(sizes), timeout=120)

    def idle(self, seconds: float = 1.0) -> None:
        """Let the last run's stragglers (events, heartbeats, flushes) settle."""
        time.sleep(seconds)

    def ingester_stats(self) -> dict[str, float]:
        """The ingesters' counters (protocol.INGEST_STATS), summed: batches, events, busy_s."""
        from workers import protocol

        totals = {"batches": 0.0, "events": 0.0, "busy_s": 0.0}
        for key in self.redis.scan_iter(match=protocol.INGEST_STATS + "*"):
            stats = self.redis.hgetall(key)
            for name in totals:
                totals[name] += float(stats.get(name.encode(), 0))
        return totals

    # CPU accounting: which component spends the machine's two cores.

    def cpu_snapshot(self) -> dict[str, float]:
        procs = self.cluster.procs
        groups = {
            "web": [procs["web"].pid],
            "workers": [procs[n].pid for n in NODES],
            "ingester": [procs["ingester"].pid],
            "reconciler": [procs["reconciler"].pid],
            "postgres": [int((self.pg.data / "postmaster.pid").read_text().split()[0])],
            "redis": [self.redis_server.proc.pid],
        }
        snap = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in groups.items()}
        snap["bench client"] = cpu_seconds(os.getpid(), children=False)
        return snap

    # Measurements.

    def raw_throughput(self, n: int) -> Throughput:
        self.ping_round_trips(min(200, n), timeout=120)  # warm-up
        self.idle()
        key = f"bench:raw:{uuid.uuid4().hex}"
        cpu0 = self.cpu_snapshot()
        wall0, t0 = time.time(), time.perf_counter()
        self.send_pings(key, n)
        sent = time.perf_counter() - t0
        wait_until(lambda: self.redis.llen(key) >= n, max(60, n / 20), f"{n} ping tasks",
                   interval=0.005)
        seconds = time.perf_counter() - t0
        cpu = cpu_delta(cpu0, self.cpu_snapshot())
        starts = [float(v) for v in self.redis.lrange(key, 0, -1)]
        self.redis.delete(key)
        return Throughput(n, seconds, sent, max(starts) - wall0, cpu=cpu)

    def portal_throughput(self, n: int) -> Throughput:
        from workers import protocol

        self.warm_portal(min(200, n))
        self.idle()
        after = self.max_job_id()
        sizes = chunks(n, self.args.batch)
        posted: list[float] = []
        timeline: list[tuple] = []
        cpu0, ingest0 = self.cpu_snapshot(), self.ingester_stats()
        wall0, t0 = time.time(), time.perf_counter()

        def post(size: int) -> None:
            self.post_jobs([{"kind": "diag.noop", "name": "bench-tput"}] * size)
            posted.append(time.perf_counter() - t0)

        with ThreadPoolExecutor(self.args.clients) as pool:
            futures = [pool.submit(post, size) for size in sizes]
            deadline = time.monotonic() + max(120, n / 10)
            while True:
                for f in futures:
                    if f.done() and f.exception():
                        raise f.exception()
                states = dict(self.sql("SELECT state, count(*) FROM jobs_job WHERE id > %s "
                                       "GROUP BY state", after))
                pipe = self.redis.pipeline(transaction=False)
                pipe.llen("cpu")
                pipe.xlen(protocol.EVENTS_STREAM)
                broker, stream = pipe.execute()
                now = time.perf_counter() - t0
                timeline.append((now, states, broker, stream))
                if states.get("failed") or states.get("cancelled"):
                    raise RuntimeError(f"benchmark jobs ended badly: {states}")
                if states.get("succeeded", 0) >= n:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"portal throughput: only {states} after {now:.0f} s")
                time.sleep(0.05)
        seconds = time.perf_counter() - t0
        cpu = cpu_delta(cpu0, self.cpu_snapshot())
        ingest = cpu_delta(ingest0, self.ingester_stats())
        (last_start, last_finish, first_start, admitted_late), = self.sql(
            "SELECT extract(epoch FROM max(started_at))::float8, "
            "extract(epoch FROM max(finished_at))::float8, "
            "extract(epoch FROM min(started_at))::float8, "
            "count(*) FILTER (WHERE dispatched_at > created_at + interval '0.1 s') "
            "FROM jobs_job WHERE id > %s", after)
        result = Throughput(n, seconds, max(posted), last_start - wall0, cpu=cpu)
        peak_broker = max(t[2] for t in timeline)
        peak_stream = max(t[3] for t in timeline)
        # When every job had been seen started in the database (state not queued).
        seen_started = next((t[0] for t in timeline
                             if sum(v for s, v in t[1].items() if s != "queued") >= n), seconds)
        # The ingester's rate alone: jobs reaching succeeded after the workers' last finish.
        tail_start = last_finish - wall0
        done_then = next((t[1].get("succeeded", 0) for t in reversed(timeline)
                          if t[0] <= tail_start), 0)
        tail = seconds - tail_start
        result.notes = [
            f"REST accepted all {n} jobs after {max(posted):.2f} s "
            f"({n / max(posted):.0f} jobs/s; {len(sizes)} POSTs of <= {self.args.batch}, "
            f"{self.args.clients} client threads)",
            f"workers: first start +{first_start - wall0:.2f} s, last start "
            f"+{last_start - wall0:.2f} s, last finish +{last_finish - wall0:.2f} s "
            f"(worker clock); database: all past queued +{seen_started:.2f} s, "
            f"all succeeded +{seconds:.2f} s",
            f"ingest lag after the last finish: {tail:.2f} s, in which the database went "
            f"from {done_then} to {n} succeeded"
            + (f" ({(n - done_then) / tail:.0f} jobs/s, the ingester alone)" if tail > 0.5
               else ""),
            f"peak backlog: broker queue {peak_broker} messages, event stream "
            f"{peak_stream} entries",
        ]
        if ingest.get("batches"):
            result.notes.append(
                f"ingester: writing batches {100 * ingest['busy_s'] / seconds:.0f}% of the run "
                f"({ingest['batches']:.0f} batches of {ingest['events'] / ingest['batches']:.0f} "
                f"events on average, {1000 * ingest['busy_s'] / ingest['batches']:.1f} ms each): "
                "each batch's rows, admission pass and broadcast wait for the one before")
        if admitted_late:  # the queue's slots were full: admission held them pending
            result.notes.append(f"{admitted_late} of the jobs waited pending over 0.1 s for "
                                "a free slot (ADMIT_AHEAD) before they were sent; messages "
                                "the reconciler sends again are logged (--verbose)")
        return result

    def raw_latency(self, samples: int) -> Latency:
        out = Latency([], {"send": []})
        key = f"bench:lat:{uuid.uuid4().hex}"
        warm = max(5, samples // 20)
        with self.app.producer_or_acquire() as producer:
            for i in range(warm + samples):
                self.idle(self.args.gap)
                t0 = time.time()
                self.app.send_task("portal.ping", args=[key], queue="cpu", producer=producer)
                t_sent = time.time()
                reply = self.redis.blpop([key], timeout=30)
                if reply is None:
                    raise TimeoutError("a ping task did not start within 30 s")
                if i >= warm:
                    out.samples.append(float(reply[1]) - t0)
                    out.extra["send"].append(t_sent - t0)
        self.redis.delete(key)
        return out

    def peer_latency(self, samples: int) -> Latency:
        """POST -> start through the raw HTTP peer: Django on daphne, then send_task."""
        import requests

        out = Latency([], {"rtt": []})
        key = f"bench:peer:{uuid.uuid4().hex}"
        warm = max(5, samples // 20)
        with requests.Session() as session:
            for i in range(warm + samples):
                self.idle(self.args.gap)
                t0 = time.time()
                resp = session.post(self.peer_url, json={"reply_to": key}, timeout=30)
                rtt = time.time() - t0
                if resp.status_code != 201:
                    raise RuntimeError(f"the HTTP peer answered {resp.status_code}: "
                                       f"{resp.text[:300]}")
                reply = self.redis.blpop([key], timeout=30)
                if reply is None:
                    raise TimeoutError("a ping task sent by the HTTP peer did not start in 30 s")
                if i >= warm:
                    out.samples.append(float(reply[1]) - t0)
                    out.extra["rtt"].append(rtt)
        self.redis.delete(key)
        return out

    def portal_latency(self, samples: int) -> Latency:
        out = Latency([], {"rtt": [], "admit": [], "dispatch_to_start": [], "visible": []})
        warm = max(5, samples // 20)
        for i in range(warm + samples):
            self.idle(self.args.gap)
            t0 = time.time()
            job = self.post_jobs({"kind": "diag.noop", "name": "bench-latency"})[0]
            rtt = time.time() - t0
            job_id = int(job["id"])

            def started(job_id=job_id):
                (state, start, created), = self.sql(
                    "SELECT state, extract(epoch FROM started_at)::float8, "
                    "extract(epoch FROM created_at)::float8 FROM jobs_job WHERE id = %s", job_id)
                if state in ("failed", "cancelled"):
                    raise RuntimeError(f"latency job {job_id} ended {state}")
                return (start, created) if state == "succeeded" else None

            start, created = wait_until(started, 30, f"job {job_id} to succeed",
                                        interval=0.005)
            visible = time.time() - t0
            if i >= warm:
                out.extra["visible"].append(visible)
                out.samples.append(start - t0)
                out.extra["rtt"].append(rtt)
                out.extra["admit"].append(created - t0)  # request in -> submit_jobs entered
                out.extra["dispatch_to_start"].append(start - created)
        return out


# --- output ----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def cpu_budget(raw_t: Throughput, portal_t: Throughput) -> dict[str, float]:
    """CPU milliseconds a job: what each run spent, what the target rate would leave on this
    machine's cores, and the part of it that any job costs whatever the portal's own code
    does: Celery's workers and Redis as the raw run spent them on a task, and the portal's
    PostgreSQL, which holds every job's rows."""
    per_job = {name: 1000 * used / portal_t.count for name, used in portal_t.cpu.items()}
    per_task = {name: 1000 * used / raw_t.count for name, used in raw_t.cpu.items()}
    return {
        "portal": sum(per_job.values()),
        "raw": sum(per_task.values()),
        "budget": 1000 * (os.cpu_count() or 1) / (THROUGHPUT_TARGET * raw_t.rate),
        "floor": (per_task.get("workers", 0.0) + per_task.get("redis", 0.0)
                  + per_job.get("postgres", 0.0)),
        "ingester": per_job.get("ingester", 0.0),
        "web": per_job.get("web", 0.0),
        "reconciler": per_job.get("reconciler", 0.0),
    }


def report(args, raw_t: Throughput, portal_t: Throughput, raw_l: Latency,
           peer_l: Latency, portal_l: Latency) -> bool:
    ratio = portal_t.rate / raw_t.rate
    p50_diff = ms(portal_l.p(50) - raw_l.p(50))
    p99_diff = ms(portal_l.p(99) - raw_l.p(99))
    stack_diff = ms(peer_l.p(50) - raw_l.p(50))  # the web stack alone, over raw Celery
    own_diff = ms(portal_l.p(50) - peer_l.p(50))  # the portal's own steps, over that stack
    throughput_ok = ratio >= THROUGHPUT_TARGET
    latency_ok = p50_diff <= LATENCY_TARGET_MS
    rows = [
        ("Throughput", "", "", ""),
        ("  raw Celery (portal.ping)", f"{raw_t.rate:10.1f}", "tasks/s",
         f"{raw_t.count} in {raw_t.seconds:.2f} s (sent in {raw_t.send_seconds:.2f} s)"),
        ("  portal (diag.noop via REST)", f"{portal_t.rate:10.1f}", "jobs/s",
         f"{portal_t.count} in {portal_t.seconds:.2f} s"),
        ("  portal / raw", f"{ratio:10.2f}", "x",
         f"target >= {THROUGHPUT_TARGET:.1f}x: {verdict(throughput_ok)}"),
        ("Latency, idle cluster, one at a time", "", "", ""),
        ("  raw send_task -> start   p50", f"{ms(raw_l.p(50)):10.2f}", "ms",
         f"{len(raw_l.samples)} samples"),
        ("                           p99", f"{ms(raw_l.p(99)):10.2f}", "ms", ""),
        ("  portal POST -> started_at p50", f"{ms(portal_l.p(50)):10.2f}", "ms",
         f"{len(portal_l.samples)} samples"),
        ("                           p99", f"{ms(portal_l.p(99)):10.2f}", "ms", ""),
        ("  portal - raw             p50", f"{p50_diff:+10.2f}", "ms",
         f"target <= +{LATENCY_TARGET_MS:.0f} ms: {verdict(latency_ok)}"),
        ("                           p99", f"{p99_diff:+10.2f}", "ms", ""),
        ("  HTTP peer POST -> start   p50", f"{ms(peer_l.p(50)):10.2f}", "ms",
         f"{len(peer_l.samples)} samples: a bare Django view on daphne that calls send_task"),
        ("                           p99", f"{ms(peer_l.p(99)):10.2f}", "ms", ""),
        ("  HTTP peer - raw           p50", f"{stack_diff:+10.2f}", "ms",
         "the web stack the portal stands on, before any step of its own"
         + (" (alone over the target)" if stack_diff > LATENCY_TARGET_MS else "")),
        ("  portal - HTTP peer        p50", f"{own_diff:+10.2f}", "ms",
         "the portal's own steps: token, checks, rows, admission, audit"),
        ("  split: raw send_task call p50", f"{ms(raw_l.p(50, 'send')):10.2f}", "ms",
         "t0 -> send_task returned"),
        ("  split: portal POST rtt    p50", f"{ms(portal_l.p(50, 'rtt')):10.2f}", "ms",
         "t0 -> 201 response read"),
        ("         request -> admitted p50", f"{ms(portal_l.p(50, 'admit')):10.2f}", "ms",
         "t0 -> submit_jobs() (created_at)"),
        ("         admitted -> started p50", f"{ms(portal_l.p(50, 'dispatch_to_start')):10.2f}",
         "ms", "created_at -> started_at"),
        ("  portal POST -> succeeded in DB p50", f"{ms(portal_l.p(50, 'visible')):10.2f}", "ms",
         "end to end, as a client polling the database sees it (5 ms polls)"),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    print("=" * 100)
    print(f"cluster-portal benchmark  ({platform.node()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; 2 nodes x concurrency 2)")
    print("=" * 100)
    for label, value, unit, note in rows:
        if not value:
            print(label)
            continue
        print(f"{label:<{width}} {value} {unit:<7} {note}")
    print("-" * 100)
    print("CPU seconds by component during the throughput runs (% of one core over the run):")
    print(f"  {'component':<14} {'raw Celery':>18} {'portal':>18}")
    for name in portal_t.cpu:
        cells = []
        for run in (raw_t, portal_t):
            used = run.cpu.get(name, 0.0)
            cells.append(f"{used:7.2f} s ({100 * used / run.seconds:4.0f}%)")
        print(f"  {name:<14} {cells[0]:>18} {cells[1]:>18}")
    totals = [f"{sum(r.cpu.values()):7.2f} s ({100 * sum(r.cpu.values()) / r.seconds:4.0f}%)"
              for r in (raw_t, portal_t)]
    print(f"  {'total':<14} {totals[0]:>18} {totals[1]:>18}   "
          f"(the machine has {os.cpu_count()} cores = {100 * (os.cpu_count() or 1)}%)")
    budget = cpu_budget(raw_t, portal_t)
    print(f"  CPU a job: portal {budget['portal']:.2f} ms, raw {budget['raw']:.2f} ms a task. At "
          f"{THROUGHPUT_TARGET:.1f}x raw's rate, all {os.cpu_count()} cores give the portal "
          f"{budget['budget']:.2f} ms a job;\n  Celery's workers and Redis (as raw spent them) "
          f"and the portal's PostgreSQL take {budget['floor']:.2f} ms of it, leaving "
          f"{budget['budget'] - budget['floor']:+.2f} ms for the ingester (now "
          f"{budget['ingester']:.2f}), the web ({budget['web']:.2f}) and the reconciler "
          f"({budget['reconciler']:.2f})")
    print("-" * 100)
    for note in portal_t.notes:
        print(f"portal path: {note}")
    print("=" * 100)
    print(f"RESULT throughput: raw {raw_t.rate:.1f} tasks/s, portal {portal_t.rate:.1f} jobs/s, "
          f"ratio {ratio:.2f}x (target >= {THROUGHPUT_TARGET:.1f}x) {verdict(throughput_ok)}")
    print(f"RESULT cpu a job: portal {budget['portal']:.2f} ms, raw {budget['raw']:.2f} ms; at "
          f"{THROUGHPUT_TARGET:.1f}x the cores allow {budget['budget']:.2f} ms, of which Celery, "
          f"Redis and PostgreSQL take {budget['floor']:.2f} ms and the ingester, web and "
          f"reconciler now {budget['ingester'] + budget['web'] + budget['reconciler']:.2f} ms")
    print(f"RESULT latency p50: raw {ms(raw_l.p(50)):.2f} ms, portal {ms(portal_l.p(50)):.2f} ms, "
          f"diff {p50_diff:+.2f} ms (target <= +{LATENCY_TARGET_MS:.0f} ms) "
          f"{verdict(latency_ok)}")
    print(f"RESULT latency p99: raw {ms(raw_l.p(99)):.2f} ms, portal {ms(portal_l.p(99)):.2f} ms, "
          f"diff {p99_diff:+.2f} ms")
    print(f"RESULT latency floor p50: HTTP peer {ms(peer_l.p(50)):.2f} ms, {stack_diff:+.2f} ms "
          f"over raw (Django on daphne alone); portal {own_diff:+.2f} ms over the peer")
    print(f"RESULT portal POST round trip p50: {ms(portal_l.p(50, 'rtt')):.2f} ms", flush=True)
    return throughput_ok and latency_ok


# --- entry point -----------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--jobs", type=int, default=None,
                        help="tasks / jobs per throughput run (default 3000; 600 with --quick)")
    parser.add_argument("--latency-samples", type=int, default=None,
                        help="samples per latency run (default 200; 50 with --quick)")
    parser.add_argument("--batch", type=int, default=500, help="jobs per REST POST")
    parser.add_argument("--clients", type=int, default=2, help="REST client threads")
    parser.add_argument("--gap", type=float, default=0.01,
                        help="seconds of idle before each latency sample")
    parser.add_argument("--quick", action="store_true", help="smaller counts, under a minute")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--verbose", action="store_true",
                        help="show the cluster processes' output")
    parser.add_argument("--profile-ingester", metavar="FILE",
                        help="run the ingester under cProfile and write its stats to FILE")
    args = parser.parse_args(argv)
    if args.jobs is None:
        args.jobs = 600 if args.quick else 3000
    if args.latency_samples is None:
        args.latency_samples = 50 if args.quick else 200
    if args.jobs < 1 or args.latency_samples < 2 or not 1 <= args.batch:
        parser.error("--jobs >= 1, --latency-samples >= 2 and --batch >= 1, please")
    return args


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def begin(title: str, tuning=TUNING) -> float:
    """Start a run: SIGTERM stops it like Ctrl-C; say what runs, the machine's load, and the
    portal settings taken from the environment. Returns the start time."""
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"{title}; load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}",
          flush=True)
    tuned = [f"{name}={os.environ[name]}" for name in tuning if os.environ.get(name)]
    if tuned:
        print(f"  settings from the environment: {' '.join(tuned)}", flush=True)
    return time.monotonic()


def main(argv=None) -> int:
    args = parse_args(argv)
    started = begin(f"cluster-portal benchmark: {args.jobs} tasks/jobs per throughput run, "
                    f"{args.latency_samples} latency samples each")
    bench = Bench(args)

    def measure() -> bool:
        bench.setup()
        log(f"raw Celery throughput: {args.jobs} portal.ping tasks")
        raw_t = bench.raw_throughput(args.jobs)
        log(f"  {raw_t.rate:.0f} tasks/s")
        bench.idle()
        log(f"portal throughput: {args.jobs} diag.noop jobs over REST")
        portal_t = bench.portal_throughput(args.jobs)
        log(f"  {portal_t.rate:.0f} jobs/s")
        bench.idle(2)
        log(f"raw latency: {args.latency_samples} samples")
        raw_l = bench.raw_latency(args.latency_samples)
        log(f"HTTP peer latency: {args.latency_samples} samples")
        peer_l = bench.peer_latency(args.latency_samples)
        log(f"portal latency: {args.latency_samples} samples")
        portal_l = bench.portal_latency(args.latency_samples)
        return report(args, raw_t, portal_t, raw_l, peer_l, portal_l)

    return guarded(bench, started, measure, strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
