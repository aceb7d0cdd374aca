"""The web console's static file server: serves the built single-page app (web/dist) and a
`/config.json` that tells it where the gateway is.

The console is only files; everything it shows comes from the public API through Envoy
(gRPC-Web), so this server holds no state, proxies nothing and never sees a passphrase,
a token or a document. It must never serve anything outside CONSOLE_DIST.

    python -m runtime.console      listens on LISTEN_HOST:PORT (default CONSOLE_PORT, 3000)

The gateway URL is CONSOLE_GATEWAY_URL when set ("/" for the same origin, behind an ingress
that routes both); otherwise the gateway port on the host name the browser used to reach
the console, so a console opened as http://localhost:3000 talks to http://localhost:8080.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import signal
import sys
import threading
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx

from runtime.config import Settings, load_settings
from runtime.logs import configure_logging

log = logging.getLogger("contextcache.console")

# How runtime/stack.py starts this server (with PORT set to CONSOLE_PORT).
ARGV = [sys.executable, "-m", "runtime.console"]

_HOST_NAME = re.compile(r"^[A-Za-z0-9.\-]+$|^\[[0-9A-Fa-f:.]+\]$")


def gateway_url(settings: Settings, host_header: str | None) -> str:
    """The gateway URL for a browser that asked for the console with this Host header."""
    if settings.console_gateway_url:
        return settings.console_gateway_url
    hostname = urlsplit(f"//{host_header or ''}").hostname or ""
    if ":" in hostname:  # an IPv6 literal: urlsplit drops the brackets
        hostname = f"[{hostname}]"
    if not _HOST_NAME.match(hostname):
        hostname = "127.0.0.1"
    return f"http://{hostname}:{settings.gateway_port}"


def content_security_policy(gateway: str) -> str:
    """Scripts and styles from this origin only; network calls to this origin and the gateway."""
    parts = urlsplit(gateway)
    connect = "'self'" + (f" {parts.scheme}://{parts.netloc}" if parts.netloc else "")
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src {connect}; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    )


class ConsoleRequestHandler(SimpleHTTPRequestHandler):
    def version_string(self) -> str:
        return "contextcache-console"  # not the Python version

    def __init__(self, *args: object, settings: Settings, **kwargs: object) -> None:
        self.settings = settings
        super().__init__(*args, directory=str(settings.console_dist), **kwargs)  # type: ignore[arg-type]

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/config.json":
            self._send_config()
        elif path == "/healthz":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
        else:
            super().do_GET()

    def do_HEAD(self) -> None:
        if urlsplit(self.path).path in {"/config.json", "/healthz"}:
            self.send_error(HTTPStatus.METHOD_NOT_ALLOWED)
        else:
            super().do_HEAD()

    def list_directory(self, path: str) -> None:  # type: ignore[override]
        """No directory listings: the app is served by name."""
        self.send_error(HTTPStatus.NOT_FOUND)

    def end_headers(self) -> None:
        path = urlsplit(self.path).path
        # Vite names assets by content hash: they never change. Everything else is revalidated.
        if path.startswith("/assets/"):
            self.send_header("Cache-Control", "public, max-age=31536000, immutable")
        else:
            self.send_header("Cache-Control", "no-cache")
        gateway = gateway_url(self.settings, self.headers.get("Host"))
        self.send_header("Content-Security-Policy", content_security_policy(gateway))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        super().end_headers()

    def _send_config(self) -> None:
        config = {"gatewayUrl": gateway_url(self.settings, self.headers.get("Host"))}
        self._send(HTTPStatus.OK, json.dumps(config).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.info("%s %s", self.address_string(), format % args)


def is_built(settings: Settings) -> bool:
    return (settings.console_dist / "index.html").is_file()


def url(settings: Settings) -> str:
    """Where a browser on this machine opens the console."""
    wildcard = settings.listen_host in {"0.0.0.0", "::", ""}  # noqa: S104 — a comparison
    return f"http://{'127.0.0.1' if wildcard else settings.listen_host}:{settings.console_port}"


def with_own_origins(settings: Settings) -> Settings:
    """Settings whose CORS origins also allow this console, whatever its port."""
    origins = settings.cors_origin_list
    if "*" in origins:
        return settings
    ours = [url(settings), f"http://localhost:{settings.console_port}"]
    added = [origin for origin in ours if origin not in origins]
    return settings.model_copy(update={"cors_origins": ",".join(origins + added)})


def serving(port: int, timeout: float = 1.0) -> bool:
    """Whether a console server answers its health check on this port of this machine."""
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=timeout)
    except httpx.HTTPError:
        return False
    return response.status_code == HTTPStatus.OK


def make_server(settings: Settings, host: str, port: int) -> ThreadingHTTPServer:
    handler = functools.partial(ConsoleRequestHandler, settings=settings)
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main() -> int:
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level, "console")
    if not is_built(settings):
        print(
            f"The web console is not built ({settings.console_dist}/index.html is missing): "
            "run `make install`",
            file=sys.stderr,
        )
        return 2
    port = settings.port or settings.console_port
    server = make_server(settings, settings.listen_host, port)

    def stop(*_: object) -> None:
        # shutdown() waits for serve_forever() to return: call it from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("serving %s on http://%s:%d", settings.console_dist, settings.listen_host, port)
    with server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
