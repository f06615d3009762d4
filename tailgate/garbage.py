"""Keep Python's cycle collector off the request path, in the worker and the recording process.

Everything alive once a process has started (modules, the configuration, the price data) lives
as long as the process; ``gc.freeze`` puts it out of the collector's sight. Requests, streams
and connections free their objects by reference counting and leave no reference cycles behind,
answered or failed (``tests/test_no_cycles.py``), so automatic collection, triggered by
allocation counts on whichever thread allocates, is off.

A collection holds the interpreter lock for as long as it takes and walks every object alive:
about 5 ms per thousand open streams, during which no chunk is relayed. So the collector runs
on a timer, every ``interval`` seconds, and in the worker it waits while the gateway is busy
(``busy()``), for at most ``max_delay`` seconds: what it would find is rare, so a pass can wait
for a quiet moment.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable

_RECHECK = 0.25
"""How often a postponed pass asks again whether the gateway is still busy, in seconds."""


def settle(
    interval: float = 10.0, *, busy: Callable[[], bool] | None = None, max_delay: float = 600.0
) -> None:
    """Freeze what exists now, stop automatic collection, and collect everything on a daemon
    thread every ``interval`` seconds; while ``busy()`` the pass waits, at most ``max_delay``
    seconds after the previous one."""
    gc.collect()
    gc.freeze()
    gc.disable()

    def collect_forever() -> None:
        last = time.monotonic()
        while True:
            time.sleep(interval)
            while busy is not None and busy() and time.monotonic() - last < max_delay:
                time.sleep(min(_RECHECK, interval))
            gc.collect()
            last = time.monotonic()

    threading.Thread(target=collect_forever, name="tailgate-gc", daemon=True).start()
