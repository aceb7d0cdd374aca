"""Validation: protovalidate rules reach callers as INVALID_ARGUMENT with field violations."""

from __future__ import annotations

import grpc
import pytest

from contextcache.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)
from runtime.errors import bad_request_of
from services.ingest.app import IngestApp
from services.projects.app import ProjectsApp
from services.query.app import QueryApp
from tests.conftest import channel_to, running

PASSPHRASE = "correct horse battery staple"
PROJECT_ID = "6f1c2a4e-8a4b-4a8e-9a53-2f0d2b3c4d5e"


async def invalid(call, request) -> tuple[str, list[tuple[str, str]]]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(request, timeout=5)
    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    details = bad_request_of(error)
    assert details is not None, "INVALID_ARGUMENT must carry google.rpc.BadRequest"
    return error.details(), [(v.field, v.reason) for v in details.field_violations]


PROJECT_CASES = [
    (
        projects_pb2.CreateProjectRequest(name="x" * 201, passphrase=PASSPHRASE),
        "CreateProject",
        ("name", "project.name.max_len"),
        "Project name too long. Maximum length is 200 characters",
    ),
    (
        projects_pb2.CreateProjectRequest(name="   ", passphrase=PASSPHRASE),
        "CreateProject",
        ("name", "project.name.blank"),
        "Project name cannot be empty",
    ),
    (
        projects_pb2.CreateProjectRequest(name="ok", passphrase="short"),
        "CreateProject",
        ("passphrase", "project.passphrase.min_len"),
        "Passphrase too short. Minimum length is 20 characters",
    ),
    (
        projects_pb2.GetProjectRequest(project_id="not-a-uuid"),
        "GetProject",
        ("project_id", "string.uuid"),
        "project_id must be a valid UUID",
    ),
    (
        projects_pb2.ListProjectsRequest(page_size=0),
        "ListProjects",
        ("page_size", "page_size.range"),
        "Page size must be between 1 and 100",
    ),
    (
        projects_pb2.ListProjectsRequest(page_size=101),
        "ListProjects",
        ("page_size", "page_size.range"),
        "Page size must be between 1 and 100",
    ),
]


@pytest.mark.parametrize(("request_", "method", "violation", "message"), PROJECT_CASES)
async def test_project_rules(make_settings, request_, method, violation, message):
    async with (
        running(ProjectsApp(make_settings())) as server,
        channel_to(server.port, server.settings) as ch,
    ):
        stub = projects_pb2_grpc.ProjectServiceStub(ch)
        text, violations = await invalid(getattr(stub, method), request_)
        assert violation in violations
        assert text.startswith(message) or message in text


async def test_a_malformed_page_token_names_the_field(make_settings):
    async with (
        running(ProjectsApp(make_settings())) as server,
        channel_to(server.port, server.settings) as ch,
    ):
        stub = projects_pb2_grpc.ProjectServiceStub(ch)
        _, violations = await invalid(
            stub.ListProjects, projects_pb2.ListProjectsRequest(page_token="%%%")
        )
        assert [field for field, _ in violations] == ["page_token"]


INGEST_CASES = [
    (
        ingest_pb2.IngestDocumentRequest(
            project_id=PROJECT_ID,
            file=ingest_pb2.FileSource(filename="report.doc", content=b"x"),
        ),
        ("file.filename", "file.extension"),
    ),
    (
        ingest_pb2.IngestDocumentRequest(
            project_id=PROJECT_ID, file=ingest_pb2.FileSource(filename="a.txt", content=b"")
        ),
        ("file.content", "file.content.empty"),
    ),
    (
        ingest_pb2.IngestDocumentRequest(
            project_id=PROJECT_ID, url=ingest_pb2.UrlSource(url="ftp://example.com/x")
        ),
        ("url.url", "url.scheme"),
    ),
    (
        ingest_pb2.IngestDocumentRequest(
            project_id=PROJECT_ID,
            url=ingest_pb2.UrlSource(url="https://example.com/" + "a" * 1990),
        ),
        ("url.url", "url.max_len"),
    ),
    (ingest_pb2.IngestDocumentRequest(project_id=PROJECT_ID), ("source", "required")),
]


@pytest.mark.parametrize(("request_", "violation"), INGEST_CASES)
async def test_ingest_rules(make_settings, request_, violation):
    async with (
        running(IngestApp(make_settings())) as server,
        channel_to(server.port, server.settings) as ch,
    ):
        stub = ingest_pb2_grpc.IngestServiceStub(ch)
        _, violations = await invalid(stub.IngestDocument, request_)
        assert violation in violations, violations


QUERY_CASES = [
    (query_pb2.QueryRequest(project_id=PROJECT_ID, query=""), ("query", "query.empty")),
    (
        query_pb2.QueryRequest(project_id=PROJECT_ID, query="q" * 1001),
        ("query", "query.max_len"),
    ),
    (
        query_pb2.QueryRequest(project_id=PROJECT_ID, query="q", top_k=0),
        ("top_k", "top_k.range"),
    ),
    (
        query_pb2.QueryRequest(project_id=PROJECT_ID, query="q", top_k=51),
        ("top_k", "top_k.range"),
    ),
    (query_pb2.QueryRequest(project_id="nope", query="q"), ("project_id", "string.uuid")),
    (
        query_pb2.QueryRequest(project_id=PROJECT_ID, query="q", mode=9),
        ("mode", "enum.defined_only"),
    ),
]


@pytest.mark.parametrize(("request_", "violation"), QUERY_CASES)
async def test_query_rules(make_settings, request_, violation):
    async with (
        running(QueryApp(make_settings())) as server,
        channel_to(server.port, server.settings) as ch,
    ):
        stub = query_pb2_grpc.QueryServiceStub(ch)
        _, violations = await invalid(stub.Query, request_)
        assert violation in violations, violations
