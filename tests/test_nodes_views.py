"""The cluster's pages: a node's page lists the jobs the user may see; staff drain and undrain
a node from it, audited."""

from django.test import Client

from audit.models import AuditEntry
from jobs.models import JobState
from nodes.models import Node, NodeState
from tests.factories import make_job


def test_the_node_page_lists_only_the_jobs_the_user_may_see(cast, alice):
    Node.objects.create(name="w1")
    make_job(cast.alice, JobState.RUNNING, node="w1", name="alice-job")
    make_job(cast.bob, JobState.RUNNING, node="w1", name="bob-secret")
    html = alice.get("/nodes/w1/").content.decode()
    assert "alice-job" in html and "bob-secret" not in html
    assert alice.get("/nodes/nope/").status_code == 404


def test_staff_drain_and_undrain_a_node_from_its_page(cast):
    node = Node.objects.create(name="w7", state=NodeState.ONLINE)
    staff = Client()
    staff.force_login(cast.admin)
    html = staff.get("/nodes/w7/").content.decode()
    assert 'id="drain-form"' in html and 'data-confirm="Drain w7?' in html
    assert staff.post("/nodes/w7/drain/")["Location"] == "/nodes/w7/"
    node.refresh_from_db()
    assert node.state == NodeState.DRAINING
    assert 'id="undrain-form"' in staff.get("/nodes/w7/").content.decode()
    staff.post("/nodes/w7/undrain/")
    node.refresh_from_db()
    assert node.state == NodeState.ONLINE
    assert set(AuditEntry.objects.filter(via="page").values_list("action", flat=True)) == {
        "node.drain", "node.undrain"}


def test_only_staff_may_drain_and_see_the_buttons(alice, cast):
    Node.objects.create(name="w8", state=NodeState.ONLINE)
    assert 'id="drain-form"' not in alice.get("/nodes/w8/").content.decode()
    assert alice.post("/nodes/w8/drain/").status_code == 403
    assert Node.objects.get(name="w8").state == NodeState.ONLINE
    staff = Client()
    staff.force_login(cast.admin)
    assert staff.post("/nodes/nope/drain/").status_code == 404
    assert staff.get("/nodes/w8/drain/").status_code == 405
