"""Hybrid retrieval through the gRPC API: modes and fusion, keyed term ids, and reindexing.

Every test runs the whole stack in this process on the embedded default (SQLite, the embedded
Qdrant Edge index, no Redis, so no answer comes from the query cache).
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
from sqlalchemy import select

from contextcache.v1 import ingest_pb2, query_pb2
from retrieval.terms import terms
from runtime.errors import bad_request_of
from services.ingest.models import ChunkRow
from services.query.index import SPARSE_VECTOR
from tests.conftest import new_project

# One document per topic, so each is one chunk. Only KDF_NOTE contains the identifier, and
# no document shares a keyword-search term with QUERY except KDF_NOTE (through the
# identifier): the keyword ranking of QUERY is KDF_NOTE alone. PLANTS says what QUERY's
# second half asks in other words, so only dense search can find it.
KDF_NOTE = (
    "Release note 7.2: the nightly archive job now calls pbkdf2_hmac once per upload, "
    "and the mirror script was renamed."
)
PLANTS = (
    "Photosynthesis: chlorophyll in green leaves captures light energy and converts "
    "carbon dioxide and water into glucose and oxygen."
)
DISTRACTORS = (
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889 for the "
    "World's Fair.",
    "A sonnet is a fourteen-line poem written in iambic pentameter, popularised by "
    "Petrarch and Shakespeare.",
    "Volcanoes erupt when molten rock, ash and gases escape through vents in the Earth's crust.",
    "The offside rule in football forbids attackers from standing behind the last "
    "defender when the ball is played forward.",
    "Jazz emerged in New Orleans in the early twentieth century, blending blues, ragtime "
    "and brass band marches.",
)
IDENTIFIER = "pbkdf2_hmac"
PARAPHRASE = "how does vegetation get nourishment out of sunshine?"
QUERY = f"{IDENTIFIER} — {PARAPHRASE}"

HYBRID = query_pb2.RETRIEVAL_MODE_HYBRID
DENSE = query_pb2.RETRIEVAL_MODE_DENSE
KEYWORD = query_pb2.RETRIEVAL_MODE_KEYWORD


async def ingest(stack, project_id: str, token, title: str, body: str) -> ingest_pb2.Document:
    document = (
        await stack.ingest.IngestDocument(
            ingest_pb2.IngestDocumentRequest(
                project_id=project_id, text=ingest_pb2.TextSource(title=title, body=body)
            ),
            metadata=token,
        )
    ).document
    assert document.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, document.error
    assert document.chunk_count == 1
    return document


async def ingest_corpus(stack, project_id: str, token) -> dict[str, str]:
    """Ingests the corpus; returns document ids by name ("kdf", "plants", "other-N")."""
    documents = {
        "kdf": await ingest(stack, project_id, token, "Release notes", KDF_NOTE),
        "plants": await ingest(stack, project_id, token, "Botany", PLANTS),
    }
    for n, body in enumerate(DISTRACTORS):
        documents[f"other-{n}"] = await ingest(stack, project_id, token, f"Note {n}", body)
    return {name: d.id for name, d in documents.items()}


async def query(stack, project_id: str, token, text: str, mode: int, top_k: int = 3):
    return await stack.query.Query(
        query_pb2.QueryRequest(project_id=project_id, query=text, top_k=top_k, mode=mode),
        metadata=token,
    )


def ranked(response: query_pb2.QueryResponse) -> list[str]:
    return [p.document_id for p in response.passages]


# ---------------------------------------------------------------------------------------------
# Modes and fusion.


async def test_keyword_finds_the_identifier_dense_the_paraphrase_hybrid_both(stack):
    project, token = await new_project(stack)
    ids = await ingest_corpus(stack, project.id, token)
    assert not set(terms(QUERY)) & set(terms(PLANTS)), "the paraphrase must share no term"
    assert all(not set(terms(QUERY)) & set(terms(d)) for d in DISTRACTORS)

    keyword = await query(stack, project.id, token, QUERY, KEYWORD, top_k=5)
    assert keyword.mode == KEYWORD
    assert ranked(keyword) == [ids["kdf"]]  # the identifier, and nothing without its terms
    assert keyword.passages[0].text == KDF_NOTE
    assert keyword.passages[0].score > 0

    dense = await query(stack, project.id, token, QUERY, DENSE, top_k=1)
    assert dense.mode == DENSE
    assert ranked(dense) == [ids["plants"]]  # the meaning, which shares no word with it

    hybrid = await query(stack, project.id, token, QUERY, HYBRID, top_k=2)
    assert hybrid.mode == HYBRID
    assert set(ranked(hybrid)) == {ids["kdf"], ids["plants"]}
    scores = [p.score for p in hybrid.passages]
    assert scores == sorted(scores, reverse=True)

    # Each half of the question on its own, in the mode made for it.
    assert ranked(await query(stack, project.id, token, IDENTIFIER, KEYWORD))[0] == ids["kdf"]
    assert ranked(await query(stack, project.id, token, PARAPHRASE, DENSE))[0] == ids["plants"]
    assert ids["plants"] not in ranked(
        await query(stack, project.id, token, PARAPHRASE, KEYWORD, top_k=7)
    )


async def test_unspecified_mode_is_hybrid_and_the_response_says_so(stack):
    project, token = await new_project(stack)
    await ingest_corpus(stack, project.id, token)
    default = await stack.query.Query(
        query_pb2.QueryRequest(project_id=project.id, query=QUERY, top_k=2), metadata=token
    )
    assert default.mode == HYBRID
    explicit = await query(stack, project.id, token, QUERY, HYBRID, top_k=2)
    assert [(p.chunk_id, p.score) for p in default.passages] == [
        (p.chunk_id, p.score) for p in explicit.passages
    ]
    for mode in (DENSE, KEYWORD, HYBRID):
        assert (await query(stack, project.id, token, "light energy", mode)).mode == mode


@pytest.mark.parametrize("mode", [9, -1, 4])
async def test_undefined_mode_is_invalid_argument_naming_mode(stack, mode):
    project, token = await new_project(stack)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.query.Query(
            query_pb2.QueryRequest(project_id=project.id, query="anything", mode=mode),
            metadata=token,
        )
    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = bad_request_of(error)
    assert details is not None
    assert [v.field for v in details.field_violations] == ["mode"]
    assert "mode" in error.details()


# ---------------------------------------------------------------------------------------------
# No plaintext term in the index.

SECRET_TEXT = (
    "Quetzalcoatlus flew over the Mesozoic lagoon while Zanzibari cartographers argued "
    "about marmalade tariffs. The function verify_ledger_checksum( returns a "
    "HyperLedgerDigest for each shipment of saxophones."
)
SECRET_WORDS = (
    "Quetzalcoatlus",
    "Mesozoic",
    "lagoon",
    "Zanzibari",
    "cartographers",
    "marmalade",
    "tariffs",
    "verify_ledger_checksum",
    "checksum",
    "HyperLedgerDigest",
    "shipment",
    "saxophones",
)


def _murmur3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86_32, the unkeyed term hash of Qdrant's and fastembed's own BM25."""
    c1, c2, mask = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF
    h = seed
    rounded = len(data) & ~3
    for (k,) in struct.iter_unpack("<I", data[:rounded]):
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        h ^= (k * c2) & mask
        h = ((h << 13) | (h >> 19)) & mask
        h = (h * 5 + 0xE6546B64) & mask
    k = int.from_bytes(data[rounded:], "little")
    if k:
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        h ^= (k * c2) & mask
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    return h ^ (h >> 16)


def unkeyed_ids(term: str) -> set[int]:
    """The 32-bit ids a term gets under the unkeyed hashes a term index could use."""
    data = term.encode()
    ids = {zlib.crc32(data), zlib.adler32(data), _murmur3_32(data)}
    signed = _murmur3_32(data) - (1 << 32) if _murmur3_32(data) >= 1 << 31 else None
    if signed is not None:
        ids.add(abs(signed))
    fnv = 0x811C9DC5
    for byte in data:
        fnv = ((fnv ^ byte) * 0x01000193) & 0xFFFFFFFF
    ids.add(fnv)
    for name in ("md5", "sha1", "sha256", "sha512", "blake2b", "blake2s", "sha3_256"):
        digest = hashlib.new(name, data).digest()
        ids.update(
            {
                int.from_bytes(digest[:4], "big"),
                int.from_bytes(digest[:4], "little"),
                int.from_bytes(digest[-4:], "big"),
                int.from_bytes(digest[-4:], "little"),
            }
        )
    return ids


async def stored_sparse_indices(stack, project_id: str) -> list[list[int]]:
    """The keyed term ids the ingest service stored for each chunk of the project."""
    async with stack.app("ingest").store.sessions() as session:
        rows = (
            await session.scalars(
                select(ChunkRow)
                .where(ChunkRow.project_id == project_id)
                .order_by(ChunkRow.chunk_index)
            )
        ).all()
    return [np.frombuffer(r.sparse_indices, dtype="<u4").tolist() for r in rows]


def index_sparse_indices(index_path: Path, dim: int) -> dict[str, list[int]]:
    """Every point's sparse term ids, read from the embedded index on disk (service stopped)."""
    import qdrant_edge as qe

    from services.query.index.edge_host import acquire_lock, open_shard

    lock = acquire_lock(index_path, wait_seconds=10)
    shard = open_shard(index_path, dim)
    try:
        found: dict[str, list[int]] = {}
        offset = None
        while True:
            records, offset = shard.scroll(
                qe.ScrollRequest(offset=offset, limit=256, with_payload=True, with_vector=True)
            )
            for record in records:
                found[str(record.id)] = list(record.vector[SPARSE_VECTOR].indices)
            if offset is None:
                return found
    finally:
        shard.close()
        os.close(lock)


async def test_index_holds_no_plaintext_terms_and_term_ids_are_keyed_per_project(stack):
    first, first_token = await new_project(stack, name="first")
    second, second_token = await new_project(stack, name="second")
    await ingest(stack, first.id, first_token, "Ledger", SECRET_TEXT)
    await ingest(stack, second.id, second_token, "Ledger", SECRET_TEXT)

    # Keyword search works, so the index does hold the terms, only not as words.
    hit = await query(stack, first.id, first_token, "marmalade tariffs", KEYWORD)
    assert hit.passages and hit.passages[0].text == SECRET_TEXT

    text_terms = set(terms(SECRET_TEXT))
    assert {"quetzalcoatlus", "verify_ledger_checksum(", "hyperledgerdigest"} <= text_terms
    (first_ids,) = await stored_sparse_indices(stack, first.id)
    (second_ids,) = await stored_sparse_indices(stack, second.id)
    assert len(first_ids) == len(second_ids) == len(text_terms)
    # Same text, different projects: no term id in common (a 32-bit collision aside).
    assert len(set(first_ids) & set(second_ids)) <= 1
    unkeyed = set().union(*(unkeyed_ids(t) for t in text_terms))
    assert not unkeyed & (set(first_ids) | set(second_ids))

    index_path = stack.settings.index_path
    dim = stack.app("query").index.dim
    await stack.stop_service("query")  # the index host flushes and closes the shard

    files = [p for p in index_path.rglob("*") if p.is_file()]
    contents = {path: path.read_bytes() for path in files}
    # The scan reads where payloads live: the project id, stored in clear, is found.
    assert any(first.id.encode() in content for content in contents.values())
    needles = {w.encode() for w in SECRET_WORDS} | {w.casefold().encode() for w in SECRET_WORDS}
    for path, content in contents.items():
        found = sorted(n.decode() for n in needles if n in content)
        assert not found, f"{path.relative_to(index_path)} contains {found}"

    in_index = index_sparse_indices(index_path, dim)
    assert len(in_index) == 2
    assert sorted(map(sorted, in_index.values())) == sorted([first_ids, second_ids])
    assert not unkeyed & set().union(*map(set, in_index.values()))


# ---------------------------------------------------------------------------------------------
# ReindexProject.


async def test_reindex_restores_keyword_and_dense_search_without_embedding_again(stack):
    project, token = await new_project(stack)
    await ingest_corpus(stack, project.id, token)
    questions = [(QUERY, mode) for mode in (HYBRID, DENSE, KEYWORD)] + [
        ("Eiffel Tower", KEYWORD),
        ("volcano eruption", HYBRID),
    ]

    async def answers() -> list[list[tuple[str, float]]]:
        out = []
        for text, mode in questions:
            response = await query(stack, project.id, token, text, mode, top_k=5)
            out.append([(p.chunk_id, round(p.score, 5)) for p in response.passages])
        return out

    before = await answers()
    assert all(before)
    embedder = stack.app("ingest").embedder
    calls: list[int] = []
    original_embed = embedder.embed
    embedder.embed = lambda texts: calls.append(len(texts)) or original_embed(texts)

    await stack.app("query").index.delete_project(project.id)
    assert await answers() == [[] for _ in questions]

    reindexed = await stack.ingest.ReindexProject(
        ingest_pb2.ReindexProjectRequest(project_id=project.id), metadata=token
    )
    assert reindexed.documents_reindexed == 2 + len(DISTRACTORS)
    assert reindexed.chunks_reindexed == 2 + len(DISTRACTORS)
    assert await answers() == before
    assert calls == []  # vectors came from the ingest database, not from the model
