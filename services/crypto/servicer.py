"""CryptoService (public) and CryptoInternalService RPCs: each reads as its story —
validate (the interceptor, from the proto rules; the caller's identity, from the caller
table) → authorize (the token) → do → respond.

Crypto appends no audit events of its own: the services that act on a project (projects,
ingest) know the actor and append through AppendAuditEvent. Never logs, returns in an error
or puts in a span a passphrase, token, grant, key or plaintext.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import Callable
from typing import TypeVar

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf import timestamp_pb2

from contextcache.internal.v1 import crypto_pb2 as internal_pb2
from contextcache.internal.v1 import crypto_pb2_grpc as internal_pb2_grpc
from contextcache.v1 import crypto_pb2, crypto_pb2_grpc
from runtime.errors import DataLoss, InvalidArgument, Unauthenticated
from runtime.health import Readiness
from runtime.interceptors import validate
from runtime.paging import decode_cursor, encode_cursor, page_size
from runtime.protos import CRYPTO_SERVICE
from runtime.tls import peer_identity
from runtime.tokens import ANY_SCOPE, TOKEN_ENDED, UNLOCK_ONLY, Scope, token_from
from services.crypto.aead import Aead, AeadError
from services.crypto.audit import AuditChain
from services.crypto.bundles import discard_chain, import_chain, sign_bundle, verify_bundle
from services.crypto.content import ProjectCipher
from services.crypto.kdf import KdfParams, PassphraseKdf
from services.crypto.keyring import create_keyring, generation_of, open_keyring, rewrap_keyring
from services.crypto.registry import KeyringRegistry
from services.crypto.tokens import TokenAuthority, UnlockToken

DEFAULT_UNLOCK_TTL = 3600
DEFAULT_JOB_TTL = 24 * 3600
# An audit grant outlives the tokens it comes with: its events wait in an outbox for as long
# as crypto is away (a longer outage leaves them pending, and logged, never dropped).
AUDIT_GRANT_TTL = 7 * 24 * 3600
DEFAULT_SALT_BYTES = 16
# Work on more bytes than this runs in a thread so other calls keep flowing.
OFFLOAD_BYTES = 1024 * 1024
ENDED = TOKEN_ENDED
# Audit events per message of ExportAuditChain (a few hundred bytes each).
EXPORT_BATCH = 1000

T = TypeVar("T")


def project_uuid(project_id: str) -> uuid.UUID:
    return uuid.UUID(project_id)  # the proto rules already checked it is a UUID


def timestamp(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


class TokenCheck:
    """Opens the token of a call and checks it is for this project, this use and the
    project's current keyring generation."""

    def __init__(self, authority: TokenAuthority, registry: KeyringRegistry) -> None:
        self.authority = authority
        self.registry = registry

    async def open(self, text: str, project_id: uuid.UUID, scopes: frozenset[Scope]) -> UnlockToken:
        token = self.authority.open(text)
        if token.project_id != project_id:
            raise Unauthenticated("The unlock token belongs to another project")
        if token.scope not in scopes:
            raise Unauthenticated(
                "This call needs an unlock token (ProjectService.UnlockProject), not a job token"
            )
        if token.generation < await self.registry.current_generation(str(project_id)):
            raise Unauthenticated(ENDED)
        return token

    async def __call__(
        self,
        context: grpc.aio.ServicerContext,
        project_id: uuid.UUID,
        scopes: frozenset[Scope] = ANY_SCOPE,
    ) -> UnlockToken:
        return await self.open(token_from(context), project_id, scopes)


async def off_loop(work: Callable[[], T], size: int) -> T:
    return await asyncio.to_thread(work) if size > OFFLOAD_BYTES else work()


class CryptoServicer(crypto_pb2_grpc.CryptoServiceServicer):
    """The public crypto API: primitives and the audit log's read side.

    `kdf` is DeriveKey's own Argon2id worker (one derivation at a time, a short queue),
    never the one that opens keyrings, so a storm of DeriveKey calls cannot starve unlocks.
    """

    def __init__(
        self, kdf: PassphraseKdf, audit: AuditChain, check: TokenCheck, readiness: Readiness
    ) -> None:
        self.kdf = kdf
        self.audit = audit
        self.check = check
        self.readiness = readiness

    # Primitives for clients that do their own crypto

    async def GenerateSalt(self, request, context):
        length = request.length if request.HasField("length") else DEFAULT_SALT_BYTES
        return crypto_pb2.GenerateSaltResponse(salt=os.urandom(length))

    async def DeriveKey(self, request, context):
        params = (
            KdfParams.from_proto(request.params)
            if request.HasField("params")
            else self.kdf.default_params
        )
        key = await self.kdf.derive(request.passphrase, request.salt, params)
        return crypto_pb2.DeriveKeyResponse(key=key, params=params.to_proto())

    async def Encrypt(self, request, context):
        aead = Aead(request.key)
        ciphertext = await off_loop(
            lambda: aead.seal(request.plaintext, request.associated_data), len(request.plaintext)
        )
        return crypto_pb2.EncryptResponse(ciphertext=ciphertext)

    async def Decrypt(self, request, context):
        aead = Aead(request.key)
        try:
            plaintext = await off_loop(
                lambda: aead.open(request.ciphertext, request.associated_data),
                len(request.ciphertext),
            )
        except AeadError as error:
            # The caller's own ciphertext, key and associated data: bad input, not data
            # this service lost (DATA_LOSS is for what it holds, as in DecryptBatch).
            raise InvalidArgument.for_field("ciphertext", str(error)) from None
        return crypto_pb2.DecryptResponse(plaintext=plaintext)

    async def GenerateKeypair(self, request, context):
        private = Ed25519PrivateKey.generate()
        return crypto_pb2.GenerateKeypairResponse(
            private_key=private.private_bytes_raw(),
            public_key=private.public_key().public_bytes_raw(),
        )

    async def Sign(self, request, context):
        private = Ed25519PrivateKey.from_private_bytes(request.private_key)
        signature = await off_loop(lambda: private.sign(request.message), len(request.message))
        return crypto_pb2.SignResponse(signature=signature)

    async def Verify(self, request, context):
        try:
            public = Ed25519PublicKey.from_public_bytes(request.public_key)
        except ValueError:
            raise InvalidArgument.for_field(
                "public_key", "public_key is not a valid Ed25519 public key"
            ) from None

        def check() -> bool:
            try:
                public.verify(request.signature, request.message)
            except InvalidSignature:
                return False
            return True

        return crypto_pb2.VerifyResponse(valid=await off_loop(check, len(request.message)))

    async def Hash(self, request, context):
        algorithm = {
            crypto_pb2.HASH_ALGORITHM_SHA256: hashlib.sha256,
            crypto_pb2.HASH_ALGORITHM_BLAKE2B: hashlib.blake2b,  # BLAKE2b-512
        }[request.algorithm]
        digest = await off_loop(lambda: algorithm(request.data).digest(), len(request.data))
        return crypto_pb2.HashResponse(digest=digest)

    # Audit log

    async def ListAuditEvents(self, request, context):
        project_id = project_uuid(request.project_id)
        await self.check(context, project_id, UNLOCK_ONLY)
        size = page_size(request)
        cursor = decode_cursor(request.page_token, "audit", (int,))
        after = cursor[0] if cursor else 0
        records = await self.audit.events(str(project_id), after, size + 1)
        page = records[:size]
        more = len(records) > size
        return crypto_pb2.ListAuditEventsResponse(
            events=[record.to_proto() for record in page],
            next_page_token=encode_cursor("audit", page[-1].seq) if more else "",
        )

    async def VerifyAuditChain(self, request, context):
        project_id = str(project_uuid(request.project_id))
        pinned = request.pinned_head if request.HasField("pinned_head") else None
        if pinned is not None and pinned.project_id and pinned.project_id != project_id:
            raise InvalidArgument.for_field(
                "pinned_head.project_id", "pinned_head belongs to another project"
            )
        result = await self.audit.verify(project_id, request.public_key or None, pinned)
        return crypto_pb2.VerifyAuditChainResponse(
            valid=result.valid,
            events_verified=result.events_verified,
            first_broken_seq=result.first_broken_seq,
            reason=result.reason,
            head=result.last.head() if result.last else crypto_pb2.AuditHead(project_id=project_id),
        )

    async def GetAuditHead(self, request, context):
        project_id = str(project_uuid(request.project_id))
        record = await self.audit.head(project_id)
        head = record.head() if record else crypto_pb2.AuditHead(project_id=project_id)
        return crypto_pb2.GetAuditHeadResponse(head=head)

    async def GetStatus(self, request, context):
        return crypto_pb2.CryptoServiceGetStatusResponse(
            status=await self.readiness.service_status(CRYPTO_SERVICE)
        )


class CryptoInternalServicer(internal_pb2_grpc.CryptoInternalServiceServicer):
    """Keyrings, tokens, grants, batch encryption and audit appends, for the services the
    caller table names (runtime/callers.py)."""

    def __init__(
        self,
        kdf: PassphraseKdf,
        authority: TokenAuthority,
        registry: KeyringRegistry,
        audit: AuditChain,
        check: TokenCheck,
    ) -> None:
        self.kdf = kdf
        self.authority = authority
        self.registry = registry
        self.audit = audit
        self.check = check

    # Keyrings and tokens

    async def CreateKeyring(self, request, context):
        project_id = project_uuid(request.project_id)
        keyring = await create_keyring(self.kdf, project_id, request.passphrase)
        await self.registry.register(str(project_id), keyring.public_key, keyring.generation)
        return internal_pb2.CreateKeyringResponse(keyring=keyring)

    async def OpenKeyring(self, request, context):
        project_id = project_uuid(request.project_id)
        keyring = request.keyring
        generation = generation_of(keyring)
        await self.registry.check_keyring(str(project_id), keyring.public_key, generation)
        keys = await open_keyring(self.kdf, project_id, keyring, request.passphrase)
        # The passphrase proved this generation genuine: older keyrings and tokens end here.
        await self.registry.advance(str(project_id), generation)
        ttl = request.ttl.seconds if request.HasField("ttl") else DEFAULT_UNLOCK_TTL
        text, token = self.authority.issue(project_id, Scope.UNLOCK, ttl, keys, generation)
        return internal_pb2.OpenKeyringResponse(
            unlock_token=text,
            expires_at=timestamp(token.expires_at),
            audit_grant=self._audit_grant(context, project_id, token)[0],
        )

    async def RewrapKeyring(self, request, context):
        project_id = project_uuid(request.project_id)
        keyring = request.keyring
        await self.registry.check_keyring(
            str(project_id), keyring.public_key, generation_of(keyring)
        )
        rewrapped = await rewrap_keyring(
            self.kdf, project_id, keyring, request.old_passphrase, request.new_passphrase
        )
        return internal_pb2.RewrapKeyringResponse(keyring=rewrapped)

    async def IssueJobToken(self, request, context):
        project_id = project_uuid(request.project_id)
        document_id = uuid.UUID(request.document_id)
        unlock = await self.check(context, project_id, UNLOCK_ONLY)
        ttl = request.ttl.seconds if request.HasField("ttl") else DEFAULT_JOB_TTL
        text, token = self.authority.issue(
            project_id, Scope.JOB, ttl, unlock.keys, unlock.generation, document_id
        )
        return internal_pb2.IssueJobTokenResponse(
            job_token=text,
            expires_at=timestamp(token.expires_at),
            job_grant=self.authority.seal_grant(text, project_id, document_id),
            audit_grant=self._audit_grant(context, project_id, unlock)[0],
        )

    def _audit_grant(
        self, context: grpc.aio.ServicerContext, project_id: uuid.UUID, token: UnlockToken
    ) -> tuple[bytes, int]:
        audience = peer_identity(context)
        if audience is None:  # the caller table admits only workload certificates here
            raise Unauthenticated("An audit grant is issued to a workload certificate only")
        return self.authority.seal_audit_grant(
            project_id, token.keys.signing_seed, audience, AUDIT_GRANT_TTL
        )

    async def IssueAuditGrant(self, request, context):
        project_id = project_uuid(request.project_id)
        token = await self.check(context, project_id)
        grant, expires_at = self._audit_grant(context, project_id, token)
        return internal_pb2.IssueAuditGrantResponse(
            audit_grant=grant, expires_at=timestamp(expires_at)
        )

    async def RedeemJobGrant(self, request, context):
        text, project_id, document_id = self.authority.open_grant(request.job_grant)
        token = await self.check.open(text, project_id, frozenset({Scope.JOB}))
        return internal_pb2.RedeemJobGrantResponse(
            job_token=text,
            expires_at=timestamp(token.expires_at),
            project_id=str(project_id),
            document_id=str(document_id),
        )

    async def CheckToken(self, request, context):
        token = await self.check(context, project_uuid(request.project_id))
        return internal_pb2.CheckTokenResponse(
            scope=token.scope, expires_at=timestamp(token.expires_at)
        )

    async def GetTokenVerificationKeys(self, request, context):
        return internal_pb2.GetTokenVerificationKeysResponse(
            keys=[
                internal_pb2.TokenVerificationKey(key_id=key_id, public_key=public_key)
                for key_id, public_key in self.authority.verification_keys()
            ]
        )

    # Project content

    async def EncryptBatch(self, request, context):
        project_id = project_uuid(request.project_id)
        token = await self.check(context, project_id)
        cipher = ProjectCipher(project_id, token.keys)
        items = request.items
        ciphertexts = await off_loop(
            lambda: [cipher.encrypt(item.data, item.associated_data) for item in items],
            sum(len(item.data) for item in items),
        )
        return internal_pb2.EncryptBatchResponse(ciphertexts=ciphertexts)

    async def DecryptBatch(self, request, context):
        project_id = project_uuid(request.project_id)
        token = await self.check(context, project_id)
        cipher = ProjectCipher(project_id, token.keys)
        items = request.items
        plaintexts = await off_loop(
            lambda: [
                cipher.decrypt(item.data, item.associated_data, index)
                for index, item in enumerate(items)
            ],
            sum(len(item.data) for item in items),
        )
        return internal_pb2.DecryptBatchResponse(plaintexts=plaintexts)

    async def HashTerms(self, request, context):
        project_id = project_uuid(request.project_id)
        token = await self.check(context, project_id)
        cipher = ProjectCipher(project_id, token.keys)
        terms = request.terms
        term_ids = await off_loop(lambda: cipher.term_ids(terms), sum(map(len, terms)))
        return internal_pb2.HashTermsResponse(term_ids=term_ids)

    # Audit log

    async def AppendAuditEvent(self, request, context):
        project_id = project_uuid(request.project_id)
        if request.audit_grant:
            # A grant signs only: no keyring generation check, since a passphrase change
            # re-wraps the keys and keeps the signing key (refusing would drop the events
            # recorded before it).
            seed = self.authority.open_audit_grant(
                request.audit_grant, project_id, peer_identity(context) or ""
            )
        else:
            seed = (await self.check(context, project_id)).keys.signing_seed
        record = await self.audit.append(
            str(project_id),
            seed,
            request.type,
            request.actor,
            dict(request.attributes),
            event_id=request.event_id or None,
        )
        return internal_pb2.AppendAuditEventResponse(event=record.to_proto())

    # Project bundles (ProjectService.ExportProject / ImportProject)

    async def SignBundle(self, request, context):
        project_id = project_uuid(request.project_id)
        token = await self.check(context, project_id, UNLOCK_ONLY)
        signature = sign_bundle(token.keys.signing_seed, str(project_id), request.digest)
        return internal_pb2.SignBundleResponse(signature=signature)

    async def ExportAuditChain(self, request, context):
        project_id = project_uuid(request.project_id)
        await self.check(context, project_id, UNLOCK_ONLY)
        after = 0
        while True:
            records = await self.audit.events(str(project_id), after, EXPORT_BATCH)
            if not records:
                return
            yield internal_pb2.ExportAuditChainResponse(
                events=[record.to_proto() for record in records]
            )
            after = records[-1].seq

    async def ImportProjectKeys(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "start":
            raise InvalidArgument.for_field("start", "The first message must be the start")
        validate(first)
        start = first.start
        project_id = project_uuid(start.project_id)
        keyring = start.keyring
        # The passphrase opens the keyring (and open_keyring checks that the keyring's
        # public key is its signing key's): that key, and no other, must verify the bundle.
        try:
            await open_keyring(self.kdf, project_id, keyring, start.passphrase)
        except DataLoss as error:  # the bundle's keyring, not one stored here
            raise InvalidArgument.for_field(
                "keyring", f"{error.message} (the bundle's). Nothing was imported"
            ) from None
        verify_bundle(keyring.public_key, str(project_id), start.digest, start.signature)

        async def batches():  # type: ignore[no-untyped-def]
            async for message in request_iterator:
                if message.WhichOneof("part") != "events":
                    raise InvalidArgument.for_field("events", "Only events may follow the start")
                yield message.events.events

        count, present, head_hash = await import_chain(
            self.audit.engine,
            str(project_id),
            keyring.public_key,
            generation_of(keyring),
            batches(),
        )
        self.registry.forget(str(project_id))
        return internal_pb2.ImportProjectKeysResponse(
            events_imported=count, already_present=present, head_hash=head_hash
        )

    async def DiscardImportedKeys(self, request, context):
        discarded = await discard_chain(self.audit.engine, request.project_id, request.head_hash)
        self.registry.forget(request.project_id)
        return internal_pb2.DiscardImportedKeysResponse(discarded=discarded)
