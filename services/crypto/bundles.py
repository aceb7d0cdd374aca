"""Project bundles, crypto's part: their signature and the import of their audit chain.

A bundle is signed by the project's own signing key over the canonical encoding of a
domain, the project id and the SHA-256 of the bundle's bytes (docs/export.md). On import the
verification key is the one inside the keyring the importer's passphrase opens — never a key
carried beside the signature, so a bundle re-signed by anyone else does not verify.

The chain is imported verbatim (same seqs, hashes, signatures) after replaying it under that
key from seq 1, in one transaction with the keyring's registration: a chain that breaks
anywhere leaves nothing behind. A bundle is the importer's input, so one that does not verify
or replay is INVALID_ARGUMENT naming the part of ImportProjectKeys that carried it, never
DATA_LOSS (kept for data this deployment holds). Never logs or returns a passphrase or a key.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import AsyncIterator, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contextcache.v1 import crypto_pb2
from runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from services.crypto import canonical
from services.crypto.audit import GENESIS_HASH, event_hash
from services.crypto.models import audit_chains, audit_events, keyrings

BUNDLE_DOMAIN = "contextcache/project-bundle/v1"


def bundle_message(project_id: str, digest: bytes) -> bytes:
    return canonical.encode(BUNDLE_DOMAIN, project_id, digest)


def sign_bundle(signing_seed: bytes, project_id: str, digest: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(signing_seed).sign(
        bundle_message(project_id, digest)
    )


def verify_bundle(public_key: bytes, project_id: str, digest: bytes, signature: bytes) -> None:
    """Raises INVALID_ARGUMENT (`signature`) unless it is the project's over `digest`."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, bundle_message(project_id, digest)
        )
    except InvalidSignature:
        raise InvalidArgument.for_field(
            "signature",
            "The bundle does not verify under the signing key of the keyring this passphrase "
            "opens: it was altered, or signed by another key. Nothing was imported",
        ) from None


class ChainReplay:
    """Checks a chain's events one by one, in order, as AuditChain.verify does."""

    def __init__(self, project_id: str, public_key: bytes) -> None:
        self.project_id = project_id
        self.verifier = Ed25519PublicKey.from_public_bytes(public_key)
        self.count = 0
        self.head_hash = GENESIS_HASH

    def check(self, event: crypto_pb2.AuditEvent) -> dict[str, object]:
        """The event as an audit_events row; INVALID_ARGUMENT naming the seq if it does not
        fit."""
        seq = self.count + 1

        def broken(why: str) -> InvalidArgument:
            return InvalidArgument.for_field(
                "events",
                f"The bundle's audit chain breaks at event {seq}: {why}. Nothing was imported",
            )

        if event.project_id != self.project_id:
            raise broken("it belongs to another project")
        if event.seq != seq:
            raise broken(f"found seq {event.seq}")
        if not hmac.compare_digest(event.prev_hash, self.head_hash):
            raise broken("its prev_hash is not the previous event's hash")
        time_us = event.time.ToMicroseconds()
        attributes = dict(event.attributes)
        recomputed = event_hash(
            self.project_id, seq, event.type, event.actor, time_us, attributes, event.prev_hash
        )
        if not hmac.compare_digest(recomputed, event.hash):
            raise broken("its hash does not match its fields")
        try:
            self.verifier.verify(event.signature, event.hash)
        except InvalidSignature:
            raise broken("its signature does not verify under the project's key") from None
        self.count, self.head_hash = seq, event.hash
        return {
            "project_id": self.project_id,
            "seq": seq,
            "event_type": event.type,
            "actor": event.actor,
            "time_us": time_us,
            "attributes": json.dumps(attributes, sort_keys=True, ensure_ascii=False),
            "prev_hash": event.prev_hash,
            "hash": event.hash,
            "signature": event.signature,
            "event_id": None,
        }


async def import_chain(
    engine: AsyncEngine,
    project_id: str,
    public_key: bytes,
    generation: int,
    batches: AsyncIterator[Sequence[crypto_pb2.AuditEvent]],
) -> tuple[int, bool, bytes]:
    """Registers the keyring and stores the chain, all or nothing; (events, already_present,
    head hash).

    A project already known here is refused, unless it holds exactly this key and chain (a
    retried import): then nothing is written and already_present is True.
    """
    try:
        return await _import_chain(engine, project_id, public_key, generation, batches)
    except IntegrityError:  # a concurrent import of the same project got there first
        raise AlreadyExists(f"Project {project_id} exists in this deployment") from None


async def _import_chain(
    engine: AsyncEngine,
    project_id: str,
    public_key: bytes,
    generation: int,
    batches: AsyncIterator[Sequence[crypto_pb2.AuditEvent]],
) -> tuple[int, bool, bytes]:
    replay = ChainReplay(project_id, public_key)
    async with engine.begin() as connection:
        known = await _known(connection, project_id)
        if known is None:
            await connection.execute(
                insert(keyrings).values(
                    project_id=project_id,
                    public_key=public_key,
                    generation=generation,
                    updated_at_us=int(time.time() * 1e6),
                )
            )
        async for batch in batches:
            rows = [replay.check(event) for event in batch]
            if rows and known is None:
                await connection.execute(insert(audit_events), rows)
        if replay.count == 0:
            raise InvalidArgument.for_field(
                "events", "The bundle holds no audit chain. Nothing was imported"
            )
        if known is not None:
            same = (
                hmac.compare_digest(known[0], public_key)
                and known[1] == replay.count
                and hmac.compare_digest(known[2], replay.head_hash)
            )
            if not same:
                raise AlreadyExists(f"Project {project_id} exists in this deployment")
            return replay.count, True, replay.head_hash
        await connection.execute(
            insert(audit_chains).values(
                project_id=project_id,
                public_key=public_key,
                head_seq=replay.count,
                head_hash=replay.head_hash,
                created_at_us=int(time.time() * 1e6),
            )
        )
    return replay.count, False, replay.head_hash


async def discard_chain(engine: AsyncEngine, project_id: str, head_hash: bytes) -> bool:
    """Removes an imported keyring and chain, only while they are exactly as imported: the
    head is `head_hash` and no event was appended here (appends carry an event id, imported
    events none). False when there is nothing to remove."""
    async with engine.begin() as connection:
        chain = (
            await connection.execute(
                select(audit_chains)
                .where(audit_chains.c.project_id == project_id)
                .with_for_update()
            )
        ).first()
        if chain is None:
            return False
        appended = await connection.scalar(
            select(func.count())
            .select_from(audit_events)
            .where(audit_events.c.project_id == project_id, audit_events.c.event_id.is_not(None))
        )
        if appended or not hmac.compare_digest(chain.head_hash, head_hash):
            raise FailedPrecondition(
                f"The audit chain of project {project_id} moved on since it was imported: kept"
            )
        await connection.execute(
            delete(audit_events).where(audit_events.c.project_id == project_id)
        )
        await connection.execute(
            delete(audit_chains).where(audit_chains.c.project_id == project_id)
        )
        await connection.execute(delete(keyrings).where(keyrings.c.project_id == project_id))
    return True


async def _known(connection: AsyncConnection, project_id: str) -> tuple[bytes, int, bytes] | None:
    """(public key, head seq, head hash) of a project this crypto knows, else None."""
    registered = (
        await connection.execute(
            select(keyrings.c.public_key).where(keyrings.c.project_id == project_id)
        )
    ).first()
    chain = (
        await connection.execute(
            select(audit_chains).where(audit_chains.c.project_id == project_id)
        )
    ).first()
    if registered is None and chain is None:
        return None
    if registered is None or chain is None:
        return (b"", -1, b"")  # half known: never the same as a bundle
    return registered.public_key, chain.head_seq, chain.head_hash
