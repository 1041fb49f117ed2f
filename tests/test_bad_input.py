"""Input that once got a server error from the browser's forms and the JSON API: NUL characters
in a posted form's fields (PostgreSQL refuses them), and JSON nested deep enough to overflow
the stack of whatever walks it. Each gets 400 saying what is wrong, and nothing is changed."""

from urllib.parse import urlencode

import pytest
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import ApiToken
from common.parsers import MAX_DEPTH, TOO_DEEP, nul_errors, too_deep
from jobs.models import Job
from schedules.models import Schedule

NUL = ["must not contain NUL characters"]
FORM = "application/x-www-form-urlencoded"
EVERY_5 = "*/5 * * * *"


def nothing_changed(cast, tokens_before):
    assert ApiToken.objects.filter(user=cast.alice).count() == tokens_before
    assert not Job.objects.exists() and not Schedule.objects.exists()


JOB = {"kind": "diag.sleep", "name": "ok", "team": "ml", "param-seconds": "1",
       "param-note": "fine"}
SCHEDULE = {"name": "ok", "team": "ml", "cron": EVERY_5, "kind": "diag.noop", "params": "{}",
            "priority": "0", "enabled": "on"}


@pytest.mark.parametrize(("url", "data", "field"), [
    ("/tokens/", {"name": "lap\x00top"}, "name"),
    ("/jobs/new/", {**JOB, "name": "a\x00b"}, "name"),
    ("/jobs/new/", {**JOB, "team": "m\x00l"}, "team"),
    ("/jobs/new/", {**JOB, "param-note": "\x00"}, "param-note"),
    ("/schedules/new/", {**SCHEDULE, "name": "night\x00ly"}, "name"),
    ("/schedules/new/", {**SCHEDULE, "params": '{"note": "\\u0000"}', "kind": "diag.sleep",
                         "cron": "0 3 * * *", "team": "\x00"}, "team"),
    ("/schedules/new/", {**SCHEDULE, "bo\x00gus": "x"}, "bo\x00gus"),
    ("/schedules/new/", {**SCHEDULE, "": "\x00"}, ""),
])
@pytest.mark.parametrize("encoding", ["multipart", "urlencoded"])
def test_a_nul_character_in_a_posted_form_gets_400_naming_the_field(
        cast, alice, url, data, field, encoding):
    before = ApiToken.objects.filter(user=cast.alice).count()
    if encoding == "multipart":
        response = alice.post(url, data)
    else:
        response = alice.post(url, urlencode(data), content_type=FORM)
    assert response.status_code == 400
    assert response.json() == {field: NUL}
    nothing_changed(cast, before)


@pytest.mark.parametrize("encoding", ["multipart", "urlencoded"])
def test_a_form_posted_to_the_api_still_gets_415_nul_or_not(cast, encoding):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {cast.alice_key}")
    for name in ("ok", "a\x00b"):
        data = {"kind": "diag.noop", "name": name}
        if encoding == "multipart":
            response = client.post("/api/v1/jobs/", data)
        else:
            response = client.post("/api/v1/jobs/", urlencode(data), content_type=FORM)
        assert response.status_code == 415
    assert not Job.objects.exists()


def test_an_admin_form_with_a_nul_character_gets_400(cast):
    admin = Client()
    admin.force_login(cast.admin)
    response = admin.post("/admin/accounts/team/add/", {"name": "a\x00b"})
    assert response.status_code == 400 and response.json() == {"name": NUL}


def test_the_same_forms_without_nul_characters_still_work(cast, alice):
    assert alice.post("/jobs/new/", JOB).status_code == 302
    assert alice.post("/schedules/new/", urlencode(SCHEDULE), content_type=FORM).status_code \
        == 302
    assert alice.post("/tokens/", {"name": "laptop"}).status_code == 302
    assert Job.objects.count() == 1 and Schedule.objects.count() == 1


def test_an_upload_field_named_with_a_nul_character_gets_400(cast, alice):
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("a\x00b.txt", b"hello")  # Django drops the NUL of its name
    response = alice.post("/schedules/new/", {**SCHEDULE, "file\x00": upload})
    assert response.status_code == 400 and response.json() == {"file\x00": NUL}
    assert not Schedule.objects.exists()


def test_a_malformed_multipart_form_gets_400(cast, alice):
    response = alice.post("/schedules/new/", b"--nope\r\nnot a part",
                          content_type="multipart/form-data; boundary=")
    assert response.status_code == 400
    assert not Schedule.objects.exists()


# JSON nested too deeply.

def nested(depth: int, inner: str = "") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.fixture
def api(cast):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {cast.alice_key}")
    return client


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 500, 5000, 200_000])
@pytest.mark.parametrize("body", ["{}", '{{"kind": "diag.sleep", "params": {{"note": {}}}}}'])
def test_json_nested_too_deeply_gets_400_not_a_server_error(cast, api, depth, body):
    raw = nested(depth) if body == "{}" else body.format(nested(depth, '"\\u0000"'))
    for method, url in (("post", "/api/v1/jobs/"), ("post", "/api/v1/schedules/")):
        response = getattr(api, method)(url, data=raw, content_type="application/json")
        assert response.status_code == 400, (url, response.content[:200])
        assert response.json() == {"non_field_errors": [TOO_DEEP]}
    assert not Job.objects.exists() and not Schedule.objects.exists()


def test_patching_a_schedule_with_json_nested_too_deeply_gets_400(cast, api):
    from schedules import services

    schedule = services.create_schedule(user=cast.alice, data={
        "name": "nightly", "team": "ml", "cron": EVERY_5, "kind": "diag.noop"})
    response = api.patch(f"/api/v1/schedules/{schedule.pk}/",
                         data=f'{{"params": {nested(600)}}}', content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {"non_field_errors": [TOO_DEEP]}
    schedule.refresh_from_db()
    assert schedule.params == {}


def test_json_as_deep_as_allowed_is_read_and_checked_as_before(cast, api):
    # The body's object is the first level: params' list is MAX_DEPTH - 1 levels deep.
    raw = f'{{"kind": "diag.sleep", "params": {{"note": {nested(MAX_DEPTH - 2)}}}}}'
    response = api.post("/api/v1/jobs/", data=raw, content_type="application/json")
    assert response.status_code == 400 and "params" in response.json()  # the kind's check
    inner = nested(MAX_DEPTH - 2, '"x\\u0000"')
    raw = f'{{"kind": "diag.sleep", "params": {{"note": {inner}}}}}'
    response = api.post("/api/v1/jobs/", data=raw, content_type="application/json")
    assert response.status_code == 400 and response.json() == {"params": {"note": NUL}}
    assert not Job.objects.exists()


def test_the_depth_and_nul_walks_need_no_recursion():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert too_deep(deep) and not too_deep(deep, limit=100_001)
    assert too_deep([[]], limit=1) and not too_deep([[]], limit=2)
    assert not too_deep({"a": [{"b": 1}]}, limit=3) and too_deep({"a": [{"b": []}]}, limit=3)
    assert nul_errors(deep) is None
    deep_dict: dict = {"x": "\x00"}
    for _ in range(100_000):
        deep_dict = {"a": deep_dict}
    errors = nul_errors(deep_dict)
    for _ in range(100_000):
        errors = errors["a"]
    assert errors == {"x": NUL}


def test_nul_errors_keep_their_shape():
    assert nul_errors("a\x00") == NUL
    assert nul_errors({"a": "x", "b": {"c": "\x00", "d": "y"}, "e\x00": 1}) == {
        "b": {"c": NUL}, "e\x00": NUL}
    assert nul_errors([{"a": "x"}, {"a": ["\x00"]}, "\x00", [["\x00"]]]) == [
        {}, {"a": NUL}, NUL, NUL]
    assert nul_errors({"a": {"b": {"c": "x"}}}) is None
    assert nul_errors([1, "x", None]) is None
