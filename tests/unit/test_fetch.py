"""URL fetching against real HTTP(S) servers on 127.0.0.1: limits, redirects, SSRF guard.

Addresses outside loopback appear only as redirect targets or resolver answers that the guard
must refuse before connecting; no test sends a packet anywhere but 127.0.0.1.
"""

from __future__ import annotations

import datetime
import gzip
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.ingest.pipeline.errors import AddressNotAllowed, BodyTooLarge, FetchFailed
from services.ingest.pipeline.fetch import (
    MAX_BYTES,
    AddressPolicy,
    IPAddress,
    UrlFetcher,
    address_kind,
    fetch_url,
)

PAGE = (Path(__file__).resolve().parent.parent / "data" / "article.html").read_bytes()
STREAM_LIMIT = 100 * 1024 * 1024


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[str] = []
        self.streamed = 0
        self.stream_done = threading.Event()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str, status: int = 302) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        if path == "/page":
            self.reply(200, PAGE, "text/html; charset=utf-8")
        elif path == "/host":
            self.reply(200, self.headers["Host"].encode())
        elif path.startswith("/status/"):
            self.reply(int(path.rsplit("/", 1)[1]), b"nope")
        elif path.startswith("/redirect/"):
            left = int(path.rsplit("/", 1)[1])
            if left == 0:
                self.reply(200, b"arrived")
            else:
                self.redirect(f"/redirect/{left - 1}", 301 if left % 2 else 307)
        elif path == "/to":
            self.redirect(query["url"][0])
        elif path.startswith("/bytes/"):
            self.reply(200, b"x" * int(path.rsplit("/", 1)[1]), "application/octet-stream")
        elif path == "/declared-huge":
            self.send_response(200)
            self.send_header("Content-Length", str(50 * 1024 * 1024))
            self.end_headers()
        elif path == "/gzip-bomb":
            body = gzip.compress(b"\0" * (30 * 1024 * 1024))
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif path == "/stream":
            self.stream_without_length()
        elif path == "/slow":
            time.sleep(2)
            self.reply(200, b"late")
        elif path == "/drip":
            self.send_response(200)
            self.end_headers()
            for _ in range(50):
                time.sleep(0.1)
                self.wfile.write(b".")
                self.wfile.flush()
        else:
            self.reply(404, b"unknown route")

    def stream_without_length(self) -> None:
        """Up to 100 MiB with no Content-Length; counts what the client let it send."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        block = b"y" * 65536
        try:
            while self.server.streamed < STREAM_LIMIT:
                self.wfile.write(block)
                self.server.streamed += len(block)
        except OSError:
            pass
        finally:
            self.server.stream_done.set()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def loopback_fetcher(**options: object) -> UrlFetcher:
    return UrlFetcher(allow_loopback=True, **options)  # type: ignore[arg-type]


# Success ---------------------------------------------------------------------------------------


async def test_fetches_body_content_type_and_final_url(server: Server) -> None:
    result = await loopback_fetcher().fetch(f"{server.base}/page")
    assert result.content == PAGE
    assert result.content_type == "text/html; charset=utf-8"
    assert result.final_url == f"{server.base}/page"


async def test_follows_up_to_five_redirects_and_reports_the_final_url(server: Server) -> None:
    result = await loopback_fetcher().fetch(f"{server.base}/redirect/5")
    assert result.content == b"arrived"
    assert result.final_url == f"{server.base}/redirect/0"
    assert len(server.requests) == 6


async def test_body_of_exactly_the_limit_is_accepted(server: Server) -> None:
    result = await loopback_fetcher().fetch(f"{server.base}/bytes/{MAX_BYTES}")
    assert len(result.content) == MAX_BYTES == 10 * 1024 * 1024


async def test_host_name_is_resolved_once_and_the_connection_pinned(server: Server) -> None:
    """A name only our resolver knows: the request can only reach the server through the
    address that was checked, and the server still sees the original Host header."""
    calls: list[str] = []

    async def resolver(host: str, port: int) -> list[IPAddress]:
        calls.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    port = server.server_address[1]
    fetcher = loopback_fetcher(resolver=resolver)
    result = await fetcher.fetch(f"http://docs.example.test:{port}/host")
    assert result.content == f"docs.example.test:{port}".encode()
    assert calls == ["docs.example.test"]


async def test_localhost_tries_each_checked_address(server: Server) -> None:
    """localhost may resolve to ::1 first; the server listens on 127.0.0.1 only."""
    port = server.server_address[1]
    result = await loopback_fetcher().fetch(f"http://localhost:{port}/host")
    assert result.content == f"localhost:{port}".encode()


# Limits ----------------------------------------------------------------------------------------


async def test_body_over_ten_megabytes_stops_reading(server: Server) -> None:
    with pytest.raises(BodyTooLarge) as caught:
        await loopback_fetcher().fetch(f"{server.base}/stream")
    assert "larger than 10 MB" in caught.value.reason
    assert server.stream_done.wait(10)
    # The server could push only what fits in socket buffers past the 10 MB read.
    assert MAX_BYTES < server.streamed < 40 * 1024 * 1024


async def test_declared_oversize_body_is_refused_before_reading(server: Server) -> None:
    with pytest.raises(BodyTooLarge):
        await loopback_fetcher().fetch(f"{server.base}/declared-huge")


async def test_one_byte_over_a_configured_limit_is_refused(server: Server) -> None:
    fetcher = loopback_fetcher(max_bytes=1000)
    assert len((await fetcher.fetch(f"{server.base}/bytes/1000")).content) == 1000
    with pytest.raises(BodyTooLarge, match="larger than"):
        await fetcher.fetch(f"{server.base}/bytes/1001")


async def test_compressed_bomb_is_cut_at_the_decoded_limit(server: Server) -> None:
    with pytest.raises(BodyTooLarge):
        await loopback_fetcher().fetch(f"{server.base}/gzip-bomb")


async def test_server_that_does_not_answer_times_out(server: Server) -> None:
    with pytest.raises(FetchFailed, match=r"did not answer within 0\.3 seconds"):
        await loopback_fetcher(read_timeout=0.3).fetch(f"{server.base}/slow")


async def test_slow_drip_hits_the_total_deadline(server: Server) -> None:
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="took longer than 1 seconds"):
        await loopback_fetcher(total_timeout=1.0).fetch(f"{server.base}/drip")
    assert time.monotonic() - started < 3


async def test_sixth_redirect_is_not_followed(server: Server) -> None:
    with pytest.raises(FetchFailed, match="redirects more than 5 times"):
        await loopback_fetcher().fetch(f"{server.base}/redirect/6")
    assert len(server.requests) == 6


async def test_redirect_limit_is_configurable(server: Server) -> None:
    with pytest.raises(FetchFailed, match="more than 1 times"):
        await loopback_fetcher(max_redirects=1).fetch(f"{server.base}/redirect/2")


# Upstream errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        (404, "Check that the URL is correct"),
        (410, "still exists"),
        (403, "login"),
        (500, "try again later"),
        (503, "try again later"),
    ],
)
async def test_error_status_is_reported_with_a_hint(server: Server, status: int, hint: str) -> None:
    with pytest.raises(FetchFailed) as caught:
        await loopback_fetcher().fetch(f"{server.base}/status/{status}")
    assert f"answered {status}" in caught.value.reason
    assert hint in caught.value.reason


async def test_refused_connection_is_reported() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(FetchFailed, match="refused or the host is unreachable"):
        await loopback_fetcher().fetch(f"http://127.0.0.1:{port}/")


async def test_unresolvable_host_is_reported() -> None:
    async def resolver(host: str, port: int) -> list[IPAddress]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(FetchFailed, match="could not be resolved"):
        await UrlFetcher(resolver=resolver).fetch("https://no-such-host.example.test/")


@pytest.mark.parametrize(
    "url", ["ftp://example.com/file", "file:///etc/passwd", "javascript:alert(1)", "http://"]
)
async def test_only_http_and_https_urls_are_fetched(url: str) -> None:
    with pytest.raises(FetchFailed):
        await UrlFetcher().fetch(url)


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://x/"])
async def test_redirect_to_another_scheme_is_refused(server: Server, target: str) -> None:
    with pytest.raises(FetchFailed, match="only http and https are followed"):
        await loopback_fetcher().fetch(f"{server.base}/to?url={target}")


# SSRF guard ------------------------------------------------------------------------------------


async def test_loopback_is_refused_by_default_and_nothing_is_sent(server: Server) -> None:
    with pytest.raises(AddressNotAllowed, match="loopback") as caught:
        await fetch_url(f"{server.base}/page")
    assert "Use a public URL" in caught.value.reason
    assert server.requests == []


async def test_loopback_is_allowed_when_private_addresses_are(server: Server) -> None:
    result = await fetch_url(f"{server.base}/page", allow_private=True)
    assert result.content == PAGE


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ("http://10.0.0.1/admin", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "cloud metadata"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://0.0.0.0:8080/", "unspecified"),
    ],
)
async def test_redirect_to_a_private_address_is_refused(
    server: Server, target: str, kind: str
) -> None:
    with pytest.raises(AddressNotAllowed) as caught:
        await loopback_fetcher().fetch(f"{server.base}/to?url={target}")
    assert caught.value.reason.startswith("The URL redirected to")
    assert f"to a {kind} network address" in caught.value.reason
    assert len(server.requests) == 1


async def test_metadata_is_refused_even_when_private_addresses_are_allowed(
    server: Server,
) -> None:
    with pytest.raises(AddressNotAllowed, match="cloud metadata"):
        await fetch_url(
            f"{server.base}/to?url=http://169.254.169.254/latest/meta-data/", allow_private=True
        )


async def test_rebinding_on_a_later_hop_is_caught(server: Server) -> None:
    """The name first resolves to loopback (allowed here), then to a private address: the
    redirect back to the same name is checked again and refused."""
    answers = iter(["127.0.0.1", "10.0.0.7"])

    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(next(answers))]

    port = server.server_address[1]
    with pytest.raises(AddressNotAllowed, match="private"):
        await loopback_fetcher(resolver=resolver).fetch(
            f"http://rebind.example.test:{port}/redirect/1"
        )
    assert server.requests == ["/redirect/1"]


async def test_a_name_with_any_private_address_is_refused() -> None:
    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("93.184.215.14"), ipaddress.ip_address("10.1.2.3")]

    with pytest.raises(AddressNotAllowed, match="private"):
        await UrlFetcher(resolver=resolver).fetch("https://mixed.example.test/")


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.0.1", "private"),
        ("fc00::1", "private"),
        ("100.64.0.1", "shared"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("2002:a00:1::", "private"),  # 6to4 around 10.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 around 10.0.0.1
        ("64:ff9b::808:808", None),  # NAT64 around 8.8.8.8
    ],
)
def test_address_kinds(address: str, kind: str | None) -> None:
    assert address_kind(ipaddress.ip_address(address)) == kind


def test_policy_opens_only_what_it_says() -> None:
    loopback, private, metadata = (
        ipaddress.ip_address(a) for a in ("127.0.0.1", "10.0.0.1", "169.254.169.254")
    )
    assert AddressPolicy().refusal(loopback) == "loopback"
    assert AddressPolicy(allow_loopback=True).refusal(loopback) is None
    assert AddressPolicy(allow_loopback=True).refusal(private) == "private"
    assert AddressPolicy(allow_private=True).refusal(private) is None
    assert AddressPolicy(allow_private=True).refusal(loopback) is None
    assert AddressPolicy(allow_private=True).refusal(metadata) == "cloud metadata"


# TLS with a pinned address ---------------------------------------------------------------------


def make_certificate(names: list[str]) -> tuple[bytes, bytes, bytes]:
    """A CA certificate and a server certificate (with key) for `names`, all PEM."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ContextCache test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return (
        ca.public_bytes(serialization.Encoding.PEM),
        server_cert.public_bytes(serialization.Encoding.PEM),
        key_pem,
    )


@pytest.fixture
def tls_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Server, bytes]]:
    ca_pem, cert_pem, key_pem = make_certificate(request.param)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    srv = Server()
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv, ca_pem
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("tls_server", [["tls.example.test"]], indirect=True)
async def test_https_is_verified_against_the_host_name_not_the_pinned_ip(
    tls_server: tuple[Server, bytes],
) -> None:
    srv, ca_pem = tls_server

    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]

    fetcher = loopback_fetcher(
        resolver=resolver, verify=ssl.create_default_context(cadata=ca_pem.decode())
    )
    port = srv.server_address[1]
    result = await fetcher.fetch(f"https://tls.example.test:{port}/host")
    assert result.content == f"tls.example.test:{port}".encode()
    assert result.final_url == f"https://tls.example.test:{port}/host"


@pytest.mark.parametrize("tls_server", [["someone-else.example.test"]], indirect=True)
async def test_https_certificate_for_another_name_is_rejected(
    tls_server: tuple[Server, bytes],
) -> None:
    srv, ca_pem = tls_server

    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]

    fetcher = loopback_fetcher(
        resolver=resolver, verify=ssl.create_default_context(cadata=ca_pem.decode())
    )
    with pytest.raises(FetchFailed, match="connect securely"):
        await fetcher.fetch(f"https://tls.example.test:{srv.server_address[1]}/host")


def test_content_decoding_never_inflates_more_than_it_is_asked_for() -> None:
    """A bomb decoded in bounded steps: httpx inflated each received piece whole (100 MB from
    one 100 KB piece, on the event loop)."""
    from services.ingest.pipeline.fetch import _BoundedDecoder

    bomb = gzip.compress(b"a " * (50 * 1024 * 1024), 9)
    decoder = _BoundedDecoder("gzip")
    pieces = list(decoder.decode(bomb, 10 * 1024 * 1024 + 1))
    assert sum(map(len, pieces)) == 10 * 1024 * 1024 + 1
    assert max(map(len, pieces)) <= 1 << 20
    assert b"".join(_BoundedDecoder("identity").decode(b"plain", 10)) == b"plain"
    with pytest.raises(FetchFailed, match="unsupported content encoding"):
        _BoundedDecoder("br")
