"""The project bundle file: framing, its digest, and reading one back (docs/export.md).

    "CCBUNDLE" | version (uint32 BE) | frames (uint32 BE length + BundleRecord) ...
    | one last frame: BundleSignature

The digest is SHA-256 over every byte before the signature frame. This module only frames
and parses: it holds no key and checks no signature (crypto does, under the key the
importer's passphrase unwraps). A reader refuses anything that is not exactly that shape —
a cut file, bytes after the signature, an oversized or unparsable frame — before any of it
is believed, with INVALID_ARGUMENT naming ImportProjectRequest's `data`: the bundle is the
caller's input, so its damage is never DATA_LOSS (kept for data this deployment holds).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from google.protobuf.message import DecodeError

from contextcache.internal.v1 import bundle_pb2
from runtime.errors import InvalidArgument

MAGIC = b"CCBUNDLE"
FORMAT_VERSION = 1
PREAMBLE = MAGIC + struct.pack(">I", FORMAT_VERSION)
MAX_FRAME = 8 * 1024 * 1024
_LENGTH = struct.Struct(">I")


def frame(payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise ValueError(f"a bundle frame holds at most {MAX_FRAME} bytes")
    return _LENGTH.pack(len(payload)) + payload


class BundleWriter:
    """Frames records and keeps the digest of everything written so far."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256(PREAMBLE)

    @staticmethod
    def preamble() -> bytes:
        return PREAMBLE

    def record(self, record: bundle_pb2.BundleRecord) -> bytes:
        data = frame(record.SerializeToString())
        self._digest.update(data)
        return data

    def digest(self) -> bytes:
        return self._digest.digest()

    @staticmethod
    def signature(digest: bytes, signature: bytes) -> bytes:
        return frame(
            bundle_pb2.BundleSignature(digest=digest, signature=signature).SerializeToString()
        )


def _broken(why: str) -> InvalidArgument:
    return InvalidArgument.for_field(
        "data", f"The bundle is damaged or incomplete: {why}. Nothing was imported"
    )


@dataclass(frozen=True)
class BundleSummary:
    """What a first pass over a bundle learned; nothing of it is trusted until crypto has
    verified `signature` over `digest` under the keyring's own key."""

    header: bundle_pb2.BundleHeader
    end: bundle_pb2.BundleEnd
    digest: bytes
    signature: bytes


class BundleReader:
    """Reads a bundle held in a seekable file (the import's spool)."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file

    def _frames(self) -> Iterator[tuple[bytes, bytes]]:
        """(raw frame, payload) pairs after the preamble, to the end of the file."""
        self.file.seek(0)
        if self.file.read(len(PREAMBLE)) != PREAMBLE:
            raise _broken("it does not start with a ContextCache bundle header (version 1)")
        while True:
            prefix = self.file.read(_LENGTH.size)
            if not prefix:
                return
            if len(prefix) < _LENGTH.size:
                raise _broken("it ends inside a frame's length")
            (length,) = _LENGTH.unpack(prefix)
            if length > MAX_FRAME:
                raise _broken(f"a frame claims {length} bytes (at most {MAX_FRAME})")
            payload = self.file.read(length)
            if len(payload) < length:
                raise _broken("it ends inside a frame")
            yield prefix + payload, payload

    def summary(self) -> BundleSummary:
        """Checks the shape (header first, end record, then one signature, then nothing)
        and computes the digest."""
        digest = hashlib.sha256(PREAMBLE)
        header: bundle_pb2.BundleHeader | None = None
        end: bundle_pb2.BundleEnd | None = None
        signature: bundle_pb2.BundleSignature | None = None
        counts = {"documents": 0, "chunks": 0, "facts": 0, "audit_events": 0}
        for raw, payload in self._frames():
            if signature is not None:
                raise _broken("bytes follow its signature")
            if end is not None:
                signature = _parse(bundle_pb2.BundleSignature, payload)
                continue
            digest.update(raw)
            record = _parse(bundle_pb2.BundleRecord, payload)
            kind = record.WhichOneof("kind")
            if (header is None) != (kind == "header"):
                raise _broken("the header is not its first record, or not its only one")
            if kind == "header":
                header = record.header
            elif kind == "content":
                counts["documents"] += len(record.content.documents)
                counts["chunks"] += len(record.content.chunks)
                counts["facts"] += len(record.content.facts)
            elif kind == "audit":
                counts["audit_events"] += len(record.audit.events)
            elif kind == "end":
                end = record.end
            else:
                raise _broken("a record of an unknown kind")
        if header is None or end is None or signature is None:
            raise _broken("it was cut short (no end record or no signature)")
        totals = {
            "documents": end.documents,
            "chunks": end.chunks,
            "facts": end.facts,
            "audit_events": end.audit_events,
        }
        if totals != counts:
            raise _broken("its end record does not match the records it holds")
        if signature.digest != digest.digest():
            raise _broken("its digest does not match its bytes")
        return BundleSummary(header, end, digest.digest(), signature.signature)

    def records(self, kind: str) -> Iterator[bundle_pb2.BundleRecord]:
        """The records of one kind ("content" or "audit"), in order (after summary())."""
        for _, payload in self._frames():
            record = _parse(bundle_pb2.BundleRecord, payload)
            if record.WhichOneof("kind") == kind:
                yield record
            elif record.WhichOneof("kind") == "end":
                return


def _parse(message_type, payload: bytes):  # type: ignore[no-untyped-def]
    try:
        return message_type.FromString(payload)
    except DecodeError:
        raise _broken("a frame does not parse") from None
