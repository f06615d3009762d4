"""The cycle collector's settings for gateway processes: frozen startup objects, timed passes.

Each case runs in a fresh interpreter: the settings are process-wide.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

_CYCLES = """
import asyncio, gc, time, weakref
from tailgate import garbage

class Node:
    pass

def cycle():
    '''A reference cycle nothing else refers to: only a pass of the collector frees it.'''
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = []
    weakref.finalize(a, gone.append, True)
    return gone

def wait(gone, seconds):
    deadline = time.monotonic() + seconds
    while not gone and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(gone)
"""


def run(code: str) -> str:
    program = _CYCLES + textwrap.dedent(code)
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_settle_freezes_startup_objects_and_still_collects_cycles() -> None:
    out = run(
        """
        async def main():
            garbage.settle(0.05)
            assert not gc.isenabled() and gc.get_freeze_count() > 0
            gone = cycle()
            for _ in range(200):  # the loop keeps running: passes happen on their own thread
                if gone:
                    break
                await asyncio.sleep(0.01)
            print("collected" if gone else "leaked")

        asyncio.run(main())
        """
    )
    assert out == "collected"


def test_a_busy_gateway_postpones_the_pass_until_quiet_or_the_longest_delay() -> None:
    out = run(
        """
        busy = [True]
        started = time.monotonic()
        garbage.settle(0.05, busy=lambda: busy[0], max_delay=1.0)
        gone = cycle()
        early = wait(gone, 0.6)  # passes are due every 50 ms, but the gateway is busy
        late = wait(gone, 3.0)  # the longest delay runs out at 1 s
        waited = time.monotonic() - started
        gone = cycle()
        still_busy = wait(gone, 0.3)  # the delay counts from the last pass
        busy[0] = False
        quiet = wait(gone, 1.0)
        print(early, late, waited >= 0.95, still_busy, quiet)
        """
    )
    assert out == "False True True False True"
