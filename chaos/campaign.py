"""A seeded fault campaign over the real processes: PostgreSQL, Redis, the web server, the
ingester, the reconciler and four worker nodes (each in a network namespace of its own), under
a steady mix of jobs (diag.sleep, diag.fanout, small etl.clickstream loads, a table each, and
gangs: train.torch on two nodes, whose ranks meet across the namespaces' links).

Faults, one after another: SIGKILL of a node (started again under the same or a new name),
SIGSTOP of a node past LEASE_S then SIGCONT, SIGKILL and restart of the ingester, the reconciler,
the web server and Redis (empty again: no persistence), and a cut of a node's link for longer
than the lease, then restored. At the end it prints what became of every job and exits non-zero
if an invariant broke.

    python -m chaos.campaign --faults 100 --seed 1        (what `make chaos` runs)
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import requests

from chaos import netns
from portal.cluster import Cluster, Supervisor, free_port, wait_for_port
from tests.conftest import GENEROUS_RATES, TIMINGS
from tests.services import PostgresServer, RedisServer

TERMINAL = ("succeeded", "failed", "cancelled")
NODE_FAULTS = ("node_kill", "node_stop", "net_cut")
SERVICE_FAULTS = ("redis_kill", "ingester_kill", "reconciler_kill", "web_kill")
KINDS = (*NODE_FAULTS, *SERVICE_FAULTS)
# Shares of the faults; at least one of each kind whatever the count.
SHARES = {"node_kill": 0.18, "node_stop": 0.15, "net_cut": 0.12, "redis_kill": 0.16,
          "ingester_kill": 0.13, "reconciler_kill": 0.13, "web_kill": 0.13}
CLICKSTREAM = {"events": 2000, "users": 50, "partitions": 2, "days": 0.5}
# A gang: a short train.torch on scikit-learn's digits, one rank on each of two nodes. A node
# fault hits the busiest node, which a gang's rank makes busier: it gets more attempts.
GANG = {"kind": "train.torch", "name": "chaos gang", "nodes": 2, "max_attempts": 10,
        "params": {"dataset": "digits", "epochs": 2, "batch_size": 64,
                   "rendezvous_timeout_s": 60}}
QUEUES = "cpu,etl,train"
LEASE_S = float(TIMINGS["LEASE_S"])


def plan(faults: int, rng: random.Random, *, min_redis: int = 0, min_cuts: int = 0) -> list[str]:
    """The faults in a seeded order, each kind about its share (and the asked minimums)."""
    counts = {kind: max(1, round(faults * share)) for kind, share in SHARES.items()}
    counts["redis_kill"] = max(counts["redis_kill"], min_redis)
    counts["net_cut"] = max(counts["net_cut"], min_cuts)
    while sum(counts.values()) > max(faults, len(KINDS)):
        kind = max((k for k in counts if k not in ("redis_kill", "net_cut") or
                    counts[k] > {"redis_kill": min_redis, "net_cut": min_cuts}[k]),
                   key=lambda k: counts[k])
        counts[kind] -= 1
    while sum(counts.values()) < faults:
        counts[rng.choice(KINDS)] += 1
    order = [kind for kind, n in counts.items() for _ in range(n)]
    rng.shuffle(order)
    return order


@dataclass
class Fault:
    kind: str
    target: str
    began: float
    recovered_s: float | None = None
    note: str = ""


@dataclass
class Ledger:
    """What the campaign saw from outside: submissions, answers, windows with no web server."""

    submitted: dict[int, dict] = field(default_factory=dict)  # job id -> what was asked
    refused: list[str] = field(default_factory=list)  # submissions never accepted
    answers: int = 0
    errors_5xx: list[tuple[float, int, str]] = field(default_factory=list)
    web_down: list[list[float]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def web_was_down(self, at: float, slack: float = 1.0) -> bool:
        return any(start - slack <= at <= (end or time.monotonic()) + slack
                   for start, end in self.web_down)


class Api:
    """The portal's REST API as a client sees it: a 5xx is recorded, a connection refused (the
    web server down) is retried with the same Idempotency-Key."""

    def __init__(self, base: str, token: str, ledger: Ledger):
        self.base, self.ledger = base, ledger
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def call(self, method: str, path: str, **kwargs) -> requests.Response | None:
        try:
            response = self.session.request(method, f"{self.base}{path}", timeout=15, **kwargs)
        except requests.RequestException:
            return None
        with self.ledger.lock:
            self.ledger.answers += 1
            if response.status_code >= 500:
                self.ledger.errors_5xx.append((time.monotonic(), response.status_code,
                                               f"{method} {path}"))
        return response

    def submit(self, spec: dict, give_up_s: float = 120) -> int | None:
        key = uuid.uuid4().hex
        deadline = time.monotonic() + give_up_s
        while time.monotonic() < deadline:
            response = self.call("POST", "/api/v1/jobs/", json=spec,
                                 headers={"Idempotency-Key": key})
            if response is not None and response.status_code in (200, 201):
                job = int(response.json()["id"])
                with self.ledger.lock:
                    self.ledger.submitted[job] = spec
                return job
            if response is not None and response.status_code < 500:
                self.ledger.refused.append(f"{response.status_code} {response.text[:200]}")
                return None
            time.sleep(0.5)
        self.ledger.refused.append(f"no answer for {give_up_s:.0f} s")
        return None


class Load(threading.Thread):
    """A steady mix of jobs, and readers of the job and cluster pages."""

    def __init__(self, api: Api, rng: random.Random, every: float, gangs: float = 0.08):
        super().__init__(daemon=True)
        self.api, self.rng, self.every, self.gangs = api, rng, every, gangs
        self.stopped = threading.Event()
        self.tables = 0
        self.count = 0

    def job(self) -> dict:
        roll = self.rng.random()
        self.count += 1
        if self.count == 2 or roll >= 1 - self.gangs:  # the second job is a gang, always
            return {**GANG, "params": {**GANG["params"], "seed": self.rng.randint(0, 1000)}}
        if roll < 0.55:
            return {"kind": "diag.sleep", "params": {"seconds": round(self.rng.uniform(0.5, 4), 1)},
                    "max_attempts": 5}
        if roll < 0.72:
            return {"kind": "diag.fanout", "params": {"parts": self.rng.randint(2, 4),
                                                      "seconds": 1}, "max_attempts": 5}
        self.tables += 1
        return {"kind": "etl.clickstream", "max_attempts": 5,
                "params": {**CLICKSTREAM, "seed": self.rng.randint(0, 10_000),
                           "table": f"chaos_{os.getpid()}_{self.tables}"}}

    def run(self) -> None:
        while not self.stopped.is_set():
            spec = self.job()
            job = self.api.submit(spec)
            if job and spec["kind"] == "diag.sleep" and self.rng.random() < 0.05:
                self.api.call("POST", f"/api/v1/jobs/{job}/cancel/")
            self.api.call("GET", "/api/v1/cluster/")
            if job:
                self.api.call("GET", f"/api/v1/jobs/{job}/")
            self.stopped.wait(self.every)


class Campaign:
    def __init__(self, args, say=print):
        self.args, self.say = args, say
        self.rng = random.Random(args.seed)
        self.ledger = Ledger()
        self.why_no_netns = netns.why_not()
        self.spaces: netns.Namespaces | None = None
        self.slots: dict[str, netns.Slot | None] = {}  # node name -> its namespace
        self.names = [f"c{i + 1}" for i in range(args.nodes)]
        self.generation = collections.Counter()
        # Set as start() gets that far: stop() undoes whatever was made.
        self.pg: PostgresServer | None = None
        self.redis: RedisServer | None = None
        self.cluster: Cluster | None = None
        self.log = None
        self.stopping = threading.Event()
        self.supervising: threading.Thread | None = None
        # Set by SIGINT/SIGTERM or --max-minutes: no more faults; drain and report.
        self.enough = threading.Event()
        self.planned = 0

    # --- the cluster ------------------------------------------------------------------------

    def start(self) -> None:
        if self.why_no_netns is None:
            self.spaces = netns.Namespaces(self.args.nodes).create()
        hosts = self.spaces.host_ips if self.spaces else ()
        self.pg = PostgresServer(listen=("127.0.0.1", *hosts),
                                 trust=(netns.NETWORK,) if hosts else ()).start()
        self.redis = RedisServer(free_port(), bind=("127.0.0.1", *hosts)).start()
        portal_db = self.database("portal")
        self.warehouse = self.database("warehouse")
        self.data = Path(tempfile.mkdtemp(prefix="portal-chaos-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env.update(TIMINGS, **GENEROUS_RATES, DATABASE_URL=portal_db, REDIS_URL=self.redis.url,
                   WAREHOUSE_URL=self.warehouse, SECRET_KEY="chaos-only-secret", DEBUG="0",
                   ALLOWED_HOSTS="127.0.0.1,localhost", LOG_LEVEL="WARNING",
                   DATA_DIR=str(self.data), DATA_ROOT=str(self.data / "files"),
                   ARTIFACTS_DIR=str(self.data / "artifacts"), PYTHONUNBUFFERED="1",
                   DJANGO_SETTINGS_MODULE="portal.settings")
        (self.data / "files").mkdir()
        self.log = open(self.args.log, "w", buffering=1)
        self.cluster = Cluster(env, log=self.log)
        self.cluster.manage("migrate", "--noinput")
        token = self.cluster.manage("shell", "-c", (
            "from django.contrib.auth import get_user_model; from accounts.models import "
            "ApiToken; u = get_user_model().objects.create_user('chaos', is_staff=True); "
            "print(ApiToken.issue(u)[1])")).splitlines()[-1]
        self.port = free_port()
        self.cluster.start_web(self.port)
        self.cluster.start_ingester()
        self.cluster.start_reconciler()
        for i, name in enumerate(self.names):
            self.slots[name] = self.spaces.slots[i] if self.spaces else None
            self.start_node(name)
        self.api = Api(f"http://127.0.0.1:{self.port}", token, self.ledger)
        # What dies without being killed here is started again, and counted.
        self.supervisor = Supervisor(self.cluster, say=lambda text: self.log.write(
            f"[supervisor] {text}\n"))
        self.supervisor.MAX_BACKOFF_S = 2.0
        self.supervising = threading.Thread(target=self.supervisor.run,
                                            args=(self.stopping, 0.3), daemon=True)
        self.supervising.start()
        self.wait_nodes_online(self.names, 90)

    def database(self, name: str) -> str:
        with psycopg.connect(self.pg.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return urlunsplit(urlsplit(self.pg.url)._replace(path=f"/{name}"))

    def start_node(self, name: str, slot: netns.Slot | None = None) -> None:
        slot = slot or self.slots[name]
        self.slots[name] = slot
        if slot is None:
            self.cluster.start_worker(name, concurrency=2, queues=QUEUES)
            return
        # Inside its namespace a node reaches Redis and the warehouse on its host-side address
        # (and so, with no NODE_ADDRESS, a gang's rank 0 on it listens on its namespace's).
        redis_url = self.redis.url.replace("127.0.0.1", slot.host_ip)
        warehouse = self.warehouse.replace("127.0.0.1", slot.host_ip)
        self.cluster.start_worker(name, concurrency=2, queues=QUEUES, prefix=slot.prefix,
                                  env={"REDIS_URL": redis_url, "WAREHOUSE_URL": warehouse})

    def stop(self) -> None:
        self.stopping.set()
        if self.supervising:
            self.supervising.join(timeout=60)
        for slot in self.spaces.slots if self.spaces else ():
            slot.restore()
        if self.cluster:
            for proc in self.cluster.procs.values():  # a stopped node would not hear SIGTERM
                try:
                    os.killpg(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            self.cluster.stop()
        for server in (self.redis, self.pg):
            if server:
                server.cleanup()
        if self.spaces:
            self.spaces.remove()
        if self.log:
            self.log.close()

    # --- reading the database ---------------------------------------------------------------

    def sql(self, query: str, *args) -> list[tuple]:
        with psycopg.connect(self.cluster.env["DATABASE_URL"]) as conn:
            return conn.execute(query, args).fetchall()

    def node_states(self) -> dict[str, str]:
        return dict(self.sql("SELECT name, state FROM jobs_node"))

    def wait_nodes_online(self, names, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.node_states()
            if all(states.get(n) == "online" for n in names):
                return True
            time.sleep(0.3)
        return False

    def running_on(self, node: str) -> dict[int, int]:
        """The running jobs on a node: its own, and the gangs with a rank on it."""
        return dict(self.sql(
            "SELECT id, attempt FROM jobs_job j WHERE state = 'running' AND (node = %s OR "
            "EXISTS (SELECT 1 FROM jobs_attemptrank r WHERE r.job_id = j.id AND "
            "r.attempt = j.attempt AND r.node = %s AND r.state IN ('queued', 'running')))",
            node, node))

    def moved(self, jobs: dict[int, int]) -> bool:
        """Every one of these jobs ended, or runs a later attempt than it did."""
        if not jobs:
            return True
        rows = self.sql("SELECT id, state, attempt FROM jobs_job WHERE id = ANY(%s)",
                        list(jobs))
        return all(state in TERMINAL or (attempt > jobs[job] and state == "running")
                   for job, state, attempt in rows)

    def until(self, check, timeout: float) -> float | None:
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            try:
                if check():
                    return time.monotonic() - began
            except (psycopg.Error, requests.RequestException):
                pass
            time.sleep(0.2)
        return None

    def probe(self, timeout: float = 90) -> float | None:
        """Seconds until a job submitted now has succeeded."""
        began = time.monotonic()
        job = self.api.submit({"kind": "diag.sleep", "params": {"seconds": 0}}, timeout)
        if job is None:
            return None
        done = self.until(lambda: self.sql("SELECT state FROM jobs_job WHERE id = %s",
                                           job)[0][0] == "succeeded", timeout)
        return None if done is None else time.monotonic() - began

    # --- the faults -------------------------------------------------------------------------

    def busiest_node(self) -> str:
        alive = [n for n in self.slots if n in self.cluster.procs]
        counts = collections.Counter(dict(self.sql(
            "SELECT node, count(*) FROM jobs_job WHERE state = 'running' GROUP BY node")))
        counts.update(dict(self.sql(
            "SELECT r.node, count(*) FROM jobs_attemptrank r JOIN jobs_job j ON j.id = "
            "r.job_id AND j.attempt = r.attempt WHERE j.state = 'running' AND r.state IN "
            "('queued', 'running') GROUP BY r.node")))
        return max(alive, key=lambda n: (counts.get(n, 0), self.rng.random()))

    def inject(self, kind: str) -> Fault:
        hold = LEASE_S + self.rng.uniform(1.5, 4)
        if kind in NODE_FAULTS:
            node = self.busiest_node()
            fault = Fault(kind, node, time.monotonic())
            jobs = self.running_on(node)
            if kind == "node_kill":
                self.cluster.kill(node)
                time.sleep(self.rng.uniform(0.5, 3))
                if self.rng.random() < 0.5:  # back under a new name, in the same namespace
                    base = node.split("-")[0]
                    self.generation[base] += 1
                    new = f"{base}-{self.generation[base] + 1}"
                    self.start_node(new, self.slots.pop(node))
                    fault.note = f"back as {new}"
                else:
                    self.start_node(node)
            elif kind == "node_stop":
                os.killpg(self.cluster.procs[node].pid, signal.SIGSTOP)
                time.sleep(hold)
                os.killpg(self.cluster.procs[node].pid, signal.SIGCONT)
            else:
                slot = self.slots[node]
                if slot is None:
                    fault.note = f"NOT RUN: {self.why_no_netns}"
                    return fault
                slot.cut()
                time.sleep(hold)
                slot.restore()
            fault.recovered_s = self.until(lambda: self.moved(jobs), 120)
            if fault.recovered_s is not None:
                fault.recovered_s = time.monotonic() - fault.began
            fault.note += f"; {len(jobs)} running on it"
            return fault
        fault = Fault(kind, kind.split("_")[0], time.monotonic())
        if kind == "redis_kill":
            self.redis.stop()
            time.sleep(self.rng.uniform(0.2, 2))
            self.redis.start()
        elif kind == "web_kill":
            window = [time.monotonic(), None]
            self.ledger.web_down.append(window)
            self.cluster.kill("web")
            time.sleep(self.rng.uniform(0.5, 3))
            self.cluster.restart("web")
            wait_for_port(self.port)
            up = self.until(lambda: requests.get(f"http://127.0.0.1:{self.port}/accounts/login/",
                                                 timeout=5).status_code == 200, 60)
            window[1] = time.monotonic()
            fault.recovered_s = None if up is None else time.monotonic() - fault.began
            return fault
        else:
            name = "ingester" if kind == "ingester_kill" else "reconciler"
            self.cluster.kill(name)
            time.sleep(self.rng.uniform(0.2, 2))
            self.cluster.restart(name)
        took = self.probe()
        fault.recovered_s = None if took is None else time.monotonic() - fault.began
        return fault

    def run(self) -> int:
        kinds = plan(self.args.faults, self.rng, min_redis=self.args.min_redis,
                     min_cuts=self.args.min_cuts)
        self.say(f"{len(kinds)} faults (seed {self.args.seed}): "
                 + ", ".join(f"{k} {n}" for k, n in collections.Counter(kinds).items()))
        load = None
        try:
            self.start()
            load = Load(self.api, random.Random(self.args.seed + 1), self.args.every,
                        self.args.gangs)
            load.start()
            time.sleep(5)
            self.planned = len(kinds)
            ends = time.monotonic() + self.args.max_minutes * 60
            for i, kind in enumerate(kinds, 1):
                if self.enough.is_set() or time.monotonic() > ends:
                    self.say(f"stopped after {i - 1} of {len(kinds)} faults")
                    break
                fault = self.inject(kind)
                self.ledger.faults.append(fault)
                took = "never" if fault.recovered_s is None else f"{fault.recovered_s:.1f} s"
                self.say(f"  {i:3}/{len(kinds)} {kind:<16} {fault.target:<10} recovered "
                         f"{took} {fault.note}")
                time.sleep(self.rng.uniform(1, 3))
            load.stopped.set()
            load.join(timeout=130)
            self.say(f"faults done; waiting up to {self.args.drain:.0f} s for every job to end")
            self.until(lambda: not self.sql(
                "SELECT 1 FROM jobs_job WHERE state NOT IN ('succeeded', 'failed', 'cancelled') "
                "LIMIT 1"), self.args.drain)
            report = self.report()
        finally:
            if load:
                load.stopped.set()
            self.stop()
        self.say(report.table())
        return 0 if report.ok else 1

    # --- the verdict ------------------------------------------------------------------------

    def report(self) -> Report:
        jobs = {job: (state, error) for job, state, error in self.sql(
            "SELECT id, state, error FROM jobs_job")}
        submitted = self.ledger.submitted
        failed = collections.Counter(
            re.sub(r"\d+", "N", (jobs[j][1] or "(no error)").splitlines()[0])[:64]
            for j in submitted if j in jobs and jobs[j][0] == "failed")
        doubles = self.sql("SELECT job_id FROM jobs_attempt WHERE state = 'succeeded' "
                           "GROUP BY job_id HAVING count(*) > 1")
        lost_writes = sum(self.sql(GIVEN_UP_WRITES)[0])
        wrong = []
        with psycopg.connect(self.warehouse) as conn:
            for job, spec in submitted.items():
                if spec["kind"] != "etl.clickstream" or jobs.get(job, ("",))[0] != "succeeded":
                    continue
                table = f"{spec['params']['table']}_events"
                try:
                    # In the team's schema (team data spaces): wherever the job's team put it.
                    found = conn.execute("SELECT table_schema FROM information_schema.tables "
                                         "WHERE table_name = %s", [table]).fetchall()
                    if len(found) != 1:
                        raise psycopg.errors.UndefinedTable(f"{len(found)} tables {table}")
                    (rows,) = conn.execute(
                        f'SELECT count(*) FROM "{found[0][0]}"."{table}"').fetchone()
                except psycopg.Error as exc:
                    conn.rollback()
                    rows = f"unreadable ({type(exc).__name__})"
                if rows != spec["params"]["events"]:
                    wrong.append(f"{table}: {rows} rows, {spec['params']['events']} expected")
        outside = [e for e in self.ledger.errors_5xx if not self.ledger.web_was_down(e[0])]
        gangs = self.gangs(jobs)
        return Report(
            submitted=len(submitted), refused=self.ledger.refused,
            states=collections.Counter(jobs[j][0] for j in submitted if j in jobs),
            stuck=[j for j in submitted if j in jobs and jobs[j][0] not in TERMINAL],
            vanished=[j for j in submitted if j not in jobs], failed=failed,
            doubles=[j for (j,) in doubles], lost_writes=lost_writes, wrong_tables=wrong,
            answers=self.ledger.answers, errors_5xx=len(self.ledger.errors_5xx),
            errors_5xx_outside=outside, faults=self.ledger.faults,
            unplanned=dict(self.supervisor.restarts), why_no_netns=self.why_no_netns,
            planned=self.planned, gangs=gangs)

    def gangs(self, jobs: dict[int, tuple]) -> Gangs:
        """What became of the gang jobs, and where their ranks met."""
        ids = [j for j, spec in self.ledger.submitted.items() if spec.get("nodes", 1) > 1]
        given_up = self.sql("SELECT count(*) FROM jobs_attempt a JOIN jobs_job j ON j.id = "
                            "a.job_id WHERE j.id = ANY(%s) AND a.number < j.attempt", ids)[0][0]
        # Rank 0's address as it reported it, and the one each other rank joined at.
        reported = [a.rpartition(":")[0] for (a,) in self.sql(
            "SELECT address FROM jobs_attemptrank WHERE job_id = ANY(%s) AND rank = 0 AND "
            "address <> ''", ids)]
        joined = [m.group(1) for (text,) in self.sql(
            "SELECT text FROM jobs_logline WHERE job_id = ANY(%s) AND rank > 0 AND text LIKE "
            "'rank %% joined %%'", ids) if (m := re.search(r" at ([\d.]+):\d+ in ", text))]
        half = self.sql(
            "SELECT j.id FROM jobs_job j JOIN jobs_attemptrank r ON r.job_id = j.id AND "
            "r.attempt = j.attempt WHERE j.id = ANY(%s) AND j.state = 'succeeded' AND "
            "r.state <> 'succeeded'", ids)
        network = f"10.213.{self.spaces.block}." if self.spaces else None
        return Gangs(submitted=len(ids), states=collections.Counter(
            jobs[j][0] for j in ids if j in jobs), given_up=given_up, reported=reported,
            joined=joined, network=network, half_succeeded=sorted({j for (j,) in half}))


# Writes of an attempt after the portal gave it up: after the next attempt was made (a retry,
# a requeue of a gang, a preemption), or after a last attempt was declared lost; and a gang's
# rank writing after it was stopped with its gang (the job's last attempt ending).
GIVEN_UP_WRITES = """
WITH given_up AS (
    SELECT a.job_id, a.number, COALESCE(n.created_at, a.finished_at) AS at
    FROM jobs_attempt a LEFT JOIN jobs_attempt n ON n.job_id = a.job_id
        AND n.number = a.number + 1
    WHERE n.id IS NOT NULL OR a.state = 'lost'),
stopped AS (
    SELECT job_id, attempt, rank, finished_at AS at FROM jobs_attemptrank
    WHERE state IN ('lost', 'cancelled') AND finished_at IS NOT NULL)
SELECT
    (SELECT count(*) FROM given_up g JOIN jobs_logline l ON l.job_id = g.job_id
        AND l.attempt = g.number AND l.ts > g.at),
    (SELECT count(*) FROM given_up g JOIN jobs_metricpoint m ON m.job_id = g.job_id
        AND m.attempt = g.number AND m.ts > g.at),
    (SELECT count(*) FROM given_up g JOIN jobs_artifact f ON f.job_id = g.job_id
        AND f.attempt = g.number AND f.created_at > g.at),
    (SELECT count(*) FROM stopped s JOIN jobs_logline l ON l.job_id = s.job_id
        AND l.attempt = s.attempt AND l.rank = s.rank AND l.ts > s.at)
"""


@dataclass
class Gangs:
    submitted: int
    states: collections.Counter
    given_up: int  # attempts given up, each run again on a fresh gang
    reported: list[str]  # rank 0's address, per attempt that got that far
    joined: list[str]  # the address each other rank joined its gang at
    network: str | None  # the nodes' network (10.213.B.), when they had namespaces
    half_succeeded: list[int]  # succeeded, with a rank of that attempt that did not

    def on_network(self, addresses: list[str]) -> int:
        return sum(1 for a in addresses if self.network is None or a.startswith(self.network))

    @property
    def off_network(self) -> list[str]:
        if self.network is None:
            return []
        return [a for a in self.reported + self.joined if not a.startswith(self.network)]

    @property
    def ok(self) -> bool:
        return not (self.off_network or self.half_succeeded)

    def rows(self) -> list[tuple[str, object]]:
        where = (f"{self.network}x" if self.network else "no namespaces")
        return [
            ("gang jobs (train.torch, 2 nodes)", self.submitted),
            ("  succeeded / failed / cancelled", f"{self.states['succeeded']} / "
             f"{self.states['failed']} / {self.states['cancelled']}"),
            ("  attempts given up and run again on a fresh gang", self.given_up),
            ("  rendezvous on the nodes' network (reported / joined)",
             f"{self.on_network(self.reported)} of {len(self.reported)} / "
             f"{self.on_network(self.joined)} of {len(self.joined)} at {where}"),
            *((f"    off the network: {a}", "") for a in self.off_network[:5]),
            ("  succeeded with a rank that did not",
             f"{len(self.half_succeeded)} {self.half_succeeded[:10] or ''}"),
        ]


@dataclass
class Report:
    submitted: int
    refused: list[str]
    states: collections.Counter
    stuck: list[int]
    vanished: list[int]
    failed: collections.Counter
    doubles: list[int]
    lost_writes: int
    wrong_tables: list[str]
    answers: int
    errors_5xx: int
    errors_5xx_outside: list
    faults: list[Fault]
    unplanned: dict[str, int]
    why_no_netns: str | None
    planned: int = 0
    gangs: Gangs | None = None

    @property
    def not_recovered(self) -> list[Fault]:
        return [f for f in self.faults if f.recovered_s is None and not f.note.startswith("NOT")]

    @property
    def not_run(self) -> list[Fault]:
        return [f for f in self.faults if f.note.startswith("NOT RUN")]

    @property
    def ok(self) -> bool:
        return not (self.stuck or self.vanished or self.doubles or self.lost_writes
                    or self.wrong_tables or self.errors_5xx_outside or self.not_recovered
                    or self.not_run or self.refused or len(self.faults) < self.planned
                    or (self.gangs and not self.gangs.ok))

    def table(self) -> str:
        rows = [("faults injected", f"{len(self.faults)} of {self.planned}"),
                ("jobs submitted", self.submitted),
                ("  succeeded", self.states["succeeded"]),
                ("  failed", self.states["failed"]),
                *((f"    {error}", n) for error, n in self.failed.most_common()),
                ("  cancelled", self.states["cancelled"]),
                ("  stuck (not ended)", f"{len(self.stuck)} {self.stuck[:10] or ''}"),
                ("  vanished", f"{len(self.vanished)} {self.vanished[:10] or ''}"),
                ("submissions never accepted", len(self.refused)),
                ("jobs with more than one succeeded attempt",
                 f"{len(self.doubles)} {self.doubles[:10] or ''}"),
                ("writes of an attempt or rank after it was given up (logs, metrics, files)",
                 self.lost_writes),
                ("warehouse tables with a wrong row count", len(self.wrong_tables)),
                *((f"    {line}", "") for line in self.wrong_tables[:10]),
                ("API answers", self.answers),
                ("  5xx while the web server was down / restarting",
                 self.errors_5xx - len(self.errors_5xx_outside)),
                ("  5xx otherwise", len(self.errors_5xx_outside)),
                *((f"    {path}", f"{n} x {status}") for (status, path), n in
                  collections.Counter((code, re.sub(r"\d+", "N", path))
                                      for _, code, path in self.errors_5xx_outside)
                  .most_common(8)),
                *(self.gangs.rows() if self.gangs else ()),
                ("processes that died unasked (restarted)",
                 ", ".join(f"{k} {v}" for k, v in sorted(self.unplanned.items())) or 0)]
        rows.append(("recovery per fault kind (s)", "count  p50    max   not recovered"))
        for kind in KINDS:
            faults = [f for f in self.faults if f.kind == kind]
            if not faults:
                continue
            if all(f.note.startswith("NOT RUN") for f in faults):
                rows.append((f"  {kind}", f"{len(faults):>5}  NOT RUN: {self.why_no_netns}"))
                continue
            times = sorted(f.recovered_s for f in faults if f.recovered_s is not None)
            p50 = f"{statistics.median(times):5.1f}" if times else "    -"
            worst = f"{max(times):5.1f}" if times else "    -"
            rows.append((f"  {kind}", f"{len(faults):>5}  {p50}  {worst}  "
                                      f"{len(faults) - len(times)}"))
        width = max(len(name) for name, _ in rows)
        verdict = "OK: every invariant held" if self.ok else "FAILED: " + ", ".join(
            name for name, broken in (
                ("stuck jobs", self.stuck), ("vanished jobs", self.vanished),
                ("duplicate successes", self.doubles), ("lost-attempt writes", self.lost_writes),
                ("wrong warehouse tables", self.wrong_tables),
                ("5xx outside web-down windows", self.errors_5xx_outside),
                ("faults not recovered from", self.not_recovered),
                ("faults that could not run", self.not_run),
                ("submissions never accepted", self.refused),
                ("not every fault ran", len(self.faults) < self.planned),
                ("gang rendezvous off the nodes' network",
                 self.gangs and self.gangs.off_network),
                ("gangs succeeded with a rank that did not",
                 self.gangs and self.gangs.half_succeeded)) if broken)
        return "\n".join([*(f"  {name:<{width}}  {value}" for name, value in rows), verdict])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--min-redis", type=int, default=0, help="at least this many Redis kills")
    parser.add_argument("--min-cuts", type=int, default=0, help="at least this many link cuts")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between submissions")
    parser.add_argument("--gangs", type=float, default=0.08, help="the share of submissions "
                        "that are gang jobs (the second one always is)")
    parser.add_argument("--drain", type=float, default=180, help="seconds every job gets to end "
                        "after the last fault")
    parser.add_argument("--max-minutes", type=float, default=24 * 60, help="inject no more "
                        "faults after this long (then drain and report: a failed campaign)")
    parser.add_argument("--log", type=Path, default=Path("test-artifacts/chaos.log"))
    args = parser.parse_args(argv)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    if why := netns.why_not():
        print(f"network partitions cannot run here ({why}): those faults fail the campaign")
    campaign = Campaign(args, say=lambda text: print(text, flush=True))
    # Ctrl-C or SIGTERM: no more faults, but the cluster is still drained, read and removed.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: campaign.enough.set())
    return campaign.run()


if __name__ == "__main__":
    sys.exit(main())
