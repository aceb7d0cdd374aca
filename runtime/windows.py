"""Fixed-window request counters: atomic in Redis, in memory while Redis is unavailable.

A window is `unit` seconds long and starts at a multiple of `unit` on the wall clock, so
every ratelimit replica (and every Envoy in front of them) counts in the same windows.
Counter keys are `<prefix>:<domain>:<digest of the descriptor>:<unit>:<window start>`:
the digest keeps client addresses and API keys out of Redis.

In Redis, one request's windows are counted by one script (EVALSHA): atomic like a
MULTI/EXEC of INCRBY and EXPIRE per window, but one command and one reply, since this sits
in front of every request the gateway serves. A window's expiry is set when the window is
created and never moved, so a key outlives its window by one second at most.

When a Redis call fails the counters move to this process's memory (logged once) and
Redis is tried again every `retry_after` seconds; counting returns to Redis as soon as it
answers. Limits therefore keep holding without Redis, per replica.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """One counter to increment: its key, its length and when it ends (epoch seconds)."""

    key: str
    seconds: int
    ends_at: float


def window_for(
    prefix: str, domain: str, entries: Sequence[tuple[str, str]], seconds: int, now: float
) -> Window:
    digest = hashlib.sha256()
    for key, value in entries:
        # Length-prefixed, so ("ab", "c") and ("a", "bc") never share a counter.
        for part in (key, value):
            raw = part.encode()
            digest.update(len(raw).to_bytes(4, "big") + raw)
    start = int(now // seconds) * seconds
    return Window(
        f"{prefix}:{domain}:{digest.hexdigest()[:32]}:{seconds}:{start}", seconds, start + seconds
    )


class MemoryWindows:
    """Counters in this process; expired windows are swept every few seconds."""

    SWEEP_EVERY = 10.0

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, float]] = {}
        self._next_sweep = 0.0

    def increment(self, windows: Sequence[Window], hits: int) -> list[int]:
        now = time.time()
        if now >= self._next_sweep:
            self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
            self._next_sweep = now + self.SWEEP_EVERY
        counts = []
        for window in windows:
            count = self._counts.get(window.key, (0, window.ends_at))[0] + hits
            self._counts[window.key] = (count, window.ends_at)
            counts.append(count)
        return counts


# KEYS: the windows' keys; ARGV[1]: hits; ARGV[1 + i]: seconds until KEYS[i] may expire.
INCREMENT_WINDOWS = """
local hits = tonumber(ARGV[1])
local counts = {}
for i, key in ipairs(KEYS) do
  local count = redis.call('INCRBY', key, hits)
  if count == hits then
    redis.call('EXPIRE', key, ARGV[i + 1])
  end
  counts[i] = count
end
return counts
"""


class WindowCounter:
    """Increments windows in Redis (one script call per request), or in memory without it."""

    def __init__(self, redis: Redis | None, retry_after: float) -> None:
        self.redis = redis
        self._increment_script = redis.register_script(INCREMENT_WINDOWS) if redis else None
        self.retry_after = retry_after
        self.memory = MemoryWindows()
        self.in_memory = redis is None
        self._retry_at = 0.0

    async def increment(self, windows: Sequence[Window], hits: int) -> list[int]:
        if not windows:
            return []
        if self.redis is not None and time.monotonic() >= self._retry_at:
            try:
                counts = await self._increment_in_redis(windows, hits)
            except (RedisError, OSError) as error:
                self._retry_at = time.monotonic() + self.retry_after
                if not self.in_memory:
                    self.in_memory = True
                    log.warning(
                        "Redis unavailable (%s): counting rate limits in memory, "
                        "retrying Redis every %.0fs",
                        type(error).__name__,
                        self.retry_after,
                    )
            else:
                if self.in_memory:
                    self.in_memory = False
                    log.info("Redis is back: counting rate limits in Redis again")
                return counts
        return self.memory.increment(windows, hits)

    async def _increment_in_redis(self, windows: Sequence[Window], hits: int) -> list[int]:
        assert self._increment_script is not None
        counts = await self._increment_script(
            keys=[window.key for window in windows],
            args=[hits, *(window.seconds + 1 for window in windows)],
        )
        return [int(count) for count in counts]
