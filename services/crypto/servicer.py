"""CryptoService RPCs: each reads as its story — validate (the interceptor, from the proto
rules) → authorize (the unlock token) → do → respond.

Crypto appends no audit events of its own: the services that act on a project (projects,
ingest) know the actor and append through AppendAuditEvent. Never logs, returns in an error
or puts in a span a passphrase, token, key or plaintext.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import uuid
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, TypeVar

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf import timestamp_pb2

from contextcache.v1 import crypto_pb2, crypto_pb2_grpc
from runtime.errors import DataLoss, InvalidArgument, PermissionDenied, Unauthenticated
from runtime.protos import CRYPTO_SERVICE
from services.crypto.aead import Aead, AeadError
from services.crypto.content import ProjectCipher
from services.crypto.kdf import KdfParams
from services.crypto.keyring import create_keyring, open_keyring, rewrap_keyring
from services.crypto.tokens import Scope, UnlockToken

if TYPE_CHECKING:
    from services.crypto.app import CryptoApp

TOKEN_METADATA = "x-unlock-token"
DEFAULT_UNLOCK_TTL = 3600
DEFAULT_JOB_TTL = 24 * 3600
DEFAULT_SALT_BYTES = 16
DEFAULT_PAGE_SIZE = 20
ANY_SCOPE = frozenset(Scope)
# Work on more bytes than this runs in a thread so other calls keep flowing.
OFFLOAD_BYTES = 1024 * 1024

T = TypeVar("T")


def project_uuid(project_id: str) -> uuid.UUID:
    return uuid.UUID(project_id)  # the proto rules already checked it is a UUID


def timestamp(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


def token_text(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == TOKEN_METADATA:
            return value if isinstance(value, str) else value.decode("ascii", "replace")
    raise Unauthenticated(
        f"This call needs an unlock token in the '{TOKEN_METADATA}' metadata; "
        "unlock the project first"
    )


def authorize(
    app: CryptoApp,
    context: grpc.aio.ServicerContext,
    project_id: uuid.UUID,
    scopes: Collection[Scope] = ANY_SCOPE,
) -> UnlockToken:
    """The request's unlock token, if it is valid, live, for this project and this use."""
    token = app.tokens.open(token_text(context))
    if token.project_id != project_id:
        raise Unauthenticated("The unlock token is for another project")
    if token.scope not in scopes:
        raise PermissionDenied(
            f"A {token.scope.name.lower()} token cannot be used here; use an unlock token"
        )
    return token


async def off_loop(work: Callable[[], T], size: int) -> T:
    return await asyncio.to_thread(work) if size > OFFLOAD_BYTES else work()


def encode_page_token(after_seq: int) -> str:
    return base64.urlsafe_b64encode(f"audit:{after_seq}".encode()).decode()


def decode_page_token(token: str) -> int:
    if not token:
        return 0
    try:
        kind, _, seq = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind == "audit" and seq.isdigit():
            return int(seq)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise InvalidArgument.for_field(
        "page_token", "Invalid page token; pass next_page_token from the previous response"
    )


class CryptoServicer(crypto_pb2_grpc.CryptoServiceServicer):
    def __init__(self, app: CryptoApp) -> None:
        self.app = app

    # Keyrings and tokens

    async def CreateKeyring(self, request, context):
        keyring = await create_keyring(
            self.app.kdf, project_uuid(request.project_id), request.passphrase
        )
        return crypto_pb2.CreateKeyringResponse(keyring=keyring)

    async def OpenKeyring(self, request, context):
        project_id = project_uuid(request.project_id)
        keys = await open_keyring(self.app.kdf, project_id, request.keyring, request.passphrase)
        ttl = request.ttl.seconds if request.HasField("ttl") else DEFAULT_UNLOCK_TTL
        text, token = self.app.tokens.issue(project_id, Scope.UNLOCK, ttl, keys)
        return crypto_pb2.OpenKeyringResponse(
            unlock_token=text, expires_at=timestamp(token.expires_at)
        )

    async def RewrapKeyring(self, request, context):
        keyring = await rewrap_keyring(
            self.app.kdf,
            project_uuid(request.project_id),
            request.keyring,
            request.old_passphrase,
            request.new_passphrase,
        )
        return crypto_pb2.RewrapKeyringResponse(keyring=keyring)

    async def IssueJobToken(self, request, context):
        project_id = project_uuid(request.project_id)
        unlock = authorize(self.app, context, project_id, scopes={Scope.UNLOCK})
        ttl = request.ttl.seconds if request.HasField("ttl") else DEFAULT_JOB_TTL
        text, token = self.app.tokens.issue(project_id, Scope.JOB, ttl, unlock.keys)
        return crypto_pb2.IssueJobTokenResponse(
            job_token=text, expires_at=timestamp(token.expires_at)
        )

    async def GetTokenVerificationKey(self, request, context):
        return crypto_pb2.GetTokenVerificationKeyResponse(
            public_key=self.app.tokens.verification_key
        )

    # Project content

    async def EncryptBatch(self, request, context):
        project_id = project_uuid(request.project_id)
        token = authorize(self.app, context, project_id)
        cipher = ProjectCipher(project_id, token.keys)
        items = request.items
        ciphertexts = await off_loop(
            lambda: [cipher.encrypt(item.data, item.associated_data) for item in items],
            sum(len(item.data) for item in items),
        )
        return crypto_pb2.EncryptBatchResponse(ciphertexts=ciphertexts)

    async def DecryptBatch(self, request, context):
        project_id = project_uuid(request.project_id)
        token = authorize(self.app, context, project_id)
        cipher = ProjectCipher(project_id, token.keys)
        items = request.items
        plaintexts = await off_loop(
            lambda: [
                cipher.decrypt(item.data, item.associated_data, index)
                for index, item in enumerate(items)
            ],
            sum(len(item.data) for item in items),
        )
        return crypto_pb2.DecryptBatchResponse(plaintexts=plaintexts)

    async def HashTerms(self, request, context):
        project_id = project_uuid(request.project_id)
        token = authorize(self.app, context, project_id)
        cipher = ProjectCipher(project_id, token.keys)
        terms = request.terms
        term_ids = await off_loop(lambda: cipher.term_ids(terms), sum(map(len, terms)))
        return crypto_pb2.HashTermsResponse(term_ids=term_ids)

    # Primitives for clients that do their own crypto

    async def GenerateSalt(self, request, context):
        length = request.length if request.HasField("length") else DEFAULT_SALT_BYTES
        return crypto_pb2.GenerateSaltResponse(salt=os.urandom(length))

    async def DeriveKey(self, request, context):
        params = (
            KdfParams.from_proto(request.params)
            if request.HasField("params")
            else self.app.kdf.default_params
        )
        key = await self.app.kdf.derive(request.passphrase, request.salt, params)
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
            raise DataLoss(str(error)) from None
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

    async def AppendAuditEvent(self, request, context):
        project_id = project_uuid(request.project_id)
        token = authorize(self.app, context, project_id)
        record = await self.app.audit.append(
            str(project_id),
            token.keys.signing_seed,
            request.type,
            request.actor,
            dict(request.attributes),
        )
        return crypto_pb2.AppendAuditEventResponse(event=record.to_proto())

    async def ListAuditEvents(self, request, context):
        project_id = str(project_uuid(request.project_id))
        size = request.page_size if request.HasField("page_size") else DEFAULT_PAGE_SIZE
        after = decode_page_token(request.page_token)
        records = await self.app.audit.events(project_id, after, size + 1)
        page = records[:size]
        more = len(records) > size
        return crypto_pb2.ListAuditEventsResponse(
            events=[record.to_proto() for record in page],
            next_page_token=encode_page_token(page[-1].seq) if more else "",
        )

    async def VerifyAuditChain(self, request, context):
        project_id = str(project_uuid(request.project_id))
        pinned = request.pinned_head if request.HasField("pinned_head") else None
        if pinned is not None and pinned.project_id and pinned.project_id != project_id:
            raise InvalidArgument.for_field(
                "pinned_head.project_id", "pinned_head belongs to another project"
            )
        result = await self.app.audit.verify(project_id, request.public_key or None, pinned)
        return crypto_pb2.VerifyAuditChainResponse(
            valid=result.valid,
            events_verified=result.events_verified,
            first_broken_seq=result.first_broken_seq,
            reason=result.reason,
            head=result.last.head() if result.last else crypto_pb2.AuditHead(project_id=project_id),
        )

    async def GetAuditHead(self, request, context):
        project_id = str(project_uuid(request.project_id))
        record = await self.app.audit.head(project_id)
        head = record.head() if record else crypto_pb2.AuditHead(project_id=project_id)
        return crypto_pb2.GetAuditHeadResponse(head=head)

    async def GetStatus(self, request, context):
        return crypto_pb2.CryptoServiceGetStatusResponse(
            status=await self.app.readiness.service_status(CRYPTO_SERVICE)
        )
