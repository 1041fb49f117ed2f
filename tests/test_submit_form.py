"""The submit form as a first-time user meets it: every kind's defaults go through on the
embedded default (no warehouse), errors that belong to no field shown at the top, labels for
people, multi-line editors, and fields that apply to one target marked as such."""

import json
import os
import subprocess
import sys

import pytest

from jobs import forms
from jobs.models import Job
from workers.kinds import get_kind


@pytest.fixture
def no_warehouse(monkeypatch):
    """`make run`'s own settings: no WAREHOUSE_URL."""
    monkeypatch.delenv("WAREHOUSE_URL", raising=False)


def defaults_as_posted(kind: str) -> dict:
    """What the browser sends for a form left as it opened."""
    post = {"kind": kind, "priority": "0", "name": ""}
    for field in forms.fields_for(get_kind(kind).schema()):
        if field.type == "boolean":
            if field.value:
                post[f"param-{field.name}"] = "on"
        else:
            post[f"param-{field.name}"] = str(field.value)
    return post


@pytest.mark.parametrize("kind", ["etl.clickstream", "diag.sleep", "diag.fanout", "diag.noop"])
def test_a_form_left_as_it_opened_submits_without_a_warehouse(alice, no_warehouse, kind):
    response = alice.post("/jobs/new/", defaults_as_posted(kind))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Job.objects.get().kind == kind


def test_the_warehouse_is_the_default_only_where_one_is_configured(alice, monkeypatch):
    monkeypatch.delenv("WAREHOUSE_URL", raising=False)
    target = {f.name: f for f in forms.fields_for(get_kind("etl.clickstream").schema())}
    assert target["target"].value == "parquet"
    monkeypatch.setenv("WAREHOUSE_URL", "postgres://u@localhost/w")
    target = {f.name: f for f in forms.fields_for(get_kind("etl.clickstream").schema())}
    assert target["target"].value == "warehouse"


def test_an_error_of_the_whole_form_is_shown_at_its_top(alice, no_warehouse):
    post = defaults_as_posted("etl.clickstream") | {"param-target": "warehouse"}
    response = alice.post("/jobs/new/", post)
    html = response.content.decode()
    assert response.status_code == 400 and Job.objects.count() == 0
    summary = html[html.index('id="error-summary"'):html.index('name="kind" value=')]
    assert "target &#x27;warehouse&#x27; needs WAREHOUSE_URL" in summary
    assert "Value error" not in html


def test_field_errors_are_listed_at_the_top_and_link_to_their_field(alice):
    html = alice.post("/jobs/new/", {"kind": "diag.sleep", "param-seconds": "-1"}).content.decode()
    summary = html[html.index('id="error-summary"'):html.index('name="kind" value=')]
    assert 'href="#field-seconds"' in summary and "must be at least 0" in summary
    assert 'id="field-seconds"' in html


def test_labels_are_written_for_people():
    assert forms.label_for("timeout_s", "Timeout S") == "Timeout (s)"
    assert forms.label_for("memory_mb", "Memory Mb") == "Memory (MB)"
    assert forms.label_for("sql", "Sql") == "SQL"
    assert forms.label_for("gap_minutes", "Gap Minutes") == "Gap minutes"
    assert forms.label_for("seconds", "How long") == "How long"  # the kind's own title


def test_sql_and_json_fields_are_multi_line_and_target_fields_are_marked(alice):
    html = alice.get("/jobs/new/?kind=etl.sql").content.decode()
    assert '<textarea name="param-sql"' in html and '<textarea name="param-inputs"' in html
    assert 'id="field-table" data-for-target="warehouse"' in html
    assert 'id="field-output" data-for-target="parquet"' in html
    assert 'class="required"' in html  # sql and inputs are required
    clicks = alice.get("/jobs/new/?kind=etl.clickstream").content.decode()
    assert 'id="field-table" data-for-target="warehouse"' in clicks
    assert 'id="field-seed" data-for-target' not in clicks


# What the kinds' jobs run on, and what the web must not carry: ~190 MB and 1-2 s per process.
RUN_TIME_LIBRARIES = ("numpy", "pandas", "pyarrow", "duckdb", "sklearn", "scipy", "joblib",
                      "torch")
WEB_SIDE = """
import json, sys
from pydantic import ValidationError
from portal import web
from workers.kinds import all_kinds, examples, get_kind

def loaded():
    return sorted(name for name in json.loads(sys.argv[1]) if name in sys.modules)

web.preload()
seen = {"preloaded": loaded(), "kinds": len(all_kinds(internal=True))}
for kind in all_kinds(internal=True):
    kind.schema()
for name in ("etl.ingest", "train.tabular", "train.torch", "etl.clickstream"):
    for example in [e for e in examples() if e["kind"] == name] or [{"params": {}}]:
        try:
            get_kind(name).params.model_validate(example["params"])
        except ValidationError:
            pass  # a missing demo file: checked, refused, all the same
seen["checked"] = loaded()
try:
    get_kind("etl.sql").params.model_validate({"inputs": {"t": "none/*.csv"}, "sql": "select 1"})
except ValidationError:
    pass
seen["sql checked"] = loaded()
print(json.dumps(seen))
"""


def test_the_web_offers_and_checks_every_kind_without_the_libraries_that_run_them():
    done = subprocess.run([sys.executable, "-c", WEB_SIDE, json.dumps(RUN_TIME_LIBRARIES)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["kinds"] >= 10
    assert seen["preloaded"] == []
    assert seen["checked"] == []
    assert seen["sql checked"] == ["duckdb"]  # its parser decides what one SELECT is
