"""Paging, the same on every List RPC of the public API (protos/contextcache/v1): a table of
(ListProjects, ListDocuments, ListAuditEvents), each checked against the same rules over
gRPC: no page_size gives 20, 100 is the most accepted, 0 and 101 are INVALID_ARGUMENT naming
`page_size`, a cursor walk returns every item exactly once in the order of one big page, and
a page token of another list is refused naming `page_token`.

The design refuses an explicit 0 rather than reading it as "the default" (DESIGN.md:
out-of-range values are rejected, not clamped); leaving page_size out gives the default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

import grpc

from contextcache.v1 import crypto_pb2, ingest_pb2, projects_pb2
from runtime.errors import bad_request_of
from runtime.protos import PUBLIC_METHODS
from tests.conftest import PASSPHRASE, eventually, new_project, running_stack

ITEMS = 23  # more than one default page of every list
DEFAULT, MOST = 20, 100


@dataclasses.dataclass
class PagedList:
    method: str
    call: Callable[..., Awaitable]  # (page_size | None, page_token) → response
    items: str  # the repeated field of the response
    key: str  # what identifies an item

    async def page(self, page_size: int | None = None, page_token: str = ""):
        return await self.call(page_size, page_token)

    def keys(self, response) -> list:
        return [getattr(item, self.key) for item in getattr(response, self.items)]


def size(page_size: int | None) -> dict:
    return {} if page_size is None else {"page_size": page_size}


async def filled_lists(stack) -> list[PagedList]:
    """A project with ITEMS documents and at least ITEMS audit events, among ITEMS projects."""
    for index in range(ITEMS - 1):
        await stack.projects.CreateProject(
            projects_pb2.CreateProjectRequest(name=f"paged {index}", passphrase=PASSPHRASE)
        )
    project, token = await new_project(stack, name="paged")
    for index in range(ITEMS):
        await stack.ingest.IngestDocument(
            ingest_pb2.IngestDocumentRequest(
                project_id=project.id,
                text=ingest_pb2.TextSource(
                    title=f"note {index}", body=f"Note number {index} is about paging lists."
                ),
            ),
            metadata=token,
        )

    async def list_projects(page_size, page_token):
        return await stack.projects.ListProjects(
            projects_pb2.ListProjectsRequest(page_token=page_token, **size(page_size))
        )

    async def list_documents(page_size, page_token):
        return await stack.ingest.ListDocuments(
            ingest_pb2.ListDocumentsRequest(
                project_id=project.id, page_token=page_token, **size(page_size)
            ),
            metadata=token,
        )

    async def list_audit_events(page_size, page_token):
        return await stack.crypto.ListAuditEvents(
            crypto_pb2.ListAuditEventsRequest(
                project_id=project.id, page_token=page_token, **size(page_size)
            ),
            metadata=token,
        )

    async def every_event_delivered() -> bool:
        # The outbox relay delivers events shortly after the change.
        return len((await list_audit_events(MOST, "")).events) >= ITEMS

    await eventually(every_event_delivered, timeout=30)
    return [
        PagedList("/contextcache.v1.ProjectService/ListProjects", list_projects, "projects", "id"),
        PagedList(
            "/contextcache.v1.IngestService/ListDocuments", list_documents, "documents", "id"
        ),
        PagedList(
            "/contextcache.v1.CryptoService/ListAuditEvents", list_audit_events, "events", "seq"
        ),
    ]


async def refused_field(call: Awaitable) -> tuple[grpc.StatusCode, list[str]]:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        bad_request = bad_request_of(error)
        fields = [v.field for v in bad_request.field_violations] if bad_request else []
        return error.code(), fields
    raise AssertionError("the call should have been refused")


def test_the_table_names_every_list_rpc_of_the_public_api():
    listed = {m for m in PUBLIC_METHODS if m.rsplit("/", 1)[1].startswith("List")}
    assert listed == {
        "/contextcache.v1.ProjectService/ListProjects",
        "/contextcache.v1.IngestService/ListDocuments",
        "/contextcache.v1.CryptoService/ListAuditEvents",
    }


async def test_every_list_pages_the_same_way(make_settings):
    async with running_stack(make_settings) as stack:
        lists = await filled_lists(stack)
        for paged in lists:
            everything = await paged.page(MOST)
            every_key = paged.keys(everything)
            assert len(every_key) >= ITEMS, paged.method
            assert not everything.next_page_token, paged.method

            first = await paged.page()
            assert paged.keys(first) == every_key[:DEFAULT], paged.method
            assert first.next_page_token, paged.method

            for bad in (0, MOST + 1):
                code, fields = await refused_field(paged.page(bad))
                assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_size"]), (
                    paged.method,
                    bad,
                )

            walked, token, pages = [], "", 0
            while pages < 20:
                page = await paged.page(7, token)
                walked += paged.keys(page)
                pages += 1
                token = page.next_page_token
                if not token:
                    break
            assert walked == every_key, paged.method  # each item once, in order
            assert pages == -(-len(every_key) // 7)

        # A page token of one list is refused by every other.
        tokens = {paged.method: (await paged.page(3)).next_page_token for paged in lists}
        for paged in lists:
            for method, token in tokens.items():
                if method == paged.method:
                    continue
                code, fields = await refused_field(paged.page(3, token))
                assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"]), (
                    paged.method,
                    method,
                )
