"""The ContextCache API as loaded protobuf modules, for reflection and health names."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2

from contextcache.internal.v1 import crypto_pb2 as crypto_internal_pb2
from contextcache.internal.v1 import ingest_pb2 as ingest_internal_pb2
from contextcache.internal.v1 import query_pb2 as query_internal_pb2
from contextcache.v1 import (
    crypto_pb2,
    ingest_pb2,
    projects_pb2,
    query_pb2,
)

# The public API: what clients, the gateway and reflection show.
API_MODULES = (projects_pb2, crypto_pb2, ingest_pb2, query_pb2)
# Service-to-service only (mutual TLS and runtime/callers.py's table; never routed).
INTERNAL_MODULES = (crypto_internal_pb2, ingest_internal_pb2, query_internal_pb2)


def _services(modules):  # type: ignore[no-untyped-def]
    return tuple(
        service for module in modules for service in module.DESCRIPTOR.services_by_name.values()
    )


SERVICE_NAMES: tuple[str, ...] = tuple(service.full_name for service in _services(API_MODULES))
INTERNAL_SERVICE_NAMES: tuple[str, ...] = tuple(
    service.full_name for service in _services(INTERNAL_MODULES)
)
# "/contextcache.v1.ProjectService/CreateProject", … : every public method's path.
PUBLIC_METHODS: tuple[str, ...] = tuple(
    f"/{service.full_name}/{method.name}"
    for service in _services(API_MODULES)
    for method in service.methods
)
INTERNAL_METHODS: tuple[str, ...] = tuple(
    f"/{service.full_name}/{method.name}"
    for service in _services(INTERNAL_MODULES)
    for method in service.methods
)

PROJECT_SERVICE = projects_pb2.DESCRIPTOR.services_by_name["ProjectService"].full_name
CRYPTO_SERVICE = crypto_pb2.DESCRIPTOR.services_by_name["CryptoService"].full_name
INGEST_SERVICE = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
QUERY_SERVICE = query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A stored (UTC) datetime as a protobuf Timestamp; None stays unset."""
    if value is None:
        return None
    from runtime.db import as_utc

    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(as_utc(value))
    return stamp
