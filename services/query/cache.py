"""QueryCache: recent rankings in Redis, keyed by project, index generation and query.

A cached entry holds chunk ids and scores only — never text, never the query itself (the key
is a hash of the normalized query and parameters). Any change to a project's index bumps its
generation, so stale rankings are never served; they simply age out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import unicodedata

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
TTL_SECONDS = 600
PREFIX = "contextcache:query"


def normalized(query: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", query).casefold().split())


class QueryCache:
    def __init__(self, redis_url: str | None) -> None:
        self.redis = (
            Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
            if redis_url
            else None
        )

    @property
    def enabled(self) -> bool:
        return self.redis is not None

    async def _generation(self, project_id: str) -> int:
        assert self.redis is not None
        value = await self.redis.get(f"{PREFIX}:gen:{project_id}")
        return int(value or 0)

    def _key(self, project_id: str, generation: int, query: str, params: dict[str, object]) -> str:
        material = json.dumps([normalized(query), params], sort_keys=True, default=str)
        digest = hashlib.sha256(material.encode()).hexdigest()
        return f"{PREFIX}:{project_id}:{generation}:{digest}"

    async def get(
        self, project_id: str, query: str, params: dict[str, object]
    ) -> list[tuple[str, float]] | None:
        if self.redis is None:
            return None
        try:
            generation = await self._generation(project_id)
            raw = await self.redis.get(self._key(project_id, generation, query, params))
        except RedisError:
            return None  # the cache is an optimization: never fail a query over it
        if raw is None:
            return None
        return [(str(chunk), float(score)) for chunk, score in json.loads(raw)]

    async def put(
        self,
        project_id: str,
        query: str,
        params: dict[str, object],
        ranking: list[tuple[str, float]],
    ) -> None:
        if self.redis is None:
            return
        try:
            generation = await self._generation(project_id)
            await self.redis.set(
                self._key(project_id, generation, query, params),
                json.dumps(ranking),
                ex=TTL_SECONDS,
            )
        except RedisError:
            log.warning("query cache write failed")

    async def invalidate(self, project_id: str) -> None:
        if self.redis is None:
            return
        try:
            await self.redis.incr(f"{PREFIX}:gen:{project_id}")
        except RedisError:
            log.warning("query cache invalidation failed; entries expire within %ss", TTL_SECONDS)

    async def ping(self) -> None:
        if self.redis is not None:
            await self.redis.ping()

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
