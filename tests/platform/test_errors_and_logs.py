"""Unexpected errors become INTERNAL with a reference (and reach Sentry, scrubbed); every
call logs one line and returns x-process-time."""

from __future__ import annotations

import gzip
import http.server
import json
import logging
import threading

import grpc
import pytest
import sentry_sdk

from contextcache.v1 import projects_pb2, projects_pb2_grpc
from runtime.config import ServiceName
from runtime.server import ServiceApp
from runtime.telemetry import configure_sentry
from services.projects.app import ProjectsApp
from tests.conftest import channel_to, running

SECRET = "hunter2-correct-horse-battery-staple"


class FailingProjects(projects_pb2_grpc.ProjectServiceServicer):
    """A handler with a bug: the runtime must contain it."""

    async def GetProject(self, request, context):
        passphrase = SECRET  # a local the error report must not carry
        raise RuntimeError(f"database row exploded near {passphrase[:0]}offset 42")


class FailingApp(ServiceApp):
    name = ServiceName.PROJECTS
    service_names = ("contextcache.v1.ProjectService",)

    def register(self, server: grpc.aio.Server) -> None:
        projects_pb2_grpc.add_ProjectServiceServicer_to_server(FailingProjects(), server)


class SentryIntake(http.server.BaseHTTPRequestHandler):
    envelopes: list[bytes] = []  # noqa: RUF012

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        SentryIntake.envelopes.append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def sentry_dsn():
    SentryIntake.envelopes = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SentryIntake)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://public@127.0.0.1:{httpd.server_address[1]}/1"
    sentry_sdk.get_client().close(timeout=2)
    sentry_sdk.get_global_scope().set_client(None)  # no client: monitoring DISABLED again
    httpd.shutdown()


async def test_unexpected_errors_are_internal_with_a_reference_and_reach_sentry(
    make_settings, sentry_dsn, caplog
):
    settings = make_settings(sentry_dsn=sentry_dsn)
    assert configure_sentry(settings, "projects")
    async with (
        running(FailingApp(settings)) as server,
        channel_to(server.port, server.settings) as channel,
    ):
        stub = projects_pb2_grpc.ProjectServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetProject(
                projects_pb2.GetProjectRequest(project_id="6f1c2a4e-8a4b-4a8e-9a53-2f0d2b3c4d5e")
            )
    error = raised.value
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details().startswith("Internal error. Reference: ")
    reference = error.details().rsplit(" ", 1)[1]
    assert "exploded" not in error.details() and "Traceback" not in error.details()
    assert all(k != "grpc-status-details-bin" for k, _ in error.trailing_metadata())

    sentry_sdk.flush(timeout=5)
    events = [e for e in SentryIntake.envelopes if b'"type":"event"' in e]
    assert events, "the error must reach Sentry"
    payload = events[0].decode()
    assert "RuntimeError" in payload and reference in payload
    assert SECRET not in payload, "local variables must be scrubbed"
    assert f"reference {reference}" in caplog.text


async def test_every_call_logs_one_line_and_returns_x_process_time(make_settings, caplog):
    caplog.set_level(logging.INFO, logger="contextcache.rpc")
    async with (
        running(ProjectsApp(make_settings())) as server,
        channel_to(server.port, server.settings) as ch,
    ):
        stub = projects_pb2_grpc.ProjectServiceStub(ch)
        call = stub.ListProjects(projects_pb2.ListProjectsRequest(page_size=5))
        await call
        trailing = dict(await call.trailing_metadata())
        assert float(trailing["x-process-time"]) >= 0
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetProject(projects_pb2.GetProjectRequest(project_id="bad"))
        trailing = dict(raised.value.trailing_metadata())
        assert float(trailing["x-process-time"]) >= 0

    lines = [r for r in caplog.records if r.name == "contextcache.rpc"]
    methods = [(r.rpc_method, r.rpc_code) for r in lines]
    assert methods == [
        ("/contextcache.v1.ProjectService/ListProjects", "OK"),
        ("/contextcache.v1.ProjectService/GetProject", "INVALID_ARGUMENT"),
    ]
    for record in lines:
        assert record.duration_ms >= 0 and record.peer.startswith("ipv4:127.0.0.1")
        assert len(record.request_id) >= 16


async def test_json_log_lines(make_settings, capfd):
    from runtime.logs import configure_logging

    configure_logging("json", "INFO", "projects")
    try:
        async with (
            running(ProjectsApp(make_settings())) as server,
            channel_to(server.port, server.settings) as c,
        ):
            await projects_pb2_grpc.ProjectServiceStub(c).ListProjects(
                projects_pb2.ListProjectsRequest(), metadata=(("x-request-id", "req-123"),)
            )
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line]
    rpc = [line for line in lines if line["logger"] == "contextcache.rpc"]
    assert len(rpc) == 1
    assert rpc[0]["rpc_method"].endswith("/ListProjects")
    assert rpc[0]["rpc_code"] == "OK" and rpc[0]["request_id"] == "req-123"
