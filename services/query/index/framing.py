"""The framing between `EdgeVectorIndex` and its host process: one definition for both ends.

A frame is an 8-byte big-endian length and a pickle of one message. Requests are
`(request_id, op, args)`; replies are `(request_id, ok, result)`, with `result` a
`(kind, message)` pair when `ok` is false. Pickle is safe here only because each end reads a
pipe that its own peer — our parent or our child, never anything on a network — writes.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import select
import struct
from typing import Any

HEADER = struct.Struct(">Q")


def encode(message: object) -> bytes:
    """A message as one frame."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> Any:
    """The message of a frame's body (the bytes after its header)."""
    return pickle.loads(body)  # noqa: S301 — a pipe only our own peer writes


async def read_frame(stream: asyncio.StreamReader) -> Any:
    """The next message from an asyncio stream (the parent's side)."""
    (length,) = HEADER.unpack(await stream.readexactly(HEADER.size))
    return decode(await stream.readexactly(length))


def write_frame(fd: int, message: object) -> None:
    """Writes one message to a blocking file descriptor (the host's side)."""
    view = memoryview(encode(message))
    while view:
        written = os.write(fd, view)
        view = view[written:]


class FrameReader:
    """Reads frames from a blocking file descriptor (the host's side)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()

    def _complete(self) -> bool:
        if len(self.buffer) < HEADER.size:
            return False
        (length,) = HEADER.unpack_from(self.buffer)
        return len(self.buffer) >= HEADER.size + length

    def wait(self, timeout: float | None) -> bool:
        """True when a frame (or EOF) can be read now; False after `timeout` idle seconds."""
        if self._complete():
            return True
        ready, _, _ = select.select([self.fd], [], [], timeout)
        return bool(ready)

    def read(self) -> bytes | None:
        """The body of the next frame (see `decode`), or None at end of input."""
        while not self._complete():
            data = os.read(self.fd, 1 << 20)
            if not data:
                return None
            self.buffer += data
        (length,) = HEADER.unpack_from(self.buffer)
        frame = bytes(self.buffer[HEADER.size : HEADER.size + length])
        del self.buffer[: HEADER.size + length]
        return frame
