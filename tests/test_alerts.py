"""Alerts: rules open incidents once, resolve them when the condition clears, and tell people
(email through Django's backend, a webhook to a real local HTTP server) once per incident."""

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from alerts import evaluate as evaluation
from alerts import notify
from alerts.evaluate import evaluate, open_alert
from alerts.models import Alert, AlertRule
from jobs.models import Job, JobState
from nodes.models import Node, NodeState
from portal.reconciler import Reconciler
from tests.factories import make_job

# Every test here records what would be broadcast instead of sending it.
pytestmark = pytest.mark.usefixtures("published")


def alert_events(published) -> list[dict]:
    return [event for groups in published for event in groups.get("alerts", [])]


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.server.received.append((status, body))
        self.send_response(status)
        if self.server.location:
            self.send_header("Location", self.server.location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    server.received, server.statuses, server.location = [], [], None
    server.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def inside_receiver():
    """A receiver on 127.0.0.1, without ALERT_WEBHOOK_ALLOW_PRIVATE."""
    server = receiver()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def webhook(settings):
    """A webhook receiver on 127.0.0.1 (so ALERT_WEBHOOK_ALLOW_PRIVATE is on): `received`
    holds (status answered, JSON body); set `statuses` to answer with those codes first."""
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True
    server = receiver()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def outbox(settings, mailoutbox):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    return mailoutbox


@pytest.fixture
def make_rule(db):
    """Rules of the test's own: the default ones would fire as well."""
    AlertRule.objects.all().delete()

    def make(kind, **fields):
        return AlertRule.objects.create(name=f"{kind} rule", kind=kind, **fields)

    return make


@pytest.fixture
def run_pass(django_capture_on_commit_callbacks):
    """One evaluation, committed: its broadcast and notifications run as they would live."""
    def run(now=None):
        with django_capture_on_commit_callbacks(execute=True):
            return evaluate(now or timezone.now())

    return run


def job(owner, *, state=JobState.QUEUED, ago_min=0, queue="etl", **fields):
    at = timezone.now() - timedelta(minutes=ago_min)
    return make_job(owner, state, attempt=0, name="nightly", queue=queue, created_at=at,
                    dispatched_at=at, **fields)


def test_the_default_rules_watch_everything_and_tell_nobody(db):
    rules = {r.kind: r for r in AlertRule.objects.all()}
    assert set(rules) == {"node_offline", "job_failed", "queue_wait", "job_deadline"}
    assert all(r.enabled and not r.email_to and not r.webhook_url for r in rules.values())
    assert rules["queue_wait"].threshold_minutes == 10
    assert rules["job_deadline"].threshold_minutes == 60
    assert rules["job_failed"].threshold_minutes == 60


def test_an_offline_node_is_one_incident_until_it_is_back(
        make_rule, redis_client, django_capture_on_commit_callbacks, outbox, webhook):
    make_rule("node_offline", email_to="ops@example.com, oncall@example.com",
              webhook_url=webhook.url)
    silent_since = timezone.now() - timedelta(seconds=settings.NODE_OFFLINE_S + 60)
    node = Node.objects.create(name="w3", last_heartbeat=silent_since)
    reconciler = Reconciler()
    with django_capture_on_commit_callbacks(execute=True):
        fired = [reconciler.once()["alerts_fired"] for _ in range(3)]
    assert fired == [1, 0, 0]
    alert = Alert.objects.get()
    assert (alert.key, alert.subject) == ("node:w3", "node w3 offline")
    assert alert.message == f"node w3 offline: no heartbeat since {silent_since:%H:%M:%S}"
    assert alert.notified_at is not None
    assert len(outbox) == 1
    assert outbox[0].subject == "[portal] FIRING: node w3 offline"
    assert outbox[0].to == ["ops@example.com", "oncall@example.com"]
    assert outbox[0].from_email == settings.ALERT_FROM_EMAIL
    assert [(status, body["event"], body["alert"]["subject"])
            for status, body in webhook.received] == [(200, "fired", "node w3 offline")]

    Node.objects.filter(pk=node.pk).update(state=NodeState.ONLINE, last_heartbeat=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        resolved = [reconciler.once()["alerts_resolved"] for _ in range(2)]
    assert resolved == [1, 0]
    alert.refresh_from_db()
    assert alert.resolved_at is not None and alert.resolve_notified_at is not None
    assert [m.subject for m in outbox][1:] == ["[portal] RESOLVED: node w3 offline"]
    assert [body["event"] for _, body in webhook.received] == ["fired", "resolved"]
    assert webhook.received[1][1]["alert"]["resolved_at"] == alert.resolved_at.isoformat()

    # A later outage is a new incident, told about again.
    Node.objects.filter(pk=node.pk).update(last_heartbeat=silent_since)
    with django_capture_on_commit_callbacks(execute=True):
        assert reconciler.once()["alerts_fired"] == 1
    assert Alert.objects.count() == 2
    assert Alert.objects.filter(resolved_at__isnull=True).get().pk != alert.pk
    assert len(outbox) == 3 and len(webhook.received) == 3


def test_a_queue_whose_oldest_job_waits_too_long_fires_until_it_starts(
        cast, make_rule, run_pass):
    make_rule("queue_wait", threshold_minutes=10)
    old = job(cast.alice, ago_min=14, queue="etl")
    job(cast.alice, ago_min=2, queue="etl")
    job(cast.alice, ago_min=2, queue="cpu")
    assert run_pass() == {"alerts_fired": 1, "alerts_resolved": 0}
    alert = Alert.objects.get()
    assert alert.key == "queue:etl"
    assert alert.message == "queue etl: oldest job waited 14 min"
    Job.objects.filter(pk=old.pk).update(state=JobState.RUNNING)
    assert run_pass() == {"alerts_fired": 0, "alerts_resolved": 1}
    assert not Alert.objects.filter(resolved_at__isnull=True).exists()


def test_a_failed_job_is_an_incident_for_its_window(cast, make_rule, run_pass):
    make_rule("job_failed", threshold_minutes=60)
    now = timezone.now()
    failed = job(cast.alice, state=JobState.FAILED, finished_at=now - timedelta(minutes=5),
                 error="ValueError: bad row 17\nTraceback (most recent call last): ...")
    job(cast.alice, state=JobState.FAILED, finished_at=now - timedelta(hours=2), error="old")
    job(cast.alice, state=JobState.SUCCEEDED, finished_at=now)
    assert run_pass(now)["alerts_fired"] == 1
    alert = Alert.objects.get()
    assert alert.key == f"job:{failed.pk}"
    assert alert.message == f"job {failed.pk} (nightly) failed: ValueError: bad row 17"
    assert run_pass(now + timedelta(minutes=30))["alerts_resolved"] == 0
    assert run_pass(now + timedelta(minutes=56))["alerts_resolved"] == 1


def test_a_job_not_finished_after_its_deadline_fires_until_it_ends(cast, make_rule, run_pass):
    make_rule("job_deadline", threshold_minutes=60)
    late = job(cast.alice, state=JobState.RUNNING, ago_min=61)
    job(cast.alice, state=JobState.SUCCEEDED, ago_min=61)
    job(cast.alice, state=JobState.RUNNING, ago_min=30)
    assert run_pass()["alerts_fired"] == 1
    assert Alert.objects.get().message == (
        f"job {late.pk} (nightly) not finished 60 min after submit")
    Job.objects.filter(pk=late.pk).update(state=JobState.SUCCEEDED, finished_at=timezone.now())
    assert run_pass()["alerts_resolved"] == 1


def test_a_disabled_or_deleted_rule_fires_nothing_and_closes_its_alerts(make_rule, run_pass):
    rule = make_rule("node_offline")
    Node.objects.create(name="w3", state=NodeState.OFFLINE, last_heartbeat=timezone.now())
    assert run_pass()["alerts_fired"] == 1
    rule.enabled = False
    rule.save()
    assert run_pass() == {"alerts_fired": 0, "alerts_resolved": 1}
    assert run_pass() == {"alerts_fired": 0, "alerts_resolved": 0}

    other = make_rule("node_offline")
    assert run_pass()["alerts_fired"] == 1
    other.delete()  # its alerts stay, without a rule
    assert run_pass()["alerts_resolved"] == 1
    assert not Alert.objects.filter(resolved_at__isnull=True).exists()
    assert Alert.objects.filter(rule=None).count() == 1
    assert Alert.objects.filter(rule=rule).count() == 1


def test_a_failed_webhook_is_retried_and_delivered_exactly_once(
        make_rule, run_pass, outbox, webhook):
    make_rule("node_offline", email_to="ops@example.com", webhook_url=webhook.url)
    Node.objects.create(name="w3", state=NodeState.OFFLINE, last_heartbeat=timezone.now())
    webhook.statuses = [500]
    run_pass()
    alert = Alert.objects.get()
    assert alert.notified_at is None  # the webhook did not get it: try again
    assert alert.delivered == ["fired:email"]
    run_pass()
    run_pass()
    alert.refresh_from_db()
    assert alert.notified_at is not None
    assert [status for status, _ in webhook.received] == [500, 200]
    assert len(outbox) == 1  # the email got through the first time: not sent again


def test_a_webhook_that_is_not_http_is_refused(make_rule, run_pass, webhook):
    rule = AlertRule(name="x", kind="node_offline", webhook_url="file:///etc/passwd")
    with pytest.raises(ValidationError) as refused:
        rule.full_clean()
    assert "webhook_url" in refused.value.message_dict
    rule.webhook_url = "ftp://example.com/hook"  # URLField alone would take it
    with pytest.raises(ValidationError):
        rule.full_clean()
    rule.webhook_url, rule.email_to = webhook.url, "not an address"
    with pytest.raises(ValidationError) as refused:
        rule.full_clean()
    assert "email_to" in refused.value.message_dict

    # A rule saved without validation still never opens a file.
    make_rule("node_offline", webhook_url="file:///etc/passwd")
    Node.objects.create(name="w3", state=NodeState.OFFLINE, last_heartbeat=timezone.now())
    run_pass()
    assert Alert.objects.get().notified_at is None


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/hook", "http://169.254.169.254/latest/meta-data/",
    "http://localhost:6379/", "http://[::1]:5432/", "http://10.1.2.3/hook",
    "https://192.168.0.10/hook", "http://[::ffff:127.0.0.1]/", "http://0.0.0.0:80/",
    "http://100.64.0.1/",
])
def test_a_webhook_to_an_inside_address_is_refused_after_its_name_is_resolved(
        make_rule, url):
    rule = make_rule("node_offline", webhook_url=url)
    alert = Alert.objects.create(rule=rule, kind="node_offline", key="node:w3",
                                 subject="node w3 offline", message="x",
                                 fired_at=timezone.now())
    with pytest.raises(notify.WebhookRefused, match="not a public address"):
        notify.post_webhook(alert, "fired")


def test_an_inside_receiver_gets_nothing_unless_the_site_allows_it(
        make_rule, run_pass, inside_receiver, settings):
    make_rule("node_offline", webhook_url=inside_receiver.url)
    Node.objects.create(name="w3", state=NodeState.OFFLINE, last_heartbeat=timezone.now())
    run_pass()
    assert inside_receiver.received == []
    assert Alert.objects.get().notified_at is None  # tried again on the next pass

    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True
    run_pass()
    assert [body["event"] for _, body in inside_receiver.received] == ["fired"]
    assert Alert.objects.get().notified_at is not None


def test_a_redirect_is_not_followed(make_rule, run_pass, webhook):
    elsewhere = receiver()
    try:
        webhook.statuses, webhook.location = [302], elsewhere.url
        make_rule("node_offline", webhook_url=webhook.url)
        Node.objects.create(name="w3", state=NodeState.OFFLINE, last_heartbeat=timezone.now())
        run_pass()
        assert [status for status, _ in webhook.received] == [302]
        assert elsewhere.received == []
        assert Alert.objects.get().notified_at is None  # a 3xx is no delivery
    finally:
        elsewhere.shutdown()
        elsewhere.server_close()


def test_one_key_has_at_most_one_open_alert(make_rule):
    rule = make_rule("node_offline")
    now = timezone.now()
    first = open_alert(rule, "node:w3", "node w3 offline", "m", now)
    assert first is not None
    assert open_alert(rule, "node:w3", "node w3 offline", "m", now) is None
    assert Alert.objects.filter(resolved_at__isnull=True).count() == 1  # still usable
    Alert.objects.filter(pk=first.pk).update(resolved_at=now)
    assert open_alert(rule, "node:w3", "node w3 offline", "m", now) is not None


@pytest.mark.django_db(transaction=True)
def test_two_reconcilers_at_once_open_one_alert(monkeypatch):
    AlertRule.objects.all().delete()
    AlertRule.objects.create(name="offline", kind="node_offline")
    Node.objects.create(name="w3", state=NodeState.OFFLINE, last_heartbeat=timezone.now())
    both_looked = threading.Barrier(2, timeout=10)
    real_open = evaluation.open_alert

    def open_together(*args):
        both_looked.wait()  # each has seen no open alert for w3
        return real_open(*args)

    monkeypatch.setattr(evaluation, "open_alert", open_together)
    results = []

    def reconciler():
        try:
            results.append(evaluate(timezone.now()))
        finally:
            connection.close()

    threads = [threading.Thread(target=reconciler) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(r["alerts_fired"] for r in results) == [0, 1]
    assert Alert.objects.count() == 1


def test_dashboards_hear_of_alerts_only_after_the_commit(
        make_rule, published, django_capture_on_commit_callbacks):
    make_rule("node_offline")
    Node.objects.create(name="w3", state=NodeState.OFFLINE, last_heartbeat=timezone.now())
    with django_capture_on_commit_callbacks() as callbacks:
        evaluate(timezone.now())
    assert alert_events(published) == []  # not committed yet
    for callback in callbacks:
        callback()
    alert = Alert.objects.get()
    [fired] = alert_events(published)
    assert fired == {"type": "alert.fired", "id": alert.pk, "rule": "node_offline rule",
                     "kind": "node_offline", "subject": "node w3 offline",
                     "message": alert.message, "fired_at": alert.fired_at.isoformat(),
                     "resolved_at": None}


def test_staff_read_alerts_over_the_api_others_may_not(cast, make_rule, run_pass):
    make_rule("node_offline")
    Node.objects.create(name="w3", state=NodeState.OFFLINE, last_heartbeat=timezone.now())
    Node.objects.create(name="w4", state=NodeState.OFFLINE, last_heartbeat=timezone.now())
    run_pass()
    Node.objects.filter(name="w4").update(state=NodeState.ONLINE)
    run_pass()
    staff = APIClient()
    staff.force_authenticate(cast.admin)
    firing = staff.get("/api/v1/alerts/")
    assert firing.status_code == 200
    assert [a["subject"] for a in firing.json()] == ["node w3 offline"]
    assert firing.json()[0]["resolved_at"] is None
    resolved = staff.get("/api/v1/alerts/?state=resolved").json()
    assert [a["subject"] for a in resolved] == ["node w4 offline"]
    assert len(staff.get("/api/v1/alerts/?state=all").json()) == 2
    assert staff.get("/api/v1/alerts/?state=nope").status_code == 400

    alice = APIClient()
    alice.credentials(HTTP_AUTHORIZATION=f"Token {cast.alice_key}")
    assert alice.get("/api/v1/alerts/").status_code == 403
    assert APIClient().get("/api/v1/alerts/").status_code == 401


def test_an_admin_resolves_an_alert_by_hand(cast, make_rule, run_pass, published, client,
                                            django_capture_on_commit_callbacks):
    make_rule("node_offline")
    Node.objects.create(name="w3", state=NodeState.OFFLINE, last_heartbeat=timezone.now())
    run_pass()
    alert = Alert.objects.get()
    client.force_login(cast.admin)
    page = client.get("/admin/alerts/alert/?state=firing")
    assert page.status_code == 200 and b"node w3 offline" in page.content
    assert b"node w3 offline" not in client.get("/admin/alerts/alert/?state=resolved").content
    assert client.get("/admin/alerts/alertrule/add/").status_code == 200
    refused = client.post("/admin/alerts/alertrule/add/", {
        "name": "bad", "kind": "node_offline", "threshold_minutes": 0,
        "webhook_url": "ftp://example.com/x"})
    assert refused.status_code == 200 and b"Only http" in refused.content
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/admin/alerts/alert/",
                               {"action": "resolve", "_selected_action": [alert.pk]})
    assert response.status_code == 302
    alert.refresh_from_db()
    assert alert.resolved_at is not None
    assert [e["type"] for e in alert_events(published)] == ["alert.fired", "alert.resolved"]


class SlowHook(BaseHTTPRequestHandler):
    """Holds every request until the test lets it answer."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.arrived.set()
        self.server.release.wait(30)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.django_db(transaction=True)
def test_a_slow_webhook_holds_neither_the_recovery_loop_nor_housekeeping(monkeypatch,
                                                                          settings):
    """Notifications go out from the bounded pool: the reconciler's passes return while the
    receiver still holds the request, and the incident is marked told once it answers."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True  # the receiver is on 127.0.0.1
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowHook)
    server.arrived, server.release = threading.Event(), threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        AlertRule.objects.all().delete()
        AlertRule.objects.create(name="offline", kind="node_offline",
                                 webhook_url=f"http://127.0.0.1:{server.server_address[1]}/h")
        Node.objects.create(name="w3", state=NodeState.OFFLINE, last_heartbeat=timezone.now())
        reconciler = Reconciler()
        assert reconciler.housekeep(timezone.now())["alerts_fired"] == 1
        assert server.arrived.wait(10), "the webhook was never called"
        reconciler.recover(timezone.now())  # the pool holds the request, not this loop
        assert reconciler.housekeep(timezone.now())["alerts_fired"] == 0
        alert = Alert.objects.get()
        assert alert.notified_at is None  # not told yet: the receiver has not answered
        server.release.set()
        deadline = timezone.now() + timedelta(seconds=20)
        while alert.notified_at is None and timezone.now() < deadline:
            server.arrived.wait(0.1)
            alert.refresh_from_db()
        assert alert.notified_at is not None
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
