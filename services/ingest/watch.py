"""What WatchDocument streams wait on: changes to a document, pushed, and a cap per token.

The document store calls `DocumentChanges.changed` after each write it commits, which wakes
the streams watching that document in this process at once; nothing is read while nothing
changes. Changes made in another process (an RQ worker) are not pushed here: a stream then
also reads the document's row by primary key every `fallback` seconds (only when background
jobs run elsewhere). `StreamSlots` caps the streams one token holds open at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterator

from runtime.errors import ResourceExhausted


class DocumentChanges:
    """Wakes the streams watching a document when this process changes it."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def changed(self, *document_ids: str) -> None:
        for document_id in document_ids:
            for event in self._waiters.get(document_id, ()):
                event.set()

    @contextlib.contextmanager
    def watching(self, document_id: str) -> Iterator[asyncio.Event]:
        """An event set at each change of the document (the watcher clears it)."""
        event = asyncio.Event()
        self._waiters.setdefault(document_id, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(document_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[document_id]


class StreamSlots:
    """At most `per_token` open streams per token (counted by a digest, never the token)."""

    def __init__(self, per_token: int) -> None:
        self.per_token = per_token
        self._open: dict[bytes, int] = {}

    @contextlib.contextmanager
    def hold(self, token: str) -> Iterator[None]:
        key = hashlib.sha256(token.encode()).digest()
        if self._open.get(key, 0) >= self.per_token:
            raise ResourceExhausted(
                f"This token already holds {self.per_token} WatchDocument streams open, the "
                "most allowed. Close one, or poll with GetDocument"
            )
        self._open[key] = self._open.get(key, 0) + 1
        try:
            yield
        finally:
            self._open[key] -= 1
            if not self._open[key]:
                del self._open[key]
