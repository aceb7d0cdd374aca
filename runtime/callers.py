"""Who may call what: the one table every server enforces and every NetworkPolicy follows.

Every service port speaks mutual TLS (runtime/tls.py), so each call arrives with the
caller's workload identity from its certificate. A method is
- public (a `contextcache.v1` service): callable by the gateway (`envoy`) and by `operator`
  (people and tools with the operator certificate); clients reach it through Envoy;
- internal (a `contextcache.internal.v1` service, or the rate-limit API): callable only by
  the identities `INTERNAL_CALLERS` lists for it; anything not listed is refused;
- health and reflection: any identity (and health, in plaintext, on the probe port).

`k8s/network-policies.yaml` is generated from this table (`python -m runtime.callers
--network-policies`), and a test checks the two agree, so the network and the servers never
disagree about a call path.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc

from runtime.errors import PermissionDenied, Unauthenticated
from runtime.tls import peer_identity

PUBLIC_PACKAGE = "contextcache.v1"
INTERNAL_PACKAGE = "contextcache.internal.v1"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = ("/grpc.reflection.v1alpha.", "/grpc.reflection.v1.")
PUBLIC_CALLERS = frozenset({"envoy", "operator"})

_CRYPTO = "/contextcache.internal.v1.CryptoInternalService/"
_INGEST = "/contextcache.internal.v1.IngestInternalService/"
_QUERY = "/contextcache.internal.v1.QueryInternalService/"

# Every internal method and the workloads that call it, read off the code: a change here
# is a change of the trust model, and a test fails when a method is missing.
INTERNAL_CALLERS: Mapping[str, frozenset[str]] = {
    # Keyrings belong to the projects service; only it creates, opens and rewraps them.
    _CRYPTO + "CreateKeyring": frozenset({"projects"}),
    _CRYPTO + "OpenKeyring": frozenset({"projects"}),
    _CRYPTO + "RewrapKeyring": frozenset({"projects"}),
    # Job tokens exist for ingestion: ingest issues them; it and its worker redeem grants.
    _CRYPTO + "IssueJobToken": frozenset({"ingest"}),
    _CRYPTO + "RedeemJobGrant": frozenset({"ingest", "worker"}),
    _CRYPTO + "CheckToken": frozenset({"projects", "ingest", "query"}),
    _CRYPTO + "GetTokenVerificationKeys": frozenset({"projects", "ingest", "worker", "query"}),
    _CRYPTO + "EncryptBatch": frozenset({"ingest", "worker"}),
    _CRYPTO + "DecryptBatch": frozenset({"ingest", "worker", "query"}),
    _CRYPTO + "HashTerms": frozenset({"ingest", "worker", "query"}),
    _CRYPTO + "AppendAuditEvent": frozenset({"projects", "ingest", "worker"}),
    _CRYPTO + "IssueAuditGrant": frozenset({"projects", "ingest"}),
    # Project bundles: projects orchestrates ExportProject and ImportProject.
    _CRYPTO + "SignBundle": frozenset({"projects"}),
    _CRYPTO + "ExportAuditChain": frozenset({"projects"}),
    _CRYPTO + "ImportProjectKeys": frozenset({"projects"}),
    _CRYPTO + "DiscardImportedKeys": frozenset({"projects"}),
    _INGEST + "ExportContent": frozenset({"projects"}),
    _INGEST + "ImportContent": frozenset({"projects"}),
    _INGEST + "DiscardImportedContent": frozenset({"projects"}),
    _INGEST + "IndexProject": frozenset({"projects"}),
    # Index writes: ingestion (inline in ingest, background in the worker); a deleted
    # project's index: projects.
    _QUERY + "IndexChunks": frozenset({"ingest", "worker"}),
    _QUERY + "DeleteDocumentChunks": frozenset({"ingest", "worker"}),
    _QUERY + "DeleteProjectIndex": frozenset({"projects"}),
    _INGEST + "GetIngestStats": frozenset({"projects"}),
    _INGEST + "PurgeProject": frozenset({"projects"}),
    # Envoy's global rate limit filter asks our rate-limit service.
    "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit": frozenset({"envoy"}),
}

# Which workload serves which package prefix (for NetworkPolicies and the gateway).
SERVED_BY: Mapping[str, str] = {
    "/contextcache.v1.ProjectService/": "projects",
    "/contextcache.v1.IngestService/": "ingest",
    "/contextcache.v1.QueryService/": "query",
    "/contextcache.v1.CryptoService/": "crypto",
    _CRYPTO: "crypto",
    _INGEST: "ingest",
    _QUERY: "query",
    "/envoy.service.ratelimit.v3.": "ratelimit",
}


def is_public(method: str) -> bool:
    return method.startswith(f"/{PUBLIC_PACKAGE}.")


def is_open(method: str) -> bool:
    """Health and reflection: schema and liveness, no data."""
    return method.startswith(HEALTH_PREFIX) or method.startswith(REFLECTION_PREFIXES)


def allowed_callers(method: str) -> frozenset[str] | None:
    """The identities that may call `method`; None means any authenticated workload."""
    if is_open(method):
        return None
    if is_public(method):
        return PUBLIC_CALLERS
    return INTERNAL_CALLERS.get(method, frozenset())


def authorize_caller(method: str, context: grpc.aio.ServicerContext) -> str | None:
    """The caller's identity, when the table lets it call `method`; raises otherwise.

    Runs before validation and before the handler. On a server without TLS (the
    plaintext probe port serves health only) there is no identity and only open methods
    pass.
    """
    identity = peer_identity(context)
    allowed = allowed_callers(method)
    if allowed is None:
        return identity
    if identity is None:
        raise Unauthenticated(f"{method} needs a client certificate of a ContextCache workload")
    if identity not in allowed:
        raise PermissionDenied(f"{identity} may not call {method}")
    return identity


def client_address(context: grpc.aio.ServicerContext) -> str:
    """The address of the client a call is made for.

    Through the gateway that is Envoy's `x-forwarded-for` (Envoy sets it from the
    connection it accepted, `use_remote_address`); the header is believed only when the
    peer proved, with its certificate, that it is Envoy. Otherwise it is the peer itself.
    """
    if peer_identity(context) == "envoy":
        for key, value in context.invocation_metadata() or ():
            if key == "x-forwarded-for":
                text = value if isinstance(value, str) else value.decode("ascii", "replace")
                last = text.split(",")[-1].strip()
                try:
                    return str(ipaddress.ip_address(last))
                except ValueError:
                    break
    return _peer_host(context.peer() or "")


def _peer_host(peer: str) -> str:
    """'ipv4:1.2.3.4:5678' / 'ipv6:[::1]:5678' → the address."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition("]")[0].lstrip("[")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer


@dataclass(frozen=True)
class CallPath:
    """One permitted call path between workloads: `caller` may open connections to
    `callee`'s gRPC port."""

    caller: str
    callee: str


def call_paths(methods: Iterable[str] = ()) -> set[CallPath]:
    """Every workload-to-workload path the table permits (public methods: envoy only)."""
    paths = set()
    for method, callers in INTERNAL_CALLERS.items():
        callee = served_by(method)
        paths.update(CallPath(caller, callee) for caller in callers)
    for method in methods:
        if is_public(method):
            paths.add(CallPath("envoy", served_by(method)))
    return paths


def served_by(method: str) -> str:
    for prefix, workload in SERVED_BY.items():
        if method.startswith(prefix):
            return workload
    raise KeyError(f"no workload serves {method}")
