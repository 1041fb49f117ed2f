"""ETL throughput: `etl.clickstream` rows per second loaded into PostgreSQL end to end, beside a
raw COPY of the same rows measured in the same run.

    python -m bench.etl              (2,000,000 events in 8 partitions, each measurement 3
                                      times; about 2 minutes)
    python -m bench.etl --quick      (300,000 events in 4 partitions, once; under a minute)

It starts what it needs (a throwaway PostgreSQL holding the portal's database and a separate
warehouse database, Redis, the web server, the ingester and the reconciler) and stops all of it
at the end, also on Ctrl-C or an error. Then:

1. Raw COPY: the same events, made here with the kind's own generate() and sessionize() for
   every partition (same parameters, same seed) and turned into CSV with its csv_bytes() before
   the clock starts; timed is only the COPY into a fresh table (the kind's EVENTS_DDL), one
   transaction per partition, over 1 connection and over as many as the portal runs have
   worker slots (2 for one node, 4 for two).
2. Portal, one worker node on the `etl` queue (concurrency 2), then two: an `etl.clickstream`
   job submitted over REST (a staff user's token) with target "warehouse" and a fresh table;
   end to end = from the POST to the job's finished_at; rows/s = events / that. The loaded
   count is checked against the events, and each partition's node and seconds are shown, with
   the end-to-end time split into its phases.
3. A ceiling: the kind's own compute (generate, sessionize, CSV, hourly: CPU seconds measured
   here) plus PostgreSQL's CPU for the raw COPY, spread over every core: what no scheduling
   could beat on this machine.

Targets (from the issue): 370,000 rows/s (ten times the seed's 800 M events in 6 hours) and
0.8x the raw COPY rate. `--strict` exits 1 when a target is missed; otherwise a completed run
exits 0 (2 when a job or a part failed, 130 when interrupted).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bench.live import machine_cpu
from bench.run import (
    begin,
    cpu_delta,
    cpu_seconds,
    guarded,
    log,
    start_portal,
    stop_all,
    verdict,
    wait_until,
)
from portal.cluster import Cluster, free_port
from tests.conftest import fresh_database
from tests.services import PostgresServer, RedisServer
from workers import data

ROWS_TARGET = 370_000  # rows/s: ten times the seed's example
SEED_NEED = 800_000_000 / (6 * 3600)  # 800 M events in 6 hours: 37,037 rows/s
RAW_TARGET = 0.8  # portal rows/s over raw COPY rows/s, at least
KIND = "etl.clickstream"
TERMINAL = ("succeeded", "failed", "cancelled")


class JobFailed(RuntimeError):
    pass


@dataclass
class RawRun:
    conns: int
    rows: int
    seconds: list[float]  # one per repeat
    cpu: dict[str, float] = field(default_factory=dict)  # of the last repeat
    other_cpu: float = 0.0  # CPU seconds used by processes not ours meanwhile (last repeat)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        return self.rows / self.median


@dataclass
class PortalRun:
    label: str
    nodes: int
    slots: int  # worker processes on the etl queue; the parent's attempt holds one
    rows: int
    seconds: list[float]  # POST -> finished_at, one per repeat
    seen: list[float]  # POST -> succeeded seen in the database (polled)
    job: dict  # the last repeat's job (REST detail)
    parts: list[dict]  # the last repeat's partitions: partition, node, rows, seconds, start, end
    phases: list[tuple[str, float]]  # the last repeat's split of the end-to-end time
    loaded: int
    sessions_loaded: int
    cpu: dict[str, float] = field(default_factory=dict)
    other_cpu: float = 0.0  # CPU seconds used by processes not ours meanwhile
    notes: list[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        return self.rows / self.median


def epoch(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


# --- the benchmark ---------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.pg: PostgresServer | None = None
        self.redis_server: RedisServer | None = None
        self.cluster: Cluster | None = None
        self.data_root: Path | None = None
        self.db = None  # the portal's database
        self.wh = None  # the warehouse
        self.wh_url = ""
        self.token = ""
        self.base_url = ""
        self.nodes: list[str] = []
        self._session = None
        self.app = None
        self.params = {"events": args.events, "partitions": args.partitions,
                       "users": args.users, "skew": args.skew, "seed": args.seed}
        self.chunks: list[list[bytes]] = []  # per partition, the CSV chunks of its events
        self.part_rows: list[int] = []
        self.prep: dict[str, float] = {}  # CPU seconds: generate, sessionize, CSV, hourly
        self.sessions_rows = 0
        self.csv_mb = 0.0

    # Set-up and tear-down.

    def setup(self) -> None:
        t0 = time.monotonic()

        def warehouse(pg) -> dict[str, str]:
            self.wh_url = fresh_database(pg.url, "bench_warehouse")
            self.data_root = Path(tempfile.mkdtemp(prefix="portal-bench-data-"))
            return {"WAREHOUSE_URL": self.wh_url, "DATA_ROOT": str(self.data_root)}

        start_portal(self, warehouse, " (portal + warehouse database)")
        self.cluster.manage("shell", "-c", (
            "from django.contrib.auth import get_user_model\n"
            "get_user_model().objects.filter(username='bench').update(is_staff=True)\n"))
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.cluster.start_web(port)
        self.cluster.start_ingester()
        self.cluster.start_reconciler()

        import psycopg

        self.db = psycopg.connect(self.pg.url, autocommit=True)
        self.wh = psycopg.connect(self.wh_url, autocommit=True)

        def http_ok():
            self.alive()
            try:
                return self.session().get(f"{self.base_url}/api/v1/kinds/", timeout=5).ok
            except Exception:
                return False

        wait_until(http_ok, 60, "the web server to answer")
        log(f"ready in {time.monotonic() - t0:.1f} s (web on :{port}, ingester, reconciler; "
            "no workers yet)")

    def alive(self) -> None:
        for name, proc in self.cluster.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} "
                                   "(run with --verbose to see its output)")

    def start_node(self, name: str) -> None:
        from workers.celery import app

        self.app = app
        t0 = time.monotonic()
        self.cluster.start_worker(name, queues="etl", concurrency=self.args.concurrency)
        self.nodes.append(name)

        def answers():
            self.alive()
            replies = app.control.ping(timeout=0.5)
            return name in {n.split("@", 1)[0] for reply in replies for n in reply}

        wait_until(answers, 60, f"node {name} to answer a control ping")
        wait_until(lambda: self.sql("SELECT count(*) FROM jobs_node WHERE name = %s",
                                    name)[0][0], 60, f"{name}'s heartbeat in the database",
                   interval=0.2)
        log(f"node {name} up in {time.monotonic() - t0:.1f} s (queue etl, concurrency "
            f"{self.args.concurrency})")

    def teardown(self) -> None:
        stop_all([
            ("cluster", lambda: self.cluster and self.cluster.stop()),
            ("celery app", lambda: self.app and self.app.close()),
            ("database connections", lambda: [c.close() for c in (self.db, self.wh) if c]),
            ("Redis", lambda: self.redis_server and self.redis_server.cleanup()),
            ("PostgreSQL", lambda: self.pg and self.pg.cleanup()),
            ("DATA_ROOT", lambda: self.data_root and shutil.rmtree(self.data_root,
                                                                   ignore_errors=True)),
        ])

    # Clients.

    def session(self):
        import requests

        if self._session is None:
            self._session = requests.Session()
            self._session.headers["Authorization"] = f"Token {self.token}"
        return self._session

    def sql(self, query: str, *params, conn=None):
        with (conn or self.db).cursor() as cur:
            cur.execute(query, params or None)
            return cur.fetchall()

    def cpu_snapshot(self) -> dict[str, float]:
        procs = self.cluster.procs
        groups = {
            "web": [procs["web"].pid],
            "workers": [procs[n].pid for n in self.nodes],
            "ingester": [procs["ingester"].pid],
            "reconciler": [procs["reconciler"].pid],
            "postgres": [int((self.pg.data / "postmaster.pid").read_text().split()[0])],
            "redis": [self.redis_server.proc.pid],
        }
        snap = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in groups.items()}
        snap["bench client"] = cpu_seconds(os.getpid(), children=False)
        return snap

    # The raw COPY baseline.

    def prepare_raw(self) -> None:
        """The events the job will make, made here by the kind's own functions, as CSV chunks
        of the kind's size (before any clock starts)."""
        import numpy as np
        import pyarrow as pa

        from workers.kinds import clickstream as cs

        params = cs.ClickstreamParams(**self.params, target="warehouse")
        spent = {"generate": 0.0, "sessionize": 0.0, "csv": 0.0, "hourly": 0.0}
        size = 0
        clock = time.process_time  # CPU seconds: what the kind costs, whatever else runs
        for p in range(params.partitions):
            t0 = clock()
            events = cs.generate(params, p)
            t1 = clock()
            events, sessions = cs.sessionize(events, params.gap_minutes, p << 40)
            t2 = clock()
            n = events.num_rows
            keyed = events.append_column("_job", pa.array(np.zeros(n, np.int64))).append_column(
                "_part", pa.array(np.full(n, p, np.int32)))
            chunks = [cs.csv_bytes(keyed.slice(start, cs.CHUNK_ROWS))
                      for start in range(0, n, cs.CHUNK_ROWS)]
            t3 = clock()
            cs.hourly(events, sessions)  # the partition's share of the hourly table: its work too
            spent["hourly"] += clock() - t3
            spent["generate"] += t1 - t0
            spent["sessionize"] += t2 - t1
            spent["csv"] += t3 - t2
            self.chunks.append(chunks)
            self.part_rows.append(n)
            self.sessions_rows += sessions.num_rows
            size += sum(len(c) for c in chunks)
        if sum(self.part_rows) != self.args.events:
            raise RuntimeError(f"generate() made {sum(self.part_rows)} events, not "
                               f"{self.args.events}")
        self.prep = spent
        self.csv_mb = size / 1e6

    def raw_copy(self, conns: int) -> RawRun:
        """COPY the prepared CSV into a fresh table over `conns` connections (partitions
        spread over them, largest first onto the least loaded), one transaction per
        partition as the kind does."""
        from workers.kinds.clickstream import EVENTS_DDL

        lanes: list[list[int]] = [[] for _ in range(conns)]
        load = [0] * conns
        for p in sorted(range(len(self.part_rows)), key=lambda i: -self.part_rows[i]):
            lane = load.index(min(load))
            lanes[lane].append(p)
            load[lane] += self.part_rows[p]
        run = RawRun(conns, sum(self.part_rows), [])
        for _ in range(self.args.repeat):
            table = f"raw_{conns}_{uuid.uuid4().hex[:8]}_events"
            self.wh.execute(f"CREATE TABLE {table} ({EVENTS_DDL})")
            seconds, run.cpu, run.other_cpu = self.copy_once(table, lanes)
            (count,), = self.sql(f"SELECT count(*) FROM {table}", conn=self.wh)
            if count != run.rows:
                raise RuntimeError(f"raw COPY loaded {count} rows, not {run.rows}")
            self.wh.execute(f"DROP TABLE {table}")
            run.seconds.append(seconds)
        return run

    def copy_once(self, table: str, lanes: list[list[int]]) -> tuple[float, dict, float]:
        """One connection per lane, connected before the clock starts; the clock runs from
        releasing them all to the last commit."""
        import psycopg

        statement = (f"COPY {table} (user_id, ts, page, session_id, _job, _part) "
                     "FROM STDIN (FORMAT csv)")
        connections = [psycopg.connect(self.wh_url) for _ in lanes]
        errors: list[BaseException] = []
        gate = threading.Barrier(len(lanes) + 1)

        def copy(conn, parts):
            try:
                gate.wait()
                for p in parts:
                    with conn.transaction(), conn.cursor() as cur, cur.copy(statement) as out:
                        for chunk in self.chunks[p]:
                            out.write(chunk)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=copy, args=(conn, parts), daemon=True)
                   for conn, parts in zip(connections, lanes, strict=True)]
        try:
            for thread in threads:
                thread.start()
            time.sleep(0.2)
            cpu0, machine0 = self.cpu_snapshot(), machine_cpu()
            t0 = time.perf_counter()
            gate.wait(timeout=30)
            for thread in threads:
                thread.join()
            seconds = time.perf_counter() - t0
            cpu = cpu_delta(cpu0, self.cpu_snapshot())
            other = max(0.0, machine_cpu()["busy"] - machine0["busy"] - sum(cpu.values()))
        finally:
            for conn in connections:
                conn.close()
        if errors:
            raise errors[0]
        return seconds, cpu, other

    # The portal.

    def submit(self, params: dict, name: str) -> int:
        resp = self.session().post(f"{self.base_url}/api/v1/jobs/", timeout=60, json={
            "kind": KIND, "name": name, "params": {**params, "target": "warehouse"}})
        if resp.status_code != 201:
            raise RuntimeError(f"POST /api/v1/jobs/ answered {resp.status_code}: "
                               f"{resp.text[:800]}")
        return int(resp.json()["id"])

    def wait_job(self, job_id: int, timeout: float) -> float:
        """Polls the database until the job ends; returns when it was seen succeeded."""
        def ended():
            self.alive()
            (state,), = self.sql("SELECT state FROM jobs_job WHERE id = %s", job_id)
            return state if state in TERMINAL else None

        state = wait_until(ended, timeout, f"job {job_id} to end", interval=0.02)
        seen = time.time()
        if state != "succeeded":
            raise JobFailed(self.explain(job_id, state))
        return seen

    def explain(self, job_id: int, state: str) -> str:
        """What the portal knows about a job that did not succeed: its error, its partitions'
        errors and the last log lines (the traceback is usually there)."""
        lines = [f"job {job_id} ({KIND}) ended {state}"]
        try:
            job = self.session().get(f"{self.base_url}/api/v1/jobs/{job_id}/", timeout=30).json()
            lines.append(f"  error: {job.get('error')}")
            for part in job.get("partitions") or []:
                if part.get("state") != "succeeded":
                    lines.append(f"  partition {part['partition']} on {part.get('node')}: "
                                 f"{part['state']} attempt {part.get('attempt')}: "
                                 f"{part.get('error')}")
                    lines.extend(self.log_tail(part["id"]))
            lines.extend(self.log_tail(job_id))
        except Exception as exc:
            lines.append(f"  (could not read the job: {exc})")
        return "\n".join(lines)

    def log_tail(self, job_id, count: int = 30) -> list[str]:
        resp = self.session().get(f"{self.base_url}/api/v1/jobs/{job_id}/logs/", timeout=30)
        if not resp.ok:
            return [f"  (logs of {job_id}: HTTP {resp.status_code})"]
        rows = resp.json().get("lines") or []
        return [f"  | [{job_id}] {row.get('text')}" for row in rows[-count:]]

    def warm_up(self) -> None:
        """A small run first: the worker processes import numpy/pyarrow and connect."""
        events = max(20_000, 2_000 * self.args.partitions)
        job_id = self.submit({**self.params, "events": events,
                              "table": f"bench_warm_{uuid.uuid4().hex[:8]}"}, "bench-etl-warm")
        self.wait_job(job_id, 120)

    def portal_run(self, label: str) -> PortalRun:
        self.warm_up()
        time.sleep(1)  # let the warm-up's stragglers (events, heartbeats) settle
        slots = len(self.nodes) * self.args.concurrency
        seconds, seen_list = [], []
        timeout = max(300.0, self.args.events / 5_000)
        for i in range(self.args.repeat):
            if i:
                time.sleep(1)
            table = f"bench_{label}_{uuid.uuid4().hex[:8]}"
            cpu0, machine0 = self.cpu_snapshot(), machine_cpu()
            t0 = time.time()
            job_id = self.submit({**self.params, "table": table}, f"bench-etl-{label}")
            posted = time.time()
            seen = self.wait_job(job_id, timeout)
            cpu = cpu_delta(cpu0, self.cpu_snapshot())
            machine = machine_cpu()
            job = self.session().get(f"{self.base_url}/api/v1/jobs/{job_id}/",
                                     timeout=30).json()
            finished = epoch(job["finished_at"])
            seconds.append(finished - t0)
            seen_list.append(seen - t0)
        # The last repeat is the one shown in detail.
        result = job.get("result") or {}
        # The job's tables are in its team's schema.
        schema = f'"{data.schema_name(job["team"])}"'
        (loaded,), = self.sql(f"SELECT count(*) FROM {schema}.{table}_events WHERE _job = %s",
                              job_id, conn=self.wh)
        (sessions,), = self.sql(f"SELECT count(*) FROM {schema}.{table}_sessions "
                                "WHERE _job = %s", job_id, conn=self.wh)
        if loaded != self.args.events:
            raise JobFailed(f"job {job_id} succeeded but {table}_events holds {loaded} rows "
                            f"for it, not {self.args.events}")
        if sessions != result.get("sessions"):
            raise JobFailed(f"job {job_id}: {table}_sessions holds {sessions} rows, the result "
                            f"says {result.get('sessions')}")
        worker_seconds = {p["partition"]: p for p in result.get("per_partition") or []}
        parts = []
        for part in job.get("partitions") or []:
            mine = worker_seconds.get(part["partition"], {})
            parts.append({"partition": part["partition"], "node": part.get("node") or "?",
                          "attempt": part.get("attempt"), "rows": mine.get("rows", 0),
                          "seconds": mine.get("seconds", float("nan")),
                          "start": epoch(part["started_at"]) - t0,
                          "end": epoch(part["finished_at"]) - t0})
        started = epoch(job["started_at"]) - t0
        first = min(p["start"] for p in parts)
        last = max(p["end"] for p in parts)
        end = finished - t0
        phases = [
            ("POST round trip", posted - t0),
            ("POST -> parent started (admit, dispatch, pick-up)", started),
            ("parent started -> first partition started (fan-out)", first - started),
            ("first partition started -> last finished (the work)", last - first),
            ("last partition finished -> parent finished", end - last),
            ("parent finished -> succeeded seen in the database", seen_list[-1] - end),
        ]
        run = PortalRun(label, len(self.nodes), slots, self.args.events, seconds, seen_list,
                        job, parts, phases, loaded, sessions, cpu=cpu,
                        other_cpu=max(0.0, machine["busy"] - machine0["busy"] - sum(cpu.values())))
        spans = sum(p["end"] - p["start"] for p in parts)
        own = sum(p["seconds"] for p in parts)
        run.notes.append(
            f"partitions: {spans:.2f} s of spans (start to finish event) over "
            f"{last - first:.2f} s = {spans / (last - first):.2f} at once on average ({slots} "
            "worker slots; a waiting parent runs unstarted partitions itself); of the spans, "
            f"{own:.2f} s on the partitions' own clocks, {spans - own:.2f} s outside them "
            "(reporting and the queue)")
        retried = [p["partition"] for p in parts if (p["attempt"] or 1) > 1]
        if retried or (job.get("attempt") or 1) > 1:
            run.notes.append(f"retried: parent attempt {job.get('attempt')}, partitions "
                             f"{retried or 'none'}")
        by_node: dict[str, int] = {}
        for p in parts:
            by_node[p["node"]] = by_node.get(p["node"], 0) + 1
        run.notes.append("partitions per node: " + ", ".join(f"{n} {c}" for n, c in
                                                              sorted(by_node.items())))
        return run


# --- output ----------------------------------------------------------------------------------


def fmt_rate(rate: float) -> str:
    return f"{rate:>11,.0f}"


def report(args, bench: Bench, raws: dict[int, RawRun], runs: list[PortalRun]) -> bool:
    width = 100
    print()
    print("=" * width)
    print(f"ETL benchmark: {KIND}  ({platform.node()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; {args.events:,} events, {args.partitions} partitions, "
          f"{args.users:,} users, skew {args.skew:g}, seed {args.seed}"
          + (f"; median of {args.repeat}" if args.repeat > 1 else "") + ")")
    print("=" * width)
    prep = bench.prep
    print(f"the same rows made here, CPU seconds: generate {prep['generate']:.2f}, sessionize "
          f"{prep['sessionize']:.2f}, CSV {prep['csv']:.2f}, hourly {prep['hourly']:.2f} "
          f"(one process, all partitions; {bench.csv_mb:.0f} MB of CSV; the job also loads "
          f"{bench.sessions_rows:,} sessions)")
    sizes = sorted(bench.part_rows)
    print(f"partition sizes: {sizes[0]:,} .. {sizes[-1]:,} rows (largest "
          f"{sizes[-1] / (args.events / args.partitions):.2f}x the mean; skew by user)")
    print("-" * width)
    # What no scheduler can beat here: the kind's own compute plus PostgreSQL's CPU for the
    # COPY, spread perfectly over every core (the sessions' COPY and Python overhead left out).
    cores = os.cpu_count() or 1
    compute, pg_cpu = sum(prep.values()), raws[1].cpu.get("postgres", 0.0)
    ceiling = args.events / ((compute + pg_cpu) / cores)
    print(f"{'':<44} {'rows/s':>11} {'seconds':>8}  notes")
    for conns, raw in raws.items():
        pg = raw.cpu.get("postgres", 0.0)
        print(f"{'raw COPY, ' + str(conns) + ' connection' + ('s' if conns > 1 else ''):<44} "
              f"{fmt_rate(raw.rate)} {raw.median:8.2f}  PostgreSQL CPU {pg:.2f} s "
              f"({100 * pg / raw.seconds[-1]:.0f}% of a core); others {raw.other_cpu:.1f} s")
    results = []
    for run in runs:
        raw = raws[run.slots]
        ratio = run.rate / raw.rate
        rate_ok, ratio_ok = run.rate >= ROWS_TARGET, ratio >= RAW_TARGET
        results.append((run, raw, ratio, rate_ok, ratio_ok))
        name = f"portal, {run.nodes} node{'s' if run.nodes > 1 else ''} x {args.concurrency}"
        print(f"{name:<44} {fmt_rate(run.rate)} {run.median:8.2f}  "
              f"{ratio:.2f}x raw at {raw.conns} conns, {run.rate / raws[1].rate:.2f}x at 1, "
              f"{run.rate / ceiling:.2f}x the ceiling; others {run.other_cpu:.1f} s")
    print(f"{'ceiling on this machine (compute + COPY CPU)':<44} {fmt_rate(ceiling)} "
          f"{(compute + pg_cpu) / cores:8.2f}  ({compute:.2f} CPU-s of the kind's compute + "
          f"{pg_cpu:.2f} of PostgreSQL's COPY) / {cores} cores")
    print(f"{'targets':<44} {fmt_rate(ROWS_TARGET)}           and >= {RAW_TARGET}x raw "
          f"(the seed's example needs {SEED_NEED:,.0f} rows/s)")
    print("(seconds: median; `others`: CPU seconds that processes not of this run used "
          "meanwhile, last run)")
    for run in runs:
        print("-" * width)
        print(f"portal, {run.nodes} node(s): job {run.job['id']}, {run.loaded:,} events and "
              f"{run.sessions_loaded:,} sessions loaded (checked in the warehouse)")
        for name, value in run.phases:
            print(f"  {name:<56} {value:7.2f} s")
        print(f"  {'partition':>9} {'node':>6} {'rows':>9} {'worker s':>9} {'rows/s':>9} "
              f"{'start':>7} {'end':>7} {'span':>6}   (worker s: the result's own seconds; "
              "start/end: s after the POST)")
        for p in sorted(run.parts, key=lambda p: p["partition"]):
            rate = p["rows"] / p["seconds"] if p["seconds"] else 0.0
            print(f"  {p['partition']:>9} {p['node']:>6} {p['rows']:>9,} {p['seconds']:>9.2f} "
                  f"{rate:>9,.0f} {p['start']:>7.2f} {p['end']:>7.2f} "
                  f"{p['end'] - p['start']:>6.2f}")
        for note in run.notes:
            print(f"  {note}")
        total = sum(run.cpu.values())
        print("  CPU seconds (last run): " + ", ".join(f"{k} {v:.1f}" for k, v in run.cpu.items())
              + f"; total {total:.1f} of {(os.cpu_count() or 1) * run.seconds[-1]:.1f} "
              f"available; other processes on the machine {run.other_cpu:.1f}")
    print("=" * width)
    ok = True
    for run, raw, ratio, rate_ok, ratio_ok in results:
        ok = ok and rate_ok and ratio_ok
        print(f"RESULT {run.nodes} node(s) rows/s: {run.rate:,.0f} (target >= {ROWS_TARGET:,}) "
              f"{verdict(rate_ok)}")
        print(f"RESULT {run.nodes} node(s) vs raw COPY over {raw.conns} connections "
              f"({raw.rate:,.0f} rows/s): {ratio:.2f}x (target >= {RAW_TARGET}x) "
              f"{verdict(ratio_ok)}")
    print(f"RESULT verdict: {'PASS' if ok else 'MISS'}"
          f" (best portal {max(r.rate for r in runs):,.0f} rows/s = "
          f"{max(r.rate for r in runs) / SEED_NEED:.1f}x the seed's need)", flush=True)
    return ok


# --- entry point -----------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.etl", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--events", type=int, default=None,
                        help="events per run (default 2,000,000; 300,000 with --quick)")
    parser.add_argument("--partitions", type=int, default=None,
                        help="partitions (default 8; 4 with --quick)")
    parser.add_argument("--users", type=int, default=10_000, help="distinct users")
    parser.add_argument("--skew", type=float, default=1.0, help="Zipf exponent of events/user")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=2, help="per worker node")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs of each measurement, the median reported (default 3; 1 "
                        "with --quick)")
    parser.add_argument("--quick", action="store_true", help="smaller counts, about a minute")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--verbose", action="store_true",
                        help="show the cluster processes' output")
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = 300_000 if args.quick else 2_000_000
    if args.partitions is None:
        args.partitions = 4 if args.quick else 8
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.events < 1 or not 1 <= args.partitions <= 256 or args.concurrency < 1 \
            or args.repeat < 1:
        parser.error("--events >= 1, 1 <= --partitions <= 256, --concurrency >= 1 and "
                     "--repeat >= 1, please")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = begin(f"ETL benchmark: {KIND}, {args.events:,} events in {args.partitions} "
                    "partitions, into PostgreSQL")
    bench = Bench(args)

    def measure() -> bool:
        bench.setup()
        log("making the same events here (generate, sessionize, CSV) for the raw COPY")
        bench.prepare_raw()
        raws: dict[int, RawRun] = {}
        for conns in sorted({1, args.concurrency, 2 * args.concurrency}):
            raws[conns] = bench.raw_copy(conns)
            log(f"raw COPY over {conns} connection(s): {raws[conns].rate:,.0f} rows/s "
                f"({raws[conns].median:.2f} s)")
        bench.chunks = []  # the CSV is not needed any more: give the memory back
        runs = []
        for count in (1, 2):
            bench.start_node(f"w{count}")
            label = f"{count}n"
            log(f"portal: {KIND} with {count} node(s)")
            runs.append(bench.portal_run(label))
            log(f"  {runs[-1].rate:,.0f} rows/s ({runs[-1].median:.2f} s, POST -> finished_at)")
        return report(args, bench, raws, runs)

    return guarded(bench, started, measure, strict=args.strict, said=(JobFailed,))


if __name__ == "__main__":
    sys.exit(main())
