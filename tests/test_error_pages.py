"""404 and 500 in the portal's own layout, Swagger with a way back and grouped by tag, and a
favicon."""

from django.test import Client, RequestFactory
from django.views.defaults import server_error


def test_a_page_that_is_not_there_is_a_404_in_the_portals_layout(alice):
    response = alice.get("/no/such/page/")
    html = response.content.decode()
    assert response.status_code == 404
    assert 'class="topbar"' in html and 'id="not-found"' in html and 'href="/jobs/"' in html
    assert alice.get("/jobs/999999/").status_code == 404


def test_a_server_error_is_a_500_page_in_the_portals_layout(db):
    response = server_error(RequestFactory().get("/"))
    html = response.content.decode()
    assert response.status_code == 500
    assert 'class="topbar"' in html and 'id="server-error"' in html and "app.css" in html


def test_swagger_has_a_way_back_and_groups_operations_by_what_they_act_on(alice):
    html = alice.get("/api/docs/").content.decode()
    assert 'class="portal-back"' in html and 'href="/jobs/"' in html
    assert 'id="swagger-ui"' in html  # the page it extends is still there
    schema = alice.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    tags = {tag for ops in schema["paths"].values() for op in ops.values()
            for tag in op.get("tags", [])}
    assert {"jobs", "nodes", "schedules", "cluster", "kinds"} <= tags and "v1" not in tags


def test_every_page_has_a_favicon_that_loads(alice):
    html = alice.get("/jobs/").content.decode()
    assert 'rel="icon" href="/static/portal/favicon.svg"' in html
    assert Client().get("/static/portal/favicon.svg").status_code == 200


def test_pages_without_live_updates_show_no_live_dot(alice):
    html = alice.get("/tokens/").content.decode()
    assert 'id="live-indicator" data-state="off" title="live updates of this page" hidden' in html
    assert "idle" not in html
