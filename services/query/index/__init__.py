"""The query service's vector index: `open_index` picks the backend from the configuration.

With QDRANT_URL set the index lives on that Qdrant server (`ServerVectorIndex`); otherwise it
is the embedded Qdrant Edge shard under QDRANT_PATH (`EdgeVectorIndex`), which only one
process may open. Backends are imported when chosen, so the embedded index's host process
never loads qdrant-client. The index never stores plaintext: vectors, keyed term ids and
ciphertext only.
"""

from __future__ import annotations

import os

from services.query.index.base import (
    VectorIndex,
)
from services.query.index.bm25 import (
    Bm25Params,
)
from services.query.index.fusion import (
    fuse,
)
from services.query.index.types import (
    DENSE_DIM,
    DENSE_VECTOR,
    RRF_K,
    SPARSE_VECTOR,
    Fusion,
    Hit,
    IndexLockedError,
    IndexPoint,
    IndexUnavailableError,
    ScoredId,
    SearchFilter,
    SparseTerms,
    StoredChunk,
    VectorIndexError,
)

__all__ = [
    "DENSE_DIM",
    "DENSE_VECTOR",
    "RRF_K",
    "SPARSE_VECTOR",
    "Bm25Params",
    "Fusion",
    "Hit",
    "IndexLockedError",
    "IndexPoint",
    "IndexUnavailableError",
    "ScoredId",
    "SearchFilter",
    "SparseTerms",
    "StoredChunk",
    "VectorIndex",
    "VectorIndexError",
    "fuse",
    "open_index",
]


async def open_index(
    qdrant_url: str | None,
    qdrant_path: str | os.PathLike[str],
    *,
    qdrant_api_key: str | None = None,
    dim: int = DENSE_DIM,
    bm25: Bm25Params | None = None,
) -> VectorIndex:
    """The server index when `qdrant_url` is set, else the embedded one at `qdrant_path`.

    Raises `IndexLockedError` when another process holds the embedded index and
    `VectorIndexError` when existing data has another configuration. An unreachable server
    is not an error here: the index reports unhealthy until the server answers.
    """
    if qdrant_url:
        from services.query.index.server import ServerVectorIndex

        return await ServerVectorIndex.open(
            url=qdrant_url, api_key=qdrant_api_key, dim=dim, bm25=bm25
        )
    from services.query.index.edge import EdgeVectorIndex

    return await EdgeVectorIndex.open(qdrant_path, dim=dim, bm25=bm25)
