"""The job list with a million jobs in the table: GET /api/v1/jobs/, first and deep pages, with
and without filters, beside the same requests at a small table measured in the same run.

    python -m bench.joblist              (1,000,000 jobs; about 5 minutes)
    python -m bench.joblist --quick      (100,000 jobs; under 2 minutes)

It starts what it needs (a throwaway PostgreSQL and Redis and the web server; no workers, no
ingester, no reconciler: nothing changes the jobs while they are read) and stops all of it at
the end, also on Ctrl-C or an error. Then:

1. People: --teams teams (20), --users users (100), each a member of one team and every third
   of a second; the staff user `bench`, and a member of two teams (`jl-user-06`).
2. The small table: --baseline-jobs jobs (1,000) made with SQL, the same spread as below;
   every case measured (and GET /api/v1/kinds/, a call that reads no job, as the floor).
3. The big table: emptied and filled with --jobs jobs (1,000,000) by one INSERT ... SELECT
   generate_series (indexes dropped meanwhile and built again after, foreign keys not checked:
   the rows are consistent by construction), then VACUUM ANALYZE; every case again.

Each case: a user (staff: sees all; the member: their teams' jobs), a page (the first; or deep:
--depth pages of 50 down, reached by following `next` links) and a filter (none, state=failed,
kind=etl.clickstream, q=a common word, q=a rare one, state and kind together). Timed over HTTP
with the user's token, one request at a time: after --warm rounds, --samples rounds of one
request per case (so that whatever else the machine does falls on every case alike); a sample
is the client's time from sending the request to having read the whole response (a keep-alive
connection per user). The report gives p50/p99 per case at both sizes and their ratio, the SQL
queries each request makes, and for the big table each case's plan in a line (the indexes it
reads, the rows it reads for the rows it keeps, PostgreSQL's own time); the slowest case's
EXPLAIN (ANALYZE, BUFFERS) in full; the CPU per request of the web process and PostgreSQL, and
what other processes used meanwhile (a shared machine skews every figure).

Target (from the issue): p50 < 30 ms in every case at the big table. `--strict` exits 1 when it
is missed; otherwise a completed run exits 0 (2 when a part failed, 130 when interrupted).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from bench.live import HelpFormatter, machine_cpu
from bench.run import (
    begin,
    cpu_seconds,
    guarded,
    log,
    ms,
    percentile,
    start_portal,
    stop_all,
    verdict,
    wait_until,
)
from portal.cluster import Cluster, free_port
from tests.services import PostgresServer, RedisServer

P50_TARGET_MS = 30.0
PAGE = 50  # NewestFirst.page_size
WALK_PAGE = 500  # NewestFirst.max_page_size: the walk down to a deep page goes 500 at a time
MEMBER = 6  # jl-user-06: in team-06 (its first team) and team-05 (every third user has two)
ACTIVE = 300  # the newest jobs are pending, queued or running; the rest have ended
FANOUT_EVERY = 2000  # every 2,000th job is a fan-out of 10 partitions: 0.5 % of the rows
FANOUT_PARTS = 10
DEPS_EVERY = 50  # every 50th job waits for the job before it (jobs_job_after)
# (kind, queue, share of the jobs); besides, every FANOUT_EVERY-th job is a diag.fanout whose
# FANOUT_PARTS partitions (diag.part) follow it
KINDS = [("diag.noop", "cpu", 0.28), ("diag.sleep", "cpu", 0.20), ("shell", "cpu", 0.15),
         ("etl.sql", "etl", 0.10), ("train.tabular", "train", 0.10), ("etl.ingest", "etl", 0.07),
         ("train.sweep", "train", 0.05), ("etl.clickstream", "etl", 0.03),
         ("diag.fanout", "cpu", 0.02)]
PROJECTS = ["atlas", "billing", "churn", "dedupe", "embeddings", "forecast", "geo", "hydra",
            "inventory", "journeys", "kestrel", "ledger", "mercury", "nightly", "orion",
            "pricing", "quasar", "ranking", "sales", "telemetry", "uplift", "vega", "weather",
            "xsell", "yield", "zeta", "audit", "backfill", "catalog", "clicks", "cohorts",
            "exports", "fraud", "funnel", "ingest", "logs", "metrics", "recsys", "search",
            "session"]
KIND_X = "etl.clickstream"  # 3 % of the jobs
Q_COMMON = "forecast"  # one project of 40: 2.5 % of the names
Q_RARE = "0042"  # names end in a 4-digit number: 1 in 10,000
FILTERS = [("-", {}), ("state=failed", {"state": "failed"}), (f"kind={KIND_X}", {"kind": KIND_X}),
           (f"q={Q_COMMON}", {"q": Q_COMMON}), (f"q={Q_RARE}", {"q": Q_RARE}),
           ("state+kind", {"state": "failed", "kind": KIND_X})]


# --- the cases and what was measured ---------------------------------------------------------


@dataclass(frozen=True)
class Case:
    who: str  # "staff" | "member"
    deep: bool
    label: str
    params: tuple

    @property
    def name(self) -> str:
        return f"{self.who:<6} {'deep' if self.deep else 'first':<5} {self.label}"


CASES = [Case(who, deep, label, tuple(params.items()))
         for who in ("staff", "member") for deep in (False, True) for label, params in FILTERS]


@dataclass
class Timing:
    samples: list[float] = field(default_factory=list)  # seconds
    url: str = ""
    page: int = 1  # the page measured (1 = the first)
    rows: int = 0  # jobs on it
    nbytes: int = 0

    def p(self, q: float) -> float:
        return ms(percentile(self.samples, q))


@dataclass
class Plan:
    queries: int = 0  # SQL queries the request made
    summary: str = ""
    pg_ms: float = 0.0  # the list query's execution time in PostgreSQL (EXPLAIN ANALYZE)
    sql: str = ""


@dataclass
class Size:
    jobs: int
    fill_notes: str = ""
    timings: dict[Case, Timing] = field(default_factory=dict)
    plans: dict[Case, Plan] = field(default_factory=dict)
    floor: Timing | None = None  # GET /api/v1/kinds/
    requests: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    visible: dict[str, int] = field(default_factory=dict)  # jobs listed, by user


# --- the benchmark ---------------------------------------------------------------------------


class JobListBench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.pg: PostgresServer | None = None
        self.redis_server: RedisServer | None = None
        self.cluster: Cluster | None = None
        self.db = None
        self.token = ""
        self.tokens: dict[str, str] = {}
        self.sessions: dict = {}
        self.base_url = ""
        self.people: dict = {}
        self.pg_version = ""
        self.indexes: dict[str, str] = {}  # jobs_job's, but the primary key's: name -> DDL

    # Set-up and tear-down.

    def setup(self) -> None:
        t0 = time.monotonic()
        start_portal(self)
        import psycopg

        self.db = psycopg.connect(self.pg.url, autocommit=True)
        self.pg_version = self.sql("SHOW server_version")[0][0]
        self.people = self.make_people()
        self.tokens = {"staff": self.token, "member": self.people["member_token"]}
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.cluster.start_web(port)

        def http_ok():
            self.alive()
            try:
                return self.session("staff").get(f"{self.base_url}/api/v1/kinds/",
                                                 timeout=5).ok
            except Exception:
                return False

        wait_until(http_ok, 60, "the web server to answer", interval=0.1)
        log(f"ready in {time.monotonic() - t0:.1f} s (web on :{port}; PostgreSQL "
            f"{self.pg_version}); {self.args.teams} teams, {self.args.users} users; staff "
            f"`bench`, member `{self.people['member']}` in "
            f"{', '.join(self.people['member_teams'])}")

    def make_people(self) -> dict:
        """Teams, users and their memberships through the ORM; the staff user `bench` (made by
        start_portal) and a token for the member."""
        code = f"""
import json
from django.contrib.auth import get_user_model
from accounts.models import ApiToken, Membership, Team
User = get_user_model()
staff = User.objects.get(username="bench")
staff.is_staff = True
staff.save(update_fields=["is_staff"])
teams = Team.objects.bulk_create([Team(name=f"team-{{t:02d}}", title=f"Team {{t}}")
                                  for t in range({self.args.teams})])
users = User.objects.bulk_create([User(username=f"jl-user-{{u:02d}}")
                                  for u in range({self.args.users})])
members = []
for u, user in enumerate(users):
    members.append(Membership(team=teams[u % len(teams)], user=user, role="member"))
    if u % 3 == 0:
        members.append(Membership(team=teams[(u * 7 + 3) % len(teams)], user=user,
                                  role="member"))
Membership.objects.bulk_create(members)
member = users[{MEMBER}]
_, key = ApiToken.issue(member, name="bench")
print(json.dumps({{"teams": [t.pk for t in teams], "users": [u.pk for u in users],
                  "member": member.username, "member_id": member.pk, "member_token": key,
                  "member_teams": sorted(m.team.name for m in
                                         Membership.objects.filter(user=member)),
                  "member_team_ids": sorted(m.team_id for m in
                                            Membership.objects.filter(user=member))}}))
"""
        return json.loads(self.cluster.manage("shell", "-c", code).splitlines()[-1])

    def alive(self) -> None:
        for name, proc in self.cluster.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} "
                                   "(run with --verbose to see its output)")

    def teardown(self) -> None:
        stop_all([
            ("HTTP sessions", lambda: [s.close() for s in self.sessions.values()]),
            ("cluster", lambda: self.cluster and self.cluster.stop()),
            ("database connection", lambda: self.db and self.db.close()),
            ("Redis", lambda: self.redis_server and self.redis_server.cleanup()),
            ("PostgreSQL", lambda: self.pg and self.pg.cleanup()),
        ])

    def session(self, who: str):
        import requests

        if who not in self.sessions:
            session = requests.Session()
            session.headers["Authorization"] = f"Token {self.tokens[who]}"
            self.sessions[who] = session
        return self.sessions[who]

    def sql(self, query: str, *params):
        with self.db.cursor() as cur:
            cur.execute(query, params or None)
            return cur.fetchall() if cur.description else []

    # The jobs.

    def fill(self, n: int) -> str:
        """Empty the jobs table and fill it with n jobs (ids 1..n, oldest first); returns
        what it took. Indexes other than the primary key are dropped meanwhile and built
        again after, and the foreign keys not checked (session_replication_role): the rows
        are consistent by construction, and it is many times faster."""
        t0 = time.perf_counter()
        self.sql("TRUNCATE jobs_job RESTART IDENTITY CASCADE")
        existing = self.sql(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "WHERE i.indrelid = 'jobs_job'::regclass AND NOT EXISTS (SELECT 1 FROM "
            "pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid)")
        for name, _ in existing:
            self.sql(f"DROP INDEX {name}")
        # The indexes as the migrations made them (remembered: --without-index leaves some
        # out of every fill).
        self.indexes = self.indexes or dict(existing)
        unknown = set(self.args.without_index) - set(self.indexes)
        if unknown:
            raise RuntimeError(f"--without-index: jobs_job has no index {', '.join(unknown)}")
        left_out = [name for name in self.indexes if name in self.args.without_index]
        indexes = [(name, d) for name, d in self.indexes.items() if name not in left_out]
        self.sql("SET session_replication_role = replica")
        self.sql("SET maintenance_work_mem = '256MB'")
        try:
            t1 = time.perf_counter()
            self.sql(self.fill_sql(n))
            self.sql("SELECT setval(pg_get_serial_sequence('jobs_job', 'id'), %s)", n)
            deps = self.after_table()
            if deps:
                table, frm, to = deps
                self.sql(f"INSERT INTO {table} ({frm}, {to}) SELECT id, id - 1 FROM jobs_job "
                         f"WHERE id % {DEPS_EVERY} = 7 AND parent_id IS NULL")
            t2 = time.perf_counter()
            for _, definition in indexes:
                self.sql(definition)
            t3 = time.perf_counter()
        finally:
            self.sql("SET session_replication_role = DEFAULT")
            self.sql("RESET maintenance_work_mem")
        self.sql("VACUUM (ANALYZE) jobs_job")
        if deps:
            self.sql(f"VACUUM (ANALYZE) {deps[0]}")
        t4 = time.perf_counter()
        size = self.sql("SELECT pg_size_pretty(pg_table_size('jobs_job')), "
                        "pg_size_pretty(pg_indexes_size('jobs_job'))")[0]
        return (f"{n:,} jobs in {t4 - t0:.1f} s (insert {t2 - t1:.1f} s, {len(indexes)} indexes "
                f"{t3 - t2:.1f} s, vacuum analyze {t4 - t3:.1f} s); table {size[0]}, indexes "
                f"{size[1]}" + (f"; left out: {', '.join(left_out)}"
                                if left_out else ""))

    def after_table(self) -> tuple[str, str, str] | None:
        """The table of Job.after (jobs that must succeed first) and its two columns."""
        cols = [r[0] for r in self.sql(
            "SELECT column_name FROM information_schema.columns WHERE table_name = "
            "'jobs_job_after'")]
        frm = next((c for c in cols if c.startswith("from_")), None)
        to = next((c for c in cols if c.startswith("to_")), None)
        return ("jobs_job_after", frm, to) if frm and to else None

    def fill_sql(self, n: int) -> str:
        """INSERT ... SELECT generate_series: every column the table has gets a value (one
        this file does not know, by its type, if it may not be null)."""
        teams, users = len(self.people["teams"]), len(self.people["users"])
        per_team = users // teams
        team_ids = ",".join(map(str, self.people["teams"]))
        users_ids = ",".join(map(str, self.people["users"]))

        def u(key: int) -> str:  # a uniform draw in [0, 1), fixed by the job (or its parent)
            return f"((hashint8extended(g, {key}) & 9007199254740991)::float8 / 9007199254740992)"

        kinds, cumulative = [], 0.0
        for name, _, share in KINDS:
            cumulative += share
            kinds.append(f"WHEN r_kind < {cumulative:.4f} THEN '{name}'")
        queues = " ".join(f"WHEN '{name}' THEN '{queue}'" for name, queue, _ in KINDS)
        projects = "(ARRAY[" + ", ".join(f"'{p}'" for p in PROJECTS) + "])"
        terminal = "state IN ('succeeded', 'failed', 'cancelled')"
        started = "state NOT IN ('pending', 'queued')"
        values = {
            "id": "i",
            "owner_id": f"('{{{users_ids}}}'::bigint[])[1 + team_ix + {teams} * owner_k]",
            "team_id": f"('{{{team_ids}}}'::bigint[])[1 + team_ix]",
            "kind": "kind",
            "name": f"{projects}[1 + proj_ix] || '-' || replace(split_part(kind, '.', 2) || "
                    "split_part(kind, '.', 1), 'shell', '') || '-' || "
                    "lpad((i % 10000)::text, 4, '0')",
            "params": f"jsonb_build_object('seconds', i % 60, 'project', {projects}[1 + "
                      "proj_ix], 'rows', (i % 97) * 1000)",
            "queue": f"CASE kind {queues} ELSE 'cpu' END",
            "priority": "CASE WHEN i % 10 = 0 THEN 5 ELSE 0 END",
            "cpus": "CASE WHEN kind LIKE 'train.%' THEN 4 ELSE 1 END",
            "gpus": "CASE WHEN kind = 'train.sweep' THEN 1 ELSE 0 END",
            "labels": "CASE WHEN kind = 'train.sweep' THEN '{\"gpu\": \"a100\"}'::jsonb "
                      "ELSE '{}'::jsonb END",
            "blocked": "false",
            "state": "state",
            "progress": "CASE WHEN state = 'succeeded' THEN 1.0 WHEN state = 'running' THEN "
                        "0.4 END",
            "message": "CASE state WHEN 'running' THEN 'step 4 of 10' WHEN 'failed' THEN "
                       "'failed after 3 attempts' WHEN 'pending' THEN 'waiting for a free "
                       "slot' ELSE '' END",
            "attempt": "CASE WHEN state = 'pending' THEN 0 WHEN state = 'failed' THEN 3 "
                       "ELSE 1 END",
            "token": "CASE WHEN state = 'pending' THEN '' ELSE md5(i::text) END",
            "max_attempts": "3",
            "timeout_s": "3600",
            "node": f"CASE WHEN {started} THEN 'node-' || lpad((i % 40)::text, 2, '0') "
                    "ELSE '' END",
            "lease_expires_at": "CASE WHEN state = 'running' THEN now() + interval '5 minutes' "
                                "END",
            "dispatched_at": "CASE WHEN state <> 'pending' THEN created + interval '1 second' "
                             "END",
            "cancel_requested_at": "CASE WHEN state = 'cancelled' THEN created + "
                                   "interval '30 seconds' END",
            "created_at": "created",
            "started_at": f"CASE WHEN {started} THEN created + interval '2 seconds' END",
            "finished_at": f"CASE WHEN {terminal} THEN created + (2 + i % 600) * "
                           "interval '1 second' END",
            "result": "CASE WHEN state = 'succeeded' THEN jsonb_build_object('rows', "
                      "(i % 997) * 13, 'seconds', i % 600) END",
            "error": "CASE WHEN state = 'failed' THEN 'Traceback (most recent call last):\n"
                     "  File \"workers/runner.py\", line 88, in run\nRuntimeError: step ' || "
                     "(i % 17) || ' exited with status 1' ELSE '' END",
            "idempotency_key": "NULL",
            "parent_id": f"CASE WHEN part THEN i - i % {FANOUT_EVERY} END",
            "partition": f"CASE WHEN part THEN i % {FANOUT_EVERY} - 1 END",
            "done": "CASE WHEN state = 'succeeded' THEN 100.0 END",
            "total": "CASE WHEN state IN ('succeeded', 'running') THEN 100.0 END",
            "unit": "CASE WHEN state IN ('succeeded', 'running') THEN 'rows' ELSE '' END",
        }
        columns = self.sql("SELECT column_name, is_nullable, column_default IS NOT NULL, "
                           "data_type FROM information_schema.columns WHERE table_name = "
                           "'jobs_job' ORDER BY ordinal_position")
        names, exprs = [], []
        by_type = {"boolean": "false", "jsonb": "'{}'::jsonb", "text": "''",
                   "character varying": "''", "timestamp with time zone": "now()"}
        for name, nullable, has_default, data_type in columns:
            if name in values:
                names.append(name)
                exprs.append(values[name])
            elif nullable == "NO" and not has_default:
                names.append(name)
                exprs.append(by_type.get(data_type, "0"))
        unknown = set(values) - {c[0] for c in columns}
        if {"owner_id", "team_id"} & unknown:
            raise RuntimeError(f"jobs_job has no {sorted(unknown)}: the bench needs updating")
        # Innermost: the job's number i, whether it is a fan-out's partition, and g: the job
        # its team, owner and project come from (a partition's parent). Then the draws, then
        # kind and state, then the row.
        return f"""
INSERT INTO jobs_job ({", ".join(names)})
SELECT {", ".join(exprs)} FROM (
  SELECT *, CASE WHEN i > {n - ACTIVE} THEN
              CASE WHEN r_state < 0.35 THEN 'running' WHEN r_state < 0.55 THEN 'queued'
                   ELSE 'pending' END
            WHEN r_state < 0.06 THEN 'failed' WHEN r_state < 0.09 THEN 'cancelled'
            ELSE 'succeeded' END AS state,
         CASE WHEN part THEN 'diag.part' WHEN i % {FANOUT_EVERY} = 0 THEN 'diag.fanout'
              {" ".join(kinds)} ELSE 'diag.noop' END AS kind
  FROM (
    SELECT i, part, least({teams - 1}, floor({teams} * power({u(1)}, 1.6)))::int AS team_ix,
           least({per_team - 1}, floor({per_team} * {u(2)}))::int AS owner_k,
           least({len(PROJECTS) - 1}, floor({len(PROJECTS)} * {u(3)}))::int AS proj_ix,
           (hashint8extended(i, 4) & 9007199254740991)::float8 / 9007199254740992 AS r_kind,
           (hashint8extended(i, 5) & 9007199254740991)::float8 / 9007199254740992 AS r_state,
           now() - ({n} - i) * interval '1 second' * (15552000.0 / {max(n, 1)}) AS created
    FROM (
      SELECT i, part, CASE WHEN part THEN i - i % {FANOUT_EVERY} ELSE i END AS g
      FROM (SELECT i, (i > {FANOUT_EVERY} AND i % {FANOUT_EVERY} BETWEEN 1 AND {FANOUT_PARTS})
                      AS part
            FROM generate_series(1, {n}) AS i) a
    ) b
  ) c
) d"""

    def visible(self) -> dict[str, int]:
        """Jobs each user's list holds (a fan-out's partitions are not listed)."""
        staff = self.sql("SELECT count(*) FROM jobs_job WHERE parent_id IS NULL")[0][0]
        member = self.sql("SELECT count(*) FROM jobs_job WHERE parent_id IS NULL AND "
                          "team_id = ANY(%s)", self.people["member_team_ids"])[0][0]
        return {"staff": staff, "member": member}

    # Measurements.

    def url(self, case: Case, **extra) -> str:
        query = urlencode({**dict(case.params), **extra})
        return f"{self.base_url}/api/v1/jobs/" + (f"?{query}" if query else "")

    def get(self, who: str, url: str):
        resp = self.session(who).get(url, timeout=120)
        if resp.status_code != 200:
            raise RuntimeError(f"GET {url} as {who} answered {resp.status_code}: "
                               f"{resp.text[:300]}")
        return resp

    def walk(self, case: Case, depth: int) -> tuple[str, int]:
        """Follow `next` links down to page `depth` (of 50), 500 jobs a step (50 near the
        end); returns the deep page's URL (its cursor alone: 50 a page again) and its number."""
        skipped, url, target = 0, self.url(case), (depth - 1) * PAGE
        step = WALK_PAGE
        while skipped < target:
            step = min(step, target - skipped)
            body = self.get(case.who, with_param(url, "limit", step)).json()
            if not body.get("next"):
                if step > PAGE:
                    step = PAGE
                    continue
                break
            skipped += step
            url = with_param(body["next"], "limit", None)
        return url, skipped // PAGE + 1

    def measure(self, jobs: int) -> Size:
        """Every case's URL (walking down to the deep pages first), a warm-up, then rounds
        of one request per case, so that what else the machine does meanwhile falls on every
        case alike."""
        args = self.args
        size = Size(jobs, visible=self.visible())
        targets: list[tuple] = [(None, "staff", f"{self.base_url}/api/v1/kinds/", 1)]
        for case in CASES:
            page, url = 1, self.url(case)
            if case.deep:
                url, page = self.walk(case, args.depth)
                if page == 1:  # fewer than two pages: no deep page to time
                    continue
            targets.append((case, case.who, url, page))
        timings = {case: Timing(url=url, page=page) for case, _, url, page in targets}
        for _ in range(args.warm):
            for _, who, url, _ in targets:
                self.get(who, url)
        before = self.cpu_snapshot()
        for i in range(args.samples):
            for case, who, url, _ in targets:
                t0 = time.perf_counter()
                resp = self.get(who, url)
                timings[case].samples.append(time.perf_counter() - t0)
                if i == 0:
                    body = resp.json()
                    timings[case].rows = len(body["results"]) if "results" in body \
                        else len(body)
                    timings[case].nbytes = len(resp.content)
        after = self.cpu_snapshot()
        size.cpu = {name: after[name] - before[name] for name in after}
        size.requests = args.samples * len(targets)
        size.floor = timings.pop(None)
        size.timings = timings
        for case, timing in timings.items():
            log(f"  {case.name:<32} page {timing.page:>3}: p50 {timing.p(50):6.1f} ms, p99 "
                f"{timing.p(99):6.1f} ms ({timing.rows} jobs)")
        return size

    def cpu_snapshot(self) -> dict[str, float]:
        postgres = int((self.pg.data / "postmaster.pid").read_text().split()[0])
        return {"web": cpu_seconds(self.cluster.procs["web"].pid),
                "postgres": cpu_seconds(postgres),
                "bench client": cpu_seconds(os.getpid(), children=False),
                "machine": machine_cpu()["busy"], "wall": time.perf_counter()}

    # Plans: each case once in this process through the portal's own view, with its queries
    # captured; the list query explained.

    def django(self):
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
        import django

        django.setup()

    def plans(self, size: Size) -> None:
        self.django()
        from django.db import connection
        from django.test import RequestFactory
        from django.test.utils import CaptureQueriesContext
        from django.urls import resolve

        factory = RequestFactory()
        for case, timing in size.timings.items():
            parts = urlsplit(timing.url)
            request = factory.get(parts.path, data={k: v[0] for k, v in
                                                    parse_qs(parts.query).items()},
                                  HTTP_AUTHORIZATION=f"Token {self.tokens[case.who]}",
                                  HTTP_HOST="127.0.0.1")
            match = resolve(parts.path)
            with CaptureQueriesContext(connection) as captured:
                response = match.func(request, *match.args, **match.kwargs)
                response.render()
            if response.status_code != 200:
                raise RuntimeError(f"{case.name}: the view answered {response.status_code} "
                                   "in this process")
            plan = Plan(queries=len(captured.captured_queries))
            plan.sql = next((q["sql"] for q in captured.captured_queries
                             if 'FROM "jobs_job"' in q["sql"] and "LIMIT" in q["sql"]
                             and "_prefetch_related_val" not in q["sql"]), "")
            if plan.sql:
                self.sql(f"EXPLAIN (ANALYZE, BUFFERS) {plan.sql}")  # once to warm
                tree = self.sql(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {plan.sql}")[0][0][0]
                plan.pg_ms = tree["Execution Time"]
                plan.summary = summarize(tree["Plan"])
            size.plans[case] = plan
        connection.close()

    def explain_text(self, plan: Plan) -> str:
        rows = self.sql(f"EXPLAIN (ANALYZE, BUFFERS) {plan.sql}")
        return "\n".join(r[0] for r in rows)


def with_param(url: str, name: str, value) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    if value is None:
        query.pop(name, None)
    else:
        query[name] = str(value)
    return urlunsplit(parts._replace(query=urlencode(query)))


def summarize(node: dict) -> str:
    """One line for a plan: how it reads jobs_job (which index, rows read for rows kept), and
    whether it sorts."""
    scans, sort = [], ""

    def visit(n: dict) -> None:
        nonlocal sort
        kind = n["Node Type"]
        loops = n.get("Actual Loops", 1)
        if kind in ("Sort", "Incremental Sort"):
            sort = "sort" if "top-N" not in n.get("Sort Method", "") else "top-N sort"
        if n.get("Relation Name") == "jobs_job" or kind == "Bitmap Index Scan":
            kept = n.get("Actual Rows", 0) * loops
            read = kept + n.get("Rows Removed by Filter", 0) * loops \
                + n.get("Rows Removed by Index Recheck", 0) * loops
            how = {"Index Scan": "idx", "Index Only Scan": "idx-only",
                   "Bitmap Heap Scan": "bitmap heap", "Bitmap Index Scan": "bitmap",
                   "Seq Scan": "seq scan"}.get(kind, kind)
            name = n.get("Index Name", "")
            backward = " back" if n.get("Scan Direction") == "Backward" else ""
            if kind == "Bitmap Heap Scan":
                scans.append(f"{how} {read:,}→{kept:,}")
            elif kind == "Bitmap Index Scan":
                scans.append(f"{how} {name} {kept:,}")
            else:
                scans.append(f"{how}{backward} {name} {read:,}→{kept:,}".replace("  ", " "))
        for child in n.get("Plans", []):
            visit(child)

    visit(node)
    return "; ".join(scans + ([sort] if sort else []))


# --- output ----------------------------------------------------------------------------------


def report(args, bench: JobListBench, small: Size, big: Size, slowest: Case | None,
           slowest_plan: str) -> bool:
    width = 118
    print()
    print("=" * width)
    print(f"job-list benchmark: GET /api/v1/jobs/, {PAGE} a page  ({platform.node()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, PostgreSQL "
          f"{bench.pg_version}; {args.samples} samples a case, one request at a time)")
    print("=" * width)
    for size in (small, big):
        print(f"table of {size.jobs:,} jobs: {size.fill_notes}; listed: staff "
              f"{size.visible['staff']:,}, member {size.visible['member']:,} "
              f"({bench.people['member']} in {', '.join(bench.people['member_teams'])})")
    print(f"filters: kind={KIND_X} ≈ 3 % of the jobs, state=failed ≈ 6 %, both ≈ 0.2 %; "
          f"q={Q_COMMON} ≈ 2.5 %, q={Q_RARE} ≈ 0.01 % of the names")
    print("-" * width)
    sj, bj = format(small.jobs, ","), format(big.jobs, ",")
    print(f"{'':<33} {'- ' + sj + ' jobs -':^21}  {'- ' + bj + ' jobs -':^28}  "
          f"{'p50 ratio':^13} {'SQL':>4} {'in PG':>6}  plan of the list query at {bj}")
    print(f"{'case':<33} {'p50':>6} {'p99':>7} {'jobs':>5}  {'page':>4} {'p50':>6} {'p99':>7} "
          f"{'jobs':>5}  {'same':>6} {'plain':>6} {'qs':>4} {'ms':>6}  (indexes; rows read→kept)")
    print(f"{'GET /api/v1/kinds/ (reads no job)':<33} {small.floor.p(50):6.1f} "
          f"{small.floor.p(99):7.1f} {'':>5}  {'':>4} {big.floor.p(50):6.1f} "
          f"{big.floor.p(99):7.1f} {'':>5}  {big.floor.p(50) / small.floor.p(50):5.2f}x")
    worst_p50 = 0.0
    for case in CASES:
        b = big.timings.get(case)
        s = small.timings.get(case)
        plain = small.timings.get(Case(case.who, False, "-", ()))
        if b is None:
            print(f"{case.name:<33} (no second page at {bj} jobs)")
            continue
        worst_p50 = max(worst_p50, b.p(50))
        plan = big.plans.get(case, Plan())
        left = f"{s.p(50):6.1f} {s.p(99):7.1f} {s.rows:>5}" if s else f"{'-':>6} {'-':>7} {'':>5}"
        same = f"{b.p(50) / s.p(50):5.2f}x" if s else f"{'':>6}"
        print(f"{case.name:<33} {left}  {b.page:>4} {b.p(50):6.1f} {b.p(99):7.1f} {b.rows:>5}  "
              f"{same} {b.p(50) / plain.p(50):5.2f}x {plan.queries:>4} {plan.pg_ms:6.2f}  "
              f"{plan.summary}")
    print(f"(ms; jobs: on the page timed; page: its number (deep: page {args.depth}, or the "
          "last there is); p50 ratio to the small table's same case, and to its plain page "
          "(the same user's first page, no filter: serving 50 jobs found at once); qs: SQL "
          "queries a request makes; in PG: the list query's time in EXPLAIN ANALYZE)")
    for size in (small, big):
        per = 1000 / max(1, size.requests)
        cpu = size.cpu
        mine = cpu["web"] + cpu["postgres"] + cpu["bench client"]
        print(f"CPU per request at {size.jobs:,} jobs: web {cpu['web'] * per:.1f} ms, "
              f"PostgreSQL {cpu['postgres'] * per:.1f} ms, this client "
              f"{cpu['bench client'] * per:.1f} ms; other processes on the machine "
              f"{100 * max(0.0, cpu['machine'] - mine) / cpu['wall']:.0f} % of a core meanwhile "
              f"({size.requests:,} requests timed)")
    if slowest is not None:
        print("-" * width)
        print(f"slowest at {big.jobs:,} jobs: {' '.join(slowest.name.split())}; the list query "
              "and its EXPLAIN (ANALYZE, BUFFERS):")
        sql = big.plans[slowest].sql
        if sql.startswith("SELECT ") and " FROM " in sql:
            sql = "SELECT … FROM " + sql.split(" FROM ", 1)[1]
        print(sql)
        print(slowest_plan)
    print("=" * width)
    ok = True
    for case in CASES:
        b = big.timings.get(case)
        if b is None:
            continue
        s = small.timings.get(case)
        passed = b.p(50) < P50_TARGET_MS
        ok = ok and passed
        versus = f"; {b.p(50) / s.p(50):.2f}x the {small.jobs:,}-job table" if s else ""
        print(f"RESULT job list {case.who} {'page ' + str(b.page) if case.deep else 'first page'}"
              f" {case.label}: p50 {b.p(50):.1f} ms, p99 {b.p(99):.1f} ms at {big.jobs:,} jobs"
              f"{versus} (target p50 < {P50_TARGET_MS:.0f} ms) {verdict(passed)}")
    print(f"RESULT job list verdict at {big.jobs:,} jobs: worst p50 {worst_p50:.1f} ms "
          f"(GET /api/v1/kinds/ p50 {big.floor.p(50):.1f} ms) {verdict(ok)}", flush=True)
    return ok


# --- entry point -----------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.joblist", description=__doc__.split(
        "\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--jobs", type=int, default=None,
                        help="jobs in the big table (default 1,000,000; 100,000 with --quick)")
    parser.add_argument("--baseline-jobs", type=int, default=1000,
                        help="jobs in the small table measured first")
    parser.add_argument("--samples", type=int, default=None,
                        help="timed rounds of one request per case (default 200; 30 with "
                             "--quick)")
    parser.add_argument("--warm", type=int, default=5, help="untimed rounds first")
    parser.add_argument("--depth", type=int, default=200, help="the deep page's number")
    parser.add_argument("--without-index", metavar="NAME", action="append", default=[],
                        help="measure without this index of jobs_job (the migrations make it; "
                             "the fill leaves it out); repeatable, e.g. job_list_kind_state, "
                             "job_list_name_trgm: the figures before those indexes")
    parser.add_argument("--teams", type=int, default=20, help="teams")
    parser.add_argument("--users", type=int, default=100, help="users (a multiple of --teams)")
    parser.add_argument("--quick", action="store_true", help="100,000 jobs, fewer samples")
    parser.add_argument("--strict", action="store_true", help="exit 1 if the target is missed")
    parser.add_argument("--verbose", action="store_true",
                        help="show the cluster processes' output")
    args = parser.parse_args(argv)
    if args.jobs is None:
        args.jobs = 100_000 if args.quick else 1_000_000
    if args.samples is None:
        args.samples = 30 if args.quick else 200
    if (args.jobs < 1 or args.baseline_jobs < 1 or args.samples < 2 or args.warm < 0
            or args.depth < 2 or args.teams < 7 or args.users % args.teams
            or args.users <= MEMBER):
        parser.error("--jobs, --baseline-jobs >= 1, --samples >= 2, --depth >= 2, --teams >= 7 "
                     "and --users a multiple of --teams, please")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = begin(f"job-list benchmark: {args.jobs:,} jobs (and {args.baseline_jobs:,} "
                    f"first), {args.samples} samples a case, deep = page {args.depth}"
                    + (f"; without {', '.join(args.without_index)}" if args.without_index
                       else ""))
    bench = JobListBench(args)

    def measure() -> bool:
        bench.setup()
        sizes = []
        for jobs in (args.baseline_jobs, args.jobs):
            log(f"filling the jobs table: {jobs:,} jobs")
            notes = bench.fill(jobs)
            log(f"  {notes}")
            log(f"measuring {len(CASES)} cases at {jobs:,} jobs")
            size = bench.measure(jobs)
            size.fill_notes = notes.split(" in ", 1)[1]
            sizes.append(size)
        small, big = sizes
        log("plans: each case once through the view in this process, its list query explained")
        bench.plans(big)
        slowest = max(big.timings, key=lambda c: big.timings[c].p(50), default=None)
        text = bench.explain_text(big.plans[slowest]) if slowest and big.plans[slowest].sql \
            else ""
        return report(args, bench, small, big, slowest, text)

    return guarded(bench, started, measure, strict=args.strict,
                   said=(RuntimeError, TimeoutError))


if __name__ == "__main__":
    sys.exit(main())
