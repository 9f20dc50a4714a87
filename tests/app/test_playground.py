"""The chat page's files as the app serves them (the page itself runs in tests/test_server_playground.py)."""

import re

PAGE_FILES = ("/playground/app.js", "/playground/style.css")


def test_the_page_and_its_files_are_served_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    # Everything the page loads is one of this server's own files (no CDN, no inline script).
    loaded = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sorted(loaded) == ["/playground/app.js", "/playground/style.css", "data:,"]
    assert "<script>" not in html
    policy = page.headers["Content-Security-Policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"):
        assert directive in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["X-Frame-Options"] == "DENY"
    for path, mimetype in zip(PAGE_FILES, ("text/javascript", "text/css")):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.mimetype == mimetype
        assert response.headers["Content-Security-Policy"] == policy


def test_the_page_needs_no_key_but_the_api_it_calls_does(make_client):
    client = make_client(API_KEYS="sk-page")
    for path in ("/", *PAGE_FILES):
        assert client.get(path).status_code == 200, path
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer sk-page"}).status_code == 200
    # No route other than the page's own opens up.
    assert client.get("/playground/../v1/models").status_code in (401, 404)
    assert client.get("/playground/missing.js").status_code == 404


def test_loading_the_page_does_not_spend_the_rate_limit(make_client):
    client = make_client(RATE_LIMIT="2/minute")
    assert [client.get(path).status_code for path in ("/", *PAGE_FILES) * 3] == [200] * 9
    assert [client.get("/v1/models").status_code for _ in range(3)] == [200, 200, 429]


def test_playground_off_makes_the_root_a_json_404(make_client):
    client = make_client(PLAYGROUND=False)
    for path in ("/", *PAGE_FILES):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.get_json()["error"]["code"] == "not_found"
        assert "Content-Security-Policy" not in response.headers


def test_the_page_is_not_part_of_the_api_description(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    assert "/v1/chat/completions" in paths
    assert not [path for path in paths if path == "/" or path.startswith("/playground")]


def test_playground_is_on_by_default_and_off_with_0(monkeypatch):
    import importlib

    import app.config

    try:
        monkeypatch.delenv("PLAYGROUND", raising=False)
        assert importlib.reload(app.config).Config.PLAYGROUND is True
        monkeypatch.setenv("PLAYGROUND", "0")
        assert importlib.reload(app.config).Config.PLAYGROUND is False
    finally:
        monkeypatch.undo()
        importlib.reload(app.config)
