"""Project keyrings: a data key and an Ed25519 signing key, wrapped under a passphrase.

The key-encryption key is Argon2id(passphrase, salt, params); the parameters travel with the
keyring so they can be raised later (RewrapKeyring uses the service's current ones). Each
wrapped key is AEAD-sealed with associated data naming the project, the key's purpose and
(from version 2) the keyring's generation, so a wrapped key cannot be moved to another
project, slot or generation. Every rewrap makes the next generation; registry.py keeps each
project's public key and latest generation, so a substituted or superseded keyring opens
nothing. A wrong passphrase is detected by
the AEAD tag check (constant time) and is PERMISSION_DENIED. Never logs or returns a
passphrase or an unwrapped key.
"""

from __future__ import annotations

import hmac
import os
import time
import uuid

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contextcache.internal.v1 import crypto_pb2
from runtime import metrics
from runtime.errors import DataLoss, FailedPrecondition, PermissionDenied
from services.crypto import canonical
from services.crypto.aead import Aead, AeadError
from services.crypto.kdf import KdfParams, PassphraseKdf
from services.crypto.tokens import ProjectKeys

KEYRING_VERSION = 2
# Version 1 keyrings (no generation in the associated data) still open, as generation 0.
LEGACY_VERSION = 1
SALT_BYTES = 16
DATA_KEY = "data-key"
SIGNING_KEY = "signing-key"


def wrapping_ad(project_id: uuid.UUID, purpose: str, version: int, generation: int) -> bytes:
    if version == LEGACY_VERSION:
        return canonical.encode("contextcache/keyring/v1", str(project_id), purpose)
    return canonical.encode("contextcache/keyring/v2", str(project_id), purpose, str(generation))


def generation_of(keyring: crypto_pb2.Keyring) -> int:
    return 0 if keyring.version == LEGACY_VERSION else keyring.generation


def public_key_of(signing_seed: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(signing_seed).public_key().public_bytes_raw()


async def _wrap(
    kdf: PassphraseKdf,
    project_id: uuid.UUID,
    passphrase: str,
    params: KdfParams,
    keys: ProjectKeys,
    generation: int,
) -> crypto_pb2.Keyring:
    salt = os.urandom(SALT_BYTES)
    kek = Aead(await kdf.derive(passphrase, salt, params))

    def ad(purpose: str) -> bytes:
        return wrapping_ad(project_id, purpose, KEYRING_VERSION, generation)

    return crypto_pb2.Keyring(
        version=KEYRING_VERSION,
        salt=salt,
        kdf_params=params.to_proto(),
        wrapped_data_key=kek.seal(keys.data_key, ad(DATA_KEY)),
        wrapped_signing_key=kek.seal(keys.signing_seed, ad(SIGNING_KEY)),
        public_key=public_key_of(keys.signing_seed),
        generation=generation,
    )


async def create_keyring(
    kdf: PassphraseKdf, project_id: uuid.UUID, passphrase: str
) -> crypto_pb2.Keyring:
    keys = ProjectKeys(
        data_key=os.urandom(32),
        signing_seed=Ed25519PrivateKey.generate().private_bytes_raw(),
    )
    return await _wrap(kdf, project_id, passphrase, kdf.default_params, keys, generation=1)


async def open_keyring(
    kdf: PassphraseKdf, project_id: uuid.UUID, keyring: crypto_pb2.Keyring, passphrase: str
) -> ProjectKeys:
    if keyring.version not in (KEYRING_VERSION, LEGACY_VERSION):
        raise FailedPrecondition(f"Keyring format version {keyring.version} is not supported")
    params = KdfParams.from_proto(keyring.kdf_params)
    started = time.perf_counter()
    kek = Aead(await kdf.derive(passphrase, keyring.salt, params))
    generation = generation_of(keyring)

    def ad(purpose: str) -> bytes:
        return wrapping_ad(project_id, purpose, keyring.version, generation)

    try:
        data_key = kek.open(keyring.wrapped_data_key, ad(DATA_KEY))
    except AeadError:
        metrics.PASSPHRASE_FAILURES.inc()
        # Also what a keyring of another project looks like: its keys are bound to its id.
        raise PermissionDenied("Wrong passphrase for this project") from None
    finally:
        metrics.KEYRING_OPEN_SECONDS.observe(time.perf_counter() - started)
    try:
        signing_seed = kek.open(keyring.wrapped_signing_key, ad(SIGNING_KEY))
    except AeadError:
        raise DataLoss("The keyring is damaged: its signing key cannot be unwrapped") from None
    if len(data_key) != 32 or len(signing_seed) != 32:
        raise DataLoss("The keyring is damaged: a wrapped key has the wrong length")
    if not hmac.compare_digest(public_key_of(signing_seed), keyring.public_key):
        raise DataLoss("The keyring is damaged: its public key does not match its signing key")
    return ProjectKeys(data_key=data_key, signing_seed=signing_seed)


async def rewrap_keyring(
    kdf: PassphraseKdf,
    project_id: uuid.UUID,
    keyring: crypto_pb2.Keyring,
    old_passphrase: str,
    new_passphrase: str,
) -> crypto_pb2.Keyring:
    """The same keys under a new passphrase, new salt, the current Argon2id cost and the
    next generation."""
    keys = await open_keyring(kdf, project_id, keyring, old_passphrase)
    return await _wrap(
        kdf,
        project_id,
        new_passphrase,
        kdf.default_params,
        keys,
        generation=generation_of(keyring) + 1,
    )
