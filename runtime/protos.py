"""The ContextCache API as loaded protobuf modules, for reflection and health names."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2

from contextcache.v1 import (
    crypto_pb2,
    ingest_pb2,
    projects_pb2,
    query_pb2,
)

API_MODULES = (projects_pb2, crypto_pb2, ingest_pb2, query_pb2)

SERVICE_NAMES: tuple[str, ...] = tuple(
    service.full_name
    for module in API_MODULES
    for service in module.DESCRIPTOR.services_by_name.values()
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
