"""Behind HTTPS: HTTPS=1 turns on secure cookies, HSTS, the redirect from plain HTTP and the
proxy header, so that `check --deploy` with DEBUG=0 finds nothing; every page carries a
Content-Security-Policy that allows no inline script, and no page has one."""

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from jobs.models import JobState
from nodes.models import Node
from schedules import services as schedules
from tests.factories import make_job

ROOT = Path(__file__).resolve().parent.parent


def manage(*args, **env):
    environment = {**os.environ, "DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(50),
                   "PYTHONPATH": str(ROOT), **env}
    environment.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=120)


def test_check_deploy_with_https_on_reports_nothing():
    result = manage("check", "--deploy", "--fail-level", "WARNING", HTTPS="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_without_https_names_what_is_missing():
    result = manage("check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr + result.stdout


PROBE = """
import json
from django.test import Client
client = Client()
plain = client.get("/accounts/login/")
secure = client.get("/accounts/login/", secure=True)
forwarded = client.get("/accounts/login/", headers={"X-Forwarded-Proto": "https"})
print(json.dumps({
    "plain": [plain.status_code, plain.get("Location")],
    "hsts": secure.get("Strict-Transport-Security"),
    "forwarded": forwarded.status_code,
    "csrf_cookie_secure": bool(secure.cookies["csrftoken"]["secure"]),
}))
"""


def test_https_on_redirects_plain_http_sends_hsts_and_secure_cookies():
    result = manage("shell", "-c", PROBE, HTTPS="1")
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["plain"] == [301, "https://testserver/accounts/login/"]
    assert seen["hsts"] == "max-age=31536000; includeSubDomains"
    assert seen["forwarded"] == 200  # the proxy said HTTPS: no redirect loop
    assert seen["csrf_cookie_secure"] is True


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)
HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.IGNORECASE)


@pytest.fixture
def pages(cast):
    job = make_job(cast.alice, JobState.PENDING, attempt=0, token="t", team=cast.ml, name="n",
                   timeout_s=60, created_at=timezone.now())
    Node.objects.create(name="w1", last_heartbeat=timezone.now())
    schedule = schedules.create_schedule(user=cast.alice, data={
        "name": "s", "team": "ml", "cron": "0 3 * * *", "kind": "diag.noop"})
    client = Client()
    client.force_login(cast.admin)
    return client, ["/accounts/login/", "/jobs/", "/jobs/new/", f"/jobs/{job.pk}/",
                    "/cluster/", "/nodes/w1/", "/schedules/", "/schedules/new/",
                    f"/schedules/{schedule.pk}/", "/teams/", "/tokens/", "/api/docs/",
                    "/usage/", "/planner/", "/admin/", "/admin/jobs/job/"]


def test_every_page_has_a_policy_without_inline_script_and_no_inline_script(pages):
    client, paths = pages
    created = client.post("/tokens/", {"name": "laptop"}, follow=True)  # shows the new key
    for path, response in [*((p, client.get(p)) for p in paths), ("/tokens/ (POST)", created)]:
        assert response.status_code == 200, path
        policy = response["Content-Security-Policy"]
        directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
        assert directives["script-src"] == "'self'", path
        assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
        html = response.content.decode()
        assert not INLINE_SCRIPT.search(html), f"{path}: {INLINE_SCRIPT.search(html).group()}"
        assert not HANDLER.search(html), f"{path}: {HANDLER.search(html).group()}"


def test_the_api_docs_start_from_a_script_file(pages):
    client, _ = pages
    html = client.get("/api/docs/").content.decode()
    script = re.search(r'<script src="([^"]*\?script=[^"]*)"', html)
    assert script, html
    response = client.get(script.group(1).replace("&amp;", "&"))
    assert response.status_code == 200 and "SwaggerUIBundle" in response.content.decode()
