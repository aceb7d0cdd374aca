"""The keyring registry: which public key is a project's, and its latest keyring generation.

Crypto does not store keyrings (the projects service does); it remembers just enough to
refuse a keyring that is not the project's (the keyring-substitution attack: a keyring made
with another passphrase for a victim's project id) or that a passphrase change superseded,
and to refuse tokens of an older generation. Reads are cached for `CACHE_SECONDS`, so a
passphrase change ends older tokens on every crypto replica within that time (at once on
the replica that saw it).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from runtime.errors import AlreadyExists, PermissionDenied
from services.crypto.models import keyrings

log = logging.getLogger(__name__)
CACHE_SECONDS = 2.0
CACHE_SIZE = 10_000


@dataclass(frozen=True)
class Registered:
    public_key: bytes
    generation: int


class KeyringRegistry:
    def __init__(self, engine: AsyncEngine, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self._clock = clock
        self._cache: dict[str, tuple[Registered | None, float]] = {}

    async def register(self, project_id: str, public_key: bytes, generation: int) -> None:
        try:
            async with self.engine.begin() as connection:
                await connection.execute(
                    insert(keyrings).values(
                        project_id=project_id,
                        public_key=public_key,
                        generation=generation,
                        updated_at_us=int(time.time() * 1e6),
                    )
                )
        except IntegrityError:
            raise AlreadyExists(f"Project {project_id} already has a keyring") from None
        self._cache[project_id] = (Registered(public_key, generation), self._clock())

    async def get(self, project_id: str, fresh: bool = False) -> Registered | None:
        cached = self._cache.get(project_id)
        if cached is not None and not fresh and self._clock() - cached[1] < CACHE_SECONDS:
            return cached[0]
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(keyrings.c.public_key, keyrings.c.generation).where(
                        keyrings.c.project_id == project_id
                    )
                )
            ).first()
        found = Registered(row.public_key, row.generation) if row else None
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[project_id] = (found, self._clock())
        return found

    async def check_keyring(self, project_id: str, public_key: bytes, generation: int) -> None:
        """Refuses a keyring that is not the project's registered one, or older than its
        latest generation. A project created before the registry existed is registered by
        its first unlock (and said so in the log)."""
        registered = await self.get(project_id, fresh=True)
        if registered is None:
            log.warning("project %s had no registered keyring: registered at unlock", project_id)
            try:
                await self.register(project_id, public_key, generation)
            except AlreadyExists:
                registered = await self.get(project_id, fresh=True)
            if registered is None:
                return
        if not hmac.compare_digest(registered.public_key, public_key):
            raise PermissionDenied("This keyring is not the project's: it opens nothing")
        if generation < registered.generation:
            raise PermissionDenied(
                "This keyring was superseded by a passphrase change: it opens nothing"
            )

    async def advance(self, project_id: str, generation: int) -> None:
        """Records that the project's keyring reached `generation` (never goes back)."""
        async with self.engine.begin() as connection:
            await connection.execute(
                update(keyrings)
                .where(keyrings.c.project_id == project_id, keyrings.c.generation < generation)
                .values(generation=generation, updated_at_us=int(time.time() * 1e6))
            )
        self._cache.pop(project_id, None)

    def forget(self, project_id: str) -> None:
        """Drops a cached read (a keyring registered by an import, outside this class)."""
        self._cache.pop(project_id, None)

    async def current_generation(self, project_id: str) -> int:
        registered = await self.get(project_id)
        return registered.generation if registered else 0
