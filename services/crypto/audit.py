"""The per-project audit log: a gap-free, hash-chained, Ed25519-signed sequence of events.

Each event's hash is SHA-256 over a canonical, length-prefixed encoding (canonical.py) of
every field — domain tag, project id, seq, type, actor, time, the attribute count and each
sorted (key, value) pair, and the previous event's hash — and its signature is Ed25519 of
that hash by the project's signing key. The public key is recorded when a chain starts.

Appends are serialized per project: the head row is locked (`SELECT … FOR UPDATE` in
PostgreSQL; in SQLite the first statement is a write, which takes the database write lock,
plus an asyncio lock per project in this process), and UNIQUE(project_id, seq) makes a fork
impossible to store even if locking were bypassed. Verification replays from seq 1 and names
the first broken seq and why. Attributes are stored in clear: callers must put ids and
counts there, never content or secrets.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf import timestamp_pb2
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contextcache.v1 import crypto_pb2
from runtime.errors import Aborted, FailedPrecondition
from services.crypto import canonical
from services.crypto.models import audit_chains, audit_events

DOMAIN = "contextcache/audit-event/v1"
GENESIS_HASH = bytes(32)
APPEND_ATTEMPTS = 3
REPLAY_BATCH = 1000

# An append's statements, built once (every ingested document appends an event).
_LOCK_HEAD = (
    select(audit_chains)
    .where(audit_chains.c.project_id == bindparam("p_project"))
    .with_for_update()
)
_INSERT_EVENT = insert(audit_events)
_FIND_EVENT = select(audit_events).where(
    audit_events.c.project_id == bindparam("p_project"),
    audit_events.c.event_id == bindparam("p_event"),
)
_MOVE_HEAD = (
    update(audit_chains)
    .where(audit_chains.c.project_id == bindparam("p_project"))
    .values(head_seq=bindparam("p_seq"), head_hash=bindparam("p_hash"))
)
_START_CHAIN = {
    dialect: module.insert(audit_chains).on_conflict_do_nothing(index_elements=["project_id"])
    for dialect, module in (("sqlite", sqlite), ("postgresql", postgresql))
}


def event_hash(
    project_id: str,
    seq: int,
    event_type: int,
    actor: str,
    time_us: int,
    attributes: dict[str, str],
    prev_hash: bytes,
) -> bytes:
    pairs = sorted(attributes.items())
    encoded = canonical.encode(
        DOMAIN,
        project_id,
        seq,
        event_type,
        actor,
        time_us,
        len(pairs),
        *(part for pair in pairs for part in pair),
        prev_hash,
    )
    return hashlib.sha256(encoded).digest()


@dataclass(frozen=True)
class AuditRecord:
    """One stored event."""

    project_id: str
    seq: int
    event_type: int
    actor: str
    time_us: int
    attributes: dict[str, str]
    prev_hash: bytes
    hash: bytes
    signature: bytes

    @classmethod
    def from_row(cls, row: Row) -> AuditRecord:
        return cls(
            row.project_id,
            row.seq,
            row.event_type,
            row.actor,
            row.time_us,
            json.loads(row.attributes),
            row.prev_hash,
            row.hash,
            row.signature,
        )

    def to_proto(self) -> crypto_pb2.AuditEvent:
        when = timestamp_pb2.Timestamp()
        when.FromMicroseconds(self.time_us)
        return crypto_pb2.AuditEvent(
            project_id=self.project_id,
            seq=self.seq,
            type=self.event_type,  # type: ignore[arg-type]
            actor=self.actor,
            time=when,
            attributes=self.attributes,
            prev_hash=self.prev_hash,
            hash=self.hash,
            signature=self.signature,
        )

    def head(self) -> crypto_pb2.AuditHead:
        return crypto_pb2.AuditHead(
            project_id=self.project_id, seq=self.seq, hash=self.hash, signature=self.signature
        )


@dataclass(frozen=True)
class Verification:
    valid: bool
    events_verified: int
    first_broken_seq: int = 0
    reason: str = ""
    last: AuditRecord | None = None


class AuditChain:
    """Appends to, reads and verifies the audit chains stored in one database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def append(
        self,
        project_id: str,
        signing_seed: bytes,
        event_type: int,
        actor: str,
        attributes: dict[str, str],
        event_id: str | None = None,
    ) -> AuditRecord:
        """Appends an event; with `event_id`, an event already appended under that id is
        returned instead (at most once per id)."""
        signer = Ed25519PrivateKey.from_private_bytes(signing_seed)
        lock = self._locks.setdefault(project_id, asyncio.Lock())
        async with lock:
            for _ in range(APPEND_ATTEMPTS):
                try:
                    return await self._append_once(
                        project_id, signer, event_type, actor, attributes, event_id
                    )
                except IntegrityError:
                    continue  # another process took this seq first (SQLite without locking)
        raise Aborted("The audit chain was appended to concurrently; retry the call")

    async def _append_once(
        self,
        project_id: str,
        signer: Ed25519PrivateKey,
        event_type: int,
        actor: str,
        attributes: dict[str, str],
        event_id: str | None,
    ) -> AuditRecord:
        public_key = signer.public_key().public_bytes_raw()
        time_us = time.time_ns() // 1000
        async with self.engine.begin() as connection:
            head = await self._lock_head(connection, project_id, public_key, time_us)
            if not hmac.compare_digest(head.public_key, public_key):
                raise FailedPrecondition(
                    "This project's audit chain was started under another signing key; "
                    "its events cannot be signed with this project's keyring"
                )
            if event_id is not None:
                existing = (
                    await connection.execute(
                        _FIND_EVENT, {"p_project": project_id, "p_event": event_id}
                    )
                ).first()
                if existing is not None:
                    return AuditRecord.from_row(existing)
            seq = head.head_seq + 1
            digest = event_hash(
                project_id, seq, event_type, actor, time_us, attributes, head.head_hash
            )
            record = AuditRecord(
                project_id,
                seq,
                event_type,
                actor,
                time_us,
                dict(attributes),
                head.head_hash,
                digest,
                signer.sign(digest),
            )
            await connection.execute(
                _INSERT_EVENT,
                {
                    "project_id": project_id,
                    "seq": seq,
                    "event_type": event_type,
                    "actor": actor,
                    "time_us": time_us,
                    "attributes": json.dumps(attributes, sort_keys=True, ensure_ascii=False),
                    "prev_hash": record.prev_hash,
                    "hash": digest,
                    "signature": record.signature,
                    "event_id": event_id,
                },
            )
            await connection.execute(
                _MOVE_HEAD, {"p_project": project_id, "p_seq": seq, "p_hash": digest}
            )
        return record

    async def _lock_head(
        self, connection: AsyncConnection, project_id: str, public_key: bytes, now_us: int
    ) -> Row:
        """The chain's head row, created on first use and locked until the transaction ends.

        PostgreSQL locks an existing head with one statement (the common case). SQLite
        writes first, always: that takes its database write lock before anything is read.
        """
        key = {"p_project": project_id}
        if not self._sqlite:
            head = (await connection.execute(_LOCK_HEAD, key)).first()
            if head is not None:
                return head
        await connection.execute(
            _START_CHAIN["sqlite" if self._sqlite else "postgresql"],
            {
                "project_id": project_id,
                "public_key": public_key,
                "head_seq": 0,
                "head_hash": GENESIS_HASH,
                "created_at_us": now_us,
            },
        )
        return (await connection.execute(_LOCK_HEAD, key)).one()

    async def events(
        self, project_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[AuditRecord]:
        query = (
            select(audit_events)
            .where(audit_events.c.project_id == project_id, audit_events.c.seq > after_seq)
            .order_by(audit_events.c.seq)
        )
        if limit is not None:
            query = query.limit(limit)
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [AuditRecord.from_row(row) for row in rows]

    async def head(self, project_id: str) -> AuditRecord | None:
        query = (
            select(audit_events)
            .where(audit_events.c.project_id == project_id)
            .order_by(audit_events.c.seq.desc())
            .limit(1)
        )
        async with self.engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return None if row is None else AuditRecord.from_row(row)

    async def _replay(self, project_id: str) -> AsyncIterator[Row]:
        after = None
        async with self.engine.connect() as connection:
            while True:
                query = select(audit_events).where(audit_events.c.project_id == project_id)
                if after is not None:
                    query = query.where(audit_events.c.seq > after)
                rows = (
                    await connection.execute(query.order_by(audit_events.c.seq).limit(REPLAY_BATCH))
                ).all()
                for row in rows:
                    yield row
                if len(rows) < REPLAY_BATCH:
                    return
                after = rows[-1].seq

    async def verify(
        self,
        project_id: str,
        public_key: bytes | None = None,
        pinned: crypto_pb2.AuditHead | None = None,
    ) -> Verification:
        """Replays the chain from seq 1; reports the first seq that fails and why."""
        async with self.engine.connect() as connection:
            chain = (
                await connection.execute(
                    select(audit_chains).where(audit_chains.c.project_id == project_id)
                )
            ).first()
        key_source = "given" if public_key else "recorded"
        key = public_key or (chain.public_key if chain is not None else None)
        verifier = Ed25519PublicKey.from_public_bytes(key) if key else None
        expected, prev_hash, last = 1, GENESIS_HASH, None
        pinned_hash_seen: bytes | None = None

        def broken(seq: int, reason: str) -> Verification:
            return Verification(False, expected - 1, seq, reason, last)

        async for row in self._replay(project_id):
            if row.seq != expected:
                return broken(expected, f"Event {expected} is missing")
            if not hmac.compare_digest(row.prev_hash, prev_hash):
                what = "the genesis value" if expected == 1 else f"the hash of event {expected - 1}"
                return broken(expected, f"Event {expected}'s prev_hash is not {what}")
            try:
                record = AuditRecord.from_row(row)
            except (ValueError, TypeError):
                return broken(expected, f"Event {expected}'s attributes are unreadable")
            recomputed = event_hash(
                record.project_id,
                record.seq,
                record.event_type,
                record.actor,
                record.time_us,
                record.attributes,
                record.prev_hash,
            )
            if not hmac.compare_digest(recomputed, record.hash):
                return broken(expected, f"Event {expected} was altered: its hash does not match")
            if verifier is None:
                return broken(
                    expected, "No public key is recorded for this chain; pass the project's key"
                )
            try:
                verifier.verify(record.signature, record.hash)
            except InvalidSignature:
                return broken(
                    expected,
                    f"Event {expected}'s signature does not verify under the {key_source} "
                    "public key",
                )
            if pinned is not None and record.seq == pinned.seq:
                pinned_hash_seen = record.hash
            last, prev_hash, expected = record, record.hash, expected + 1

        count = expected - 1
        if chain is not None and chain.head_seq > count:
            return broken(
                count + 1,
                f"Events after seq {count} are missing: the chain head records seq "
                f"{chain.head_seq}",
            )
        if chain is not None and count and not hmac.compare_digest(chain.head_hash, prev_hash):
            return broken(count, f"Event {count} does not match the recorded chain head")
        if pinned is not None and pinned.seq > 0:
            if pinned.seq > count:
                return broken(
                    count + 1,
                    f"The chain ends at seq {count}, but a head at seq {pinned.seq} was "
                    "pinned: events were removed",
                )
            if pinned_hash_seen is None or not hmac.compare_digest(pinned_hash_seen, pinned.hash):
                return broken(pinned.seq, f"Event {pinned.seq} does not match the pinned head")
        return Verification(True, count, last=last)
