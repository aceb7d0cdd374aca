"""Key derivation: Argon2id for passphrases (bounded in cost and concurrency), HKDF for subkeys.

Argon2id runs in a dedicated thread pool so the event loop stays free, and a
`DerivationLimiter` admits only as many derivations as the CPU and memory budget allow: a
burst of unlocks queues (up to a limit, then RESOURCE_EXHAUSTED) instead of exhausting the
host. Never logs passphrases or derived keys.
"""

from __future__ import annotations

import asyncio
import collections
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from contextcache.v1 import crypto_pb2
from runtime.errors import ResourceExhausted
from services.crypto.config import CryptoConfig

DERIVED_KEY_BYTES = 32


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost; stored with every keyring so it can be raised later."""

    time_cost: int
    memory_kib: int
    parallelism: int

    @classmethod
    def from_proto(cls, params: crypto_pb2.Argon2Params) -> KdfParams:
        return cls(params.time_cost, params.memory_kib, params.parallelism)

    @classmethod
    def from_config(cls, config: CryptoConfig) -> KdfParams:
        return cls(config.argon2_time_cost, config.argon2_memory_kib, config.argon2_parallelism)

    def to_proto(self) -> crypto_pb2.Argon2Params:
        return crypto_pb2.Argon2Params(
            time_cost=self.time_cost, memory_kib=self.memory_kib, parallelism=self.parallelism
        )


def hkdf_subkey(key: bytes, info: bytes, length: int = 32) -> bytes:
    """A subkey for one purpose (named by `info`), independent of every other purpose's."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(key)


class DerivationLimiter:
    """Admits derivations first-come first-served within a slot count and a memory budget."""

    def __init__(self, max_concurrent: int, memory_budget_kib: int, max_waiting: int) -> None:
        self.max_concurrent = max_concurrent
        self.memory_budget_kib = memory_budget_kib
        self.max_waiting = max_waiting
        self._active = 0
        self._active_kib = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def _fits(self, kib: int) -> bool:
        return (
            self._active < self.max_concurrent and self._active_kib + kib <= self.memory_budget_kib
        )

    def _take(self, kib: int) -> None:
        self._active += 1
        self._active_kib += kib

    async def acquire(self, kib: int) -> None:
        if kib > self.memory_budget_kib:
            raise ResourceExhausted(
                f"Argon2 memory cost of {kib} KiB exceeds this service's budget of "
                f"{self.memory_budget_kib} KiB (ARGON2_MEMORY_BUDGET_KIB)"
            )
        if not self._waiters and self._fits(kib):
            self._take(kib)
            return
        if len(self._waiters) >= self.max_waiting:
            raise ResourceExhausted("Too many key derivations in progress; retry in a few seconds")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (kib, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(kib)  # granted just as the caller gave up
            elif entry in self._waiters:
                self._waiters.remove(entry)
            raise

    def release(self, kib: int) -> None:
        self._active -= 1
        self._active_kib -= kib
        while self._waiters and self._fits(self._waiters[0][0]):
            kib_next, waiter = self._waiters.popleft()
            if waiter.cancelled():
                continue
            self._take(kib_next)
            waiter.set_result(None)


class PassphraseKdf:
    """Argon2id (argon2-cffi's `hash_secret_raw`) behind the limiter, off the event loop."""

    def __init__(self, config: CryptoConfig) -> None:
        self.default_params = KdfParams.from_config(config)
        self.limiter = DerivationLimiter(
            config.argon2_max_concurrent, config.argon2_memory_budget_kib, config.argon2_max_waiting
        )
        self._executor = ThreadPoolExecutor(
            max_workers=config.argon2_max_concurrent, thread_name_prefix="argon2"
        )

    async def derive(self, passphrase: str, salt: bytes, params: KdfParams) -> bytes:
        await self.limiter.acquire(params.memory_kib)
        work = asyncio.get_running_loop().run_in_executor(
            self._executor,
            _argon2id,
            passphrase.encode(),
            salt,
            params,
        )
        # The slot is held until the thread finishes, even if the caller goes away.
        work.add_done_callback(lambda _: self.limiter.release(params.memory_kib))
        return await asyncio.shield(work)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _argon2id(secret: bytes, salt: bytes, params: KdfParams) -> bytes:
    return hash_secret_raw(
        secret=secret,
        salt=salt,
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=DERIVED_KEY_BYTES,
        type=Type.ID,
    )
