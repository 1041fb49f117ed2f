"""Team data spaces on real files and the test warehouse PostgreSQL: team A (ml, alice's) can
neither read, list, overwrite nor delete what team B (etl, bob's) owns through any kind, and is
told only that the path or table does not exist; the shared area is read-only; grants open a
prefix or a table to one other team, audited; PostgreSQL itself refuses the rest; superseded
attempts' writes never land."""

from __future__ import annotations

import io
import json
import os

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.management import call_command
from psycopg import sql

from audit.models import AuditEntry
from tests.test_etl import InlineContext
from workers import data, protocol, runner
from workers.etl import output
from workers.events import EventSink
from workers.kinds import etl, get_kind

SECRET = "TEAM-B-SECRET-9E"
ML, ETL = data.Space("ml"), data.Space("etl")


def put(team: str, relative: str, text: str):
    path = data.team_root(team) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def bobs_files():
    """Team etl's private file and folder, and one it may grant."""
    secret = put("etl", "private/secret.csv", f"id,code\n1,{SECRET}\n")
    put("etl", "sales/a.csv", "id,amount\n1,10\n2,20\n")
    return secret


def submit(api, kind, params):
    return api.post("/api/v1/jobs/", {"kind": kind, "params": params}, format="json")


def refused(response, field):
    assert response.status_code == 400, response.content
    body = json.dumps(response.json())
    assert SECRET not in body
    return " ".join(response.json()["params"].get(field) or pytest.fail(str(response.json())))


# --- paths, resolved in the team's space -----------------------------------------------------


def test_a_path_resolves_in_the_teams_own_folder_and_the_shared_area_reads_only():
    with data.team_space(ML):
        assert data.resolve("sales/a.csv") == data.team_root("ml") / "sales/a.csv"
        assert data.resolve("@shared/nycflights13/flights.csv") == (
            data.shared_root() / "nycflights13/flights.csv")
        with pytest.raises(ValueError, match="read-only"):
            data.resolve("@shared/nycflights13/flights.csv", write=True)
        with pytest.raises(data.NotFound, match="no such file or folder"):
            data.resolve("@etl/private/secret.csv")
        with pytest.raises(data.NotFound, match="no such file or folder"):
            data.resolve("@nobody/x.csv")  # the same words for a team that does not exist


def test_another_teams_files_are_not_listed_and_a_symlink_to_them_leads_nowhere(bobs_files):
    put("ml", "mine/a.csv", "id\n1\n")
    link = data.team_root("ml") / "theirs"
    link.unlink(missing_ok=True)
    link.symlink_to(data.team_root("etl"))
    with data.team_space(ML):
        listed = data.expand("**/*.csv")
        assert "mine/a.csv" in [data.relative(p) for p in listed]
        assert all(data.team_root("ml") in p.parents for p in listed)
        with pytest.raises(data.NotFound):
            data.expand("@etl/**/*.csv")
        with pytest.raises(data.NotFound):
            data.resolve("theirs/private/secret.csv")
        with pytest.raises(data.NotFound):
            data.resolve("theirs/private/new.parquet", write=True)


def test_a_granted_prefix_is_readable_and_nothing_beside_it(bobs_files):
    space = data.Space("ml", paths=("@etl/sales",))
    with data.team_space(space):
        assert data.resolve("@etl/sales/a.csv") == data.team_root("etl") / "sales/a.csv"
        assert [data.relative(p) for p in data.expand("@etl/sales/*.csv")] == [
            "@etl/sales/a.csv"]
        with pytest.raises(data.NotFound):
            data.resolve("@etl/private/secret.csv")
        with pytest.raises(ValueError, match="read-only"):
            data.resolve("@etl/sales/b.csv", write=True)


# --- through every kind, at submission ------------------------------------------------------


@pytest.mark.parametrize("kind, params, field", [
    ("etl.ingest", {"input": "@etl/private/secret.csv", "output": "out"}, "input"),
    ("etl.ingest", {"input": "@etl/**/*.csv", "output": "out"}, "input"),
    ("etl.sql", {"inputs": {"b": "@etl/private/secret.csv"}, "sql": "SELECT * FROM b",
                 "output": "out.parquet"}, "inputs.b"),
    ("etl.clickstream", {"input": "@etl/private/*.csv", "target": "parquet"}, "input"),
    ("train.tabular", {"input": "@etl/private/secret.csv", "target": "code"}, "input"),
])
def test_a_job_cannot_read_or_list_another_teams_files(api, bobs_files, kind, params, field):
    message = refused(submit(api, kind, params), field)
    assert "no such file" in message or "matches no file" in message


@pytest.mark.parametrize("kind, params, field", [
    ("etl.ingest", {"input": "@shared/x.csv", "output": "@etl/private"}, "output"),
    ("etl.sql", {"inputs": {"a": "mine/*.csv"}, "sql": "SELECT 1 AS x",
                 "output": "@etl/private/secret.parquet"}, "output"),
    ("etl.clickstream", {"target": "parquet", "output": "@etl/private"}, "output"),
    ("shell", {"argv": ["/usr/bin/printf", "x"], "cwd": "@etl/private"}, "cwd"),
])
def test_a_job_cannot_write_into_another_teams_space(api, cast, bobs_files, kind, params,
                                                      field):
    from django.contrib.auth.models import Permission

    put("ml", "mine/a.csv", "a\n1\n")
    cast.alice.user_permissions.add(Permission.objects.get(codename="run_shell"))
    message = refused(submit(api, kind, params), field)
    assert "read-only" in message


def test_a_list_for_two_teams_checks_each_item_in_its_own_teams_space(cast, bobs_files):
    from accounts.models import Team
    from jobs.models import Job
    from tests.test_teams import client_for, join, post_json

    join(cast.alice, cast.etl)  # alice submits for ml and etl, not for ops
    Team.objects.create(name="ops")
    put("ml", "mine/a.csv", "a\n1\n")

    def ingest(team, path):
        return {"kind": "etl.ingest", "team": team, "params": {"input": path, "output": "out"}}

    response = post_json(client_for(cast.alice), [
        ingest("ml", "mine/a.csv"), ingest("etl", "mine/a.csv"), ingest("ops", "mine/a.csv"),
        ingest("etl", "sales/a.csv"), ingest("ml", "sales/a.csv"), ingest("ml", "mine/a.csv")])
    assert response.status_code == 400, response.content
    errors = response.json()
    assert errors[0] == errors[3] == errors[5] == {}
    assert "matches no file" in " ".join(errors[1]["params"]["input"])  # ml's, not etl's
    assert errors[2] == {"team": ["you may not submit jobs to team 'ops'"]}
    assert "matches no file" in " ".join(errors[4]["params"]["input"])  # etl's, not ml's
    assert not Job.objects.exists()


def test_the_demo_examples_read_the_shared_area(api):
    call_command("demo_data", stdout=io.StringIO())
    for example in etl.EXAMPLES:
        response = submit(api, example["kind"], example["params"])
        assert response.status_code == 201, response.content


# --- on the worker ----------------------------------------------------------------------------


def test_duckdb_may_not_open_another_teams_file_by_its_absolute_path(bobs_files):
    put("ml", "mine/a.csv", "a\n1\n")
    query = f"SELECT * FROM read_csv('{bobs_files}') WHERE CAST(code AS INT) > 0"
    with data.team_space(ML):
        p = etl.SqlParams.model_validate({"inputs": {"a": "mine/a.csv"}, "sql": query,
                                          "output": "out/x.parquet"})
        with pytest.raises(RuntimeError) as caught:
            etl.run_sql(InlineContext(), p)
    assert "Permission Error" in str(caught.value) and SECRET not in str(caught.value)


def test_the_runner_works_in_the_attempts_team_space(redis_client):
    put("ml", "mine/a.csv", "a\n1\n2\n")
    spec = protocol.AttemptSpec(job=9101, attempt=1, token="t", kind="etl.sql", team="ml",
                                params={"inputs": {"a": "mine/a.csv"},
                                        "sql": "SELECT a * 2 AS b FROM a",
                                        "output": "out/doubled.parquet"})
    assert runner.run(spec, node="t", worker="t", sink=EventSink(redis_client),
                      client=redis_client) == "succeeded"
    table = pq.read_table(data.team_root("ml") / "out/doubled.parquet")
    assert table.column("b").to_pylist() == [2, 4]
    # A message that names no team gets no space at all.
    orphan = protocol.AttemptSpec(job=9102, attempt=1, token="t", kind="etl.sql",
                                  params=spec.params)
    assert runner.run(orphan, node="t", worker="t", sink=EventSink(redis_client),
                      client=redis_client) == "failed"


def as_login():
    return psycopg.connect(data.warehouse_url(), autocommit=True)


def ingest_into(space, table, csv_path, *, job):
    with data.team_space(space):
        p = etl.IngestParams.model_validate({"input": csv_path, "target": "warehouse",
                                             "table": table}, strict=True)
        return etl.run_ingest(InlineContext(job_id=job), p)


def test_tables_live_in_the_teams_schema_and_a_replace_touches_only_its_own(bobs_files):
    put("ml", "mine/t.csv", "id,name\n1,alice\n")
    ingest_into(ETL, "accounts", "private/secret.csv", job=31)
    ingest_into(ML, "accounts", "mine/t.csv", job=32)
    with as_login() as conn:
        assert conn.execute("SELECT code FROM team_etl.accounts").fetchall() == [(SECRET,)]
        assert conn.execute("SELECT name FROM team_ml.accounts").fetchall() == [("alice",)]
        assert conn.execute("SELECT to_regclass('public.accounts')").fetchone()[0] is None
    # ml's "replace" drops its own table of that name, never etl's.
    with data.team_space(ML):
        p = etl.SqlParams.model_validate({"inputs": {"t": "mine/t.csv"},
                                          "sql": "SELECT id FROM t", "target": "warehouse",
                                          "table": "accounts", "mode": "replace"})
        etl.run_sql(InlineContext(job_id=33), p)
        with pytest.raises(ValueError, match="table name like 'flights'"):
            data.check_table("team_etl.accounts")
    with as_login() as conn:
        assert conn.execute("SELECT code FROM team_etl.accounts").fetchall() == [(SECRET,)]
        assert conn.execute("SELECT count(*) FROM team_ml.accounts").fetchone() == (1,)
    # So does etl.ingest's replace (it deletes the rows of earlier loads of its own table).
    with data.team_space(ML):
        p = etl.IngestParams.model_validate({"input": "mine/t.csv", "target": "warehouse",
                                             "table": "ledger_copy", "replace": True})
        etl.run_ingest(InlineContext(job_id=34), p)
    ingest_into(ETL, "ledger_copy", "private/secret.csv", job=35)
    with data.team_space(ML):
        etl.run_ingest(InlineContext(job_id=36), p)
    with as_login() as conn:
        assert conn.execute("SELECT code FROM team_etl.ledger_copy").fetchall() == [(SECRET,)]
        assert conn.execute("SELECT _job FROM team_ml.ledger_copy").fetchall() == [(36,)]


def test_postgresql_itself_refuses_another_teams_schema_until_a_grant(bobs_files):
    ingest_into(ETL, "ledger", "private/secret.csv", job=41)
    with data.team_space(ML), data.connect_warehouse() as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("portal_team_ml",)
        for statement in ("SELECT * FROM team_etl.ledger", "DROP TABLE team_etl.ledger",
                          "DELETE FROM team_etl.ledger",
                          "CREATE TABLE team_etl.planted (x int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()
    granted = data.Space("ml", tables=("etl.ledger",))
    with data.team_space(granted), data.connect_warehouse() as conn:
        assert conn.execute("SELECT code FROM team_etl.ledger").fetchall() == [(SECRET,)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM team_etl.ledger")
    with data.team_space(ML), data.connect_warehouse() as conn:  # taken back: refused again
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM team_etl.ledger")


# --- grants: the API, the audit trail, what reaches the worker ------------------------------


@pytest.fixture
def bob_admin(cast):
    from rest_framework.test import APIClient

    from accounts.models import Membership

    Membership.objects.filter(team=cast.etl, user=cast.bob).update(role="admin")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {cast.bob_key}")
    return client


def test_a_team_admin_grants_a_prefix_and_the_grantees_jobs_read_it(api, cast, bob_admin,
                                                                    bobs_files):
    from jobs.dispatch import attempt_spec
    from jobs.models import Job

    assert refused(submit(api, "etl.ingest", {"input": "@etl/sales/a.csv", "output": "o"}),
                   "input")
    response = bob_admin.post("/api/v1/teams/etl/grants/", {"grantee": "ml", "kind": "path",
                                                            "target": "sales"}, format="json")
    assert response.status_code == 201, response.content
    grant = response.json()
    assert grant["team"] == "etl" and grant["target"] == "sales"
    entry = AuditEntry.objects.get(action="data_grant.give")
    assert entry.actor == cast.bob and entry.detail["grantee"] == "ml"
    ok = submit(api, "etl.ingest", {"input": "@etl/sales/a.csv", "output": "o"})
    assert ok.status_code == 201, ok.content
    assert attempt_spec(Job.objects.get(pk=ok.json()["id"])).grants == {
        "paths": ["@etl/sales"], "tables": []}
    assert "no such file" in refused(
        submit(api, "etl.ingest", {"input": "@etl/private/secret.csv", "output": "o"}), "input")
    # Alice sees the grant her team holds; she may not give etl's data, nor see other teams'.
    assert [g["target"] for g in api.get("/api/v1/teams/ml/grants/").json()] == ["sales"]
    assert api.post("/api/v1/teams/ml/grants/", {"grantee": "etl", "kind": "path",
                                                 "target": "x"}, format="json"
                    ).status_code == 403
    assert api.get("/api/v1/teams/etl/grants/").status_code == 404
    gone = bob_admin.delete(f"/api/v1/teams/etl/grants/{grant['id']}/")
    assert gone.status_code == 204
    assert AuditEntry.objects.filter(action="data_grant.take_back").count() == 1
    # The next attempt sent carries it no more (the dispatch cache forgets it at once).
    assert attempt_spec(Job.objects.get(pk=ok.json()["id"])).grants == {"paths": [],
                                                                        "tables": []}
    assert refused(submit(api, "etl.ingest", {"input": "@etl/sales/a.csv", "output": "o"}),
                   "input")


@pytest.mark.parametrize("body, field", [
    ({"grantee": "nobody", "kind": "path", "target": "sales"}, "grantee"),
    ({"grantee": "etl", "kind": "path", "target": "sales"}, "grantee"),
    ({"grantee": "ml", "kind": "folder", "target": "sales"}, "kind"),
    ({"grantee": "ml", "kind": "path", "target": "../ml"}, "target"),
    ({"grantee": "ml", "kind": "path", "target": "@shared"}, "target"),
    ({"grantee": "ml", "kind": "table", "target": "team_ml.x"}, "target"),
    ({"grantee": "ml", "kind": "table"}, "target"),
])
def test_a_bad_grant_is_a_400_naming_the_field(bob_admin, body, field):
    response = bob_admin.post("/api/v1/teams/etl/grants/", body, format="json")
    assert response.status_code == 400 and field in response.json(), response.content


def test_grants_in_the_admin_are_audited(cast):
    from django.test import Client

    client = Client()
    client.force_login(cast.admin)
    response = client.post("/admin/spaces/datagrant/add/", {
        "team": cast.etl.pk, "grantee": cast.ml.pk, "kind": "table", "target": "ledger"})
    assert response.status_code == 302, response.content.decode()[-1500:]
    assert AuditEntry.objects.filter(action="datagrant.change").count() == 1
    bad = client.post("/admin/spaces/datagrant/add/", {
        "team": cast.etl.pk, "grantee": cast.ml.pk, "kind": "path", "target": "../x"})
    assert bad.status_code == 200 and "no &#x27;..&#x27;" in bad.content.decode()


# --- fencing: a superseded attempt's output never lands -------------------------------------


def test_a_lower_attempts_warehouse_write_is_refused_and_rolled_back():
    rows = pa.table({"x": pa.array([1, 2], pa.int64())})
    with data.team_space(ML):
        with data.connect_warehouse() as conn:
            output.ensure_table(conn, "fenced", [("x", "bigint")])
        with output.warehouse_part("fenced", ["x"], 51, 0, attempt=2) as write:
            write(rows)
        with pytest.raises(data.Superseded):
            with output.warehouse_part("fenced", ["x"], 51, 0, attempt=1) as write:
                write(pa.table({"x": pa.array([99], pa.int64())}))
        with data.connect_warehouse() as conn:
            assert conn.execute("SELECT x FROM fenced ORDER BY x").fetchall() == [(1,), (2,)]
            assert conn.execute("SELECT attempt FROM _portal_fence WHERE job = 51"
                                ).fetchone() == (2,)
        # The same attempt again (a retried write) and a later one still land.
        with output.warehouse_part("fenced", ["x"], 51, 0, attempt=3) as write:
            write(pa.table({"x": pa.array([7], pa.int64())}))
        with data.connect_warehouse() as conn:
            assert conn.execute("SELECT x FROM fenced").fetchall() == [(7,)]


def test_a_lower_attempts_file_is_never_renamed_into_place(tmp_path):
    schema = pa.schema([("x", pa.int64())])
    with output.parquet_part(tmp_path, "part-00000.parquet", schema, fence=(61, 2)) as write:
        write(pa.table({"x": [2]}, schema=schema))
    with pytest.raises(data.Superseded):
        with output.parquet_part(tmp_path, "part-00000.parquet", schema,
                                 fence=(61, 1)) as write:
            write(pa.table({"x": [1]}, schema=schema))
    assert pq.read_table(tmp_path / "part-00000.parquet").column("x").to_pylist() == [2]
    assert sorted(os.listdir(tmp_path)) == [".part-00000.parquet.fence", "part-00000.parquet"]
    # Another job may replace the file (a new load into the same folder).
    with output.parquet_part(tmp_path, "part-00000.parquet", schema, fence=(62, 1)) as write:
        write(pa.table({"x": [3]}, schema=schema))
    assert pq.read_table(tmp_path / "part-00000.parquet").column("x").to_pylist() == [3]


def test_an_ingest_partition_of_a_superseded_attempt_fails_and_leaves_the_rows_alone():
    put("ml", "fence/a.csv", "x\n1\n2\n")
    with data.team_space(ML):
        _, result = None, ingest_into(ML, "fenced_load", "fence/a.csv", job=71)
        assert result["rows"] == 2
        part = etl.plan(etl.IngestParams.model_validate(
            {"input": "fence/a.csv", "target": "warehouse", "table": "fenced_load"}), 71)[1][0]
        kind = get_kind("etl.ingest.part")
        later = InlineContext(job_id=7100, attempt=3)
        kind.run(later, kind.params.model_validate(part))
        with pytest.raises(data.Superseded):
            kind.run(InlineContext(job_id=7100, attempt=2), kind.params.model_validate(part))
        with data.connect_warehouse() as conn:
            assert conn.execute("SELECT count(*) FROM fenced_load").fetchone() == (2,)


# --- moving a single-space install ------------------------------------------------------------


def test_the_migration_moves_files_and_tables_into_a_team(cast):
    root = data.data_root()
    (root / "legacy").mkdir(exist_ok=True)
    (root / "legacy" / "old.csv").write_text("a\n1\n")
    with as_login() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.legacy_sales (a int)")
        conn.execute("INSERT INTO public.legacy_sales VALUES (5)")
    out = io.StringIO()
    call_command("data_spaces", "--into", "etl", "--dry-run", stdout=out)
    assert "legacy -> teams/etl/legacy" in out.getvalue() and (root / "legacy").exists()
    out = io.StringIO()
    call_command("data_spaces", "--into", "etl", stdout=out)
    assert (data.team_root("etl") / "legacy" / "old.csv").read_text() == "a\n1\n"
    assert not (root / "legacy").exists()
    with data.team_space(ETL), data.connect_warehouse() as conn:
        assert conn.execute("SELECT a FROM legacy_sales").fetchall() == [(5,)]
    with data.team_space(ML), data.connect_warehouse() as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("SELECT * FROM team_etl.legacy_sales"))


def test_clickstream_tables_land_in_the_teams_schema_and_a_stale_attempt_writes_nothing():
    from workers.kinds import clickstream

    params = {"events": 2000, "users": 50, "partitions": 2, "table": "clicks"}
    with data.team_space(ML):
        p = clickstream.ClickstreamParams.model_validate(params)
        result = clickstream.run(InlineContext(job_id=81), p)
        part = clickstream.PartParams.model_validate({**params, "partition": 0, "job": 81})
        clickstream.run_partition(InlineContext(job_id=8100, attempt=2), part)
        with pytest.raises(data.Superseded):
            clickstream.run_partition(InlineContext(job_id=8100, attempt=1), part)
    with as_login() as conn:
        assert conn.execute("SELECT count(*) FROM team_ml.clicks_events WHERE _job = 81"
                            ).fetchone() == (result["rows"],) == (2000,)
        assert conn.execute("SELECT to_regclass('public.clicks_events')").fetchone() == (None,)


def test_etl_sql_reads_its_own_tables_and_another_teams_only_once_granted(api, bobs_files):
    ingest_into(ETL, "payroll", "private/secret.csv", job=91)
    put("ml", "mine/t.csv", "id,name\n1,alice\n")
    ingest_into(ML, "people", "mine/t.csv", job=92)
    query = {"sql": "SELECT * FROM t", "output": "out/read.parquet"}
    with data.team_space(ML):
        own = etl.SqlParams.model_validate({"inputs": {"t": "table:people"}, **query})
        assert etl.run_sql(InlineContext(job_id=93), own)["rows"] == 1
        with pytest.raises(ValueError, match="no such table"):
            etl.SqlParams.model_validate({"inputs": {"t": "table:@etl.payroll"}, **query})
        with pytest.raises(data.NotFound, match="no such table"):
            etl.read_tables({"t": "nothing_here"})
    message = refused(submit(api, "etl.sql", {"inputs": {"t": "table:@etl.payroll"}, **query}),
                      "inputs.t")
    assert "no such table" in message
    with data.team_space(data.Space("ml", tables=("etl.payroll",))):
        granted = etl.SqlParams.model_validate({"inputs": {"t": "table:@etl.payroll"}, **query})
        assert etl.run_sql(InlineContext(job_id=94), granted)["rows"] == 1
    assert pq.read_table(data.team_root("ml") / "out/read.parquet").column(
        "code").to_pylist() == [SECRET]  # read because etl granted it
