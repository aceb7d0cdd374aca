"""Passphrase guessing kept slow: attempts limited per client address and per project.

Every RPC that checks a passphrase (UnlockProject, ChangePassphrase) takes an attempt here
first. An attempt is counted before the passphrase is checked — so a burst of parallel
guesses cannot all pass a check made before any of them failed — and given back when the
passphrase was right, so only wrong guesses use the budget. Limits: `per_address` wrong
guesses a minute from one client address (whatever API key it sends; the address comes from
runtime.callers.client_address, which believes Envoy's x-forwarded-for only from Envoy's
certificate) and `per_project` a minute against one project from all addresses together.
Counters are in Redis when configured (shared by replicas), in memory otherwise. The guess
itself is never counted, stored or logged.
"""

from __future__ import annotations

import time

from runtime.errors import ResourceExhausted
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

    def _windows(self, address: str, project_id: str) -> list[Window]:
        now = time.time()
        return [
            window_for(self.prefix, DOMAIN, [("address", address)], WINDOW_SECONDS, now),
            window_for(self.prefix, DOMAIN, [("project", project_id)], WINDOW_SECONDS, now),
        ]

    async def take(self, address: str, project_id: str) -> list[Window]:
        """Counts an attempt; RESOURCE_EXHAUSTED (with when to retry) over either limit."""
        windows = self._windows(address, project_id)
        by_address, by_project = await self.counter.increment(windows, 1)
        if by_address > self.per_address or by_project > self.per_project:
            retry = max(1, int(min(w.ends_at for w in windows) - time.time()) + 1)
            whose = "from this address" if by_address > self.per_address else "for this project"
            raise ResourceExhausted(
                f"Too many wrong passphrases {whose}. Try again in {retry} seconds",
                retry_after=retry,
            )
        return windows

    async def give_back(self, windows: list[Window]) -> None:
        """The passphrase was right: the attempt does not count."""
        await self.counter.increment(windows, -1)
