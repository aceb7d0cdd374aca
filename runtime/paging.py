"""Opaque page tokens and page sizes for every List RPC.

A page token is a keyset cursor (the sort key of the last item returned), so items created
while a client pages through a list never shift later pages. Tokens are base64 JSON of
[list kind, values…]; they are opaque to clients and checked strictly here: a token that is
not base64, not JSON, of another shape, of another list, or whose values do not parse
(a timestamp that is not one) is INVALID_ARGUMENT naming `page_token` — never INTERNAL.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from runtime.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 20


def page_size(request: Any, default: int = DEFAULT_PAGE_SIZE) -> int:
    """The request's page_size (range-checked by its protovalidate rule) or the default."""
    return request.page_size if request.HasField("page_size") else default


def encode_cursor(kind: str, *values: str | int | datetime) -> str:
    plain = [kind, *(v.isoformat() if isinstance(v, datetime) else v for v in values)]
    return base64.urlsafe_b64encode(json.dumps(plain).encode()).decode().rstrip("=")


def _parse(value: Any, kind: type) -> Any:
    if kind is datetime:
        if not isinstance(value, str):
            raise ValueError("not a timestamp")
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError("a timestamp without its zone")
        return parsed
    if kind is int and isinstance(value, bool):
        raise ValueError("not an integer")
    if not isinstance(value, kind):
        raise ValueError(f"not a {kind.__name__}")
    return value


def decode_cursor(token: str, kind: str, types: tuple[type, ...]) -> tuple[Any, ...] | None:
    """The cursor values of `token` (a page of list `kind`), or None for the first page."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(values, list) or len(values) != len(types) + 1 or values[0] != kind:
            raise ValueError("another shape or list")
        return tuple(_parse(v, t) for v, t in zip(values[1:], types, strict=True))
    except (binascii.Error, ValueError, UnicodeDecodeError, TypeError, OverflowError):
        raise InvalidArgument.for_field(
            "page_token", "Invalid page token. Pass next_page_token from the previous page"
        ) from None
