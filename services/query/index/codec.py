"""Validation of what enters the index, and the payload codec both backends share.

A point's payload carries only identifiers, numbers and ciphertext; ciphertext is stored
base64-encoded. This module never decrypts, logs or inspects payload bytes.
"""

from __future__ import annotations

import base64
import math
import operator
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from services.query.index.bm25 import Bm25Params
from services.query.index.types import (
    MAX_LIMIT,
    MAX_SPARSE_INDEX,
    Hit,
    IndexPoint,
    PreparedPoint,
    StoredChunk,
)


def _integer(value: object, what: str) -> int:
    try:
        return operator.index(value)  # ints and numpy integers; never floats
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None


def canonical_uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValueError(f"{what} must be a UUID, got {value!r}") from None


def dense_array(vector: Sequence[float] | np.ndarray, dim: int, what: str) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float32)
    if array.shape != (dim,):
        raise ValueError(f"{what} must have {dim} dimensions, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contains NaN or infinite values")
    if not np.any(array):
        raise ValueError(f"{what} is all zeros; cosine similarity is undefined for it")
    return array


def sparse_lists(
    indices: Sequence[int], values: Sequence[float], what: str
) -> tuple[list[int], list[float]]:
    """Checked copies of a sparse vector: equal lengths, distinct uint32 ids, values >= 0.

    Terms with a zero value carry no weight and are dropped.
    """
    ids = [_integer(i, f"{what}: term id") for i in indices]
    try:
        vals = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{what}: term values must be numbers") from None
    if len(ids) != len(vals):
        raise ValueError(f"{what}: {len(ids)} indices but {len(vals)} values")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{what}: term ids must be distinct")
    for i, v in zip(ids, vals, strict=True):
        if not 0 <= i <= MAX_SPARSE_INDEX:
            raise ValueError(f"{what}: term id {i} is outside the uint32 range")
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{what}: term values must be finite and >= 0")
    kept = [(i, v) for i, v in zip(ids, vals, strict=True) if v > 0]
    kept.sort()
    return [i for i, _ in kept], [v for _, v in kept]


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer between 1 and {MAX_LIMIT}")
    return limit


def _b64(data: bytes, what: str) -> str:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"{what} must be bytes (ciphertext), got {type(data).__name__}")
    return base64.b64encode(bytes(data)).decode("ascii")


def prepare_point(point: IndexPoint, dim: int, bm25: Bm25Params) -> PreparedPoint:
    """Validates a point and turns it into the form both backends store."""
    point_id = canonical_uuid(point.chunk_id, "chunk_id")
    for name in ("project_id", "document_id"):
        value = getattr(point, name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"chunk {point_id}: {name} must be a non-empty string")
    if not point.encrypted_text:
        raise ValueError(f"chunk {point_id}: encrypted_text must not be empty")
    text, title, source = (
        _b64(getattr(point, name), f"chunk {point_id}: {name}")
        for name in ("encrypted_text", "encrypted_title", "encrypted_source")
    )
    numbers = {
        name: _integer(getattr(point, name), f"chunk {point_id}: {name}")
        for name in ("chunk_index", "source_type", "start_offset", "end_offset")
    }
    if numbers["chunk_index"] < 0:
        raise ValueError(f"chunk {point_id}: chunk_index must be >= 0")
    try:
        created = float(point.document_created_at)
    except (TypeError, ValueError):
        created = math.nan
    if not math.isfinite(created):
        raise ValueError(f"chunk {point_id}: document_created_at must be finite epoch seconds")
    dense = dense_array(point.dense, dim, f"chunk {point_id}: dense vector")
    ids, freqs = sparse_lists(
        point.sparse_indices, point.sparse_values, f"chunk {point_id}: sparse vector"
    )
    payload = {
        "project_id": point.project_id,
        "document_id": point.document_id,
        "chunk_index": numbers["chunk_index"],
        "encrypted_text": text,
        "encrypted_title": title,
        "encrypted_source": source,
        "source_type": numbers["source_type"],
        "start_offset": numbers["start_offset"],
        "end_offset": numbers["end_offset"],
        "document_created_at": created,
    }
    return PreparedPoint(point_id, dense, ids, bm25.document_weights(freqs), payload)


def stored_chunk(point_id: object, payload: dict[str, Any]) -> StoredChunk:
    return StoredChunk(**_chunk_fields(point_id, payload))


def hit(point_id: object, score: float, payload: dict[str, Any]) -> Hit:
    return Hit(**_chunk_fields(point_id, payload), score=float(score))


def _chunk_fields(point_id: object, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "chunk_id": str(point_id),
        "project_id": payload["project_id"],
        "document_id": payload["document_id"],
        "chunk_index": int(payload["chunk_index"]),
        "encrypted_text": base64.b64decode(payload["encrypted_text"]),
        "encrypted_title": base64.b64decode(payload["encrypted_title"]),
        "encrypted_source": base64.b64decode(payload["encrypted_source"]),
        "source_type": int(payload["source_type"]),
        "start_offset": int(payload["start_offset"]),
        "end_offset": int(payload["end_offset"]),
        "document_created_at": float(payload["document_created_at"]),
    }
