"""The trust boundary, attacked from inside the network: internal RPCs need the right
workload certificate, tokens open only what they were made for, passphrase guessing stays
slow, and forged page tokens are bad input. Over real sockets, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import uuid

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from contextcache.internal.v1 import crypto_pb2 as crypto_internal_pb2
from contextcache.internal.v1 import crypto_pb2_grpc as crypto_internal_pb2_grpc
from contextcache.v1 import crypto_pb2, ingest_pb2, projects_pb2, query_pb2
from runtime.callers import INTERNAL_CALLERS, served_by
from runtime.errors import bad_request_of
from runtime.protos import INTERNAL_METHODS
from runtime.tls import IDENTITIES
from tests.conftest import PASSPHRASE, new_project, running_stack

WRONG = "not the passphrase, clearly"


async def raw_call(channel: grpc.aio.Channel, method: str, metadata=()) -> grpc.StatusCode:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        await call(b"", timeout=10, metadata=metadata)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_every_internal_rpc_needs_a_certificate_the_caller_table_names(stack):
    assert set(INTERNAL_CALLERS) >= set(INTERNAL_METHODS), "a method missing from the table"
    for method in INTERNAL_METHODS:
        service = served_by(method)
        allowed = INTERNAL_CALLERS[method]
        for identity in IDENTITIES:
            code = await raw_call(stack.channel_as(service, identity), method)
            if identity in allowed:
                # Past the caller check: the handler validates the (empty) request or runs.
                assert code not in (
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.UNIMPLEMENTED,
                ), (method, identity, code)
            else:
                assert code == grpc.StatusCode.PERMISSION_DENIED, (method, identity, code)
        # Without a certificate the handshake fails: no handler runs.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports[service]}") as plain:
            assert await raw_call(plain, method) == grpc.StatusCode.UNAVAILABLE


async def test_a_substituted_keyring_opens_nothing(make_settings, database):
    async with running_stack(make_settings, database_url=database) as stack:
        victim, _ = await new_project(stack, "victim")
        as_projects = crypto_internal_pb2_grpc.CryptoInternalServiceStub(
            stack.channel_as("crypto", "projects")
        )
        attacker_passphrase = "the attacker's own passphrase"
        # A keyring for the victim's id cannot be registered a second time …
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await as_projects.CreateKeyring(
                crypto_internal_pb2.CreateKeyringRequest(
                    project_id=victim.id, passphrase=attacker_passphrase
                )
            )
        assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
        # … and one made for another id, relabelled, opens nothing for the victim.
        forged = (
            await as_projects.CreateKeyring(
                crypto_internal_pb2.CreateKeyringRequest(
                    project_id=str(uuid.uuid4()), passphrase=attacker_passphrase
                )
            )
        ).keyring
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await as_projects.OpenKeyring(
                crypto_internal_pb2.OpenKeyringRequest(
                    project_id=victim.id, keyring=forged, passphrase=attacker_passphrase
                )
            )
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Any other workload may not even ask.
        as_ingest = crypto_internal_pb2_grpc.CryptoInternalServiceStub(
            stack.channel_as("crypto", "ingest")
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await as_ingest.OpenKeyring(
                crypto_internal_pb2.OpenKeyringRequest(
                    project_id=victim.id, keyring=forged, passphrase=attacker_passphrase
                )
            )
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_job_tokens_and_grants_open_no_public_rpc(stack):
    project, token = await new_project(stack)
    document = (
        await stack.ingest.IngestDocument(
            ingest_pb2.IngestDocumentRequest(
                project_id=project.id,
                text=ingest_pb2.TextSource(title="t", body="Basalt is an igneous rock."),
            ),
            metadata=token,
        )
    ).document
    as_ingest = crypto_internal_pb2_grpc.CryptoInternalServiceStub(
        stack.channel_as("crypto", "ingest")
    )
    issued = await as_ingest.IssueJobToken(
        crypto_internal_pb2.IssueJobTokenRequest(project_id=project.id, document_id=document.id),
        metadata=token,
    )
    # What a reader of the ingest database or of Redis finds is the grant, never the token.
    async with stack.app("ingest").store.sessions() as session:
        from sqlalchemy import text

        stored = (await session.execute(text("SELECT job_grant FROM documents"))).scalars().all()
    assert all(value is None or not value.startswith("cct") for value in stored)
    grant = base64.b64encode(issued.job_grant).decode()
    for credential in (issued.job_token, grant):
        metadata = (("x-unlock-token", credential),)
        for call in (
            stack.query.Query(
                query_pb2.QueryRequest(project_id=project.id, query="rock"), metadata=metadata
            ),
            stack.projects.DeleteProject(
                projects_pb2.DeleteProjectRequest(project_id=project.id), metadata=metadata
            ),
            stack.ingest.ListDocuments(
                ingest_pb2.ListDocumentsRequest(project_id=project.id), metadata=metadata
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The grant is redeemable only by ingest and its worker.
    for identity, code in (("operator", grpc.StatusCode.PERMISSION_DENIED), ("query", None)):
        stub = crypto_internal_pb2_grpc.CryptoInternalServiceStub(
            stack.channel_as("crypto", identity)
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.RedeemJobGrant(
                crypto_internal_pb2.RedeemJobGrantRequest(job_grant=issued.job_grant)
            )
        assert raised.value.code() == (code or grpc.StatusCode.PERMISSION_DENIED)
    redeemed = await as_ingest.RedeemJobGrant(
        crypto_internal_pb2.RedeemJobGrantRequest(job_grant=issued.job_grant)
    )
    assert redeemed.job_token == issued.job_token and redeemed.document_id == document.id


def retry_after(error: grpc.aio.AioRpcError) -> float | None:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    return info.retry_delay.ToTimedelta().total_seconds()
    return None


@pytest.mark.parametrize("rpc", ["UnlockProject", "ChangePassphrase"])
async def test_wrong_passphrase_storms_are_slowed_per_address(make_settings, database, rpc):
    """Through the gateway each call carries the client's address in x-forwarded-for, which
    the projects service believes from Envoy's certificate only."""
    async with running_stack(make_settings, database_url=database) as stack:
        project, _ = await new_project(stack)
        projects = stack.projects.__class__(stack.channel_as("projects", "envoy"))

        def attempt(passphrase: str, address: str, key: str):
            metadata = (("x-forwarded-for", address), ("x-api-key", key))
            if rpc == "UnlockProject":
                return projects.UnlockProject(
                    projects_pb2.UnlockProjectRequest(project_id=project.id, passphrase=passphrase),
                    metadata=metadata,
                )
            return projects.ChangePassphrase(
                projects_pb2.ChangePassphraseRequest(
                    project_id=project.id,
                    old_passphrase=passphrase,
                    new_passphrase=passphrase + " again, longer",
                ),
                metadata=metadata,
            )

        codes = []
        for _ in range(12):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await attempt(WRONG, "203.0.113.7", uuid.uuid4().hex)  # a new API key each try
            codes.append(raised.value.code())
            if raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert 0 < retry_after(raised.value) <= 61
        assert codes.count(grpc.StatusCode.PERMISSION_DENIED) == 5
        assert codes[5:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 7
        # A forged x-forwarded-for from a caller that is not Envoy changes nothing.
        operator = stack.projects
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await operator.UnlockProject(
                projects_pb2.UnlockProjectRequest(project_id=project.id, passphrase=WRONG),
                metadata=(("x-forwarded-for", "198.51.100.1"),),
            )
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Another client with the right passphrase is not locked out.
        assert await attempt(PASSPHRASE, "198.51.100.99", "k")


async def test_forged_page_tokens_are_invalid_argument_naming_the_field(stack):
    project, token = await new_project(stack)

    def b64(value) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    audit_token = b64(["audit", 3])
    documents_token = b64(["documents", "2026-01-01T00:00:00+00:00", "x"])
    forged = [
        "garbage!",
        b64({"a": 1}),
        b64(["projects", "not a timestamp", "x"]),
        b64(["projects", "2026-01-01T00:00:00", "x"]),  # no zone
        documents_token,  # another list's token
        b64(["projects", 1e400, "x"]),
        base64.b64encode(b"\xff\xfe").decode(),
        audit_token,
    ]
    calls = {
        "ListProjects": lambda t: stack.projects.ListProjects(
            projects_pb2.ListProjectsRequest(page_token=t)
        ),
        "ListDocuments": lambda t: stack.ingest.ListDocuments(
            ingest_pb2.ListDocumentsRequest(project_id=project.id, page_token=t), metadata=token
        ),
        "ListAuditEvents": lambda t: stack.crypto.ListAuditEvents(
            crypto_pb2.ListAuditEventsRequest(project_id=project.id, page_token=t),
            metadata=token,
        ),
    }
    for name, call in calls.items():
        for page_token in forged:
            if (name, page_token) in (
                ("ListAuditEvents", audit_token),
                ("ListDocuments", documents_token),
            ):
                continue  # well-formed tokens of that list
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(page_token)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, page_token)
            violations = bad_request_of(raised.value).field_violations
            assert [v.field for v in violations] == ["page_token"], (name, page_token)
