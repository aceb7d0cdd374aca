"""Service identity: one X.509 certificate per workload, mutual TLS on every service port.

Each workload (projects, ingest, worker, query, crypto, ratelimit, envoy, operator) has a
key and a certificate signed by the deployment's CA, laid out as cert-manager writes a
Secret — `<TLS_DIR>/<identity>/{tls.crt,tls.key,ca.crt}`. The certificate names the
workload twice:
- a SPIFFE-style URI SAN `spiffe://contextcache/<identity>`, which servers read to decide
  who is calling (runtime/callers.py holds the table of who may call what);
- a DNS SAN `<identity>.contextcache.internal`, which clients use as the TLS target name
  (`grpc.ssl_target_name_override`), so a client only talks to the service it meant to
  reach, whatever address it dialled.

Outside production, `ensure_dev_pki` creates a development CA and every workload's
certificate on first use (`make run`, `make demo`, the tests): no step for a newcomer. In
production nothing is generated: missing files stop the service at start with their path.
Private keys are written 0600 and never logged.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from runtime.config import Settings

TRUST_DOMAIN = "contextcache"
SPIFFE_PREFIX = f"spiffe://{TRUST_DOMAIN}/"
DNS_SUFFIX = ".contextcache.internal"
CA_DIR = "ca"
CERT_FILE, KEY_FILE, CA_FILE = "tls.crt", "tls.key", "ca.crt"
DEV_VALIDITY = datetime.timedelta(days=365)
# A development certificate this close to expiry is issued again.
RENEW_BEFORE = datetime.timedelta(days=7)

# Every workload that holds a certificate. `operator` is for people and tools (grpcurl,
# benchmarks, tests) calling a service port directly: it may call the public API only.
IDENTITIES = ("projects", "ingest", "worker", "query", "crypto", "ratelimit", "envoy", "operator")


class TlsConfigError(RuntimeError):
    """A workload's certificate files are missing or unreadable."""


def spiffe_id(identity: str) -> str:
    return SPIFFE_PREFIX + identity


def target_name(service: str) -> str:
    """The DNS name a client expects in `service`'s certificate."""
    return service + DNS_SUFFIX


@dataclass(frozen=True)
class Identity:
    """One workload's certificate, key and the CA it trusts (PEM bytes)."""

    name: str
    certificate: bytes
    private_key: bytes
    ca: bytes

    @classmethod
    def load(cls, tls_dir: Path, name: str) -> Identity:
        folder = tls_dir / name
        try:
            return cls(
                name,
                (folder / CERT_FILE).read_bytes(),
                (folder / KEY_FILE).read_bytes(),
                (folder / CA_FILE).read_bytes(),
            )
        except OSError as error:
            raise TlsConfigError(
                f"the {name} certificate is missing: {folder}/{{{CERT_FILE},{KEY_FILE},{CA_FILE}}} "
                f"({error.strerror}); set TLS_DIR, or outside production let the service "
                "create a development CA"
            ) from None

    def server_credentials(self) -> grpc.ServerCredentials:
        """Mutual TLS: a client without a certificate from our CA is refused in the
        handshake, before any handler runs."""
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate)],
            root_certificates=self.ca,
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca,
            private_key=self.private_key,
            certificate_chain=self.certificate,
        )

    def paths(self, tls_dir: Path) -> dict[str, Path]:
        folder = tls_dir / self.name
        return {"cert": folder / CERT_FILE, "key": folder / KEY_FILE, "ca": folder / CA_FILE}


def peer_identity(context: grpc.aio.ServicerContext) -> str | None:
    """The workload name in the caller's verified certificate, or None.

    gRPC fills the auth context only from a certificate that chained to our CA in the
    handshake, so the URI SAN read here is one the CA issued.
    """
    auth = context.auth_context() or {}
    for value in auth.get("x509_subject_alternative_name", ()):
        text = value.decode() if isinstance(value, bytes) else value
        if text.startswith(SPIFFE_PREFIX):
            name = text[len(SPIFFE_PREFIX) :]
            if name and "/" not in name:
                return name
    return None


# Development PKI ---------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _create_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ContextCache development CA")])
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + DEV_VALIDITY * 2)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write(folder / KEY_FILE, _pem_key(key), private=True)
    _write(folder / CERT_FILE, certificate.public_bytes(serialization.Encoding.PEM))
    return certificate, key


def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        certificate = x509.load_pem_x509_certificate((folder / CERT_FILE).read_bytes())
        key = serialization.load_pem_private_key((folder / KEY_FILE).read_bytes(), None)
    except (OSError, ValueError):
        return None
    if certificate.not_valid_after_utc - RENEW_BEFORE < _now():
        return None
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return certificate, key


def _issue(
    folder: Path,
    identity: str,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    hosts: Iterable[str],
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(spiffe_id(identity)),
        x509.DNSName(target_name(identity)),
    ]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + DEV_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(folder / KEY_FILE, _pem_key(key), private=True)
    _write(folder / CERT_FILE, certificate.public_bytes(serialization.Encoding.PEM))
    _write(folder / CA_FILE, ca.public_bytes(serialization.Encoding.PEM))


def _current(folder: Path, ca_pem: bytes) -> bool:
    try:
        certificate = x509.load_pem_x509_certificate((folder / CERT_FILE).read_bytes())
        trusted = (folder / CA_FILE).read_bytes()
        (folder / KEY_FILE).stat()
    except (OSError, ValueError):
        return False
    return trusted == ca_pem and certificate.not_valid_after_utc - RENEW_BEFORE > _now()


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


DEV_HOSTS = ("localhost", "127.0.0.1", "::1")


def ensure_dev_pki(root: Path, identities: Iterable[str] = IDENTITIES) -> None:
    """A development CA under `root/ca` and a current certificate for each identity.

    Idempotent and safe when several processes start at once (a file lock); what exists
    and is current is kept, so restarting a service keeps its certificate.
    """
    with _locked(root):
        ca_folder = root / CA_DIR
        loaded = _load_ca(ca_folder) or _create_ca(ca_folder)
        ca, ca_key = loaded
        ca_pem = ca.public_bytes(serialization.Encoding.PEM)
        for identity in identities:
            folder = root / identity
            if not _current(folder, ca_pem):
                hosts = (*DEV_HOSTS, identity, f"{identity}.contextcache.svc")
                _issue(folder, identity, ca, ca_key, hosts)


def workload_identity(settings: Settings, name: str) -> Identity:
    """This workload's certificate; outside production the development CA issues it first
    when it is missing."""
    root = settings.tls_root
    if settings.environment != "production":
        ensure_dev_pki(root)
    return Identity.load(root, name)
