"""Passphrase guessing kept slow: attempts limited per client address and per project.

Every RPC that checks a passphrase (UnlockProject, ChangePassphrase) runs it as an attempt
here. Attempts from one client address run one at a time in this process (a lock per
address), so a burst of parallel guesses cannot all pass a check made before any of them
failed, while parallel right passphrases (a service unlocking many projects) just wait their
turn. Only wrong passphrases count: `per_address` a minute from one client address
(whatever API key it sends; the address comes from runtime.callers.client_address, which
believes Envoy's x-forwarded-for only from Envoy's certificate) and `per_project` a minute
against one project from all addresses together. Counters are in Redis when configured
(shared by replicas; each replica serializes its own attempts), in memory otherwise. The
guess itself is never counted, stored or logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator

from runtime.errors import PermissionDenied, ResourceExhausted
from runtime.windows import Window, WindowCounter, window_for

WINDOW_SECONDS = 60
DOMAIN = "passphrase"


class PassphraseAttempts:
    def __init__(
        self,
        counter: WindowCounter,
        prefix: str = "contextcache",
        per_address: int = 5,
        per_project: int = 20,
    ) -> None:
        self.counter = counter
        self.prefix = prefix
        self.per_address = per_address
        self.per_project = per_project
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _windows(self, address: str, project_id: str) -> list[Window]:
        now = time.time()
        return [
            window_for(self.prefix, DOMAIN, [("address", address)], WINDOW_SECONDS, now),
            window_for(self.prefix, DOMAIN, [("project", project_id)], WINDOW_SECONDS, now),
        ]

    @contextlib.asynccontextmanager
    async def attempt(self, address: str, project_id: str) -> AsyncIterator[None]:
        """One passphrase check; RESOURCE_EXHAUSTED (with when to retry) before it when
        either budget of wrong passphrases is spent; a PermissionDenied inside counts."""
        lock = self._locks.get(address)
        if lock is None:
            lock = self._locks[address] = asyncio.Lock()
        async with lock:
            windows = self._windows(address, project_id)
            by_address, by_project = await self.counter.increment(windows, 0)
            if by_address >= self.per_address or by_project >= self.per_project:
                retry = max(1, int(min(w.ends_at for w in windows) - time.time()) + 1)
                whose = (
                    "from this address" if by_address >= self.per_address else "for this project"
                )
                raise ResourceExhausted(
                    f"Too many wrong passphrases {whose}. Try again in {retry} seconds",
                    retry_after=retry,
                )
            try:
                yield
            except PermissionDenied:
                await self.counter.increment(windows, 1)
                raise
