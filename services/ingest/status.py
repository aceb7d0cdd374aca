"""A document's status machine: queued → processing → completed | failed.

The one place the status names live: the store writes and matches these members (stored as
their string values), and the servicer maps them to and from the public enum.
"""

from __future__ import annotations

import enum

from contextcache.v1 import ingest_pb2


class DocumentStatus(enum.StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    def to_proto(self) -> ingest_pb2.DocumentStatus.ValueType:
        return _TO_PROTO[self]

    @classmethod
    def from_proto(cls, value: int) -> DocumentStatus | None:
        """The status a list filter names; None for DOCUMENT_STATUS_UNSPECIFIED (any)."""
        return _FROM_PROTO.get(value)


ACTIVE = frozenset({DocumentStatus.QUEUED, DocumentStatus.PROCESSING})
TERMINAL = frozenset({DocumentStatus.COMPLETED, DocumentStatus.FAILED})

_TO_PROTO = {
    DocumentStatus.QUEUED: ingest_pb2.DOCUMENT_STATUS_QUEUED,
    DocumentStatus.PROCESSING: ingest_pb2.DOCUMENT_STATUS_PROCESSING,
    DocumentStatus.COMPLETED: ingest_pb2.DOCUMENT_STATUS_COMPLETED,
    DocumentStatus.FAILED: ingest_pb2.DOCUMENT_STATUS_FAILED,
}
_FROM_PROTO = {value: status for status, value in _TO_PROTO.items()}
