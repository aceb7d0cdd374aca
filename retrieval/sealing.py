"""Associated data that binds each ciphertext to its row (shared by ingest and query).

Every piece of project content is encrypted by CryptoService under the project's data key
with associated data naming what it is and where it belongs, so a ciphertext moved to
another row, document, chunk or project fails to decrypt (DATA_LOSS) instead of showing
the wrong text.
"""

from __future__ import annotations

import uuid

VERSION = "cc1"
CHUNK_NAMESPACE = uuid.UUID("3b8f3f2e-5a0c-4f7e-9d2a-6c1e0b7a9f41")


def associated_data(purpose: str, project_id: str, document_id: str, index: int = 0) -> bytes:
    """`purpose` is one of: title, source, upload, chunk, fact."""
    return f"{VERSION}|{purpose}|{project_id}|{document_id}|{index}".encode()


def chunk_id(project_id: str, document_id: str, index: int) -> str:
    """Deterministic chunk (and index point) id: re-running a job never duplicates."""
    return str(uuid.uuid5(CHUNK_NAMESPACE, f"{project_id}/{document_id}/{index}"))
