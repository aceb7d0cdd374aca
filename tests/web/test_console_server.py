"""The console's file server (runtime/console.py) over HTTP: the app's files, a /config.json
naming the gateway, strict headers, nothing outside the built app; and the stack's CORS
origins including the console it serves."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runtime import console
from runtime.config import Settings
from runtime.ports import free_port


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("console")
    built = tmp_path / "dist"
    (built / "assets").mkdir(parents=True)
    (built / "index.html").write_text("<!doctype html><title>ContextCache console</title>")
    (built / "assets" / "index-abc123.js").write_text("console.log('app')")
    (tmp_path / "secret.txt").write_text("outside the app")
    return built


def serve(settings: Settings) -> Iterator[str]:
    server = console.make_server(settings, "127.0.0.1", free_port())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def base_url(dist: Path) -> Iterator[str]:
    yield from serve(Settings(console_dist=dist, gateway_port=18080))


def test_serves_the_app_with_strict_headers(base_url):
    response = httpx.get(base_url)
    assert response.status_code == 200
    assert "ContextCache console" in response.text
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-content-type-options"] == "nosniff"
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "connect-src 'self' http://127.0.0.1:18080" in policy
    asset = httpx.get(f"{base_url}/assets/index-abc123.js")
    assert asset.status_code == 200
    assert "immutable" in asset.headers["cache-control"]


@pytest.mark.parametrize(
    ("host", "gateway"),
    [
        ("127.0.0.1:3000", "http://127.0.0.1:18080"),
        ("localhost:3000", "http://localhost:18080"),
        ("console.example:80", "http://console.example:18080"),
        ("[::1]:3000", "http://[::1]:18080"),
        ("bad host<script>", "http://127.0.0.1:18080"),
    ],
)
def test_config_names_the_gateway_on_the_host_the_browser_used(base_url, host, gateway):
    response = httpx.get(f"{base_url}/config.json", headers={"Host": host})
    assert response.json() == {"gatewayUrl": gateway}
    assert response.headers["cache-control"] == "no-cache"


def test_config_gives_the_configured_gateway_url(dist):
    settings = Settings(console_dist=dist, console_gateway_url="https://api.example")
    for base_url in serve(settings):
        response = httpx.get(f"{base_url}/config.json")
        assert response.json() == {"gatewayUrl": "https://api.example"}
        assert (
            "connect-src 'self' https://api.example;" in response.headers["content-security-policy"]
        )


@pytest.mark.parametrize("path", ["/assets/", "/../secret.txt", "/%2e%2e/secret.txt", "/nope"])
def test_nothing_outside_the_built_app_and_no_listings(base_url, path):
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    connection.request("GET", path)  # sent as written: httpx would normalize the dots
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status == 404
    assert b"outside the app" not in body


def test_health_check(base_url):
    response = httpx.get(f"{base_url}/healthz")
    assert response.status_code == 200
    assert console.serving(int(base_url.rpartition(":")[2]))
    assert not console.serving(free_port())


def test_the_stack_allows_its_own_console_origin():
    settings = Settings(cors_origins="https://app.example", console_port=4123)
    assert console.with_own_origins(settings).cors_origin_list == [
        "https://app.example",
        "http://127.0.0.1:4123",
        "http://localhost:4123",
    ]
    default = Settings(console_port=3000)  # already allowed by default
    assert console.with_own_origins(default).cors_origin_list == default.cors_origin_list
    anyone = Settings(cors_origins="*")
    assert console.with_own_origins(anyone).cors_origin_list == ["*"]
