"""Static files: once collected, hashed names cached for a year and a compressed copy for
browsers that take one; before any collectstatic, plain names that still load."""

import re

from django.core.management import call_command
from django.test import Client, override_settings


def test_without_a_collectstatic_pages_load_their_files_by_plain_name(cast, tmp_path):
    with override_settings(STATIC_ROOT=tmp_path / "never-collected"):
        client = Client()
        client.force_login(cast.alice)
        html = client.get("/jobs/").content.decode()
        assert '<link rel="stylesheet" href="/static/portal/app.css">' in html
        response = client.get("/static/portal/app.css")
        assert response.status_code == 200
        assert b".topbar" in b"".join(response.streaming_content)
        assert "max-age=" in response["Cache-Control"]


def test_collected_files_are_hashed_compressed_and_cached_for_good(cast, tmp_path):
    with override_settings(STATIC_ROOT=tmp_path):
        call_command("collectstatic", "--noinput", verbosity=0)
        client = Client()
        client.force_login(cast.alice)
        html = client.get("/jobs/").content.decode()
        css = re.search(r'href="(/static/portal/app\.[0-9a-f]{12}\.css)"', html)
        assert css, html[:600]
        plain = client.get(css.group(1))
        assert plain.status_code == 200 and "immutable" in plain["Cache-Control"]
        assert "max-age=315360000" in plain["Cache-Control"]
        packed = client.get(css.group(1), HTTP_ACCEPT_ENCODING="gzip")
        assert packed["Content-Encoding"] == "gzip"
        assert int(packed["Content-Length"]) < int(plain["Content-Length"])
        plotly = client.get("/static/vendor/plotly.min.js")  # still there by its plain name
        assert plotly.status_code == 200
        page = client.get("/cluster/").content.decode()
        js = re.search(r'src="(/static/vendor/plotly\.min\.[0-9a-f]{12}\.js)"', page).group(1)
        big = client.get(js, HTTP_ACCEPT_ENCODING="gzip")
        assert big["Content-Encoding"] == "gzip" and int(big["Content-Length"]) < 2_000_000
