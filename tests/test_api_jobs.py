"""The REST job API: submission, validation, visibility, cancel, retry, logs, kinds, schema."""

import json

import pytest
from rest_framework.test import APIClient

from jobs.models import Job, JobState, LogLine

SLEEP = {"kind": "diag.sleep", "params": {"seconds": 1}}


def sleeping(**params):
    return {"kind": "diag.sleep", "params": params}


def post_json(client, body, **extra):
    return client.post("/api/v1/jobs/", data=json.dumps(body), content_type="application/json",
                       **extra)


def test_a_valid_job_is_accepted_with_201_and_stored_queued(api, cast):
    response = post_json(api, {**SLEEP, "name": "nightly"})
    assert response.status_code == 201
    body = response.json()
    assert body["state"] == "queued" and body["attempt"] == 1 and body["owner"] == "alice"
    assert body["params"] == {"seconds": 1.0, "fail": False, "ignore_cancel": False,
                              "note": ""}
    job = Job.objects.get(pk=int(body["id"]))
    assert job.name == "nightly" and job.attempts.count() == 1


def test_a_list_of_jobs_is_accepted_in_one_post(api):
    response = post_json(api, [SLEEP, {"kind": "diag.noop"}])
    assert response.status_code == 201
    assert [job["kind"] for job in response.json()] == ["diag.sleep", "diag.noop"]
    assert Job.objects.count() == 2


@pytest.mark.parametrize(("body", "field", "message"), [
    ({"kind": "no.such.kind"}, "kind", "unknown kind 'no.such.kind'"),
    ({"params": {"seconds": 1}}, "kind", "is required"),
    ({"kind": 7}, "kind", "must be a string"),
    (sleeping(seconds="ten"), "params", {"seconds": ["must be a number"]}),
    (sleeping(seconds=-1), "params", {"seconds": ["must be at least 0"]}),
    (sleeping(fail="yes"), "params", {"fail": ["must be true or false"]}),
    (sleeping(bogus=1), "params", {"bogus": ["is not a parameter of this kind"]}),
    ({"kind": "diag.sleep", "params": [1, 2]}, "params",
     {"non_field_errors": ["must be a JSON object"]}),
    ({**SLEEP, "max_attempts": 0}, "max_attempts", "must be between 1 and 20"),
    ({**SLEEP, "timeout_s": "long"}, "timeout_s", "must be a whole number"),
    ({**SLEEP, "queue": "nowhere"}, "queue", "must be one of cpu, etl, train, gpu"),
    ({**SLEEP, "state": "succeeded"}, "state", "cannot be set when submitting a job"),
    ({**SLEEP, "owner": "bob"}, "owner", "cannot be set when submitting a job"),
])
def test_a_bad_job_gets_400_naming_the_field_and_writes_nothing(api, body, field, message):
    response = post_json(api, body)
    assert response.status_code == 400
    errors = response.json()[field]
    assert errors == message if isinstance(message, dict) else message in errors
    assert Job.objects.count() == 0


def test_one_bad_job_in_a_list_refuses_the_whole_list_and_says_which(api):
    response = post_json(api, [SLEEP, {"kind": "nope"}])
    assert response.status_code == 400
    assert response.json()[0] == {} and "kind" in response.json()[1]
    assert Job.objects.count() == 0


def test_a_body_that_is_not_json_gets_400(api):
    response = api.post("/api/v1/jobs/", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]
    assert Job.objects.count() == 0


def test_a_body_that_is_not_an_object_gets_400(api):
    response = post_json(api, "diag.sleep")
    assert response.status_code == 400
    assert Job.objects.count() == 0


def test_a_two_megabyte_body_gets_413(api):
    body = {**SLEEP, "name": "x" * (2 * 1024 * 1024)}
    response = post_json(api, body)
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]
    assert Job.objects.count() == 0


def test_a_form_encoded_body_gets_415(api):
    response = api.post("/api/v1/jobs/", data={"kind": "diag.noop"})
    assert response.status_code == 415
    assert Job.objects.count() == 0


def test_without_credentials_the_api_answers_401(db):
    response = post_json(APIClient(), SLEEP)
    assert response.status_code == 401
    assert Job.objects.count() == 0


def test_a_wrong_or_revoked_token_answers_401(cast):
    from django.utils import timezone

    from accounts.models import ApiToken

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-key")
    assert client.get("/api/v1/jobs/").status_code == 401
    ApiToken.objects.filter(user=cast.alice).update(revoked_at=timezone.now())
    client.credentials(HTTP_AUTHORIZATION=f"Token {cast.alice_key}")
    assert client.get("/api/v1/jobs/").status_code == 401


def test_tokens_are_stored_only_as_hashes(cast):
    from accounts.models import ApiToken

    token = ApiToken.objects.get(user=cast.alice)
    assert cast.alice_key not in (token.key_hash, token.prefix)
    assert token.prefix == cast.alice_key[:8]


def test_an_idempotency_key_makes_a_retried_submit_return_the_same_job(api):
    first = post_json(api, SLEEP, HTTP_IDEMPOTENCY_KEY="abc-1")
    again = post_json(api, SLEEP, HTTP_IDEMPOTENCY_KEY="abc-1")
    other = post_json(api, SLEEP, HTTP_IDEMPOTENCY_KEY="abc-2")
    assert first.status_code == again.status_code == other.status_code == 201
    assert first.json()["id"] == again.json()["id"] != other.json()["id"]
    assert again["Idempotent-Replayed"] == "true"
    assert Job.objects.count() == 2


def test_users_see_only_their_own_jobs_and_others_get_404(api, cast):
    mine = post_json(api, SLEEP).json()["id"]
    bob = APIClient()
    bob.credentials(HTTP_AUTHORIZATION=f"Token {cast.bob_key}")
    post_json(bob, SLEEP)
    assert [job["id"] for job in api.get("/api/v1/jobs/").json()["results"]] == [mine]
    for path in ("", "logs/", "metrics/"):
        assert bob.get(f"/api/v1/jobs/{mine}/{path}").status_code == 404
    assert bob.post(f"/api/v1/jobs/{mine}/cancel/").status_code == 404
    assert bob.post(f"/api/v1/jobs/{mine}/retry/").status_code == 404
    missing = bob.get("/api/v1/jobs/999999/")
    assert missing.status_code == 404 and missing.json() == bob.get(f"/api/v1/jobs/{mine}/").json()
    assert api.get("/api/v1/jobs/not-a-number/").status_code == 404
    assert Job.objects.get(pk=mine).state == JobState.QUEUED


def test_staff_see_every_job(api, cast):
    post_json(api, SLEEP)
    staff = APIClient()
    staff.force_authenticate(cast.admin)
    assert len(staff.get("/api/v1/jobs/").json()["results"]) == 1


def test_the_job_list_is_newest_first_cursor_paginated_and_filtered(api):
    post_json(api, [{**SLEEP, "name": f"job {i}"} for i in range(5)] + [{"kind": "diag.noop"}])
    page = api.get("/api/v1/jobs/?limit=4").json()
    names = [job["name"] for job in page["results"]]
    assert names == ["diag.noop", "job 4", "job 3", "job 2"]
    rest = api.get(page["next"]).json()
    assert [job["name"] for job in rest["results"]] == ["job 1", "job 0"]
    assert len(api.get("/api/v1/jobs/?kind=diag.noop").json()["results"]) == 1
    assert [j["name"] for j in api.get("/api/v1/jobs/?q=job 3").json()["results"]] == ["job 3"]
    assert api.get("/api/v1/jobs/?state=queued").json()["results"]
    assert api.get("/api/v1/jobs/?state=nonsense").status_code == 400


def test_cancelling_a_queued_job_ends_it_at_once(api):
    job_id = post_json(api, SLEEP).json()["id"]
    response = api.post(f"/api/v1/jobs/{job_id}/cancel/")
    assert response.status_code == 202
    assert response.json()["state"] == "cancelled"


def test_cancelling_a_finished_job_answers_409(api):
    job_id = post_json(api, SLEEP).json()["id"]
    Job.objects.filter(pk=job_id).update(state=JobState.SUCCEEDED)
    response = api.post(f"/api/v1/jobs/{job_id}/cancel/")
    assert response.status_code == 409
    assert "already succeeded" in response.json()["detail"]
    assert Job.objects.get(pk=job_id).state == JobState.SUCCEEDED


def test_cancelling_a_running_job_records_the_request(api):
    job_id = post_json(api, SLEEP).json()["id"]
    Job.objects.filter(pk=job_id).update(state=JobState.RUNNING)
    response = api.post(f"/api/v1/jobs/{job_id}/cancel/")
    assert response.status_code == 202
    assert response.json()["cancel_requested"] is True
    assert response.json()["state"] == "running"


def test_retry_makes_a_new_job_with_the_same_kind_and_params(api):
    job = post_json(api, {"kind": "diag.sleep", "params": {"seconds": 2, "fail": True}}).json()
    response = api.post(f"/api/v1/jobs/{job['id']}/retry/")
    assert response.status_code == 201
    assert response.json()["id"] != job["id"]
    assert response.json()["params"] == job["params"]


def test_logs_come_in_order_after_a_sequence_number(api):
    job_id = int(post_json(api, SLEEP).json()["id"])
    from django.utils import timezone

    LogLine.objects.bulk_create([LogLine(job_id=job_id, attempt=1, seq=i, ts=timezone.now(),
                                         text=f"line {i}") for i in range(1, 6)])
    first = api.get(f"/api/v1/jobs/{job_id}/logs/?limit=2").json()
    assert [line["text"] for line in first["lines"]] == ["line 1", "line 2"]
    rest = api.get(f"/api/v1/jobs/{job_id}/logs/?after={first['next_after']}").json()
    assert [line["text"] for line in rest["lines"]] == ["line 3", "line 4", "line 5"]
    assert api.get(f"/api/v1/jobs/{job_id}/logs/?after=x").status_code == 400


def test_the_kinds_endpoint_lists_each_kind_with_its_schema(api):
    kinds = {kind["name"]: kind for kind in api.get("/api/v1/kinds/").json()}
    sleep = kinds["diag.sleep"]
    assert sleep["queue"] == "cpu" and sleep["title"] == "Sleep"
    assert sleep["params_schema"]["properties"]["seconds"]["type"] == "number"
    assert "diag.noop" in kinds


def test_the_openapi_schema_describes_the_job_endpoints(api):
    response = api.get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    assert schema["openapi"].startswith("3.")
    for path in ("/api/v1/jobs/", "/api/v1/jobs/{job_id}/", "/api/v1/jobs/{job_id}/cancel/",
                 "/api/v1/kinds/"):
        assert path in schema["paths"]


def test_the_api_docs_page_uses_local_assets_only(api, cast):
    from django.test import Client

    client = Client()
    client.force_login(cast.alice)
    html = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in html
    assert "cdn" not in html.lower() and "https://" not in html


def test_api_token_command_prints_a_working_token(db):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("api_token", "carol", "--create", stdout=out)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {out.getvalue().strip()}")
    assert client.get("/api/v1/jobs/").status_code == 200


def test_api_token_command_refuses_an_unknown_user_without_create(db):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="no user 'nobody'"):
        call_command("api_token", "nobody")


def test_the_openapi_schema_generates_without_a_single_warning(db):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)
    assert "tokenAuth" in out.getvalue() and "/api/v1/jobs/{job_id}/metrics/" in out.getvalue()


def test_the_job_and_cluster_pages_answer_while_redis_is_down(api, request):
    job = post_json(api, SLEEP).json()
    redis = request.config.portal_redis
    redis.stop()
    try:
        detail = api.get(f"/api/v1/jobs/{job['id']}/")
        summary = api.get("/api/v1/cluster/")
    finally:
        redis.start()
    assert detail.status_code == 200 and detail.json()["stream_seq"] == 0
    assert summary.status_code == 200 and summary.json()["stream_seq"] == 0
