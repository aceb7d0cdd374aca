"""Signed project export and import: the steps ProjectService.ExportProject and
ImportProject are made of.

Export streams the bundle (services/projects/bundle.py) as it is read from ingest (content)
and crypto (audit chain): memory holds one frame at a time, whatever the project's size;
crypto signs the digest at the end.

Import holds the incoming bytes in a file (at most IMPORT_MAX_BYTES), checks their shape,
and only then lets the other services take them, in this order, each in one transaction:
the projects row in state `importing` (which claims the id), crypto (opens the keyring with
the passphrase, verifies the signature under that keyring's own signing key, replays and
stores the chain), ingest (documents, chunks, facts), then the row turns active with its
PROJECT_IMPORTED event. A failed step undoes the earlier ones, so an import lands whole or
not at all. Nothing here decrypts content or logs a passphrase.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO

from google.protobuf import timestamp_pb2

from contextcache.internal.v1 import bundle_pb2, ingest_pb2, ingest_pb2_grpc
from contextcache.internal.v1 import crypto_pb2 as crypto_internal_pb2
from contextcache.internal.v1 import crypto_pb2_grpc as crypto_internal_pb2_grpc
from contextcache.v1 import projects_pb2
from runtime.clients import calling
from runtime.db import as_utc, utcnow
from runtime.errors import InvalidArgument, Unavailable
from runtime.interceptors import validate
from runtime.outbox import AuditRelay
from runtime.tokens import TOKEN_METADATA_KEY
from services.projects.bundle import BundleReader, BundleSummary, BundleWriter
from services.projects.models import ProjectRow
from services.projects.store import ProjectStore

log = logging.getLogger(__name__)
# Pieces of the bundle per ExportProjectResponse.
PIECE_BYTES = 1024 * 1024


def pieces(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), PIECE_BYTES):
        yield data[start : start + PIECE_BYTES]


def _stamp(value) -> timestamp_pb2.Timestamp:  # type: ignore[no-untyped-def]
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(as_utc(value))
    return stamp


class ProjectExport:
    def __init__(
        self,
        store: ProjectStore,
        crypto: crypto_internal_pb2_grpc.CryptoInternalServiceStub,
        ingest: ingest_pb2_grpc.IngestInternalServiceStub,
        relay: AuditRelay,
    ) -> None:
        self.store = store
        self.crypto = crypto
        self.ingest = ingest
        self.relay = relay

    async def record(self, project_id: str, audit_grant: bytes | None) -> None:
        """Records the export and delivers the event now, so the bundle's chain ends with it."""
        await self.store.record_export(project_id, audit_grant)
        await self.relay.flush(project_id)
        if await self.store.outbox.pending(self.store.engine, project_id):
            raise Unavailable("The audit log cannot record the export right now. Try again shortly")

    async def bundle(self, row: ProjectRow, token: str) -> AsyncIterator[bytes]:
        """The bundle's bytes, frame by frame."""
        metadata = ((TOKEN_METADATA_KEY, token),)
        writer = BundleWriter()
        yield writer.preamble()
        header = bundle_pb2.BundleHeader(
            project_id=row.id,
            name=row.name,
            description=row.description,
            created_at=_stamp(row.created_at),
            exported_at=_stamp(utcnow()),
            keyring=crypto_internal_pb2.Keyring.FromString(row.keyring),
        )
        yield writer.record(bundle_pb2.BundleRecord(header=header))
        end = bundle_pb2.BundleEnd()
        async with calling("ingest", "ExportContent"):
            async for response in self.ingest.ExportContent(
                ingest_pb2.ExportContentRequest(project_id=row.id), metadata=metadata
            ):
                end.documents += len(response.batch.documents)
                end.chunks += len(response.batch.chunks)
                end.facts += len(response.batch.facts)
                yield writer.record(bundle_pb2.BundleRecord(content=response.batch))
        async with calling("crypto", "ExportAuditChain"):
            async for response in self.crypto.ExportAuditChain(
                crypto_internal_pb2.ExportAuditChainRequest(project_id=row.id), metadata=metadata
            ):
                end.audit_events += len(response.events)
                yield writer.record(
                    bundle_pb2.BundleRecord(audit=bundle_pb2.AuditBatch(events=response.events))
                )
        yield writer.record(bundle_pb2.BundleRecord(end=end))
        digest = writer.digest()
        async with calling("crypto", "SignBundle"):
            signed = await self.crypto.SignBundle(
                crypto_internal_pb2.SignBundleRequest(project_id=row.id, digest=digest),
                metadata=metadata,
            )
        yield writer.signature(digest, signed.signature)


class BundleSpool:
    """The bytes of one import, in a file removed when the import ends."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.file: BinaryIO = tempfile.TemporaryFile(dir=directory, prefix="import-")
        self.max_bytes = max_bytes
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise InvalidArgument.for_field(
                "data",
                f"The bundle is larger than this deployment takes ({self.max_bytes} bytes, "
                "IMPORT_MAX_BYTES)",
                "import.data.max_size",
            )
        self.file.write(data)

    def close(self) -> None:
        self.file.close()


async def receive(
    requests: AsyncIterator[projects_pb2.ImportProjectRequest], spool: BundleSpool
) -> str:
    """Spools the bundle's bytes; the passphrase (first message only)."""
    first = await anext(aiter(requests), None)
    if first is None:
        raise InvalidArgument.for_field("passphrase", "The first message must carry the passphrase")
    validate(first)
    if not first.passphrase:
        raise InvalidArgument.for_field(
            "passphrase", "The first message must carry the project's passphrase"
        )
    spool.write(first.data)
    async for message in requests:
        validate(message)
        if message.passphrase:
            raise InvalidArgument.for_field(
                "passphrase", "Only the first message carries the passphrase"
            )
        spool.write(message.data)
    if spool.size == 0:
        raise InvalidArgument.for_field("data", "The bundle is empty")
    return first.passphrase


class ProjectImport:
    """One import's steps after the bundle is spooled; `undo` reverses what was done."""

    def __init__(
        self,
        store: ProjectStore,
        crypto: crypto_internal_pb2_grpc.CryptoInternalServiceStub,
        ingest: ingest_pb2_grpc.IngestInternalServiceStub,
        reader: BundleReader,
        summary: BundleSummary,
    ) -> None:
        self.store = store
        self.crypto = crypto
        self.ingest = ingest
        self.reader = reader
        self.summary = summary
        self.project_id = summary.header.project_id
        # What undo() must remove: crypto's keyring and chain (their head hash) once stored
        # by this import; ingest's content once stored, or when the outcome is unknown.
        self._keys_head: bytes | None = None
        self._content_may_be_stored = False

    async def import_keys(self, passphrase: str) -> crypto_internal_pb2.ImportProjectKeysResponse:
        header = self.summary.header

        async def messages() -> AsyncIterator[crypto_internal_pb2.ImportProjectKeysRequest]:
            yield crypto_internal_pb2.ImportProjectKeysRequest(
                start=crypto_internal_pb2.ImportProjectKeysStart(
                    project_id=self.project_id,
                    keyring=header.keyring,
                    passphrase=passphrase,
                    digest=self.summary.digest,
                    signature=self.summary.signature,
                )
            )
            for record in self.reader.records("audit"):
                yield crypto_internal_pb2.ImportProjectKeysRequest(
                    events=crypto_internal_pb2.ExportAuditChainResponse(events=record.audit.events)
                )

        try:
            async with calling("crypto", "ImportProjectKeys"):
                imported = await self.crypto.ImportProjectKeys(messages(), timeout=600)
        except InvalidArgument as error:
            # Everything crypto saw came out of the bundle (the passphrase was checked
            # here), so its complaint is about the caller's `data`, not crypto's own fields.
            raise InvalidArgument.for_field("data", error.message) from None
        if not imported.already_present:
            self._keys_head = imported.head_hash
        return imported

    async def open(self, passphrase: str) -> crypto_internal_pb2.OpenKeyringResponse:
        async with calling("crypto", "OpenKeyring"):
            return await self.crypto.OpenKeyring(
                crypto_internal_pb2.OpenKeyringRequest(
                    project_id=self.project_id,
                    keyring=self.summary.header.keyring,
                    passphrase=passphrase,
                )
            )

    async def import_content(self) -> ingest_pb2.ImportContentResponse:
        async def messages() -> AsyncIterator[ingest_pb2.ImportContentRequest]:
            yield ingest_pb2.ImportContentRequest(project_id=self.project_id)
            for record in self.reader.records("content"):
                yield ingest_pb2.ImportContentRequest(batch=record.content)

        # One transaction in ingest: an error from ingest means nothing was stored; an
        # answer, or none (UNAVAILABLE: it may have committed before the answer was lost),
        # means undo() must remove it.
        try:
            async with calling("ingest", "ImportContent"):
                stored = await self.ingest.ImportContent(messages(), timeout=600)
        except Unavailable:
            self._content_may_be_stored = True
            raise
        self._content_may_be_stored = True
        return stored

    async def index(self, token: str) -> int:
        """The project's index, built by ingest from the stored vectors; 0 (and a warning)
        when the index cannot take them now (ReindexProject builds it later)."""
        try:
            async with calling("ingest", "IndexProject"):
                indexed = await self.ingest.IndexProject(
                    ingest_pb2.IndexProjectRequest(project_id=self.project_id),
                    metadata=((TOKEN_METADATA_KEY, token),),
                    timeout=600,
                )
        except Exception:  # noqa: BLE001 — the index is rebuildable; the import stands
            log.warning("imported project %s is not indexed yet", self.project_id)
            return 0
        return indexed.chunks_indexed

    async def undo(self) -> None:
        """Removes what this import stored, latest first. The row (which holds the id) goes
        last, and only once the rest is gone: a step that cannot be undone now (a service
        away) leaves the id claimed rather than a half-imported project reachable."""
        try:
            if self._content_may_be_stored:
                async with calling("ingest", "DiscardImportedContent"):
                    await self.ingest.DiscardImportedContent(
                        ingest_pb2.DiscardImportedContentRequest(project_id=self.project_id),
                        timeout=60,
                    )
            if self._keys_head is not None:
                async with calling("crypto", "DiscardImportedKeys"):
                    await self.crypto.DiscardImportedKeys(
                        crypto_internal_pb2.DiscardImportedKeysRequest(
                            project_id=self.project_id, head_hash=self._keys_head
                        ),
                        timeout=60,
                    )
        except Exception:  # noqa: BLE001 — logged; the importing row keeps the id claimed
            log.error("could not undo the failed import of project %s", self.project_id)
            return
        await self.store.abandon_import(self.project_id)


def imported_row(header: bundle_pb2.BundleHeader, name: str) -> ProjectRow:
    """The project row a bundle's header makes (`name` already cleaned)."""
    now = utcnow()
    keyring = header.keyring
    return ProjectRow(
        id=header.project_id,
        name=name,
        description=header.description.strip(),
        created_at=header.created_at.ToDatetime(tzinfo=now.tzinfo)
        if header.HasField("created_at")
        else now,
        updated_at=now,
        salt=keyring.salt,
        public_key=keyring.public_key,
        keyring=keyring.SerializeToString(),
        keyring_version=1,
    )


async def read_summary(reader: BundleReader) -> BundleSummary:
    """The bundle's shape checked and its digest computed, off the event loop."""
    summary = await asyncio.to_thread(reader.summary)
    header = summary.header
    try:
        uuid.UUID(header.project_id)
    except ValueError:
        raise InvalidArgument.for_field(
            "data", "The bundle's header names no project id. Nothing was imported"
        ) from None
    if not header.HasField("keyring"):
        raise InvalidArgument.for_field(
            "data", "The bundle's header holds no keyring. Nothing was imported"
        )
    return summary
