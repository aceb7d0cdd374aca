"""IngestService through the API: the document checklist, bad input, upstream failures,
duplicates and encryption at rest (embedded default: SQLite, embedded index, in-process jobs)."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import threading
import unicodedata
from pathlib import Path

import grpc
import pytest

from contextcache.v1 import ingest_pb2, query_pb2
from runtime.errors import bad_request_of
from tests.conftest import eventually, new_project, running_stack
from tests.unit.test_extract import build_pdf

DATA = Path(__file__).resolve().parent.parent / "data"
SPEECH = (DATA / "gettysburg.txt").read_text(encoding="utf-8")
SECRET_SENTENCE = "The quartermaster hid the brass compass beneath the lighthouse stairs."
FACTUAL = (
    "Marie Curie was a physicist and chemist. She discovered polonium and radium. "
    "The Curie Institute is a research centre in Paris. Radium glows in the dark."
)


def text_request(project_id: str, body: str, title: str = "", background: bool = False):
    return ingest_pb2.IngestDocumentRequest(
        project_id=project_id,
        text=ingest_pb2.TextSource(title=title, body=body),
        background=background,
    )


def file_request(project_id: str, filename: str, content: bytes, background: bool = False):
    return ingest_pb2.IngestDocumentRequest(
        project_id=project_id,
        file=ingest_pb2.FileSource(filename=filename, content=content),
        background=background,
    )


def url_request(project_id: str, url: str, background: bool = False):
    return ingest_pb2.IngestDocumentRequest(
        project_id=project_id, url=ingest_pb2.UrlSource(url=url), background=background
    )


async def query_reachable_from_ingest(stack) -> bool:
    status = (await stack.ingest.GetStatus(ingest_pb2.IngestServiceGetStatusRequest())).status
    check = next(c for c in status.checks if c.name == "query")
    return check.result == check.RESULT_OK


async def failure(awaitable) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await awaitable
    return raised.value


async def documents_of(stack, project_id, token) -> list[ingest_pb2.Document]:
    response = await stack.ingest.ListDocuments(
        ingest_pb2.ListDocumentsRequest(project_id=project_id, page_size=100), metadata=token
    )
    return list(response.documents)


class Site:
    """A local HTTP server with a few routes (404, slow, huge, text, html)."""

    def __init__(self) -> None:
        routes = {
            "/speech.txt": (200, "text/plain; charset=utf-8", SPEECH.encode()),
            "/article.html": (200, "text/html", (DATA / "article.html").read_bytes()),
            "/missing": (404, "text/plain", b"no"),
        }

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/huge":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.end_headers()
                    chunk = b"a lot of words " * 4096
                    try:
                        for _ in range(1000):  # ~60 MB offered; the fetcher stops at 10 MB
                            self.wfile.write(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                status, kind, body = routes.get(self.path, (404, "text/plain", b""))
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def site():
    served = Site()
    yield served
    served.close()


async def test_text_document_checklist(stack):
    project, token = await new_project(stack)
    document = (
        await stack.ingest.IngestDocument(
            text_request(project.id, FACTUAL, "Curie"), metadata=token
        )
    ).document
    assert document.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, document.error
    assert document.source_type == ingest_pb2.SOURCE_TYPE_TEXT
    assert document.title == "Curie"
    normalized = unicodedata.normalize("NFC", FACTUAL)
    assert document.content_hash == hashlib.sha256(normalized.encode()).hexdigest()
    assert document.chunk_count == 1 and document.chunks_total == 1
    assert document.fact_count >= 2, "facts are counted, not chunks"
    assert document.fact_count != document.chunk_count

    stats = (
        await stack.projects.GetProject(
            __import__("contextcache.v1.projects_pb2", fromlist=["x"]).GetProjectRequest(
                project_id=project.id
            )
        )
    ).project
    assert (stats.document_count, stats.fact_count) == (1, document.fact_count)

    hits = await stack.query.Query(
        query_pb2.QueryRequest(project_id=project.id, query="who discovered radium?"),
        metadata=token,
    )
    assert hits.passages and hits.passages[0].document_id == document.id


async def test_files_pdf_and_txt_chunked_within_the_window(stack):
    project, token = await new_project(stack)
    pdf = build_pdf(
        [b"BT /F1 12 Tf 72 720 Td (The lighthouse keeper logs every passing ship.) Tj ET"],
        title="Keeper",
    )
    pdf_doc = (
        await stack.ingest.IngestDocument(
            file_request(project.id, "keeper.pdf", pdf), metadata=token
        )
    ).document
    assert pdf_doc.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, pdf_doc.error
    assert (pdf_doc.source_type, pdf_doc.title, pdf_doc.source) == (
        ingest_pb2.SOURCE_TYPE_PDF,
        "Keeper",
        "keeper.pdf",
    )

    long_text = "\n\n".join([SPEECH] * 12)
    txt_doc = (
        await stack.ingest.IngestDocument(
            file_request(project.id, "speech.TXT", long_text.encode()), metadata=token
        )
    ).document
    assert txt_doc.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, txt_doc.error
    assert txt_doc.chunk_count > 12
    response = await stack.query.Query(
        query_pb2.QueryRequest(
            project_id=project.id,
            query="government of the people",
            top_k=50,
            filters=query_pb2.QueryFilters(document_ids=[txt_doc.id]),
        ),
        metadata=token,
    )
    from retrieval.embeddings import count_tokens
    from services.query.passages import MAX_CHUNKS_PER_PASSAGE

    # Enough chunks for the text at no more than the window each (they also overlap).
    assert txt_doc.chunk_count * (256 - 2) >= count_tokens(long_text)
    assert response.passages
    for passage in response.passages:
        # A passage is at most MAX_CHUNKS_PER_PASSAGE neighbouring chunks merged.
        assert count_tokens(passage.text) + 2 <= MAX_CHUNKS_PER_PASSAGE * 256
        assert passage.end_offset > passage.start_offset


async def test_url_documents_and_upstream_failures(stack, site):
    project, token = await new_project(stack)
    page = (
        await stack.ingest.IngestDocument(
            url_request(project.id, f"{site.base}/article.html"), metadata=token
        )
    ).document
    assert page.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, page.error
    assert page.source == f"{site.base}/article.html"

    for path, words in (("/missing", "404"), ("/huge", "larger than")):
        error = await failure(
            stack.ingest.IngestDocument(url_request(project.id, site.base + path), metadata=token)
        )
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert words in error.details()
    failed = [
        d
        for d in await documents_of(stack, project.id, token)
        if d.status == ingest_pb2.DOCUMENT_STATUS_FAILED
    ]
    assert len(failed) == 2 and all(d.error for d in failed)


async def test_duplicates_are_refused_race_safely_and_failed_ones_do_not_block(stack):
    project, token = await new_project(stack)
    first = (
        await stack.ingest.IngestDocument(text_request(project.id, SPEECH), metadata=token)
    ).document
    error = await failure(
        stack.ingest.IngestDocument(text_request(project.id, SPEECH + "\n"), metadata=token)
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first.id in error.details()

    racers = await asyncio.gather(
        *(
            stack.ingest.IngestDocument(
                text_request(project.id, FACTUAL, background=True), metadata=token
            )
            for _ in range(5)
        ),
        return_exceptions=True,
    )
    accepted = [r for r in racers if not isinstance(r, Exception)]
    refused = [r for r in racers if isinstance(r, grpc.aio.AioRpcError)]
    assert len(accepted) == 1 and len(refused) == 4
    assert {r.code() for r in refused} == {grpc.StatusCode.ALREADY_EXISTS}


async def test_a_failed_document_does_not_block_its_retry(make_settings, site):
    async with running_stack(make_settings, ingest_max_attempts=1) as stack:
        project, token = await new_project(stack)
        await stack.stop_service("query")  # indexing fails while the query service is down
        error = await failure(
            stack.ingest.IngestDocument(text_request(project.id, SPEECH), metadata=token)
        )
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        [failed] = await documents_of(stack, project.id, token)
        assert failed.status == ingest_pb2.DOCUMENT_STATUS_FAILED
        await stack.start_service("query")
        await eventually(lambda: query_reachable_from_ingest(stack), timeout=20)

        retried = (
            await stack.ingest.RetryDocument(
                ingest_pb2.RetryDocumentRequest(project_id=project.id, document_id=failed.id),
                metadata=token,
            )
        ).document
        assert retried.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, retried.error
        again = await failure(
            stack.ingest.IngestDocument(text_request(project.id, SPEECH), metadata=token)
        )
        assert again.code() == grpc.StatusCode.ALREADY_EXISTS


BAD_INPUTS = [
    (
        "file",
        ("Report.DOC", b"hello"),
        "file.filename",
        "Unsupported file type '.doc'. Allowed types: .pdf, .txt",
    ),
    ("file", ("README", b"hello"), "file.filename", "no extension"),
    ("file", ("empty.txt", b""), "file.content", "File is empty"),
    ("file", ("latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1")), "file.content", "UTF-8"),
    ("file", ("broken.pdf", b"%PDF-1.4\n garbage \x00\x01"), "file.content", "PDF"),
    (
        "file",
        ("scan.pdf", build_pdf([b"q 8 0 0 8 72 700 cm /Im1 Do Q"], image=True)),
        "file.content",
        "text",
    ),
    ("text", ("", "  !!! ... ???  "), "text.body", "readable"),
    ("url", "ftp://example.com/file.txt", "url.url", "http"),
    ("url", "https://example.com/" + "x" * 1990, "url.url", "2000"),
]


@pytest.mark.parametrize(("kind", "value", "field", "words"), BAD_INPUTS)
async def test_bad_input_is_refused_and_nothing_is_stored(stack, kind, value, field, words):
    project, token = await new_project(stack)
    if kind == "file":
        request = file_request(project.id, *value)
    elif kind == "text":
        request = text_request(project.id, value[1], value[0])
    else:
        request = url_request(project.id, value)
    error = await failure(stack.ingest.IngestDocument(request, metadata=token))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert words.lower() in error.details().lower()
    assert field in [v.field for v in bad_request_of(error).field_violations]
    assert await documents_of(stack, project.id, token) == []


async def test_oversized_upload_is_refused(stack):
    project, token = await new_project(stack)
    content = b"x" * (50 * 1024 * 1024 + 1)
    error = await failure(
        stack.ingest.IngestDocument(file_request(project.id, "big.txt", content), metadata=token)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "50 MB" in error.details()
    assert await documents_of(stack, project.id, token) == []


async def test_private_addresses_are_refused_unless_allowed(make_settings, site):
    async with running_stack(make_settings, url_fetch_allow_private=False) as stack:
        project, token = await new_project(stack)
        for url in (f"{site.base}/speech.txt", "http://169.254.169.254/latest/meta-data/"):
            error = await failure(
                stack.ingest.IngestDocument(url_request(project.id, url), metadata=token)
            )
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            assert "address" in error.details()
        assert await documents_of(stack, project.id, token) == []


async def test_background_ingestion_is_watched_to_completion(stack):
    project, token = await new_project(stack)
    queued = (
        await stack.ingest.IngestDocument(
            text_request(project.id, "\n\n".join([SPEECH] * 6), background=True), metadata=token
        )
    ).document
    assert queued.status == ingest_pb2.DOCUMENT_STATUS_QUEUED
    seen = []
    async for update in stack.ingest.WatchDocument(
        ingest_pb2.WatchDocumentRequest(project_id=project.id, document_id=queued.id),
        metadata=token,
        timeout=120,
    ):
        seen.append(update.document)
    assert seen[-1].status == ingest_pb2.DOCUMENT_STATUS_COMPLETED
    statuses = [d.status for d in seen]
    assert statuses == sorted(statuses)  # queued → processing → completed, never backwards
    progress = [(d.chunks_embedded, d.chunks_total) for d in seen if d.chunks_total]
    assert progress[-1][0] == progress[-1][1] == seen[-1].chunk_count


async def test_list_documents_by_project_status_and_page(stack):
    project, token = await new_project(stack)
    other, other_token = await new_project(stack, name="other")
    ids = []
    for i in range(5):
        body = f"Document number {i} talks about topic {i * 7}."
        ids.append(
            (
                await stack.ingest.IngestDocument(text_request(project.id, body), metadata=token)
            ).document.id
        )
    await stack.ingest.IngestDocument(
        text_request(other.id, "Elsewhere entirely."), metadata=other_token
    )

    seen, page_token = [], ""
    while True:
        page = await stack.ingest.ListDocuments(
            ingest_pb2.ListDocumentsRequest(
                project_id=project.id, page_size=2, page_token=page_token
            ),
            metadata=token,
        )
        seen.extend(d.id for d in page.documents)
        page_token = page.next_page_token
        if not page_token:
            break
    assert seen == list(reversed(ids))  # newest first, each once, only this project's
    failed = await stack.ingest.ListDocuments(
        ingest_pb2.ListDocumentsRequest(
            project_id=project.id, status=ingest_pb2.DOCUMENT_STATUS_FAILED
        ),
        metadata=token,
    )
    assert list(failed.documents) == []
    error = await failure(
        stack.ingest.ListDocuments(
            ingest_pb2.ListDocumentsRequest(project_id=project.id), metadata=other_token
        )
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_no_plaintext_at_rest(stack):
    project, token = await new_project(stack)
    body = f"{SPEECH}\n\n{SECRET_SENTENCE}"
    document = (
        await stack.ingest.IngestDocument(
            text_request(project.id, body, title="Lighthouse secrets"), metadata=token
        )
    ).document
    assert document.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED
    await stack.stop_service("ingest")  # flush SQLite WAL into the files
    await stack.stop_service("query")
    needles = [SECRET_SENTENCE.encode(), b"quartermaster", b"Lighthouse secrets"]
    files = [p for p in Path(stack.settings.data_dir).rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in files)
    for path in files:
        content = path.read_bytes()
        for needle in needles:
            assert needle not in content, f"{needle!r} found in {path}"
