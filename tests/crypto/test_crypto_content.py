"""Project content through EncryptBatch / DecryptBatch / HashTerms, as ingest and query use it."""

from __future__ import annotations

import base64
import hashlib
import hmac

import grpc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.crypto.tokens import TokenAuthority

from .support import SEALING_KEY, code_of
from .support import crypto_messages as crypto_pb2


def items(*pairs):
    return [crypto_pb2.CryptoItem(data=data, associated_data=ad) for data, ad in pairs]


def encrypt(stub, project, *pairs):
    return list(
        stub.EncryptBatch(
            crypto_pb2.EncryptBatchRequest(project_id=project.id, items=items(*pairs)),
            metadata=project.metadata,
        ).ciphertexts
    )


def decrypt(stub, project, *pairs):
    return list(
        stub.DecryptBatch(
            crypto_pb2.DecryptBatchRequest(project_id=project.id, items=items(*pairs)),
            metadata=project.metadata,
        ).plaintexts
    )


def test_batch_round_trip_in_request_order(stub, new_project):
    project = new_project()
    texts = [f"chunk {i} — naïve café".encode() for i in range(50)] + [b""]
    ads = [f"doc:1/chunk:{i}".encode() for i in range(len(texts))]
    ciphertexts = encrypt(stub, project, *zip(texts, ads, strict=True))
    assert all(text not in c for text, c in zip(texts[:-1], ciphertexts[:-1], strict=True))
    assert decrypt(stub, project, *zip(ciphertexts, ads, strict=True)) == texts


def test_same_plaintext_encrypts_differently(stub, new_project):
    project = new_project()
    first, second = encrypt(stub, project, (b"same", b"ad"), (b"same", b"ad"))
    assert first != second


def test_swapped_associated_data_is_data_loss_naming_the_item(stub, new_project):
    project = new_project()
    a, b = encrypt(stub, project, (b"chunk A", b"chunk:0"), (b"chunk B", b"chunk:1"))
    code, message = code_of(lambda: decrypt(stub, project, (a, b"chunk:0"), (b, b"chunk:0")))
    assert code == grpc.StatusCode.DATA_LOSS
    assert message.startswith("Item 1 cannot be decrypted")
    assert "chunk A" not in message and "chunk B" not in message


def test_ciphertext_of_another_project_is_permission_denied(stub, new_project):
    project, other = new_project(), new_project()
    (ciphertext,) = encrypt(stub, other, (b"other's secret", b"row"))
    code, message = code_of(lambda: decrypt(stub, project, (ciphertext, b"row")))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "another project's key" in message


def test_garbage_is_data_loss(stub, new_project):
    project = new_project()
    for garbage in (b"\x00", b"\x01" + b"\x00" * 5, b"plain text, not a ciphertext"):
        code, _ = code_of(lambda g=garbage: decrypt(stub, project, (g, b"")))
        assert code == grpc.StatusCode.DATA_LOSS


def test_large_items_round_trip(stub, new_project):
    project = new_project()
    upload = bytes(range(256)) * (20 * 4096)  # 20 MiB, like a raw PDF upload
    (ciphertext,) = encrypt(stub, project, (upload, b"upload:1"))
    assert decrypt(stub, project, (ciphertext, b"upload:1")) == [upload]


def test_hash_terms_is_keyed_per_project_and_deterministic(stub, new_project):
    project, other = new_project(), new_project()
    terms = ["privacy", "first", "context", "privacy", "", "ünïcode"]

    def term_ids(p):
        return list(
            stub.HashTerms(
                crypto_pb2.HashTermsRequest(project_id=p.id, terms=terms), metadata=p.metadata
            ).term_ids
        )

    ids = term_ids(project)
    assert ids == term_ids(project)
    assert ids[0] == ids[3] and len(set(ids)) == 5
    assert ids != term_ids(other)
    # The documented derivation: first 4 bytes (big-endian) of HMAC-SHA256 under
    # HKDF(data key, "contextcache/bm25-terms/v1").
    data_key = TokenAuthority(base64.b64decode(SEALING_KEY)).open(project.token).keys.data_key
    subkey = HKDF(hashes.SHA256(), 32, None, b"contextcache/bm25-terms/v1").derive(data_key)
    expected = [
        int.from_bytes(hmac.new(subkey, t.encode(), hashlib.sha256).digest()[:4], "big")
        for t in terms
    ]
    assert ids == expected


def test_content_rpcs_need_the_projects_token(stub, new_project):
    project, other = new_project(), new_project()
    request = crypto_pb2.EncryptBatchRequest(project_id=project.id, items=items((b"x", b"")))
    code, _ = code_of(lambda: stub.EncryptBatch(request))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = code_of(lambda: stub.EncryptBatch(request, metadata=other.metadata))
    assert code == grpc.StatusCode.UNAUTHENTICATED


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    plaintext=st.binary(max_size=512),
    ad=st.binary(max_size=64),
    data=st.data(),
)
def test_property_batch_round_trip_and_bit_flips(stub, new_project, plaintext, ad, data):
    project = _shared_project(new_project)
    (ciphertext,) = encrypt(stub, project, (plaintext, ad))
    assert decrypt(stub, project, (ciphertext, ad)) == [plaintext]
    bit = data.draw(st.integers(0, len(ciphertext) * 8 - 1))
    flipped = bytearray(ciphertext)
    flipped[bit // 8] ^= 1 << (bit % 8)
    code, _ = code_of(lambda: decrypt(stub, project, (bytes(flipped), ad)))
    # Bytes 1–8 name the key: a flip there reads as another project's ciphertext.
    assert code == (
        grpc.StatusCode.PERMISSION_DENIED if 1 <= bit // 8 <= 8 else grpc.StatusCode.DATA_LOSS
    )


_projects: dict[int, object] = {}


def _shared_project(new_project):
    """One project per server for the property test (keyring creation is not what is tested)."""
    if id(new_project) not in _projects:
        _projects[id(new_project)] = new_project()
    return _projects[id(new_project)]
