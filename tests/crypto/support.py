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

from contextcache.v1 import crypto_pb2, crypto_pb2_grpc
from runtime.config import Settings
from runtime.server import Server
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
        self.channel = grpc.insecure_channel(
            self.address,
            options=[
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ],
        )
        self.stub = crypto_pb2_grpc.CryptoServiceStub(self.channel)

    def stop(self) -> None:
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


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


def with_token(token: str) -> tuple[tuple[str, str], ...]:
    return (("x-unlock-token", token),)


@dataclass
class Project:
    id: str
    passphrase: str
    keyring: crypto_pb2.Keyring
    token: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return with_token(self.token)


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The status code and message of a call expected to fail."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), raised.value.details()
