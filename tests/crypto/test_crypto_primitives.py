"""The primitives for clients that do their own crypto, through the gRPC API.

Covers the original's crypto checklist (salt, key derivation, encrypt/decrypt incl. empty and
Unicode input, fresh nonces, wrong-key detection, keypairs, sign/verify, tampering, hashing)
plus known-answer vectors: RFC 8032 §7.1 tests 1–3 (Ed25519) and RFC 8439 §2.8.2
(ChaCha20-Poly1305, the AEAD of ciphertext format version 1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.errors import bad_request_of
from services.crypto.aead import Aead, AuthenticationFailed

from .support import code_of
from .support import crypto_messages as crypto_pb2

FAST = crypto_pb2.Argon2Params(time_cost=1, memory_kib=8192, parallelism=1)

# RFC 8439 §2.8.2.
RFC8439_KEY = bytes(range(0x80, 0xA0))
RFC8439_NONCE = bytes.fromhex("070000004041424344454647")
RFC8439_AAD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
RFC8439_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
    b"future, sunscreen would be it."
)
RFC8439_CIPHERTEXT = bytes.fromhex(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116"
)
RFC8439_TAG = bytes.fromhex("1ae10b594f09e26a7e902ecbd0600691")
# The same message in ciphertext format version 1: 0x01 | nonce | ciphertext | tag.
RFC8439_SEALED = b"\x01" + RFC8439_NONCE + RFC8439_CIPHERTEXT + RFC8439_TAG

# RFC 8032 §7.1, tests 1–3: (secret key, public key, message, signature).
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e3970"
        "1cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613"
        "d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760"
        "984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]


def encrypt(stub, key: bytes, plaintext: bytes, ad: bytes = b"") -> bytes:
    return stub.Encrypt(
        crypto_pb2.EncryptRequest(key=key, plaintext=plaintext, associated_data=ad)
    ).ciphertext


def decrypt(stub, key: bytes, ciphertext: bytes, ad: bytes = b"") -> bytes:
    return stub.Decrypt(
        crypto_pb2.DecryptRequest(key=key, ciphertext=ciphertext, associated_data=ad)
    ).plaintext


def derive(stub, passphrase: str, salt: bytes, params=FAST) -> bytes:
    return stub.DeriveKey(
        crypto_pb2.DeriveKeyRequest(passphrase=passphrase, salt=salt, params=params)
    ).key


def test_salts_are_random_and_sized(stub):
    salts = {stub.GenerateSalt(crypto_pb2.GenerateSaltRequest()).salt for _ in range(20)}
    assert len(salts) == 20
    assert {len(s) for s in salts} == {16}
    assert len(stub.GenerateSalt(crypto_pb2.GenerateSaltRequest(length=32)).salt) == 32
    code, _ = code_of(lambda: stub.GenerateSalt(crypto_pb2.GenerateSaltRequest(length=4)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_key_derivation_is_deterministic_and_salted(stub):
    salt, other_salt = b"s" * 16, b"t" * 16
    key = derive(stub, "a passphrase", salt)
    assert len(key) == 32
    assert derive(stub, "a passphrase", salt) == key
    assert derive(stub, "a passphrase", other_salt) != key
    assert derive(stub, "another passphrase", salt) != key
    # Cost parameters are part of the derivation.
    slower = crypto_pb2.Argon2Params(time_cost=2, memory_kib=8192, parallelism=1)
    assert derive(stub, "a passphrase", salt, slower) != key


def test_key_derivation_is_argon2id_with_the_service_defaults(stub):
    from argon2.low_level import Type, hash_secret_raw

    response = stub.DeriveKey(crypto_pb2.DeriveKeyRequest(passphrase="pw", salt=b"x" * 16))
    params = response.params
    expected = hash_secret_raw(
        b"pw",
        b"x" * 16,
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=32,
        type=Type.ID,
    )
    assert response.key == expected


def test_key_derivation_rejects_cost_outside_the_limits(stub):
    too_cheap = crypto_pb2.Argon2Params(time_cost=1, memory_kib=1024, parallelism=1)
    code, message = code_of(lambda: derive(stub, "pw", b"x" * 16, too_cheap))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "memory_kib" in message


@pytest.mark.parametrize(
    "plaintext",
    [b"", b"hello", "Grüße, 世界 🌍 — ünïcødé".encode(), bytes(range(256)) * 40],
    ids=["empty", "ascii", "unicode", "binary-10k"],
)
def test_encrypt_decrypt_round_trip(stub, plaintext):
    key = bytes(range(32))
    ciphertext = encrypt(stub, key, plaintext, b"row-1")
    assert plaintext not in ciphertext or not plaintext
    assert ciphertext[0] == 1  # format version 1: ChaCha20-Poly1305
    assert len(ciphertext) == 1 + 12 + len(plaintext) + 16
    assert decrypt(stub, key, ciphertext, b"row-1") == plaintext


def test_same_plaintext_gets_a_fresh_nonce_each_time(stub):
    key = bytes(32)
    ciphertexts = [encrypt(stub, key, b"same message") for _ in range(10)]
    assert len(set(ciphertexts)) == 10
    assert len({c[1:13] for c in ciphertexts}) == 10


def refusal_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, list[str]]:
    """The status code, message and BadRequest fields of a call expected to fail."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    bad_request = bad_request_of(raised.value)
    fields = [v.field for v in bad_request.field_violations] if bad_request else []
    return raised.value.code(), raised.value.details(), fields


# The caller's own ciphertext that does not open is bad input (as Cloud KMS answers it),
# not DATA_LOSS: that code is for data the service holds (DecryptBatch of stored content).


def test_wrong_key_or_associated_data_is_invalid_argument_naming_ciphertext(stub):
    key, other = bytes(32), bytes([1]) * 32
    ciphertext = encrypt(stub, key, b"secret text", b"doc-1")
    code, message, fields = refusal_of(lambda: decrypt(stub, other, ciphertext, b"doc-1"))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["ciphertext"])
    assert "wrong key" in message
    code, _, fields = refusal_of(lambda: decrypt(stub, key, ciphertext, b"doc-2"))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["ciphertext"])


def test_unknown_format_version_and_truncation_are_invalid_argument(stub):
    key = bytes(32)
    ciphertext = encrypt(stub, key, b"text")
    refused = refusal_of(lambda: decrypt(stub, key, b"\x02" + ciphertext[1:]))
    assert refused == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Ciphertext format version 2 is not supported",
        ["ciphertext"],
    )
    refused = refusal_of(lambda: decrypt(stub, key, ciphertext[:20]))
    assert refused == (grpc.StatusCode.INVALID_ARGUMENT, "Ciphertext is truncated", ["ciphertext"])


def test_short_keys_are_invalid_argument(stub):
    code, message = code_of(lambda: encrypt(stub, b"short", b"x"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "key" in message


def test_rfc8439_vector_through_the_aead_module():
    assert Aead(RFC8439_KEY).open(RFC8439_SEALED, RFC8439_AAD) == RFC8439_PLAINTEXT
    with pytest.raises(AuthenticationFailed):
        Aead(RFC8439_KEY).open(RFC8439_SEALED, RFC8439_AAD + b"!")


def test_rfc8439_vector_through_decrypt_and_round_trip(stub):
    assert decrypt(stub, RFC8439_KEY, RFC8439_SEALED, RFC8439_AAD) == RFC8439_PLAINTEXT
    sealed = encrypt(stub, RFC8439_KEY, RFC8439_PLAINTEXT, RFC8439_AAD)
    assert sealed != RFC8439_SEALED  # a fresh random nonce
    assert decrypt(stub, RFC8439_KEY, sealed, RFC8439_AAD) == RFC8439_PLAINTEXT


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032)
def test_rfc8032_ed25519_vectors(stub, secret, public, message, signature):
    signed = stub.Sign(
        crypto_pb2.SignRequest(private_key=bytes.fromhex(secret), message=bytes.fromhex(message))
    )
    assert signed.signature.hex() == signature
    verified = stub.Verify(
        crypto_pb2.VerifyRequest(
            public_key=bytes.fromhex(public),
            message=bytes.fromhex(message),
            signature=bytes.fromhex(signature),
        )
    )
    assert verified.valid


def test_keypair_sign_verify_tamper_and_wrong_key(stub):
    pair = stub.GenerateKeypair(crypto_pb2.GenerateKeypairRequest())
    other = stub.GenerateKeypair(crypto_pb2.GenerateKeypairRequest())
    assert len(pair.private_key) == 32 and len(pair.public_key) == 32
    assert pair.private_key != other.private_key
    message = "signed statement ✓".encode()
    signature = stub.Sign(
        crypto_pb2.SignRequest(private_key=pair.private_key, message=message)
    ).signature

    def verify(public_key: bytes, msg: bytes, sig: bytes) -> bool:
        return stub.Verify(
            crypto_pb2.VerifyRequest(public_key=public_key, message=msg, signature=sig)
        ).valid

    assert verify(pair.public_key, message, signature)
    assert not verify(pair.public_key, message + b".", signature)
    assert not verify(other.public_key, message, signature)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verify(pair.public_key, message, flipped)


def test_hashes_are_deterministic_and_standard(stub):
    def digest(algorithm, data: bytes) -> bytes:
        return stub.Hash(crypto_pb2.HashRequest(algorithm=algorithm, data=data)).digest

    sha = crypto_pb2.HASH_ALGORITHM_SHA256
    blake = crypto_pb2.HASH_ALGORITHM_BLAKE2B
    assert digest(sha, b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert digest(sha, b"abc") == digest(sha, b"abc") != digest(sha, b"abd")
    assert digest(blake, b"abc") == hashlib.blake2b(b"abc").digest()
    assert len(digest(blake, b"")) == 64
    code, _ = code_of(lambda: digest(crypto_pb2.HASH_ALGORITHM_UNSPECIFIED, b"x"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


PROPERTY = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY
@given(
    key=st.binary(min_size=32, max_size=32),
    plaintext=st.binary(max_size=2048),
    ad=st.binary(max_size=256),
)
def test_property_round_trip(stub, key, plaintext, ad):
    assert decrypt(stub, key, encrypt(stub, key, plaintext, ad), ad) == plaintext


@PROPERTY
@given(
    plaintext=st.binary(max_size=512),
    ad=st.binary(max_size=64),
    where=st.sampled_from(["nonce", "ciphertext", "ad"]),
    data=st.data(),
)
def test_property_any_bit_flip_is_invalid_argument(stub, plaintext, ad, where, data):
    key = bytes(range(32))
    sealed = encrypt(stub, key, plaintext, ad)
    if where == "ad":
        ad = ad or b"\x00"  # flipping a bit of empty AD: compare against a 1-byte AD
        bit = data.draw(st.integers(0, len(ad) * 8 - 1))
        ad = _flip(ad, bit)
    else:
        low, high = (1, 13) if where == "nonce" else (13, len(sealed))
        bit = data.draw(st.integers(low * 8, high * 8 - 1))
        sealed = _flip(sealed, bit)
    code, _, fields = refusal_of(lambda: decrypt(stub, key, sealed, ad))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["ciphertext"])


def _flip(data: bytes, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)
