"""Deadlines for what the event loop waits on: a future that fails with ``TimeoutError``.

``loop.call_later(seconds, expire, waiter)`` costs one timer; ``asyncio.wait_for`` would cost a
task and several loop look-ups per wait, which the request path cannot afford.
"""

from __future__ import annotations

import asyncio
from typing import Any


def expire(waiter: asyncio.Future[Any]) -> None:
    """Fail ``waiter`` with ``TimeoutError`` unless it is already done (a ``call_later`` callback)."""
    if not waiter.done():
        waiter.set_exception(TimeoutError())
