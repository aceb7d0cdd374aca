"""The vector index through its public API, on both backends.

One suite runs against the embedded Qdrant Edge index (its host process, on a temporary
directory) and against qdrant-client's local mode, which stands in for a Qdrant server (the
same `ServerVectorIndex` code; no server binary exists here). Edge-only tests cover
persistence, the lock and recovery of the host process; server-only tests cover an
unreachable server.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.ports import free_port
from services.query.index import (
    DENSE_DIM,
    RRF_K,
    Bm25Params,
    Hit,
    IndexLockedError,
    IndexPoint,
    IndexUnavailableError,
    SearchFilter,
    SparseTerms,
    StoredChunk,
    VectorIndex,
    VectorIndexError,
    fuse,
    open_index,
)
from services.query.index.edge import EdgeVectorIndex
from services.query.index.server import ServerVectorIndex

BACKENDS = ["edge", "local"]
CHUNK_NAMESPACE = uuid.UUID("5b0c8d3e-8f63-4a58-9d8e-3f1c2a7b9e10")
PROJECT_A = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
PROJECT_B = "16fd2706-8baf-433b-82eb-8c7fada847da"
PROJECT_C = "886313e1-3b8a-5372-9b90-0c9aee199e5d"
DOC_1 = "a3bb189e-8bf9-3888-9912-ace4e6543002"
DOC_2 = "c56a4180-65aa-42ec-a945-5fd21dec0538"
DOC_3 = "e7a5c5d2-4f0b-4bd4-9b7c-0f1d8c0c8a61"


# ---------------------------------------------------------------------------------------------
# Helpers and fixtures.


def chunk_id(project: str, document: str, index: int) -> str:
    """As ingest derives them: uuid5 over project, document and chunk index."""
    return str(uuid.uuid5(CHUNK_NAMESPACE, f"{project}/{document}/{index}"))


def angled(theta: float) -> np.ndarray:
    """A unit vector at angle `theta` from e0 in the (e0, e1) plane: similarity cos(theta)."""
    v = np.zeros(DENSE_DIM, dtype=np.float32)
    v[0], v[1] = math.cos(theta), math.sin(theta)
    return v


E0 = angled(0.0)


def ciphertext(*parts: object) -> bytes:
    """Opaque, non-UTF-8 bytes standing in for AEAD output."""
    return b"\x00\xff" + "/".join(map(str, parts)).encode() + bytes(range(250, 256))


def point(
    project: str,
    document: str,
    index: int,
    dense: np.ndarray,
    terms: dict[int, float] | None = None,
    *,
    source_type: int = 1,
    created: float = 1_700_000_000.0,
    text: bytes | None = None,
) -> IndexPoint:
    terms = terms or {}
    return IndexPoint(
        chunk_id=chunk_id(project, document, index),
        project_id=project,
        document_id=document,
        chunk_index=index,
        dense=dense,
        sparse_indices=list(terms),
        sparse_values=list(terms.values()),
        encrypted_text=text if text is not None else ciphertext("text", document, index),
        encrypted_title=ciphertext("title", document),
        encrypted_source=ciphertext("source", document),
        source_type=source_type,
        start_offset=index * 100,
        end_offset=index * 100 + 99,
        document_created_at=created,
    )


def random_points(
    rng: np.random.Generator, project: str, documents: list[str], per_document: int
) -> list[IndexPoint]:
    points = []
    for document in documents:
        for i in range(per_document):
            terms = rng.choice(200, size=8, replace=False)
            points.append(
                point(
                    project,
                    document,
                    i,
                    rng.standard_normal(DENSE_DIM),
                    {int(t): float(rng.integers(1, 4)) for t in terms},
                )
            )
    return points


async def open_backend(kind: str, tmp_path: Path, **options: object) -> VectorIndex:
    if kind == "edge":
        options.setdefault("lock_wait_seconds", 0.0)
        options.setdefault("optimize_idle_seconds", 0.3)
        return await EdgeVectorIndex.open(tmp_path / "qdrant", **options)
    return await ServerVectorIndex.open(location=":memory:", **options)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest_asyncio.fixture
async def index(backend: str, tmp_path: Path) -> AsyncIterator[VectorIndex]:
    opened = await open_backend(backend, tmp_path)
    try:
        yield opened
    finally:
        await opened.close()


async def search(
    index: VectorIndex,
    mode: str,
    where: SearchFilter,
    vector: np.ndarray,
    terms: dict[int, float],
    limit: int = 10,
) -> list[Hit]:
    if mode == "dense":
        return await index.search_dense(vector, where, limit)
    if mode == "sparse":
        return await index.search_sparse(list(terms), list(terms.values()), where, limit)
    sparse = SparseTerms(list(terms), list(terms.values()))
    return await index.search_hybrid(vector, sparse, where, limit)


def ids(hits: Sequence[StoredChunk]) -> list[str]:
    return [h.chunk_id for h in hits]


# ---------------------------------------------------------------------------------------------
# Storing and finding.


@pytest.mark.asyncio
async def test_a_point_comes_back_with_its_payload(index: VectorIndex) -> None:
    stored = [
        point(PROJECT_A, DOC_1, i, angled(0.3 * i), {100 + i: 1.0, 7: 2.0}, source_type=i % 4)
        for i in range(5)
    ]
    assert await index.upsert(stored) == 5

    target = stored[2]
    hits = await index.search_dense(target.dense, SearchFilter(PROJECT_A), 3)
    assert hits[0].chunk_id == target.chunk_id
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    first = hits[0]
    assert (first.project_id, first.document_id, first.chunk_index) == (PROJECT_A, DOC_1, 2)
    assert first.encrypted_text == target.encrypted_text
    assert first.encrypted_title == target.encrypted_title
    assert first.encrypted_source == target.encrypted_source
    assert (first.source_type, first.start_offset, first.end_offset) == (2, 200, 299)
    assert first.document_created_at == target.document_created_at

    keyword = await index.search_sparse([102], [1.0], SearchFilter(PROJECT_A), 5)
    assert ids(keyword) == [target.chunk_id]


@pytest.mark.asyncio
async def test_upserting_the_same_chunks_again_replaces_them(index: VectorIndex) -> None:
    stored = [point(PROJECT_A, DOC_1, i, angled(0.1 * i), {i: 1.0}) for i in range(10)]
    await index.upsert(stored)
    await index.upsert(stored)
    assert await index.count(PROJECT_A) == 10

    changed = point(PROJECT_A, DOC_1, 4, angled(0.4), {4: 1.0}, text=b"\x01new ciphertext")
    await index.upsert([changed])
    assert await index.count(PROJECT_A) == 10
    texts = {c.chunk_id: c.encrypted_text async for c in index.scroll(PROJECT_A)}
    assert texts[changed.chunk_id] == b"\x01new ciphertext"


@pytest.mark.asyncio
async def test_scroll_returns_every_chunk_of_the_project(index: VectorIndex) -> None:
    rng = np.random.default_rng(3)
    stored = random_points(rng, PROJECT_A, [DOC_1, DOC_2], 150)
    await index.upsert(stored)
    await index.upsert(random_points(rng, PROJECT_B, [DOC_1], 20))

    scanned = [c async for c in index.scroll(PROJECT_A, batch_size=64)]
    assert len(scanned) == 300
    assert {c.chunk_id for c in scanned} == {p.chunk_id for p in stored}
    by_id = {p.chunk_id: p for p in stored}
    for chunk in scanned:
        assert chunk.project_id == PROJECT_A
        assert chunk.encrypted_text == by_id[chunk.chunk_id].encrypted_text


@pytest.mark.asyncio
async def test_retrieve_reads_chunks_by_id_within_the_project(index: VectorIndex) -> None:
    a = [point(PROJECT_A, DOC_1, i, angled(0.1 * i)) for i in range(4)]
    b = point(PROJECT_B, DOC_1, 0, E0)
    await index.upsert([*a, b])
    unknown = chunk_id(PROJECT_A, DOC_3, 9)
    wanted = [a[3].chunk_id, unknown, a[0].chunk_id.upper(), b.chunk_id, a[3].chunk_id]

    found = await index.retrieve(PROJECT_A, wanted)
    # Asked order kept, unknown and foreign ids left out, ids compared as UUIDs.
    assert ids(found) == [a[3].chunk_id, a[0].chunk_id, a[3].chunk_id]
    assert found[0].encrypted_text == a[3].encrypted_text
    assert await index.retrieve(PROJECT_B, [a[0].chunk_id]) == []
    assert ids(await index.retrieve(PROJECT_B, [b.chunk_id])) == [b.chunk_id]
    assert await index.retrieve(PROJECT_A, []) == []
    with pytest.raises(ValueError, match="UUID"):
        await index.retrieve(PROJECT_A, ["not-a-uuid"])


@pytest.mark.asyncio
async def test_an_unknown_project_is_empty(index: VectorIndex) -> None:
    await index.upsert([point(PROJECT_A, DOC_1, 0, E0, {1: 1.0})])
    where = SearchFilter(PROJECT_C)
    assert await index.count(PROJECT_C) == 0
    assert await index.search_dense(E0, where) == []
    assert await index.search_sparse([1], [1.0], where) == []
    assert await index.search_hybrid(E0, SparseTerms([1], [1.0]), where) == []
    assert [c async for c in index.scroll(PROJECT_C)] == []
    await index.delete_project(PROJECT_C)
    assert await index.count(PROJECT_A) == 1


# ---------------------------------------------------------------------------------------------
# Tenant isolation.


@pytest.mark.asyncio
async def test_projects_with_identical_content_never_see_each_other(index: VectorIndex) -> None:
    rng = np.random.default_rng(7)
    a = random_points(rng, PROJECT_A, [DOC_1, DOC_2], 10)
    b = [
        point(
            PROJECT_B,
            p.document_id,
            p.chunk_index,
            np.asarray(p.dense),
            dict(zip(p.sparse_indices, p.sparse_values, strict=True)),
        )
        for p in a
    ]
    await index.upsert(a + b)
    a_ids, b_ids = {p.chunk_id for p in a}, {p.chunk_id for p in b}
    assert not a_ids & b_ids

    probe = a[3]
    terms = dict(zip(probe.sparse_indices, probe.sparse_values, strict=True))
    for mode in ("dense", "sparse", "hybrid"):
        hits_a = await search(index, mode, SearchFilter(PROJECT_A), probe.dense, terms, 50)
        hits_b = await search(index, mode, SearchFilter(PROJECT_B), probe.dense, terms, 50)
        assert hits_a and set(ids(hits_a)) <= a_ids, mode
        assert hits_b and set(ids(hits_b)) <= b_ids, mode
        assert {h.project_id for h in hits_a} == {PROJECT_A}
        if mode != "hybrid":  # (fused scores depend on how ties happen to be ordered)
            # Same content, same scores: the other tenant changes nothing.
            assert [h.score for h in hits_a] == pytest.approx([h.score for h in hits_b], rel=1e-5)

    await index.delete_project(PROJECT_A)
    assert await index.count(PROJECT_A) == 0
    assert await index.count(PROJECT_B) == len(b)
    assert await index.search_dense(probe.dense, SearchFilter(PROJECT_A)) == []
    assert ids(await index.search_dense(probe.dense, SearchFilter(PROJECT_B), 1)) == [
        chunk_id(PROJECT_B, probe.document_id, probe.chunk_index)
    ]


@pytest.mark.parametrize("kind", BACKENDS)
def test_no_query_ever_returns_another_projects_chunks(kind: str, tmp_path: Path) -> None:
    """Property: whatever the query, mode, limit or filter, hits belong to the queried project.

    Filters may even name another project's documents; those must match nothing.
    """
    loop = asyncio.new_event_loop()
    rng = np.random.default_rng(11)
    projects = {
        PROJECT_A: random_points(rng, PROJECT_A, [DOC_1, DOC_2], 20),
        PROJECT_B: random_points(rng, PROJECT_B, [DOC_1, DOC_3], 20),
        PROJECT_C: random_points(rng, PROJECT_C, [DOC_2], 15),
    }
    owned = {p: {pt.chunk_id for pt in pts} for p, pts in projects.items()}
    index = loop.run_until_complete(open_backend(kind, tmp_path))
    try:
        for pts in projects.values():
            loop.run_until_complete(index.upsert(pts))

        @settings(max_examples=40, deadline=None, derandomize=True)
        @given(
            project=st.sampled_from(sorted(projects)),
            mode=st.sampled_from(["dense", "sparse", "hybrid"]),
            seed=st.integers(0, 2**32 - 1),
            terms=st.dictionaries(st.integers(0, 220), st.floats(0.5, 3.0), max_size=6),
            limit=st.integers(1, 60),
            documents=st.lists(st.sampled_from([DOC_1, DOC_2, DOC_3]), max_size=2),
        )
        def prop(
            project: str,
            mode: str,
            seed: int,
            terms: dict[int, float],
            limit: int,
            documents: list[str],
        ) -> None:
            vector = np.random.default_rng(seed).standard_normal(DENSE_DIM)
            where = SearchFilter(project, document_ids=documents)
            hits = loop.run_until_complete(search(index, mode, where, vector, terms, limit))
            assert len(hits) <= limit
            assert set(ids(hits)) <= owned[project]
            assert {h.project_id for h in hits} <= {project}
            if documents:
                assert {h.document_id for h in hits} <= set(documents)

        prop()
    finally:
        loop.run_until_complete(index.close())
        loop.close()


# ---------------------------------------------------------------------------------------------
# Deleting.


@pytest.mark.asyncio
async def test_delete_document_removes_only_that_document(index: VectorIndex) -> None:
    d1 = [point(PROJECT_A, DOC_1, i, angled(0.01 * i), {5: 1.0}) for i in range(4)]
    d2 = [point(PROJECT_A, DOC_2, i, angled(0.5 + 0.01 * i), {5: 1.0}) for i in range(3)]
    b1 = [point(PROJECT_B, DOC_1, i, angled(0.01 * i), {5: 1.0}) for i in range(2)]
    await index.upsert(d1 + d2 + b1)

    await index.delete_document(PROJECT_A, DOC_1)
    assert await index.count(PROJECT_A) == 3
    assert await index.count(PROJECT_B) == 2
    for mode in ("dense", "sparse", "hybrid"):
        hits = await search(index, mode, SearchFilter(PROJECT_A), E0, {5: 1.0}, 20)
        assert {h.document_id for h in hits} == {DOC_2}, mode
    await index.delete_document(PROJECT_A, DOC_1)  # again: nothing left, no error
    assert await index.count(PROJECT_A) == 3


# ---------------------------------------------------------------------------------------------
# Filters.


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
async def test_filters_narrow_every_search_mode(index: VectorIndex, mode: str) -> None:
    layout = [  # document, source type, created at
        (DOC_1, 1, 100.0),
        (DOC_2, 2, 200.0),
        (DOC_3, 3, 300.0),
    ]
    stored = [
        point(
            PROJECT_A,
            doc,
            i,
            angled(0.1 * i + st_),
            {9: 1.0, 20 + i: 1.0},
            source_type=st_,
            created=created,
        )
        for doc, st_, created in layout
        for i in range(3)
    ]
    await index.upsert(stored)

    async def docs(**criteria: object) -> set[str]:
        hits = await search(index, mode, SearchFilter(PROJECT_A, **criteria), E0, {9: 1.0}, 50)
        return {h.document_id for h in hits}

    assert await docs() == {DOC_1, DOC_2, DOC_3}
    assert await docs(document_ids=[DOC_1, DOC_3]) == {DOC_1, DOC_3}
    assert await docs(source_types=[2]) == {DOC_2}
    assert await docs(source_types=[1, 3]) == {DOC_1, DOC_3}
    assert await docs(created_after=200.0) == {DOC_2, DOC_3}  # inclusive
    assert await docs(created_before=200.0) == {DOC_1}  # exclusive
    assert await docs(created_after=150.0, created_before=250.0) == {DOC_2}
    assert await docs(document_ids=[DOC_1], source_types=[2]) == set()
    assert await docs(document_ids=[DOC_2, DOC_3], created_before=300.0) == {DOC_2}


# ---------------------------------------------------------------------------------------------
# Keyword (BM25) ranking.


@pytest.mark.asyncio
async def test_keyword_search_ranks_the_chunk_with_the_rare_term_first(
    index: VectorIndex,
) -> None:
    common, rare = 1, 2
    stored = [
        point(PROJECT_A, DOC_1, i, angled(0.1 * i), {common: 3.0, 50 + i: 1.0}) for i in range(9)
    ]
    heavy = point(PROJECT_A, DOC_2, 0, angled(1.0), {common: 6.0, 80: 1.0})
    rare_chunk = point(PROJECT_A, DOC_3, 0, angled(1.2), {common: 1.0, rare: 1.0})
    await index.upsert([*stored, heavy, rare_chunk])

    hits = await index.search_sparse([common, rare], [1.0, 1.0], SearchFilter(PROJECT_A), 20)
    assert hits[0].chunk_id == rare_chunk.chunk_id
    assert len(hits) == 11  # every chunk shares the common term
    # Without the rare term, term frequency decides: the chunk repeating it most wins.
    hits = await index.search_sparse([common], [1.0], SearchFilter(PROJECT_A), 20)
    assert hits[0].chunk_id == heavy.chunk_id
    # A term no chunk contains matches nothing.
    assert await index.search_sparse([999], [1.0], SearchFilter(PROJECT_A)) == []


@pytest.mark.asyncio
async def test_bm25_saturates_term_frequency_and_prefers_shorter_chunks(
    index: VectorIndex,
) -> None:
    bm25 = index.bm25
    term = 42
    filler = {1000 + i: 1.0 for i in range(60)}  # makes a chunk long
    once = point(PROJECT_A, DOC_1, 0, angled(0.1), {term: 1.0})
    often = point(PROJECT_A, DOC_1, 1, angled(0.2), {term: 30.0})
    long_once = point(PROJECT_A, DOC_1, 2, angled(0.3), {term: 1.0, **filler})
    await index.upsert([once, often, long_once])

    hits = await index.search_sparse([term], [1.0], SearchFilter(PROJECT_A), 5)
    score = {h.chunk_id: h.score for h in hits}
    assert ids(hits) == [often.chunk_id, once.chunk_id, long_once.chunk_id]
    # 30 occurrences are worth more than one, but never more than (k1 + 1) times as much.
    assert 1.0 < score[often.chunk_id] / score[once.chunk_id] < bm25.k1 + 1.0
    # Same IDF for all three, so the ratio is exactly the documented BM25 term weight ratio.
    (w_once,) = bm25.document_weights([1.0])
    w_long = bm25.document_weights([1.0, *filler.values()])[0]
    assert score[long_once.chunk_id] / score[once.chunk_id] == pytest.approx(
        w_long / w_once, rel=1e-4
    )


@pytest.mark.asyncio
async def test_keyword_scores_use_the_projects_own_statistics(index: VectorIndex) -> None:
    a = [point(PROJECT_A, DOC_1, i, angled(0.1 * i), {1: 1.0, 10 + i: 1.0}) for i in range(5)]
    a.append(point(PROJECT_A, DOC_2, 0, angled(0.9), {2: 1.0}))
    await index.upsert(a)
    where = SearchFilter(PROJECT_A)
    before = await index.search_sparse([1, 2], [1.0, 1.0], where, 10)

    # Another project full of the same term ids must not change project A's scores.
    other = [point(PROJECT_B, DOC_1, i, angled(0.2), {2: 1.0, 1: 2.0}) for i in range(40)]
    await index.upsert(other)
    after = await index.search_sparse([1, 2], [1.0, 1.0], where, 10)

    assert ids(after) == ids(before)
    assert [h.score for h in after] == pytest.approx([h.score for h in before], rel=1e-5)
    # Term 2 is in 1 of A's 6 chunks, term 1 in 5: the rare term's chunk leads.
    assert before[0].chunk_id == a[-1].chunk_id


# ---------------------------------------------------------------------------------------------
# Hybrid search and fusion.


def _hybrid_layout() -> dict[str, IndexPoint]:
    """Dense order for E0: Y, X, W1, W2, Z. Keyword order for {10, 11}: Z, X; Y has neither."""
    return {
        "Y": point(PROJECT_A, DOC_1, 0, angled(0.1), {30: 1.0}),
        "X": point(PROJECT_A, DOC_1, 1, angled(0.2), {10: 1.0, 31: 1.0}),
        "W1": point(PROJECT_A, DOC_1, 2, angled(0.3), {32: 1.0}),
        "W2": point(PROJECT_A, DOC_1, 3, angled(0.4), {33: 1.0}),
        "Z": point(PROJECT_A, DOC_1, 4, angled(1.5), {10: 3.0, 11: 1.0}),
    }


@pytest.mark.asyncio
async def test_hybrid_second_in_both_lists_beats_first_in_only_one(index: VectorIndex) -> None:
    layout = _hybrid_layout()
    await index.upsert(list(layout.values()))
    name = {p.chunk_id: n for n, p in layout.items()}
    query = SparseTerms([10, 11], [1.0, 1.0])
    where = SearchFilter(PROJECT_A)

    dense = await index.search_dense(E0, where, 10)
    keyword = await index.search_sparse(query.indices, query.values, where, 10)
    assert [name[c] for c in ids(dense)] == ["Y", "X", "W1", "W2", "Z"]
    assert [name[c] for c in ids(keyword)] == ["Z", "X"]

    fused = await index.search_hybrid(E0, query, where, 10)
    assert [name[c] for c in ids(fused)] == ["X", "Z", "Y", "W1", "W2"]
    # Scores are shares of the best possible fused score, 2 / (RRF_K + 1).
    best = 2 / (RRF_K + 1)
    assert fused[0].score == pytest.approx(2 / (RRF_K + 2) / best)
    assert fused[1].score == pytest.approx((1 / (RRF_K + 1) + 1 / (RRF_K + 5)) / best)
    assert fused[2].score == pytest.approx(1 / (RRF_K + 1) / best)
    top = await index.search_hybrid(E0, query, where, 2)
    assert [name[c] for c in ids(top)] == ["X", "Z"]


@pytest.mark.asyncio
async def test_hybrid_weights_and_fusion_methods(index: VectorIndex) -> None:
    layout = _hybrid_layout()
    await index.upsert(list(layout.values()))
    name = {p.chunk_id: n for n, p in layout.items()}
    query = SparseTerms([10, 11], [1.0, 1.0])
    where = SearchFilter(PROJECT_A)

    async def order(**options: object) -> list[str]:
        return [name[c] for c in ids(await index.search_hybrid(E0, query, where, 10, **options))]

    assert await order(weights=(1.0, 0.0)) == ["Y", "X", "W1", "W2", "Z"]
    assert await order(weights=(0.0, 1.0)) == ["Z", "X"]
    # Keyword weighted 3x: Z's keyword lead now outweighs X's two second places.
    weighted = await index.search_hybrid(E0, query, where, 10, weights=(1.0, 3.0))
    assert [name[c] for c in ids(weighted)] == ["Z", "X", "Y", "W1", "W2"]
    best = 4 / (RRF_K + 1)
    assert weighted[0].score == pytest.approx((1 / (RRF_K + 5) + 3 / (RRF_K + 1)) / best)
    assert weighted[1].score == pytest.approx(4 / (RRF_K + 2) / best)
    dbsf = await index.search_hybrid(E0, query, where, 10, fusion="dbsf")
    assert {name[c] for c in ids(dbsf)} == set(layout)
    assert all(0.0 <= h.score <= 1.0 for h in dbsf)
    # No keyword terms: the dense ranking alone.
    empty = await index.search_hybrid(E0, SparseTerms([], []), where, 10)
    assert [name[c] for c in ids(empty)] == ["Y", "X", "W1", "W2", "Z"]
    assert empty[0].score == pytest.approx(1.0)  # the top of the only search made
    with pytest.raises(ValueError, match="unknown fusion"):
        await index.search_hybrid(E0, query, where, 10, fusion="max")
    with pytest.raises(ValueError, match="weight"):
        await index.search_hybrid(E0, query, where, 10, weights=(0.0, 0.0))


def _hits(*names: str, scores: list[float] | None = None) -> list[Hit]:
    scores = scores or [1.0 - 0.1 * i for i in range(len(names))]
    return [
        Hit(
            chunk_id=n,
            project_id=PROJECT_A,
            document_id=DOC_1,
            chunk_index=0,
            encrypted_text=b"x",
            encrypted_title=b"",
            encrypted_source=b"",
            source_type=1,
            start_offset=0,
            end_offset=1,
            document_created_at=0.0,
            score=s,
        )
        for n, s in zip(names, scores, strict=True)
    ]


def test_rrf_rewards_agreement_between_lists() -> None:
    fused = fuse([_hits("y", "x", "a"), _hits("z", "x", "b")], (1.0, 1.0), 10)
    assert fused[0].chunk_id == "x"
    assert fused[0].score == pytest.approx(2 / 62)
    # y and z tie (first in one list each): the smaller id wins, deterministically.
    assert [h.chunk_id for h in fused][1:3] == ["y", "z"]
    assert [h.chunk_id for h in fuse([_hits("y", "x"), _hits("z", "x")], (1, 1), 2)] == [
        "x",
        "y",
    ]
    weighted = fuse([_hits("y", "x"), _hits("z", "x")], (1.0, 2.0), 3)
    assert [h.chunk_id for h in weighted] == ["x", "z", "y"]
    assert weighted[1].score == pytest.approx(2 / 61)


def test_dbsf_scales_each_lists_scores() -> None:
    dense = _hits("a", "b", "c", scores=[0.9, 0.5, 0.1])
    keyword = _hits("c", "d", scores=[30.0, 10.0])
    fused = fuse([dense, keyword], (1.0, 1.0), 10, method="dbsf")
    scores = {h.chunk_id: h.score for h in fused}
    assert set(scores) == {"a", "b", "c", "d"}
    assert all(0.0 <= s <= 2.0 for s in scores.values())
    assert scores["c"] > scores["a"]  # top of the keyword list plus the bottom of dense
    assert scores["b"] == pytest.approx(0.5)  # the mean maps to the middle


def test_fusion_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        fuse([_hits("a")], (1.0, 1.0), 5)
    with pytest.raises(ValueError):
        fuse([_hits("a"), _hits("b")], (1.0, float("nan")), 5)
    with pytest.raises(ValueError):
        fuse([_hits("a"), _hits("b")], (-1.0, 1.0), 5)
    with pytest.raises(ValueError):
        fuse([_hits("a"), _hits("b")], (1.0, 1.0), 5, method="sum")


# ---------------------------------------------------------------------------------------------
# Bad input.


def _bad_points() -> dict[str, list[IndexPoint]]:
    good = point(PROJECT_A, DOC_1, 0, E0, {1: 1.0})

    def variant(**changes: object) -> IndexPoint:
        fields = {name: getattr(good, name) for name in IndexPoint.__dataclass_fields__}
        fields.update(changes)
        return IndexPoint(**fields)

    return {
        "dimension": [variant(dense=np.ones(DENSE_DIM - 1))],
        "NaN": [variant(dense=np.full(DENSE_DIM, np.nan))],
        "all zeros": [variant(dense=np.zeros(DENSE_DIM))],
        "UUID": [variant(chunk_id="chunk-0")],
        "indices but": [variant(sparse_indices=[1, 2], sparse_values=[1.0])],
        "distinct": [variant(sparse_indices=[1, 1], sparse_values=[1.0, 1.0])],
        "finite and >= 0": [variant(sparse_indices=[1], sparse_values=[-1.0])],
        "uint32": [variant(sparse_indices=[2**32], sparse_values=[1.0])],
        "encrypted_text": [variant(encrypted_text=b"")],
        "project_id": [variant(project_id="")],
        "chunk_index must be >= 0": [variant(chunk_index=-1)],
        "start_offset must be an integer": [variant(start_offset=1.5)],
        "term id must be an integer": [variant(sparse_indices=[1.0], sparse_values=[1.0])],
        "must be bytes": [variant(encrypted_title="plaintext title")],
        "document_created_at must be finite": [variant(document_created_at=float("nan"))],
        # One bad point spoils the batch: nothing of it is stored.
        "same chunk_id twice": [good, good],
        "dimensions": [point(PROJECT_A, DOC_1, 1, E0), variant(dense=[1.0, 2.0])],
    }


@pytest.mark.asyncio
@pytest.mark.parametrize("problem", sorted(_bad_points()))
async def test_bad_points_are_rejected_and_nothing_is_stored(
    index: VectorIndex, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        await index.upsert(_bad_points()[problem])
    assert await index.count(PROJECT_A) == 0


@pytest.mark.asyncio
async def test_bad_queries_are_rejected(index: VectorIndex) -> None:
    where = SearchFilter(PROJECT_A)
    with pytest.raises(ValueError, match="limit"):
        await index.search_dense(E0, where, 0)
    with pytest.raises(ValueError, match="limit"):
        await index.search_sparse([1], [1.0], where, 1001)
    with pytest.raises(ValueError, match="dimensions"):
        await index.search_dense(np.ones(8), where)
    with pytest.raises(ValueError, match="distinct"):
        await index.search_sparse([3, 3], [1.0, 1.0], where)
    with pytest.raises(ValueError, match="SearchFilter"):
        await index.search_dense(E0, PROJECT_A)
    with pytest.raises(ValueError, match="project_id"):
        SearchFilter("")
    with pytest.raises(ValueError, match="finite"):
        SearchFilter(PROJECT_A, created_after=float("inf"))
    with pytest.raises(ValueError, match="b must be"):
        Bm25Params(b=1.5)


# ---------------------------------------------------------------------------------------------
# Lifecycle.


@pytest.mark.asyncio
async def test_concurrent_calls_all_complete(index: VectorIndex) -> None:
    rng = np.random.default_rng(5)
    batches = [random_points(rng, PROJECT_A, [doc], 30) for doc in (DOC_1, DOC_2, DOC_3)]
    await index.upsert(batches[0])
    probe = batches[0][0]
    calls = [index.upsert(batch) for batch in batches[1:]]
    calls += [index.search_dense(probe.dense, SearchFilter(PROJECT_A), 5) for _ in range(20)]
    calls += [index.count(PROJECT_A) for _ in range(5)]
    results = await asyncio.gather(*calls)
    for hits in results[2:22]:
        assert hits[0].chunk_id == probe.chunk_id
    assert await index.count(PROJECT_A) == 90


@pytest.mark.asyncio
async def test_a_closed_index_is_unhealthy_and_refuses_calls(backend: str, tmp_path: Path) -> None:
    opened = await open_backend(backend, tmp_path)
    assert await opened.healthy()
    await opened.probe()
    await opened.close()
    await opened.close()  # idempotent
    assert not await opened.healthy()
    with pytest.raises(IndexUnavailableError):
        await opened.probe()
    with pytest.raises(VectorIndexError, match="closed"):
        await opened.count(PROJECT_A)


# ---------------------------------------------------------------------------------------------
# Embedded (Qdrant Edge) index only.


@pytest.mark.asyncio
async def test_edge_index_persists_across_reopen(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    stored = random_points(rng, PROJECT_A, [DOC_1, DOC_2], 40)
    first = await open_backend("edge", tmp_path)
    await first.upsert(stored)
    await first.delete_document(PROJECT_A, DOC_2)
    probe = stored[5]
    before = await first.search_hybrid(
        probe.dense,
        SparseTerms(probe.sparse_indices, probe.sparse_values),
        SearchFilter(PROJECT_A),
        10,
    )
    await first.close()

    second = await open_backend("edge", tmp_path)
    try:
        assert await second.count(PROJECT_A) == 40
        after = await second.search_hybrid(
            probe.dense,
            SparseTerms(probe.sparse_indices, probe.sparse_values),
            SearchFilter(PROJECT_A),
            10,
        )
        assert ids(after) == ids(before)
        assert [h.score for h in after] == pytest.approx([h.score for h in before])
    finally:
        await second.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
async def test_edge_index_recovers_when_its_host_process_dies(
    tmp_path: Path, how: signal.Signals
) -> None:
    index = await open_backend("edge", tmp_path)
    try:
        assert isinstance(index, EdgeVectorIndex)
        await index.upsert([point(PROJECT_A, DOC_1, i, angled(0.1 * i)) for i in range(25)])
        first_pid = index.host_pid
        assert first_pid is not None
        os.kill(first_pid, how)

        # The next call starts a new host; the write-ahead log kept every upsert.
        assert await index.count(PROJECT_A) == 25
        assert index.host_pid not in (None, first_pid)
        assert await index.healthy()
    finally:
        await index.close()


@pytest.mark.asyncio
async def test_edge_index_admits_one_opener_at_a_time(tmp_path: Path) -> None:
    index = await open_backend("edge", tmp_path)
    assert isinstance(index, EdgeVectorIndex)
    try:
        with pytest.raises(
            IndexLockedError, match=f"in use by another process \\(pid {index.host_pid}\\)"
        ):
            await open_backend("edge", tmp_path)

        script = textwrap.dedent(
            f"""
            import asyncio, sys
            from services.query.index import IndexLockedError
            from services.query.index.edge import EdgeVectorIndex
            try:
                asyncio.run(EdgeVectorIndex.open({str(tmp_path / "qdrant")!r}, lock_wait_seconds=0))
            except IndexLockedError as error:
                print(error)
                sys.exit(3)
            """
        )
        other = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other.returncode == 3, other.stderr
        assert "in use by another process" in other.stdout
        assert await index.count(PROJECT_A) == 0  # the holder is unaffected
    finally:
        await index.close()

    reopened = await open_backend("edge", tmp_path)  # released on close
    await reopened.close()


@pytest.mark.asyncio
async def test_edge_index_refuses_data_of_another_dimension(tmp_path: Path) -> None:
    index = await open_backend("edge", tmp_path)
    await index.close()
    with pytest.raises(VectorIndexError, match="expected vector size 8"):
        await open_backend("edge", tmp_path, dim=8)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_edge_index_builds_hnsw_graphs_and_still_finds_the_nearest(tmp_path: Path) -> None:
    """A tenant past the full-scan threshold is searched through its own HNSW graph."""
    rng = np.random.default_rng(13)
    vectors = rng.standard_normal((7000, DENSE_DIM)).astype(np.float32)
    big = [point(PROJECT_A, DOC_1, i, vectors[i], {i % 50: 1.0}) for i in range(7000)]
    small = random_points(rng, PROJECT_B, [DOC_1], 30)
    index = await open_backend("edge", tmp_path, optimize_idle_seconds=60.0)
    assert isinstance(index, EdgeVectorIndex)
    try:
        await index.upsert(big + small)
        assert await index.optimize()
        stats = await index.stats()
        assert stats["points"] == 7030
        assert stats["payload_indexes"] == [
            "document_created_at",
            "document_id",
            "project_id",
            "source_type",
        ]
        for i in rng.choice(7000, size=20, replace=False):
            hits = await index.search_dense(vectors[i], SearchFilter(PROJECT_A), 5)
            assert hits[0].chunk_id == big[i].chunk_id
            assert {h.project_id for h in hits} == {PROJECT_A}
        hits = await index.search_dense(small[0].dense, SearchFilter(PROJECT_B), 5)
        assert hits[0].chunk_id == small[0].chunk_id
    finally:
        await index.close()


async def _optimizations(index: EdgeVectorIndex) -> int:
    return int((await index.stats())["optimizations"])


@pytest.mark.asyncio
async def test_edge_index_optimises_by_itself_when_idle(tmp_path: Path) -> None:
    index = await open_backend("edge", tmp_path, optimize_idle_seconds=0.2)
    assert isinstance(index, EdgeVectorIndex)
    try:
        await asyncio.sleep(0.5)
        assert await _optimizations(index) == 0  # nothing to do before any update
        await index.upsert([point(PROJECT_A, DOC_1, i, angled(0.01 * i)) for i in range(50)])
        for _ in range(20):
            await asyncio.sleep(0.5)  # longer than the idle window
            if await _optimizations(index) >= 1:
                break
        assert await _optimizations(index) == 1
        assert await index.count(PROJECT_A) == 50
    finally:
        await index.close()


@pytest.mark.asyncio
async def test_edge_index_optimises_under_steady_traffic_too(tmp_path: Path) -> None:
    index = await open_backend(
        "edge", tmp_path, optimize_idle_seconds=30.0, optimize_max_delay_seconds=0.5
    )
    assert isinstance(index, EdgeVectorIndex)
    try:
        await index.upsert([point(PROJECT_A, DOC_1, i, angled(0.01 * i)) for i in range(50)])
        for _ in range(100):  # a request every 50 ms: never idle
            await index.search_dense(E0, SearchFilter(PROJECT_A), 3)
            if await _optimizations(index) >= 1:
                break
            await asyncio.sleep(0.05)
        assert await _optimizations(index) == 1
    finally:
        await index.close()


# ---------------------------------------------------------------------------------------------
# Server index (qdrant-client) only.


@pytest.mark.asyncio
async def test_an_unreachable_server_makes_the_index_unavailable_not_broken() -> None:
    index = await ServerVectorIndex.open(url=f"http://127.0.0.1:{free_port()}", request_timeout=2)
    try:
        assert not await index.healthy()
        with pytest.raises(IndexUnavailableError):
            await index.probe()
        with pytest.raises(IndexUnavailableError, match="cannot be reached"):
            await index.count(PROJECT_A)
        with pytest.raises(IndexUnavailableError):
            await index.search_dense(E0, SearchFilter(PROJECT_A))
    finally:
        await index.close()


@pytest.mark.asyncio
async def test_local_mode_on_disk_persists_and_checks_its_configuration(tmp_path: Path) -> None:
    path = str(tmp_path / "local")
    first = await ServerVectorIndex.open(path=path)
    await first.upsert([point(PROJECT_A, DOC_1, i, angled(0.1 * i), {i: 1.0}) for i in range(7)])
    await first.close()

    second = await ServerVectorIndex.open(path=path)
    try:
        assert await second.count(PROJECT_A) == 7
    finally:
        await second.close()
    with pytest.raises(VectorIndexError, match="another configuration"):
        await ServerVectorIndex.open(path=path, dim=8)


@pytest.mark.asyncio
async def test_open_index_chooses_the_backend_from_configuration(tmp_path: Path) -> None:
    embedded = await open_index(None, tmp_path / "qdrant")
    try:
        assert isinstance(embedded, EdgeVectorIndex)
        assert await embedded.healthy()
    finally:
        await embedded.close()
    remote = await open_index(f"http://127.0.0.1:{free_port()}", tmp_path / "unused")
    try:
        assert isinstance(remote, ServerVectorIndex)
        assert not await remote.healthy()
    finally:
        await remote.close()
