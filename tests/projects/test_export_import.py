"""ExportProject / ImportProject between two separate deployments, over real sockets.

The bundle must carry content still encrypted, verify only under the signing key of the
keyring the passphrase opens, and land whole or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contextcache.internal.v1 import bundle_pb2
from contextcache.internal.v1 import ingest_pb2 as ingest_internal_pb2
from contextcache.internal.v1 import ingest_pb2_grpc as ingest_internal_pb2_grpc
from contextcache.v1 import crypto_pb2, ingest_pb2, projects_pb2, query_pb2
from runtime.errors import bad_request_of
from services.crypto import canonical
from tests.conftest import PASSPHRASE, fresh_database, new_project, running_stack

BODIES = {
    "Tides": "The moon pulls the oceans, and the tides rise and fall twice a day along the coast. "
    "The moon is a natural satellite.",
    "Bees": "Honey bees dance in the hive to tell their sisters where the flowers bloom. "
    "Honey bees are social insects.",
}
SECRET_PHRASE = b"tell their sisters where the flowers"


async def ingest(stack, project_id, token):
    for title, body in BODIES.items():
        document = (
            await stack.ingest.IngestDocument(
                ingest_pb2.IngestDocumentRequest(
                    project_id=project_id, text=ingest_pb2.TextSource(title=title, body=body)
                ),
                metadata=token,
            )
        ).document
        assert document.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, document.error


async def export(stack, project_id, token) -> bytes:
    pieces = [
        response.data
        async for response in stack.projects.ExportProject(
            projects_pb2.ExportProjectRequest(project_id=project_id), metadata=token
        )
    ]
    assert all(len(piece) <= 1024 * 1024 for piece in pieces)
    return b"".join(pieces)


async def import_bundle(stack, bundle: bytes, passphrase: str = PASSPHRASE, piece: int = 50_000):
    def requests():
        yield projects_pb2.ImportProjectRequest(passphrase=passphrase, data=bundle[:piece])
        for start in range(piece, len(bundle), piece):
            yield projects_pb2.ImportProjectRequest(data=bundle[start : start + piece])

    return await stack.projects.ImportProject(requests())


async def failure(awaitable) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await awaitable
    return raised.value


async def top_passages(stack, project_id, token, text):
    response = await stack.query.Query(
        query_pb2.QueryRequest(project_id=project_id, query=text, top_k=3), metadata=token
    )
    return [(p.chunk_id, p.text, p.document_id) for p in response.passages]


async def unlock(stack, project_id, passphrase=PASSPHRASE):
    unlocked = await stack.projects.UnlockProject(
        projects_pb2.UnlockProjectRequest(project_id=project_id, passphrase=passphrase)
    )
    return (("x-unlock-token", unlocked.unlock_token),)


def frames(bundle: bytes):
    """(offset, payload) of each frame, read by the documented format."""
    offset = 12
    while offset < len(bundle):
        (length,) = struct.unpack(">I", bundle[offset : offset + 4])
        yield offset, bundle[offset + 4 : offset + 4 + length]
        offset += 4 + length


def flip(bundle: bytes, at: int) -> bytes:
    return bundle[:at] + bytes([bundle[at] ^ 0x01]) + bundle[at + 1 :]


@contextlib.asynccontextmanager
async def target_deployment(make_settings, tmp_path, database):
    """A second deployment: its own data directory (and database on PostgreSQL)."""
    if database is None:
        async with running_stack(make_settings, data_dir=tmp_path / "target") as stack:
            yield stack
        return
    with fresh_database() as url:
        async with running_stack(
            make_settings, data_dir=tmp_path / "target", database_url=url
        ) as stack:
            yield stack


async def test_round_trip_to_another_deployment(make_settings, tmp_path, database):
    async with running_stack(make_settings, database_url=database) as source:
        project, token = await new_project(source, name="field notes")
        await ingest(source, project.id, token)
        questions = ["why do tides rise?", "how do bees share where flowers are?"]
        expected = [await top_passages(source, project.id, token, q) for q in questions]
        stats = (
            await source.projects.GetProjectStats(
                projects_pb2.GetProjectStatsRequest(project_id=project.id)
            )
        ).stats
        assert stats.fact_count > 0  # facts travel too
        bundle = await export(source, project.id, token)
        source_events = [e async for e in _all_events(source, project.id, token)]

    assert SECRET_PHRASE not in bundle and b"Tides" not in bundle  # content stays encrypted
    assert source_events[-1].type == crypto_pb2.AUDIT_EVENT_TYPE_PROJECT_EXPORTED

    async with target_deployment(make_settings, tmp_path, database) as target:
        imported = await import_bundle(target, bundle)
        assert imported.project.id == project.id
        assert imported.project.name == "field notes"
        assert imported.project.public_key == project.public_key
        assert (imported.documents_imported, imported.chunks_imported) == (2, 2)
        assert imported.facts_imported == stats.fact_count
        imported_stats = (
            await target.projects.GetProjectStats(
                projects_pb2.GetProjectStatsRequest(project_id=project.id)
            )
        ).stats
        assert (imported_stats.documents_completed, imported_stats.fact_count) == (
            2,
            stats.fact_count,
        )
        assert imported_stats.stored_bytes == stats.stored_bytes
        assert imported.audit_events_imported == len(source_events)
        assert imported.chunks_indexed == 2

        token = await unlock(target, project.id)
        answers = [await top_passages(target, project.id, token, q) for q in questions]
        assert answers == expected

        verified = await target.crypto.VerifyAuditChain(
            crypto_pb2.VerifyAuditChainRequest(project_id=project.id)
        )
        assert verified.valid, verified.reason
        events = [e async for e in _all_events(target, project.id, token)]
        assert [e.hash for e in events[: len(source_events)]] == [e.hash for e in source_events]
        assert events[len(source_events)].type == crypto_pb2.AUDIT_EVENT_TYPE_PROJECT_IMPORTED
        assert events[len(source_events)].attributes["documents"] == "2"

        # The same bundle again, and the project can be listed, read and exported again.
        again = await failure(import_bundle(target, bundle))
        assert again.code() == grpc.StatusCode.ALREADY_EXISTS
        listed = await target.projects.ListProjects(projects_pb2.ListProjectsRequest())
        assert [p.id for p in listed.projects] == [project.id]
        assert listed.projects[0].document_count == 2
        assert SECRET_PHRASE not in await export(target, project.id, token)


async def _all_events(stack, project_id, token):
    page_token = ""
    while True:
        page = await stack.crypto.ListAuditEvents(
            crypto_pb2.ListAuditEventsRequest(
                project_id=project_id, page_size=100, page_token=page_token
            ),
            metadata=token,
        )
        for event in page.events:
            yield event
        if not page.next_page_token:
            return
        page_token = page.next_page_token


def _tampered(bundle: bytes) -> dict[str, bytes]:
    """The bundle with one byte flipped in each part that matters, and cut short."""
    records = list(frames(bundle))
    header_at, header = records[0]
    name_at = header_at + 4 + header.index(b"field notes")
    content = next(
        (at, p)
        for at, p in records[:-1]
        if bundle_pb2.BundleRecord.FromString(p).HasField("content")
    )
    chunk_ct = bundle_pb2.BundleRecord.FromString(content[1]).content.chunks[0].text_ct
    audit = next(
        (at, p) for at, p in records[:-1] if bundle_pb2.BundleRecord.FromString(p).HasField("audit")
    )
    event = bundle_pb2.BundleRecord.FromString(audit[1]).audit.events[1]
    signature_at = records[-1][0]
    return {
        "magic": flip(bundle, 0),
        "header (project name)": flip(bundle, name_at),
        "a frame length": flip(bundle, content[0] + 3),
        "a chunk's ciphertext": flip(bundle, bundle.index(chunk_ct) + len(chunk_ct) // 2),
        "an audit event": flip(bundle, bundle.index(event.hash) + 5),
        "the audit event's signature": flip(bundle, bundle.index(event.signature) + 10),
        "the signature": flip(bundle, len(bundle) - 3),
        "the digest": flip(bundle, signature_at + 8),
        "cut before the signature": bundle[:signature_at],
        "cut in the middle": bundle[: len(bundle) // 2],
        "a byte appended": bundle + b"\x00",
    }


def _fields(error: grpc.RpcError) -> list[str]:
    bad_request = bad_request_of(error)
    return [v.field for v in bad_request.field_violations] if bad_request else []


def _resigned(bundle: bytes, project_id: str) -> bytes:
    """A forgery: a chunk altered, then the bundle signed again by a key of the forger's."""
    records = list(frames(bundle))
    chunk_ct = next(
        bundle_pb2.BundleRecord.FromString(p).content.chunks[0].text_ct
        for _, p in records
        if bundle_pb2.BundleRecord.FromString(p).HasField("content")
    )
    signature_at = records[-1][0]
    body = flip(bundle[:signature_at], bundle.index(chunk_ct) + 1)
    digest = hashlib.sha256(body).digest()
    message = canonical.encode("contextcache/project-bundle/v1", project_id, digest)
    signature = Ed25519PrivateKey.generate().sign(message)
    trailer = bundle_pb2.BundleSignature(digest=digest, signature=signature).SerializeToString()
    return body + struct.pack(">I", len(trailer)) + trailer


async def test_tampering_wrong_passphrase_and_forgeries_import_nothing(make_settings, tmp_path):
    async with running_stack(make_settings) as source:
        project, token = await new_project(source, name="field notes")
        await ingest(source, project.id, token)
        bundle = await export(source, project.id, token)
        # Another project under the same passphrase: its keyring swapped into the bundle.
        other, other_token = await new_project(source, name="decoy")
        other_bundle = await export(source, other.id, other_token)
        same_place = await failure(import_bundle(source, bundle))
        assert same_place.code() == grpc.StatusCode.ALREADY_EXISTS

    async with running_stack(make_settings, data_dir=tmp_path / "target") as target:
        for what, damaged in _tampered(bundle).items():
            # The caller's bundle is bad input naming its bytes, never DATA_LOSS (HTTP 500).
            error = await failure(import_bundle(target, damaged))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (what, error.details())
            assert _fields(error) == ["data"], what
            assert "Nothing was imported" in error.details(), what

        forged = await failure(import_bundle(target, _resigned(bundle, project.id)))
        assert forged.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _fields(forged) == ["data"]
        assert "signing key" in forged.details()

        # The decoy's keyring (opened by the same passphrase, but bound to its own project)
        # in the victim's header, the whole re-signed: the keyring opens nothing here.
        header = bundle_pb2.BundleRecord.FromString(next(frames(bundle))[1])
        header.header.keyring.CopyFrom(
            bundle_pb2.BundleRecord.FromString(next(frames(other_bundle))[1]).header.keyring
        )
        swapped_header = header.SerializeToString()
        rest = bundle[12 + 4 + len(next(frames(bundle))[1]) :]
        swapped = bundle[:12] + struct.pack(">I", len(swapped_header)) + swapped_header + rest
        error = await failure(import_bundle(target, swapped))
        assert error.code() in (
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.INVALID_ARGUMENT,
        ), error.details()

        wrong = await failure(import_bundle(target, bundle, passphrase="not the passphrase at all"))
        assert wrong.code() == grpc.StatusCode.PERMISSION_DENIED

        empty = await failure(import_bundle(target, b""))
        assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT

        # Nothing of any attempt was kept: no project, and the genuine bundle still lands.
        listed = await target.projects.ListProjects(projects_pb2.ListProjectsRequest())
        assert list(listed.projects) == []
        missing = await failure(
            target.projects.GetProject(projects_pb2.GetProjectRequest(project_id=project.id))
        )
        assert missing.code() == grpc.StatusCode.NOT_FOUND
        imported = await import_bundle(target, bundle)
        assert imported.documents_imported == 2
        verified = await target.crypto.VerifyAuditChain(
            crypto_pb2.VerifyAuditChainRequest(project_id=project.id)
        )
        assert verified.valid, verified.reason


async def test_export_needs_the_unlock_token(stack):
    project, _ = await new_project(stack)
    anonymous = await failure(export(stack, project.id, ()))
    assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED
    _, other_token = await new_project(stack, name="other")
    foreign = await failure(export(stack, project.id, other_token))
    assert foreign.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_bundle_over_the_size_limit_is_refused_and_leaves_nothing(make_settings, tmp_path):
    async with running_stack(make_settings) as source:
        project, token = await new_project(source)
        await ingest(source, project.id, token)
        bundle = await export(source, project.id, token)
    async with running_stack(
        make_settings, data_dir=tmp_path / "small", import_max_bytes=len(bundle) - 1
    ) as target:
        error = await failure(import_bundle(target, bundle))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "IMPORT_MAX_BYTES" in error.details()
        missing = await failure(
            target.projects.GetProject(projects_pb2.GetProjectRequest(project_id=project.id))
        )
        assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_a_step_that_fails_after_crypto_took_the_chain_undoes_it(make_settings, tmp_path):
    """Ingest refuses the content (here: the id was purged from it before) after crypto has
    stored keyring and chain: the import fails and crypto's part is removed again."""
    async with running_stack(make_settings) as source:
        project, token = await new_project(source)
        await ingest(source, project.id, token)
        bundle = await export(source, project.id, token)
    async with running_stack(make_settings, data_dir=tmp_path / "target") as target:
        purge = ingest_internal_pb2_grpc.IngestInternalServiceStub(
            target.channel_as("ingest", "projects")
        )
        await purge.PurgeProject(ingest_internal_pb2.PurgeProjectRequest(project_id=project.id))
        refused = await failure(import_bundle(target, bundle))
        assert refused.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "deleted from this deployment" in refused.details()
        missing = await failure(
            target.projects.GetProject(projects_pb2.GetProjectRequest(project_id=project.id))
        )
        assert missing.code() == grpc.StatusCode.NOT_FOUND
        head = await target.crypto.GetAuditHead(
            crypto_pb2.GetAuditHeadRequest(project_id=project.id)
        )
        assert head.head.seq == 0  # crypto's keyring and chain are gone too
