"""The audit trail: entries are written in the changing transaction, read by staff through the
API and the admin (which cannot alter them), and admin saves and deletes are recorded."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.utils import timezone
from rest_framework.test import APIClient

from alerts.models import Alert, AlertRule
from audit.log import record, record_many
from audit.models import AuditEntry
from nodes.models import Node


@pytest.fixture
def rule(db):
    return AlertRule.objects.create(name="disk rule", kind="queue_wait", threshold_minutes=5)


@pytest.fixture
def staff(cast):
    client = APIClient()
    client.force_authenticate(cast.admin)
    return client


@pytest.fixture
def admin_client(client, cast):
    client.force_login(cast.admin)
    return client


def test_record_names_the_actor_the_target_and_the_detail(cast):
    node = Node.objects.create(name="w3")
    entry = record(cast.alice, "node.drain", node, via="api", reason="disk", at=timezone.now())
    entry = AuditEntry.objects.get(pk=entry.pk)
    assert (entry.actor, entry.action, entry.target_type, entry.target_id, entry.target_repr,
            entry.via) == (cast.alice, "node.drain", "node", str(node.pk), "w3", "api")
    assert entry.detail["reason"] == "disk" and isinstance(entry.detail["at"], str)
    assert timezone.now() - entry.at < timedelta(minutes=1)
    # The system, or nobody logged in, is a null actor.
    assert record(None, "node.undrain", node, via="system").actor is None
    assert record(AnonymousUser(), "node.undrain", node, via="page").actor is None


def test_record_refuses_an_unknown_via_or_an_unsaved_target(cast):
    with pytest.raises(ValueError, match="via must be one of"):
        record(cast.alice, "node.drain", Node.objects.create(name="w3"), via="email")
    with pytest.raises(ValueError, match="saved model instance"):
        record(cast.alice, "node.drain", Node(name="w4"), via="api")
    with pytest.raises(ValueError, match="saved model instance"):
        record(cast.alice, "node.drain", "w3", via="api")
    assert not AuditEntry.objects.exists()


def test_record_many_writes_one_entry_per_target(cast, django_assert_num_queries):
    nodes = [Node.objects.create(name=f"w{i}") for i in range(3)]
    with django_assert_num_queries(1):
        entries = record_many(cast.admin, "node.drain", nodes, via="admin", why="upgrade")
    assert all(entry.pk for entry in entries)
    assert sorted(AuditEntry.objects.values_list("target_repr", flat=True)) == ["w0", "w1", "w2"]
    assert {e.detail["why"] for e in AuditEntry.objects.all()} == {"upgrade"}
    with django_assert_num_queries(0):
        assert record_many(cast.admin, "node.drain", [], via="admin") == []


def test_a_rolled_back_change_leaves_no_entry(cast, rule):
    with pytest.raises(RuntimeError), transaction.atomic():
        rule.threshold_minutes = 30
        rule.save()
        record(cast.admin, "alertrule.change", rule, via="api", fields=["threshold_minutes"])
        record_many(cast.admin, "alertrule.change", [rule], via="api")
        raise RuntimeError("the change failed")
    assert not AuditEntry.objects.exists()
    rule.refresh_from_db()
    assert rule.threshold_minutes == 5

    with transaction.atomic():
        record(cast.admin, "alertrule.change", rule, via="api")
    assert AuditEntry.objects.count() == 1


def test_the_api_is_for_staff_only(cast, staff):
    alice = APIClient()
    alice.credentials(HTTP_AUTHORIZATION=f"Token {cast.alice_key}")
    assert alice.get("/api/v1/audit/").status_code == 403
    assert APIClient().get("/api/v1/audit/").status_code == 401
    assert staff.get("/api/v1/audit/").json()["results"] == []


def test_the_api_lists_newest_first_cursor_paginated_and_filtered(cast, staff, rule):
    nodes = [Node.objects.create(name=f"w{i}") for i in range(3)]
    for node in nodes:
        record(cast.alice, "node.drain", node, via="api")
    record(cast.admin, "node.undrain", nodes[0], via="admin")
    record(None, "alertrule.change", rule, via="system", fields=["enabled"])

    page = staff.get("/api/v1/audit/?limit=2").json()
    assert [(e["action"], e["target_repr"]) for e in page["results"]] == [
        ("alertrule.change", "disk rule"), ("node.undrain", "w0")]
    first = page["results"][0]
    assert first["actor"] is None and first["via"] == "system"
    assert first["detail"] == {"fields": ["enabled"]} and first["target_type"] == "alertrule"
    assert page["results"][1]["actor"] == "admin"
    rest = staff.get(page["next"]).json()
    assert [e["target_repr"] for e in rest["results"]] == ["w2", "w1"]
    last = staff.get(rest["next"]).json()
    assert [e["target_repr"] for e in last["results"]] == ["w0"] and last["next"] is None

    def listed(query):
        return [(e["action"], e["target_repr"])
                for e in staff.get(f"/api/v1/audit/?{query}").json()["results"]]

    assert listed("action=node.undrain") == [("node.undrain", "w0")]
    assert listed("actor=alice") == [("node.drain", "w2"), ("node.drain", "w1"),
                                     ("node.drain", "w0")]
    assert listed("actor=nobody") == []
    assert listed(f"target_type=node&target_id={nodes[0].pk}") == [
        ("node.undrain", "w0"), ("node.drain", "w0")]
    assert listed("target_type=alertrule") == [("alertrule.change", "disk rule")]
    assert listed("action=node.drain&actor=admin") == []


def test_the_openapi_schema_describes_the_audit_endpoint(staff):
    schema = staff.get("/api/schema/?format=json").json()
    get = schema["paths"]["/api/v1/audit/"]["get"]
    assert {p["name"] for p in get["parameters"]} >= {
        "action", "target_type", "target_id", "actor", "cursor", "limit"}


def test_the_admin_shows_the_trail_and_cannot_change_it(cast, admin_client, rule):
    entry = record(cast.alice, "alertrule.change", rule, via="api", fields=["name"])
    listing = admin_client.get("/admin/audit/auditentry/")
    assert listing.status_code == 200 and b"alertrule.change" in listing.content
    assert admin_client.get("/admin/audit/auditentry/?q=alice").context["cl"].result_count == 1
    assert admin_client.get(
        f"/admin/audit/auditentry/?q={rule.pk}").context["cl"].result_count == 1
    assert admin_client.get("/admin/audit/auditentry/?via__exact=admin").context[
        "cl"].result_count == 0
    view = admin_client.get(f"/admin/audit/auditentry/{entry.pk}/change/")
    assert view.status_code == 200 and not view.context["has_change_permission"]

    assert admin_client.get("/admin/audit/auditentry/add/").status_code == 403
    assert admin_client.post("/admin/audit/auditentry/add/", {
        "action": "x", "target_type": "x", "target_id": "1", "via": "admin"}).status_code == 403
    assert admin_client.post(f"/admin/audit/auditentry/{entry.pk}/change/", {
        "action": "forged"}).status_code == 403
    assert admin_client.post(f"/admin/audit/auditentry/{entry.pk}/delete/",
                             {"post": "yes"}).status_code == 403
    admin_client.post("/admin/audit/auditentry/", {
        "action": "delete_selected", "_selected_action": [entry.pk], "post": "yes"})
    entry.refresh_from_db()
    assert entry.action == "alertrule.change" and AuditEntry.objects.count() == 1


def test_an_admin_save_of_an_alert_rule_is_recorded(cast, admin_client, rule):
    form = {"name": "disk rule", "kind": "queue_wait", "enabled": "on",
            "threshold_minutes": 30, "email_to": "ops@example.com", "webhook_url": ""}
    response = admin_client.post(f"/admin/alerts/alertrule/{rule.pk}/change/", form)
    assert response.status_code == 302
    entry = AuditEntry.objects.get()
    assert (entry.actor, entry.action, entry.target_type, entry.target_id, entry.via) == (
        cast.admin, "alertrule.change", "alertrule", str(rule.pk), "admin")
    assert sorted(entry.detail["fields"]) == ["email_to", "threshold_minutes"]
    assert "created" not in entry.detail

    # A refused form saves nothing and records nothing.
    refused = admin_client.post(f"/admin/alerts/alertrule/{rule.pk}/change/",
                                {**form, "webhook_url": "ftp://example.com/x"})
    assert refused.status_code == 200 and AuditEntry.objects.count() == 1

    admin_client.post("/admin/alerts/alertrule/add/", {**form, "name": "new rule"})
    added = AuditEntry.objects.first()
    assert added.action == "alertrule.change" and added.detail["created"] is True
    assert added.target_id == str(AlertRule.objects.get(name="new rule").pk)


def test_admin_deletes_are_recorded(cast, admin_client, rule):
    other = AlertRule.objects.create(name="other rule", kind="job_failed")
    third = AlertRule.objects.create(name="third rule", kind="job_failed")
    pk = rule.pk
    assert admin_client.post(f"/admin/alerts/alertrule/{pk}/delete/",
                             {"post": "yes"}).status_code == 302
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.target_id, entry.target_repr, entry.via) == (
        "alertrule.delete", str(pk), "disk rule", "admin")

    admin_client.post("/admin/alerts/alertrule/", {
        "action": "delete_selected", "_selected_action": [other.pk, third.pk], "post": "yes"})
    assert not AlertRule.objects.filter(pk__in=[other.pk, third.pk]).exists()
    assert sorted(AuditEntry.objects.filter(action="alertrule.delete")
                  .values_list("target_repr", flat=True)) == ["disk rule", "other rule",
                                                              "third rule"]


def test_resolving_alerts_in_the_admin_is_recorded(cast, admin_client, rule, monkeypatch):
    from jobs import broadcast

    monkeypatch.setattr(broadcast, "broadcaster", lambda: type("Quiet", (), {
        "publish": lambda self, groups: None})())
    now = timezone.now()
    firing = Alert.objects.create(rule=rule, kind="queue_wait", key="queue:cpu",
                                  subject="cpu waits", message="m", fired_at=now)
    done = Alert.objects.create(rule=rule, kind="queue_wait", key="queue:gpu",
                                subject="gpu waits", message="m", fired_at=now, resolved_at=now)
    response = admin_client.post("/admin/alerts/alert/", {
        "action": "resolve", "_selected_action": [firing.pk, done.pk]})
    assert response.status_code == 302
    entry = AuditEntry.objects.get()
    assert (entry.actor, entry.action, entry.target_id) == (cast.admin, "alert.resolve",
                                                            str(firing.pk))
