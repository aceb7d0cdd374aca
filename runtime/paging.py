"""Opaque page tokens and page sizes for every List RPC.

A page token is a keyset cursor (the sort key of the last item returned), so items created
while a client pages through a list never shift later pages. Tokens are base64 JSON; they
are opaque to clients and checked strictly here.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from runtime.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 20


def page_size(request: Any, default: int = DEFAULT_PAGE_SIZE) -> int:
    """The request's page_size (range-checked by its protovalidate rule) or the default."""
    return request.page_size if request.HasField("page_size") else default


def encode_cursor(*values: str | int) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode().rstrip("=")


def decode_cursor(token: str, types: tuple[type, ...]) -> tuple[Any, ...] | None:
    """The cursor values of `token`, or None for the first page."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        values = None
    if (
        not isinstance(values, list)
        or len(values) != len(types)
        or not all(isinstance(v, t) for v, t in zip(values, types, strict=True))
    ):
        raise InvalidArgument.for_field(
            "page_token", "Invalid page token. Pass next_page_token from the previous page"
        )
    return tuple(values)
