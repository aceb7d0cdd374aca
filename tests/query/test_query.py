"""QueryService through the gRPC API: isolation between projects, unlock tokens, deleted and
reindexed documents, what a passage carries, filters, and the Redis query cache.

The whole stack runs in this process on the embedded default (SQLite, the embedded Qdrant Edge
index). Tests of the query cache run their own redis-server on a free port, so they can read
everything the cache wrote without touching the shared Redis.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import subprocess
import time
import uuid

import grpc
import pytest
import redis
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from contextcache.internal.v1 import query_pb2 as query_internal_pb2
from contextcache.internal.v1 import query_pb2_grpc as query_internal_pb2_grpc
from contextcache.v1 import ingest_pb2, query_pb2, query_pb2_grpc
from runtime.ports import free_port
from services.crypto.tokens import TokenAuthority
from services.query.cache import PREFIX
from tests.conftest import identity_of, new_project, running_stack

HYBRID = query_pb2.RETRIEVAL_MODE_HYBRID
DENSE = query_pb2.RETRIEVAL_MODE_DENSE
KEYWORD = query_pb2.RETRIEVAL_MODE_KEYWORD
MODES = (HYBRID, DENSE, KEYWORD)

# One chunk each. Both projects of the isolation test hold SHARED; each also holds its own.
SHARED = {
    "Tides": "Tides are the rise and fall of sea levels caused by the gravity of the Moon "
    "and the Sun acting on the rotating Earth.",
    "Volcanoes": "Volcanoes erupt when molten rock, ash and gases escape through vents in "
    "the crust of the Earth.",
    "Bread": "Bread rises because yeast ferments the sugars in the dough and releases "
    "carbon dioxide, which the gluten traps in small bubbles.",
    "Chess": "In chess the bishop moves diagonally any number of squares, and castling moves "
    "the king two squares towards a rook.",
}
ALPHA_ONLY = {
    "Glaciers": "Glaciers carve U-shaped valleys as the ice slowly grinds rock beneath it on "
    "its way downhill.",
    "Bees": "Honey bees communicate the direction of flowers to their hive mates with a "
    "waggle dance.",
}
BETA_ONLY = {
    "Lighthouse": "The keeper of the lighthouse trimmed the lamp wick every evening so ships "
    "could pass the reef safely.",
    "Comets": "Comets grow bright tails of gas and dust that always point away from the Sun.",
}
WORDS = sorted(
    {
        w.lower()
        for body in [*SHARED.values(), *ALPHA_ONLY.values(), *BETA_ONLY.values()]
        for w in re.findall(r"[A-Za-z]+", body)
    }
)


async def ingest_text(stack, project_id: str, token, title: str, body: str):
    document = (
        await stack.ingest.IngestDocument(
            ingest_pb2.IngestDocumentRequest(
                project_id=project_id, text=ingest_pb2.TextSource(title=title, body=body)
            ),
            metadata=token,
        )
    ).document
    assert document.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, document.error
    return document


async def ingest_all(stack, project_id: str, token, texts: dict[str, str]) -> dict[str, str]:
    """Ingests each (title, body); returns document ids by title."""
    return {
        title: (await ingest_text(stack, project_id, token, title, body)).id
        for title, body in texts.items()
    }


async def query(stack, project_id: str, token, text: str, **fields) -> query_pb2.QueryResponse:
    return await stack.query.Query(
        query_pb2.QueryRequest(project_id=project_id, query=text, **fields), metadata=token
    )


async def failure(awaitable) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await awaitable
    return raised.value


def ranking(response: query_pb2.QueryResponse) -> list[tuple[str, float]]:
    return [(p.chunk_id, p.score) for p in response.passages]


@pytest.fixture
def own_redis(tmp_path):
    """A private redis-server on a free port: the test may read (and the cache fill) all of it."""
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_timeout=2)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None:
                    pytest.fail("redis-server did not start")
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", client
    finally:
        client.close()
        process.terminate()
        process.wait(10)


# -- isolation ---------------------------------------------------------------------------------

QUERIES = st.one_of(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join),
    st.text(min_size=1, max_size=200).filter(lambda s: s.strip()),
)


async def test_a_query_never_returns_another_projects_passages(stack):
    alpha, alpha_token = await new_project(stack, "alpha")
    beta, beta_token = await new_project(stack, "beta")
    alpha_docs = await ingest_all(stack, alpha.id, alpha_token, {**SHARED, **ALPHA_ONLY})
    beta_docs = await ingest_all(stack, beta.id, beta_token, {**SHARED, **BETA_ONLY})
    sides = [
        (alpha.id, alpha_token, set(alpha_docs.values())),
        (beta.id, beta_token, set(beta_docs.values())),
    ]
    assert not sides[0][2] & sides[1][2]

    # Hypothesis drives a blocking client from a worker thread while the servers keep
    # running on this event loop.
    def property_check() -> None:
        operator = identity_of(stack.settings)
        with grpc.secure_channel(
            f"127.0.0.1:{stack.ports['query']}", operator.channel_credentials()
        ) as channel:
            stub = query_pb2_grpc.QueryServiceStub(channel)

            @settings(max_examples=25, deadline=None)
            @given(text=QUERIES, mode=st.sampled_from(MODES), top_k=st.integers(1, 50))
            def only_own_documents(text: str, mode: int, top_k: int) -> None:
                for project_id, token, own in sides:
                    response = stub.Query(
                        query_pb2.QueryRequest(
                            project_id=project_id,
                            query=text,
                            top_k=top_k,
                            mode=mode,
                            min_score=-1,  # keep dense matches of negative cosine similarity
                        ),
                        metadata=token,
                        timeout=30,
                    )
                    found = {p.document_id for p in response.passages}
                    assert found <= own, (text, mode)
                    if mode != KEYWORD:  # dense search ranks every chunk of the project
                        assert len(response.passages) == min(top_k, len(own))

            only_own_documents()

    await asyncio.to_thread(property_check)


# -- unlock tokens -----------------------------------------------------------------------------


def expired_copy(stack, token: str) -> str:
    """The same token (project, scope, keys) with an expiry in the past, sealed and signed by
    the deployment's own token authority (TOKEN_SEALING_KEY of this stack)."""
    authority = TokenAuthority(base64.b64decode(stack.settings.token_sealing_key))
    live = authority.open(token)
    expired, _ = authority.issue(live.project_id, live.scope, -1, live.keys, live.generation)
    return expired


async def test_missing_expired_or_foreign_token_is_unauthenticated(stack):
    project, token = await new_project(stack, "mine")
    _, other_token = await new_project(stack, "theirs")
    await ingest_text(stack, project.id, token, "Tides", SHARED["Tides"])
    assert (await query(stack, project.id, token, "what causes tides?")).passages

    missing = await failure(
        stack.query.Query(query_pb2.QueryRequest(project_id=project.id, query="tides"))
    )
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "x-unlock-token" in missing.details()

    expired = await failure(
        query(stack, project.id, (("x-unlock-token", expired_copy(stack, token[0][1])),), "tides")
    )
    assert expired.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in expired.details()

    foreign = await failure(query(stack, project.id, other_token, "tides"))
    assert foreign.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "another project" in foreign.details()

    altered = token[0][1][:-2] + ("AA" if not token[0][1].endswith("AA") else "BB")
    tampered = await failure(query(stack, project.id, (("x-unlock-token", altered),), "tides"))
    assert tampered.code() == grpc.StatusCode.UNAUTHENTICATED


# -- deleted and reindexed documents -----------------------------------------------------------


@pytest.mark.parametrize("cached", [False, True], ids=["no-cache", "redis-cache"])
async def test_deleted_document_never_comes_back(make_settings, tmp_path, cached, request):
    overrides = {}
    if cached:
        url, _ = request.getfixturevalue("own_redis")
        overrides["redis_url"] = url
    async with running_stack(make_settings, **overrides) as stack:
        project, token = await new_project(stack)
        docs = await ingest_all(stack, project.id, token, {**SHARED, **ALPHA_ONLY})
        gone = docs["Tides"]
        questions = ["what makes the sea rise and fall?", "moon gravity", "volcano ash"]
        for text in questions:
            for mode in MODES:
                first = await query(stack, project.id, token, text, top_k=50, mode=mode)
                assert not first.cached
                if cached:  # the ranking is in the cache now
                    again = await query(stack, project.id, token, text, top_k=50, mode=mode)
                    assert again.cached and ranking(again) == ranking(first)
        before = await query(stack, project.id, token, questions[0], top_k=50)
        assert before.passages[0].document_id == gone

        await stack.ingest.DeleteDocument(
            ingest_pb2.DeleteDocumentRequest(project_id=project.id, document_id=gone),
            metadata=token,
        )
        for text in questions:
            for mode in MODES:
                response = await query(
                    stack, project.id, token, text, top_k=50, mode=mode, min_score=-1
                )
                assert not response.cached
                assert gone not in {p.document_id for p in response.passages}
                if mode != KEYWORD:
                    assert len(response.passages) == len(docs) - 1
        only_gone = await query(
            stack,
            project.id,
            token,
            questions[0],
            filters=query_pb2.QueryFilters(document_ids=[gone]),
        )
        assert list(only_gone.passages) == []


async def test_reindex_reproduces_the_same_results(stack):
    project, token = await new_project(stack)
    await ingest_all(stack, project.id, token, {**SHARED, **ALPHA_ONLY})
    questions = ["what makes the sea rise and fall?", "yeast dough", "how do bees talk?"]

    async def results() -> list[list[tuple[str, float]]]:
        return [
            ranking(await query(stack, project.id, token, text, top_k=10, mode=mode))
            for text in questions
            for mode in MODES
        ]

    before = await results()
    await stack.app("query").index.delete_project(project.id)
    assert all(r == [] for r in await results())  # the index really lost the project

    reindexed = await stack.ingest.ReindexProject(
        ingest_pb2.ReindexProjectRequest(project_id=project.id), metadata=token
    )
    assert reindexed.documents_reindexed == len(SHARED) + len(ALPHA_ONLY)
    after = await results()
    for old, new in zip(before, after, strict=True):
        assert [cid for cid, _ in new] == [cid for cid, _ in old]
        assert [s for _, s in new] == pytest.approx([s for _, s in old], rel=1e-5, abs=1e-6)


# -- passages, filters, min_score, timings, top_k ----------------------------------------------


async def test_passages_carry_text_score_and_citation(stack):
    project, token = await new_project(stack)
    note = await ingest_text(stack, project.id, token, "Bread notes", SHARED["Bread"])
    body = ". ".join(f"Sentence {n} tells of the lighthouse keeper and the reef" for n in range(80))
    upload = (
        await stack.ingest.IngestDocument(
            ingest_pb2.IngestDocumentRequest(
                project_id=project.id,
                file=ingest_pb2.FileSource(filename="keeper.txt", content=body.encode()),
            ),
            metadata=token,
        )
    ).document
    assert upload.chunk_count >= 2

    response = await query(stack, project.id, token, "why does dough rise?", top_k=50)
    top = response.passages[0]
    assert top.text == SHARED["Bread"]
    assert top.document_id == note.id and top.document_title == "Bread notes"
    assert top.source_type == ingest_pb2.SOURCE_TYPE_TEXT
    assert (top.chunk_index, top.start_offset, top.end_offset) == (0, 0, len(SHARED["Bread"]))
    assert uuid.UUID(top.chunk_id)
    scores = [p.score for p in response.passages]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0

    # The upload's overlapping chunks come back merged into passages that tile the document:
    # each passage is the document's text between its true offsets, and no text repeats.
    passages = sorted(
        (p for p in response.passages if p.document_id == upload.id), key=lambda p: p.start_offset
    )
    assert 1 <= len(passages) < upload.chunk_count
    for p in passages:
        assert p.source == "keeper.txt" and p.source_type == ingest_pb2.SOURCE_TYPE_TEXT_FILE
        assert p.document_title == upload.title
        assert p.text == body[p.start_offset : p.end_offset]
    for before, after in itertools.pairwise(passages):
        assert before.end_offset <= after.start_offset
        assert body[before.end_offset : after.start_offset].strip() == ""
    assert passages[0].start_offset == 0 and passages[-1].end_offset == len(body)
    assert passages[0].chunk_index == 0
    assert len(response.passages) == 1 + len(passages)


async def test_top_k_passages_are_distinct_spans(stack):
    """Neighbouring chunks that both match are one passage, and k passages are k spans."""
    project, token = await new_project(stack)
    topics = ["tides", "volcanoes", "glaciers", "comets", "bread", "chess", "bees", "reefs"]
    body = " ".join(
        f"Part {n} of the almanac says the {topics[n % len(topics)]} of the northern coast were "
        f"recorded by the lighthouse keeper in the {n}th logbook."
        for n in range(120)
    )
    upload = await ingest_text(stack, project.id, token, "Almanac", body)
    assert upload.chunk_count >= 6
    for mode in MODES:
        response = await query(
            stack, project.id, token, "the lighthouse keeper's logbook", top_k=4, mode=mode
        )
        spans = sorted((p.start_offset, p.end_offset) for p in response.passages)
        assert len(spans) == 4, mode
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start, (mode, spans)  # no two passages share any text
        for p in response.passages:
            assert p.text == body[p.start_offset : p.end_offset], mode
        scores = [p.score for p in response.passages]
        assert scores == sorted(scores, reverse=True)


async def test_filters_min_score_timings_and_default_top_k(stack):
    project, token = await new_project(stack)
    documents = [
        await ingest_text(stack, project.id, token, title, body)
        for title, body in {**SHARED, **ALPHA_ONLY}.items()
    ]
    upload = (
        await stack.ingest.IngestDocument(
            ingest_pb2.IngestDocumentRequest(
                project_id=project.id,
                file=ingest_pb2.FileSource(
                    filename="comets.txt", content=BETA_ONLY["Comets"].encode()
                ),
            ),
            metadata=token,
        )
    ).document
    documents.append(upload)
    text = "the Earth and the Sun"

    default = await query(stack, project.id, token, text)
    assert len(default.passages) == 5
    timings = default.timings
    assert timings.embed_ms > 0 and timings.search_ms > 0 and timings.decrypt_ms > 0
    assert timings.total_ms >= timings.embed_ms + timings.search_ms + timings.decrypt_ms
    assert len((await query(stack, project.id, token, text, top_k=7)).passages) == 7

    wanted = [documents[1].id, documents[4].id]
    narrowed = await query(
        stack,
        project.id,
        token,
        text,
        top_k=50,
        filters=query_pb2.QueryFilters(document_ids=wanted),
    )
    assert sorted(p.document_id for p in narrowed.passages) == sorted(wanted)

    files = await query(
        stack,
        project.id,
        token,
        text,
        top_k=50,
        filters=query_pb2.QueryFilters(source_types=[ingest_pb2.SOURCE_TYPE_TEXT_FILE]),
    )
    assert [p.document_id for p in files.passages] == [upload.id]

    created = {d.id: d.created_at.ToNanoseconds() for d in documents}
    middle = sorted(created.values())[len(created) // 2]
    for field, keep in (
        ("created_after", lambda ns: ns >= middle),
        ("created_before", lambda ns: ns < middle),
    ):
        response = await query(
            stack,
            project.id,
            token,
            text,
            top_k=50,
            filters=query_pb2.QueryFilters(**{field: _timestamp(middle)}),
        )
        expected = {d for d, ns in created.items() if keep(ns)}
        assert {p.document_id for p in response.passages} == expected, field

    ranked = await query(stack, project.id, token, text, top_k=50, mode=DENSE)
    scores = [p.score for p in ranked.passages]
    unrelated = await query(stack, project.id, token, "0", top_k=50, mode=DENSE)
    assert len(unrelated.passages) == len(ranked.passages)  # no min_score: nothing dropped
    threshold = scores[3]
    above = await query(stack, project.id, token, text, top_k=50, mode=DENSE, min_score=threshold)
    assert [p.score for p in above.passages] == [s for s in scores if s >= threshold]
    none = await query(
        stack, project.id, token, text, top_k=50, mode=DENSE, min_score=min(1.0, scores[0] + 0.01)
    )
    assert list(none.passages) == []


def _timestamp(nanos: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(nanos)
    return stamp


# -- the query cache ---------------------------------------------------------------------------


async def test_query_cache_serves_repeats_and_forgets_on_index_changes(make_settings, own_redis):
    url, client = own_redis
    async with running_stack(make_settings, redis_url=url) as stack:
        project, token = await new_project(stack, "cached")
        other, other_token = await new_project(stack, "neighbour")
        docs = await ingest_all(stack, project.id, token, SHARED)
        text = "Why does bread dough rise?"

        first = await query(stack, project.id, token, text)
        assert not first.cached and first.passages
        second = await query(stack, project.id, token, text)
        assert second.cached
        assert list(second.passages) == list(first.passages)
        assert second.timings.embed_ms == 0  # served without embedding the query again
        assert (await query(stack, project.id, token, "  why does BREAD dough rise? ")).cached
        assert not (await query(stack, project.id, token, text, top_k=3)).cached
        assert not (await query(stack, project.id, token, text, mode=DENSE)).cached

        async def cached_now() -> bool:
            return (await query(stack, project.id, token, text)).cached

        # Another project's index changes leave this project's entries alone.
        await ingest_text(stack, other.id, other_token, "Bees", ALPHA_ONLY["Bees"])
        assert await cached_now()

        # IndexChunks (a new document) invalidates the project's rankings …
        added = await ingest_text(stack, project.id, token, "Glaciers", ALPHA_ONLY["Glaciers"])
        assert not await cached_now()
        assert await cached_now()
        # … and so does DeleteDocumentChunks, through DeleteDocument or called directly.
        await stack.ingest.DeleteDocument(
            ingest_pb2.DeleteDocumentRequest(project_id=project.id, document_id=added.id),
            metadata=token,
        )
        assert not await cached_now()
        assert await cached_now()
        internal = query_internal_pb2_grpc.QueryInternalServiceStub(
            stack.channel_as("query", "ingest")
        )
        await internal.DeleteDocumentChunks(
            query_internal_pb2.DeleteDocumentChunksRequest(
                project_id=project.id, document_id=docs["Chess"]
            )
        )
        response = await query(stack, project.id, token, text, top_k=50)
        assert not response.cached
        assert docs["Chess"] not in {p.document_id for p in response.passages}

        # Nothing the cache wrote holds the queries or any passage text.
        secrets = {text.casefold(), "bread dough"} | {
            body.casefold() for body in {**SHARED, **ALPHA_ONLY}.values()
        }
        secrets |= {w for w in WORDS if len(w) >= 5}
        # (Passphrase-attempt counters of the unlocks above share this Redis: digests only.)
        keys = [
            key.decode()
            for key in client.scan_iter(count=1000)
            if not key.startswith(b"ratelimit:passphrase:")
        ]
        assert keys and all(key.startswith(f"{PREFIX}:") for key in keys)
        assert any(key.startswith(f"{PREFIX}:{project.id}:") for key in keys)
        for key in keys:
            stored = (key + " " + client.get(key).decode()).casefold()
            leaked = [s for s in secrets if s in stored]
            assert not leaked, (key, leaked)
