"""Crypto service benchmark: prints unlock latency, content throughput and audit appends/s.

Starts the service in-process on a free port (SQLite in a temp dir; PostgreSQL too when
reachable at 127.0.0.1:5432) and calls it over gRPC like any client. Prints figures only.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import psycopg

from contextcache.internal.v1 import crypto_pb2 as internal_pb2
from contextcache.internal.v1 import crypto_pb2_grpc as internal_grpc
from contextcache.v1 import crypto_pb2, crypto_pb2_grpc
from runtime.config import Settings
from runtime.server import Server
from runtime.tls import workload_identity
from services.crypto.app import CryptoApp
from services.crypto.config import CryptoConfig

PASSPHRASE = "benchmark passphrase, long enough"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
ITEMS, ITEM_BYTES, ROUNDS = 1000, 1024, 10


async def bench(database_url: str, data_dir: Path, label: str, full: bool) -> None:
    settings = Settings(
        environment="test",
        database_url=database_url,
        data_dir=data_dir,
        token_sealing_key=base64.b64encode(os.urandom(32)).decode(),
    )
    config = CryptoConfig()
    server = Server(CryptoApp(settings, config))
    port = await server.start(host="127.0.0.1", port=0)
    options = [("grpc.max_receive_message_length", 64 << 20)]

    def channel_as(identity: str) -> grpc.aio.Channel:
        """Mutual TLS as the workload that makes these calls in production."""
        credentials = workload_identity(settings, identity).channel_credentials()
        return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options)

    channels = {name: channel_as(name) for name in ("projects", "ingest", "operator")}
    keyrings = internal_grpc.CryptoInternalServiceStub(channels["projects"])
    content = internal_grpc.CryptoInternalServiceStub(channels["ingest"])
    stub = crypto_pb2_grpc.CryptoServiceStub(channels["operator"])
    try:
        project_id = str(uuid.uuid4())
        keyring = (
            await keyrings.CreateKeyring(
                internal_pb2.CreateKeyringRequest(project_id=project_id, passphrase=PASSPHRASE)
            )
        ).keyring
        unlock = internal_pb2.OpenKeyringRequest(
            project_id=project_id, keyring=keyring, passphrase=PASSPHRASE
        )
        metadata = (("x-unlock-token", (await keyrings.OpenKeyring(unlock)).unlock_token),)
        if full:
            latencies = []
            for _ in range(5):
                started = time.perf_counter()
                await keyrings.OpenKeyring(unlock)
                latencies.append(time.perf_counter() - started)
            print(
                f"unlock (OpenKeyring, Argon2id m={config.argon2_memory_kib} KiB "
                f"t={config.argon2_time_cost} p={config.argon2_parallelism}): "
                f"p50 {statistics.median(latencies) * 1000:.0f} ms over {len(latencies)} runs"
            )
            payload = [
                internal_pb2.CryptoItem(data=os.urandom(ITEM_BYTES), associated_data=b"doc:%d" % i)
                for i in range(ITEMS)
            ]
            request = internal_pb2.EncryptBatchRequest(project_id=project_id, items=payload)
            started = time.perf_counter()
            for _ in range(ROUNDS):
                ciphertexts = (await content.EncryptBatch(request, metadata=metadata)).ciphertexts
            encrypt_s = time.perf_counter() - started
            decrypt = internal_pb2.DecryptBatchRequest(
                project_id=project_id,
                items=[
                    internal_pb2.CryptoItem(data=c, associated_data=p.associated_data)
                    for c, p in zip(ciphertexts, payload, strict=True)
                ],
            )
            started = time.perf_counter()
            for _ in range(ROUNDS):
                await content.DecryptBatch(decrypt, metadata=metadata)
            decrypt_s = time.perf_counter() - started
            megabytes = ITEMS * ITEM_BYTES * ROUNDS / 1e6
            print(
                f"EncryptBatch ({ITEMS} x {ITEM_BYTES} B items per call): "
                f"{megabytes / encrypt_s:.1f} MB/s, {ITEMS * ROUNDS / encrypt_s:,.0f} items/s"
            )
            print(
                f"DecryptBatch ({ITEMS} x {ITEM_BYTES} B items per call): "
                f"{megabytes / decrypt_s:.1f} MB/s, {ITEMS * ROUNDS / decrypt_s:,.0f} items/s"
            )
        append = internal_pb2.AppendAuditEventRequest(
            project_id=project_id,
            type=crypto_pb2.AUDIT_EVENT_TYPE_DOCUMENT_INGESTED,
            actor="bench",
            attributes={"document_id": str(uuid.uuid4())},
        )
        count = 300
        started = time.perf_counter()
        for _ in range(count):
            await content.AppendAuditEvent(append, metadata=metadata)
        sequential = count / (time.perf_counter() - started)
        started = time.perf_counter()
        await asyncio.gather(
            *(content.AppendAuditEvent(append, metadata=metadata) for _ in range(count))
        )
        concurrent = count / (time.perf_counter() - started)
        verify = crypto_pb2.VerifyAuditChainRequest(project_id=project_id)
        started = time.perf_counter()
        result = await stub.VerifyAuditChain(verify)
        verify_s = time.perf_counter() - started
        print(
            f"audit appends ({label}): {sequential:,.0f}/s one at a time, "
            f"{concurrent:,.0f}/s with {count} concurrent; "
            f"verify {result.events_verified} events in {verify_s * 1000:.0f} ms "
            f"(valid={result.valid})"
        )
    finally:
        for channel in channels.values():
            await channel.close()
        await server.stop(0)


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        await bench(f"sqlite:///{tmp}/crypto.db", Path(tmp), "SQLite", full=True)
        try:
            admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
        except psycopg.OperationalError as error:
            print(f"audit appends (PostgreSQL): skipped, server unreachable: {error}")
            return
        name = f"cc_bench_{secrets.token_hex(6)}"
        with admin:
            admin.execute(f"CREATE DATABASE {name}")
            try:
                url = f"postgresql://postgres@127.0.0.1:5432/{name}"
                await bench(url, Path(tmp), "PostgreSQL", full=False)
            finally:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    asyncio.run(main())
