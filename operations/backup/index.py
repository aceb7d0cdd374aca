"""The vector index, rebuilt after a restore from ingest's restored chunks.

Ingest keeps every chunk's dense vector, keyed sparse terms and ciphertext, which is all
the index holds: the rebuild needs no passphrase, no key and no model, and the index it
builds matches the restored tables exactly (a copy of the index taken at another instant
could not). Only chunks of completed documents are indexed, as ReindexProject does;
documents left queued or processing are run again by ingest, which indexes them then.

The embedded index is emptied first, under its lock (a running query service holds it, and
then the restore is refused before anything changed). On a Qdrant server the points of
every restored project are replaced; points of projects the backup does not know stay.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from operations.backup.errors import BackupError
from runtime.config import ServiceName, Settings
from runtime.db import as_utc, database_url, sync_url

BATCH = 256


@contextlib.contextmanager
def embedded_index_lock(settings: Settings) -> Iterator[None]:
    """Holds the embedded index's lock (refusing while the query service holds it)."""
    if settings.qdrant_url:
        yield
        return
    from services.query.index.edge_host import HostError, acquire_lock

    try:
        fd = acquire_lock(settings.index_path, 0.0)
    except HostError as error:
        raise BackupError(f"{error.message}. Stop the deployment before restoring") from None
    try:
        yield
    finally:
        os.close(fd)


def empty_embedded_index(path: Path) -> None:
    """Removes the shard; call while holding its lock (the LOCK file stays)."""
    from services.query.index.edge_host import LOCK_FILE

    for entry in path.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


async def rebuild(settings: Settings, project_ids: list[str]) -> int:
    """Indexes every chunk of every completed document; returns the number of points."""
    from services.ingest.models import ChunkRow, DocumentRow
    from services.ingest.status import DocumentStatus
    from services.query.index import VectorIndexError, open_index

    engine = create_engine(sync_url(database_url(settings, ServiceName.INGEST)))
    try:
        index = await open_index(settings.qdrant_url, settings.index_path)
    except VectorIndexError as error:
        engine.dispose()
        raise BackupError(f"cannot open the vector index: {error}") from None
    written = 0
    try:
        for project_id in project_ids:
            await index.delete_project(project_id)
        rows = (
            select(ChunkRow, DocumentRow)
            .join(DocumentRow, DocumentRow.id == ChunkRow.document_id)
            .where(DocumentRow.status == DocumentStatus.COMPLETED)
            .order_by(ChunkRow.project_id, ChunkRow.document_id, ChunkRow.chunk_index)
        )
        with Session(engine) as session:
            result = session.execute(rows.execution_options(yield_per=BATCH))
            for batch in result.partitions(BATCH):
                written += await index.upsert(_point(chunk, document) for chunk, document in batch)
    except VectorIndexError as error:
        raise BackupError(
            f"rebuilding the vector index failed after {written} points: {error}. The "
            "tables are as they were; run `python -m operations.backup rebuild-index` again "
            "once the index is reachable"
        ) from None
    finally:
        await index.close()
        engine.dispose()
    return written


def _point(chunk, document):  # type: ignore[no-untyped-def]
    from services.query.index import IndexPoint

    return IndexPoint(
        chunk_id=chunk.id,
        project_id=chunk.project_id,
        document_id=chunk.document_id,
        chunk_index=chunk.chunk_index,
        dense=np.frombuffer(chunk.embedding, dtype="<f4"),
        sparse_indices=np.frombuffer(chunk.sparse_indices, dtype="<u4").tolist(),
        sparse_values=np.frombuffer(chunk.sparse_values, dtype="<f4").tolist(),
        encrypted_text=chunk.text_ct,
        encrypted_title=document.title_ct or b"",
        encrypted_source=document.source_ct or b"",
        source_type=document.source_type,
        start_offset=chunk.start_offset,
        end_offset=chunk.end_offset,
        document_created_at=as_utc(document.created_at).timestamp(),
    )


async def invalidate_query_cache(settings: Settings, project_ids: list[str]) -> bool:
    """Bumps each project's cache generation, so no ranking cached before the restore is
    served. False when Redis is configured but did not answer."""
    if not settings.redis_url:
        return True
    from redis.exceptions import RedisError

    from services.query.cache import QueryCache

    cache = QueryCache(settings.redis_url)
    try:
        await cache.ping()
        for project_id in project_ids:
            await cache.invalidate(project_id)
        return True
    except RedisError:
        return False
    finally:
        await cache.close()
