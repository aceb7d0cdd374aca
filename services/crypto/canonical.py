"""Unambiguous byte encodings for everything that is hashed, signed or used as associated data.

Every field is length-prefixed (4-byte big-endian length, then the bytes), so no two
different field lists encode to the same bytes — the original's chain hashed `a‖b‖c`
without separators, where H(ab‖c) == H(a‖bc).
"""

from __future__ import annotations

import struct


def field(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def encode(*fields: bytes | str | int) -> bytes:
    """Length-prefixes each field; str is UTF-8, int is an 8-byte big-endian signed integer."""
    parts = []
    for value in fields:
        if isinstance(value, str):
            value = value.encode()
        elif isinstance(value, int):
            value = struct.pack(">q", value)
        parts.append(field(value))
    return b"".join(parts)
