"""Helpers of the crypto tests: an in-process server, settings, tokens in metadata."""

from __future__ import annotations

import asyncio
import base64
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from contextcache.internal.v1 import crypto_pb2 as internal_pb2
from contextcache.internal.v1 import crypto_pb2_grpc as internal_grpc
from contextcache.v1 import crypto_pb2 as public_pb2
from contextcache.v1 import crypto_pb2_grpc
from runtime.callers import INTERNAL_CALLERS
from runtime.config import Settings
from runtime.server import Server
from runtime.tls import workload_identity
from services.crypto.app import CryptoApp
from services.crypto.config import CryptoConfig

SEALING_KEY = base64.b64encode(os.urandom(32)).decode()
PASSPHRASE = "correct horse battery staple, twice"
# Cheap Argon2id for speed; test_crypto_keyring keeps one test at the default cost.
CHEAP_KDF = CryptoConfig(
    argon2_memory_kib=8192, argon2_time_cost=1, argon2_parallelism=1, argon2_max_concurrent=4
)


class RunningCrypto:
    """A crypto server started in-process on a free port, in its own event loop thread."""

    def __init__(self, settings: Settings, config: CryptoConfig) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start() -> int:
            self.app = CryptoApp(settings, config)
            self.server = Server(self.app)
            return await self.server.start(host="127.0.0.1", port=0)

        self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(60)
        self.address = f"127.0.0.1:{self.port}"
        self.channels: dict[str, grpc.Channel] = {}
        self.stub = CallerStub(self)

    def channel(self, identity: str = "operator") -> grpc.Channel:
        """A channel to the server authenticated as `identity` (runtime/tls.py)."""
        if identity not in self.channels:
            self.channels[identity] = grpc.secure_channel(
                self.address,
                workload_identity(self.settings, identity).channel_credentials(),
                options=[
                    ("grpc.max_send_message_length", 64 * 1024 * 1024),
                    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ],
            )
        return self.channels[identity]

    def stop(self) -> None:
        for channel in self.channels.values():
            channel.close()
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class CallerStub:
    """Both crypto APIs, each method called as the workload that calls it in production:
    public methods as the operator, internal ones as the first identity the caller table
    (runtime/callers.py) lets call them."""

    PREFERRED = ("projects", "ingest", "worker", "query")

    def __init__(self, crypto: RunningCrypto) -> None:
        self._crypto = crypto

    def as_identity(self, identity: str):  # type: ignore[no-untyped-def]
        channel = self._crypto.channel(identity)
        return crypto_pb2_grpc.CryptoServiceStub(channel), internal_grpc.CryptoInternalServiceStub(
            channel
        )

    def __getattr__(self, method: str):  # type: ignore[no-untyped-def]
        path = f"/contextcache.internal.v1.CryptoInternalService/{method}"
        if path not in INTERNAL_CALLERS:
            return getattr(self.as_identity("operator")[0], method)
        allowed = INTERNAL_CALLERS[path]
        identity = next(name for name in self.PREFERRED if name in allowed)
        return getattr(self.as_identity(identity)[1], method)


class _BothApis:
    """Message classes of contextcache.v1.crypto and contextcache.internal.v1.crypto."""

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        if hasattr(internal_pb2, name):
            return getattr(internal_pb2, name)
        return getattr(public_pb2, name)


crypto_messages = _BothApis()


def settings_for(database_url: str, data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "environment": "test",
        "database_url": database_url,
        "data_dir": data_dir,
        "token_sealing_key": SEALING_KEY,
        "health_check_interval": 1.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def with_damaged_signing_key(keyring: internal_pb2.Keyring) -> internal_pb2.Keyring:
    """A copy of `keyring` whose wrapped signing key has one bit flipped (its data key still
    opens, so the passphrase is right and the keyring itself is damaged)."""
    damaged = internal_pb2.Keyring()
    damaged.CopyFrom(keyring)
    wrapped = damaged.wrapped_signing_key
    damaged.wrapped_signing_key = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    return damaged


def with_token(token: str) -> tuple[tuple[str, str], ...]:
    return (("x-unlock-token", token),)


@dataclass
class Project:
    id: str
    passphrase: str
    keyring: internal_pb2.Keyring
    token: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return with_token(self.token)


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The status code and message of a call expected to fail."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), raised.value.details()
