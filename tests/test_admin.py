"""The admin runs the place: every model listed, filtered and searched; actions that go through
the services (cancel, retry, drain, undrain) and land in the audit trail; the state machine's
fields read-only."""

import json

import pytest
from django.test import Client

from audit.models import AuditEntry
from jobs.models import Attempt, Job, JobState
from nodes.models import Node


@pytest.fixture
def staff(cast):
    client = Client()
    client.force_login(cast.admin)
    return client


@pytest.fixture
def jobs(api):
    body = [{"kind": "diag.sleep", "params": {"seconds": 1}, "name": f"admin-{i}"}
            for i in range(2)]
    response = api.post("/api/v1/jobs/", data=json.dumps(body), content_type="application/json")
    return [Job.objects.get(pk=job["id"]) for job in response.json()]


@pytest.mark.parametrize("path", [
    "/admin/jobs/job/", "/admin/jobs/job/?state__exact=queued&team__id__exact=1",
    "/admin/jobs/job/?q=admin-1", "/admin/jobs/attempt/", "/admin/jobs/attempt/?state=queued",
    "/admin/nodes/node/", "/admin/accounts/team/", "/admin/accounts/membership/",
    "/admin/accounts/apitoken/", "/admin/schedules/schedule/", "/admin/alerts/alertrule/",
    "/admin/audit/auditentry/"])
def test_every_model_is_listed_filtered_and_searched(staff, jobs, path):
    assert staff.get(path).status_code == 200


def test_a_jobs_page_shows_its_attempts_and_changes_only_name_and_priority(staff, jobs):
    job = jobs[0]
    page = staff.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert 'name="name"' in page and 'name="priority"' in page
    assert 'name="state"' not in page and 'name="owner"' not in page
    assert staff.get(f"/admin/jobs/attempt/{Attempt.objects.get(job=job).pk}/change/") \
        .status_code == 200  # viewable, not editable
    assert staff.post(f"/admin/jobs/attempt/{Attempt.objects.get(job=job).pk}/change/",
                      {"state": "succeeded"}).status_code == 403


def test_cancel_and_retry_actions_go_through_the_services_and_are_audited(staff, jobs, cast):
    ids = [str(job.pk) for job in jobs]
    staff.post("/admin/jobs/job/", {"action": "cancel_jobs", "_selected_action": ids})
    assert set(Job.objects.filter(pk__in=ids).values_list("state", flat=True)) == {
        JobState.CANCELLED}
    staff.post("/admin/jobs/job/", {"action": "retry_jobs", "_selected_action": ids[:1]})
    retried = Job.objects.exclude(pk__in=ids).get()
    assert retried.name == "admin-0" and retried.team == cast.ml and retried.owner == cast.admin
    trail = set(AuditEntry.objects.filter(via="admin").values_list("action", "target_id"))
    assert trail >= {("job.cancel", ids[0]), ("job.cancel", ids[1]), ("job.retry", ids[0])}


def test_drain_and_undrain_actions_are_audited(staff):
    node = Node.objects.create(name="w5", queues=["cpu"], concurrency=2)
    staff.post("/admin/nodes/node/", {"action": "drain", "_selected_action": [node.pk]})
    assert Node.objects.get(pk=node.pk).state == "draining"
    staff.post("/admin/nodes/node/", {"action": "undrain", "_selected_action": [node.pk]})
    assert Node.objects.get(pk=node.pk).state == "online"
    assert list(AuditEntry.objects.filter(target_type="node").order_by("id")
                .values_list("action", flat=True)) == ["node.drain", "node.undrain"]


def test_a_non_staff_user_has_no_admin(client, cast):
    client.force_login(cast.alice)
    assert client.get("/admin/jobs/job/").status_code == 302  # to the admin's login


def test_jobs_offer_no_delete_that_would_fail_and_show_progress_in_percent(staff, jobs):
    job = jobs[0]
    Job.objects.filter(pk=job.pk).update(progress=0.36666666666666664)
    listing = staff.get("/admin/jobs/job/").content.decode()
    assert "delete_selected" not in listing and "37 %" in listing
    assert "0.3666" not in listing
    page = staff.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert "37 %" in page and "0.3666" not in page
    assert staff.post(f"/admin/jobs/job/{job.pk}/delete/").status_code == 403
    assert Job.objects.filter(pk=job.pk).exists()


def test_a_jobs_after_is_shown_as_ids_not_a_list_of_every_job(staff, jobs):
    first, second = jobs
    second.after.add(first)
    page = staff.get(f"/admin/jobs/job/{second.pk}/change/").content.decode()
    assert 'name="after"' not in page and "<select" not in page.split('id="job_form"')[1] \
        .split("</form>")[0].replace('<select name="action"', "")
    assert f">{first.pk}<" in page
    staff.post(f"/admin/jobs/job/{second.pk}/change/", {"name": "renamed", "priority": "3",
                                                        "attempts-TOTAL_FORMS": "1",
                                                        "attempts-INITIAL_FORMS": "1"})
    assert list(second.after.values_list("pk", flat=True)) == [first.pk]


def test_the_node_admin_pages_old_addresses_lead_to_where_they_are_now(staff):
    node = Node.objects.create(name="w9", queues=["default"], concurrency=1)
    answer = staff.get(f"/admin/jobs/node/{node.pk}/change/?x=1")
    assert answer.status_code == 301
    assert answer["Location"] == f"/admin/nodes/node/{node.pk}/change/?x=1"
    assert staff.get(answer["Location"]).status_code == 200
