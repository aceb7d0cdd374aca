"""Per-call context shared by server and client interceptors (contextvars).

The server side records the incoming call's request id and absolute deadline; outgoing
calls made while handling it carry both on (deadline propagation).
"""

from __future__ import annotations

import contextvars
import time

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
# Absolute deadline on the time.monotonic() clock; None when the caller set none.
deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)
# The calling workload, from its verified certificate (runtime/callers.py); None when unknown.
caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("caller", default=None)


def time_remaining() -> float | None:
    """Seconds left of the incoming call's deadline, or None if it has none."""
    end = deadline.get()
    return None if end is None else max(0.0, end - time.monotonic())
