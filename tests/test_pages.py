"""The browser's pages, rendered in-process: login, submit form, list, job page, cancel."""

import pytest
from django.test import Client

from jobs.models import Job, JobState
from tests.factories import make_job


@pytest.fixture
def alice(cast):
    client = Client()
    client.force_login(cast.alice)
    return client


def test_pages_ask_for_a_login_first(db):
    response = Client().get("/jobs/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_the_login_page_renders(db):
    response = Client().get("/accounts/login/")
    assert response.status_code == 200 and b'name="password"' in response.content


def test_the_submit_form_is_built_from_the_kinds_parameters(alice):
    html = alice.get("/jobs/new/?kind=diag.sleep").content.decode()
    assert 'name="param-seconds"' in html and 'type="number"' in html
    assert 'name="param-fail"' in html and 'type="checkbox"' in html
    assert "diag.noop" in html  # offered in the kind picker


def test_a_valid_form_submits_the_job_and_opens_its_page(alice):
    response = alice.post("/jobs/new/", {"kind": "diag.sleep", "name": "from the form",
                                         "param-seconds": "2", "param-fail": "on"})
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"
    assert job.params == {"seconds": 2.0, "fail": True, "ignore_cancel": False, "note": ""}
    assert job.name == "from the form" and job.state == JobState.QUEUED


@pytest.mark.parametrize(("seconds", "message"), [
    ("-5", "must be at least 0"), ("abc", "must be a number"), ("1e999", "must be a number")])
def test_a_bad_form_shows_the_error_beside_the_field_and_submits_nothing(alice, seconds, message):
    response = alice.post("/jobs/new/", {"kind": "diag.sleep", "param-seconds": seconds})
    assert response.status_code == 400
    html = response.content.decode()
    assert f'data-error="seconds">{message}' in html
    assert Job.objects.count() == 0


def test_an_empty_field_takes_the_kinds_default(alice):
    alice.post("/jobs/new/", {"kind": "diag.sleep", "param-seconds": ""})
    assert Job.objects.get().params["seconds"] == 5.0


def test_the_list_shows_my_jobs_only(alice, cast):
    make_job(cast.alice, JobState.PENDING, attempt=0, team=cast.ml, name="mine", timeout_s=5)
    make_job(cast.bob, JobState.PENDING, attempt=0, team=cast.etl, name="bobs", timeout_s=5)
    html = alice.get("/jobs/").content.decode()
    assert "mine" in html and "bobs" not in html


def test_someone_elses_job_page_is_not_found(alice, cast):
    job = make_job(cast.bob, JobState.PENDING, attempt=0, team=cast.etl, timeout_s=5)
    assert alice.get(f"/jobs/{job.pk}/").status_code == 404
    assert alice.post(f"/jobs/{job.pk}/cancel/").status_code == 404


def test_user_text_on_the_job_page_is_escaped(alice, cast):
    job = make_job(cast.alice, JobState.PENDING, attempt=0, team=cast.ml, timeout_s=5,
                   name="<script>alert(1)</script>")
    html = alice.get(f"/jobs/{job.pk}/").content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_cancel_button_cancels_a_queued_job(alice, cast):
    job = make_job(cast.alice, JobState.QUEUED, token="t", team=cast.ml, timeout_s=5)
    response = alice.post(f"/jobs/{job.pk}/cancel/")
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED


def test_the_admin_lists_jobs_and_nodes(cast):
    client = Client()
    client.force_login(cast.admin)
    make_job(cast.alice, JobState.PENDING, attempt=0, team=cast.ml, timeout_s=5)
    assert client.get("/admin/jobs/job/").status_code == 200
    assert client.get("/admin/nodes/node/").status_code == 200


def test_lists_and_optional_fields_are_typed_in_the_form(alice):
    html = alice.get("/jobs/new/?kind=diag.fanout").content.decode()
    assert 'name="param-part_queue" value=""' in html  # no value shows nothing, not "None"
    assert 'name="param-fail_first_attempt" value=""' in html
    response = alice.post("/jobs/new/", {"kind": "diag.fanout", "param-parts": "3",
                                         "param-seconds": "0", "param-part_queue": "",
                                         "param-fail_first_attempt": "0, 2"})
    job = Job.objects.get()
    assert response.status_code == 302
    assert job.params == {"parts": 3, "seconds": 0.0, "fail_first_attempt": [0, 2],
                          "part_queue": None}
    bad = alice.post("/jobs/new/", {"kind": "diag.fanout", "param-parts": "3",
                                    "param-seconds": "0", "param-fail_first_attempt": "0, x"})
    assert bad.status_code == 400 and "each item must be a number" in bad.content.decode()


def test_a_failed_job_offers_retry_which_opens_the_new_job(alice, cast):
    job = make_job(cast.alice, JobState.FAILED, attempt=0, team=cast.ml, kind="diag.sleep",
                   timeout_s=5, params={"seconds": 1})
    html = alice.get(f"/jobs/{job.pk}/").content.decode()
    assert 'id="retry-form"' in html and 'id="retry-form" hidden' not in html
    response = alice.post(f"/jobs/{job.pk}/retry/")
    new = Job.objects.exclude(pk=job.pk).get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/{new.pk}/"
    assert (new.kind, new.params["seconds"]) == ("diag.sleep", 1.0)


def test_retry_is_hidden_while_a_job_runs_and_refused_to_others(alice, cast):
    job = make_job(cast.alice, JobState.QUEUED, token="t", team=cast.ml, timeout_s=5)
    assert 'id="retry-form" hidden' in alice.get(f"/jobs/{job.pk}/").content.decode()
    bob = Client()
    bob.force_login(cast.bob)
    assert bob.post(f"/jobs/{job.pk}/retry/").status_code == 404
    assert alice.get(f"/jobs/{job.pk}/retry/").status_code == 405


def test_a_cancelled_job_says_who_cancelled_it_and_asks_first(alice, cast):
    job = make_job(cast.alice, JobState.QUEUED, token="t", team=cast.ml, timeout_s=5)
    html = alice.get(f"/jobs/{job.pk}/").content.decode()
    assert f'data-confirm="Cancel job {job.pk}?' in html
    alice.post(f"/jobs/{job.pk}/cancel/")
    html = alice.get(f"/jobs/{job.pk}/").content.decode()
    assert 'id="job-cancelled-by"' in html and "<strong>alice</strong>" in html


def test_parameters_and_results_are_shown_as_json(alice, cast):
    job = make_job(cast.alice, JobState.SUCCEEDED, attempt=0, team=cast.ml, timeout_s=5,
                   params={"flag": True, "none": None, "name": "x"}, result={"ok": False})
    html = alice.get(f"/jobs/{job.pk}/").content.decode()
    params = html[html.index('id="job-params">'):].split("</pre>")[0]
    assert "&quot;flag&quot;: true" in params and "&quot;none&quot;: null" in params
    assert "True" not in params and "None" not in params
    assert "&quot;ok&quot;: false" in html and 'data-copy="job-params"' in html


def _jobs(cast, count, **fields):
    return [make_job(cast.alice, JobState.PENDING, attempt=0, team=cast.ml, timeout_s=5,
                     **{"kind": "diag.noop", "name": f"job {i}", **fields})
            for i in range(count)]


def _listed(html: str) -> list[int]:
    import re

    return [int(i) for i in re.findall(r'<tr data-job="(\d+)">', html)]


def test_the_job_list_filters_by_kind_and_name_on_the_server(alice, cast):
    sleeps = _jobs(cast, 2, kind="diag.sleep")
    _jobs(cast, 2)
    nightly = make_job(cast.alice, JobState.PENDING, attempt=0, team=cast.ml, timeout_s=5,
                       name="Nightly load")
    assert _listed(alice.get("/jobs/?kind=diag.sleep").content.decode()) == [
        j.pk for j in reversed(sleeps)]
    assert _listed(alice.get("/jobs/?q=nightly").content.decode()) == [nightly.pk]
    html = alice.get("/jobs/?q=nightly&kind=diag.sleep").content.decode()
    assert _listed(html) == [] and "No job matches" in html
    assert 'value="nightly"' in html  # the filter stays in its box


def test_the_job_list_pages_by_id_both_ways_and_hides_partitions(alice, cast):
    jobs = _jobs(cast, 120)
    make_job(cast.alice, JobState.PENDING, attempt=0, team=cast.ml, timeout_s=5, parent=jobs[0],
             partition=0)
    first = alice.get("/jobs/").content.decode()
    ids = [j.pk for j in reversed(jobs)]
    assert _listed(first) == ids[:50]
    assert f"from={ids[49]}" in first and 'id="page-next"' in first
    second = alice.get(f"/jobs/?sort=newest&from={ids[49]}").content.decode()
    assert _listed(second) == ids[50:100] and 'id="page-first"' in second
    third = alice.get(f"/jobs/?sort=newest&from={ids[99]}").content.decode()
    assert _listed(third) == ids[100:] and 'id="page-next"' not in third
    oldest = alice.get("/jobs/?sort=oldest").content.decode()
    assert _listed(oldest) == [j.pk for j in jobs[:50]]
    for bad in ("from=abc", "from=-3", "sort=nope", "state=nope", "kind=nope"):
        assert alice.get(f"/jobs/?{bad}").status_code == 200


def test_the_job_list_shows_team_owner_and_duration(alice, cast):
    from datetime import timedelta

    from django.utils import timezone

    now = timezone.now()
    job = make_job(cast.alice, JobState.SUCCEEDED, attempt=0, team=cast.ml, timeout_s=5,
                   started_at=now - timedelta(minutes=3), finished_at=now)
    html = alice.get("/jobs/").content.decode()
    row = html[html.index(f'<tr data-job="{job.pk}">'):].split("</tr>")[0]
    assert "<td>ml</td>" in row and "<td>alice</td>" in row and ">3 min 0 s<" in row


def test_the_page_log_has_times_and_marks_where_each_attempt_begins(alice, cast):
    from jobs.models import LogLine

    job = make_job(cast.alice, JobState.RUNNING, attempt=2, token="t", team=cast.ml,
                   kind="diag.sleep", timeout_s=5)
    for attempt in (1, 2):
        LogLine.objects.create(job=job, attempt=attempt, seq=1, text="sleeping 120 s",
                               ts=job.created_at)
    html = alice.get(f"/jobs/{job.pk}/").content.decode()
    log = html[html.index('id="job-log"'):].split("</pre>")[0]
    assert log.count("attempt-mark") == 2
    assert log.index("── attempt 1 ──") < log.index("── attempt 2 ──")
    import re

    assert len(re.findall(r'<span class="ts"[^>]*>\d\d:\d\d:\d\d</span> sleeping 120 s', log)) == 2


def test_a_sweeps_page_lists_each_trials_parameters_and_score_with_the_best_marked(alice, cast):
    trials = [{"trial": i, "params": {"learning_rate": lr, "max_depth": depth},
               "val_score": score, "iterations": 100, "seconds": 2.5, "job": None}
              for i, (lr, depth, score) in enumerate([(0.1, 3, 0.71), (0.3, None, 0.74)])]
    job = make_job(cast.alice, JobState.SUCCEEDED, attempt=0, team=cast.ml, kind="train.sweep",
                   queue="train", timeout_s=5,
                   result={"trials": trials, "metric": "accuracy",
                           "best": {"trial": 1, "val_score": 0.74}})
    html = alice.get(f"/jobs/{job.pk}/").content.decode()
    table = html[html.index('id="sweep-trials"'):].split("</table>")[0]
    assert "<th data-sort=\"text\">learning_rate</th>" in table and ">accuracy</th>" in table
    assert "<code>0.3</code>" in table and "<code>null</code>" in table
    best = table[table.index('id="sweep-best"'):].split("</tr>")[0]
    assert "0.7400" in best and ">best<" in best
    assert "<h2>Trials" in html and "<h2>Partitions" not in html


def test_a_sweeps_children_are_trials_on_their_pages_and_in_their_names(alice, cast):
    from jobs import lifecycle
    from workers.kinds import get_kind

    sweep = Job.objects.create(owner=cast.alice, team=cast.ml, kind="train.sweep", queue="train",
                               name="tuning", timeout_s=5, state=JobState.RUNNING, attempt=1,
                               token="t")
    fanout = Job.objects.create(owner=cast.alice, team=cast.ml, kind="diag.fanout",
                                queue="cpu", name="flights", timeout_s=5,
                                state=JobState.RUNNING, attempt=1, token="u")
    row = {"id": sweep.pk, "name": "tuning", "kind": "train.sweep", "owner_id": cast.alice.pk,
           "team_id": cast.ml.pk, "labels": {}, "cpus": 1, "gpus": 0, "max_attempts": 2,
           "timeout_s": 5, "queue": "train"}
    kind = get_kind("train.tabular")
    [trial] = lifecycle.add_partitions(row, kind, {0: {}}, "train", sweep.created_at,
                                       word=get_kind("train.sweep").part_word)
    [part] = lifecycle.add_partitions({**row, "id": fanout.pk, "name": "flights"}, kind,
                                      {0: {}}, "train", sweep.created_at)
    assert (trial.name, part.name) == ("tuning · trial 0", "flights · part 0")
    html = alice.get(f"/jobs/{trial.pk}/").content.decode()
    assert f'<span class="label">Trial</span><a href="/jobs/{sweep.pk}/">0 of job' in html
    html = alice.get(f"/jobs/{part.pk}/").content.decode()
    assert f'<span class="label">Partition</span><a href="/jobs/{fanout.pk}/">0 of job' in html
    assert "<h2>Partitions" in alice.get(f"/jobs/{fanout.pk}/").content.decode()
