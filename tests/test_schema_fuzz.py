"""Every operation of the OpenAPI schema, fuzzed with Schemathesis: valid and invalid inputs
must never get a 5xx, and what is answered must match the schema.

The schema and the requests go through the portal's WSGI app in this process, so the requests
see the test's database transaction; on_commit callbacks never run in it, so no submitted job is
dispatched to Celery. The example counts are bounded to keep the file under a minute."""

import copy

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from accounts.models import ApiToken
from jobs.models import LogLine, MetricPoint
from nodes.models import Node

EXAMPLES = 25

# Path parameter -> values that name something, while a test runs (see `world`).
KNOWN: dict[str, list[str]] = {}
schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


@pytest.fixture(autouse=True)
def one_connection():
    """As Django's test client does: the WSGI app would close the database connection after
    each request, and with it the test's transaction."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def world(cast):
    """Something to find: a job of alice's with a log and a metric, one of bob's, a node."""
    from django.utils import timezone

    from jobs import services

    spec = services.validate_spec({"kind": "diag.sleep", "params": {"seconds": 1}},
                                  owner=cast.alice)
    mine, _ = services.submit_job(owner=cast.alice, spec=spec)
    spec = services.validate_spec({"kind": "diag.noop"}, owner=cast.bob)
    theirs, _ = services.submit_job(owner=cast.bob, spec=spec)
    now = timezone.now()
    LogLine.objects.create(job=mine, attempt=1, seq=1, ts=now, text="hello")
    MetricPoint.objects.create(job=mine, attempt=1, name="loss", step=1, value=0.5, ts=now)
    Node.objects.create(name="w1", queues=["cpu"], concurrency=2, last_heartbeat=now)
    KNOWN.update({"job_id": [str(mine.pk), str(theirs.pk)], "name": ["w1"]})
    yield
    KNOWN.clear()


@pytest.fixture(params=["alice", "admin"])
def token(request, cast):
    if request.param == "alice":
        return cast.alice_key
    return ApiToken.issue(cast.admin)[1]


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    """Some of the time, a path names what exists (see `world`): an own job, another's, a
    node. Drawn when the test runs, after the fixture made them."""
    if not path_parameters or not set(path_parameters) & set(KNOWN):
        return st.just(path_parameters)

    def pick(which):
        return {name: KNOWN[name][which % len(KNOWN[name])] if which is not None
                and name in KNOWN else value for name, value in path_parameters.items()}

    return st.sampled_from([None, None, 0, 1]).map(pick)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_input_gets_a_server_error(case, token, world):
    case.call_and_validate(headers={"Authorization": f"Token {token}"},
                           checks=[not_a_server_error, response_schema_conformance])


def inline_refs(node, defs):
    """A kind's parameter JSON Schema with its `#/$defs/` references written out in place."""
    if isinstance(node, dict):
        if "$ref" in node:
            return inline_refs(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {key: inline_refs(value, defs) for key, value in node.items() if key != "$defs"}
    if isinstance(node, list):
        return [inline_refs(item, defs) for item in node]
    return node


def with_kind_bodies(raw: dict) -> dict:
    """The app's schema, with POST /api/v1/jobs/ taking each kind's own parameters (as GET
    /api/v1/kinds/ publishes them), so that generated jobs get past `kind` to the kinds'
    validators."""
    from workers.kinds import all_kinds

    raw = copy.deepcopy(raw)
    raw["openapi"] = "3.1.0"  # pydantic writes JSON Schema 2020-12, which OpenAPI 3.1 speaks
    bodies = []
    for kind in all_kinds():
        params = kind.schema()
        bodies.append({"type": "object", "required": ["kind", "params"],
                       "properties": {"kind": {"type": "string", "enum": [kind.name]},
                                      "params": inline_refs(params, params.get("$defs", {}))}})
    post = raw["paths"]["/api/v1/jobs/"]["post"]
    post["requestBody"] = {"required": True, "content": {"application/json": {
        "schema": {"oneOf": bodies}}}}
    return raw


kinds_schema = schemathesis.openapi.from_dict(with_kind_bodies(schema.raw_schema)).include(
    path="/api/v1/jobs/", method="POST")
kinds_schema.app, kinds_schema.location = schema.app, schema.location


@pytest.fixture
def shell_allowed(cast):
    """alice may submit shell jobs: their parameters are checked only for those who may."""
    from django.contrib.auth.models import Permission

    cast.alice.user_permissions.add(Permission.objects.get(codename="run_shell"))


@kinds_schema.parametrize()
@settings(max_examples=4 * EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_job_parameters_get_a_server_error(case, cast, shell_allowed):
    # The responses are checked against the app's schema (an OpenAPI 3.0 one) above.
    case.call_and_validate(headers={"Authorization": f"Token {cast.alice_key}"},
                           checks=[not_a_server_error])


CURSOR_NOT_AN_ID = "cD1hYmM%3D"  # base64 of p=abc: a position that is no id


@pytest.mark.parametrize(("method", "url", "body", "status", "field"), [
    ("get", "/api/v1/jobs/?q=a%00b", None, 400, "q"),
    ("get", "/api/v1/jobs/?state=queued&kind=%00", None, 400, "kind"),
    ("get", f"/api/v1/jobs/?cursor={CURSOR_NOT_AN_ID}", None, 404, "detail"),
    ("get", "/api/v1/nodes/w%001/metrics/", None, 404, "detail"),
    ("post", "/api/v1/nodes/w%001/drain/", None, 404, "detail"),
    ("get", "/api/v1/nodes/w1/metrics/?since=2020-13-45T00:00:00", None, 400, "since"),
    ("get", "/api/v1/cluster/metrics/?since=2020-01-01T00:00:00%2B99:00", None, 400, "since"),
    ("get", "/api/v1/cluster/metrics/?since=0001-01-01T00:00:00%2B05:00", None, 400, "since"),
    ("get", "/api/v1/cluster/metrics/?since=5744-02-27T13:48:45-21:00", None, 200, "source"),
    ("post", "/api/v1/jobs/", {"kind": "diag.noop", "name": "a\x00b"}, 400, "name"),
    ("post", "/api/v1/jobs/", {"kind": "diag.sleep", "params": {"note": "\x00"}}, 400, "params"),
    ("post", "/api/v1/jobs/", {"kind": "diag.noop", "team": "\x00"}, 400, "team"),
    ("post", "/api/v1/jobs/", {"kind": "diag.noop", "after": ["²"]}, 400, "after"),
    ("post", "/api/v1/jobs/", [{"kind": "diag.noop"}, {"kind": "diag.noop", "name": "\x00"}],
     400, 1),
])
def test_inputs_that_once_got_a_server_error_get_4xx_naming_the_field_or_an_answer(
        cast, method, url, body, status, field):
    """500s that fuzzing (and probing around what it found) turned up: NUL characters, which
    PostgreSQL refuses; a made-up cursor; times that parse but do not exist, or that PostgreSQL
    cannot take; job ids in digits that are not 0-9."""
    from rest_framework.test import APIClient

    from jobs.models import Job

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {ApiToken.issue(cast.admin)[1]}")
    Node.objects.create(name="w1")
    response = getattr(client, method)(url, data=body, format="json")
    assert response.status_code == status
    assert response.json()[field]
    assert not Job.objects.exists()


def test_an_idempotency_key_with_a_nul_character_gets_400(api):
    from jobs.models import Job

    response = api.post("/api/v1/jobs/", data={"kind": "diag.noop"}, format="json",
                        HTTP_IDEMPOTENCY_KEY="key\x00")
    assert response.status_code == 400 and response.json()["Idempotency-Key"]
    assert not Job.objects.exists()
