"""Deadlines for what the event loop waits on: a future completed with a value meaning "expired".

``loop.call_later(seconds, expire, waiter, value)`` costs one timer; ``asyncio.wait_for`` would cost a
task and several loop look-ups per wait, which the request path cannot afford.

The waiter completes with a result rather than failing with ``TimeoutError``: an exception set on
a future and raised where the future is awaited refers, through its traceback, to the frame that
holds the future, a reference cycle per timeout that only the cycle collector could free (see
:mod:`tailgate.garbage`). Whoever awaits raises its own error, outside any ``except`` clause.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


def expire(waiter: asyncio.Future[T], expired: T) -> None:
    """Complete ``waiter`` with ``expired`` unless it is already done (a ``call_later`` callback)."""
    if not waiter.done():
        waiter.set_result(expired)
