"""Fetches a document from an http(s) URL for ingestion, guarded against SSRF.

What it guarantees:
- Every hop (the URL and each redirect) is resolved here, and refused if ANY of its addresses
  is private, loopback, link-local, multicast, reserved, unspecified or a cloud metadata
  endpoint (IPv4-mapped, 6to4, Teredo and NAT64 forms are unwrapped first). `allow_loopback`
  and `allow_private` open loopback, or loopback and private ranges, for tests and local
  demos; metadata, unspecified, multicast and reserved addresses are refused regardless.
- The connection goes to the address that was checked, not to a second DNS answer: the request
  is sent to the IP itself, with the original Host header and, for https, the original name for
  SNI and certificate verification (httpx's `sni_hostname` extension). This closes DNS
  rebinding between the check and the connect.
- Redirects are followed by hand, at most `max_redirects`, http and https only.
- The body is streamed and reading stops as soon as it passes `max_bytes` (counted after
  content decoding, which is done here in bounded steps, so a compressed bomb stops too,
  without ever being inflated in one piece); connect, read and total timeouts apply.
- Proxies and credentials from the environment are ignored: a proxy would resolve the host
  itself and bypass the check.

Failures raise `FetchFailed` (or its subclasses) with a reason the user can act on. This module
never logs response bodies.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import httpx

from services.ingest.pipeline.errors import AddressNotAllowed, BodyTooLarge, FetchFailed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]
"""Resolves a host name and port to the addresses a TCP connection may use."""

MAX_BYTES = 10 * 1024 * 1024
MAX_REDIRECTS = 5
USER_AGENT = "ContextCache-Ingest/1.0"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

# Instance metadata services hand out cloud credentials; never fetched, whatever the settings.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer (a public address)
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True, slots=True)
class FetchedResource:
    """A fetched body with its declared content type and the URL it finally came from."""

    content: bytes
    content_type: str | None
    final_url: str


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which non-public addresses may be fetched from."""

    allow_loopback: bool = False
    allow_private: bool = False

    def refusal(self, address: IPAddress) -> str | None:
        """The kind of address that is refused ("loopback", "private", ...), or None if allowed."""
        kind = address_kind(address)
        if kind is None:
            return None
        if kind == "loopback" and (self.allow_loopback or self.allow_private):
            return None
        if kind in ("private", "link-local", "shared") and self.allow_private:
            return None
        return kind


def address_kind(address: IPAddress) -> str | None:
    """Classify a non-public address; None for a public (globally routable unicast) one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return address_kind(embedded)
    if address in METADATA_ADDRESSES:
        return "cloud metadata"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_multicast:
        return "multicast"
    if address.is_link_local:
        return "link-local"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "shared"  # e.g. carrier-grade NAT, 100.64.0.0/10
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """The system resolver's TCP addresses for `host`, in its order, without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    return list(dict.fromkeys(addresses))


class UrlFetcher:
    """Fetches URLs under one set of limits and one address policy."""

    def __init__(
        self,
        *,
        allow_loopback: bool = False,
        allow_private: bool = False,
        max_bytes: int = MAX_BYTES,
        max_redirects: int = MAX_REDIRECTS,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
        total_timeout: float = 60.0,
        resolver: Resolver = resolve_host,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.policy = AddressPolicy(allow_loopback=allow_loopback, allow_private=allow_private)
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.total_timeout = total_timeout
        self._timeout = httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
        )
        self._resolver = resolver
        self._verify = verify

    async def fetch(self, url: str) -> FetchedResource:
        """Fetch `url`, following redirects; raises FetchFailed with a user-facing reason."""
        try:
            async with asyncio.timeout(self.total_timeout):
                return await self._fetch(url)
        except TimeoutError as exc:
            raise FetchFailed(
                f"Fetching the URL took longer than {self.total_timeout:g} seconds. Try again "
                "later, or download the document and upload it as a file."
            ) from exc

    async def _fetch(self, url: str) -> FetchedResource:
        current = _parse_url(url, redirected=False)
        async with httpx.AsyncClient(
            timeout=self._timeout,
            verify=self._verify,
            trust_env=False,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate"},
        ) as client:
            for hop in range(self.max_redirects + 1):
                addresses = await self._allowed_addresses(current, redirected=hop > 0)
                response = await self._send(client, current, addresses)
                try:
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECT_STATUSES and location:
                        if hop == self.max_redirects:
                            raise FetchFailed(
                                f"The URL redirects more than {self.max_redirects} times. Use "
                                "the address the page finally ends up at."
                            )
                        current = _redirect_target(current, location)
                        continue
                    _check_status(response, current)
                    content = await self._read_body(response)
                    return FetchedResource(
                        content, response.headers.get("content-type"), str(current)
                    )
                finally:
                    await response.aclose()
        raise AssertionError("unreachable: the loop returns or raises on its last hop")

    async def _allowed_addresses(self, url: httpx.URL, *, redirected: bool) -> list[IPAddress]:
        host = url.raw_host.decode("ascii")
        where = (
            f"The URL redirected to {url.host}, which resolves"
            if redirected
            else f"The host {url.host} resolves"
        )
        try:
            addresses = [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            try:
                addresses = await self._resolver(host, _port(url))
            except (OSError, UnicodeError) as exc:
                raise FetchFailed(
                    f"The host name {url.host} could not be resolved. Check the URL."
                ) from exc
        if not addresses:
            raise FetchFailed(f"The host name {url.host} could not be resolved. Check the URL.")
        for address in addresses:
            kind = self.policy.refusal(address)
            if kind is not None:
                raise AddressNotAllowed(
                    f"{where} to a {kind} network address, and ContextCache does not fetch "
                    "from such addresses. Use a public URL, or download the document and "
                    "upload it."
                )
        return addresses

    async def _send(
        self, client: httpx.AsyncClient, url: httpx.URL, addresses: list[IPAddress]
    ) -> httpx.Response:
        """Send the request to each checked address in turn until one connects."""
        literal_host = _is_ip_literal(url)
        extensions = {} if literal_host or url.scheme != "https" else {"sni_hostname": url.host}
        failure: httpx.TransportError | None = None
        for address in addresses:
            request = client.build_request(
                "GET",
                url.copy_with(host=str(address)),
                headers={"Host": url.netloc.decode("ascii")},
                extensions=extensions,
            )
            try:
                return await client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure = exc
            except httpx.TimeoutException as exc:
                raise FetchFailed(
                    f"{url.host} did not answer within {self._timeout.read:g} seconds. Try "
                    "again later."
                ) from exc
            except httpx.TransportError as exc:
                raise FetchFailed(
                    f"The connection to {url.host} failed ({type(exc).__name__}). Try again later."
                ) from exc
        if isinstance(failure, httpx.ConnectTimeout):
            raise FetchFailed(
                f"Could not connect to {url.host}: the connection timed out. Check the URL or "
                "try again later."
            ) from failure
        if failure is not None and _is_tls_failure(failure):
            raise FetchFailed(
                f"Could not connect securely to {url.host}: its TLS certificate was not "
                "accepted. Check the URL."
            ) from failure
        raise FetchFailed(
            f"Could not connect to {url.host}: the connection was refused or the host is "
            "unreachable. Check the URL or try again later."
        ) from failure

    async def _read_body(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise BodyTooLarge(self._too_large())
        body = bytearray()
        decoder = _BoundedDecoder(response.headers.get("content-encoding", ""))
        try:
            async for raw in response.aiter_raw():
                for piece in decoder.decode(raw, self.max_bytes - len(body) + 1):
                    body += piece
                    if len(body) > self.max_bytes:
                        raise BodyTooLarge(self._too_large())
            body += decoder.flush()
            if len(body) > self.max_bytes:
                raise BodyTooLarge(self._too_large())
        except httpx.TimeoutException as exc:
            raise FetchFailed(
                f"The server stopped sending data for more than {self._timeout.read:g} seconds. "
                "Try again later."
            ) from exc
        except httpx.DecodingError as exc:
            raise FetchFailed("The server sent a corrupt compressed response.") from exc
        except httpx.TransportError as exc:
            raise FetchFailed(
                "The connection broke while the document was being downloaded. Try again later."
            ) from exc
        return bytes(body)

    def _too_large(self) -> str:
        return (
            f"The document at the URL is larger than {_megabytes(self.max_bytes)}. Download it "
            "and upload it as a file, or link to a smaller page."
        )


async def fetch_url(
    url: str,
    *,
    allow_private: bool = False,
    allow_loopback: bool = False,
    max_bytes: int = MAX_BYTES,
) -> FetchedResource:
    """Fetch `url` with the default limits (see `UrlFetcher` for the rest)."""
    fetcher = UrlFetcher(
        allow_private=allow_private, allow_loopback=allow_loopback, max_bytes=max_bytes
    )
    return await fetcher.fetch(url)


def _parse_url(url: str, *, redirected: bool) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise FetchFailed(
            "The server redirected to an invalid address."
            if redirected
            else "The URL is not valid. Check it and try again."
        ) from exc
    if parsed.scheme not in ("http", "https"):
        scheme = parsed.scheme or "relative"
        raise FetchFailed(
            f"The server redirected to a {scheme} address; only http and https are followed."
            if redirected
            else "Only http and https URLs can be fetched."
        )
    if not parsed.raw_host:
        raise FetchFailed("The URL has no host name. Check it and try again.")
    return parsed


def _redirect_target(current: httpx.URL, location: str) -> httpx.URL:
    try:
        target = current.join(location)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise FetchFailed("The server redirected to an invalid address.") from exc
    return _parse_url(str(target), redirected=True)


def _check_status(response: httpx.Response, url: httpx.URL) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    phrase = response.reason_phrase or "error"
    if status == 404 or status == 410:
        hint = "Check that the URL is correct and the page still exists."
    elif status in (401, 403):
        hint = "The page needs a login or blocks automated access; download it and upload it."
    elif status == 429 or status >= 500:
        hint = "The server has a problem or is busy; try again later."
    else:
        hint = "Check the URL."
    raise FetchFailed(f"The server at {url.host} answered {status} {phrase}. {hint}")


def _port(url: httpx.URL) -> int:
    if url.port is not None:
        return url.port
    return 443 if url.scheme == "https" else 80


def _is_ip_literal(url: httpx.URL) -> bool:
    try:
        ipaddress.ip_address(url.raw_host.decode("ascii").strip("[]"))
    except ValueError:
        return False
    return True


def _is_tls_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return "SSL" in str(exc) or "certificate" in str(exc).lower()


class _BoundedDecoder:
    """Content decoding (gzip, deflate) that never makes more than it is asked for.

    httpx decodes each received piece whole: a 100 KB gzip piece of a compression bomb became
    100 MB in one call on the event loop. Here each call stops at `limit` bytes (so reading
    stops just past the size cap) and at `_STEP` bytes per step, which keeps every
    GIL-holding call short.
    """

    _STEP = 1 << 20

    def __init__(self, encoding: str) -> None:
        encodings = [e.strip().lower() for e in encoding.split(",") if e.strip()]
        encodings = [e for e in encodings if e != "identity"]
        if not encodings:
            self._zlib = None
        elif encodings in (["gzip"], ["x-gzip"]):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encodings == ["deflate"]:
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS)
        else:
            raise FetchFailed(
                f"The server sent the document with an unsupported content encoding "
                f"({encoding!r}); ContextCache reads gzip and deflate."
            )

    def decode(self, raw: bytes, limit: int) -> Iterator[bytes]:
        if self._zlib is None:
            yield raw
            return
        data = raw
        while data and limit > 0:
            try:
                piece = self._zlib.decompress(data, min(limit, self._STEP))
            except zlib.error as exc:
                raise httpx.DecodingError(str(exc)) from exc
            limit -= len(piece)
            yield piece
            data = self._zlib.unconsumed_tail

    def flush(self) -> bytes:
        return self._zlib.flush() if self._zlib is not None else b""


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):g} MB"
