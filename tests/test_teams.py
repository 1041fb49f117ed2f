"""Teams, roles and quotas: who sees and acts on which jobs, and admission (pending -> queued)
under per-team quotas, priorities and fair share across teams."""

import json
import threading

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiToken, Membership, Team
from jobs import admission, lifecycle, services
from jobs.models import Job, JobState
from jobs.selectors import job_groups
from nodes.models import Node
from tests.factories import make_job, make_ran

SLEEP = {"kind": "diag.sleep", "params": {"seconds": 1}}


def post_json(client, body, path="/api/v1/jobs/"):
    return client.post(path, data=json.dumps(body), content_type="application/json")


def client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {ApiToken.issue(user)[1]}")
    return client


def join(user, team, role="member"):
    Membership.objects.create(team=team, user=user, role=role)
    return user


@pytest.fixture
def carol(cast, django_user_model):
    """A second member of ml, alice's team."""
    return join(django_user_model.objects.create_user("carol"), cast.ml)


@pytest.fixture
def viewer(cast, django_user_model):
    """Sees ml's jobs, may not change them."""
    return join(django_user_model.objects.create_user("vera"), cast.ml, role="viewer")


def finish(job_id, state=JobState.SUCCEEDED):
    Job.objects.filter(pk=job_id).update(state=state)
    admission.admit()


# Access ------------------------------------------------------------------------------------


def test_team_members_see_each_others_jobs_and_other_teams_get_404(api, cast, carol):
    mine = post_json(api, SLEEP).json()
    assert mine["team"] == "ml"
    as_carol = client_for(carol)
    assert as_carol.get(f"/api/v1/jobs/{mine['id']}/").status_code == 200
    assert [j["id"] for j in as_carol.get("/api/v1/jobs/").json()["results"]] == [mine["id"]]
    assert as_carol.post(f"/api/v1/jobs/{mine['id']}/cancel/").status_code == 202

    as_bob = client_for(cast.bob)
    theirs = post_json(as_bob, SLEEP).json()
    assert theirs["team"] == "etl"
    for path in ["", "logs/", "metrics/", "artifacts/", "artifacts/out.csv"]:
        assert as_bob.get(f"/api/v1/jobs/{mine['id']}/{path}").status_code == 404, path
    for action in ["cancel", "retry"]:
        assert as_bob.post(f"/api/v1/jobs/{mine['id']}/{action}/").status_code == 404
    assert as_bob.get(f"/api/v1/jobs/?parent={mine['id']}").status_code == 404
    # Nothing of ml's leaks through the list, its filters or its pages.
    listed = as_bob.get("/api/v1/jobs/?limit=1").json()
    assert [j["id"] for j in listed["results"]] == [theirs["id"]] and listed["next"] is None
    assert as_bob.get("/api/v1/jobs/?state=cancelled").json()["results"] == []


def test_a_viewer_sees_the_teams_jobs_but_may_not_change_or_submit(api, viewer):
    job = post_json(api, SLEEP).json()
    as_vera = client_for(viewer)
    assert as_vera.get(f"/api/v1/jobs/{job['id']}/").status_code == 200
    refused = as_vera.post(f"/api/v1/jobs/{job['id']}/cancel/")
    assert refused.status_code == 403 and "view" in refused.json()["detail"][0]
    assert as_vera.post(f"/api/v1/jobs/{job['id']}/retry/").status_code == 403
    submit = post_json(as_vera, SLEEP)
    assert submit.status_code == 400 and "team" in submit.json()
    assert Job.objects.count() == 1 and Job.objects.get().state != JobState.CANCELLED


def test_a_job_goes_to_the_named_team_only_if_the_user_may_submit_there(api, cast):
    refused = post_json(api, {**SLEEP, "team": "etl"})
    assert refused.status_code == 400
    assert refused.json() == {"team": ["you may not submit jobs to team 'etl'"]}
    assert post_json(api, {**SLEEP, "team": 7}).json() == {"team": ["must be a team's name"]}
    staff = client_for(cast.admin)
    assert post_json(staff, {**SLEEP, "team": "etl"}).json()["team"] == "etl"
    assert Job.objects.filter(team__name="etl").count() == 1


@pytest.mark.parametrize("field", ["state", "owner", "attempt", "node", "created_at",
                                   "started_at", "token", "blocked"])
def test_fields_a_client_must_not_set_are_refused(api, field):
    response = post_json(api, {**SLEEP, field: "x"})
    assert response.status_code == 400
    assert response.json() == {field: ["cannot be set when submitting a job"]}
    assert not Job.objects.exists()


def test_a_user_in_no_team_works_in_a_team_of_their_own(django_user_model):
    dora = django_user_model.objects.create_user("dora")
    job = post_json(client_for(dora), SLEEP).json()
    assert job["team"] == "dora"
    assert Membership.objects.get(user=dora).role == "admin"


def test_websocket_groups_follow_the_teams(cast, carol, viewer):
    assert job_groups(carol) == job_groups(viewer) == [f"jobs-team-{cast.ml.pk}"]
    join(carol, cast.etl, role="viewer")
    assert sorted(job_groups(carol)) == sorted([f"jobs-team-{cast.ml.pk}",
                                                f"jobs-team-{cast.etl.pk}"])
    assert job_groups(cast.admin) == ["jobs-staff"]


# Quotas and admission ----------------------------------------------------------------------


def test_over_its_quota_a_job_waits_pending_saying_why_and_its_place(
        api, cast, django_capture_on_commit_callbacks):
    Team.objects.filter(pk=cast.ml.pk).update(max_running_jobs=2)
    jobs = [post_json(api, SLEEP).json() for _ in range(4)]
    assert [j["state"] for j in jobs] == ["queued", "queued", "pending", "pending"]
    third = api.get(f"/api/v1/jobs/{jobs[2]['id']}/").json()
    assert third["message"] == "team ml: 2 of 2 running jobs" and third["place_in_line"] == 1
    assert api.get(f"/api/v1/jobs/{jobs[3]['id']}/").json()["place_in_line"] == 2
    assert api.get(f"/api/v1/jobs/{jobs[0]['id']}/").json()["place_in_line"] is None
    # A queued one ends: the next in line is admitted at once (and only it).
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post(f"/api/v1/jobs/{jobs[0]['id']}/cancel/").status_code == 202
    states = dict(Job.objects.values_list("pk", "state"))
    assert [states[int(j["id"])] for j in jobs] == ["cancelled", "queued", "queued", "pending"]
    assert api.get(f"/api/v1/jobs/{jobs[3]['id']}/").json()["place_in_line"] == 1


def test_cpu_and_gpu_quotas_count_what_jobs_hold(api, cast):
    Team.objects.filter(pk=cast.ml.pk).update(max_cpus=4, max_gpus=1)
    first = post_json(api, {**SLEEP, "cpus": 3, "gpus": 1}).json()
    second = post_json(api, {**SLEEP, "cpus": 1, "gpus": 1}).json()
    assert first["state"] == "queued" and second["state"] == "pending"
    assert second["message"] == "team ml: 1 of 1 GPUs"
    third = post_json(api, {**SLEEP, "cpus": 1}).json()
    # Behind the GPU job in its team's line: first come, first served within a priority.
    assert third["state"] == "pending"
    finish(int(first["id"]))
    assert set(Job.objects.filter(state="queued").values_list("pk", flat=True)) == {
        int(second["id"]), int(third["id"])}


def test_higher_priority_goes_first_within_a_team(api, cast):
    Team.objects.filter(pk=cast.ml.pk).update(max_running_jobs=1)
    running = post_json(api, SLEEP).json()
    low = post_json(api, {**SLEEP, "priority": -5}).json()
    high = post_json(api, {**SLEEP, "priority": 10}).json()
    assert api.get(f"/api/v1/jobs/{high['id']}/").json()["place_in_line"] == 1
    assert api.get(f"/api/v1/jobs/{low['id']}/").json()["place_in_line"] == 2
    finish(int(running["id"]))
    assert Job.objects.get(pk=high["id"]).state == "queued"
    assert Job.objects.get(pk=low["id"]).state == "pending"


def test_raising_a_quota_in_the_admin_admits_waiting_jobs(api, cast, client,
                                                          django_capture_on_commit_callbacks):
    Team.objects.filter(pk=cast.ml.pk).update(max_running_jobs=1)
    jobs = [post_json(api, SLEEP).json() for _ in range(3)]
    client.force_login(cast.admin)
    form = {"name": "ml", "title": "", "max_running_jobs": "3", "max_cpus": "", "max_gpus": "",
            "share": "1", "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0"}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/admin/accounts/team/{cast.ml.pk}/change/", form)
    assert response.status_code == 302
    assert [Job.objects.get(pk=j["id"]).state for j in jobs] == ["queued"] * 3


def test_fair_share_lets_a_small_team_in_before_a_big_backlog(api, cast, settings):
    settings.ADMIT_AHEAD = 0
    Node.objects.create(name="w1", queues=["cpu"], concurrency=2)
    ml_jobs = post_json(api, [{"kind": "diag.noop"}] * 10).json()
    assert [j["state"] for j in ml_jobs].count("queued") == 2
    etl = post_json(client_for(cast.bob), {"kind": "diag.noop"}).json()
    assert etl["state"] == "pending" and etl["message"] == "queue cpu: every slot is taken"
    finish(int(ml_jobs[0]["id"]))
    # The free slot goes to etl, which holds nothing, not to ml's next job.
    assert Job.objects.get(pk=etl["id"]).state == "queued"
    assert Job.objects.filter(team=cast.ml, state="queued").count() == 1
    finish(int(ml_jobs[1]["id"]))  # now each team holds one: ml's next goes in
    assert list(Job.objects.filter(team=cast.ml, state="queued").values_list("pk", flat=True)) \
        == [int(ml_jobs[2]["id"])]


@pytest.fixture
def lone_window(settings):
    """No ADMIT_AHEAD: only the lone team's extra goes beyond the slots."""
    settings.ADMIT_AHEAD = 0
    settings.ADMIT_AHEAD_S = 60


def queued_of(jobs) -> int:
    return [j["state"] for j in jobs].count("queued")


def test_a_lone_team_may_hold_a_few_more_short_jobs_in_the_broker(api, cast, lone_window):
    Node.objects.create(name="w1", queues=["cpu"], concurrency=1)
    for _ in range(admission.AHEAD_PER_SLOT + 3):  # the queue just ran short jobs
        make_ran(cast.alice, team=cast.ml)
    ml_jobs = post_json(api, [{"kind": "diag.noop"}] * 20).json()
    # ml alone waits: its slot, and AHEAD_PER_SLOT more (at most) waiting in the broker.
    held = 1 + admission.AHEAD_PER_SLOT
    assert queued_of(ml_jobs) == held
    # Another team waits now: the slots alone count, and fair share decides the next.
    etl = post_json(client_for(cast.bob), {"kind": "diag.noop"}).json()
    assert etl["state"] == "pending" and etl["message"] == "queue cpu: every slot is taken"
    finish(int(ml_jobs[0]["id"]))
    assert Job.objects.filter(team=cast.ml, state="queued").count() == held - 1
    assert Job.objects.get(pk=etl["id"]).state == "pending"  # the slot is still taken


def test_without_recent_finishes_a_lone_team_has_the_slots_alone(api, lone_window):
    Node.objects.create(name="w1", queues=["cpu"], concurrency=2)
    jobs = post_json(api, [{"kind": "diag.sleep", "params": {"seconds": 1}}] * 5).json()
    assert queued_of(jobs) == 2


def test_jobs_that_never_ran_give_no_extra_room(api, cast, lone_window):
    Node.objects.create(name="w1", queues=["cpu"], concurrency=1)
    first = post_json(api, [{"kind": "diag.noop"}] * 4).json()
    for waiting in first[1:]:  # cancelled while pending: they end without running
        lifecycle.cancel(Job.objects.get(pk=waiting["id"]))
    make_job(cast.alice, JobState.FAILED, team=cast.ml, finished_at=timezone.now())  # skipped
    parent = make_ran(cast.alice, team=cast.ml, kind="diag.fanout", ended_ago=3600)
    for partition in range(3):  # partitions run within their parent's place
        make_ran(cast.alice, team=cast.ml, parent=parent, partition=partition)
    jobs = post_json(api, [{"kind": "diag.noop"}] * 5).json()
    assert queued_of(jobs) == 0  # the first still holds the one slot


def test_long_jobs_and_finishes_ahead_of_the_portals_clock_give_no_extra_room(api, cast,
                                                                            lone_window):
    Node.objects.create(name="w1", queues=["cpu"], concurrency=2)
    for _ in range(3):
        make_ran(cast.alice, team=cast.ml, seconds=3600)  # ran an hour, ended just now
        make_ran(cast.alice, team=cast.ml, ended_ago=-30)  # a worker's clock 30 s ahead
    jobs = post_json(api, [{"kind": "diag.noop"}] * 5).json()
    assert queued_of(jobs) == 2


def test_the_extra_room_is_for_the_kinds_that_just_ran_short(api, cast, lone_window):
    Node.objects.create(name="w1", queues=["cpu"], concurrency=1)
    for _ in range(3):
        make_ran(cast.alice, team=cast.ml, kind="diag.noop")
    hour = {"kind": "diag.sleep", "params": {"seconds": 3600}}
    jobs = post_json(api, [hour] * 5 + [{"kind": "diag.noop"}] * 5).json()
    # The first sleep takes the slot; the other sleeps wait in pending, where fair share can
    # still reorder them, and as many noops as just ran (three) wait in the broker.
    assert [j["state"] for j in jobs] == ["queued"] + ["pending"] * 4 + ["queued"] * 3 + \
        ["pending"] * 2


def test_jobs_with_labels_get_no_extra_room(api, cast, lone_window):
    Node.objects.create(name="w1", queues=["cpu"], concurrency=1, labels={"gpu": "a100"})
    for _ in range(3):
        make_ran(cast.alice, team=cast.ml)
    jobs = post_json(api, [{"kind": "diag.noop", "labels": {"gpu": "a100"}}] * 4).json()
    assert queued_of(jobs) == 1


def test_a_queue_whose_nodes_are_offline_gets_no_room_from_its_recent_finishes(api, cast,
                                                                            lone_window):
    Node.objects.create(name="w1", queues=["cpu"], concurrency=2, state="offline")
    for _ in range(3):
        make_ran(cast.alice, team=cast.ml)
    jobs = post_json(api, [{"kind": "diag.noop"}] * 3).json()
    assert queued_of(jobs) == 0
    assert jobs[0]["message"] == "queue cpu: no node serving it is online"


def test_the_quota_holds_over_the_extra_room(api, cast, lone_window):
    Team.objects.filter(pk=cast.ml.pk).update(max_running_jobs=3)
    Node.objects.create(name="w1", queues=["cpu"], concurrency=2)
    for _ in range(5):
        make_ran(cast.alice, team=cast.ml)
    jobs = post_json(api, [{"kind": "diag.noop"}] * 10).json()
    assert queued_of(jobs) == 3
    assert jobs[3]["message"] == "team ml: 3 of 3 running jobs"


def test_a_list_of_jobs_costs_the_queries_of_one(api):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    post_json(api, {"kind": "diag.noop"})  # the first of a user's jobs may make their team
    counts = []
    for size in (2, 50):
        with CaptureQueriesContext(connection) as queries:
            assert post_json(api, [{"kind": "diag.noop"}] * size).status_code == 201
        counts.append(len(queries))
    assert counts[1] == counts[0]


def test_a_job_waiting_for_another_is_not_admitted_until_it_succeeded(api, cast):
    first = post_json(api, SLEEP).json()
    second = post_json(api, {**SLEEP, "after": [first["id"]]}).json()
    assert second["state"] == "pending"
    admission.admit()
    detail = api.get(f"/api/v1/jobs/{second['id']}/").json()
    assert detail["state"] == "pending" and detail["place_in_line"] is None
    assert detail["message"] == f"waiting for job {first['id']} to succeed"


def test_labels_that_no_node_has_are_refused_and_those_it_has_are_accepted(api):
    refused = post_json(api, {**SLEEP, "labels": {"gpu": "a100"}})
    assert refused.status_code == 400
    assert refused.json() == {"labels": ["no node serving queue cpu has gpu=a100"]}
    Node.objects.create(name="g1", queues=["cpu"], labels={"gpu": "a100", "zone": "b"})
    accepted = post_json(api, {**SLEEP, "labels": {"gpu": "a100"}})
    assert accepted.status_code == 201 and accepted.json()["labels"] == {"gpu": "a100"}
    assert post_json(api, {**SLEEP, "labels": ["gpu"]}).status_code == 400


@pytest.mark.django_db(transaction=True)
def test_fifty_simultaneous_submits_cannot_overshoot_a_quota(django_user_model):
    team = Team.objects.create(name="race", max_running_jobs=5)
    user = join(django_user_model.objects.create_user("racer"), team)
    spec = services.validate_spec({"kind": "diag.noop"}, owner=user)
    start = threading.Barrier(50)
    errors = []

    def submit():
        try:
            start.wait()
            services.submit_jobs(owner=user, specs=[spec])
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=submit) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert Job.objects.filter(team=team).count() == 50
    assert Job.objects.filter(team=team, state="queued").count() == 5
    assert Job.objects.filter(team=team, state="pending").count() == 45


def test_the_pages_follow_the_same_rule(api, cast, carol, viewer, client):
    job = post_json(api, {**SLEEP, "name": "ml-only"}).json()
    client.force_login(cast.bob)
    for path in [f"/jobs/{job['id']}/", f"/jobs/{job['id']}/log.txt"]:
        assert client.get(path).status_code == 404, path
    assert client.post(f"/jobs/{job['id']}/cancel/").status_code == 404
    assert "ml-only" not in client.get("/jobs/").content.decode()
    client.force_login(carol)
    assert "ml-only" in client.get("/jobs/").content.decode()
    page = client.get(f"/jobs/{job['id']}/").content.decode()
    assert 'id="cancel-form"' in page and 'id="cancel-form" hidden' not in page
    client.force_login(viewer)
    page = client.get(f"/jobs/{job['id']}/").content.decode()
    assert 'id="cancel-form" hidden' in page  # a viewer is offered no cancel
    assert client.post(f"/jobs/{job['id']}/cancel/").status_code == 403
    assert Job.objects.get(pk=job["id"]).state != JobState.CANCELLED


# What the review of admission found ---------------------------------------------------------


def test_a_job_bigger_than_its_teams_quota_is_refused_and_one_left_so_waits_alone(api, cast):
    Team.objects.filter(pk=cast.ml.pk).update(max_cpus=4)
    refused = post_json(api, {**SLEEP, "cpus": 8})
    assert refused.status_code == 400
    assert refused.json() == {"cpus": ["more than team ml's quota of 4"]}
    big = post_json(api, {**SLEEP, "cpus": 4}).json()
    Job.objects.filter(pk=big["id"]).update(state="pending", message="")  # as if waiting
    Team.objects.filter(pk=cast.ml.pk).update(max_cpus=2)  # an admin lowers the quota
    small = post_json(api, {**SLEEP, "cpus": 1}).json()
    assert small["state"] == "queued"  # not stuck behind a job that can never start
    assert Job.objects.get(pk=big["id"]).message == (
        "team ml: needs 4 CPU slots, more than its quota of 2: it waits until an admin "
        "raises the quota")


def test_cpus_and_gpus_are_what_the_job_holds(api):
    assert post_json(api, {**SLEEP, "cpus": 0}).json() == {"cpus": ["must be between 1 and 1024"]}
    Node.objects.create(name="g1", queues=["gpu"], concurrency=1)
    assert post_json(api, {**SLEEP, "queue": "gpu"}).json()["gpus"] == 1
    assert "gpus" in post_json(api, {**SLEEP, "queue": "gpu", "gpus": 0}).json()


def test_a_full_queue_does_not_hide_a_job_for_an_idle_one(api, settings, monkeypatch):
    settings.ADMIT_AHEAD = 0
    monkeypatch.setattr(admission, "WINDOW", 3)
    Node.objects.create(name="c1", queues=["cpu"], concurrency=1)
    Node.objects.create(name="t1", queues=["train"], concurrency=1)
    post_json(api, [{"kind": "diag.noop"}] * 6)  # one runs, five wait for the cpu slot
    train = post_json(api, {"kind": "diag.noop", "queue": "train"}).json()
    assert train["state"] == "queued"


def test_jobs_that_need_labels_count_the_slots_of_the_nodes_that_have_them(api, cast, settings):
    settings.ADMIT_AHEAD = 0
    Node.objects.create(name="a", queues=["cpu"], concurrency=1, labels={"gpu": "a100"})
    Node.objects.create(name="b", queues=["cpu"], concurrency=4)
    jobs = post_json(api, [{"kind": "diag.noop", "labels": {"gpu": "a100"}}] * 3).json()
    assert [j["state"] for j in jobs] == ["queued", "pending", "pending"]
    assert jobs[1]["message"] == "queue cpu: every slot of the nodes with gpu=a100 is taken"
    plain = post_json(client_for(cast.bob), {"kind": "diag.noop"}).json()
    assert plain["state"] == "queued"  # node b has room for it


def test_a_queue_whose_nodes_are_all_offline_admits_nothing(api):
    Node.objects.create(name="c1", queues=["cpu"], concurrency=2, state="offline")
    job = post_json(api, {"kind": "diag.noop"}).json()
    assert job["state"] == "pending"
    assert job["message"] == "queue cpu: no node serving it is online"
    Node.objects.filter(name="c1").update(state="online")
    admission.admit()
    assert Job.objects.get(pk=job["id"]).state == "queued"


def test_a_job_cancelled_while_a_pass_runs_is_not_sent(api, cast):
    Team.objects.filter(pk=cast.ml.pk).update(max_running_jobs=0)
    job = Job.objects.get(pk=post_json(api, SLEEP).json()["id"])
    Job.objects.filter(pk=job.pk).update(state=JobState.CANCELLED)  # meanwhile
    assert lifecycle.admit([job], job.created_at) == []
    assert Job.objects.get(pk=job.pk).state == JobState.CANCELLED


def test_a_fan_outs_partitions_hold_what_their_parent_asked_for(cast):
    from jobs import fanout
    from jobs.broadcast import Outbox
    from jobs.ingest import JOB_FIELDS

    Node.objects.create(name="g1", queues=["gpu"], concurrency=2, labels={"gpu": "a100"})
    spec = services.validate_spec({"kind": "diag.fanout", "queue": "gpu", "gpus": 2,
                                   "labels": {"gpu": "a100"}}, owner=cast.alice)
    [parent] = services.submit_jobs(owner=cast.alice, specs=[spec])
    row = Job.objects.filter(pk=parent.pk).values(*JOB_FIELDS).get()
    children = fanout.create_children(row, {"kind": "diag.part", "queue": "gpu",
                                            "parts": [{}, {}]}, Outbox(), [], parent.created_at)
    assert [(c.team_id, c.gpus, c.labels) for c in children] == [
        (cast.ml.pk, 2, {"gpu": "a100"})] * 2


def test_an_idempotent_repeat_returns_the_first_job_only_while_it_is_visible(api, cast):
    def send():
        return api.post("/api/v1/jobs/", data=json.dumps(SLEEP), content_type="application/json",
                        HTTP_IDEMPOTENCY_KEY="nightly-1")

    first = send()
    assert first.status_code == 201
    again = send()
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    assert again["Idempotent-Replayed"] == "true"
    Membership.objects.filter(user=cast.alice, team=cast.ml).delete()  # she left ml
    gone = send()
    assert gone.status_code == 400 and gone.json() == {"Idempotency-Key": ["already used"]}
    assert Job.objects.count() == 1
