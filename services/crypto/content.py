"""Project content encryption and keyed term ids, under keys derived from the data key.

Content ciphertext (what EncryptBatch returns and DecryptBatch takes):

    0x01 | key id (8 bytes) | AEAD ciphertext (aead.py format)

The key id is an HKDF output of the data key: it names the key (so another project's
ciphertext is told apart from a damaged one) without revealing it. The AEAD's associated data
is canonical(DOMAIN, project id, key id, caller's associated data): the caller's part binds a
ciphertext to its row, and the project binding comes for free.

Term ids for the keyword index are the first 4 bytes (big-endian) of
HMAC-SHA256(terms subkey, UTF-8 term), the subkey being HKDF(data key,
"contextcache/bm25-terms/v1"). Never logs content, terms or keys.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterable

from runtime.errors import DataLoss, PermissionDenied
from services.crypto import canonical
from services.crypto.aead import Aead, AeadError
from services.crypto.kdf import hkdf_subkey
from services.crypto.tokens import ProjectKeys

ENVELOPE_VERSION = 1
KEY_ID_BYTES = 8
HEADER_BYTES = 1 + KEY_ID_BYTES


class ProjectCipher:
    def __init__(self, project_id: uuid.UUID, keys: ProjectKeys) -> None:
        self.project_id = project_id
        self.key_id = hkdf_subkey(keys.data_key, b"contextcache/key-id/v1", KEY_ID_BYTES)
        self._aead = Aead(hkdf_subkey(keys.data_key, b"contextcache/content/v1"))
        self._terms_key = hkdf_subkey(keys.data_key, b"contextcache/bm25-terms/v1")
        self._header = bytes((ENVELOPE_VERSION,)) + self.key_id

    def _ad(self, associated_data: bytes) -> bytes:
        return canonical.encode(
            "contextcache/content/v1", str(self.project_id), self.key_id, associated_data
        )

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        return self._header + self._aead.seal(plaintext, self._ad(associated_data))

    def decrypt(self, ciphertext: bytes, associated_data: bytes, index: int) -> bytes:
        """The plaintext; DATA_LOSS when damaged, PERMISSION_DENIED when another key's."""
        if len(ciphertext) < HEADER_BYTES or ciphertext[0] != ENVELOPE_VERSION:
            raise DataLoss(f"Item {index} is not a ContextCache content ciphertext (version 1)")
        if not hmac.compare_digest(ciphertext[1:HEADER_BYTES], self.key_id):
            raise PermissionDenied(
                f"Item {index} was encrypted under another project's key; it cannot be "
                "decrypted with this project's unlock token"
            )
        try:
            return self._aead.open(ciphertext[HEADER_BYTES:], self._ad(associated_data))
        except AeadError as error:
            raise DataLoss(f"Item {index} cannot be decrypted: {error}") from None

    def term_ids(self, terms: Iterable[str]) -> list[int]:
        # One keyed HMAC, copied per term: the key is set up once, not once per term.
        keyed = hmac.new(self._terms_key, digestmod=hashlib.sha256)
        ids = []
        for term in terms:
            mac = keyed.copy()
            mac.update(term.encode())
            ids.append(int.from_bytes(mac.digest()[:4], "big"))
        return ids
