"""One error path: the services' domain errors share one base (common.errors.DomainError) and
become responses in one place, for the API and for the pages; a retry is checked as a new
submission is; the OpenAPI job schema's bounds are the validator's."""

import html

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import Membership, Team
from accounts.teams import MembershipRefused
from common.errors import DomainError
from jobs import services
from jobs.api.views import JOB_SPEC
from jobs.lifecycle import TransitionRefused
from jobs.models import Job, JobState
from schedules.services import InvalidSchedule
from tests.factories import make_job


def test_every_domain_error_is_one_kind_with_a_status_and_per_field_errors():
    for error, status in [(services.InvalidJob({"kind": ["is required"]}), 400),
                          (services.NotPermitted({"kind": ["no"]}), 403),
                          (TransitionRefused("job 1 is already succeeded"), 409),
                          (InvalidSchedule({"cron": ["bad"]}), 400),
                          (MembershipRefused("no such user", "username"), 400)]:
        assert isinstance(error, DomainError)
        assert error.status == status
        assert isinstance(error.errors, dict) and error.errors


def ended_job(cast, *, state=JobState.FAILED, **fields):
    values = {"kind": "diag.sleep", "params": {"seconds": 1}, "name": "old", "timeout_s": 60,
              "created_at": timezone.now(), "finished_at": timezone.now(), **fields}
    return make_job(cast.alice, state, attempt=0, token="t", team=cast.ml, **values)


@pytest.mark.parametrize(("fields", "field"), [
    ({"params": {"seconds": -5}}, "params"),  # saved before the kind's rules changed
    ({"kind": "gone.kind"}, "kind"),  # a kind no longer offered
    ({"labels": {"gpu": "h100"}}, "labels"),  # no node has it now
    ({"cpus": 8}, "cpus"),  # over the team's quota, lowered since
])
def test_a_retry_is_checked_as_a_new_submission(api, cast, fields, field):
    Team.objects.filter(pk=cast.ml.pk).update(max_cpus=4)
    job = ended_job(cast, **fields)
    response = api.post(f"/api/v1/jobs/{job.pk}/retry/")
    assert response.status_code == 400, response.json()
    assert field in response.json()
    assert Job.objects.count() == 1  # nothing was made


def test_a_retry_of_a_kind_the_user_may_no_longer_submit_is_403(api, cast):
    job = ended_job(cast, kind="shell", params={"argv": ["/usr/bin/printf", "x"]})
    response = api.post(f"/api/v1/jobs/{job.pk}/retry/")
    assert response.status_code == 403 and "kind" in response.json()


def test_a_good_retry_still_works(api, cast):
    job = ended_job(cast)
    response = api.post(f"/api/v1/jobs/{job.pk}/retry/")
    assert response.status_code == 201
    assert response.json()["params"]["seconds"] == 1 and response.json()["team"] == "ml"


def test_the_api_turns_a_refused_transition_into_409(api, cast):
    job = ended_job(cast, state=JobState.SUCCEEDED)
    response = api.post(f"/api/v1/jobs/{job.pk}/cancel/")
    assert response.status_code == 409
    assert "already succeeded" in response.json()["detail"]


def test_a_viewer_cancelling_on_the_page_gets_the_pages_403(cast):
    Membership.objects.filter(team=cast.ml, user=cast.alice).update(role="viewer")
    job = ended_job(cast, state=JobState.QUEUED)
    client = Client()
    client.force_login(cast.alice)
    response = client.post(f"/jobs/{job.pk}/cancel/")
    assert response.status_code == 403
    assert "you may only view team ml's jobs" in html.unescape(response.content.decode())
    assert Job.objects.get(pk=job.pk).state == JobState.QUEUED


def test_the_job_schema_bounds_are_the_validators(settings):
    bounds = services.int_bounds()
    for field in ("priority", "max_attempts", "timeout_s", "cpus", "gpus"):
        low, high, default = bounds[field]
        shown = JOB_SPEC["properties"][field]
        assert (shown["minimum"], shown["maximum"], shown["default"]) == (low, high, default)
    assert JOB_SPEC["properties"]["cpus"]["minimum"] == 1
    with pytest.raises(services.InvalidJob) as refused:
        services.validate_spec({"kind": "diag.noop", "cpus": 0})
    assert refused.value.errors == {"cpus": ["must be between 1 and 1024"]}


def test_the_served_openapi_schema_says_cpus_at_least_1(cast):
    client = APIClient()
    client.force_authenticate(cast.alice)
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    body = schema["paths"]["/api/v1/jobs/"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["oneOf"][0]
    assert body["properties"]["cpus"]["minimum"] == 1
