"""The versioned AEAD ciphertext format used for everything this service encrypts.

Format version 1 is ChaCha20-Poly1305 as specified in RFC 8439 (IETF variant: 256-bit key,
96-bit nonce, 128-bit tag) — not XChaCha20, which `cryptography` does not offer:

    0x01 | nonce (12 random bytes) | ciphertext | tag (16 bytes)

Nonces are random, so one key must not seal more than about 2^32 messages; every key here is
per project (or per token), far below that. The version byte lets the algorithm change later
without breaking stored ciphertexts. This module never logs and never puts key or plaintext
bytes into an exception message.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

VERSION_CHACHA20_POLY1305 = 1
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = 1 + NONCE_BYTES + TAG_BYTES


class AeadError(Exception):
    """A ciphertext that cannot be opened; the message says why, never with secret bytes."""


class UnsupportedVersion(AeadError):
    pass


class Truncated(AeadError):
    pass


class AuthenticationFailed(AeadError):
    pass


class Aead:
    """One key, ready to seal and open many messages (the key schedule is paid once)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("AEAD keys are 32 bytes")
        self._cipher = ChaCha20Poly1305(key)

    def seal(self, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return (
            bytes((VERSION_CHACHA20_POLY1305,))
            + nonce
            + self._cipher.encrypt(nonce, plaintext, associated_data)
        )

    def open(self, ciphertext: bytes, associated_data: bytes = b"") -> bytes:
        if not ciphertext:
            raise Truncated("Ciphertext is empty")
        if ciphertext[0] != VERSION_CHACHA20_POLY1305:
            raise UnsupportedVersion(f"Ciphertext format version {ciphertext[0]} is not supported")
        if len(ciphertext) < OVERHEAD:
            raise Truncated("Ciphertext is truncated")
        nonce, body = ciphertext[1 : 1 + NONCE_BYTES], ciphertext[1 + NONCE_BYTES :]
        try:
            return self._cipher.decrypt(nonce, body, associated_data)
        except InvalidTag:
            raise AuthenticationFailed(
                "Ciphertext could not be authenticated: wrong key, wrong associated data "
                "or altered data"
            ) from None
