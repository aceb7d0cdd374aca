"""The audit log through the gRPC API: appends, paging, verification, and an attacker who
edits crypto's tables directly (change, delete, swap, truncate)."""

from __future__ import annotations

import hashlib
import struct
import uuid

import grpc
import sqlalchemy

from .support import CHEAP_KDF, RunningCrypto, code_of
from .support import crypto_messages as crypto_pb2

INGESTED = crypto_pb2.AUDIT_EVENT_TYPE_DOCUMENT_INGESTED


def append(stub, project, n=1, **attributes):
    events = []
    for i in range(n):
        events.append(
            stub.AppendAuditEvent(
                crypto_pb2.AppendAuditEventRequest(
                    project_id=project.id,
                    type=INGESTED,
                    actor="ingest",
                    attributes={"document_id": f"doc-{i}", **attributes},
                ),
                metadata=project.metadata,
            ).event
        )
    return events


def verify(stub, project_id, public_key=b"", pinned=None):
    return stub.VerifyAuditChain(
        crypto_pb2.VerifyAuditChainRequest(
            project_id=project_id, public_key=public_key, pinned_head=pinned
        )
    )


def pin(stub, project_id):
    return stub.GetAuditHead(crypto_pb2.GetAuditHeadRequest(project_id=project_id)).head


def canonical_hash(event) -> bytes:
    """SHA-256 of the length-prefixed encoding, written from the spec in audit.py."""

    def field(value: bytes) -> bytes:
        return struct.pack(">I", len(value)) + value

    def integer(value: int) -> bytes:
        return field(struct.pack(">q", value))

    time_us = event.time.seconds * 1_000_000 + event.time.nanos // 1000
    pairs = sorted(event.attributes.items())
    encoded = (
        field(b"contextcache/audit-event/v1")
        + field(event.project_id.encode())
        + integer(event.seq)
        + integer(event.type)
        + field(event.actor.encode())
        + integer(time_us)
        + integer(len(pairs))
        + b"".join(field(k.encode()) + field(v.encode()) for k, v in pairs)
        + field(event.prev_hash)
    )
    return hashlib.sha256(encoded).digest()


def test_appends_form_a_signed_hash_chain(stub, new_project):
    project = new_project()
    events = append(stub, project, 3, note="naïve ✓")
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[0].prev_hash == bytes(32)
    assert events[1].prev_hash == events[0].hash and events[2].prev_hash == events[1].hash
    for event in events:
        assert event.project_id == project.id
        assert event.type == INGESTED and event.actor == "ingest"
        assert event.hash == canonical_hash(event)
        signed = stub.Verify(
            crypto_pb2.VerifyRequest(
                public_key=project.keyring.public_key, message=event.hash, signature=event.signature
            )
        )
        assert signed.valid


def test_field_boundaries_are_unambiguous(stub, new_project):
    project = new_project()
    (a,) = append(stub, project, 1, ab="c")
    (b,) = append(stub, project, 1, a="bc")
    assert a.hash == canonical_hash(a) and b.hash == canonical_hash(b)
    assert canonical_hash(a) != canonical_hash(b)


def test_list_pages_through_events_in_order(stub, new_project):
    project = new_project()
    append(stub, project, 7)
    seen, token = [], ""
    while True:
        page = stub.ListAuditEvents(
            crypto_pb2.ListAuditEventsRequest(project_id=project.id, page_size=3, page_token=token),
            metadata=project.metadata,
        )
        seen += [e.seq for e in page.events]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(range(1, 8))
    default = stub.ListAuditEvents(
        crypto_pb2.ListAuditEventsRequest(project_id=project.id), metadata=project.metadata
    )
    assert len(default.events) == 7 and not default.next_page_token
    code, message = code_of(
        lambda: stub.ListAuditEvents(
            crypto_pb2.ListAuditEventsRequest(project_id=project.id, page_token="garbage!"),
            metadata=project.metadata,
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page token" in message
    code, _ = code_of(
        lambda: stub.ListAuditEvents(
            crypto_pb2.ListAuditEventsRequest(project_id=project.id, page_size=101),
            metadata=project.metadata,
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # Reading events needs the project's unlock token; verifying the chain does not.
    code, _ = code_of(
        lambda: stub.ListAuditEvents(crypto_pb2.ListAuditEventsRequest(project_id=project.id))
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_verification_needs_no_token_and_reports_the_head(stub, new_project):
    project = new_project()
    events = append(stub, project, 4)
    result = verify(stub, project.id)
    assert (result.valid, result.events_verified, result.first_broken_seq, result.reason) == (
        True,
        4,
        0,
        "",
    )
    assert result.head.seq == 4 and result.head.hash == events[-1].hash
    head = pin(stub, project.id)
    assert (head.seq, head.hash, head.signature) == (4, events[-1].hash, events[-1].signature)
    assert verify(stub, project.id, project.keyring.public_key, head).valid


def test_empty_chain(stub):
    project_id = str(uuid.uuid4())
    result = verify(stub, project_id)
    assert result.valid and result.events_verified == 0
    assert pin(stub, project_id).seq == 0


def test_append_needs_a_token_of_the_project(stub, new_project):
    project, other = new_project(), new_project()
    request = crypto_pb2.AppendAuditEventRequest(project_id=project.id, type=INGESTED)
    code, _ = code_of(lambda: stub.AppendAuditEvent(request))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = code_of(lambda: stub.AppendAuditEvent(request, metadata=other.metadata))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = code_of(
        lambda: stub.AppendAuditEvent(
            crypto_pb2.AppendAuditEventRequest(project_id=project.id), metadata=project.metadata
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_wrong_public_key_fails_at_the_first_event(stub, new_project):
    project, other = new_project(), new_project()
    append(stub, project, 2)
    result = verify(stub, project.id, other.keyring.public_key)
    assert (result.valid, result.first_broken_seq) == (False, 1)
    assert "signature" in result.reason and "given public key" in result.reason


def _execute(db, sql: str, **params) -> None:
    with db.begin() as connection:
        connection.execute(sqlalchemy.text(sql), params)


def test_changed_attribute_is_found(stub, new_project, db):
    project = new_project()
    append(stub, project, 5)
    _execute(
        db,
        "UPDATE audit_events SET attributes = :a WHERE project_id = :p AND seq = 3",
        a='{"document_id": "forged"}',
        p=project.id,
    )
    result = verify(stub, project.id)
    assert (result.valid, result.first_broken_seq, result.events_verified) == (False, 3, 2)
    assert "altered" in result.reason


def test_changed_actor_with_recomputed_hash_fails_the_signature(stub, new_project, db):
    project = new_project()
    events = append(stub, project, 3)
    # An attacker without the signing key rewrites the last event and its hash.
    forged = crypto_pb2.AuditEvent()
    forged.CopyFrom(events[2])
    forged.actor = "someone else"
    _execute(
        db,
        "UPDATE audit_events SET actor = :a, hash = :h WHERE project_id = :p AND seq = 3",
        a="someone else",
        h=canonical_hash(forged),
        p=project.id,
    )
    _execute(
        db,
        "UPDATE audit_chains SET head_hash = :h WHERE project_id = :p",
        h=canonical_hash(forged),
        p=project.id,
    )
    result = verify(stub, project.id)
    assert (result.valid, result.first_broken_seq) == (False, 3)
    assert "signature" in result.reason


def test_deleted_middle_row_is_found(stub, new_project, db):
    project = new_project()
    append(stub, project, 5)
    _execute(db, "DELETE FROM audit_events WHERE project_id = :p AND seq = 3", p=project.id)
    result = verify(stub, project.id)
    assert (result.valid, result.first_broken_seq) == (False, 3)
    assert result.reason == "Event 3 is missing"


def test_swapped_rows_are_found(stub, new_project, db):
    project = new_project()
    append(stub, project, 5)
    for old, new in ((2, -2), (3, 2), (-2, 3)):
        _execute(
            db,
            "UPDATE audit_events SET seq = :new WHERE project_id = :p AND seq = :old",
            new=new,
            old=old,
            p=project.id,
        )
    result = verify(stub, project.id)
    assert (result.valid, result.first_broken_seq) == (False, 2)
    assert "prev_hash" in result.reason


def test_deleted_tail_is_found_against_the_head(stub, new_project, db):
    project = new_project()
    append(stub, project, 5)
    _execute(db, "DELETE FROM audit_events WHERE project_id = :p AND seq >= 4", p=project.id)
    result = verify(stub, project.id)
    assert (result.valid, result.first_broken_seq) == (False, 4)


def test_deleted_tail_with_rewritten_head_is_found_against_a_pinned_head(stub, new_project, db):
    project = new_project()
    events = append(stub, project, 5)
    pinned = pin(stub, project.id)
    # A careful attacker removes the tail and rewinds crypto's own head record too.
    _execute(db, "DELETE FROM audit_events WHERE project_id = :p AND seq >= 4", p=project.id)
    _execute(
        db,
        "UPDATE audit_chains SET head_seq = 3, head_hash = :h WHERE project_id = :p",
        h=events[2].hash,
        p=project.id,
    )
    assert verify(stub, project.id).valid  # undetectable without a pin...
    result = verify(stub, project.id, project.keyring.public_key, pinned)
    assert (result.valid, result.first_broken_seq, result.events_verified) == (False, 4, 3)
    assert "pinned" in result.reason


def test_pinned_head_of_a_rewritten_chain_does_not_match(stub, new_project):
    project = new_project()
    append(stub, project, 3)
    pinned = pin(stub, project.id)
    pinned.hash = bytes(32)
    result = verify(stub, project.id, b"", pinned)
    assert (result.valid, result.first_broken_seq) == (False, 3)


def test_fifty_concurrent_appends_from_two_replicas(crypto, new_project):
    """Two crypto servers on one database (SQLite file, PostgreSQL) append concurrently."""
    project = new_project()
    replica = RunningCrypto(crypto.settings, CHEAP_KDF)
    try:
        request = crypto_pb2.AppendAuditEventRequest(
            project_id=project.id, type=INGESTED, actor="ingest"
        )
        calls = [
            (crypto.stub if i % 2 else replica.stub).AppendAuditEvent.future(
                request, metadata=project.metadata
            )
            for i in range(50)
        ]
        seqs = sorted(call.result().event.seq for call in calls)
    finally:
        replica.stop()
    assert seqs == list(range(1, 51))
    result = verify(crypto.stub, project.id, project.keyring.public_key)
    assert (result.valid, result.events_verified) == (True, 50)
