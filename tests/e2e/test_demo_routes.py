"""The demo routes over real HTTP (no browser): the page and its assets, self-contained and public."""

from __future__ import annotations

import re

import httpx
import pytest

from service.demo import STATIC_DIR


@pytest.fixture(scope="module")
def client(demo_server):
    with httpx.Client(base_url=demo_server.base_url, timeout=10) as client:
        yield client


def test_index_is_served_without_a_key_with_a_same_origin_policy(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "connect-src 'self'" in policy and "script-src 'self'" in policy
    assert 'id="ner-text"' in response.text and 'src="static/app.js"' in response.text


@pytest.mark.parametrize(("name", "media_type"), [("app.js", "javascript"), ("style.css", "text/css")])
def test_assets_are_served(client, name, media_type):
    response = client.get(f"/static/{name}")
    assert response.status_code == 200 and media_type in response.headers["content-type"]
    assert response.content == (STATIC_DIR / name).read_bytes()


def test_assets_refer_to_nothing_outside_the_origin():
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), path.name
        assert "@import" not in text and "@font-face" not in text, path.name


def test_unknown_asset_is_404_and_no_path_escape(client):
    assert client.get("/static/nope.js").status_code == 404
    assert client.get("/static/..%2Fdemo.py").status_code in (400, 404)


def test_demo_stays_out_of_the_openapi_schema():
    from tests.e2e.stub_api import create_stub_app

    app, _ = create_stub_app(api_key=None)
    paths = app.openapi_schema.paths or {}
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)
